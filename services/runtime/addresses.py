"""Which network addresses partner-supplied URLs may reach (webhooks and health probes).

Addresses that are not globally routable (private, loopback, link-local, multicast,
reserved, shared, unspecified — which covers the cloud metadata addresses) are refused
unless they lie inside an allow-listed network (`PARTNERHUB_WEBHOOK_ALLOW_NETS`). IPv4
addresses carried inside IPv6 ones (mapped, 6to4, NAT64) are judged as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Parsed allow-list entries (`127.0.0.0/8`, `::1`, …)."""
    return tuple(ipaddress.ip_network(str(value), strict=False) for value in values)


def allow_listed(ip: IPAddress, allow: Iterable[Network]) -> bool:
    """Whether `ip` lies inside an allow-listed network."""
    return any(ip.version == net.version and ip in net for net in allow)


def kind_of(ip: IPAddress) -> str | None:
    """Why `ip` is not public ("private", "loopback", …); None when it is."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def embedded_ipv4(ip: IPAddress) -> list[IPAddress]:
    """IPv4 addresses carried inside an IPv6 one (mapped, 6to4, NAT64)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    inner: list[IPAddress] = []
    if ip.ipv4_mapped is not None:
        inner.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        inner.append(ip.sixtofour)
    if ip in _NAT64:
        inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return inner


def refusal(ip: IPAddress, allow: Iterable[Network]) -> str | None:
    """What kind of forbidden address `ip` is; None when it is public or allow-listed."""
    if allow_listed(ip, allow):
        return None
    for candidate in [*embedded_ipv4(ip), ip]:
        kind = kind_of(candidate)
        if kind is not None:
            return kind
    return None
