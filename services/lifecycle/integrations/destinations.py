"""Which hosts the prober may call: public addresses, or networks ops allow-listed.

Health URLs come from partners, and the prober calls them from inside our network, so
private, loopback, link-local and other non-global destinations are refused unless they
are in `PARTNERHUB_WEBHOOK_ALLOW_NETS` (the same allow-list webhooks use; tests and the
embedded default allow loopback).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Parsed allow-list entries (`127.0.0.0/8`, `::1`, …)."""
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def address_allowed(address: Address, allow: tuple[Network, ...]) -> bool:
    """A global address, or one inside an allow-listed network."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allow if net.version == address.version):
        return True
    return address.is_global and not address.is_multicast


def literal_allowed(host: str, allow: tuple[Network, ...]) -> bool | None:
    """For an IP-literal host (or `localhost`): whether it is allowed; None for a DNS name."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return address_allowed(ipaddress.ip_address("127.0.0.1"), allow)
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return address_allowed(address, allow)


async def host_allowed(host: str, allow: tuple[Network, ...]) -> bool:
    """Whether every address `host` resolves to is allowed (False when it does not resolve)."""
    literal = literal_allowed(host, allow)
    if literal is not None:
        return literal
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        address_allowed(ipaddress.ip_address(str(a).split("%", 1)[0]), allow) for a in addresses
    )
