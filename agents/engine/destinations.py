"""Where secrets go: allowed-host entries, URL hosts, and the destinations a spec sends secrets to.

Pure functions (no Django, no I/O), shared by the engine's call-time check, the
revision service's creation-time check, readiness, the revision diff and the
``orgs`` backfill migration, so all of them agree on what "the host" is.

Contract:

* an allowed-host entry (:func:`normalize_host_entry`) is a hostname, an IPv4
  address or a bracketed IPv6 address, optionally ``:port``; stored lowercase,
  internationalized names in their ASCII (IDNA) form; no scheme, path, user
  info or wildcard;
* a URL's host (:func:`url_host`) is read with httpx's own parser, the one the
  engine's requests use, so ``http://a@b/`` or ``http://a\\@b/`` name the host
  the connection really goes to;
* an entry matches a URL (:func:`host_allowed`) when the hosts are equal
  (case-insensitive) and, if the entry has a port, the URL's port is equal to it,
  the URL's port being the scheme's default (443, 80) when it gives none;
* a secret is sent only from credential positions: a step model's ``apiKey``
  and ``headers`` values (:func:`secret_destinations`); its destination is the
  model's ``baseUrl``, or the provider's default base URL when there is none.
  Every other place a ``{{secret.NAME}}`` appears is a misuse (:func:`secret_misuses`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import idna

from .providers.openai import DEFAULT_BASE_URL as OPENAI_DEFAULT_BASE_URL
from .spec import key_path, output_templates, referenced_subagents, step_templates
from .templating import iter_references

DEFAULT_PORTS = {"http": 80, "https": 443}
# Base URL a provider calls when the model gives no baseUrl (providers without network: none).
PROVIDER_DEFAULT_BASE_URLS = {"openai": OPENAI_DEFAULT_BASE_URL}
MAX_ENTRY_LENGTH = 261  # 253 for the name, ':' and five digits
_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_FORBIDDEN_CHARS = set("/\\@?#*%,;=&[]{} \t\r\n\"'<>|^`")
# scheme://authority: what decides where a request goes (the rest of a URL does not).
_AUTHORITY_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#]*)")


class HostError(ValueError):
    """An allowed-host entry that is not a plain host (or host:port); the message says why."""


def _canonical_name(host: str) -> str:
    """A host name or IP address in its canonical lowercase ASCII form; HostError if it is neither."""
    if not host:
        raise HostError("is empty")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if ":" in host:
        try:
            return "[" + str(ipaddress.IPv6Address(host)) + "]"
        except ValueError:
            raise HostError("is not a valid IPv6 address") from None
    name = host[:-1] if host.endswith(".") else host
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise HostError(f"is not a valid internationalized host name ({exc})") from None
    name = name.lower()
    if len(name) > 253 or not all(_LABEL_RE.match(label) for label in name.split(".")):
        raise HostError("is not a valid host name")
    return name


def normalize_host_entry(entry: Any) -> str:
    """Validate one ``allowedHosts`` entry and return it canonical (``host`` or ``host:port``)."""
    if not isinstance(entry, str):
        raise HostError("must be a string")
    if not entry or len(entry) > MAX_ENTRY_LENGTH:
        raise HostError(f"must be 1 to {MAX_ENTRY_LENGTH} characters")
    if "://" in entry:
        raise HostError("must be a host name, without a scheme (api.openai.com, not https://api.openai.com)")
    host, port = entry, None
    if entry.startswith("["):  # [v6] or [v6]:port
        close = entry.find("]")
        if close < 0:
            raise HostError("has an unclosed '['")
        host, rest = entry[1:close], entry[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise HostError("must be [IPv6] or [IPv6]:port")
            port = rest[1:]
        if not host or ":" not in host:
            raise HostError("is not a valid IPv6 address")
    elif entry.count(":") > 1:  # a bare IPv6 address
        host = entry
    elif ":" in entry:
        host, port = entry.split(":", 1)
    if "*" in entry:
        raise HostError("must name one host: wildcards are not allowed")
    bad = sorted(set(host) & _FORBIDDEN_CHARS)
    if bad:
        raise HostError(f"must be a host name or host:port, without {''.join(bad)!r} (no paths, user info or "
                        "wildcards)")
    canonical = _canonical_name(host)
    if port is None:
        return canonical
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise HostError("has a port that is not a number between 1 and 65535")
    return f"{canonical}:{int(port)}"


def normalize_host_entries(entries: Iterable[Any]) -> list[str]:
    """Canonical, de-duplicated and sorted; HostError names the first bad entry."""
    out = set()
    for entry in entries:
        try:
            out.add(normalize_host_entry(entry))
        except HostError as exc:
            raise HostError(f"{entry!r} {exc}") from None
    return sorted(out)


@dataclass(frozen=True)
class Host:
    """Where a URL's request goes: canonical host name and effective port."""

    name: str
    port: int
    scheme: str

    def __str__(self) -> str:
        """``name`` on the scheme's default port, else ``name:port`` (the form a backfill stores)."""
        return self.name if DEFAULT_PORTS.get(self.scheme) == self.port else f"{self.name}:{self.port}"


