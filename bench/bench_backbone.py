"""The event backbone: store appends, relay store→Kafka, subscription catch-up from the log API.

- appends: 1-event commands from 32 concurrent writers, with group commit (concurrent
  appends share a transaction) and without (the peer), on SQLite and PostgreSQL;
- relay: a filled store published to the embedded Tansu broker (events/s until the
  broker acknowledged the last one);
- subscription catch-up: a subscription reading the log API of another process over
  HTTP into a count-per-partner read model, timed from start until caught up; and the
  same read model fed from Kafka.

    python -m bench.bench_backbone
    python -m bench.bench_backbone --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test
    python -m bench.bench_backbone --no-postgres --events 20000

Writes bench/results/backbone.json in bench/run.py's format and prints a table. CPU
seconds of this process are reported beside wall time: on a shared machine they are the
steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, text, update  # noqa: E402
from sqlalchemy.dialects import postgresql, sqlite  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine  # noqa: E402

from bench.run import environment  # noqa: E402
from events.broker import EmbeddedBroker  # noqa: E402
from events.catalog import PartnerApplied, PartnerDueDiligenceCompleted  # noqa: E402
from events.envelope import RecordedEvent  # noqa: E402
from events.relay import Relay  # noqa: E402
from events.schema import store_metadata  # noqa: E402
from events.store import EventStore  # noqa: E402
from events.subscription import SourceInfo, Subscription  # noqa: E402
from services.runtime.db import create_engine  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "backbone.json"
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
WRITERS = 32
PARTITIONS = 6

read_model = MetaData()
partner_counts = Table(
    "partner_counts",
    read_model,
    Column("partner_id", String(100), primary_key=True),
    Column("events", Integer, nullable=False),
)


def now() -> datetime:
    return datetime.now(UTC)


def applied(partner: str) -> PartnerApplied:
    return PartnerApplied(
        partner_id=partner,
        name="Acme Robotics",
        website="https://acme-robotics.example.com",
        category="ai_ml",
        contact_email="alliances@acme-robotics.example.com",
    )


def diligence(partner: str) -> PartnerDueDiligenceCompleted:
    return PartnerDueDiligenceCompleted(partner_id=partner, phase="initial_screening", passed=True)


class Clock:
    """Wall and process CPU time of a measured section."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


