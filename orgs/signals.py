"""Reactions to changes of the user model (wired in ``OrgsConfig.ready``).

- A password change revokes every personal token of that user, however the
  password changed (the admin, ``set_password`` then ``save``, ``changepassword``):
  the stored hash is compared on save. ``QuerySet.update`` bypasses this; nothing
  in Fruxon changes passwords that way.
- A new account accepts the pending invitations for its email (so does an account
  whose email is set or changed later, as after the admin's "add user" form).
"""
from __future__ import annotations


def _before_user_save(sender, instance, raw=False, update_fields=None, **kwargs):
    instance._fruxon_password_changed = instance._fruxon_email_set = False
    if raw or instance.pk is None:
        return
    if update_fields is not None and not {"password", "email"} & set(update_fields):
        return  # e.g. last_login on every login: no query
    stored = sender._default_manager.filter(pk=instance.pk).values_list("password", "email").first()
    if stored is None:
        return
    instance._fruxon_password_changed = stored[0] != instance.password
    instance._fruxon_email_set = bool(instance.email) and stored[1].lower() != instance.email.lower()


def _after_user_save(sender, instance, created=False, raw=False, **kwargs):
    if raw:
        return
    if getattr(instance, "_fruxon_password_changed", False):
        instance._fruxon_password_changed = False
        from orgs.services.tokens import revoke_user_tokens

        revoke_user_tokens(user=instance)
    if created or getattr(instance, "_fruxon_email_set", False):
        # The admin's "add user" form has no email field: the account's email may arrive on a later save.
        instance._fruxon_email_set = False
        from orgs.services.members import accept_invitations

        accept_invitations(instance)


def connect() -> None:
    from django.contrib.auth import get_user_model
    from django.db.models.signals import post_save, pre_save

    user_model = get_user_model()
    pre_save.connect(_before_user_save, sender=user_model, dispatch_uid="orgs.user.before_save")
    post_save.connect(_after_user_save, sender=user_model, dispatch_uid="orgs.user.after_save")
