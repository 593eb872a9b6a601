"""A live metrics platform for tests and the bench, from real components on loopback:
the embedded Tansu broker, one event store (SQLite) per source service with its real
relay and its real log API served by uvicorn, and the metrics app with its
subscriptions. Events are appended to the source stores with explicit `occurred_at`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from events.broker import EmbeddedBroker
from events.catalog import DomainEvent
from events.envelope import RecordedEvent
from events.store import EventStore, NewEvent
from services.metrics.app import create_app
from services.metrics.logs import HttpLogReader
from services.metrics.projections import SOURCES
from services.runtime.app import build_runtime, create_service_app
from services.runtime.clock import Clock, ManualClock
from services.runtime.settings import Settings
from tests.support.tokens import TestIssuer

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(check: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.02) -> T:
    """Call `check` until it returns something truthy without AssertionError; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s")
        await asyncio.sleep(interval)


class _Server(uvicorn.Server):
    """uvicorn inside the test's event loop, leaving the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Served:
    app: FastAPI
    server: _Server
    task: asyncio.Task[None]
    url: str

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


async def serve(app: FastAPI, port: int) -> Served:
    """Run `app` (lifespan included) with uvicorn on 127.0.0.1:`port` until `stop()`."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", access_log=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        await asyncio.sleep(0.01)
    return Served(app, server, task, f"http://127.0.0.1:{port}")


@dataclass
class LivePlatform:
    settings: Settings
    clock: Clock
    issuer: TestIssuer
    broker: EmbeddedBroker
    sources: dict[str, Served]
    metrics: Served
    http: httpx.AsyncClient
    _streams: dict[str, int] = field(default_factory=dict)

    def store(self, source: str) -> EventStore:
        store: EventStore = self.sources[source].app.state.store
        return store

    async def append(self, event: DomainEvent, at: datetime, *, stream_id: str | None = None) -> RecordedEvent:
        """Append `event` to its source's store, as having happened at `at`."""
        stream = stream_id or f"{event.type.split('.')[0]}-{getattr(event, 'integration_id', None) or event.partner_id or uuid.uuid4().hex}"
        (recorded,) = await self.store(event.source).append(
            stream_id=stream, expected_version=None, events=[NewEvent(event, occurred_at=at)]
        )
        return recorded

    def ops(self) -> dict[str, str]:
        return self.issuer.ops()

    async def kpis(self, window: str = "30d", partner_id: str | None = None) -> dict[str, Any]:
        path = f"/v1/kpis/partners/{partner_id}" if partner_id else "/v1/kpis"
        response = await self.http.get(path, params={"window": window}, headers=self.ops())
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def heads(self) -> dict[str, int]:
        return {s: await self.store(s).head_position() for s in SOURCES}

    async def settled(self, timeout: float = 20.0) -> dict[str, Any]:
        """The platform KPIs once `as_of` has reached every source's head."""
        heads = await self.heads()

        async def check() -> dict[str, Any]:
            doc = await self.kpis()
            assert doc["as_of"] == heads, (doc["as_of"], heads)
            return doc

        return await wait_until(check, timeout=timeout)


def platform_settings(var_dir: Path, bootstrap: str, **overrides: Any) -> Settings:
    ports = {f"{s}_port": free_port() for s in ("gateway", "onboarding", "lifecycle", "metrics")}
    values: dict[str, Any] = {
        "var_dir": var_dir,
        "env": "test",
        "kafka_bootstrap": bootstrap,
        # Each platform gets its own topics, so several can share one broker.
        "kafka_topic_prefix": f"t{uuid.uuid4().hex[:10]}",
        "kafka_partitions": 3,
        "relay_poll_interval": 0.01,
        "consumer_max_retries": 2,
        **ports,
        **overrides,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def live_platform(
    var_dir: Path, broker: EmbeddedBroker, *, clock: Clock | None = None, **overrides: Any
) -> AsyncIterator[LivePlatform]:
    """Source stores + relays + log APIs, and the metrics service, all started; stopped on exit."""
    clock = clock or ManualClock()
    settings = platform_settings(var_dir, broker.bootstrap, **overrides)
    issuer = TestIssuer(settings.token_issuer)
    started: list[Served] = []
    http = httpx.AsyncClient(timeout=30.0)
    try:
        sources: dict[str, Served] = {}
        for source in SOURCES:
            runtime = build_runtime(source, settings, clock)
            app = create_service_app(runtime, title=f"{source} (log only)", description="test source", routers=[])
            app.state.verifier.set_keys(issuer.keyset)
            sources[source] = await serve(app, settings.port_of(source))
            started.append(sources[source])

        async def token() -> str:
            return issuer.mint("metrics-internal", "events:read")

        metrics_app = create_app(settings, clock=clock, logs=HttpLogReader(settings, token))
        metrics_app.state.verifier.set_keys(issuer.keyset)
        metrics = await serve(metrics_app, settings.port_of("metrics"))
        started.append(metrics)
        http.base_url = httpx.URL(metrics.url)
        yield LivePlatform(settings, clock, issuer, broker, sources, metrics, http)
    finally:
        await http.aclose()
        for served in reversed(started):
            await served.stop()
