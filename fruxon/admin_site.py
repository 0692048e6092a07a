"""Fruxon's admin site: the place where members of an organization work.

Django's stock admin admits only ``is_staff`` accounts. Here any active person
who belongs to at least one organization may log in (staff too); what they
then see is decided per model by ``fruxon.admin_base.OrgScopedAdmin``.

Installed through Django's documented ``default_site`` mechanism: INSTALLED_APPS
lists ``fruxon.admin_site.FruxonAdminConfig`` instead of ``django.contrib.admin``,
so ``admin.site`` (and every ``@admin.register``) is a ``FruxonAdminSite``.

This module is imported while apps load: it must not import models at module
level (hence the lazy imports below).
"""
from __future__ import annotations

from functools import cache

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig


def may_use_admin(user) -> bool:
    """Active, and staff or a member of at least one organization."""
    if not user.is_active:
        return False
    if user.is_staff or user.is_superuser:
        return True
    from orgs.models import Membership

    return Membership.objects.filter(user_id=user.pk).exists()


@cache
def member_login_form():
    """The admin login form, admitting members as well as staff (built once, after apps load)."""
    from django.contrib.admin.forms import AdminAuthenticationForm
    from django.contrib.auth.forms import AuthenticationForm
    from django.core.exceptions import ValidationError

    class MemberAuthenticationForm(AdminAuthenticationForm):
        error_messages = {
            **AdminAuthenticationForm.error_messages,
            "invalid_login": (
                "Please enter the correct %(username)s and password of an account that belongs "
                "to an organization. Note that both fields may be case-sensitive."
            ),
        }

        def clean(self):
            # Password guessing limits, as on POST /v1/auth/token (orgs.login_throttle): a locked
            # account or address gets this error and no session, even with the right password.
            from orgs import login_throttle

            username = self.cleaned_data.get("username")
            address = login_throttle.client_address(self.request) if self.request is not None else None
            wait = login_throttle.retry_after(username=username, address=address)
            if wait:
                raise ValidationError(
                    "Too many failed logins for this account or from this address; try again in %(minutes)s minutes.",
                    code="throttled", params={"minutes": max(1, -(-wait // 60))},
                )
            try:
                cleaned = super().clean()
            except ValidationError:
                if username is not None and self.cleaned_data.get("password") is not None:
                    login_throttle.failed(username=username, address=address)
                raise
            login_throttle.succeeded(username=username)
            return cleaned

        def confirm_login_allowed(self, user):
            # AuthenticationForm's check (active) without the admin's is_staff requirement.
            AuthenticationForm.confirm_login_allowed(self, user)
            if not may_use_admin(user):
                raise ValidationError(
                    self.error_messages["invalid_login"], code="invalid_login",
                    params={"username": self.username_field.verbose_name},
                )

    return MemberAuthenticationForm


class FruxonAdminSite(admin.AdminSite):
    site_header = "Fruxon"
    site_title = "Fruxon"
    index_title = "Your organizations"
    # "/" is the API's JSON 404, not a site to view.
    site_url = None

    @property
    def login_form(self):
        return member_login_form()

    def has_permission(self, request) -> bool:
        return may_use_admin(request.user)


class FruxonAdminConfig(AdminConfig):
    """``django.contrib.admin`` with ``FruxonAdminSite`` as ``admin.site``."""

    default_site = "fruxon.admin_site.FruxonAdminSite"
