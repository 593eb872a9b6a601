"""Tenant isolation matrix: partner A's token against partner B's resources, on every route.

The matrix is checked against the live route table (each service's OpenAPI document and
the gateway's route table): an operation with a path parameter, a `partner_id` filter or
body field, or a list answer that is not in the matrix fails
`test_matrix_covers_every_partner_route`, so a new route cannot escape isolation testing.

For each path route, A asks for B's resource and for one that never existed: both
answers must be the same refusal (404, or 403 where the route is closed to every
partner whatever the target), must carry none of B's identifiers beyond the one A put
in its own request, and every write must leave B's state as it was. A's request for its
own resource is the positive control (it is not refused), so a wrong path fails too.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.hardening.catalogue import Operation, base_url, openapi_documents, operations
from tests.hardening.conftest import Tenant, send
from tests.support.platform import RunningPlatform

pytestmark = [pytest.mark.e2e]


@dataclass(frozen=True)
class Probe:
    """How to call one route as A against B, and what A must get."""

    body: dict[str, Any] | None = None
    refused: int = 404
    """A's answer for B's resource (and for one that never existed)."""
    own: frozenset[int] = frozenset({200})
    """A's answer for its own resource (positive control)."""
    own_params: dict[str, str] = field(default_factory=dict)
    """Tenant attributes to use instead of the default one per path parameter, for A's own call."""


WRITE_OPS = frozenset({403})
FRESH_ENDPOINT = "a fresh endpoint"  # A's own call gets an endpoint made for it (DELETE)
FORBIDDEN_TO_PARTNERS = Probe(refused=403, own=WRITE_OPS)  # closed to partner clients, whatever the target

# Every route with a path parameter, keyed "METHOD /path" as in the OpenAPI documents.
PATH_MATRIX: dict[str, Probe] = {
    # gateway: the client registry is for ops only
    "GET /admin/clients/{client_id}": FORBIDDEN_TO_PARTNERS,
    "DELETE /admin/clients/{client_id}": FORBIDDEN_TO_PARTNERS,
    "POST /admin/clients/{client_id}/rotate-secret": FORBIDDEN_TO_PARTNERS,
    # onboarding: reads are the partner's own; commands are refused to every partner client
    "GET /v1/partners/{partner_id}": Probe(),
    "GET /v1/partners/{partner_id}/events": Probe(),
    "POST /v1/partners/{partner_id}/assessment": Probe(body={"scores": {"technology_leadership": 5, "market_position": 5, "financial_stability": 5, "strategic_fit": 5, "integration_capability": 5, "cultural_compatibility": 5}}, refused=403, own=WRITE_OPS),
    "POST /v1/partners/{partner_id}/due-diligence": Probe(body={"phase": "initial_screening", "passed": False}, refused=403, own=WRITE_OPS),
    "POST /v1/partners/{partner_id}/approvals": Probe(body={"decision": "reject", "comment": "x"}, refused=403, own=WRITE_OPS),
    "POST /v1/partners/{partner_id}/agreement": Probe(body={"agreement_type": "equity_investment", "starts_on": "2026-01-01", "ends_on": "2026-02-01"}, refused=403, own=WRITE_OPS),
    "POST /v1/partners/{partner_id}/activate": Probe(refused=403, own=WRITE_OPS),
    # lifecycle: alliances (changes are ops-only, but another partner's alliance is 404 first)
    "GET /v1/alliances/{partner_id}": Probe(),
    "POST /v1/alliances/{partner_id}/phase": Probe(body={"to": "integration"}, own=WRITE_OPS),
    "POST /v1/alliances/{partner_id}/renewal": Probe(body={"ends_on": "2035-01-01"}, own=WRITE_OPS),
    "POST /v1/alliances/{partner_id}/exit": Probe(body={"reason": "hostile", "notice_days": 0}, own=WRITE_OPS),
    "POST /v1/alliances/{partner_id}/terminate": Probe(body={"force": True, "reason": "hostile"}, own=WRITE_OPS),
    "POST /v1/alliances/{partner_id}/satisfaction": Probe(body={"score": 0, "comment": "hostile"}, own=WRITE_OPS),
    # lifecycle: integrations
    "GET /v1/integrations/{integration_id}": Probe(),
    "POST /v1/integrations/{integration_id}/attempts": Probe(body={"outcome": "failed", "detail": "hostile"}),
    "POST /v1/integrations/{integration_id}/go-live": Probe(own=frozenset({200, 409})),
    "POST /v1/integrations/{integration_id}/retire": Probe(body={"reason": "hostile"}, own=frozenset({200, 409})),
    # lifecycle: webhooks
    "GET /v1/webhooks/endpoints/{endpoint_id}": Probe(),
    "PATCH /v1/webhooks/endpoints/{endpoint_id}": Probe(body={"url": "http://127.0.0.1:9/stolen", "description": "hostile"}, own_params={"endpoint_id": "spare_endpoint_id"}),
    "DELETE /v1/webhooks/endpoints/{endpoint_id}": Probe(own=frozenset({204}), own_params={"endpoint_id": FRESH_ENDPOINT}),
    "POST /v1/webhooks/endpoints/{endpoint_id}/rotate-secret": Probe(own_params={"endpoint_id": "spare_endpoint_id"}),
    "GET /v1/webhooks/endpoints/{endpoint_id}/messages": Probe(),
    "POST /v1/webhooks/endpoints/{endpoint_id}/recover": Probe(body={"since": "2020-01-01T00:00:00Z"}, own=frozenset({202, 409})),
    "GET /v1/webhooks/messages/{message_id}": Probe(),
    "POST /v1/webhooks/messages/{message_id}/resend": Probe(own=frozenset({202, 409})),
    # metrics
    "GET /v1/kpis/partners/{partner_id}": Probe(),
    # every service: replaying a parked event is for ops only (403 before any id is looked at)
    "POST /admin/consumers/{subscription}/dead-letters/{dead_letter_id}/replay": FORBIDDEN_TO_PARTNERS,
}

