"""Fixtures for the backbone: a real Tansu broker, real SQLite files, real PostgreSQL schemas."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI, Header, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from events.broker import EmbeddedBroker
from events.catalog import PartnerApplied, PartnerDueDiligenceCompleted
from events.log_api import log_router
from events.schema import store_metadata
from events.store import EventStore
from services.runtime.db import create_engine


def utcnow() -> datetime:
    return datetime.now(UTC)


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> None:
    """Poll `condition` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def applied(partner_id: str, name: str = "Acme Robotics") -> PartnerApplied:
    return PartnerApplied(
        partner_id=partner_id,
        name=name,
        website="https://acme.example.com",
        category="ai_ml",
        contact_email="alliances@acme.example.com",
    )


def diligence(partner_id: str, findings: str = "") -> PartnerDueDiligenceCompleted:
    return PartnerDueDiligenceCompleted(
        partner_id=partner_id, phase="initial_screening", passed=True, findings=findings
    )


@pytest.fixture(scope="session")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedBroker]:
    """One real Tansu broker for the session (tests use their own topics)."""
    embedded = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker"))
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"partnerhub.test-{uuid.uuid4().hex[:10]}.events"


async def sqlite_engine(path: Path) -> AsyncEngine:
    """A SQLite file opened as the services open theirs (WAL, busy timeout, orjson)."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.run_sync(store_metadata.create_all)
    return engine


async def postgres_engine(url: str) -> tuple[AsyncEngine, Callable[[], Awaitable[None]]]:
    """An engine on a fresh schema of the test database, and a function dropping it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_async_engine(
        url, pool_size=20, max_overflow=20, connect_args={"server_settings": {"search_path": schema}}
    )
    async with engine.begin() as conn:
        await conn.run_sync(store_metadata.create_all)

    async def drop() -> None:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()

    return engine, drop


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A store database: a SQLite file, and a fresh PostgreSQL schema when configured."""
    if request.param == "sqlite":
        sqlite = await sqlite_engine(tmp_path / "store.db")
        try:
            yield sqlite
        finally:
            await sqlite.dispose()
        return
    pg, drop = await postgres_engine(request.getfixturevalue("postgres_url"))
    try:
        yield pg
    finally:
        await drop()


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A SQLite store database (for tests about Kafka rather than SQL)."""
    engine = await sqlite_engine(tmp_path / f"db-{uuid.uuid4().hex[:6]}.db")
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[EventStore]:
    event_store = EventStore(engine, source="onboarding", now=utcnow)
    try:
        yield event_store
    finally:
        await event_store.close()


@pytest.fixture
async def sqlite_store(sqlite: AsyncEngine) -> AsyncIterator[EventStore]:
    event_store = EventStore(sqlite, source="onboarding", now=utcnow)
    try:
        yield event_store
    finally:
        await event_store.close()


async def read_topic(bootstrap: str, topic: str, partitions: int, *, count: int, timeout: float = 10.0) -> list[Any]:
    """Every record of `topic` from the beginning, once at least `count` arrived."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp_records in batch.values():
                records.extend(tp_records)
        # Anything beyond `count` (duplicates) that is already there.
        for tp_records in (await consumer.getmany(timeout_ms=300)).values():
            records.extend(tp_records)
    finally:
        await consumer.stop()
    return records


def stream(partner_id: str) -> str:
    return f"partner-{partner_id}"


async def append_many(store: EventStore, partners: list[str], per_partner: int) -> None:
    """`per_partner` events on each partner's stream, interleaved across partners."""
    versions = {p: await store.stream_version(stream(p)) for p in partners}

    async def one(partner: str) -> None:
        event: Any = applied(partner) if versions[partner] == 0 else diligence(partner)
        await store.append(stream_id=stream(partner), expected_version=versions[partner], events=[event])
        versions[partner] += 1

    for _ in range(per_partner):
        await asyncio.gather(*(one(p) for p in partners))


LOG_TOKEN = "test-token-with-events-read"


async def require_events_read(authorization: str | None = Header(default=None)) -> None:
    """Stands in for the runtime's `require_scopes("events:read")` dependency."""
    if authorization != f"Bearer {LOG_TOKEN}":
        raise HTTPException(401, "a bearer token with scope events:read is required")


async def log_token() -> str:
    return LOG_TOKEN


def log_app(store: EventStore) -> FastAPI:
    app = FastAPI()
    app.include_router(log_router(store, require_events_read))
    return app


def log_client(store: EventStore, base_url: str = "http://onboarding") -> httpx.AsyncClient:
    """An HTTP client reaching `store`'s log API in process (real routing, validation, auth)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=log_app(store)), base_url=base_url)
