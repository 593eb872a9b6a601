"""A real webhook receiver: an aiohttp server on a free loopback port that verifies every delivery.

Each path is a receiving endpoint with the secrets it knows and a scripted behaviour.
Every request is checked with `standardwebhooks.Webhook(secret).verify` against each
known secret separately, so a test can tell which secrets a signature satisfied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

Reply = tuple[int, dict[str, str], bytes]
Behaviour = Callable[[int], Reply | None]
"""(number of this path's earlier requests) -> reply, or None to hang until cancelled."""


def ok(_n: int) -> Reply:
    return 204, {}, b""


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Behaviour:
    def reply(_n: int) -> Reply:
        return code, dict(headers or {}), body

    return reply


def fail_then_ok(failures: int, code: int = 500, headers: dict[str, str] | None = None) -> Behaviour:
    def reply(n: int) -> Reply:
        return (code, dict(headers or {}), b"not yet") if n < failures else (200, {}, b"ok")

    return reply


def hang(_n: int) -> None:
    return None


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    verified_with: list[int]
    """Indexes (into the path's secrets) of every secret whose signature verified."""

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def payload(self) -> dict[str, Any]:
        import json

        return dict(json.loads(self.body))


@dataclass
class _Path:
    secrets: list[str]
    behaviour: Behaviour
    count: int = 0


@dataclass
class Receiver:
    """Local HTTP server recording and verifying webhook deliveries."""

    delay: float = 0.0
    paths: dict[str, _Path] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    unverified: list[Delivery] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.url("")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def expect(self, path: str, secrets: list[str], behaviour: Behaviour = ok) -> str:
        """Accept deliveries at `path` signed with any of `secrets`; return its URL."""
        self.paths[path] = _Path(list(secrets), behaviour)
        return self.url(path)

    def add_secret(self, path: str, secret: str) -> None:
        self.paths[path].secrets.append(secret)

    def at(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        spec = self.paths.get(request.path)
        secrets = spec.secrets if spec else []
        verified = []
        for index, secret in enumerate(secrets):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(index)
        delivery = Delivery(request.path, headers, body, time.monotonic(), verified)
        self.deliveries.append(delivery)
        if not verified:
            self.unverified.append(delivery)
        if spec is None:
            return web.Response(status=404)
        n = spec.count
        spec.count += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = spec.behaviour(n)
        if reply is None:
            await asyncio.sleep(3600)
            return web.Response(status=504)
        code, reply_headers, reply_body = reply
        return web.Response(status=code, headers=reply_headers, body=reply_body)
