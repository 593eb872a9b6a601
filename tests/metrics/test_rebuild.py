"""Rebuild from zero reaches exactly the live read models; the API answers from the old
generation meanwhile; live events keep landing correctly after the swap; a broker restart
loses and doubles nothing."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.broker import EmbeddedBroker
from events.catalog import DomainEvent
from events.envelope import RecordedEvent
from services.metrics.logs import HttpLogReader
from services.metrics.projections import PROJECTIONS
from services.metrics.rebuild import Progress, Rebuilder
from services.metrics.writer import generations
from services.runtime.clock import ManualClock
from tests.metrics import conftest as ev
from tests.metrics.conftest import NOW, days_ago
from tests.metrics.live import LivePlatform, live_platform, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
async def live(tmp_path: Path, broker: EmbeddedBroker) -> AsyncIterator[LivePlatform]:
    async with live_platform(tmp_path, broker, clock=ManualClock(NOW)) as platform:
        yield platform


def journey(rng: random.Random, partners: int) -> list[tuple[DomainEvent, float]]:
    """A mixed history for `partners` partners: (event, days ago), in an order a platform produces."""
    out: list[tuple[DomainEvent, float]] = []
    for n in range(partners):
        p = f"p{n}"
        start = rng.uniform(60, 200)
        out.append((ev.applied(p), start))
        out.append((ev.signed(p), start - rng.uniform(5, 30)))
        out.append((ev.activated(p), start - rng.uniform(30, 50)))
        integration = f"i{n}"
        out.append((ev.registered(p, integration, target=rng.choice([99.0, 99.9])), 50))
        out.append((ev.went_live(p, integration), rng.uniform(20, 45)))
        for h in range(rng.randint(1, 4)):
            out.append((ev.health(p, integration, "up" if h % 2 == 0 else "down"), 19 - 3 * h))
        for _ in range(rng.randint(0, 6)):
            out.append((ev.attempt(p, integration, rng.random() < 0.9), rng.uniform(0, 90)))
        out.append((ev.traffic(p, rng.randint(100, 5000), rng.randint(0, 5)), rng.uniform(0, 40)))
        out.append((ev.rated(p, round(rng.uniform(5, 10), 1)), rng.uniform(0, 60)))
        out.append((ev.renewed(p) if rng.random() < 0.8 else ev.terminated(p), rng.uniform(0, 60)))
        out.append((ev.delivered(p, rng.uniform(50, 900)) if rng.random() < 0.95 else ev.failed(p), rng.uniform(0, 20)))
    return out


async def append_all(live: LivePlatform, events: list[tuple[DomainEvent, float]]) -> list[RecordedEvent]:
    return [await live.append(event, days_ago(ago)) for event, ago in events]


async def read_model_rows(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every projection's current generation, generation column left out."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        gens = await generations(conn)
        for projection in PROJECTIONS.values():
            for table in projection.tables:
                columns = [c for c in table.c if c.name != "generation"]
                query = select(*columns).where(table.c.generation == gens[projection.name])
                out[table.name] = sorted(tuple(row) for row in (await conn.execute(query)).all())
    return out


def rebuilder(live: LivePlatform, **kwargs: Any) -> Rebuilder:
    async def token() -> str:
        return live.issuer.mint("ops-cli", "events:read")

    return Rebuilder(
        live.metrics.app.state.engine,
        HttpLogReader(live.settings, token),
        list(PROJECTIONS.values()),
        now=live.clock.now,
        retire_after=0,
        **kwargs,
    )


async def test_rebuild_reaches_the_live_read_models_row_for_row(live: LivePlatform) -> None:
    await append_all(live, journey(random.Random(7), 10))
    before = await live.settled()
    engine = live.metrics.app.state.engine
    live_rows = await read_model_rows(engine)
    assert sum(len(rows) for rows in live_rows.values()) > 80

    gate = asyncio.Event()
    reading = asyncio.Event()
    seen: list[Progress] = []

    def on_progress(progress: Progress) -> None:
        seen.append(progress)

    rebuild = rebuilder(live, page_size=50, on_progress=on_progress)
    real_read = rebuild.reader.read

    async def gated_read(source: str, *, after: int, limit: int) -> tuple[list[RecordedEvent], int]:
        # Hold the rebuild in the middle of its reading, to look at the API meanwhile.
        if source == "gateway":
            reading.set()
            await gate.wait()
        return await real_read(source, after=after, limit=limit)

    rebuild.reader.read = gated_read  # type: ignore[method-assign]
    task = asyncio.create_task(rebuild.run())
    await asyncio.wait_for(reading.wait(), 20)
    # Half-way: the API answers exactly as before, from generation 1.
    assert (await live.kpis())["kpis"] == before["kpis"]
    consumers = (await live.http.get("/admin/consumers", headers=live.ops())).json()["consumers"]
    assert {c["generation"] for c in consumers} == {1}
    gate.set()
    result = await asyncio.wait_for(task, 60)

    assert result.generations == dict.fromkeys(PROJECTIONS, 2)
    assert result.events == sum((await live.heads()).values())
    assert result.positions == await live.heads()
    assert seen and seen[-1].phase == "done"
    assert await read_model_rows(engine) == live_rows
    after = await live.kpis()
    assert after["kpis"] == before["kpis"]
    assert after["as_of"] == before["as_of"]
    consumers = (await live.http.get("/admin/consumers", headers=live.ops())).json()["consumers"]
    assert {c["generation"] for c in consumers} == {2}

    # The live path goes on in the new generation, skipping what the rebuild already had.
    await live.append(ev.attempt("p0", "i0", False), days_ago(1))
    doc = await live.settled()
    assert doc["kpis"]["integration_success_rate"]["sample_size"] == before["kpis"]["integration_success_rate"]["sample_size"] + 1


async def test_rebuild_while_events_keep_arriving(live: LivePlatform) -> None:
    rng = random.Random(11)
    history = journey(rng, 12)
    await append_all(live, history[:80])
    await live.settled()

    async def keep_appending() -> None:
        for event, ago in history[80:]:
            await live.append(event, days_ago(ago))
            await asyncio.sleep(0.002)

    feeder = asyncio.create_task(keep_appending())
    result = await rebuilder(live, page_size=20).run()
    await feeder
    await live.settled()
    assert result.generations == dict.fromkeys(PROJECTIONS, 2)
    rows_after_swap = await read_model_rows(live.metrics.app.state.engine)
    # A second rebuild from zero, with nothing arriving, must agree row for row with what
    # the first rebuild plus the live path built.
    again = await rebuilder(live).run()
    assert again.generations == dict.fromkeys(PROJECTIONS, 3)
    assert await read_model_rows(live.metrics.app.state.engine) == rows_after_swap


async def test_broker_restart_loses_and_doubles_nothing(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_dir=tmp_path / "broker")
    async with broker, live_platform(tmp_path, broker, clock=ManualClock(NOW)) as live:
        for ok in (True, True, False):
            await live.append(ev.attempt("p1", "i1", ok), days_ago(1))
        await live.append(ev.traffic("p1", 1000, 2), days_ago(1))
        before = await live.settled()
        assert before["kpis"]["integration_success_rate"]["sample_size"] == 3

        await broker.stop()
        # While the broker is down the KPIs still answer, and commands still commit.
        assert (await live.kpis())["kpis"] == before["kpis"]
        await live.append(ev.attempt("p1", "i1", True), days_ago(1) + timedelta(hours=1))
        await broker.start()  # empty: every topic and offset is gone

        await live.append(ev.traffic("p1", 1000, 0), days_ago(1))
        after = await wait_until(lambda: _caught_up(live), timeout=60)
        # 3 of 4 attempts succeeded; 2 errors in 2000 requests.
        assert after["kpis"]["integration_success_rate"]["value"] == pytest.approx(75.0)
        assert after["kpis"]["integration_success_rate"]["sample_size"] == 4
        assert after["kpis"]["api_availability"]["value"] == pytest.approx(99.9)
        assert after["kpis"]["api_availability"]["sample_size"] == 2000


async def _caught_up(live: LivePlatform) -> dict[str, Any]:
    doc = await live.kpis()
    assert doc["as_of"] == await live.heads()
    return doc


async def test_cli_rebuilds_one_projection_with_a_progress_bar(live: LivePlatform) -> None:
    await append_all(live, journey(random.Random(3), 3))
    before = await live.settled()
    engine = live.metrics.app.state.engine
    rows = await read_model_rows(engine)
    settings = live.settings
    env = os.environ | {
        "PARTNERHUB_VAR_DIR": str(settings.var_dir),
        "PARTNERHUB_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "PARTNERHUB_TRACING": "off",
        "COLUMNS": "160",
        **{f"PARTNERHUB_{s.upper()}_PORT": str(settings.port_of(s)) for s in ("onboarding", "lifecycle", "gateway")},
    }
    token = live.issuer.mint("ops-cli", "events:read")

    async def cli(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "projections", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, out.decode()
        return out.decode()

    text = await cli("rebuild", "time_to_integration_days", "--token", token)
    assert "events/s" in text
    assert "time_to_integration_days" in text
    async with engine.connect() as conn:
        gens = await generations(conn)
    assert gens["time_to_integration_days"] == 2
    assert {g for name, g in gens.items() if name != "time_to_integration_days"} == {1}
    assert await read_model_rows(engine) == rows
    assert (await live.kpis())["kpis"] == before["kpis"]
    listing = await cli("list")
    assert "time_to_integration_days" in listing
