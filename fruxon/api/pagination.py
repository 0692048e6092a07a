"""Cursor pagination (``?cursor=``, ``next`` link) for every list.

The order is the view's ``ordering`` attribute (default ``-id``, newest first);
it must be stable, since cursors encode positions in it.

A cursor is client-held text: anything this list did not hand out (bad base64,
an edited offset or position, a position that is not a value of the ordering
field, a NUL) answers 400 ``invalid_request`` naming ``cursor``, never a 500.
"""
import re

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db.models.constants import LOOKUP_SEP
from rest_framework import exceptions, pagination

from fruxon.db import UNSTORABLE_CHAR
from fruxon.errors import InvalidRequest

_DIGITS = re.compile(r"[0-9]{1,9}")


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
        # ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses.
        if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= self.max_page_size:
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

    def paginate_queryset(self, queryset, request, view=None):
        # The model field the cursor's position is compared with (decode_cursor checks the position against it).
        self._position_field = _field_at(queryset.model, self.get_ordering(request, queryset, view)[0].lstrip("-"))
        return super().paginate_queryset(queryset, request, view)

    def invalid_cursor(self) -> InvalidRequest:
        return InvalidRequest("The cursor is not one this list handed out; follow the `next` link as given.",
                              details={"fields": {self.cursor_query_param: ["Invalid cursor."]}})

    def decode_cursor(self, request):
        # DRF answers a cursor it cannot decode with 404, and passes its position to the database
        # unchecked (a 500 when it is not a value of the ordering field): both are a bad query parameter.
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            raise self.invalid_cursor() from None
        if cursor is not None and cursor.position is not None:
            field = getattr(self, "_position_field", None)
            if UNSTORABLE_CHAR.search(cursor.position):
                raise self.invalid_cursor()
            if field is not None:
                try:
                    field.to_python(cursor.position)
                except (ValidationError, ValueError, TypeError, OverflowError):
                    raise self.invalid_cursor() from None
        return cursor


def _field_at(model, path: str):
    """The model field ``path`` (``a__b``) names (a relation: its target's key), or None if it names none."""
    field = None
    for name in path.split(LOOKUP_SEP):
        if model is None:
            return None
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            return None
        model = field.related_model if field.is_relation else None
    return model._meta.pk if field is not None and field.is_relation and model is not None else field
