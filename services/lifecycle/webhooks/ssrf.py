"""SSRF guard: resolve a destination once, refuse non-public addresses, connect to what was checked.

Addresses that are not globally routable (private, loopback, link-local, multicast,
reserved, shared, unspecified — which covers the cloud metadata addresses) are refused
unless they lie inside an allow-listed network (`PARTNERHUB_WEBHOOK_ALLOW_NETS`).
Plain `http` is accepted only when every address is allow-listed. The delivery path
connects to an address returned by `check` (never resolving the name again), so a DNS
answer that changes between the check and the connection (rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable

from services.lifecycle.webhooks.domain import Destination
from services.runtime.addresses import IPAddress, allow_listed, networks, refusal

Resolve = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the addresses the host resolves to."""


class Refused(Exception):
    """The destination may not be called."""


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (TCP)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


_UNKNOWN = "?"


@functools.lru_cache(maxsize=4096)
def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class SsrfGuard:
    """Decides which addresses a webhook may be sent to."""

    def __init__(
        self,
        allow_nets: Iterable[str] = (),
        *,
        resolve: Resolve = system_resolve,
        cache_ttl: float = 10.0,
    ) -> None:
        self._allow = networks(allow_nets)
        self._resolve = resolve
        self._cache_ttl = cache_ttl
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._verdicts: dict[str, str | None] = {}
        self._listed_cache: dict[str, bool] = {}

    def _listed(self, address: str) -> bool:
        listed = self._listed_cache.get(address)
        if listed is None:
            listed = self.allow_listed(ipaddress.ip_address(address.split("%", 1)[0]))
            if len(self._listed_cache) > 10_000:
                self._listed_cache.clear()
            self._listed_cache[address] = listed
        return listed

    def allow_listed(self, ip: IPAddress) -> bool:
        """Whether `ip` lies inside an allow-listed network."""
        return allow_listed(ip, self._allow)

    def refusal(self, address: str) -> str | None:
        """What kind of forbidden address `address` is ("private", "loopback", …); None when allowed."""
        known = self._verdicts.get(address, _UNKNOWN)
        if known is not _UNKNOWN:
            return known
        verdict = self._refusal(address)
        if len(self._verdicts) > 10_000:
            self._verdicts.clear()
        self._verdicts[address] = verdict
        return verdict

    def _refusal(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "malformed"
        return refusal(ip, self._allow)

    async def check(self, destination: Destination) -> list[str]:
        """The addresses to connect to for `destination`; `Refused` when any is not allowed.

        Raises `OSError` (socket.gaierror) when the name does not resolve.
        """
        addresses = await self._addresses(destination)
        if not addresses:
            raise Refused(f"{destination.host} resolves to no address")
        for address in addresses:
            kind = self.refusal(address)
            if kind is not None:
                what = f"{address} is a {kind} address"
                if address != destination.host:
                    what = f"{destination.host} resolves to {what}"
                raise Refused(f"{what}, outside PARTNERHUB_WEBHOOK_ALLOW_NETS")
        if destination.scheme == "http" and not all(self._listed(address) for address in addresses):
            raise Refused("https is required (plain http only to allow-listed networks)")
        return addresses

    async def _addresses(self, destination: Destination) -> list[str]:
        host = destination.host
        if _is_literal(host):
            return [host]
        key = (host, destination.port)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = await self._resolve(host, destination.port)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + self._cache_ttl, addresses)
        return addresses
