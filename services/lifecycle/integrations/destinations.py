"""Which hosts the prober may call: public addresses, or networks ops allow-listed.

Health URLs come from partners, and the prober calls them from inside our network, so
private, loopback, link-local and other non-global destinations are refused unless they
are in `PARTNERHUB_WEBHOOK_ALLOW_NETS`: the same rule and allow-list as webhooks
(`services.runtime.addresses`); tests and the embedded default allow loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from services.runtime.addresses import IPAddress, Network, networks, refusal

__all__ = ["Network", "address_allowed", "host_allowed", "literal_allowed", "networks"]


def address_allowed(address: IPAddress, allow: tuple[Network, ...]) -> bool:
    """A public address, or one inside an allow-listed network (the webhooks' rule)."""
    return refusal(address, allow) is None


def literal_allowed(host: str, allow: tuple[Network, ...]) -> bool | None:
    """For an IP-literal host (or `localhost`): whether it is allowed; None for a DNS name."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
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