# Operations that take a partner's id as a query filter: `?partner_id=<B>`.
FILTER_MATRIX: dict[str, Probe] = {
    "GET /admin/clients": FORBIDDEN_TO_PARTNERS,
    "GET /v1/integrations": Probe(),
    "GET /v1/webhooks/endpoints": Probe(),
}

# Operations that take a partner's id in the body: A names B. Refused whatever B is.
BODY_MATRIX: dict[str, Probe] = {
    "POST /admin/clients": Probe(body={"name": "stolen", "scopes": ["partners:read"]}, refused=403, own=WRITE_OPS),
    "POST /v1/integrations": Probe(body={"kind": "rest_api", "name": "stolen"}, refused=422, own=frozenset({201})),
    "POST /v1/webhooks/endpoints": Probe(body={"url": "http://127.0.0.1:9/stolen", "event_types": ["*"]}, refused=403, own=frozenset({201})),
}

# Every list operation: what A gets (200 lists only its own things; 403 closed to partners).
LIST_MATRIX: dict[str, int] = {
    "GET /admin/clients": 403,
    "GET /v1/partners": 200,
    "GET /v1/alliances": 200,
    "GET /v1/integrations": 200,
    "GET /v1/webhooks/endpoints": 200,
    "GET /internal/events": 403,
}

# Tenant attribute per path parameter name.
PARAM_SOURCE = {
    "partner_id": "partner_id",
    "integration_id": "integration_id",
    "endpoint_id": "endpoint_id",
    "message_id": "message_id",
    "client_id": "client_id",
    # ops-only routes (FORBIDDEN_TO_PARTNERS): any tenant value serves as the target
    "subscription": "partner_id",
    "dead_letter_id": "partner_id",
}


def attribute(tenant: Tenant, name: str) -> str:
    return tenant.creds.client_id if name == "client_id" else str(getattr(tenant, name))


async def own_value(tenant: Tenant, name: str) -> str:
    if name == FRESH_ENDPOINT:
        created = await send(tenant.http, "POST", "/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/x", "event_types": ["sla.*"]})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])
    return attribute(tenant, name)


