"""The egress policy: which addresses outbound HTTP (model providers, tools, webhooks) may reach.

Contract:

* An address is *internal* (:func:`is_internal`) when it is loopback, private
  (RFC 1918, ULA ``fc00::/7``), link-local (``169.254/16``, ``fe80::/10``, so
  the cloud metadata endpoints ``169.254.169.254`` and ``fd00:ec2::254``),
  unspecified, multicast, reserved, CGNAT ``100.64/10``, or otherwise not
  globally routable; IPv6 forms that embed an IPv4 address (IPv4-mapped
  ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by
  the IPv4 address they carry.
* Internal addresses are refused unless an allow rule matches
  (:func:`parse_allow`, the ``FRUXON_EGRESS_ALLOW`` syntax: comma-separated IPs
  or CIDRs, each with an optional ``:port``; IPv6 as ``[::1]:9100``,
  ``[fd00::/8]`` or a bare ``fd00::/8``). Public addresses are always allowed.
* The check runs at connect time on the *resolved* address
  (:class:`GuardedBackend`, :class:`AsyncGuardedBackend`: httpcore network
  backends): the host is resolved once, every address it resolves to is
  checked, and the connection goes to a checked address (TLS SNI and ``Host``
  stay the host name). DNS rebinding and numeric-host spellings
  (``2130706433``, ``0x7f.1``) therefore cannot get around it: what is judged is
  what the resolver returned. Every client the product builds
  (:func:`client`, :func:`async_client`) uses these backends and does not follow
  redirects; a client that did would connect each hop through the same check.
* A refused connection raises :class:`EgressDenied` (an ``httpcore.ConnectError``;
  httpx re-raises it as ``httpx.ConnectError`` caused by it: :func:`is_denied`).
  Its message names neither the address nor the port.
* :func:`url_problem` is the write-time check of a URL (scheme, user info, and
  a literal host in a refused range or ``localhost``); it does not resolve
  names: the connect-time check is the guarantee.

The policy is process-wide (:func:`configure`, :func:`current_policy`); the
Django layer configures it from settings. Pure Python: no Django here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import threading
import typing
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
import anyio.to_thread
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DENIED_MESSAGE = "the destination is not allowed by the egress policy"

# Listed explicitly (on top of ``not is_global``) so the policy does not change with
# the Python version's idea of "global".
REFUSED_NETWORKS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::/96", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressConfigError(ValueError):
    """An ``FRUXON_EGRESS_ALLOW`` value that does not parse; the message says which entry and why."""


class EgressDenied(httpcore.ConnectError):
    """The egress policy refused the connection (raised before any packet is sent)."""

    def __init__(self, message: str = DENIED_MESSAGE):
        super().__init__(message)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_internal(ip: IPAddress) -> bool:
    """Is ``ip`` an address the policy refuses unless allowed (see the module contract)?"""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return is_internal(inner)  # judged by the IPv4 address it reaches
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_reserved:
        return True
    return any(ip in network for network in REFUSED_NETWORKS if network.version == ip.version) or not ip.is_global


@dataclass(frozen=True)
class AllowRule:
    network: IPNetwork
    port: int | None = None

    def matches(self, ip: IPAddress, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1 on the wire
        return any(c.version == self.network.version and c in self.network for c in candidates)

    def __str__(self) -> str:
        net = str(self.network) if self.network.num_addresses > 1 else str(self.network.network_address)
        if self.port is None:
            return net
        return f"[{net}]:{self.port}" if self.network.version == 6 else f"{net}:{self.port}"


_PORT_RE = re.compile(r"[0-9]{1,5}")
_BRACKETED_RE = re.compile(r"\[([^\[\]]+)\](?::([^:]*))?")


def _parse_port(text: str, entry: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise EgressConfigError(f"entry {entry!r}: the port must be a number from 1 to 65535")
    return int(text)


def _parse_network(text: str, entry: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise EgressConfigError(f"entry {entry!r}: {text} has host bits set (did you mean "
                                    f"{ipaddress.ip_network(text, strict=False)}?)") from None
        raise EgressConfigError(f"entry {entry!r}: {text!r} is not an IP address or CIDR block "
                                f"(host names are not accepted)") from None


def parse_allow(value: str) -> tuple[AllowRule, ...]:
    """Parse ``FRUXON_EGRESS_ALLOW`` strictly; :class:`EgressConfigError` names the bad entry.

    ``""`` (or only spaces) allows nothing. Entries: ``IP``, ``IP:port``, ``CIDR``,
    ``CIDR:port`` for IPv4; ``IPv6``, ``IPv6/len``, ``[IPv6]``, ``[IPv6/len]``,
    ``[IPv6]:port``, ``[IPv6/len]:port`` for IPv6. No empty entries, no host names.
    """
    if not isinstance(value, str):
        raise EgressConfigError("must be a string")
    if not value.strip():
        return ()
    rules = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            raise EgressConfigError(f"empty entry in {value!r} (two commas, or a comma at an end)")
        port = None
        if entry.startswith("["):
            match = _BRACKETED_RE.fullmatch(entry)
            if match is None:
                raise EgressConfigError(f"entry {entry!r}: write IPv6 as [address]:port or [address/len]")
            text = match.group(1)
            if match.group(2) is not None:
                port = _parse_port(match.group(2), entry)
            network = _parse_network(text, entry)
            if network.version != 6:
                raise EgressConfigError(f"entry {entry!r}: brackets are for IPv6 addresses only")
        elif entry.count(":") == 1:
            text, port_text = entry.split(":")
            port = _parse_port(port_text, entry)
            network = _parse_network(text, entry)
        else:
            network = _parse_network(entry, entry)
        rules.append(AllowRule(network, port))
    return tuple(rules)


class EgressPolicy:
    """Refuse internal addresses (:func:`is_internal`) unless one of ``allow`` matches."""

    def __init__(self, allow: Iterable[AllowRule] = ()):
        self.allow = tuple(allow)

    @classmethod
    def from_setting(cls, value: str) -> EgressPolicy:
        return cls(parse_allow(value))

    def allows(self, ip: IPAddress, port: int | None) -> bool:
        return not is_internal(ip) or any(rule.matches(ip, port) for rule in self.allow)

    def __repr__(self) -> str:
        return f"EgressPolicy(allow={','.join(map(str, self.allow))!r})"


_policy = EgressPolicy()
_policy_lock = threading.Lock()


def configure(policy: EgressPolicy) -> None:
    """Install the process-wide policy (the Django layer does, from ``FRUXON_EGRESS_ALLOW``)."""
    global _policy
    with _policy_lock:
        _policy = policy


def current_policy() -> EgressPolicy:
    return _policy


def is_denied(exc: BaseException | None) -> bool:
    """Was ``exc`` (or an exception it was raised from) a refusal by the egress policy?"""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, EgressDenied):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


# --- connect time -------------------------------------------------------------------------------
def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (in the resolver's order, without repeats).

    ``httpcore.ConnectError`` when the name does not resolve (a generic message: the
    resolver's text is not shown to anyone).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise httpcore.ConnectError("the host name could not be resolved") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            continue
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise httpcore.ConnectError("the host name could not be resolved")
    return addresses


def checked_addresses(host: str, port: int, policy: EgressPolicy | None = None) -> list[IPAddress]:
    """Resolve ``host`` and check every address: all must be allowed, else :class:`EgressDenied`.

    All, not any: a name that resolves to a public and an internal address must not
    let a retry on the next address reach the internal one.
    """
    policy = policy or current_policy()
    addresses = resolve(host, port)
    if not all(policy.allows(ip, port) for ip in addresses):
        raise EgressDenied()
    return addresses


class GuardedBackend(httpcore.NetworkBackend):
    """A sync httpcore backend whose ``connect_tcp`` resolves, checks and connects to the checked address."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None, policy: EgressPolicy | None = None):
        self._inner = inner or httpcore.SyncBackend()
        self._policy = policy  # None: the process-wide policy at connect time

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        addresses = checked_addresses(host, port, self._policy)
        error: Exception | None = None
        for ip in addresses:
            try:
                return self._inner.connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                               socket_options=socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        raise EgressDenied()  # a local socket is as internal as it gets

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _literal_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one in canonical form (what getaddrinfo would return as is)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return ip if str(ip) == host.strip("[]") else None


