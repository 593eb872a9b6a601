"""End-to-end fixture support: the real platform (broker + four services under uvicorn).

Tests reach it only through the gateway, with real OAuth tokens:

    async def test_x(platform: RunningPlatform) -> None:
        ops = await platform.ops_http()            # httpx client with an ops token
        partner = await platform.partner_http("ptn_…")  # a partner client's token
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from services.platform import Platform
from services.runtime.settings import SERVICES

T = TypeVar("T")

PARTNER_SCOPES = [
    "partners:read",
    "integrations:read",
    "integrations:write",
    "webhooks:read",
    "webhooks:write",
    "kpis:read",
]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Credentials:
    """An OAuth client of the platform."""

    client_id: str
    client_secret: str
    scopes: tuple[str, ...]
    partner_id: str | None = None


@dataclass
class RunningPlatform:
    """A started platform and helpers to call it as partners and ops do."""

    platform: Platform
    ops: Credentials
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return self.platform.url("gateway")

    def url(self, service: str) -> str:
        return self.platform.url(service)

    async def token(self, creds: Credentials, scope: str | None = None) -> str:
        """An access token from the gateway's token endpoint (client_secret_basic)."""
        data = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.post(self.gateway + "/oauth/token", data=data, auth=(creds.client_id, creds.client_secret))
        response.raise_for_status()
        return str(response.json()["access_token"])

    async def http_for(self, creds: Credentials, scope: str | None = None) -> httpx.AsyncClient:
        """An httpx client that calls the gateway with `creds`' token."""
        token = await self.token(creds, scope)
        client = httpx.AsyncClient(base_url=self.gateway, headers={"Authorization": f"Bearer {token}"}, timeout=15.0)
        self._clients.append(client)
        return client

    async def ops_http(self) -> httpx.AsyncClient:
        return await self.http_for(self.ops)

    async def create_client(self, *, name: str, scopes: list[str], partner_id: str | None = None) -> Credentials:
        """A new client made through the admin API."""
        admin = await self.ops_http()
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if partner_id is not None:
            body["partner_id"] = partner_id
        response = await admin.post("/admin/clients", json=body)
        assert response.status_code == 201, response.text
        doc = response.json()
        return Credentials(doc["client_id"], doc["client_secret"], tuple(doc["scopes"]), doc.get("partner_id"))

    async def partner_http(self, partner_id: str, scopes: list[str] | None = None) -> httpx.AsyncClient:
        """An httpx client holding a partner client's token."""
        creds = await self.create_client(name=f"partner {partner_id}", scopes=scopes or PARTNER_SCOPES, partner_id=partner_id)
        return await self.http_for(creds)

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients.clear()


async def start_platform(var_dir: Path, *, extra_env: dict[str, str] | None = None) -> RunningPlatform:
    """Start broker and services on free ports under `var_dir` and make an ops client."""
    platform = Platform(var_dir=var_dir, ports={s: free_port() for s in SERVICES}, extra_env=extra_env or {})
    try:
        await platform.start()
        doc = await asyncio.to_thread(platform.create_client, "--ops", "e2e-ops")
    except BaseException:
        await platform.stop()
        raise
    ops = Credentials(doc["client_id"], doc["client_secret"], tuple(doc["scopes"]))
    return RunningPlatform(platform, ops)


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 15.0, interval: float = 0.05) -> T:
    """Call `check` until it returns without AssertionError (and truthy), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    result: Any = None
    while True:
        try:
            result = await check()
            if result is not None and result is not False:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last result {result!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_platform(var_dir: Path, **kwargs: Any):  # type: ignore[no-untyped-def]
    """`async with running_platform(tmp) as p:` — start, yield, always stop."""
    running = await start_platform(var_dir, **kwargs)
    try:
        yield running
    finally:
        await running.close()
        await running.platform.stop()
