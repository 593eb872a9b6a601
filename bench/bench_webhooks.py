"""Webhook delivery: throughput, isolation from a hanging endpoint, event-appended → delivered latency.

The receiver is a separate process (aiohttp, verifying every signature with
`standardwebhooks`), so it does not share an event loop with the workers.

- throughput: 10 endpoints with messages queued, delivery workers started, deliveries/s
  until every outcome is recorded (goal ≥ 1,000/s); peer: a bare aiohttp client posting the
  same signed requests at the same concurrency, without database or scheduling;
- isolation: nine healthy endpoints alone (the peer), then the same nine beside a tenth
  that never answers (attempt deadline 1 s, so it keeps timing out and retrying); goal:
  the nine keep ≥ 90 % of their throughput;
- latency: 200 events/s appended to the lifecycle store, relayed through the embedded
  Tansu broker to the dispatcher subscription and delivered; p99 append → received
  (goal < 250 ms); peer: the same with the dispatcher called right after the append.

    python -m bench.bench_webhooks [--messages 5000] [--latency-seconds 10] [--rounds 3] [--quick]
    python -m bench.bench_webhooks --postgres postgresql+asyncpg://USER@127.0.0.1:5432/postgres

Writes bench/results/webhooks.json in bench/run.py's format.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.run import environment  # noqa: E402
from events.catalog import IntegrationAttemptRecorded  # noqa: E402
from events.envelope import RecordedEvent  # noqa: E402
from services.lifecycle.webhooks.dispatcher import payload_of  # noqa: E402
from services.lifecycle.webhooks.repository import pending_depths  # noqa: E402
from services.lifecycle.webhooks.secrets import Signer  # noqa: E402
from services.lifecycle.webhooks.wiring import Webhooks, build  # noqa: E402
from services.runtime.app import Runtime, build_runtime  # noqa: E402
from services.runtime.clock import SystemClock  # noqa: E402
from services.runtime.migrations import migrate  # noqa: E402
from services.runtime.settings import Settings  # noqa: E402
from tests.support.databases import fresh_database  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "webhooks.json"


# --- the receiver process --------------------------------------------------------------


def run_receiver() -> None:
    """Serve until killed: verify, count and timestamp every delivery; `/hang/*` never answers."""
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    hooks: dict[str, Webhook] = {}
    receipts: list[tuple[str, str, float]] = []
    unverified = 0

    async def configure(request: web.Request) -> web.Response:
        for path, secret in (await request.json()).items():
            hooks[path] = Webhook(secret)
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        nonlocal unverified
        body = {"count": len(receipts), "unverified": unverified, "receipts": list(receipts)}
        if request.query.get("reset"):
            receipts.clear()
            unverified = 0
        return web.json_response(body)

    async def receive(request: web.Request) -> web.Response:
        nonlocal unverified
        body = await request.read()
        hook = hooks.get(request.path)
        try:
            if hook is None:
                raise WebhookVerificationError("unknown path")
            hook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            unverified += 1
        if request.path.startswith("/hang/"):
            await asyncio.sleep(3600)
        receipts.append((request.path, request.headers.get("webhook-id", ""), time.time()))
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "/")
        return web.json_response({"count": sum(1 for path, _, _ in receipts if path.startswith(prefix))})

    app = web.Application()
    app.router.add_get("/_count", count)
    app.router.add_post("/_config", configure)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/{tail:.*}", receive)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.Event().wait()

    _use_uvloop()
    asyncio.run(serve())


class ReceiverProcess:
    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bench_webhooks", "--receiver",
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        assert self.process.stdout is not None
        self.port = int((await asyncio.wait_for(self.process.stdout.readline(), 60)).strip())
        self.http = aiohttp.ClientSession()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def configure(self, secrets: dict[str, str]) -> None:
        assert self.http is not None
        async with self.http.post(self.url("/_config"), json=secrets) as response:
            response.raise_for_status()

    async def stats(self, *, reset: bool = False) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.get(self.url("/_stats"), params={"reset": "1"} if reset else {}) as response:
            return dict(await response.json())

    async def count(self, prefix: str = "/") -> int:
        assert self.http is not None
        async with self.http.get(self.url("/_count"), params={"prefix": prefix}) as response:
            return int((await response.json())["count"])

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# --- the lifecycle side ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def lifecycle(
    var_dir: Path,
    *,
    attempt_timeout: float = 15.0,
    bootstrap: str | None = None,
    prefix: str = "partnerhub",
    postgres: str | None = None,
) -> AsyncIterator[tuple[Runtime, Webhooks]]:
    async with contextlib.AsyncExitStack() as stack:
        database_url = (
            await stack.enter_async_context(fresh_database(postgres, prefix="bench_webhooks")) if postgres else None
        )
        settings = Settings(
            env="test",
            var_dir=var_dir,
            webhook_allow_nets=["127.0.0.0/8"],
            webhook_attempt_timeout=attempt_timeout,
            kafka_bootstrap=bootstrap,
            kafka_topic_prefix=prefix,
            lifecycle_database_url=database_url,
        )
        runtime = build_runtime("lifecycle", settings, SystemClock())
        stack.push_async_callback(runtime.engine.dispose)
        stack.push_async_callback(runtime.store.close)
        await migrate(runtime.engine, "lifecycle")
        webhooks = build(runtime, subscription_options={"manual_assignment": True, "log_reader": _own_log(runtime)})
        try:
            yield runtime, webhooks
        finally:
            for component in reversed(webhooks.components):
                await component.stop()


def _own_log(runtime: Runtime) -> Any:

    async def own_log(source: str, after: int, limit: int) -> list[RecordedEvent]:
        return await runtime.store.read_all(after=after, limit=limit) if source == "lifecycle" else []

    return own_log


def event(partner_id: str, n: int) -> RecordedEvent:
    """A synthetic recorded event (for queueing messages without the store)."""
    now = datetime.now(UTC)
    payload = IntegrationAttemptRecorded(partner_id=partner_id, integration_id="i-1", outcome="succeeded", detail=str(n))
    return RecordedEvent(
        position=n, event_id=str(uuid.uuid4()), source="lifecycle", stream_id=f"integration-{partner_id}",
        stream_version=n, type=payload.type, schema_version=1, data=payload.payload(), partition_key=partner_id,
        occurred_at=now, recorded_at=now,
    )


async def endpoints(webhooks: Webhooks, receiver: ReceiverProcess, paths: list[str]) -> dict[str, str]:
    """One endpoint per path (partner = path); returns path -> secret."""
    secrets: dict[str, str] = {}
    for path in paths:
        created = await webhooks.service.create(
            partner_id=path.strip("/").replace("/", "-"), url=receiver.url(path), event_types=["*"], description=""
        )
        secrets[path] = created.secret
    await receiver.configure(secrets)
    return secrets


async def queue(runtime: Runtime, webhooks: Webhooks, partners: list[str], per_partner: int) -> list[RecordedEvent]:
    events = [event(p, n) for n in range(per_partner) for p in partners]
    for start in range(0, len(events), 200):
        async with runtime.engine.begin() as conn:
            for e in events[start : start + 200]:
                await webhooks.dispatcher.handle(conn, e)
    return events


async def drain(
    runtime: Runtime,
    receiver: ReceiverProcess,
    expected: int,
    *,
    prefix: str = "/",
    endpoint_ids: list[str] | None = None,
    timeout: float = 300,
) -> float:
    """Seconds until `expected` deliveries under `prefix` arrived and their outcomes are recorded."""
    started = time.perf_counter()
    deadline = started + timeout
    while await receiver.count(prefix) < expected:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {await receiver.count(prefix)} of {expected} deliveries arrived")
        await asyncio.sleep(0.05)
    arrived = time.perf_counter()
    while any((await pending_depths(runtime.engine, endpoint_ids)).values()):
        await asyncio.sleep(0.05)
    return max(arrived, time.perf_counter()) - started


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- scenarios --------------------------------------------------------------------------------


async def throughput(receiver: ReceiverProcess, messages: int, postgres: str | None = None) -> dict[str, Any]:
    paths = [f"/t{i}" for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        async with lifecycle(Path(tmp), postgres=postgres) as (runtime, webhooks):
            await endpoints(webhooks, receiver, paths)
            await queue(runtime, webhooks, [p.strip("/") for p in paths], messages // len(paths))
            await receiver.stats(reset=True)
            cpu = cpu_seconds()
            await webhooks.workers.start()
            seconds = await drain(runtime, receiver, messages)
            cpu = cpu_seconds() - cpu
            stats = await receiver.stats(reset=True)
    peer, peer_cpu = await bare_client(receiver, paths, messages, concurrency=8 * len(paths))
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "per_s": round(messages / seconds, 1),
        "cpu_ms_per_delivery": round(cpu * 1000 / messages, 3),
        "unverified": stats["unverified"],
        "peer_per_s": round(peer, 1),
        "peer_cpu_ms_per_request": round(peer_cpu * 1000 / messages, 3),
    }


async def bare_client(
    receiver: ReceiverProcess, paths: list[str], messages: int, *, concurrency: int
) -> tuple[float, float]:
    """Signed POSTs with a plain aiohttp client at the workers' concurrency: the peer."""
    secrets = {p: f"whsec_{'A' * 43}=" for p in paths}
    await receiver.configure(secrets)
    signers = {p: Signer([s]) for p, s in secrets.items()}
    jobs = [(paths[n % len(paths)], event("peer", n)) for n in range(messages)]
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def post(path: str, e: RecordedEvent) -> None:
            body = payload_of(e)
            stamp = int(time.time())
            headers = {
                "webhook-id": e.event_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": signers[path].signature(msg_id=e.event_id, timestamp=stamp, body=body),
                "content-type": "application/json",
            }
            async with semaphore, http.post(receiver.url(path), data=body.encode(), headers=headers) as response:
                await response.read()

        cpu = cpu_seconds()
        started = time.perf_counter()
        await asyncio.gather(*(post(p, e) for p, e in jobs))
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
    await receiver.stats(reset=True)
    return messages / seconds, cpu


