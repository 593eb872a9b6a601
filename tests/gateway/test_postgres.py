"""The gateway's database paths on PostgreSQL (registry, keys, deny-list, replay store, tiers, windows)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from services.gateway.keys import rotate
from services.gateway.tiers import record_tiers
from services.runtime.clock import ManualClock
from tests.gateway.support import Upstream, gateway_settings, in_process_gateway
from tests.support.databases import fresh_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_url, "gateway") as url:
        yield url


async def test_gateway_on_postgresql(tmp_path: Path, upstream: Upstream, pg_database: str) -> None:
    clock = ManualClock(datetime.now(UTC))
    settings = gateway_settings(tmp_path, upstream.url, gateway_database_url=pg_database)
    async with in_process_gateway(settings, clock=clock) as gateway:
        ops = await gateway.bearer(gateway.ops)
        key = ECKey.generate_key("P-256", parameters={"kid": "pg-key"}, private=True)
        partner = await gateway.client(partner_id="ptn-pg", scopes=["kpis:read"], jwks=KeySet([key]).as_dict(private=False))
        # private_key_jwt and its replay store
        now = int(time.time())
        assertion = jwt.encode(
            {"alg": "ES256", "kid": "pg-key"},
            {"iss": partner.client_id, "sub": partner.client_id, "aud": settings.token_issuer + "/oauth/token",
             "exp": now + 60, "jti": uuid.uuid4().hex},
            key,
        )
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
        assert (await gateway.http.post("/oauth/token", data=form)).status_code == 200
        assert (await gateway.http.post("/oauth/token", data=form)).status_code == 401
        # tiers, proxying, traffic
        async with gateway.ctx.runtime.engine.begin() as conn:
            await record_tiers(conn, {"ptn-pg": "strategic"}, at=clock.now())
            await record_tiers(conn, {"ptn-pg": "innovation"}, at=clock.now())
        await gateway.ctx.tiers.load()
        token = await gateway.token(partner)
        assert jwt.decode(token, gateway.ctx.keys.public_keyset).claims["tier"] == "innovation"
        assert (await gateway.http.get("/v1/kpis", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        clock.advance(120)
        assert await gateway.ctx.traffic.flush() == 1
        # rotation, revocation of a token and of a client, the feed
        rotated = await gateway.http.post(f"/admin/clients/{partner.client_id}/rotate-secret", headers=ops)
        assert rotated.status_code == 200
        revoked = await gateway.http.post(
            "/oauth/revoke", data={"token": token}, auth=(gateway.ops.client_id, gateway.ops.client_secret)
        )
        assert revoked.status_code == 200
        assert (await gateway.http.delete(f"/admin/clients/{partner.client_id}", headers=ops)).status_code == 204
        feed = (await gateway.http.get("/internal/revocations", headers=ops)).json()["items"]
        assert [(i["kind"], i["client_id"]) for i in feed] == [("token", partner.client_id), ("client", partner.client_id)]
        listed = (await gateway.http.get("/admin/clients", params={"status": "revoked"}, headers=ops)).json()["items"]
        assert [c["client_id"] for c in listed] == [partner.client_id]
        # keys
        old = gateway.ctx.keys.kid
        await rotate(gateway.ctx.runtime.engine, now=clock.now(), token_ttl=3600)
        await gateway.ctx.keys.load()
        assert gateway.ctx.keys.kid != old
        assert [k["kid"] for k in gateway.ctx.keys.jwks()["keys"]][1] == old
