"""Real local HTTP servers for the prober to call: up, down, hanging, redirecting, switchable."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class HealthServer:
    """An aiohttp server on a free loopback port; `mode` switches `/switch` between up and down."""

    mode: str = "up"
    hits: Counter[str] = field(default_factory=Counter)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> HealthServer:
        app = web.Application()
        app.router.add_get("/up", self._up)
        app.router.add_get("/down", self._down)
        app.router.add_get("/hang", self._hang)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/redirect-target", self._up)
        app.router.add_get("/switch", self._switch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        self._release.set()  # let hanging handlers return so shutdown does not wait on them
        if self._runner is not None:
            await self._runner.cleanup()

    async def _up(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.json_response({"status": "ok"})

    async def _down(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.json_response({"status": "failing"}, status=503)

    async def _hang(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        await self._release.wait()
        return web.Response(text="too late")

    async def _redirect(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        raise web.HTTPFound("/redirect-target")

    async def _switch(self, request: web.Request) -> web.Response:
        return await (self._up(request) if self.mode == "up" else self._down(request))
