"""Revoked tokens and clients, known to every service (zero trust: services verify tokens too).

The gateway records each revocation (RFC 7009 `token.revoked`, `client.revoked`) in its
store and serves them, in store-position order, at
`GET /internal/revocations?after=<position>` (scope `events:read`). Each service keeps an
in-memory `RevocationList` that polls that endpoint with its internal client's token and
answers `TokenVerifier.is_revoked(jti, client_id)` from memory, so the check costs two set
look-ups per request. A revoked jti is dropped once its token has expired; a revoked client
stays listed (client ids are never reused).

Wiring a service (in its `create_app`, after `build_runtime`):

    from services.runtime.revocations import install_revocations
    install_revocations(runtime)

The gateway uses the same list, fed from its own database instead of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from services.runtime.http import async_client

if TYPE_CHECKING:
    from services.runtime.app import Runtime

log = logging.getLogger(__name__)

PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked token (`jti`) or client."""

    position: int
    kind: Literal["token", "client"]
    client_id: str
    jti: str | None = None
    expires_at: float | None = None
    """Unix time after which a revoked token is expired anyway (None: a client, forever)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "kind": self.kind,
            "client_id": self.client_id,
            "jti": self.jti,
            "expires_at": None if self.expires_at is None else int(self.expires_at),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Revocation:
        kind = doc["kind"]
        if kind not in ("token", "client"):
            raise ValueError(f"unknown revocation kind {kind!r}")
        expires = doc.get("expires_at")
        return cls(
            position=int(doc["position"]),
            kind=kind,
            client_id=str(doc["client_id"]),
            jti=None if doc.get("jti") is None else str(doc["jti"]),
            expires_at=None if expires is None else float(expires),
        )


Fetch = Callable[[int, int], Awaitable[list[Revocation]]]
"""(after position, limit) -> revocations after it in position order."""


class RevocationList:
    """The deny-list in memory, kept current by polling `fetch` every `interval` seconds."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        name: str = "revocations",
    ) -> None:
        self._fetch = fetch
        self._interval = interval
        self._clock = clock
        self.name = name
        self._tokens: dict[str, float] = {}
        self._clients: set[str] = set()
        self.position = 0
        self.synced = False
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0

    def is_revoked(self, jti: str, client_id: str) -> bool:
        """Whether the token `jti` or its client has been revoked."""
        return client_id in self._clients or jti in self._tokens

    def add(self, revocation: Revocation) -> None:
        """Apply one revocation (the gateway applies its own at once, before the next poll)."""
        if revocation.kind == "client":
            self._clients.add(revocation.client_id)
        elif revocation.jti is not None:
            self._tokens[revocation.jti] = revocation.expires_at or float("inf")

    async def sync(self) -> int:
        """Fetch every revocation after the current position; returns how many arrived."""
        count = 0
        while True:
            batch = await self._fetch(self.position, PAGE_SIZE)
            for revocation in batch:
                self.add(revocation)
                self.position = max(self.position, revocation.position)
            count += len(batch)
            if len(batch) < PAGE_SIZE:
                break
        self.synced = True
        self._prune()
        return count

    def _prune(self) -> None:
        now = self._clock()
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        # Expired tokens fail verification anyway (60 s leeway included).
        horizon = now - 120
        for jti in [j for j, exp in self._tokens.items() if exp < horizon]:
            del self._tokens[jti]

    async def start(self) -> None:
        """First sync (a failure is logged, not fatal: the poller keeps trying), then poll."""
        try:
            await self.sync()
        except Exception as exc:  # noqa: BLE001 - the source may start after us
            log.warning("revocation list %s: first sync failed (%s); retrying in the background", self.name, exc)
        self._task = asyncio.create_task(self._poll(), name=f"revocations:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._interval if failures == 0 else min(30.0, self._interval * 2**failures))
            try:
                await self.sync()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - keep polling whatever went wrong
                failures = min(failures + 1, 5)
                log.warning("revocation list %s: sync failed: %s", self.name, exc)


def gateway_fetch(base_url: str, token: Callable[[], Awaitable[str]], *, timeout: float = 5.0) -> Fetch:
    """A `Fetch` reading the gateway's `GET /internal/revocations` with a bearer token."""
    url = base_url.rstrip("/") + "/internal/revocations"

    async def fetch(after: int, limit: int) -> list[Revocation]:
        async with async_client(timeout=timeout) as client:
            response = await client.get(
                url,
                params={"after": after, "limit": limit},
                headers={"Authorization": f"Bearer {await token()}"},
            )
            response.raise_for_status()
            return [Revocation.from_json(item) for item in response.json()["items"]]

    return fetch


def install_revocations(runtime: Runtime) -> RevocationList | None:
    """Make `runtime`'s token verifier reject revoked tokens and clients (None without an internal client)."""
    settings = runtime.settings
    if not settings.internal_client_id or not settings.internal_client_secret:
        log.warning(
            "PARTNERHUB_INTERNAL_CLIENT_ID/_SECRET are not set: %s cannot learn revoked tokens",
            runtime.service,
        )
        return None
    from services.runtime.tokens import TokenProvider

    revocations = RevocationList(
        gateway_fetch(settings.url_of("gateway"), TokenProvider(settings)),
        interval=settings.revocation_poll_interval,
        name=runtime.service,
    )
    runtime.verifier.is_revoked = revocations.is_revoked
    runtime.components.append(revocations)
    return revocations


def unix(value: datetime | None) -> float | None:
    """A timezone-aware datetime as Unix time."""
    return None if value is None else value.timestamp()