# --- databases -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def database(kind: str, postgres_url: str | None, workdir: Path) -> AsyncIterator[AsyncEngine]:
    """A fresh store database: a SQLite file, or a new schema in the PostgreSQL database."""
    if kind == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{workdir / f'{uuid.uuid4().hex[:8]}.db'}")
        drop: Callable[[], Awaitable[None]] | None = None
    else:
        assert postgres_url is not None
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = create_async_engine(
            postgres_url, pool_size=40, max_overflow=10, connect_args={"server_settings": {"search_path": schema}}
        )

        async def drop_schema() -> None:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()

        drop = drop_schema
    async with engine.begin() as conn:
        await conn.run_sync(store_metadata.create_all)
        await conn.run_sync(read_model.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()
        if drop is not None:
            await drop()


async def postgres_reachable(url: str) -> bool:
    engine = create_async_engine(url)
    try:
        async with asyncio.timeout(5), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except (OSError, TimeoutError, Exception):
        return False
    finally:
        await engine.dispose()


async def fill(store: EventStore, events: int, *, partners: int = 500, per_append: int = 200) -> None:
    """`events` events spread over `partners` partners (bulk appends: this is setup, not measured)."""
    appended = 0
    batch = 0
    while appended < events:
        count = min(per_append, events - appended)
        domain = [applied(f"bulk-{(appended + i) % partners}") for i in range(count)]
        await store.append(stream_id=f"bulk-{batch}", expected_version=0, events=domain)
        appended += count
        batch += 1


# --- appends ---------------------------------------------------------------------------


async def bench_appends(engine: AsyncEngine, *, group_commit: bool, commands: int) -> dict[str, Any]:
    store = EventStore(engine, source="onboarding", now=now, group_commit=group_commit)
    per_writer = commands // WRITERS
    failures = 0

    async def writer(index: int) -> None:
        nonlocal failures
        # Each writer drives a few partner streams, one event per command.
        streams = [f"partner-w{index}-{k}" for k in range(4)]
        versions = dict.fromkeys(streams, 0)
        for n in range(per_writer):
            stream = streams[n % len(streams)]
            partner = stream.removeprefix("partner-")
            event = applied(partner) if versions[stream] == 0 else diligence(partner)
            try:
                await store.append(stream_id=stream, expected_version=versions[stream], events=[event])
                versions[stream] += 1
            except Exception:
                failures += 1

    try:
        with Clock() as clock:
            await asyncio.gather(*(writer(i) for i in range(WRITERS)))
    finally:
        await store.close()
    done = per_writer * WRITERS - failures
    return {
        "commands": done,
        "failures": failures,
        "seconds": round(clock.wall, 3),
        "cpu_seconds": round(clock.cpu, 3),
        "events_per_s": round(done / clock.wall),
        "events_per_cpu_s": round(done / clock.cpu) if clock.cpu else None,
    }


# --- relay -------------------------------------------------------------------------------


async def bench_relay(engine: AsyncEngine, bootstrap: str, *, events: int) -> dict[str, Any]:
    store = EventStore(engine, source="onboarding", now=now)
    await fill(store, events)
    topic = f"partnerhub.bench-{uuid.uuid4().hex[:8]}.events"
    relay = Relay(store, bootstrap=bootstrap, topic=topic, partitions=PARTITIONS, engine=engine, batch_size=2000)
    try:
        with Clock() as clock:
            await relay.start()
            while relay.cursor < events:
                await asyncio.sleep(0.005)
    finally:
        await relay.stop()
        await store.close()
    return {
        "events": events,
        "seconds": round(clock.wall, 3),
        "cpu_seconds": round(clock.cpu, 3),
        "events_per_s": round(events / clock.wall),
        "events_per_cpu_s": round(events / clock.cpu) if clock.cpu else None,
        "errors": relay.errors,
        "topic": topic,
    }


# --- subscriptions -----------------------------------------------------------------------


async def count_event(conn: AsyncConnection, event: RecordedEvent) -> None:
    changed = await conn.execute(
        update(partner_counts)
        .where(partner_counts.c.partner_id == event.partition_key)
        .values(events=partner_counts.c.events + 1)
    )
    if changed.rowcount == 0:
        await conn.execute(insert(partner_counts).values(partner_id=event.partition_key, events=1))


async def count_events(conn: AsyncConnection, events: list[RecordedEvent]) -> None:
    """The same read model as a batch handler: one multi-row upsert per batch."""
    per_partner: dict[str, int] = {}
    for event in events:
        per_partner[event.partition_key] = per_partner.get(event.partition_key, 0) + 1
    # One statement executed for many parameter sets: compiled once and cached, where a
    # multi-row VALUES list would be compiled anew for every batch.
    await conn.execute(_UPSERT[conn.dialect.name], [{"partner_id": p, "events": n} for p, n in per_partner.items()])


def _upsert(dialect_insert: Any) -> Any:
    stmt = dialect_insert(partner_counts)
    return stmt.on_conflict_do_update(
        index_elements=[partner_counts.c.partner_id],
        set_={"events": partner_counts.c.events + stmt.excluded.events},
    )


_UPSERT = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def log_server(database_url: str, workdir: Path) -> Any:
    """The store's log API served by uvicorn in another process; yields its base URL."""
    port = free_port()
    log = (workdir / "log-api.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_backbone", "serve-log", database_url, str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/internal/events?limit=1", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the log API did not start; see {workdir / 'log-api.log'}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def bench_catch_up(
    consumer: AsyncEngine, log_url: str, bootstrap: str, *, events: int, batched: bool, page: int = 1000
) -> dict[str, Any]:
    topic = f"partnerhub.bench-{uuid.uuid4().hex[:8]}.events"
    async with httpx.AsyncClient(timeout=60) as http:
        subscription = Subscription(
            f"bench-catchup-{uuid.uuid4().hex[:6]}",
            sources={"onboarding": SourceInfo(topic=topic, partitions=PARTITIONS, log_url=log_url)},
            handler=count_event,
            batch_handler=count_events if batched else None,
            engine=consumer,
            bootstrap=bootstrap,
            log_client=http,
            manual_assignment=True,
            catchup_page_size=page,
        )
        # Timed from start until caught up; stopping (closing the Kafka consumer it opens
        # to follow on, ~0.15 s) is reported apart: it is not catching up.
        try:
            with Clock() as clock:
                await subscription.start()
                await subscription.wait_caught_up(600)
        finally:
            with Clock() as stopping:
                await subscription.stop()
    assert subscription.applied == events, (subscription.applied, events)
    return {
        "events": events,
        "page": page,
        "seconds": round(clock.wall, 3),
        "stop_seconds": round(stopping.wall, 3),
        "cpu_seconds": round(clock.cpu, 3),
        "events_per_s": round(events / clock.wall),
        "events_per_cpu_s": round(events / clock.cpu) if clock.cpu else None,
    }


async def bench_kafka_follow(consumer: AsyncEngine, bootstrap: str, topic: str, *, events: int) -> dict[str, Any]:
    """The same read model fed from a topic the relay filled (no log API)."""
    subscription = Subscription(
        f"bench-kafka-{uuid.uuid4().hex[:6]}",
        sources={"onboarding": SourceInfo(topic=topic, partitions=PARTITIONS, log_url=None)},
        handler=count_event,
        engine=consumer,
        bootstrap=bootstrap,
        manual_assignment=True,
        idle_catchup_interval=3600,
    )
    with Clock() as clock:
        await subscription.start()
        try:
            while subscription.applied < events:
                await asyncio.sleep(0.01)
        finally:
            await subscription.stop()
    return {
        "events": events,
        "seconds": round(clock.wall, 3),
        "cpu_seconds": round(clock.cpu, 3),
        "events_per_s": round(events / clock.wall),
        "events_per_cpu_s": round(events / clock.cpu) if clock.cpu else None,
    }


# --- the run -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-backbone-"))
    kinds = ["sqlite"]
    postgres_url = None if args.no_postgres else args.postgres
    if postgres_url and await postgres_reachable(postgres_url):
        kinds.append("postgresql")
    details: dict[str, Any] = {"appends": {}, "relay": {}, "catch_up": {}, "kafka_follow": {}}
    async with EmbeddedBroker(log_dir=workdir) as broker:
        for kind in kinds:
            print(f"-- {kind}: appends", flush=True)
            async with database(kind, postgres_url, workdir) as engine:
                grouped = await bench_appends(engine, group_commit=True, commands=args.commands)
            async with database(kind, postgres_url, workdir) as engine:
                single = await bench_appends(engine, group_commit=False, commands=args.single_commands)
            details["appends"][kind] = {"group_commit": grouped, "one_transaction_per_command": single}

            print(f"-- {kind}: relay", flush=True)
            runs = []
            for _ in range(3):
                async with database(kind, postgres_url, workdir) as engine:
                    runs.append(await bench_relay(engine, broker.bootstrap, events=args.events))
            best = max(runs, key=lambda r: r["events_per_s"])
            details["relay"][kind] = {"runs": runs, "best": best}

        print("-- subscription catch-up (log API in another process, read model in sqlite/postgresql)", flush=True)
        source_path = workdir / "source.db"
        source = create_engine(f"sqlite+aiosqlite:///{source_path}")
        async with source.begin() as conn:
            await conn.run_sync(store_metadata.create_all)
        source_store = EventStore(source, source="onboarding", now=now)
        await fill(source_store, args.catchup_events)
        topic = f"partnerhub.bench-{uuid.uuid4().hex[:8]}.events"
        relay = Relay(source_store, bootstrap=broker.bootstrap, topic=topic, partitions=PARTITIONS, engine=source)
        await relay.start()
        while relay.cursor < args.catchup_events:
            await asyncio.sleep(0.01)
        await relay.stop()
        await source_store.close()
        await source.dispose()
        with log_server(f"sqlite+aiosqlite:///{source_path}", workdir) as log_url:
            for kind in kinds:
                details["catch_up"][kind] = {}
                for mode, batched in (("per_event_handler", False), ("batch_handler", True)):
                    async with database(kind, postgres_url, workdir) as consumer:
                        details["catch_up"][kind][mode] = await bench_catch_up(
                            consumer, log_url, broker.bootstrap, events=args.catchup_events, batched=batched
                        )
                async with database(kind, postgres_url, workdir) as consumer:
                    details["kafka_follow"][kind] = await bench_kafka_follow(
                        consumer, broker.bootstrap, topic, events=args.catchup_events
                    )
    return details


def results_of(details: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind, pair in details["appends"].items():
        grouped, single = pair["group_commit"]["events_per_s"], pair["one_transaction_per_command"]["events_per_s"]
        rows.append(
            {
                "name": f"appends, 1-event commands, {WRITERS} concurrent writers, group commit ({kind})",
                "value": grouped,
                "unit": "events/s",
                "peer": single,
                "ratio": round(grouped / single, 2) if single else None,
                "note": "peer: one transaction per command (group_commit=False)",
            }
        )
    for kind, relay in details["relay"].items():
        rows.append(
            {
                "name": f"relay store → Kafka, {relay['best']['events']:,} events ({kind} store, embedded Tansu)",
                "value": relay["best"]["events_per_s"],
                "unit": "events/s",
                "goal": "≥ 20,000 events/s",
                "note": f"best of {len(relay['runs'])}: {[r['events_per_s'] for r in relay['runs']]}; "
                f"{relay['best']['events_per_cpu_s']:,} events per CPU-second of the relay process",
            }
        )
    for kind, modes in details["catch_up"].items():
        follow = details["kafka_follow"].get(kind, {})
        per_event, batched = modes["per_event_handler"], modes["batch_handler"]
        rows.append(
            {
                "name": f"subscription catch-up over the HTTP log API, count-per-partner read model ({kind})",
                "value": per_event["events_per_s"],
                "unit": "events/s",
                "peer": follow.get("events_per_s"),
                "ratio": round(per_event["events_per_s"] / follow["events_per_s"], 2) if follow else None,
                "note": "one handler call per event; peer: the same read model fed from Kafka",
            }
        )
        rows.append(
            {
                "name": f"the same catch-up with a batch handler ({kind})",
                "value": batched["events_per_s"],
                "unit": "events/s",
                "peer": per_event["events_per_s"],
                "ratio": round(batched["events_per_s"] / per_event["events_per_s"], 2),
                "goal": "≥ 20,000 events/s",
                "note": "one multi-row upsert per 1,000-event page, two pages read ahead; timed from start "
                f"to caught up (stopping took {batched.get('stop_seconds', 0)} s more); peer: per-event handler",
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["name"]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'value':>12}  {'peer':>10}  {'ratio':>6}")
    for r in rows:
        peer = "" if r.get("peer") is None else f"{r['peer']:,}"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        print(f"{r['name'].ljust(width)}  {r['value']:>8,} {r['unit'][:3]:>3}  {peer:>10}  {ratio:>6}")


def serve_log(database_url: str, port: int) -> None:
    """`serve-log`: the log API of a SQLite store under uvicorn, no auth (loopback only)."""
    import uvicorn
    from fastapi import FastAPI

    from events.log_api import log_router

    async def no_auth() -> None:
        return None

    app = FastAPI()
    engine = create_async_engine(database_url)
    app.include_router(log_router(EventStore(engine, source="onboarding", now=now), no_auth))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve-log"]:
        serve_log(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("PARTNERHUB_TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--events", type=int, default=40_000, help="events for the relay runs")
    parser.add_argument("--catchup-events", type=int, default=20_000, help="events for the subscription runs")
    parser.add_argument("--commands", type=int, default=16_000, help="commands with group commit")
    parser.add_argument("--single-commands", type=int, default=2_400, help="commands without group commit")
    args = parser.parse_args(argv)
    details = asyncio.run(run(args))
    rows = results_of(details)
    command = "python -m bench.bench_backbone " + " ".join(argv)
    doc = {
        "title": "Event backbone",
        "command": command.strip(),
        "results": rows,
        "details": details,
        "environment": environment() | {"load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print_table(rows)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
