"""The egress policy, configured from settings (the policy itself lives in ``agents.engine.egress``).

``FRUXON_EGRESS_ALLOW`` is parsed when settings load (a bad value stops start-up);
:func:`configure_from_settings` installs it process-wide at app start-up and again
whenever a test overrides the setting. :func:`check_url` is the write-time check
the services run on every outbound URL they store (model ``baseUrl``, integration
``baseUrl``, alert webhooks): 400 ``egress_denied`` naming the field.
"""
from __future__ import annotations

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from agents.engine import egress
from fruxon.errors import InvalidRequest

CODE = "egress_denied"


def configure_from_settings() -> None:
    egress.configure(egress.EgressPolicy.from_setting(getattr(settings, "FRUXON_EGRESS_ALLOW", "") or ""))


@receiver(setting_changed)
def _reconfigure(*, setting: str, **kwargs) -> None:
    if setting == "FRUXON_EGRESS_ALLOW":
        configure_from_settings()


def url_refusal(url, field: str) -> InvalidRequest | None:
    """The 400 ``egress_denied`` for an outbound URL that may not be stored (None when it may)."""
    if not isinstance(url, str) or not url:
        return None
    problem = egress.url_problem(url)
    if problem is None:
        return None
    message = f"{field} {problem.message}."
    if problem.reason == "internal":
        message += " An operator can allow an address with FRUXON_EGRESS_ALLOW."
    return InvalidRequest(message, code=CODE, details={"fields": {field: [message]}, "reason": problem.reason})


def check_url(url, field: str) -> None:
    """Raise :func:`url_refusal`'s error, if any."""
    refusal = url_refusal(url, field)
    if refusal is not None:
        raise refusal


def check_spec(spec) -> None:
    """Every literal model ``baseUrl`` of a revision spec (steps and their sub-objects)."""
    steps = spec.get("steps") if isinstance(spec, dict) else None
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        model = step.get("model") if isinstance(step, dict) else None
        if isinstance(model, dict):
            check_url(model.get("baseUrl"), f"spec.steps[{index}].model.baseUrl")
