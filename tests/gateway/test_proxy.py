"""The secured reverse proxy: routing, scopes, identity headers, streaming, limits, failing upstreams."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.gateway.support import (
    InProcessGateway,
    Upstream,
    free_port,
    gateway_settings,
    in_process_gateway,
)

PARTNER_READER = ["partners:read", "integrations:read", "webhooks:read", "kpis:read"]


@pytest.fixture
def gateway(shared_gateway: InProcessGateway, upstream: Upstream) -> InProcessGateway:
    """This module's tests share one gateway; each makes its own clients."""
    return shared_gateway


async def test_forwards_with_identity_from_the_token(gateway: InProcessGateway, upstream: Upstream) -> None:
    creds = await gateway.client(partner_id="ptn-1", scopes=["partners:read", "kpis:read"])
    auth = await gateway.bearer(creds)
    response = await gateway.http.get(
        "/v1/partners/ptn-1?x=1&y=%2F",
        headers=auth
        | {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "X-Request-Id": "req-123",
            "Idempotency-Key": "idem-1",
            "Accept": "application/json",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-123"
    assert response.headers["x-upstream"] == "yes"
    assert "connection" not in response.headers or response.headers["connection"] != "keep-alive, keep-alive"
    seen = upstream.seen[-1]
    assert (seen.method, seen.path, seen.query) == ("GET", "/v1/partners/ptn-1", "x=1&y=%2F")
    headers = seen.headers
    assert headers["x-partner-id"] == "ptn-1"
    assert headers["x-client-id"] == creds.client_id
    assert headers["x-scopes"] == "kpis:read partners:read"
    assert headers["authorization"] == auth["Authorization"]
    assert headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["idempotency-key"] == "idem-1"
    assert headers["x-request-id"] == "req-123"
    assert headers["accept"] == "application/json"


async def test_spoofed_identity_headers_never_reach_upstreams(gateway: InProcessGateway, upstream: Upstream) -> None:
    creds = await gateway.client(partner_id="ptn-honest", scopes=["partners:read"])
    spoofed = {"X-Partner-Id": "ptn-victim", "X-Client-Id": "ops_admin", "X-Scopes": "admin", "x-partner-id": "ptn-other"}
    response = await gateway.http.get("/v1/partners", headers=await gateway.bearer(creds) | spoofed)
    assert response.status_code == 200
    sent = upstream.seen[-1].headers
    assert sent["x-partner-id"] == "ptn-honest"
    assert sent["x-client-id"] == creds.client_id
    assert sent["x-scopes"] == "partners:read"
    # An ops token sets no partner at all: a spoofed one must not survive either.
    response = await gateway.http.get("/v1/partners", headers=await gateway.bearer(gateway.ops) | spoofed)
    assert response.status_code == 200
    assert "x-partner-id" not in upstream.seen[-1].headers


async def test_invalid_request_id_is_replaced(gateway: InProcessGateway, upstream: Upstream) -> None:
    response = await gateway.http.get("/v1/kpis", headers=await gateway.bearer(gateway.ops) | {"X-Request-Id": "bad id with spaces"})
    generated = response.headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 32
    assert upstream.seen[-1].headers["x-request-id"] == generated


SCOPE_CASES = [
    # (method, path, scopes the token holds, expected status)
    ("GET", "/v1/partners", ["partners:read"], 200),
    ("POST", "/v1/partners", ["partners:read"], 403),
    ("POST", "/v1/partners", ["partners:write"], 200),
    ("GET", "/v1/alliances/ptn-x", ["partners:read"], 200),
    ("POST", "/v1/alliances/ptn-x/phase", ["partners:read"], 403),
    ("GET", "/v1/integrations", ["partners:read"], 403),
    ("GET", "/v1/integrations", ["integrations:read"], 200),
    ("POST", "/v1/integrations", ["integrations:read"], 403),
    ("POST", "/v1/integrations/i-1/attempts", ["integrations:write"], 200),
    ("GET", "/v1/webhooks/endpoints", ["integrations:read"], 403),
    ("PATCH", "/v1/webhooks/endpoints/e-1", ["webhooks:read"], 403),
    ("DELETE", "/v1/webhooks/endpoints/e-1", ["webhooks:write"], 200),
    ("GET", "/v1/kpis", ["partners:read"], 403),
    ("GET", "/v1/kpis/partners/ptn-x", ["kpis:read"], 200),
    ("GET", "/metrics", ["partners:read"], 403),
    ("GET", "/metrics", ["kpis:read"], 200),
    ("GET", "/admin/services/lifecycle/consumers", PARTNER_READER, 403),
]


@pytest.mark.parametrize(("method", "path", "scopes", "expected"), SCOPE_CASES)
async def test_scope_enforcement_per_route(
    gateway: InProcessGateway, upstream: Upstream, method: str, path: str, scopes: list[str], expected: int
) -> None:
    creds = await gateway.client(partner_id="ptn-scope", scopes=scopes)
    before = len(upstream.seen)
    response = await gateway.http.request(method, path, headers=await gateway.bearer(creds), json={} if method != "GET" else None)
    assert response.status_code == expected, response.text
    assert len(upstream.seen) == before + (1 if expected == 200 else 0)
    if expected == 403:
        assert response.headers["content-type"] == "application/problem+json"
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    "path", ["/admin/clients", "/admin/services/onboarding/consumers", "/admin/services/metrics/consumers/x"]
)
async def test_partner_token_cannot_reach_admin(gateway: InProcessGateway, upstream: Upstream, path: str) -> None:
    creds = await gateway.client(partner_id="ptn-adm", scopes=PARTNER_READER)
    response = await gateway.http.get(path, headers=await gateway.bearer(creds))
    assert response.status_code == 403
    assert upstream.seen == []


async def test_ops_reach_each_services_consumers(gateway: InProcessGateway, upstream: Upstream) -> None:
    response = await gateway.http.get("/admin/services/lifecycle/consumers?x=1", headers=await gateway.bearer(gateway.ops))
    assert response.status_code == 200
    assert (upstream.seen[-1].path, upstream.seen[-1].query) == ("/admin/consumers", "x=1")


async def test_dashboard_page_needs_no_token_but_metrics_do(gateway: InProcessGateway, upstream: Upstream) -> None:
    page = await gateway.http.get("/dashboard")
    assert page.status_code == 200
    assert "x-client-id" not in upstream.seen[-1].headers
    assert (await gateway.http.get("/metrics")).status_code == 401
    assert (await gateway.http.get("/v1/kpis")).status_code == 401
    # A token sent to the public page is still verified.
    assert (await gateway.http.get("/dashboard", headers={"Authorization": "Bearer nonsense"})).status_code == 401


@pytest.mark.parametrize(
    "raw_path", [b"/v1/partners/../../admin/consumers", b"/v1/integrations/./x", b"/v1/kpis/%2e%2e/admin/consumers"]
)
async def test_dot_segments_are_refused(gateway: InProcessGateway, upstream: Upstream, raw_path: bytes) -> None:
    # httpx normalises such URLs itself; a raw client need not, so drive the ASGI app directly.
    token = (await gateway.bearer(gateway.ops))["Authorization"].encode()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": unquote(raw_path.decode()), "raw_path": raw_path, "query_string": b"", "root_path": "",
        "headers": [(b"host", b"gateway.test"), (b"authorization", token)],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }
    await gateway.app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert upstream.seen == []


