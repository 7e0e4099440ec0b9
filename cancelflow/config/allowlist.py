"""`CANCELFLOW_OUTBOUND_ALLOW`: the destinations outside the public internet that outbound calls may reach.

Comma-separated entries, each an address, a network or a host name, with an optional port:
``10.20.0.0/16``, ``127.0.0.1:8101``, ``[::1]:8101``, ``fd00::/8``, ``hooks.internal:443``. An address or
network entry matches the address actually connected to; a host name entry matches the URL's host name
(whatever it resolves to: allowing a name trusts its DNS). Without a port, every port matches.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)*$"
)


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One allowlist entry: a network or a host name, and a port or any port."""

    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def matches(self, *, host: str, address: IPAddress | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address is not None and address.version == self.network.version and address in self.network
        return self.host is not None and self.host == host.lower().rstrip(".")

    def __str__(self) -> str:
        if self.network is not None:
            target = str(self.network)
            if self.network.num_addresses == 1:
                target = str(self.network.network_address)
            if self.port is not None and self.network.version == 6:
                target = f"[{target}]"
        else:
            target = str(self.host)
        return target if self.port is None else f"{target}:{self.port}"


def parse_allow_rule(text: str) -> AllowRule:
    """One entry; ValueError saying what is wrong with it."""
    entry = text.strip()
    if not entry:
        raise ValueError("empty entry")
    port: int | None = None
    target = entry
    if entry.startswith("["):
        inside, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{entry!r}: expected [IPv6 address or network]:port")
        target, port_text = inside, rest[1:] if rest else None
        port = _port(entry, port_text) if port_text is not None else None
    elif entry.count(":") == 1:  # host:port or IPv4:port; a bare IPv6 address has more colons
        target, _, port_text = entry.partition(":")
        port = _port(entry, port_text)
    try:
        return AllowRule(network=ipaddress.ip_network(target, strict=False), port=port)
    except ValueError:
        pass  # not an address or network: a host name
    host = target.lower().rstrip(".")
    if not _HOST_NAME.match(host):
        raise ValueError(f"{entry!r}: expected an IP address, a network (CIDR) or a host name, with :port")
    return AllowRule(host=host, port=port)


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: the port must be 1-65535")
    return int(text)


def parse_allow_entries(text: str) -> tuple[AllowRule, ...]:
    """The rules of a comma-separated allow list (the environment's form)."""
    return tuple(parse_allow_rule(part) for part in text.split(",") if part.strip())


def parse_allow_list(value: object) -> object:
    """Settings validator: a comma-separated string (the environment) or a sequence of entries."""
    if isinstance(value, str):
        return parse_allow_entries(value)
    if isinstance(value, list | tuple):
        return tuple(v if isinstance(v, AllowRule) else parse_allow_rule(str(v)) for v in value)
    return value
