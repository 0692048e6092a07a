"""Secrets out of log records: a filter on every log handler (DESIGN rule 7).

:class:`RedactSecrets` rewrites a record's message (with its arguments merged
in), its formatted exception and traceback text and its stack text, replacing

* the values of secrets this process decrypted recently (:func:`remember`,
  called by ``orgs.crypto.decrypt``, the only decrypting path), and their
  JSON-escaped forms, by ``[REDACTED]``. The registry lives in memory only
  and is bounded: the newest ``FRUXON_LOG_REDACT_MAX_VALUES`` values (default
  1,000), oldest forgotten first;
* credentials recognisable by their shape, secret or not: ``Bearer <token>``,
  Fruxon API keys and personal tokens (``fx_live_...``, ``fxu_...``) and
  ``sk-...`` provider keys.

A record with an exception keeps its traceback as redacted text
(``exc_text``) and loses ``exc_info``, so no handler (the admin e-mail one
renders frame locals from it) can format the raw exception again.

Installed on every handler of ``settings.LOGGING`` (the ``redact_secrets``
filter), on every handler that exists when Django is ready (``fruxon.apps``:
Django's default ones, a server's own) and on a Celery worker's handlers
(``fruxon.celery``).
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict

REDACTED = "[REDACTED]"
DEFAULT_MAX_VALUES = 1000
MIN_VALUE_CHARS = 4  # shorter values would blank ordinary words out of every log line

_PATTERNS = [
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + REDACTED),
    (re.compile(r"\b(fx_live_|fxu_)[A-Za-z0-9_\-]+"), r"\1" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-" + REDACTED),
]

_values: OrderedDict[str, None] = OrderedDict()
_lock = threading.Lock()


def _max_values() -> int:
    try:
        from django.conf import settings

        return int(getattr(settings, "FRUXON_LOG_REDACT_MAX_VALUES", DEFAULT_MAX_VALUES))
    except Exception:  # noqa: BLE001 - settings not configured (a bare script): the default
        return DEFAULT_MAX_VALUES


def remember(value: str) -> None:
    """Register a secret value just resolved in this process, so no log line shows it."""
    if not isinstance(value, str) or len(value) < MIN_VALUE_CHARS:
        return
    variants = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    limit = _max_values()
    with _lock:
        for variant in variants:
            _values[variant] = None
            _values.move_to_end(variant)
        while len(_values) > limit * 3:  # up to three forms per value
            _values.popitem(last=False)


def forget_all() -> None:
    """Empty the registry (tests)."""
    with _lock:
        _values.clear()


def redact(text: str) -> str:
    """``text`` with every remembered secret value and every credential pattern replaced."""
    if not text:
        return text
    with _lock:
        values = [value for value in _values if value in text]
    for value in sorted(values, key=len, reverse=True):  # a value containing another goes whole
        text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Redacts a record in place (module docstring); never drops one."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - arguments that do not fit the message: keep the template
            message = str(record.msg)
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(handlers) -> None:
    """Add the filter to each of ``handlers`` that lacks it."""
    for handler in handlers:
        if not any(isinstance(existing, RedactSecrets) for existing in handler.filters):
            handler.addFilter(RedactSecrets())


def install_everywhere() -> None:
    """The filter on every handler of the root logger and of every logger created so far."""
    install(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            install(logger.handlers)
