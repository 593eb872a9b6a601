"""Onboarding throughput: complete partner journeys (8 commands each) per second.

A journey is apply → assessment → due diligence x3 → approval → agreement → activate,
driven over HTTP by concurrent clients against the onboarding service running under
uvicorn exactly as `partnerhub serve onboarding` runs it (embedded broker and relay on,
SQLite by default, PostgreSQL with --postgres).

    python -m bench.bench_onboarding                  # through the gateway, direct as peer
    python -m bench.bench_onboarding --through direct # onboarding alone (no gateway)
    python -m bench.bench_onboarding --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test

Through the gateway, the measurement starts once every consumer (lifecycle, metrics)
has caught up with a first 40 journeys: the platform's steady state, consumers' work
included.

Writes bench/results/onboarding.json in bench/run.py's format. Server CPU per journey is
reported beside throughput: on a shared machine it is the steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.loadgen import Connection  # noqa: E402
from tests.support.databases import fresh_database  # noqa: E402
from tests.support.platform import free_port  # noqa: E402
from tests.support.tokens import OPS_SCOPES, TestIssuer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "onboarding.json"
PHASES = ("initial_screening", "detailed_evaluation", "final_assessment")
SCORES = {
    "technology_leadership": 7.5,
    "market_position": 7,
    "financial_stability": 6.5,
    "strategic_fit": 7,
    "integration_capability": 8,
    "cultural_compatibility": 7,
}
COMMANDS_PER_JOURNEY = 8


class Failed(RuntimeError):
    pass


async def journey(http: Connection, n: int, latencies: list[float]) -> None:
    async def post(path: str, body: dict[str, Any] | None, expect: int = 200) -> dict[str, Any]:
        started = time.perf_counter()
        status, text = await http.request("POST", path, orjson.dumps(body) if body is not None else None)
        if status != expect:
            raise Failed(f"POST {path}: {status} {text[:500]!r}")
        doc: dict[str, Any] = orjson.loads(text)
        latencies.append(time.perf_counter() - started)
        return doc

    application = {
        "name": f"Bench Partner {n}",
        "website": f"https://partner-{n}.example.com",
        "category": "platform",
        "contact_email": f"alliances@partner-{n}.example.com",
    }
    pid = (await post("/v1/partners", application, 201))["id"]
    await post(f"/v1/partners/{pid}/assessment", {"scores": SCORES})
    for phase in PHASES:
        await post(f"/v1/partners/{pid}/due-diligence", {"phase": phase, "passed": True, "findings": "ok"})
    await post(f"/v1/partners/{pid}/approvals", {"decision": "approve", "comment": "bench"})
    await post(
        f"/v1/partners/{pid}/agreement",
        {"agreement_type": "platform_integration", "starts_on": "2026-04-01", "ends_on": "2028-03-31"},
    )
    doc = await post(f"/v1/partners/{pid}/activate", None)
    if doc["status"] != "active":
        raise Failed(f"journey ended in {doc['status']}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes `pids` used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def drive(
    base: str,
    token: str,
    *,
    journeys: int,
    concurrency: int,
    warmup: int,
    server_pids: list[int],
    platform_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Run `journeys` complete journeys with `concurrency` in flight; throughput, latency, server CPU
    (and, given `platform_pids`, the CPU of each of those processes per journey)."""
    platform_pids = platform_pids or {}
    headers = {"Authorization": f"Bearer {token}"}
    connections = [Connection(base, headers) for _ in range(concurrency)]
    try:
        latencies: list[float] = []

        async def run(numbers: list[int], record: list[float]) -> None:
            async def worker(http: Connection) -> None:
                while numbers:
                    await journey(http, numbers.pop(), record)

            await asyncio.gather(*(worker(http) for http in connections))

        await run([-i - 1 for i in range(warmup)], [])
        cpu_before = cpu_seconds(server_pids)
        each_before = {name: cpu_seconds([pid]) for name, pid in platform_pids.items()}
        client_before = time.process_time()
        started = time.perf_counter()
        await run(list(range(journeys))[::-1], latencies)
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        server_cpu = cpu_seconds(server_pids) - cpu_before
        each = {name: (cpu_seconds([pid]) - each_before[name]) * 1000 / journeys for name, pid in platform_pids.items()}
    finally:
        for http in connections:
            http.close()
    latencies.sort()
    platform = {name: round(ms, 2) for name, ms in each.items()}
    if platform:
        platform["total"] = round(sum(each.values()), 2)
    return {
        "journeys": journeys,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "journeys_per_s": round(journeys / elapsed, 1),
        "commands_per_s": round(journeys * COMMANDS_PER_JOURNEY / elapsed, 1),
        # CPU the serving processes spent per journey: robust on a shared machine, and
        # 1000 / this is the journeys/s one free core would sustain.
        "server_cpu_ms_per_journey": round(server_cpu * 1000 / journeys, 2),
        # The load generator's own CPU (this process), on the same two cores.
        "client_cpu_ms_per_journey": round(client_cpu * 1000 / journeys, 2),
        # Every process of the platform (consumers and broker included), when measured.
        **({"platform_cpu_ms_per_journey": platform} if platform else {}),
        "command_latency_ms": {
            "p50": round(statistics.median(latencies) * 1000, 2),
            "p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        },
    }


async def settle(base: str, token: str, *, journeys: int = 40, timeout: float = 60.0) -> float:
    """Run `journeys` and wait until every consumer of the platform has applied them.

    The services answer /readyz before their Kafka consumers have joined their groups
    (a join takes a few seconds); until then a measurement would leave the consumers'
    work out of it. Returns the seconds the consumers took to catch up.
    """
    await drive(base, token, journeys=journeys, concurrency=min(journeys, 32), warmup=0, server_pids=[])
    started = time.monotonic()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for service in ("lifecycle", "metrics"):
            while True:
                async with session.get(f"{base}/admin/services/{service}/consumers") as response:
                    doc = await response.json()
                lags = [source.get("lag") for consumer in doc["consumers"] for source in consumer["sources"]]
                if lags and all(lag == 0 for lag in lags):
                    break
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{service}'s consumers did not catch up: lags {lags}")
                await asyncio.sleep(0.05)
    return time.monotonic() - started


# --- targets ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def jwks_server(issuer: TestIssuer) -> AsyncIterator[str]:
    """Serves the test issuer's public keys where the service looks for the gateway's JWKS."""
    keys = issuer.keyset.as_dict(private=False)

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(keys)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def fresh_postgres(url: str | None) -> AsyncIterator[str | None]:
    """A throw-away database on `url`'s server (None without a server)."""
    if url is None:
        yield None
        return
    async with fresh_database(url, prefix="bench_onboarding") as database_url:
        yield database_url


@contextlib.asynccontextmanager
async def onboarding_alone(
    var_dir: Path, database_url: str | None, *, broker: bool
) -> AsyncIterator[tuple[str, str, list[int]]]:
    """The onboarding service under uvicorn (plus the embedded broker); (base URL, ops token)."""
    issuer = TestIssuer(f"http://127.0.0.1:{free_port()}")
    async with contextlib.AsyncExitStack() as stack:
        gateway_url = await stack.enter_async_context(jwks_server(issuer))
        issuer.issuer = gateway_url
        port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "PARTNERHUB_VAR_DIR": str(var_dir),
                "PARTNERHUB_ONBOARDING_PORT": str(port),
                "PARTNERHUB_GATEWAY_URL": gateway_url,
                "PARTNERHUB_TRACING": "off",
            }
        )
        if database_url:
            env["PARTNERHUB_ONBOARDING_DATABASE_URL"] = database_url
        if broker:
            from events.broker import EmbeddedBroker

            embedded = await stack.enter_async_context(EmbeddedBroker(log_dir=var_dir / "logs"))
            env["PARTNERHUB_KAFKA_BOOTSTRAP"] = embedded.bootstrap
        log = stack.enter_context((var_dir / "onboarding.log").open("ab"))
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "onboarding"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(_stop, process)
        base = f"http://127.0.0.1:{port}"
        await _wait_ready(base, process)
        yield base, issuer.mint("bench-ops", OPS_SCOPES, ttl=3600), [process.pid]