def never_existed(real: str) -> str:
    """An id shaped like `real` (same prefix and length) that no resource has."""
    prefix, sep, rest = real.partition("_")
    alphabet = string.ascii_lowercase + string.digits
    if not sep:
        prefix, rest = "", real
    tail = "".join(secrets.choice(alphabet) for _ in rest)
    return f"{prefix}{sep}{tail}"


def fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def leaked(body: str, b: Tenant, *, sent: set[str]) -> set[str]:
    """B's identifiers in `body`, other than those A itself put in its request."""
    return {secret for secret in b.secrets_of() - sent if secret and secret in body}


def scrub(response: httpx.Response, ids: set[str]) -> tuple[int, str]:
    """Status and body with the ids A sent replaced (to compare B's answer with a never-existing id's)."""
    text = response.text
    for ident in sorted(ids, key=len, reverse=True):
        text = text.replace(ident, "<id>")
    return response.status_code, text


@pytest.fixture(scope="module")
async def catalogue(platform: RunningPlatform) -> list[Operation]:
    return operations(await openapi_documents(platform))


@pytest.fixture(scope="module")
async def ops(platform: RunningPlatform) -> AsyncIterator[httpx.AsyncClient]:
    yield await platform.ops_http()


def one(catalogue: list[Operation], key: str) -> Operation:
    found = [op for op in catalogue if op.key == key]
    assert found, f"{key} is in the matrix but no service documents it (remove it from the matrix)"
    return found[0]


async def call(platform: RunningPlatform, tenant: Tenant, op: Operation, path: str, **kwargs: Any) -> httpx.Response:
    url = base_url(platform, op.service, op.method, op.path) + path
    return await send(tenant.http, op.method, url, **kwargs)


async def b_state(ops: httpx.AsyncClient, b: Tenant) -> dict[str, Any]:
    """What A must never change: versions of B's aggregates, B's endpoints and B's client."""
    state: dict[str, Any] = {}
    for path in (
        f"/v1/partners/{b.partner_id}",
        f"/v1/alliances/{b.partner_id}",
        f"/v1/integrations/{b.integration_id}",
        f"/v1/webhooks/endpoints/{b.endpoint_id}",
        f"/v1/webhooks/endpoints/{b.spare_endpoint_id}",
        f"/admin/clients/{b.creds.client_id}",
    ):
        response = await send(ops, "GET", path)
        doc = response.json()
        state[path] = (response.status_code, response.headers.get("etag"), doc.get("url"), doc.get("status"), doc.get("secret_rotated_at"))
    return state


# --- coverage ------------------------------------------------------------------------------


async def test_matrix_covers_every_partner_route(catalogue: list[Operation]) -> None:
    """A route with a path parameter, a partner filter, a partner body field or a list answer must be in the matrix."""
    missing: list[str] = []
    stale: list[str] = []
    documented = {op.key for op in catalogue}
    for op in catalogue:
        if op.path_params and op.key not in PATH_MATRIX:
            missing.append(f"{op.service}: {op.key} (path parameters {', '.join(op.path_params)}) → PATH_MATRIX")
        if "partner_id" in op.query_params and op.key not in FILTER_MATRIX:
            missing.append(f"{op.service}: {op.key} (?partner_id=) → FILTER_MATRIX")
        if "partner_id" in op.body_fields and op.key not in BODY_MATRIX:
            missing.append(f"{op.service}: {op.key} (body partner_id) → BODY_MATRIX")
        if op.method == "GET" and op.lists_items and not op.path_params and op.key not in LIST_MATRIX:
            missing.append(f"{op.service}: {op.key} (lists items) → LIST_MATRIX")
        if op.path_params and any(p not in PARAM_SOURCE for p in op.path_params):
            missing.append(f"{op.service}: {op.key}: no tenant attribute for {op.path_params} → PARAM_SOURCE")
    for matrix in (PATH_MATRIX, FILTER_MATRIX, BODY_MATRIX, LIST_MATRIX):
        stale.extend(key for key in matrix if key not in documented)
    assert not missing, "routes not covered by the isolation matrix:\n" + "\n".join(missing)
    assert not stale, f"matrix entries no service documents any more: {stale}"


