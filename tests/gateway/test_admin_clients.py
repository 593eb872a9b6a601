"""The client registry's admin API: create (secret shown once), list, rotate, revoke, audit events."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from services.gateway.tables import clients
from tests.gateway.support import Credentials, InProcessGateway


async def test_create_shows_the_secret_once_and_stores_only_a_hash(gateway: InProcessGateway) -> None:
    ops = await gateway.bearer(gateway.ops)
    response = await gateway.http.post(
        "/admin/clients", json={"name": "Acme", "partner_id": "ptn-acme", "scopes": ["kpis:read", "partners:read"]}, headers=ops
    )
    assert response.status_code == 201, response.text
    doc = response.json()
    assert doc["client_id"].startswith("ptn_")
    assert len(doc["client_secret"]) >= 43  # 256 bits, base64url
    assert doc["scopes"] == ["partners:read", "kpis:read"]
    assert doc["partner_id"] == "ptn-acme" and doc["kind"] == "partner" and doc["status"] == "active"
    shown = await gateway.http.get(f"/admin/clients/{doc['client_id']}", headers=ops)
    assert shown.status_code == 200
    assert "client_secret" not in shown.json()
    async with gateway.ctx.runtime.engine.connect() as conn:
        row = (await conn.execute(select(clients).where(clients.c.client_id == doc["client_id"]))).one()
    assert doc["client_secret"] not in str(tuple(row))
    assert len(row.secret_hash) == 64


async def test_changes_append_audit_events(gateway: InProcessGateway) -> None:
    creds = await gateway.client(partner_id="ptn-audit", scopes=["kpis:read"])
    ops = await gateway.bearer(gateway.ops)
    assert (await gateway.http.post(f"/admin/clients/{creds.client_id}/rotate-secret", headers=ops)).status_code == 200
    assert (await gateway.http.delete(f"/admin/clients/{creds.client_id}", headers=ops)).status_code == 204
    events = await gateway.ctx.runtime.store.read_stream(f"client-{creds.client_id}")
    assert [e.type for e in events] == ["client.created", "client.secret_rotated", "client.revoked"]
    assert all(e.partner_id == "ptn-audit" for e in events)
    assert all(e.actor == gateway.ops.client_id for e in events)
    assert all(creds.client_secret not in str(e.data) for e in events)


async def test_list_pages_with_a_cursor(gateway: InProcessGateway) -> None:
    ops = await gateway.bearer(gateway.ops)
    made = [await gateway.client(partner_id=f"ptn-{i}", scopes=["kpis:read"]) for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await gateway.http.get("/admin/clients", params=params, headers=ops)).json()
        seen.extend(item["client_id"] for item in page["items"])
        assert all("client_secret" not in item for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [gateway.ops.client_id, *[c.client_id for c in made]]
    only = (await gateway.http.get("/admin/clients", params={"partner_id": "ptn-3"}, headers=ops)).json()
    assert [item["client_id"] for item in only["items"]] == [made[3].client_id]


async def test_revoking_twice_is_a_conflict_and_unknown_is_404(gateway: InProcessGateway) -> None:
    creds = await gateway.client(scopes=["kpis:read"])
    ops = await gateway.bearer(gateway.ops)
    assert (await gateway.http.delete(f"/admin/clients/{creds.client_id}", headers=ops)).status_code == 204
    again = await gateway.http.delete(f"/admin/clients/{creds.client_id}", headers=ops)
    assert again.status_code == 409
    assert again.json()["state"] == "revoked"
    assert (await gateway.http.post(f"/admin/clients/{creds.client_id}/rotate-secret", headers=ops)).status_code == 409
    for response in (
        await gateway.http.get("/admin/clients/ops_nope", headers=ops),
        await gateway.http.delete("/admin/clients/ops_nope", headers=ops),
        await gateway.http.post("/admin/clients/ops_nope/rotate-secret", headers=ops),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"


BAD_BODIES = {
    "partner_with_admin": {"name": "x", "partner_id": "p1", "scopes": ["admin"]},
    "partner_with_events_read": {"name": "x", "partner_id": "p1", "scopes": ["events:read"]},
    "unknown_scope": {"name": "x", "scopes": ["partners:read", "root"]},
    "no_scopes": {"name": "x", "scopes": []},
    "empty_name": {"name": "", "scopes": ["kpis:read"]},
    "long_name": {"name": "x" * 201, "scopes": ["kpis:read"]},
    "bad_partner_id": {"name": "x", "partner_id": "a b/c", "scopes": ["kpis:read"]},
    "extra_field": {"name": "x", "scopes": ["kpis:read"], "client_secret": "mine"},
    "scopes_not_a_list": {"name": "x", "scopes": "kpis:read"},
    "jwks_not_a_keyset": {"name": "x", "scopes": ["kpis:read"], "jwks": {"keys": [{"kty": "oct", "k": "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80"}]}},
    "jwks_with_private_key": {"name": "x", "scopes": ["kpis:read"], "jwks": "PRIVATE"},
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_bad_client_bodies_are_422(gateway: InProcessGateway, case: str) -> None:
    body = BAD_BODIES[case]
    if body.get("jwks") == "PRIVATE":
        from joserfc.jwk import ECKey

        body = body | {"jwks": {"keys": [ECKey.generate_key("P-256", private=True).as_dict(private=True)]}}
    response = await gateway.http.post("/admin/clients", json=body, headers=await gateway.bearer(gateway.ops))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_malformed_json_is_422(gateway: InProcessGateway) -> None:
    headers = await gateway.bearer(gateway.ops) | {"Content-Type": "application/json"}
    response = await gateway.http.post("/admin/clients", content=b'{"name": ', headers=headers)
    assert response.status_code == 422
    assert response.json()["type"].endswith("malformed-json")


async def test_admin_api_needs_an_ops_token(gateway: InProcessGateway) -> None:
    partner = await gateway.client(partner_id="ptn-x", scopes=["partners:read", "kpis:read"])
    internal = await gateway.client(scopes=["events:read"])
    assert (await gateway.http.get("/admin/clients")).status_code == 401
    for creds in (partner, internal):
        headers = await gateway.bearer(creds)
        assert (await gateway.http.get("/admin/clients", headers=headers)).status_code == 403
        made = await gateway.http.post("/admin/clients", json={"name": "x", "scopes": ["admin"]}, headers=headers)
        assert made.status_code == 403


async def test_ops_client_made_through_the_api_works(gateway: InProcessGateway) -> None:
    creds = await gateway.client(scopes=["admin", "kpis:read"])
    other = await gateway.http.get("/admin/clients", headers=await gateway.bearer(Credentials(creds.client_id, creds.client_secret)))
    assert other.status_code == 200


async def test_list_filters_by_status(gateway: InProcessGateway) -> None:
    ops = await gateway.bearer(gateway.ops)
    keep = await gateway.client(scopes=["kpis:read"])
    gone = await gateway.client(scopes=["kpis:read"])
    assert (await gateway.http.delete(f"/admin/clients/{gone.client_id}", headers=ops)).status_code == 204
    revoked = (await gateway.http.get("/admin/clients", params={"status": "revoked"}, headers=ops)).json()
    assert [i["client_id"] for i in revoked["items"]] == [gone.client_id]
    active = (await gateway.http.get("/admin/clients", params={"status": "active"}, headers=ops)).json()
    assert keep.client_id in [i["client_id"] for i in active["items"]]
    assert gone.client_id not in [i["client_id"] for i in active["items"]]
    bad = await gateway.http.get("/admin/clients", params={"status": "deleted"}, headers=ops)
    assert bad.status_code == 422


async def test_gateway_consumers_are_for_ops(gateway: InProcessGateway) -> None:
    ops = await gateway.http.get("/admin/consumers", headers=await gateway.bearer(gateway.ops))
    assert ops.status_code == 200
    assert ops.json() == {"consumers": [], "relay": None}  # no broker configured here
    partner = await gateway.client(partner_id="ptn-c", scopes=["kpis:read"])
    assert (await gateway.http.get("/admin/consumers", headers=await gateway.bearer(partner))).status_code == 403