@contextlib.asynccontextmanager
async def whole_platform(
    var_dir: Path, database_url: str | None
) -> AsyncIterator[tuple[str, str, str, dict[str, int]]]:
    """Broker + all services; (gateway URL, onboarding URL, ops token from /oauth/token, pids)."""
    from tests.support.platform import running_platform

    extra = {"PARTNERHUB_RATE_LIMITS": json.dumps({"ops": {"per_second": 1_000_000, "burst": 1_000_000}})}
    if database_url:
        extra["PARTNERHUB_ONBOARDING_DATABASE_URL"] = database_url
    async with running_platform(var_dir, extra_env=extra) as running:
        token = await running.token(running.ops)
        pids = {name: entry.process.pid for name, entry in running.platform.processes.items()}
        if running.platform.broker is not None and running.platform.broker.pid is not None:
            pids["broker"] = running.platform.broker.pid
        yield running.gateway, running.url("onboarding"), token, pids


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"onboarding exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(base + "/readyz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError("onboarding did not become ready")
            await asyncio.sleep(0.1)


# --- main ---------------------------------------------------------------------------------

GOAL = "≥ 150 through the gateway (SQLite)"


def _note(figures: dict[str, Any]) -> str:
    latency = figures["command_latency_ms"]
    return (
        f"{figures['commands_per_s']:.0f} commands/s; command p50 {latency['p50']} ms, p99 {latency['p99']} ms; "
        f"server CPU {figures['server_cpu_ms_per_journey']} ms/journey; {figures['journeys']} journeys, "
        f"{figures['concurrency']} in flight"
    )


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows for docs/performance.md, raw figures)."""
    rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    backends = [("SQLite", None)] + ([("PostgreSQL", args.postgres)] if args.postgres else [])
    load = {"journeys": args.journeys, "concurrency": args.concurrency, "warmup": args.warmup}
    for backend, url in backends:
        with tempfile.TemporaryDirectory(prefix="bench-onboarding-") as tmp:
            async with fresh_postgres(url) as database_url:
                if args.through == "direct":
                    alone = onboarding_alone(Path(tmp), database_url, broker=not args.no_broker)
                    async with alone as (base, token, pids):
                        direct = await drive(base, token, **load, server_pids=pids)
                    raw.append({"backend": backend, "target": "direct", **direct})
                    rows.append(
                        {"name": f"journeys direct to onboarding ({backend})", "value": direct["journeys_per_s"],
                         "unit": "journeys/s", "note": _note(direct) + "; no gateway"}
                    )
                    _print(backend, "direct", direct)
                    continue
                async with whole_platform(Path(tmp), database_url) as (gateway, onboarding, token, pids):
                    await settle(gateway, token)
                    via_gateway = await drive(
                        gateway, token, **load, server_pids=[pids["gateway"], pids["onboarding"]], platform_pids=pids
                    )
                    direct = await drive(onboarding, token, **load, server_pids=[pids["onboarding"]])
        raw += [{"backend": backend, "target": "gateway", **via_gateway}, {"backend": backend, "target": "direct", **direct}]
        rows.append(
            {
                "name": f"journeys through the gateway ({backend})",
                "value": via_gateway["journeys_per_s"],
                "unit": "journeys/s",
                "goal": GOAL if backend == "SQLite" else "",
                "peer": direct["journeys_per_s"],
                "ratio": round(via_gateway["journeys_per_s"] / direct["journeys_per_s"], 3),
                "note": _note(via_gateway) + " (server CPU = gateway + onboarding); peer: direct to onboarding",
            }
        )
        rows.append(
            {"name": f"journeys direct to onboarding ({backend})", "value": direct["journeys_per_s"],
             "unit": "journeys/s", "note": _note(direct)}
        )
        rows.append(_cpu_row(backend, "onboarding", direct["server_cpu_ms_per_journey"]))
        gateway_cpu = via_gateway["server_cpu_ms_per_journey"] - direct["server_cpu_ms_per_journey"]
        rows.append(_cpu_row(backend, "gateway", round(gateway_cpu, 2)))
        rows.append(_platform_row(backend, via_gateway["platform_cpu_ms_per_journey"]))
        _print(backend, "gateway", via_gateway)
        _print(backend, "direct", direct)
    return rows, raw


def _cpu_row(backend: str, process: str, ms: float) -> dict[str, Any]:
    return {
        "name": f"{process} CPU per journey ({backend})",
        "value": ms,
        "unit": "ms",
        "note": f"≈ {1000 / ms:.0f} journeys/s per free core" + ("" if process == "onboarding" else
                 " (through-gateway CPU minus direct CPU)"),
    }


def _platform_row(backend: str, platform: dict[str, float]) -> dict[str, Any]:
    """Where a journey's CPU goes in the whole platform, against what 150 journeys/s allows."""
    parts = ", ".join(f"{name} {ms}" for name, ms in platform.items() if name != "total")
    budget = os.cpu_count() or 1
    return {
        "name": f"platform CPU per journey through the gateway ({backend})",
        "value": platform["total"],
        "unit": "ms",
        "note": f"{parts} ms (client{' and PostgreSQL server' if backend == 'PostgreSQL' else ''} not counted); 150 journeys/s on {budget} cores allows "
                f"{budget * 1000 / 150:.1f} ms in all, client included",
    }


def _print(backend: str, target: str, figures: dict[str, Any]) -> None:
    print(f"{backend:<10} {target:<8} {figures['journeys_per_s']:>7} journeys/s  ({_note(figures)})", flush=True)
    if "platform_cpu_ms_per_journey" in figures:
        print(f"{'':<19} platform CPU ms per journey: {figures['platform_cpu_ms_per_journey']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--journeys", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--through", choices=["gateway", "direct"], default="gateway",
                        help="gateway: the whole platform, with the direct call as peer; direct: onboarding alone")
    parser.add_argument("--postgres", default=os.environ.get("PARTNERHUB_TEST_POSTGRES_URL"),
                        help="also measure with onboarding on this PostgreSQL (default $PARTNERHUB_TEST_POSTGRES_URL)")
    parser.add_argument("--no-broker", action="store_true", help="direct only: no embedded broker and relay")
    args = parser.parse_args()
    rows, raw = asyncio.run(run(args))
    from bench.run import environment

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "title": "Onboarding: complete partner journeys (8 commands each)",
        "command": " ".join(["python -m bench.bench_onboarding", *sys.argv[1:]]),
        "results": rows,
        "raw": raw,
        "environment": environment(),
    }
    RESULTS.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
