"""Gateway overhead: proxied vs direct throughput and latency, and token endpoint throughput.

Starts a FastAPI upstream answering 300 B of JSON and the gateway in front of it, each
under uvicorn with one worker exactly as `partnerhub serve` runs them, then drives both
with wrk (installed with apt-get when missing and possible; a Python load generator
otherwise) in the same run:

- throughput with 32 connections, gateway vs direct (goal: ≥ 90 % of direct), with the
  issue's reference design (a bare plain-ASGI aiohttp forwarder) measured beside it;
- CPU per proxied request of the gateway vs the upstream's own (the steadier figure on a
  shared machine);
- latency with 1 connection, gateway vs direct (goal: p50 ≤ +1 ms, p99 ≤ +3 ms);
- `POST /oauth/token` (client_secret_basic) with 32 connections (goal: ≥ 1,500 tokens/s).

    python -m bench.bench_gateway [--duration 10] [--connections 32] [--rounds 3]

Writes bench/results/gateway.json in bench/run.py's format.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.support.platform import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gateway.json"
PAYLOAD = {
    "window": "30d",
    "kpis": {
        "api_availability": {"value": 0.9994, "target": 0.999, "status": "met", "sample_size": 1200},
        "integration_success_rate": {"value": 0.962, "target": 0.95, "status": "met", "sample_size": 80},
        "partner_satisfaction": {"value": 8.7, "target": 8.5, "status": "met", "sample_size": 12},
    },
    "as_of": {"onboarding": 1234, "lifecycle": 5678},
}


def upstream_app() -> Any:
    """The upstream under test: a FastAPI route answering ~300 B of JSON."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/kpis")
    async def kpis() -> dict[str, Any]:
        return PAYLOAD

    return app


