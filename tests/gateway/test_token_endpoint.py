"""POST /oauth/token: client_credentials with each client authentication method, RFC 6749 errors."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from services.gateway.tiers import record_tiers
from tests.gateway.support import Credentials, InProcessGateway, Upstream

FORM = {"grant_type": "client_credentials"}


@pytest.fixture
def gateway(shared_gateway: InProcessGateway, upstream: Upstream) -> InProcessGateway:
    """This module's tests share one gateway; each makes its own clients."""
    return shared_gateway


def _claims(token: str, gateway: InProcessGateway) -> dict[str, Any]:
    return dict(jwt.decode(token, gateway.ctx.keys.public_keyset, algorithms=["ES256"]).claims)


def _assertion(client_id: str, key: ECKey, audience: str, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    claims.update(overrides)
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)


async def _jwt_client(gateway: InProcessGateway) -> tuple[Credentials, ECKey, str]:
    key = ECKey.generate_key("P-256", parameters={"kid": "client-key-1"}, private=True)
    public = KeySet([key]).as_dict(private=False)
    creds = await gateway.client(partner_id="ptn-jwt", scopes=["partners:read"], jwks=public)
    audience = gateway.ctx.runtime.settings.token_issuer + "/oauth/token"
    return creds, key, audience


async def test_client_secret_basic_issues_an_rfc9068_token(gateway: InProcessGateway) -> None:
    creds = await gateway.client(partner_id="ptn-a", scopes=["partners:read", "kpis:read"])
    response = await gateway.http.post("/oauth/token", data=FORM, auth=(creds.client_id, creds.client_secret))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    doc = response.json()
    assert doc["token_type"] == "Bearer"
    assert doc["scope"] == "partners:read kpis:read"
    assert doc["expires_in"] == 3600
    token = jwt.decode(doc["access_token"], gateway.ctx.keys.public_keyset, algorithms=["ES256"])
    assert token.header == {"alg": "ES256", "typ": "at+jwt", "kid": gateway.ctx.keys.kid}
    claims = token.claims
    assert claims["sub"] == claims["client_id"] == creds.client_id
    assert claims["aud"] == "partnerhub"
    assert claims["iss"] == gateway.ctx.runtime.settings.token_issuer
    assert claims["partner_id"] == "ptn-a"
    assert "tier" not in claims  # not approved yet: the gateway has not learned a tier
    assert claims["exp"] - claims["iat"] == 3600
    assert len(claims["jti"]) == 32


async def test_client_secret_post(gateway: InProcessGateway) -> None:
    creds = await gateway.client(scopes=["kpis:read"])
    response = await gateway.http.post(
        "/oauth/token", data=FORM | {"client_id": creds.client_id, "client_secret": creds.client_secret}
    )
    assert response.status_code == 200, response.text
    assert _claims(response.json()["access_token"], gateway)["scope"] == "kpis:read"


async def test_private_key_jwt(gateway: InProcessGateway) -> None:
    creds, key, audience = await _jwt_client(gateway)
    form = FORM | {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": _assertion(creds.client_id, key, audience),
    }
    response = await gateway.http.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    assert _claims(response.json()["access_token"], gateway)["client_id"] == creds.client_id


async def test_private_key_jwt_replayed_assertion_is_refused(gateway: InProcessGateway) -> None:
    creds, key, audience = await _jwt_client(gateway)
    form = FORM | {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": _assertion(creds.client_id, key, audience),
    }
    assert (await gateway.http.post("/oauth/token", data=form)).status_code == 200
    replay = await gateway.http.post("/oauth/token", data=form)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"
    assert "www-authenticate" in replay.headers


@pytest.mark.parametrize(
    "case",
    ["signed_by_another_key", "wrong_audience", "expired", "iss_differs_from_sub", "no_jti", "unknown_client"],
)
async def test_private_key_jwt_bad_assertions(gateway: InProcessGateway, case: str) -> None:
    creds, key, audience = await _jwt_client(gateway)
    client_id = creds.client_id
    if case == "signed_by_another_key":
        assertion = _assertion(client_id, ECKey.generate_key("P-256", parameters={"kid": "client-key-1"}, private=True), audience)
    elif case == "wrong_audience":
        assertion = _assertion(client_id, key, "https://elsewhere.example/token")
    elif case == "expired":
        assertion = _assertion(client_id, key, audience, exp=int(time.time()) - 3600)
    elif case == "iss_differs_from_sub":
        assertion = _assertion(client_id, key, audience, iss="someone-else")
    elif case == "no_jti":
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": audience, "exp": now + 60}
        assertion = jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)
    else:
        assertion = _assertion("ptn_doesnotexist", key, audience)
    form = FORM | {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    response = await gateway.http.post("/oauth/token", data=form)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"


async def test_private_key_jwt_needs_a_registered_jwks(gateway: InProcessGateway) -> None:
    creds = await gateway.client(scopes=["kpis:read"])
    key = ECKey.generate_key("P-256", parameters={"kid": "k"}, private=True)
    audience = gateway.ctx.runtime.settings.token_issuer + "/oauth/token"
    form = FORM | {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": _assertion(creds.client_id, key, audience),
    }
    response = await gateway.http.post("/oauth/token", data=form)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("case", ["wrong_secret", "unknown_client", "no_credentials", "malformed_basic", "secret_in_both"])
async def test_invalid_client_is_401_with_challenge(gateway: InProcessGateway, case: str) -> None:
    creds = await gateway.client(scopes=["kpis:read"])
    kwargs: dict[str, Any] = {"data": dict(FORM)}
    if case == "wrong_secret":
        kwargs["auth"] = (creds.client_id, "not-the-secret")
    elif case == "unknown_client":
        kwargs["auth"] = ("ops_0000000000", creds.client_secret)
    elif case == "malformed_basic":
        kwargs["headers"] = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()}
    elif case == "secret_in_both":
        kwargs["auth"] = (creds.client_id, "wrong")
        kwargs["data"] |= {"client_id": creds.client_id, "client_secret": "also-wrong"}
    response = await gateway.http.post("/oauth/token", **kwargs)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert response.headers["content-type"] == "application/json"


