"""HTTP calls to URLs that someone else chose: webhook subscriptions and fulfillment-service callbacks.

Such a URL could point the worker at itself or at its neighbours: loopback, the private network, the cloud
metadata service, the database's port. So these calls go through `guarded_client()`, whose connections are
opened by `GuardedBackend`: it resolves the host once, keeps the addresses the policy allows, and connects
to one of those very addresses (a name that resolves to something else a moment later changes nothing;
TLS still verifies and sends SNI for the URL's host name). By default only globally routable unicast
addresses are allowed; `CANCELFLOW_OUTBOUND_ALLOW` adds private destinations on purpose (`make run` adds
its sandbox). No proxy from the environment and no `.netrc` credentials are used, and redirects are not
followed.

`refusal()` applies the same policy when a URL is registered, so that a bad one gets a clear error at
once; the connect-time check is the guard. `failure_reason()` turns what happened into the short text that
is stored and shown: never the remote body, and one `unreachable` whatever the state of the port (closed,
filtered or speaking another protocol), so that stored errors make no port scanner.

Operator-configured URLs (the payment gateway) are trusted and do not go through here.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpcore
import httpx

from cancelflow.config import get_settings
from cancelflow.config.allowlist import AllowRule, IPAddress

UNREACHABLE: Final = "unreachable"
NOT_ALLOWED: Final = "destination not allowed"
INVALID_URL: Final = "invalid url"

# Prefixes whose addresses carry an IPv4 address that a gateway or tunnel turns into a real IPv4 peer.
_NAT64: Final = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class DestinationNotAllowed(httpx.TransportError):
    """The URL's host is, or resolves only to, an address outside the outbound policy."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if any(address in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address: not loopback, private, link-local (metadata), shared,
    unspecified, reserved, documentation or multicast, nor an IPv6 form of one of those."""
    if not address.is_global or address.is_multicast or address.is_reserved or address.is_unspecified:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return False
        return all(is_public(v4) for v4 in _embedded_ipv4(address))
    return True


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Public addresses, plus whatever the allowlist names."""

    allow: tuple[AllowRule, ...] = ()

    @classmethod
    def from_settings(cls) -> OutboundPolicy:
        return cls(tuple(get_settings().outbound_allow))

    def including(self, rules: Iterable[AllowRule]) -> OutboundPolicy:
        return OutboundPolicy((*self.allow, *rules))

    def permits(self, *, host: str, address: IPAddress, port: int) -> bool:
        if any(rule.matches(host=host, address=address, port=port) for rule in self.allow):
            return True
        return is_public(address)


def _ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text.partition("%")[0])  # drop an IPv6 zone id: it changes no category


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (numeric forms such as `2130706433` or `0x7f000001` included)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(_ip(str(info[4][0])) for info in infos))


def _url_refusal(url: str) -> tuple[str, str, int] | str:
    """(host, scheme, port) of an acceptable URL's shape, or why the URL is refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Enter a valid http(s) URL."
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Enter a valid http(s) URL."
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "The URL must not contain credentials (user:password@); authenticate with the signature."
    return parts.hostname, parts.scheme, port or (443 if parts.scheme == "https" else 80)


def refusal(url: str, *, policy: OutboundPolicy | None = None) -> str | None:
    """Why `url` may not be registered as an outbound destination, or None if it may.

    A host name that does not resolve now is accepted: it is checked again at every connection.
    """
    shape = _url_refusal(url)
    if isinstance(shape, str):
        return shape
    host, _, port = shape
    policy = policy or OutboundPolicy.from_settings()
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):  # unknown today; the connect-time check decides then
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):  # loopback by definition (RFC 6761)
            return "localhost names are loopback: refused unless CANCELFLOW_OUTBOUND_ALLOW lists them."
        return None
    refused = [a for a in addresses if not policy.permits(host=host, address=a, port=port)]
    if refused:
        return (
            f"The host resolves to {', '.join(map(str, refused))}, which is not a public address; "
            "private, loopback, link-local and metadata destinations are refused unless "
            "CANCELFLOW_OUTBOUND_ALLOW lists them."
        )
    return None


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, connecting only to a resolved and checked address."""

    def __init__(self, policy: OutboundPolicy | None = None, inner: httpcore.NetworkBackend | None = None):
        self._policy = policy
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        policy = self._policy or OutboundPolicy.from_settings()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        allowed = [a for a in addresses if policy.permits(host=host, address=a, port=port)]
        if not allowed:
            raise DestinationNotAllowed(f"{host}:{port} resolves to no allowed address")
        last: Exception | None = None
        for address in allowed:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # The checked address itself: no second lookup that could answer differently.
                return self._inner.connect_tcp(
                    str(address), port, remaining, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc  # try the next allowed address, as socket.create_connection would
        assert last is not None
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise DestinationNotAllowed("unix sockets are not an outbound destination")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """`httpx.HTTPTransport` whose connection pool opens connections through `GuardedBackend`."""

    def __init__(
        self,
        *,
        policy: OutboundPolicy | None = None,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=20, max_keepalive_connections=5)
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # The pool the parent built, again, with the one thing it does not let us choose: the backend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(
    *,
    timeout: float | None = None,
    policy: OutboundPolicy | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Client:
    """A client for URLs someone else chose: checked destinations, no env proxy or netrc, no redirects."""
    if timeout is None:
        timeout = get_settings().http_timeout.total_seconds()
    return httpx.Client(
        transport=GuardedTransport(policy=policy, verify=verify),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


def failure_reason(error: BaseException | None = None, *, status_code: int | None = None) -> str:
    """The short, sanitised text stored for a failed outbound call (never the remote body)."""
    if status_code is not None:
        return f"http {status_code}"
    if isinstance(error, DestinationNotAllowed):
        return NOT_ALLOWED
    if isinstance(error, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return INVALID_URL
    return UNREACHABLE


__all__ = [
    "NOT_ALLOWED",
    "UNREACHABLE",
    "DestinationNotAllowed",
    "GuardedBackend",
    "GuardedTransport",
    "OutboundPolicy",
    "failure_reason",
    "guarded_client",
    "is_public",
    "refusal",
    "resolve",
]
