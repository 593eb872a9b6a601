"""Webhook test harness: the webhook routes and workers in a service app, a real receiver, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from events.catalog import DomainEvent, IntegrationAttemptRecorded
from events.envelope import RecordedEvent
from events.schema import events_table
from services.lifecycle.webhooks.ssrf import SsrfGuard
from services.lifecycle.webhooks.wiring import Webhooks, build
from services.runtime.app import Runtime, build_runtime, create_service_app
from services.runtime.clock import Clock, ManualClock, SystemClock
from services.runtime.settings import Settings
from tests.support.tokens import TestIssuer
from tests.webhooks.receiver import Receiver

LOOPBACK = ["127.0.0.0/8", "::1/128"]


async def eventually(check: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Wait until `check()` (sync or async) is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@dataclass
class Harness:
    """An app serving /v1/webhooks with its delivery workers running."""

    app: FastAPI
    runtime: Runtime
    webhooks: Webhooks
    client: httpx.AsyncClient
    issuer: TestIssuer
    clock: Clock

    @property
    def ops(self) -> dict[str, str]:
        return self.issuer.ops()

    def partner(self, partner_id: str, scopes: str | None = None) -> dict[str, str]:
        if scopes is None:
            return self.issuer.partner(partner_id)
        return self.issuer.partner(partner_id, scopes=scopes)

    async def create_endpoint(
        self, partner_id: str, url: str, event_types: list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/webhooks/endpoints",
            json={"url": url, "event_types": event_types or ["*"], **extra},
            headers=self.partner(partner_id),
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def emit(self, event: DomainEvent, *, stream_id: str | None = None) -> RecordedEvent:
        """Append `event` to the store and run the dispatcher on it, as the subscription would."""
        [recorded] = await self.runtime.store.append(
            stream_id=stream_id or f"test-{uuid.uuid4().hex}", expected_version=None, events=[event]
        )
        await self.dispatch(recorded)
        return recorded

    async def dispatch(self, recorded: RecordedEvent) -> None:
        async with self.runtime.engine.begin() as conn:
            await self.webhooks.dispatcher.handle(conn, recorded)

    async def messages(self, endpoint_id: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"/v1/webhooks/endpoints/{endpoint_id}/messages", params={"limit": 200}, headers=headers or self.ops
        )
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    async def stored_events(self, prefix: str = "webhook.") -> list[dict[str, Any]]:
        query = select(events_table.c.type, events_table.c.data).where(events_table.c.type.startswith(prefix))
        async with self.runtime.engine.connect() as conn:
            return [{"type": row.type, **row.data} for row in (await conn.execute(query.order_by(events_table.c.position))).all()]

    async def advance(self, seconds: float) -> None:
        """Move the manual clock and wait until the scheduler looked for due messages."""
        assert isinstance(self.clock, ManualClock)
        self.clock.advance(seconds)
        workers = self.webhooks.workers
        passes = workers.scheduling_passes
        workers.wake()
        await eventually(lambda: workers.scheduling_passes > passes)

    async def quiet(self, seconds: float = 0.2) -> None:
        """Give the workers time to act (only before asserting that nothing happened)."""
        await asyncio.sleep(seconds)


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness_factory(tmp_path: Path) -> AsyncIterator[HarnessFactory]:
    """Builds harnesses; every one is shut down at the end of the test."""
    stack = contextlib.AsyncExitStack()

    async def make(
        *,
        clock: Clock | None = None,
        allow_nets: list[str] | None = None,
        attempt_timeout: float = 5.0,
        guard: SsrfGuard | None = None,
        per_endpoint_concurrency: int | None = None,
        name: str = "lifecycle",
        database_url: str | None = None,
        kafka_bootstrap: str | None = None,
        topic_prefix: str = "partnerhub",
        subscription_options: dict[str, Any] | None = None,
    ) -> Harness:
        settings = Settings(
            env="test",
            var_dir=tmp_path / f"{name}-{uuid.uuid4().hex[:6]}",
            webhook_allow_nets=LOOPBACK if allow_nets is None else allow_nets,
            webhook_attempt_timeout=attempt_timeout,
            kafka_bootstrap=kafka_bootstrap,
            kafka_topic_prefix=topic_prefix,
            lifecycle_database_url=database_url,
        )
        clock = clock or ManualClock(datetime.now(UTC).replace(microsecond=0))
        runtime = build_runtime("lifecycle", settings, clock)
        webhooks = build(runtime, guard=guard, subscription_options=subscription_options)
        if per_endpoint_concurrency is not None:
            webhooks.workers.per_endpoint = per_endpoint_concurrency
        runtime.components.extend(webhooks.components)
        app = create_service_app(
            runtime, title="webhooks under test", description="webhook routes and workers", routers=webhooks.routers
        )
        issuer = TestIssuer(settings.token_issuer)
        app.state.verifier.set_keys(issuer.keyset)
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        await stack.enter_async_context(client)
        return Harness(app, runtime, webhooks, client, issuer, clock)

    try:
        yield make
    finally:
        await stack.aclose()


@pytest.fixture
async def harness(harness_factory: HarnessFactory) -> Harness:
    """A harness with a manual clock and loopback allow-listed."""
    return await harness_factory()


@pytest.fixture
async def live_harness(harness_factory: HarnessFactory) -> Harness:
    """A harness on the wall clock (for timing-related behaviour)."""
    return await harness_factory(clock=SystemClock(), attempt_timeout=2.0)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A verifying receiver on a free loopback port."""
    server = Receiver()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def attempt_event(partner_id: str, n: int = 0) -> IntegrationAttemptRecorded:
    """A deliverable event of `partner_id`."""
    return IntegrationAttemptRecorded(
        partner_id=partner_id, integration_id=f"int-{partner_id}", outcome="succeeded", detail=f"n={n}"
    )


@pytest.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[str]:
    """URL of a new, uniquely named PostgreSQL database (dropped afterwards)."""
    from tests.support.databases import fresh_database

    async with fresh_database(postgres_url, prefix="webhooks") as url:
        yield url
