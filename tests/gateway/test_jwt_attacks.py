"""Forged, misdirected and revoked tokens: each is refused with 401 and never reaches an upstream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.gateway.support import InProcessGateway, Upstream


@pytest.fixture
def gateway(shared_gateway: InProcessGateway, upstream: Upstream) -> InProcessGateway:
    """This module's tests share one gateway; each makes its own clients."""
    return shared_gateway


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _claims(gateway: InProcessGateway, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": gateway.ctx.runtime.settings.token_issuer,
        "aud": "partnerhub",
        "sub": gateway.ops.client_id,
        "client_id": gateway.ops.client_id,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scope": "admin partners:read partners:write kpis:read",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(gateway: InProcessGateway, claims: dict[str, Any], **header: Any) -> str:
    """Signed with the gateway's real signing key: only the claims or header are wrong."""
    key = gateway.ctx.keys.signing_keyset.keys[0]
    head = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid} | header
    return jwt.encode({k: v for k, v in head.items() if v is not None}, claims, key)


async def _forge(case: str, gateway: InProcessGateway) -> str:
    kid = gateway.ctx.keys.kid
    if case == "alg_none":
        return _b64({"alg": "none", "typ": "at+jwt", "kid": kid}) + "." + _b64(_claims(gateway)) + "."
    if case == "hs256_with_public_key":
        public_pem = gateway.ctx.keys.signing_keyset.keys[0].as_pem(private=False)
        signing_input = _b64({"alg": "HS256", "typ": "at+jwt", "kid": kid}) + "." + _b64(_claims(gateway))
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
    if case == "unknown_kid":
        stranger = ECKey.generate_key("P-256", parameters={"kid": "attacker-key"}, private=True)
        return jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": "attacker-key"}, _claims(gateway), stranger)
    if case == "own_key_with_our_kid":
        stranger = ECKey.generate_key("P-256", private=True)
        return jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": kid}, _claims(gateway), stranger)
    if case == "tampered_payload":
        partner = await gateway.client(partner_id="ptn-weak", scopes=["kpis:read"])
        header, payload, signature = (await gateway.token(partner)).split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["scope"] = "admin partners:write"
        claims.pop("partner_id")
        return f"{header}.{_b64(claims)}.{signature}"
    if case == "expired":
        now = int(time.time())
        return _signed(gateway, _claims(gateway, iat=now - 7200, exp=now - 3600))
    if case == "not_yet_valid":
        return _signed(gateway, _claims(gateway, nbf=int(time.time()) + 3600))
    if case == "wrong_iss":
        return _signed(gateway, _claims(gateway, iss="https://evil.example"))
    if case == "wrong_aud":
        return _signed(gateway, _claims(gateway, aud="someone-else"))
    if case == "missing_typ":
        return _signed(gateway, _claims(gateway), typ=None)
    if case == "typ_jwt":
        return _signed(gateway, _claims(gateway), typ="JWT")
    if case == "jku_elsewhere":
        return _signed(gateway, _claims(gateway), jku="http://127.0.0.1:9/jwks.json")
    if case == "x5u_elsewhere":
        return _signed(gateway, _claims(gateway), x5u="http://127.0.0.1:9/cert.pem")
    if case == "revoked":
        token = await gateway.token(gateway.ops)
        response = await gateway.http.post(
            "/oauth/revoke", data={"token": token}, auth=(gateway.ops.client_id, gateway.ops.client_secret)
        )
        assert response.status_code == 200
        return token
    if case == "deleted_client":
        victim = await gateway.client(partner_id="ptn-gone", scopes=["kpis:read"])
        token = await gateway.token(victim)
        deleted = await gateway.http.delete(f"/admin/clients/{victim.client_id}", headers=await gateway.bearer(gateway.ops))
        assert deleted.status_code == 204
        return token
    if case == "garbage":
        return "not.a.token"
    raise AssertionError(case)


CASES = [
    "alg_none",
    "hs256_with_public_key",
    "unknown_kid",
    "own_key_with_our_kid",
    "tampered_payload",
    "expired",
    "not_yet_valid",
    "wrong_iss",
    "wrong_aud",
    "missing_typ",
    "typ_jwt",
    "revoked",
    "deleted_client",
    "jku_elsewhere",
    "x5u_elsewhere",
    "garbage",
]


@pytest.mark.parametrize("case", CASES)
async def test_attack_is_refused_without_upstream_call(gateway: InProcessGateway, upstream: Upstream, case: str) -> None:
    token = await _forge(case, gateway)
    for path in ("/v1/partners", "/v1/kpis"):
        response = await gateway.http.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (case, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")
    # The gateway's own API refuses it too.
    assert (await gateway.http.get("/admin/clients", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    assert upstream.seen == []


@pytest.mark.parametrize("header", ["Bearer", "Basic dXNlcjpwYXNz", "bearer  ", "Token abc"])
async def test_missing_or_other_scheme_is_401(gateway: InProcessGateway, upstream: Upstream, header: str) -> None:
    response = await gateway.http.get("/v1/partners", headers={"Authorization": header})
    assert response.status_code == 401
    assert upstream.seen == []


async def test_a_valid_token_passes_after_the_attacks(gateway: InProcessGateway, upstream: Upstream) -> None:
    # Control: the same request with a genuine token reaches the upstream.
    response = await gateway.http.get("/v1/partners", headers=await gateway.bearer(gateway.ops))
    assert response.status_code == 200
    assert len(upstream.seen) == 1