async def test_unknown_paths_are_404_problems(gateway: InProcessGateway) -> None:
    response = await gateway.http.get("/v1/nothing-here", headers=await gateway.bearer(gateway.ops))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_streams_large_responses(gateway: InProcessGateway, upstream: Upstream) -> None:
    response = await gateway.http.get("/v1/kpis/stream", headers=await gateway.bearer(gateway.ops))
    assert response.status_code == 200
    assert len(response.content) == 5 * 20_000 * len("chunk0;")
    assert response.content.startswith(b"chunk0;") and response.content.endswith(b"chunk4;")


async def test_streams_chunked_request_bodies(gateway: InProcessGateway, upstream: Upstream) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 10_000

    response = await gateway.http.post("/v1/partners", content=body(), headers=await gateway.bearer(gateway.ops))
    assert response.status_code == 200, response.text
    assert upstream.seen[-1].body == b"x" * 100_000


async def test_oversized_body_is_413_before_the_upstream_sees_it(gateway: InProcessGateway, upstream: Upstream) -> None:
    limit = gateway.ctx.runtime.settings.max_body_bytes
    response = await gateway.http.post(
        "/v1/partners", content=b"{" + b" " * limit + b"}", headers=await gateway.bearer(gateway.ops)
    )
    assert response.status_code == 413
    assert response.json()["status"] == 413
    assert upstream.seen == []