class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The async twin of :class:`GuardedBackend` (resolution runs in a worker thread)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None, policy: EgressPolicy | None = None):
        self._inner = inner or httpcore.AnyIOBackend()
        self._policy = policy

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.AsyncNetworkStream:
        literal = _literal_ip(host)
        if literal is not None:  # nothing to resolve: no worker thread for it
            if not (self._policy or current_policy()).allows(literal, port):
                raise EgressDenied()
            addresses = [literal]
        else:
            try:
                with anyio.fail_after(timeout):
                    addresses = await anyio.to_thread.run_sync(checked_addresses, host, port, self._policy,
                                                               abandon_on_cancel=True)
            except TimeoutError:
                raise httpcore.ConnectTimeout("the host name could not be resolved in time") from None
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[typing.Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise EgressDenied()

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _guard_pool(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport, backend: typing.Any) -> None:
    pool = transport._pool  # httpx builds the pool; connections read its backend when they open
    if not isinstance(pool, httpcore.ConnectionPool | httpcore.AsyncConnectionPool) \
            or not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpx/httpcore changed: cannot install the egress guard")
    pool._network_backend = backend


def transport(*, limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
              verify: ssl.SSLContext | str | bool = True, policy: EgressPolicy | None = None) -> httpx.HTTPTransport:
    """An httpx transport whose every connection goes through :class:`GuardedBackend`."""
    guarded = httpx.HTTPTransport(limits=limits, verify=verify)
    _guard_pool(guarded, GuardedBackend(policy=policy))
    return guarded


def async_transport(*, limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
                    verify: ssl.SSLContext | str | bool = True,
                    policy: EgressPolicy | None = None) -> httpx.AsyncHTTPTransport:
    guarded = httpx.AsyncHTTPTransport(limits=limits, verify=verify)
    _guard_pool(guarded, AsyncGuardedBackend(policy=policy))
    return guarded


def client(*, limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
           policy: EgressPolicy | None = None, **kwargs: typing.Any) -> httpx.Client:
    """The product's sync client: guarded transport, no redirects followed.

    With an explicit transport httpx ignores proxy environment variables, which is
    deliberate: a proxy would make the connection, out of the policy's sight.
    """
    kwargs.setdefault("follow_redirects", False)
    return httpx.Client(transport=transport(limits=limits, policy=policy), **kwargs)


def async_client(*, limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
                 policy: EgressPolicy | None = None, verify: ssl.SSLContext | str | bool = True,
                 **kwargs: typing.Any) -> httpx.AsyncClient:
    """The product's async client (same contract as :func:`client`). ``verify`` goes to the
    transport (a shared ``SSLContext`` saves loading the CA bundle per client)."""
    kwargs.setdefault("follow_redirects", False)
    return httpx.AsyncClient(transport=async_transport(limits=limits, policy=policy, verify=verify), **kwargs)


# --- write time ---------------------------------------------------------------------------------
# The numeric IPv4 spellings libc's inet_aton accepts (2130706433, 0x7f.1, 0177.0.0.1).
_NUMERIC_HOST_RE = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)
_AUTHORITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*(?=[/?#]|$)")


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host spells literally (any numeric form), or None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST_RE.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class UrlProblem:
    reason: str  # "scheme" | "userinfo" | "invalid" | "internal"
    message: str


def url_problem(url: str, policy: EgressPolicy | None = None) -> UrlProblem | None:
    """The write-time check of an outbound URL; None when it may be stored.

    A URL holding a ``{{template}}`` is checked only when its scheme and host come
    before the first template (the connect-time check covers the rest).
    """
    policy = policy or current_policy()
    if "{{" in url:
        prefix = url.split("{{", 1)[0]
        match = _AUTHORITY_RE.match(prefix)
        if match is None or match.end() == len(prefix):
            return None  # the host itself is templated
        url = match.group(0)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return UrlProblem("invalid", "is not a valid URL")
    if parsed.scheme not in ("http", "https"):
        return UrlProblem("scheme", "must be an http:// or https:// URL")
    if parsed.userinfo:
        return UrlProblem("userinfo", "must not carry a user name or password (use a secret in a header)")
    host = parsed.host.lower().rstrip(".")
    if not host:
        return UrlProblem("invalid", "has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if host == "localhost" or host.endswith(".localhost"):
        if policy.allows(ipaddress.ip_address("127.0.0.1"), port) and policy.allows(ipaddress.ip_address("::1"), port):
            return None
        return UrlProblem("internal", "points at localhost, which the egress policy does not allow")
    ip = literal_address(host)
    if ip is not None and not policy.allows(ip, port):
        return UrlProblem("internal", "points at an internal address (loopback, private, link-local or "
                                      "metadata), which the egress policy does not allow")
    return None
