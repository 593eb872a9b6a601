"""Health prober: N live integrations probed every interval, CPU share and probe lateness.

The prober (with the SLA monitor beside it, as in the service) runs in this process on
the wall clock against a local HTTP server in a child process (so the server's CPU is
not counted). After one warm-up interval (every integration goes unknown → up, one
append each) the steady state is measured over whole intervals: process CPU time
(all threads) per wall second, and lateness = probe start - due time. Peer in the same
run: a bare httpx client making the same GETs at the same rate (what the probes cost
without scheduling, state and database).

    python -m bench.bench_lifecycle                          # 1,000 integrations, 30 s, 2 measured rounds
    python -m bench.bench_lifecycle --integrations 2000 --rounds 3

Writes bench/results/lifecycle.json. Goal (issue #5): < 10 % of one core, lateness p99 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from bench.run import environment  # noqa: E402
from events.envelope import EventMetadata  # noqa: E402
from services.lifecycle.integrations import handlers  # noqa: E402
from services.lifecycle.integrations.destinations import networks  # noqa: E402
from services.lifecycle.integrations.domain import (  # noqa: E402
    GoLive,
    RecordAttempt,
    Register,
    new_integration_id,
)
from services.lifecycle.integrations.prober import HealthProber  # noqa: E402
from services.lifecycle.integrations.sla import SlaMonitor  # noqa: E402
from services.runtime.app import build_runtime  # noqa: E402
from services.runtime.clock import SystemClock  # noqa: E402
from services.runtime.migrations import migrate  # noqa: E402
from services.runtime.settings import Settings  # noqa: E402
from tests.support.platform import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "lifecycle.json"


def serve(port: int) -> None:
    """The health endpoint every integration points at (runs in the child process)."""

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text='{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/health/{n}", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def make_live(runtime: Any, count: int, port: int) -> None:
    async def one(n: int) -> None:
        url = f"http://127.0.0.1:{port}/health/{n}"
        command = Register(new_integration_id(), f"ptn_{n % 50:03d}", "rest_api", f"API {n}", url, 99.9)
        state = await handlers.register(runtime.store, command, occurred_at=None, metadata=EventMetadata())
        state, _ = await handlers.execute(runtime.store, state, RecordAttempt("succeeded"))
        await handlers.execute(runtime.store, state, GoLive())

    for start in range(0, count, 200):  # concurrent appends share group commits
        await asyncio.gather(*(one(n) for n in range(start, min(start + 200, count))))


async def bare_httpx(port: int, *, rate: float, seconds: float) -> float:
    """Peer: CPU ms per GET of a plain httpx client paced at the prober's rate (same server)."""
    import httpx

    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(
        follow_redirects=False, timeout=5.0, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:

        async def one(n: int) -> None:
            async with client.stream("GET", f"http://127.0.0.1:{port}/health/{n}"):
                pass

        count = int(rate * seconds)
        cpu0 = time.process_time()
        started = time.monotonic()
        for n in range(count):
            tasks.append(asyncio.create_task(one(n)))
            await asyncio.sleep(max(0.0, started + (n + 1) / rate - time.monotonic()))
        await asyncio.gather(*tasks)
        return 1000 * (time.process_time() - cpu0) / count


async def watch_loop_lag(samples: list[float], period: float = 0.05) -> None:
    """How late a plain 50 ms sleep wakes up: stalls of the event loop or of the machine."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(period)
        samples.append(time.monotonic() - started - period)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.bench_lifecycle", "--serve", str(port)], cwd=ROOT)
    try:
        await wait_for_port(port)
        with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as tmp:
            settings = Settings(var_dir=Path(tmp), kafka_bootstrap=None, lifecycle_database_url=args.postgres)
            runtime = build_runtime("lifecycle", settings, SystemClock())
            await migrate(runtime.engine, "lifecycle")
            setup_started = time.monotonic()
            await make_live(runtime, args.integrations, port)
            setup_seconds = time.monotonic() - setup_started
            prober = HealthProber(
                engine=runtime.engine,
                store=runtime.store,
                clock=runtime.clock,
                interval=args.interval,
                timeout=settings.probe_timeout,
                allow_nets=networks(["127.0.0.0/8"]),
            )
            monitor = SlaMonitor(engine=runtime.engine, store=runtime.store, clock=runtime.clock, check_interval=args.interval)
            await prober.start()
            await monitor.start()
            try:
                await asyncio.sleep(args.interval + 1.0)  # warm-up: every integration probed once, unknown → up
                warm_probes, warm_transitions = prober.stats.probes, prober.stats.transitions
                prober.stats.lateness.clear()
                loop_lag: list[float] = []
                watcher = asyncio.create_task(watch_loop_lag(loop_lag))
                cpu0, wall0, probes0 = time.process_time(), time.monotonic(), prober.stats.probes
                await asyncio.sleep(args.interval * args.rounds)
                cpu1, wall1, probes1 = time.process_time(), time.monotonic(), prober.stats.probes
                watcher.cancel()
                lateness = list(prober.stats.lateness)
            finally:
                await monitor.stop()
                await prober.stop()
                await runtime.store.close()
                await runtime.engine.dispose()
            peer_ms = await bare_httpx(port, rate=args.integrations / args.interval, seconds=args.peer_seconds)
    finally:
        server.terminate()
        server.wait(10)

    wall = wall1 - wall0
    cpu_share = 100.0 * (cpu1 - cpu0) / wall
    probes = probes1 - probes0
    expected = args.integrations * args.rounds
    return {
        "setup_seconds": round(setup_seconds, 1),
        "warmup": {"probes": warm_probes, "transitions": warm_transitions},
        "measured_seconds": round(wall, 1),
        "probes": probes,
        "probes_expected": expected,
        "probes_per_s": round(probes / wall, 1),
        "cpu_pct_of_one_core": round(cpu_share, 2),
        "cpu_ms_per_probe": round(1000 * (cpu1 - cpu0) / max(probes, 1), 3),
        "lateness_s": {
            "p50": round(statistics.median(lateness), 4) if lateness else None,
            "p99": round(percentile(lateness, 0.99), 4) if lateness else None,
            "max": round(max(lateness), 4) if lateness else None,
        },
        "event_loop_lag_s": {
            "p99": round(percentile(loop_lag, 0.99), 4) if loop_lag else None,
            "max": round(max(loop_lag), 4) if loop_lag else None,
        },
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "transitions_in_steady_state": prober.stats.transitions - warm_transitions,
        "peer_bare_httpx_cpu_ms_per_get": round(peer_ms, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="measured intervals after the warm-up one")
    parser.add_argument("--peer-seconds", type=float, default=20.0, help="how long the bare-httpx peer runs")
    parser.add_argument("--postgres", default=None, help="lifecycle database URL (default: SQLite in a temp dir)")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    measured = asyncio.run(run(args))
    backend = "postgres" if args.postgres else "sqlite"
    late = measured["lateness_s"]
    doc = {
        "title": "Health prober",
        "command": "python -m bench.bench_lifecycle " + " ".join(a for a in sys.argv[1:] if "postgres" not in a),
        "results": [
            {
                "name": f"prober CPU, {args.integrations} live integrations every {args.interval:g} s ({backend})",
                "value": measured["cpu_pct_of_one_core"],
                "unit": "% of one core",
                "goal": "< 10 %",
                "note": f"{measured['cpu_ms_per_probe']} ms CPU per probe, SLA monitor included",
            },
            {
                "name": "CPU per probe vs a bare httpx GET at the same rate",
                "value": measured["cpu_ms_per_probe"],
                "unit": "ms",
                "peer": measured["peer_bare_httpx_cpu_ms_per_get"],
                "ratio": round(measured["cpu_ms_per_probe"] / measured["peer_bare_httpx_cpu_ms_per_get"], 2),
                "note": "peer: plain httpx client, same server, no scheduling, no database",
            },
            {
                "name": "probe lateness p99",
                "value": late["p99"],
                "unit": "s",
                "goal": "< 1 s",
                "note": f"p50 {late['p50']} s, max {late['max']} s; event-loop lag p99 "
                f"{measured['event_loop_lag_s']['p99']} s, load average {measured['load_average_1m_after']}",
            },
            {
                "name": "probes per second",
                "value": measured["probes_per_s"],
                "unit": "probes/s",
                "note": f"{measured['probes']} of {measured['probes_expected']} expected in {measured['measured_seconds']} s",
            },
        ],
        "details": measured,
        "environment": environment() | {"backend": backend},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
