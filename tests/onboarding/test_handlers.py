"""The service layer with two replicas on one store: a stale cache never decides an outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events.envelope import EventMetadata
from events.store import EventStore
from services.onboarding import read_model
from services.onboarding.domain import (
    PHASES,
    Apply,
    Assess,
    Command,
    CommandRejected,
    RecordApproval,
    RecordDueDiligence,
)
from services.onboarding.handlers import Onboarding
from services.runtime.clock import ManualClock
from services.runtime.db import create_engine
from services.runtime.migrations import migrate
from tests.onboarding.conftest import INNOVATION_SCORES

META = EventMetadata(actor="ops-test")
PID = "ptn_bbbbbbbbbbbbbbbbbbbb"


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Onboarding, Onboarding]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'onboarding.db'}")
    await migrate(engine, "onboarding")
    clock = ManualClock()
    stores = [EventStore(engine, source="onboarding", now=clock.now) for _ in range(2)]
    try:
        yield Onboarding(stores[0]), Onboarding(stores[1])
    finally:
        for store in stores:
            await store.close()
        await engine.dispose()


async def run(service: Onboarding, command: Command) -> str:
    outcome = await service.execute(PID, command, metadata=META, precondition=None, occurred_at=lambda last: None)
    return outcome.partner.status


async def test_a_command_the_stale_cache_would_reject_is_judged_on_a_fresh_read(
    replicas: tuple[Onboarding, Onboarding],
) -> None:
    a, b = replicas
    await a.apply(Apply(PID, "Acme", "https://acme.example.com/", "ai", "a@acme.example.com"), occurred_at=None, metadata=META)
    await b.load(PID)  # b caches the partner as applied
    assert await run(a, Assess(INNOVATION_SCORES)) == "assessed"
    # b's cache says `applied`, where due diligence is not allowed; the real state allows it.
    assert await run(b, RecordDueDiligence(PHASES[0], True)) == "in_due_diligence"


async def test_a_command_the_stale_cache_would_accept_is_judged_on_a_fresh_read(
    replicas: tuple[Onboarding, Onboarding],
) -> None:
    a, b = replicas
    await a.apply(Apply(PID, "Acme", "https://acme.example.com/", "ai", "a@acme.example.com"), occurred_at=None, metadata=META)
    await run(a, Assess(INNOVATION_SCORES))
    for phase in PHASES:
        await run(a, RecordDueDiligence(phase, True))
    await b.load(PID)  # b caches the partner awaiting approval
    assert await run(a, RecordApproval("ops-1", "reject")) == "rejected"
    with pytest.raises(CommandRejected) as caught:
        await run(b, RecordApproval("ops-2", "approve"))
    assert caught.value.current_state == "rejected"
    row = await read_model.get(a.store.engine, PID)
    assert row is not None and row.record["status"] == "rejected" and row.version == 7