def reference_proxy_app() -> Any:
    """The issue's reference design: a plain ASGI app forwarding with one aiohttp session.

    No auth, no limits, no headers of its own: the floor any aiohttp-based proxy starts from.
    """
    import aiohttp

    base = os.environ["BENCH_UPSTREAM"]
    drop = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}
    state: dict[str, aiohttp.ClientSession] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["session"] = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=512), auto_decompress=False
                    )
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await state["session"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await receive()
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in drop]
        async with state["session"].request(scope["method"], base + scope["path"], headers=headers) as response:
            body = await response.read()
            out = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in drop]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            await send({"type": "http.response.body", "body": body})

    return app


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Load:
    """What one load run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


# --- load generators --------------------------------------------------------------------


def ensure_wrk() -> str | None:
    """The wrk binary, installing the Debian package when missing (root only)."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(wrk: str, url: str, *, connections: int, duration: float, headers: dict[str, str], script: Path | None = None) -> Load:
    args = [wrk, "-t1", f"-c{connections}", f"-d{duration:.0f}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(errors_match.group(1)) if errors_match else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Load(rps, p50, p99, errors)


def run_python(url: str, *, connections: int, duration: float, headers: dict[str, str], method: str = "GET", body: bytes | None = None) -> Load:
    """A load generator in a subprocess (aiohttp, keep-alive), for machines without wrk."""
    code = f"""
import asyncio, json, time, aiohttp
async def main():
    lat, errors, done = [], 0, 0
    deadline = time.perf_counter() + {duration}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit={connections})) as s:
        async def worker():
            nonlocal errors, done
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                async with s.request({method!r}, {url!r}, headers={headers!r}, data={body!r}) as r:
                    await r.read()
                    if r.status >= 400: errors += 1
                lat.append((time.perf_counter() - t) * 1000); done += 1
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range({connections})))
        elapsed = time.perf_counter() - start
    lat.sort()
    print(json.dumps({{"rps": done / elapsed, "p50": lat[len(lat)//2], "p99": lat[int(len(lat)*0.99)], "errors": errors}}))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    return Load(doc["rps"], doc["p50"], doc["p99"], doc["errors"])


# --- processes ----------------------------------------------------------------------------


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.1)
    raise TimeoutError(url)


def uvicorn_args(target: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", target, "--factory", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]


# --- the benchmark --------------------------------------------------------------------------


def _load_average() -> str:
    """The 1-minute load average (other work on a shared machine skews every figure)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per measure (medians are kept)")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    load_before = _load_average()
    var = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    up_port, gw_port, ref_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    gateway = f"http://127.0.0.1:{gw_port}"
    reference = f"http://127.0.0.1:{ref_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNERHUB_")} | {
        "PARTNERHUB_TRACING": "off",
        "PARTNERHUB_LOG_LEVEL": "WARNING",
        "PARTNERHUB_VAR_DIR": str(var),
        "PARTNERHUB_GATEWAY_PORT": str(gw_port),
        "PARTNERHUB_METRICS_URL": upstream,
        "PARTNERHUB_ONBOARDING_URL": upstream,
        "PARTNERHUB_LIFECYCLE_URL": upstream,
        # The benchmark measures the proxy, not the limiter's refusals.
        "PARTNERHUB_RATE_LIMITS": json.dumps({"ops": {"per_second": 1e9, "burst": 1e9}}),
        "BENCH_UPSTREAM": upstream,
    }
    try:
        with (
            process(uvicorn_args("bench.bench_gateway:upstream_app", up_port), env, var / "upstream.log") as up,
            process(uvicorn_args("services.gateway.app:create_app", gw_port), env, var / "gateway.log") as gw,
            process(uvicorn_args("bench.bench_gateway:reference_proxy_app", ref_port), env, var / "reference.log") as ref,
        ):
            wait_ready(upstream + "/v1/kpis", up)
            wait_ready(gateway + "/readyz", gw)
            wait_ready(reference + "/v1/kpis", ref)
            made = subprocess.run(
                [sys.executable, "-m", "services.cli", "client", "create", "--ops", "bench", "--json"],
                env=env, cwd=ROOT, capture_output=True, check=True,
            )
            creds = json.loads(made.stdout)
            token = httpx.post(
                gateway + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(creds["client_id"], creds["client_secret"])
            ).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            assert httpx.get(gateway + "/v1/kpis", headers=auth).json() == PAYLOAD

            def load(url: str, connections: int, headers: dict[str, str], script: Path | None = None, **kw: Any) -> Load:
                if wrk is not None:
                    return run_wrk(wrk, url, connections=connections, duration=args.duration, headers=headers, script=script)
                return run_python(url, connections=connections, duration=args.duration, headers=headers, **kw)

            def measured(url: str, connections: int, headers: dict[str, str], pids: list[int], **kw: Any) -> tuple[Load, list[float]]:
                before = [cpu_seconds(pid) for pid in pids]
                result = load(url, connections, headers, **kw)
                requests = max(1.0, result.rps * args.duration)
                return result, [(cpu_seconds(pid) - b) / requests * 1e6 for pid, b in zip(pids, before, strict=True)]

            # Warm every path (connection pools, token cache).
            for url in (upstream, gateway, reference):
                load(url + "/v1/kpis", args.connections, auth)
            direct, proxied, floor, direct_1, proxied_1 = [], [], [], [], []
            direct_cpu, gateway_cpu, reference_cpu = [], [], []
            for _ in range(args.rounds):
                result, (cpu,) = measured(upstream + "/v1/kpis", args.connections, auth, [up.pid])
                direct.append(result)
                direct_cpu.append(cpu)
                result, (cpu, _) = measured(gateway + "/v1/kpis", args.connections, auth, [gw.pid, up.pid])
                proxied.append(result)
                gateway_cpu.append(cpu)
                result, (cpu, _) = measured(reference + "/v1/kpis", args.connections, auth, [ref.pid, up.pid])
                floor.append(result)
                reference_cpu.append(cpu)
            for _ in range(args.rounds):
                direct_1.append(load(upstream + "/v1/kpis", 1, auth))
                proxied_1.append(load(gateway + "/v1/kpis", 1, auth))

            basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
            form = "grant_type=client_credentials&scope=kpis%3Aread"
            script = var / "token.lua"
            script.write_text(
                'wrk.method = "POST"\n'
                f'wrk.body = "{form}"\n'
                'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
            )
            token_headers = {"Authorization": f"Basic {basic}"}
            tokens, token_cpu = [], []
            for _ in range(args.rounds):
                result, (cpu,) = measured(
                    gateway + "/oauth/token", args.connections, token_headers, [gw.pid],
                    script=script, method="POST", body=form.encode(),
                )
                tokens.append(result)
                token_cpu.append(cpu)
    finally:
        shutil.rmtree(var, ignore_errors=True)

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    d_rps, g_rps, r_rps = med([r.rps for r in direct]), med([r.rps for r in proxied]), med([r.rps for r in floor])
    d50, g50 = med([r.p50_ms for r in direct_1]), med([r.p50_ms for r in proxied_1])
    d99, g99 = med([r.p99_ms for r in direct_1]), med([r.p99_ms for r in proxied_1])
    t_rps = med([r.rps for r in tokens])
    errors = sum(r.errors for r in [*direct, *proxied, *floor, *direct_1, *proxied_1, *tokens])
    generator = "wrk -t1" if wrk else "python aiohttp load generator"
    note = f"medians of {args.rounds} alternating runs of {args.duration:.0f} s"
    results = [
        {"name": f"proxied throughput ({args.connections} connections)", "value": round(g_rps), "unit": "req/s",
         "peer": round(d_rps), "ratio": round(g_rps / d_rps, 3), "goal": "ratio ≥ 0.90",
         "note": f"peer: the same upstream called directly; {note}"},
        {"name": "reference: plain ASGI + aiohttp forwarder", "value": round(r_rps), "unit": "req/s",
         "peer": round(d_rps), "ratio": round(r_rps / d_rps, 3),
         "note": "no auth, limits or headers: the floor of the issue's reference design, same run"},
        {"name": "gateway CPU per proxied request", "value": round(med(gateway_cpu)), "unit": "µs",
         "peer": round(med(direct_cpu)), "ratio": round(med(gateway_cpu) / med(direct_cpu), 3),
         "note": f"peer: the upstream's own CPU per request; reference forwarder {med(reference_cpu):.0f} µs"},
        {"name": "added latency p50 (1 connection)", "value": round(g50 - d50, 3), "unit": "ms",
         "peer": round(d50, 3), "goal": "≤ +1 ms", "note": f"gateway p50 {g50:.3f} ms"},
        {"name": "added latency p99 (1 connection)", "value": round(g99 - d99, 3), "unit": "ms",
         "peer": round(d99, 3), "goal": "≤ +3 ms", "note": f"gateway p99 {g99:.3f} ms"},
        {"name": f"token endpoint ({args.connections} connections, client_secret_basic)", "value": round(t_rps),
         "unit": "tokens/s", "goal": "≥ 1,500",
         "note": f"ES256-signed RFC 9068 JWTs, one process; {med(token_cpu):.0f} µs CPU per token"},
    ]
    from bench.run import environment

    doc = {
        "title": "Gateway: proxy overhead and token endpoint",
        "command": "python -m bench.bench_gateway",
        "results": results,
        "environment": environment() | {"load_generator": generator, "errors": str(errors),
                                       "load_average_before": load_before, "load_average_after": _load_average()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