async def test_oversized_chunked_body_is_413_and_never_completes_upstream(gateway: InProcessGateway, upstream: Upstream) -> None:
    limit = gateway.ctx.runtime.settings.max_body_bytes

    async def body() -> AsyncIterator[bytes]:
        for _ in range(limit // 65_536 + 2):
            yield b"y" * 65_536

    response = await gateway.http.post("/v1/partners", content=body(), headers=await gateway.bearer(gateway.ops))
    assert response.status_code == 413
    assert all(len(seen.body) <= limit for seen in upstream.seen)
    assert not any(seen.path == "/v1/partners" and seen.method == "POST" for seen in upstream.seen)


async def test_upstream_down_is_503_fast(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with in_process_gateway(gateway_settings(tmp_path, dead)) as gateway:
        started = time.monotonic()
        response = await gateway.http.get("/v1/partners", headers=await gateway.bearer(gateway.ops))
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "onboarding" in response.json()["detail"]
        assert time.monotonic() - started < 3


async def test_slow_upstream_is_504_never_a_hang(tmp_path: Path, upstream: Upstream) -> None:
    settings = gateway_settings(tmp_path, upstream.url, upstream_read_timeout=0.3)
    async with in_process_gateway(settings) as gateway:
        started = time.monotonic()
        response = await gateway.http.get("/v1/kpis/slow", headers=await gateway.bearer(gateway.ops))
        assert response.status_code == 504
        assert response.json()["title"] == "Gateway Timeout"
        assert time.monotonic() - started < 3


async def test_circuit_breaker_opens_after_repeated_failures(tmp_path: Path, upstream: Upstream) -> None:
    settings = gateway_settings(tmp_path, upstream.url, breaker_failure_threshold=2, breaker_reset_timeout=30)
    async with in_process_gateway(settings) as gateway:
        auth = await gateway.bearer(gateway.ops)
        for _ in range(2):
            assert (await gateway.http.get("/v1/kpis?status=503", headers=auth)).status_code == 503
        calls = len(upstream.seen)
        response = await gateway.http.get("/v1/kpis", headers=auth)
        assert response.status_code == 503
        assert "circuit breaker" in response.json()["detail"]
        assert int(response.headers["retry-after"]) >= 1
        assert len(upstream.seen) == calls
        # Other upstreams keep their own breaker (here: the same server under another name).
        assert (await gateway.http.get("/v1/partners", headers=auth)).status_code == 200


async def test_with_tracing_the_upstream_continues_the_callers_trace(
    gateway: InProcessGateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.ctx.proxy, "_tracing", True)  # PARTNERHUB_TRACING=off in tests
    inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await gateway.http.get("/v1/kpis", headers=await gateway.bearer(gateway.ops) | {"traceparent": inbound})
    assert response.status_code == 200
    forwarded = upstream.seen[-1].headers["traceparent"]
    assert forwarded.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