async def isolation(receiver: ReceiverProcess, messages: int, rounds: int) -> dict[str, Any]:
    healthy = [f"/h{i}" for i in range(9)]
    per = messages // len(healthy)
    rates: dict[str, list[float]] = {"alone": [], "beside a hanging endpoint": []}
    cpu_ms: dict[str, list[float]] = {"alone": [], "beside a hanging endpoint": []}
    # Alternate the two scenarios and keep each one's best round: on a shared machine the
    # best round is the one least disturbed by other processes.
    for _ in range(rounds):
        for scenario in rates:
            paths = healthy + (["/hang/0"] if scenario != "alone" else [])
            with tempfile.TemporaryDirectory() as tmp:
                async with lifecycle(Path(tmp), attempt_timeout=1.0) as (runtime, webhooks):
                    await endpoints(webhooks, receiver, paths)
                    await queue(runtime, webhooks, [p.strip("/").replace("/", "-") for p in paths], per)
                    healthy_ids = [e.id for e in await _endpoint_rows(runtime) if not e.url.endswith("/hang/0")]
                    await receiver.stats(reset=True)
                    cpu = cpu_seconds()
                    await webhooks.workers.start()
                    seconds = await drain(runtime, receiver, per * len(healthy), prefix="/h", endpoint_ids=healthy_ids)
                    cpu_ms[scenario].append((cpu_seconds() - cpu) * 1000 / (per * len(healthy)))
                    rates[scenario].append(per * len(healthy) / seconds)
                    await receiver.stats(reset=True)
    alone, beside = max(rates["alone"]), max(rates["beside a hanging endpoint"])
    return {
        "healthy_alone_per_s": round(alone, 1),
        "healthy_beside_hanging_per_s": round(beside, 1),
        "ratio": round(beside / alone, 3),
        "rounds": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "cpu_ms_per_healthy_delivery": {k: round(min(vs), 3) for k, vs in cpu_ms.items()},
    }


