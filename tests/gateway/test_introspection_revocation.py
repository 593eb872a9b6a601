"""RFC 7662 introspection, RFC 7009 revocation and its feed to services, discovery, key rotation."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from joserfc import jwt

from services.gateway.keys import rotate
from services.runtime.revocations import Revocation, RevocationList
from tests.gateway.support import Credentials, InProcessGateway, Upstream


async def test_introspect_own_token(gateway: InProcessGateway) -> None:
    creds = await gateway.client(partner_id="ptn-i", scopes=["kpis:read", "partners:read"])
    token = await gateway.token(creds)
    response = await gateway.http.post("/oauth/introspect", data={"token": token}, auth=(creds.client_id, creds.client_secret))
    assert response.status_code == 200
    doc = response.json()
    assert doc["active"] is True
    assert doc["client_id"] == creds.client_id
    assert doc["scope"] == "partners:read kpis:read"
    assert doc["partner_id"] == "ptn-i"
    assert doc["token_type"] == "Bearer"
    assert doc["exp"] > time.time()


async def test_introspection_hides_other_clients_tokens_except_from_ops(gateway: InProcessGateway) -> None:
    owner = await gateway.client(partner_id="ptn-o", scopes=["kpis:read"])
    nosy = await gateway.client(partner_id="ptn-n", scopes=["kpis:read"])
    token = await gateway.token(owner)
    seen_by_nosy = await gateway.http.post("/oauth/introspect", data={"token": token}, auth=(nosy.client_id, nosy.client_secret))
    assert seen_by_nosy.json() == {"active": False}
    seen_by_ops = await gateway.http.post(
        "/oauth/introspect", data={"token": token}, auth=(gateway.ops.client_id, gateway.ops.client_secret)
    )
    assert seen_by_ops.json()["active"] is True


async def test_introspection_of_garbage_is_inactive_and_needs_client_auth(gateway: InProcessGateway) -> None:
    auth = (gateway.ops.client_id, gateway.ops.client_secret)
    assert (await gateway.http.post("/oauth/introspect", data={"token": "x.y.z"}, auth=auth)).json() == {"active": False}
    assert (await gateway.http.post("/oauth/introspect", data={"token": "x"})).status_code == 401
    missing = await gateway.http.post("/oauth/introspect", data={}, auth=auth)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


async def test_revocation_reaches_the_proxy_introspection_and_the_feed(gateway: InProcessGateway, upstream: Upstream) -> None:
    creds = await gateway.client(partner_id="ptn-r", scopes=["kpis:read"])
    token = await gateway.token(creds)
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await gateway.http.get("/v1/kpis", headers=bearer)).status_code == 200  # cached as verified
    revoked = await gateway.http.post(
        "/oauth/revoke", data={"token": token, "token_type_hint": "access_token"}, auth=(creds.client_id, creds.client_secret)
    )
    assert revoked.status_code == 200
    assert (await gateway.http.get("/v1/kpis", headers=bearer)).status_code == 401
    introspected = await gateway.http.post("/oauth/introspect", data={"token": token}, auth=(creds.client_id, creds.client_secret))
    assert introspected.json() == {"active": False}
    # Revoking again (or garbage) is fine per RFC 7009.
    again = await gateway.http.post("/oauth/revoke", data={"token": token}, auth=(creds.client_id, creds.client_secret))
    assert again.status_code == 200
    events = await gateway.ctx.runtime.store.read_stream(f"client-{creds.client_id}")
    assert [e.type for e in events].count("token.revoked") == 1

    # A service's deny-list learns it through the feed (here driven through ASGITransport).
    internal = await gateway.client(scopes=["events:read"])
    feed = await gateway.http.get("/internal/revocations", params={"after": 0}, headers=await gateway.bearer(internal))
    assert feed.status_code == 200
    items = feed.json()["items"]
    assert [(i["kind"], i["client_id"]) for i in items] == [("token", creds.client_id)]
    service_side = RevocationList(lambda after, limit: _via(gateway, internal, after, limit), interval=60)
    await service_side.sync()
    claims = jwt.decode(token, gateway.ctx.keys.public_keyset).claims
    assert service_side.is_revoked(claims["jti"], creds.client_id)
    assert not service_side.is_revoked("another-jti", creds.client_id)


async def _via(gateway: InProcessGateway, internal: Credentials, after: int, limit: int) -> list[Revocation]:
    response = await gateway.http.get(
        "/internal/revocations", params={"after": after, "limit": limit}, headers=await gateway.bearer(internal)
    )
    response.raise_for_status()
    return [Revocation.from_json(item) for item in response.json()["items"]]


async def test_revoked_client_is_in_the_feed_and_all_its_tokens_die(gateway: InProcessGateway, upstream: Upstream) -> None:
    creds = await gateway.client(partner_id="ptn-dead", scopes=["kpis:read"])
    tokens = [await gateway.token(creds) for _ in range(3)]
    assert (await gateway.http.delete(f"/admin/clients/{creds.client_id}", headers=await gateway.bearer(gateway.ops))).status_code == 204
    for token in tokens:
        assert (await gateway.http.get("/v1/kpis", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    internal = await gateway.client(scopes=["events:read"])
    items = (await gateway.http.get("/internal/revocations", headers=await gateway.bearer(internal))).json()["items"]
    assert {"kind": "client", "client_id": creds.client_id} in [{"kind": i["kind"], "client_id": i["client_id"]} for i in items]


async def test_partners_cannot_read_the_revocation_feed(gateway: InProcessGateway) -> None:
    partner = await gateway.client(partner_id="ptn-f", scopes=["kpis:read"])
    assert (await gateway.http.get("/internal/revocations", headers=await gateway.bearer(partner))).status_code == 403


async def test_a_client_cannot_revoke_another_clients_token(gateway: InProcessGateway, upstream: Upstream) -> None:
    owner = await gateway.client(partner_id="ptn-own", scopes=["kpis:read"])
    other = await gateway.client(partner_id="ptn-oth", scopes=["kpis:read"])
    token = await gateway.token(owner)
    response = await gateway.http.post("/oauth/revoke", data={"token": token}, auth=(other.client_id, other.client_secret))
    assert response.status_code == 400
    assert (await gateway.http.get("/v1/kpis", headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_discovery_and_jwks(gateway: InProcessGateway) -> None:
    issuer = gateway.ctx.runtime.settings.token_issuer
    meta = (await gateway.http.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == issuer
    assert meta["token_endpoint"] == issuer + "/oauth/token"
    assert meta["jwks_uri"] == issuer + "/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post", "private_key_jwt"}
    assert meta["introspection_endpoint"].endswith("/oauth/introspect")
    assert meta["revocation_endpoint"].endswith("/oauth/revoke")
    jwks = (await gateway.http.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]] == [gateway.ctx.keys.kid]
    key = jwks["keys"][0]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256" and key["use"] == "sig"
    assert "d" not in key


async def test_key_rotation_keeps_old_tokens_valid_until_they_expire(gateway: InProcessGateway, upstream: Upstream) -> None:
    keys = gateway.ctx.keys
    runtime = gateway.ctx.runtime
    old_kid = keys.kid
    old_token = await gateway.token(gateway.ops)
    new_kid, _ = await rotate(runtime.engine, now=runtime.clock.now(), token_ttl=runtime.settings.access_token_ttl)
    assert await keys.load()
    assert keys.kid == new_kid != old_kid
    new_token = await gateway.token(gateway.ops)
    assert jwt.decode(new_token, keys.public_keyset).header["kid"] == new_kid
    published = [k["kid"] for k in (await gateway.http.get("/.well-known/jwks.json")).json()["keys"]]
    assert published == [new_kid, old_kid]
    for token in (old_token, new_token):
        assert (await gateway.http.get("/v1/kpis", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    # Once the old key's last token has expired, the next rotation drops it from the key set.
    later = runtime.clock.now() + timedelta(seconds=runtime.settings.access_token_ttl + 120)
    newest, _ = await rotate(runtime.engine, now=later, token_ttl=runtime.settings.access_token_ttl)
    await keys.load()
    published = [k["kid"] for k in keys.jwks()["keys"]]
    assert old_kid not in published and published[0] == newest


def test_install_revocations_wires_a_services_verifier(tmp_path: Path) -> None:
    from services.runtime.app import build_runtime
    from services.runtime.revocations import install_revocations
    from services.runtime.settings import Settings

    bare = build_runtime("onboarding", Settings(var_dir=tmp_path))
    assert install_revocations(bare) is None and bare.verifier.is_revoked is None
    runtime = build_runtime(
        "onboarding", Settings(var_dir=tmp_path, internal_client_id="svc", internal_client_secret="s3cret")
    )
    revocations = install_revocations(runtime)
    assert revocations is not None
    assert runtime.verifier.is_revoked == revocations.is_revoked
    assert revocations in runtime.components
    revocations.add(Revocation(position=1, kind="client", client_id="gone"))
    assert runtime.verifier.is_revoked("any-jti", "gone")
