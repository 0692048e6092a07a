"""Cursor pagination (``?cursor=``, ``next`` link) for every list.

The order is the view's ``ordering`` attribute (default ``-id``, newest first);
it must be stable, since cursors encode positions in it.
"""
from rest_framework import exceptions, pagination

from fruxon.errors import InvalidRequest


class CursorPagination(pagination.CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500

    def get_ordering(self, request, queryset, view):
        ordering = getattr(view, "ordering", None) or self.ordering
        return (ordering,) if isinstance(ordering, str) else tuple(ordering)

    def decode_cursor(self, request):
        # DRF answers a cursor it cannot decode with 404; it is a bad query parameter (400).
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise InvalidRequest("The cursor is not one this list handed out; follow the `next` link as given.",
                                 details={"fields": {self.cursor_query_param: ["Invalid cursor."]}}) from None
