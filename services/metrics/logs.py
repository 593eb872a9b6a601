"""The sources' log APIs as the metrics service reads them: replay for rebuilds, heads for lag."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import httpx
import orjson

from events.envelope import RecordedEvent
from events.store import EventStore
from services.metrics.projections import SOURCES
from services.runtime.http import async_client
from services.runtime.settings import Settings

TokenSource = Callable[[], Awaitable[str]]
HEAD_HEADER = "X-Head-Position"


class SourceLogs(Protocol):
    """Read access to the sources' logs: what rebuilds, catch-up and lag are computed from."""

    async def read(self, source: str, *, after: int, limit: int) -> tuple[list[RecordedEvent], int]:
        """Up to `limit` events of `source` after `after`, and its head position."""
        ...

    async def head(self, source: str) -> int:
        """The newest position of `source`'s store."""
        ...

    async def aclose(self) -> None: ...


class HttpLogReader:
    """Reads `GET /internal/events?after=&limit=` of each source service (scope events:read)."""

    def __init__(
        self,
        settings: Settings,
        token: TokenSource | None,
        *,
        urls: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._urls = urls or {s: settings.url_of(s) for s in SOURCES}
        self._token = token
        self._client = async_client(timeout=timeout)

    async def read(self, source: str, *, after: int, limit: int) -> tuple[list[RecordedEvent], int]:
        """Up to `limit` events of `source` after `after`, and its head position."""
        body, head = await self._get(source, after=after, limit=limit)
        return [RecordedEvent.from_json(item) for item in body["items"]], head

    async def head(self, source: str) -> int:
        """The newest position of `source`'s store."""
        _, head = await self._get(source, after=0, limit=1)
        return head

    async def _get(self, source: str, *, after: int, limit: int) -> tuple[Any, int]:
        headers = {"Authorization": f"Bearer {await self._token()}"} if self._token else {}
        response = await self._client.get(
            f"{self._urls[source]}/internal/events", params={"after": after, "limit": limit}, headers=headers
        )
        response.raise_for_status()
        body = orjson.loads(response.content)
        head = response.headers.get(HEAD_HEADER)
        if head is None and isinstance(body, dict):
            head = body.get("head")
        return body, int(head or 0)

    async def aclose(self) -> None:
        await self._client.aclose()


class SourceHeads:
    """Each source's head position, cached for `ttl` seconds; None when a source cannot be asked."""

    def __init__(self, reader: SourceLogs | None, *, sources: Sequence[str] = SOURCES, ttl: float = 2.0) -> None:
        self._reader = reader
        self._sources = list(sources)
        self._ttl = ttl
        self._cached: dict[str, int | None] = {}
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, int | None]:
        async with self._lock:
            if time.monotonic() - self._at > self._ttl:
                self._cached = dict(zip(self._sources, await asyncio.gather(*map(self._one, self._sources)), strict=True))
                self._at = time.monotonic()
            return dict(self._cached)

    async def _one(self, source: str) -> int | None:
        if self._reader is None:
            return None
        try:
            return await self._reader.head(source)
        except (httpx.HTTPError, ValueError, OSError):
            return None


class StoreLogs:
    """The sources' logs read straight from their event stores, for a process that holds them
    (tests, tools); the same answers as their log APIs without HTTP."""

    def __init__(self, stores: dict[str, EventStore]) -> None:
        self._stores = stores

    async def read(self, source: str, *, after: int, limit: int) -> tuple[list[RecordedEvent], int]:
        store = self._stores[source]
        events = await store.read_all(after=after, limit=limit)
        return events, await store.head_position()

    async def head(self, source: str) -> int:
        return await self._stores[source].head_position()

    async def aclose(self) -> None:
        return None