def url_host(url: Any) -> Host | None:
    """The host an http(s) URL connects to (httpx's reading of it), or ``None`` if it names none."""
    if not isinstance(url, str):
        return None
    try:
        parsed = httpx.URL(url)
        raw = parsed.raw_host.decode("ascii")
        scheme = parsed.scheme.lower()
        if scheme not in DEFAULT_PORTS or not raw:
            return None
        return Host(_canonical_name(raw), parsed.port or DEFAULT_PORTS[scheme], scheme)
    except (httpx.InvalidURL, HostError, UnicodeError, ValueError, TypeError):
        return None


def _split_entry(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        close = entry.find("]")
        host, rest = entry[:close + 1], entry[close + 1:]
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, _, port = entry.partition(":")
    return host, int(port) if port.isdigit() else None


def host_allowed(host: Host | None, allowed: Iterable[str]) -> bool:
    """Does one of the ``allowed`` entries match ``host`` (see the module contract)? ``None`` never does."""
    if host is None:
        return False
    for entry in allowed:
        try:
            name, port = _split_entry(normalize_host_entry(entry))
        except HostError:
            continue  # a malformed stored entry allows nothing
        if name == host.name and (port is None or port == host.port):
            return True
    return False


def model_base_url(model: Mapping[str, Any]) -> str | None:
    """The base URL a step model's requests go to: its ``baseUrl`` or the provider's default."""
    base = model.get("baseUrl")
    if isinstance(base, str) and base:
        return base
    return PROVIDER_DEFAULT_BASE_URLS.get(model.get("provider"))  # type: ignore[arg-type]


def static_host(base_url: str | None) -> Host | None:
    """The host of a (possibly templated) base URL, when templates cannot change it; else ``None``."""
    if not base_url:
        return None
    match = _AUTHORITY_RE.match(base_url)
    if match is None or "{{" in match.group(1) or "}}" in match.group(1):
        return None
    return url_host(match.group(1) + "/")


@dataclass(frozen=True)
class SecretUse:
    """One credential position that sends a secret: where in the spec, and to which host.

    ``host`` is ``None`` when the destination cannot be known before the call (a
    templated or invalid host): such a use is never allowed.
    """

    secret: str
    path: str
    host: Host | None

    def to_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "path": self.path, "host": str(self.host) if self.host else None}


def _secret_names(template: Any) -> Iterator[str]:
    if isinstance(template, str):
        for _expression, parts in iter_references(template):
            if parts and parts[0] == "secret" and len(parts) == 2:
                yield parts[1]


def _credential_positions(model: Mapping[str, Any], model_path: str) -> Iterator[tuple[str, Any]]:
    yield key_path(model_path, "apiKey"), model.get("apiKey")
    headers = model.get("headers")
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            yield key_path(key_path(model_path, "headers"), str(name)), value


def secret_destinations(spec: Any) -> list[SecretUse]:
    """Every secret a spec sends from a credential position, with the host it goes to (spec order)."""
    uses: list[SecretUse] = []
    steps = spec.get("steps") if isinstance(spec, Mapping) else None
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        model = step.get("model") if isinstance(step, Mapping) else None
        if not isinstance(model, Mapping):
            continue
        model_path = key_path(f"$.steps[{index}]", "model")
        host = static_host(model_base_url(model))
        for path, template in _credential_positions(model, model_path):
            for name in _secret_names(template):
                uses.append(SecretUse(name, path, host))
    return uses


def secret_misuses(spec: Any) -> list[tuple[str, str]]:
    """``(secret, path)`` for every ``{{secret.NAME}}`` outside a credential position (never sent)."""
    credential = {use.path for use in secret_destinations(spec)}
    found: list[tuple[str, str]] = []
    steps = spec.get("steps") if isinstance(spec, Mapping) else None
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        for path, template, _roots in step_templates(step, f"$.steps[{index}]"):
            if path not in credential:
                found.extend((name, path) for name in _secret_names(template))
    if isinstance(spec, Mapping) and "output" in spec:
        for path, template in output_templates(spec["output"]):
            found.extend((name, path) for name in _secret_names(template))
    return found


def disallowed_uses(uses: Iterable[SecretUse], allowed: Mapping[str, Iterable[str]]) -> list[SecretUse]:
    """The uses whose host is not allowed for their secret (``allowed``: secret name -> host entries).

    Secrets absent from ``allowed`` are skipped (the caller decides what an unknown
    secret means; the engine refuses it at call time anyway).
    """
    return [use for use in uses if use.secret in allowed and not host_allowed(use.host, allowed[use.secret])]


def hosts_by_secret(specs: Iterable[Any]) -> dict[str, set[str]]:
    """Secret name -> the hosts the given specs send it to (fixed hosts only, in stored entry form)."""
    found: dict[str, set[str]] = {}
    for spec in specs:
        for use in secret_destinations(spec):
            if use.host is not None:
                found.setdefault(use.secret, set()).add(str(use.host))
    return found


def referenced_pins(spec: Any) -> list[tuple[str, str]]:
    """``(agent, revision_id)`` of every sub-agent the spec pins to a revision."""
    return sorted((ref.agent, ref.revision_id) for ref in referenced_subagents(spec) if ref.revision_id)
