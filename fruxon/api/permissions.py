"""The one permission class DRF runs before tenancy: is anyone there at all?

Role and scope checks are not permission classes: they live in
``fruxon.api.base`` where subclasses cannot drop them.
"""
from rest_framework.permissions import BasePermission


class IsAuthenticatedPrincipal(BasePermission):
    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated)
