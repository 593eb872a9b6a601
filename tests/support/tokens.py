"""Access tokens for in-process service tests, signed by a test key the service is told to trust.

End-to-end tests get real tokens from the gateway instead (tests/support/platform.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

OPS_SCOPES = (
    "admin partners:read partners:write integrations:read integrations:write "
    "webhooks:read webhooks:write kpis:read events:read"
)
PARTNER_SCOPES = "partners:read integrations:read integrations:write webhooks:read webhooks:write kpis:read"


class TestIssuer:
    """Mints RFC 9068 access tokens like the gateway does."""

    __test__ = False

    def __init__(self, issuer: str, audience: str = "partnerhub") -> None:
        self.issuer = issuer
        self.audience = audience
        self.key = ECKey.generate_key("P-256", parameters={"kid": f"test-{uuid.uuid4().hex[:8]}"}, private=True)
        self.keyset = KeySet([self.key])

    def mint(
        self,
        client_id: str,
        scopes: str | Iterable[str],
        *,
        partner_id: str | None = None,
        tier: str | None = None,
        ttl: int = 600,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token for `client_id` with `scopes`."""
        now = int(time.time())
        scope = scopes if isinstance(scopes, str) else " ".join(scopes)
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": client_id,
            "client_id": client_id,
            "iat": now,
            "exp": now + ttl,
            "jti": str(uuid.uuid4()),
            "scope": scope,
        }
        if partner_id is not None:
            body["partner_id"] = partner_id
        if tier is not None:
            body["tier"] = tier
        body.update(claims)
        head = {"alg": "ES256", "typ": "at+jwt", "kid": self.key.kid}
        head.update(header or {})
        return jwt.encode(head, body, self.key)

    def ops(self, client_id: str = "ops-test") -> dict[str, str]:
        """Authorization header of an ops client."""
        return {"Authorization": f"Bearer {self.mint(client_id, OPS_SCOPES)}"}

    def partner(self, partner_id: str, client_id: str | None = None, scopes: str = PARTNER_SCOPES) -> dict[str, str]:
        """Authorization header of a partner client."""
        token = self.mint(client_id or f"client-{partner_id}", scopes, partner_id=partner_id, tier="innovation")
        return {"Authorization": f"Bearer {token}"}
