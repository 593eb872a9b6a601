"""Test support for the gateway: a recording upstream, an in-process gateway, gateway processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

from services.gateway.app import create_app
from services.gateway.clients import OPS_SCOPES
from services.gateway.context import GatewayContext
from services.gateway.proxy import GatewayApp
from services.runtime.clock import Clock
from services.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A tiny upstream on a real loopback port that records what reaches it.

    `GET …/slow` sleeps, `…/stream` answers a chunked body, `?status=N` answers N.
    """

    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope["query_string"].decode()
        self.seen.append(Seen(scope["method"], scope["path"], query, headers, body))
        path = scope["path"]
        if path.endswith("/slow"):
            await asyncio.sleep(1.0)
        status = 200
        for part in query.split("&"):
            if part.startswith("status="):
                status = int(part.split("=", 1)[1])
        if path.endswith("/stream"):
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
            for i in range(5):
                await send({"type": "http.response.body", "body": f"chunk{i};".encode() * 20_000, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        doc = {"path": path, "method": scope["method"], "body_bytes": len(body), "headers": headers}
        payload = orjson.dumps(doc)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-upstream", b"yes"),
                    (b"connection", b"keep-alive"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})


@contextlib.asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[None]:
    """Run an ASGI app with uvicorn in this event loop on 127.0.0.1:`port`."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@dataclass
class Credentials:
    client_id: str
    client_secret: str


@dataclass
class InProcessGateway:
    """A gateway app driven through ASGITransport."""

    app: GatewayApp
    http: httpx.AsyncClient
    ops: Credentials

    @property
    def ctx(self) -> GatewayContext:
        context: GatewayContext = self.app.state.gateway
        return context

    async def token(self, creds: Credentials, scope: str | None = None) -> str:
        data = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
        response = await self.http.post("/oauth/token", data=data, auth=(creds.client_id, creds.client_secret))
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    async def bearer(self, creds: Credentials, scope: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(creds, scope)}"}

    async def client(self, *, partner_id: str | None = None, scopes: list[str] | None = None, **extra: Any) -> Credentials:
        """A new client, made through the admin API with the ops client's token."""
        body: dict[str, Any] = {"name": "test client", "scopes": scopes or ["partners:read", "kpis:read"], **extra}
        if partner_id is not None:
            body["partner_id"] = partner_id
        response = await self.http.post("/admin/clients", json=body, headers=await self.bearer(self.ops))
        assert response.status_code == 201, response.text
        doc = response.json()
        return Credentials(doc["client_id"], doc["client_secret"])


def gateway_settings(tmp_path: Path, upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "var_dir": tmp_path,
        "gateway_port": free_port(),
        "onboarding_url": upstream_url,
        "lifecycle_url": upstream_url,
        "metrics_url": upstream_url,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def in_process_gateway(settings: Settings, *, clock: Clock | None = None) -> AsyncIterator[InProcessGateway]:
    app = create_app(settings, clock=clock)
    async with app.api.router.lifespan_context(app.api):
        ctx: GatewayContext = app.state.gateway
        record, secret = await ctx.registry.create(name="test ops", scopes=OPS_SCOPES)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            yield InProcessGateway(app, http, Credentials(record.client_id, secret))


@dataclass
class GatewayProcess:
    """`uvicorn services.gateway.app:create_app --factory` as a subprocess."""

    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "services.gateway.app:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "--no-access-log",
            ],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.url + "/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gateway not ready: {self.log_path.read_text()[-3000:]}")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)


def process_env(var_dir: Path, upstream_url: str, gateway_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTNERHUB_")}
    env.update(
        {
            "PARTNERHUB_TRACING": "off",
            "PARTNERHUB_VAR_DIR": str(var_dir),
            "PARTNERHUB_GATEWAY_PORT": str(gateway_port),
            "PARTNERHUB_ONBOARDING_URL": upstream_url,
            "PARTNERHUB_LIFECYCLE_URL": upstream_url,
            "PARTNERHUB_METRICS_URL": upstream_url,
        }
    )
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run `partnerhub <args> --json` and parse its output."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", *args, "--json"], env=env, cwd=ROOT, capture_output=True, check=True
    )
    doc: dict[str, Any] = orjson.loads(result.stdout)
    return doc
