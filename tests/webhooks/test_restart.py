"""Restart during delivery: a worker process killed mid-run loses nothing and resends only what was in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events.catalog import IntegrationAttemptRecorded
from services.lifecycle.webhooks.repository import pending_depths
from services.lifecycle.webhooks.wiring import Webhooks, build
from services.lifecycle.webhooks.workers import RECORDING_SLACK
from services.runtime.app import Runtime, build_runtime
from services.runtime.migrations import migrate
from services.runtime.settings import Settings
from tests.webhooks.conftest import LOOPBACK, eventually
from tests.webhooks.receiver import Receiver

PER_ENDPOINT = 8  # the workers' default concurrency per endpoint
MESSAGES_PER_ENDPOINT = 150


class WorkerProcess:
    """`python -m tests.webhooks.worker_process` as a child process."""

    def __init__(self, database_url: str, var_dir: Path) -> None:
        self.args = [
            sys.executable, "-m", "tests.webhooks.worker_process",
            "--database-url", database_url, "--var-dir", str(var_dir),
            "--attempt-timeout", "2", "--lease-margin", "0.5",
        ]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "PARTNERHUB_TRACING": "off", "PARTNERHUB_LOG_LEVEL": "WARNING"}
        self.process = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert line.strip() == b"ready", line

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Runtime, Webhooks]]:
    """The database, migrated, with the API side of webhooks but no workers running here."""
    settings = Settings(env="test", var_dir=tmp_path, webhook_allow_nets=LOOPBACK, kafka_bootstrap=None)
    runtime = build_runtime("lifecycle", settings)
    await migrate(runtime.engine, "lifecycle")
    try:
        yield runtime, build(runtime)
    finally:
        await runtime.store.close()
        await runtime.engine.dispose()


@pytest.mark.slow
async def test_killing_the_worker_mid_run_loses_nothing(
    setup: tuple[Runtime, Webhooks], receiver: Receiver, tmp_path: Path
) -> None:
    runtime, webhooks = setup
    receiver.delay = 0.03
    endpoints = []
    for name in ("one", "two"):
        created = await webhooks.service.create(
            partner_id=f"p-{name}", url=receiver.url(f"/{name}"), event_types=["*"], description=""
        )
        receiver.expect(f"/{name}", [created.secret])
        endpoints.append(created.endpoint.id)
    expected: set[str] = set()
    for _ in range(MESSAGES_PER_ENDPOINT):
        for name in ("one", "two"):
            [recorded] = await runtime.store.append(
                stream_id=f"integration-{name}",
                expected_version=None,
                events=[IntegrationAttemptRecorded(partner_id=f"p-{name}", integration_id=name, outcome="failed")],
            )
            async with runtime.engine.begin() as conn:
                await webhooks.dispatcher.handle(conn, recorded)
            expected.add(recorded.event_id)

    worker = WorkerProcess(runtime.settings.database_url_of("lifecycle"), tmp_path / "worker")
    try:
        await worker.start()
        await eventually(lambda: len(receiver.deliveries) >= 60, timeout=30)
        await worker.kill()
        at_kill = len(receiver.deliveries)
        assert at_kill < 2 * MESSAGES_PER_ENDPOINT, "killed mid-run"

        await worker.start()
        await eventually(lambda: {d.webhook_id for d in receiver.deliveries} >= expected, timeout=60)
        await eventually(lambda: _drained(runtime), timeout=30)
    finally:
        await worker.kill()

    assert not receiver.unverified, "every delivery verifies"
    counts = Counter(d.webhook_id for d in receiver.deliveries)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"killed after {at_kill} deliveries; {duplicates} sent twice (in flight at the kill)")
    # Only attempts in flight when the process died (sent, outcome not recorded yet) are
    # sent again: per endpoint at most twice its concurrency.
    assert duplicates <= RECORDING_SLACK * PER_ENDPOINT * len(endpoints)
    assert set(counts) == expected


async def _drained(runtime: Runtime) -> bool:
    return not await pending_depths(runtime.engine)
