"""One HTTP attempt: SSRF-checked, pinned to the checked address, no redirects, bounded in time and size."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import aiohttp
from yarl import URL

from services.lifecycle.webhooks.domain import (
    RESPONSE_READ_CAP,
    AttemptResult,
    Destination,
    InvalidEndpoint,
    parse_destination,
    parse_retry_after,
)
from services.lifecycle.webhooks.ssrf import Refused, SsrfGuard

EXCERPT_CHARS = 1024
USER_AGENT = "partnerhub-webhooks/1.0"


class Sender:
    """Sends webhook requests with one shared aiohttp session (no per-host pool limit)."""

    def __init__(
        self,
        guard: SsrfGuard,
        *,
        timeout: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.guard = guard
        self.timeout = timeout
        self._wall = wall
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session."""
        if self._session is None:
            # limit=0: pools are not shared across endpoints' budgets; the workers bound concurrency.
            connector = aiohttp.TCPConnector(limit=0, use_dns_cache=False, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False,
                trust_env=False,
            )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, url: str, *, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        """POST `body` to `url`; every failure comes back as an `AttemptResult`, never raised."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        started = time.perf_counter()

        def result(
            status: int | None, error: str | None, *, retry_after: float | None = None, excerpt: str = ""
        ) -> AttemptResult:
            elapsed = (time.perf_counter() - started) * 1000
            return AttemptResult(
                status_code=status,
                duration_ms=round(elapsed, 3),
                error=error,
                retry_after=retry_after,
                response_excerpt=excerpt,
            )

        try:
            destination = _destination(url)
        except InvalidEndpoint as exc:
            return result(None, f"invalid url: {exc}")
        try:
            async with asyncio.timeout(self.timeout):
                addresses = await self.guard.check(destination)
                # Connect to the checked address; Host and SNI (and certificate checks) keep the name.
                pinned = _pinned_url(destination, addresses[0])
                request_headers = {**headers, "Host": destination.host_header, "User-Agent": USER_AGENT}
                async with self._session.post(
                    pinned,
                    data=body,
                    headers=request_headers,
                    allow_redirects=False,
                    server_hostname=destination.host if destination.scheme == "https" else None,
                ) as response:
                    excerpt = await _read_capped(response)
                    retry_after = parse_retry_after(
                        response.headers.get("Retry-After"), datetime.fromtimestamp(self._wall(), UTC)
                    )
                    return result(
                        response.status,
                        None if 200 <= response.status < 300 else f"HTTP {response.status}",
                        retry_after=retry_after,
                        excerpt=excerpt,
                    )
        except Refused as exc:
            return result(None, f"refused: {exc}")
        except TimeoutError:
            return result(None, f"no complete answer within {self.timeout:g} s")
        except OSError as exc:  # DNS failures and refused connections
            return result(None, f"connection failed: {exc.__class__.__name__}: {exc}"[:500])
        except aiohttp.ClientError as exc:
            return result(None, f"request failed: {exc.__class__.__name__}: {exc}"[:500])


@functools.lru_cache(maxsize=4096)
def _destination(url: str) -> Destination:
    return parse_destination(url)


@functools.lru_cache(maxsize=4096)
def _pinned_url(destination: Destination, address: str) -> URL:
    """The URL with its host replaced by the checked address."""
    literal = f"[{address}]" if ":" in address else address
    return URL(f"{destination.scheme}://{literal}:{destination.port}{destination.target}", encoded=True)


async def _read_capped(response: aiohttp.ClientResponse) -> str:
    """At most RESPONSE_READ_CAP bytes of the body; the connection is dropped when more remain."""
    chunks: list[bytes] = []
    size = 0
    while size < RESPONSE_READ_CAP:
        chunk = await response.content.read(RESPONSE_READ_CAP - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size >= RESPONSE_READ_CAP and not response.content.at_eof():
        response.close()
    return b"".join(chunks)[:EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]
