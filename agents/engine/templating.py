"""``{{...}}`` templates in specs, and redaction of secret values.

Syntax: ``{{ root.part.part }}`` with optional spaces inside the braces. Roots:

* ``input`` - the execute input: ``{{input}}`` (whole object), ``{{input.x}}``,
  ``{{input.x.y}}`` (nested keys; digits index lists);
* ``steps`` - ``{{steps.NAME.output}}``, the final text of an earlier step;
* ``secret`` - ``{{secret.NAME}}``, resolved only through a callback at call time;
* any other key the caller puts in the context (the ``fruxon-local`` provider adds
  ``prompt``).

Rendering contract:

* strings render as themselves, ``None`` (a declared optional input that was not
  given) as the empty string, anything else as JSON;
* a reference to something absent from the context raises :class:`TemplateError`
  naming the reference, never a value;
* :func:`render_for_call` resolves secrets through the callback; :func:`render_for_trace`
  leaves ``{{secret.NAME}}`` as literal text, which is what traces store.

:class:`Redactor` remembers every secret value resolved during a run and
replaces it by ``{{secret.NAME}}`` wherever it shows up in recorded data (a model
may echo a key back, an integration may echo a header).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .errors import TemplateError

REFERENCE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")

SecretResolver = Callable[[str], str]

# The shortest piece of a secret :meth:`Redactor.clip` redacts at a cut (shorter
# pieces are too common in ordinary text to be told apart from it).
MIN_FRAGMENT = 8


def parse_reference(expression: str) -> tuple[str, ...] | None:
    """Split ``input.x.y`` into its parts; ``None`` when it is not a valid reference."""
    parts = tuple(expression.split("."))
    if all(_SEGMENT_RE.match(part) for part in parts):
        return parts
    return None


def iter_references(template: str) -> Iterator[tuple[str, tuple[str, ...] | None]]:
    """Yield ``(expression, parts)`` for each ``{{...}}`` in ``template`` (parts ``None`` if malformed)."""
    for match in REFERENCE_RE.finditer(template):
        expression = match.group(1)
        yield expression, parse_reference(expression)


def to_text(value: Any) -> str:
    """Render a resolved value into template text: str as is, None as '', other as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _lookup(parts: tuple[str, ...], expression: str, context: Mapping[str, Any]) -> Any:
    root = parts[0]
    if root not in context:
        raise TemplateError(f"unknown reference {{{{{expression}}}}}")
    value = context[root]
    for part in parts[1:]:
        if value is None:
            # Descending into an absent optional input yields nothing rather than
            # an error: the input was declared, the caller just did not send it.
            return None
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"unknown reference {{{{{expression}}}}}")
    return value


def _render(template: str, context: Mapping[str, Any], secret: SecretResolver | None) -> str:
    def substitute(match: re.Match[str]) -> str:
        expression = match.group(1)
        parts = parse_reference(expression)
        if parts is None:
            raise TemplateError(f"invalid reference {{{{{expression}}}}}")
        if parts[0] == "secret":
            if len(parts) != 2:
                raise TemplateError(f"invalid reference {{{{{expression}}}}}: use {{{{secret.NAME}}}}")
            if secret is None:
                return "{{secret.%s}}" % parts[1]
            return secret(parts[1])
        return to_text(_lookup(parts, expression, context))

    return REFERENCE_RE.sub(substitute, template)


def render_for_call(template: str, context: Mapping[str, Any], resolve_secret: SecretResolver) -> str:
    """Render for the real provider/tool call: secrets are resolved through ``resolve_secret``."""
    return _render(template, context, resolve_secret)


def render_for_trace(template: str, context: Mapping[str, Any]) -> str:
    """Render for the trace: identical to the call rendering except ``{{secret.NAME}}`` stays literal."""
    return _render(template, context, None)


def render_shaped(template: Any, context: Mapping[str, Any]) -> Any:
    """Render an output template that may be a string, object or array (trace mode).

    Strings render as text. Inside objects and arrays, a string that is exactly one
    reference keeps the referenced value's JSON type (``"{{input.count}}"`` stays a
    number), so a spec can shape a structured answer.
    """
    if isinstance(template, str):
        return render_for_trace(template, context)
    if isinstance(template, Mapping):
        return {key: _render_leaf(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [_render_leaf(value, context) for value in template]
    return template


def _render_leaf(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        match = REFERENCE_RE.fullmatch(value)
        parts = parse_reference(match.group(1)) if match else None
        if parts is not None and parts[0] != "secret":
            return _lookup(parts, match.group(1), context)
    return render_shaped(value, context)


class Redactor:
    """Replaces resolved secret values by ``{{secret.NAME}}`` in recorded data.

    Thread-safe: parallel steps resolve secrets concurrently. Besides the raw value
    it also redacts the value's JSON-escaped forms, since recorded data often holds
    JSON text (tool bodies, serialized arguments).
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, name: str, value: str) -> None:
        if not value:
            return
        variants = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        with self._lock:
            for variant in variants:
                if variant:
                    self._names[variant] = name

    def redact_text(self, text: str) -> str:
        with self._lock:
            # Longest first, so a secret containing another secret is replaced whole.
            pairs = sorted(self._names.items(), key=lambda item: len(item[0]), reverse=True)
        for value, name in pairs:
            if value in text:
                text = text.replace(value, "{{secret.%s}}" % name)
        return text

    def clip(self, text: str, limit: int) -> str:
        """``text`` redacted, THEN cut to ``limit`` characters.

        In that order, so a secret that straddles the cut cannot leave its start
        behind; and should the kept text still end in a piece of a secret (at
        least :data:`MIN_FRAGMENT` characters: the text quoted only part of it),
        that piece is redacted too. For text built from provider and tool answers.
        """
        redacted = self.redact_text(text)
        if len(redacted) <= limit:
            return redacted
        text = redacted[:limit]
        start = text.rfind("{{secret.")
        if start != -1 and "}}" not in text[start:]:  # keep a placeholder the cut went through whole
            end = redacted.find("}}", start)
            return redacted[:end + 2] if end != -1 else text[:start]
        with self._lock:
            pairs = list(self._names.items())
        longest, owner = 0, ""
        for value, name in pairs:
            for size in range(min(len(value), len(text)), max(longest, MIN_FRAGMENT - 1), -1):
                if text[-size:] in value:
                    longest, owner = size, name
                    break
        return text[:-longest] + "{{secret.%s}}" % owner if longest else text

    @property
    def active(self) -> bool:
        """Has any secret been resolved in this run (is there anything to redact)?"""
        return bool(self._names)

    def held_back(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins a secret value (not the whole value).

        A stream of text (the run's ``output.delta`` events) keeps that much back until the
        next piece shows whether a secret is being spelled out: then redacting what is let
        go piece by piece gives what redacting the whole text would.
        """
        with self._lock:
            values = list(self._names)
        longest = 0
        for value in values:
            for size in range(min(len(value) - 1, len(text)), longest, -1):
                if text.endswith(value[:size]):
                    longest = size
                    break
        return longest

    def redact(self, data: Any) -> Any:
        """Return ``data`` (str, dict, list, scalars) with every known secret value replaced."""
        if not self._names:  # most runs resolve no secret: skip the walk
            return data
        if isinstance(data, str):
            return self.redact_text(data)
        if isinstance(data, Mapping):
            return {self.redact(key): self.redact(value) for key, value in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.redact(item) for item in data]
        return data
