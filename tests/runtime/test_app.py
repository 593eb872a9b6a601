"""The shared app factory: problem+json on every error path, Idempotency-Key, limits, health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from events.catalog import PartnerApplied
from events.schema import events_table
from services.runtime.app import build_runtime, create_service_app
from services.runtime.auth import scoped
from services.runtime.commands import check_if_match, metadata_for, set_etag
from services.runtime.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from services.runtime.settings import Settings
from tests.support.tokens import TestIssuer

Writer = scoped("partners:write")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


def _router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/things", status_code=201)
    async def create(body: Body, caller: Writer, request: Request) -> dict[str, object]:
        store = request.app.state.store
        recorded = await store.append(
            stream_id=f"thing-{body.name}",
            expected_version=None,
            events=[PartnerApplied(partner_id=body.name, name=body.name, website="https://x.test", category="c", contact_email="a@x.test")],
            metadata=metadata_for(request, caller),
        )
        return {"name": body.name, "position": recorded[0].position}

    @router.post("/v1/things/{name}/touch")
    async def touch(name: str, caller: Writer, request: Request) -> dict[str, int]:
        version = await request.app.state.store.stream_version(f"thing-{name}")
        check_if_match(request, version)
        return {"version": version}

    @router.get("/v1/numbers")
    async def numbers(limit: Limit = 3, cursor: Cursor = None) -> Page[int]:
        start = int((decode_cursor(cursor) or {}).get("after", 0))
        items = list(range(start + 1, min(start + limit, 10) + 1))
        nxt = encode_cursor({"after": items[-1]}) if items and items[-1] < 10 else None
        return Page[int](items=items, next_cursor=nxt)

    @router.get("/v1/etag")
    async def with_etag(request: Request) -> dict[str, str]:
        response = Response()
        set_etag(response, 3)
        return {"etag": response.headers["etag"]}

    return router


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, TestIssuer, object]]:
    settings = Settings(var_dir=tmp_path, max_body_bytes=10_000)
    runtime = build_runtime("onboarding", settings)
    issuer = TestIssuer(settings.token_issuer)
    runtime.verifier.set_keys(issuer.keyset)
    app = create_service_app(runtime, title="test", description="test", routers=[_router()], with_relay=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http, issuer, runtime


async def _count_events(runtime: object) -> int:
    async with runtime.engine.connect() as conn:  # type: ignore[attr-defined]
        return int((await conn.execute(select(func.count()).select_from(events_table))).scalar_one())


def _is_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"]
    return body


async def test_health_and_readiness(client) -> None:  # type: ignore[no-untyped-def]
    http, _, _ = client
    assert (await http.get("/healthz")).json()["status"] == "ok"
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


async def test_missing_and_bad_tokens_get_401_problem(client) -> None:  # type: ignore[no-untyped-def]
    http, _, _ = client
    body = _is_problem(await http.post("/v1/things", json={"name": "a"}), 401)
    assert "bearer" in str(body["detail"]).lower()
    response = await http.post("/v1/things", json={"name": "a"}, headers={"Authorization": "Bearer not.a.jwt"})
    _is_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_missing_scope_gets_403(client) -> None:  # type: ignore[no-untyped-def]
    http, issuer, _ = client
    headers = {"Authorization": f"Bearer {issuer.mint('c', 'partners:read')}"}
    _is_problem(await http.post("/v1/things", json={"name": "a"}, headers=headers), 403)


async def test_validation_errors_are_422_problems(client) -> None:  # type: ignore[no-untyped-def]
    http, issuer, runtime = client
    headers = issuer.ops()
    body = _is_problem(await http.post("/v1/things", json={"name": 5}, headers=headers), 422)
    assert body["errors"]
    _is_problem(await http.post("/v1/things", json={"name": "a", "extra": 1}, headers=headers), 422)
    malformed = _is_problem(
        await http.post("/v1/things", content=b'{"name": ', headers={**headers, "content-type": "application/json"}), 422
    )
    assert malformed["title"] == "Malformed JSON"
    assert await _count_events(runtime) == 0


async def test_body_over_limit_is_413_and_nothing_is_written(client) -> None:  # type: ignore[no-untyped-def]
    http, issuer, runtime = client
    response = await http.post("/v1/things", json={"name": "x" * 20_000}, headers=issuer.ops())
    _is_problem(response, 413)
    assert await _count_events(runtime) == 0


async def test_unknown_route_is_404_problem_with_request_id(client) -> None:  # type: ignore[no-untyped-def]
    http, _, _ = client
    response = await http.get("/nope", headers={"X-Request-Id": "req-123"})
    _is_problem(response, 404)
    assert response.headers["x-request-id"] == "req-123"
    generated = await http.get("/nope", headers={"X-Request-Id": "bad id with spaces"})
    assert generated.headers["x-request-id"] != "bad id with spaces"


async def test_idempotency_key_replays_first_response_and_appends_nothing(client) -> None:  # type: ignore[no-untyped-def]
    http, issuer, runtime = client
    headers = {**issuer.ops(), "Idempotency-Key": "k-1"}
    first = await http.post("/v1/things", json={"name": "a"}, headers=headers)
    assert first.status_code == 201
    again = await http.post("/v1/things", json={"name": "a"}, headers=headers)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await _count_events(runtime) == 1
    reused = _is_problem(await http.post("/v1/things", json={"name": "b"}, headers=headers), 422)
    assert reused["type"].endswith("idempotency-key-reused")
    assert await _count_events(runtime) == 1


async def test_idempotency_keys_are_scoped_per_client(client) -> None:  # type: ignore[no-untyped-def]
    http, issuer, runtime = client
    one = {"Authorization": f"Bearer {issuer.mint('c1', 'admin')}", "Idempotency-Key": "same"}
    two = {"Authorization": f"Bearer {issuer.mint('c2', 'admin')}", "Idempotency-Key": "same"}
    assert (await http.post("/v1/things", json={"name": "a"}, headers=one)).status_code == 201
    assert (await http.post("/v1/things", json={"name": "b"}, headers=two)).status_code == 201
    assert await _count_events(runtime) == 2


async def test_overlong_idempotency_key_is_422(client) -> None:  # type: ignore[no-untyped-def]
    http, issuer, _ = client
    _is_problem(await http.post("/v1/things", json={"name": "a"}, headers={**issuer.ops(), "Idempotency-Key": "k" * 300}), 422)


async def test_stale_if_match_is_412(client) -> None:  # type: ignore[no-untyped-def]
    http, issuer, _ = client
    await http.post("/v1/things", json={"name": "a"}, headers=issuer.ops())
    ok = await http.post("/v1/things/a/touch", headers={**issuer.ops(), "If-Match": '"1"'})
    assert ok.status_code == 200
    body = _is_problem(await http.post("/v1/things/a/touch", headers={**issuer.ops(), "If-Match": '"0"'}), 412)
    assert body["current_etag"] == '"1"'


async def test_cursor_pagination_walks_every_item_once(client) -> None:  # type: ignore[no-untyped-def]
    http, _, _ = client
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = (await http.get("/v1/numbers", params=params)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(1, 11))
    _is_problem(await http.get("/v1/numbers", params={"cursor": "!!!"}), 422)
    _is_problem(await http.get("/v1/numbers", params={"limit": 0}), 422)
    _is_problem(await http.get("/v1/numbers", params={"limit": 100000}), 422)


async def test_responses_with_secrets_are_not_kept_for_replay(tmp_path: Path) -> None:
    router = APIRouter()

    @router.post("/v1/secrets", status_code=201)
    async def make_secret(caller: Writer, response: Response) -> dict[str, str]:
        response.headers["Cache-Control"] = "no-store"
        return {"secret": "whsec_shown_once"}

    settings = Settings(var_dir=tmp_path)
    runtime = build_runtime("onboarding", settings)
    issuer = TestIssuer(settings.token_issuer)
    runtime.verifier.set_keys(issuer.keyset)
    app = create_service_app(runtime, title="t", description="t", routers=[router], with_relay=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            headers = {**issuer.ops(), "Idempotency-Key": "secret-1"}
            first = await http.post("/v1/secrets", headers=headers)
            assert first.json() == {"secret": "whsec_shown_once"}
            replay = await http.post("/v1/secrets", headers=headers)
            body = _is_problem(replay, 409)
            assert body["original_status"] == 201 and "whsec" not in replay.text
        async with runtime.engine.connect() as conn:
            from events.schema import idempotency_keys

            stored = (await conn.execute(select(idempotency_keys.c.body))).scalars().all()
        assert all("whsec" not in (value or "") for value in stored)
