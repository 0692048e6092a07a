"""Cursor pagination (``?cursor=``, ``next`` link) for every list.

The order is the view's ``ordering`` attribute (default ``-id``, newest first);
it must be stable, since cursors encode positions in it.
"""
from rest_framework import pagination


class CursorPagination(pagination.CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500

    def get_ordering(self, request, queryset, view):
        ordering = getattr(view, "ordering", None) or self.ordering
        return (ordering,) if isinstance(ordering, str) else tuple(ordering)
