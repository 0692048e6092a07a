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

    def get_page_size(self, request):
        # DRF silently falls back to the default on a bad ?limit=; it is a bad query parameter (400).
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise InvalidRequest(f"limit must be a whole number from 1 to {self.max_page_size}.",
                                 details={"fields": {self.page_size_query_param: [
                                     f"A whole number from 1 to {self.max_page_size}."]}})
        return int(raw)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size,
                                       "default": self.page_size}
        return parameters

    def decode_cursor(self, request):
        # DRF answers a cursor it cannot decode with 404; it is a bad query parameter (400).
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise InvalidRequest("The cursor is not one this list handed out; follow the `next` link as given.",
                                 details={"fields": {self.cursor_query_param: ["Invalid cursor."]}}) from None