async def _endpoint_rows(runtime: Runtime) -> list[Any]:
    from services.lifecycle.webhooks.repository import list_endpoints

    return await list_endpoints(runtime.engine, partner_id=None, after=None, limit=200)


async def latency(
    receiver: ReceiverProcess, rate: float, seconds: float, postgres: str | None = None
) -> dict[str, Any]:
    from events.broker import EmbeddedBroker
    from events.relay import Relay

    results: dict[str, Any] = {}
    paths = [f"/l{i}" for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedBroker(log_dir=Path(tmp) / "broker") as broker:
            for mode in ("through the broker", "dispatcher called directly"):
                var_dir = Path(tmp) / mode.replace(" ", "-")
                through_broker = mode == "through the broker"
                async with lifecycle(
                    var_dir,
                    bootstrap=broker.bootstrap if through_broker else None,
                    prefix=f"b{uuid.uuid4().hex[:6]}",
                    postgres=postgres,
                ) as (runtime, webhooks):
                    relay = None
                    if through_broker:
                        settings = runtime.settings
                        relay = Relay(
                            runtime.store,
                            bootstrap=broker.bootstrap,
                            topic=settings.topic_of("lifecycle"),
                            partitions=settings.kafka_partitions,
                            engine=runtime.engine,
                            poll_interval=settings.relay_poll_interval,
                        )
                        await relay.start()
                    for component in webhooks.components:
                        await component.start()
                    await endpoints(webhooks, receiver, paths)
                    try:
                        results[mode] = await _paced(runtime, webhooks, receiver, paths, rate, seconds, direct=not through_broker)
                    finally:
                        if relay is not None:
                            await relay.stop()
    return results


async def _paced(
    runtime: Runtime, webhooks: Webhooks, receiver: ReceiverProcess, paths: list[str], rate: float, seconds: float, *, direct: bool
) -> dict[str, Any]:
    partners = [p.strip("/") for p in paths]
    appended: dict[str, float] = {}

    async def one(n: int) -> None:
        partner = partners[n % len(partners)]
        [recorded] = await runtime.store.append(
            stream_id=f"integration-{partner}",
            expected_version=None,
            events=[IntegrationAttemptRecorded(partner_id=partner, integration_id="i-1", outcome="succeeded", detail=str(n))],
        )
        appended[recorded.event_id] = time.time()
        if direct:
            async with runtime.engine.begin() as conn:
                await webhooks.dispatcher.handle(conn, recorded)

    # Warm-up (connections, caches, the consumer's first fetch), not measured.
    await asyncio.gather(*(one(n) for n in range(20)))
    await _wait_count(receiver, 20)
    await receiver.stats(reset=True)
    appended.clear()

    total = int(rate * seconds)
    cpu = cpu_seconds()
    started = time.perf_counter()
    tasks = []
    for n in range(total):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    await _wait_count(receiver, total)
    cpu = cpu_seconds() - cpu
    stats = await receiver.stats(reset=True)
    latencies = sorted(
        (received - appended[webhook_id]) * 1000 for _, webhook_id, received in stats["receipts"] if webhook_id in appended
    )
    return {
        "events": total,
        "rate_per_s": rate,
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
        "max_ms": round(latencies[-1], 1),
        "cpu_ms_per_event": round(cpu * 1000 / total, 2),
        "unverified": stats["unverified"],
    }


async def _wait_count(receiver: ReceiverProcess, expected: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while await receiver.count() < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{await receiver.count()} of {expected} deliveries arrived")
        await asyncio.sleep(0.05)


# --- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backends: dict[str, str | None] = {"sqlite": None}
    if args.postgres:
        backends["postgresql"] = args.postgres
    tput: dict[str, dict[str, Any]] = {}
    lat: dict[str, dict[str, Any]] = {}
    receiver = ReceiverProcess()
    await receiver.start()
    try:
        for backend, url in backends.items():
            rounds = [await throughput(receiver, args.messages, url) for _ in range(args.rounds)]
            tput[backend] = max(rounds, key=lambda t: t["per_s"])
            print(f"throughput ({backend}): {tput[backend]}", flush=True)
        iso = await isolation(receiver, args.messages, args.rounds)
        print(f"isolation: {iso}", flush=True)
        for backend, url in backends.items():
            lat[backend] = await latency(receiver, args.rate, args.latency_seconds, url)
            print(f"latency ({backend}): {lat[backend]}", flush=True)
    finally:
        await receiver.stop()
    results: list[dict[str, Any]] = []
    for backend, t in tput.items():
        results.append(
            {
                "name": f"deliveries per second, 10 endpoints, local receiver ({backend})",
                "value": t["per_s"],
                "unit": "deliveries/s",
                "goal": "≥ 1,000/s",
                "peer": t["peer_per_s"],
                "ratio": round(t["per_s"] / t["peer_per_s"], 3),
                "note": f"peer: bare aiohttp client, same signed requests and concurrency, no database; "
                f"{t['cpu_ms_per_delivery']} ms CPU per delivery (outcome event and log row included) "
                f"vs {t['peer_cpu_ms_per_request']} ms for the peer",
            }
        )
    results.append(
        {
            "name": "nine healthy endpoints beside a hanging one (sqlite)",
            "value": iso["healthy_beside_hanging_per_s"],
            "unit": "deliveries/s",
            "peer": iso["healthy_alone_per_s"],
            "ratio": iso["ratio"],
            "goal": "ratio ≥ 0.90",
            "note": f"peer: the same nine endpoints without the hanging one; attempt deadline 1 s; best of {args.rounds} rounds "
            f"({iso['rounds']}); CPU per healthy delivery {iso['cpu_ms_per_healthy_delivery']} ms",
        }
    )
    for backend, result in lat.items():
        broker, direct = result["through the broker"], result["dispatcher called directly"]
        results.append(
            {
                "name": f"event appended → delivered p99 at {args.rate:g} events/s, through Tansu ({backend})",
                "value": broker["p99_ms"],
                "unit": "ms",
                "goal": "< 250 ms",
                "peer": direct["p99_ms"],
                "ratio": round(broker["p99_ms"] / direct["p99_ms"], 2) if direct["p99_ms"] else None,
                "note": f"p50 {broker['p50_ms']} ms, max {broker['max_ms']} ms, {broker['cpu_ms_per_event']} ms CPU per event "
                f"in the lifecycle process; peer: dispatcher called right after the append (no relay, broker, "
                f"subscription), p50 {direct['p50_ms']} ms",
            }
        )
    return {
        "title": "Webhook delivery",
        "command": "python -m bench.bench_webhooks " + " ".join(_redacted(sys.argv[1:])),
        "results": results,
        "details": {"throughput": tput, "isolation": iso, "latency": lat, "load_average": os.getloadavg()},
        "environment": environment(),
    }


def _redacted(argv: list[str]) -> list[str]:
    """The command line without database credentials."""
    from sqlalchemy.engine import make_url

    out = []
    for arg in argv:
        if "://" in arg:
            with contextlib.suppress(Exception):
                arg = make_url(arg).render_as_string(hide_password=True)
        out.append(arg)
    return out


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of throughput and isolation (best kept)")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s of the latency run")
    parser.add_argument("--postgres", help="also measure on PostgreSQL (a fresh database per scenario is created)")
    parser.add_argument("--quick", action="store_true", help="fewer messages, shorter latency run")
    args = parser.parse_args()
    if args.receiver:
        run_receiver()
        return
    if args.quick:
        args.messages, args.latency_seconds, args.rounds = 1800, 4.0, 1
    os.environ.setdefault("PARTNERHUB_TRACING", "off")
    _use_uvloop()
    doc = asyncio.run(run(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    for row in doc["results"]:
        print(f"{row['name']}: {row['value']} {row['unit']} (peer {row.get('peer')}, ratio {row.get('ratio')})")


if __name__ == "__main__":
    main()