# --- path routes ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(PATH_MATRIX))
async def test_another_partners_resource_is_refused_and_leaks_nothing(
    key: str, platform: RunningPlatform, tenants: tuple[Tenant, Tenant], catalogue: list[Operation], ops: httpx.AsyncClient
) -> None:
    a, b = tenants
    probe = PATH_MATRIX[key]
    op = one(catalogue, key)
    theirs = {p: attribute(b, PARAM_SOURCE[p]) for p in op.path_params}
    nobody = {p: never_existed(v) for p, v in theirs.items()}
    kwargs = {"json": probe.body} if probe.body is not None else {}
    before = await b_state(ops, b) if op.method != "GET" else None

    against_b = await call(platform, a, op, fill(op.path, theirs), **kwargs)
    against_nobody = await call(platform, a, op, fill(op.path, nobody), **kwargs)

    assert against_b.status_code == probe.refused, f"A → B's {key}: {against_b.status_code} {against_b.text}"
    assert against_b.headers["content-type"].startswith("application/problem+json"), against_b.text
    assert not leaked(against_b.text, b, sent=set(theirs.values())), f"A → B's {key} leaks {leaked(against_b.text, b, sent=set(theirs.values()))}"
    assert not {h for h in ("etag", "location") if h in against_b.headers}, dict(against_b.headers)
    # Indistinguishable from a resource that never existed: no existence oracle.
    assert scrub(against_b, set(theirs.values())) == scrub(against_nobody, set(nobody.values()))
    if before is not None:
        assert await b_state(ops, b) == before, f"A's {key} changed B"

    own = {p: await own_value(a, probe.own_params.get(p, PARAM_SOURCE[p])) for p in op.path_params}
    mine = await call(platform, a, op, fill(op.path, own), **kwargs)
    assert mine.status_code in probe.own, f"positive control: A → its own {key}: {mine.status_code} {mine.text}"
    assert not leaked(mine.text, b, sent=set())


# --- partner ids in filters and bodies ------------------------------------------------------


@pytest.mark.parametrize("key", sorted(FILTER_MATRIX))
async def test_filtering_by_another_partner_is_refused(
    key: str, platform: RunningPlatform, tenants: tuple[Tenant, Tenant], catalogue: list[Operation]
) -> None:
    a, b = tenants
    probe = FILTER_MATRIX[key]
    op = one(catalogue, key)
    nobody = never_existed(b.partner_id)
    against_b = await call(platform, a, op, op.path, params={"partner_id": b.partner_id})
    against_nobody = await call(platform, a, op, op.path, params={"partner_id": nobody})
    assert against_b.status_code == probe.refused, against_b.text
    assert not leaked(against_b.text, b, sent={b.partner_id})
    assert scrub(against_b, {b.partner_id}) == scrub(against_nobody, {nobody})
    mine = await call(platform, a, op, op.path, params={"partner_id": a.partner_id})
    assert mine.status_code in probe.own, mine.text


@pytest.mark.parametrize("key", sorted(BODY_MATRIX))
async def test_naming_another_partner_in_a_body_is_refused(
    key: str, platform: RunningPlatform, tenants: tuple[Tenant, Tenant], catalogue: list[Operation], ops: httpx.AsyncClient
) -> None:
    a, b = tenants
    probe = BODY_MATRIX[key]
    op = one(catalogue, key)
    assert probe.body is not None
    nobody = never_existed(b.partner_id)
    counts_before = await _owned_counts(ops, b)
    against_b = await call(platform, a, op, op.path, json={**probe.body, "partner_id": b.partner_id})
    against_nobody = await call(platform, a, op, op.path, json={**probe.body, "partner_id": nobody})
    assert against_b.status_code == probe.refused, against_b.text
    assert not leaked(against_b.text, b, sent={b.partner_id})
    assert scrub(against_b, {b.partner_id}) == scrub(against_nobody, {nobody})
    assert await _owned_counts(ops, b) == counts_before, "A created something for B"
    mine = await call(platform, a, op, op.path, json=probe.body)
    assert mine.status_code in probe.own, f"positive control: {mine.text}"
    assert not leaked(mine.text, b, sent=set())


