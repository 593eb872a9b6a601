"""The token verifier every service runs: forged, expired and misdirected tokens are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from services.runtime.auth import InvalidToken, TokenVerifier
from tests.support.tokens import TestIssuer

ISSUER = "http://gateway.test"


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(ISSUER)


@pytest.fixture
def verifier(issuer: TestIssuer) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience="partnerhub", keys=KeySet.import_key_set(issuer.keyset.as_dict(private=False)))


def _b64(doc: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


async def test_valid_token_yields_identity(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    token = issuer.mint("c1", "partners:read kpis:read", partner_id="ptn_1", tier="strategic")
    identity = await verifier.verify(token)
    assert identity.client_id == "c1"
    assert identity.scopes == {"partners:read", "kpis:read"}
    assert identity.partner_id == "ptn_1" and identity.tier == "strategic"
    assert not identity.is_ops
    assert identity.can_see("ptn_1") and not identity.can_see("ptn_2")


async def test_alg_none_is_refused(verifier: TestIssuer, issuer: TestIssuer) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "partnerhub", "sub": "c", "exp": now + 60, "iat": now, "jti": "x", "scope": "admin"}
    token = _b64({"alg": "none", "typ": "at+jwt", "kid": issuer.key.kid}) + "." + _b64(claims) + "."
    with pytest.raises(InvalidToken):
        await verifier.verify(token)  # type: ignore[attr-defined]


async def test_hs256_signed_with_the_public_key_is_refused(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    public_pem = issuer.key.as_pem(private=False)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "partnerhub", "sub": "c", "exp": now + 60, "iat": now, "jti": "x", "scope": "admin"}
    # joserfc itself refuses to build such a key, so forge the signature by hand.
    signing_input = _b64({"alg": "HS256", "typ": "at+jwt", "kid": issuer.key.kid}) + "." + _b64(claims)
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("expired", {"ttl": -120}),
        ("wrong audience", {"aud": "someone-else"}),
        ("wrong issuer", {"iss": "http://evil.test"}),
        ("not yet valid", {"nbf": int(time.time()) + 3600}),
        ("typ JWT", {"header": {"typ": "JWT"}}),
        ("jku header", {"header": {"jku": "http://evil.test/jwks.json"}}),
        ("x5u header", {"header": {"x5u": "http://evil.test/cert.pem"}}),
        ("unknown kid", {"header": {"kid": "nobody"}}),
    ],
)
async def test_bad_tokens_are_refused(issuer: TestIssuer, verifier: TokenVerifier, case: str, kwargs: dict) -> None:
    token = issuer.mint("c1", "admin", **kwargs)
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


async def test_missing_typ_is_refused(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "partnerhub", "sub": "c", "exp": now + 60, "iat": now, "jti": "x", "scope": "admin"}
    token = jwt.encode({"alg": "ES256", "kid": issuer.key.kid}, claims, issuer.key)
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


async def test_tampered_payload_is_refused(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    header, _payload, signature = issuer.mint("c1", "partners:read").split(".")
    now = int(time.time())
    forged = _b64({"iss": ISSUER, "aud": "partnerhub", "sub": "c1", "exp": now + 60, "iat": now, "jti": "x", "scope": "admin"})
    with pytest.raises(InvalidToken):
        await verifier.verify(f"{header}.{forged}.{signature}")


async def test_token_signed_by_another_key_with_same_kid_is_refused(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    impostor = ECKey.generate_key("P-256", parameters={"kid": issuer.key.kid}, private=True)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "partnerhub", "sub": "c", "exp": now + 60, "iat": now, "jti": "x", "scope": "admin"}
    token = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": issuer.key.kid}, claims, impostor)
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


async def test_revocation_hook_rejects_even_cached_tokens(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    token = issuer.mint("c1", "partners:read")
    identity = await verifier.verify(token)
    revoked = {identity.token_id}
    verifier.is_revoked = lambda jti, _client: jti in revoked
    with pytest.raises(InvalidToken):
        await verifier.verify(token)