async def test_unsupported_grant_type(gateway: InProcessGateway) -> None:
    response = await gateway.http.post(
        "/oauth/token", data={"grant_type": "password", "username": "u", "password": "p"}, auth=(gateway.ops.client_id, gateway.ops.client_secret)
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


async def test_missing_grant_type(gateway: InProcessGateway) -> None:
    response = await gateway.http.post("/oauth/token", data={"scope": "kpis:read"}, auth=(gateway.ops.client_id, gateway.ops.client_secret))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_requested_scopes_narrow_the_token(gateway: InProcessGateway) -> None:
    creds = await gateway.client(partner_id="ptn-n", scopes=["partners:read", "kpis:read", "webhooks:read"])
    token = await gateway.token(creds, scope="kpis:read")
    assert _claims(token, gateway)["scope"] == "kpis:read"


@pytest.mark.parametrize("scope", ["admin", "partners:read partners:write", "no-such:scope"])
async def test_scopes_beyond_the_clients_are_invalid_scope(gateway: InProcessGateway, scope: str) -> None:
    creds = await gateway.client(partner_id="ptn-s", scopes=["partners:read"])
    response = await gateway.http.post("/oauth/token", data=FORM | {"scope": scope}, auth=(creds.client_id, creds.client_secret))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


@pytest.mark.parametrize("case", ["json_body", "repeated_parameter", "not_utf8"])
async def test_malformed_requests_are_invalid_request(gateway: InProcessGateway, case: str) -> None:
    auth = (gateway.ops.client_id, gateway.ops.client_secret)
    if case == "json_body":
        response = await gateway.http.post("/oauth/token", json=FORM, auth=auth)
    else:
        body = b"grant_type=client_credentials&grant_type=client_credentials" if case == "repeated_parameter" else b"grant_type=\xff\xfe"
        response = await gateway.http.post(
            "/oauth/token", content=body, auth=auth, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_revoked_client_gets_no_token(gateway: InProcessGateway) -> None:
    creds = await gateway.client(scopes=["kpis:read"])
    deleted = await gateway.http.delete(f"/admin/clients/{creds.client_id}", headers=await gateway.bearer(gateway.ops))
    assert deleted.status_code == 204
    response = await gateway.http.post("/oauth/token", data=FORM, auth=(creds.client_id, creds.client_secret))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_rotated_secret_replaces_the_old_one(gateway: InProcessGateway) -> None:
    creds = await gateway.client(scopes=["kpis:read"])
    rotated = await gateway.http.post(f"/admin/clients/{creds.client_id}/rotate-secret", headers=await gateway.bearer(gateway.ops))
    assert rotated.status_code == 200
    new_secret = rotated.json()["client_secret"]
    assert new_secret != creds.client_secret
    old = await gateway.http.post("/oauth/token", data=FORM, auth=(creds.client_id, creds.client_secret))
    assert old.status_code == 401
    await gateway.token(Credentials(creds.client_id, new_secret))


async def test_partner_tokens_carry_the_learned_tier(gateway: InProcessGateway) -> None:
    creds = await gateway.client(partner_id="ptn-tier", scopes=["kpis:read"])
    async with gateway.ctx.runtime.engine.begin() as conn:
        await record_tiers(conn, {"ptn-tier": "strategic"}, at=gateway.ctx.runtime.clock.now())
    await gateway.ctx.tiers.load()
    claims = _claims(await gateway.token(creds), gateway)
    assert claims["tier"] == "strategic"
    assert claims["partner_id"] == "ptn-tier"


async def test_ops_tokens_have_no_partner(gateway: InProcessGateway) -> None:
    claims = _claims(await gateway.token(gateway.ops), gateway)
    assert "partner_id" not in claims and "tier" not in claims
    assert "admin" in claims["scope"].split()


async def test_token_endpoint_only_accepts_post(gateway: InProcessGateway) -> None:
    response = await gateway.http.get("/oauth/token")
    assert response.status_code == 405