async def _owned_counts(ops: httpx.AsyncClient, b: Tenant) -> tuple[int, ...]:
    counts = []
    for path in ("/v1/integrations", "/v1/webhooks/endpoints", "/admin/clients"):
        page = (await send(ops, "GET", path, params={"partner_id": b.partner_id, "limit": 200})).json()
        counts.append(len(page["items"]))
    return tuple(counts)


# --- lists and every other read -------------------------------------------------------------


async def test_lists_show_only_the_callers_own(
    platform: RunningPlatform, tenants: tuple[Tenant, Tenant], catalogue: list[Operation]
) -> None:
    a, b = tenants
    failures: list[str] = []
    for key, expected in sorted(LIST_MATRIX.items()):
        for op in (op for op in catalogue if op.key == key):
            response = await call(platform, a, op, op.path, params={"limit": 200})
            where = f"{op.service}: {key}"
            if response.status_code != expected:
                failures.append(f"{where}: {response.status_code} (expected {expected})")
            elif leaked(response.text, b, sent=set()):
                failures.append(f"{where}: shows B's {leaked(response.text, b, sent=set())}")
            elif expected == 200 and a.partner_id not in response.text:
                failures.append(f"{where}: positive control: A's own items are missing")
    assert not failures, "\n".join(failures)


async def test_no_read_anywhere_shows_another_partner(
    platform: RunningPlatform, tenants: tuple[Tenant, Tenant], catalogue: list[Operation]
) -> None:
    """Every GET without a path parameter, on every service, as A: nothing of B in any answer."""
    a, b = tenants
    failures = []
    for op in catalogue:
        if op.method != "GET" or op.path_params:
            continue
        response = await call(platform, a, op, op.path)
        found = leaked(response.text, b, sent=set())
        if found:
            where = "gateway" if op.proxied else f"{op.service} directly"
            failures.append(f"{op.service}: GET {op.path} (via {where}) → {response.status_code}, shows B's {found}")
    assert not failures, "\n".join(failures)


# --- tokens ---------------------------------------------------------------------------------


async def test_a_partner_cannot_introspect_or_revoke_another_partners_token(
    platform: RunningPlatform, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    auth = (a.creds.client_id, a.creds.client_secret)
    async with httpx.AsyncClient(base_url=platform.gateway, timeout=10.0) as http:
        seen = await http.post("/oauth/introspect", data={"token": b.token}, auth=auth)
        assert seen.status_code == 200 and seen.json() == {"active": False}, seen.text
        assert not leaked(seen.text, b, sent=set())
        await http.post("/oauth/revoke", data={"token": b.token}, auth=auth)
        still = await http.get(f"/v1/partners/{b.partner_id}", headers={"Authorization": f"Bearer {b.token}"})
    assert still.status_code == 200, "A revoked B's token"
    assert json.loads(still.text)["id"] == b.partner_id


async def test_another_partners_idempotency_key_replays_nothing(tenants: tuple[Tenant, Tenant]) -> None:
    """Idempotency keys are scoped per client: the same key and body from A is A's own first request."""
    a, b = tenants
    key = f"hardening-{secrets.token_hex(8)}"
    body = {"url": "http://127.0.0.1:9/replayed", "event_types": ["sla.*"]}
    theirs = await send(b.http, "POST", "/v1/webhooks/endpoints", json=body, headers={"Idempotency-Key": key})
    assert theirs.status_code == 201, theirs.text
    mine = await send(a.http, "POST", "/v1/webhooks/endpoints", json=body, headers={"Idempotency-Key": key})
    assert mine.status_code == 201, mine.text
    assert "idempotent-replayed" not in mine.headers
    assert mine.json()["partner_id"] == a.partner_id and mine.json()["secret"] != theirs.json()["secret"]
    assert not leaked(mine.text, b, sent=set()) and theirs.json()["id"] not in mine.text
