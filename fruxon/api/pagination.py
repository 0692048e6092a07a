"""Cursor pagination (``?cursor=``, ``next`` link) for every list, newest first."""
from rest_framework import pagination


class CursorPagination(pagination.CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500
