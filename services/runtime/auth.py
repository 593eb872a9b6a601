"""Zero-trust token verification: every service checks the gateway's JWTs itself.

Access tokens are RFC 9068 JWTs signed ES256 by the gateway. Keys come from the
gateway's JWKS, cached; an unknown `kid` triggers a refetch at most once per
`refetch_interval`. Verified tokens are cached by digest until they expire
(revocation is still checked on every use).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from services.runtime.http import async_client
from services.runtime.problems import Problem

LEEWAY_SECONDS = 60
ALGORITHMS = ["ES256"]


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified caller of a request."""

    client_id: str
    scopes: frozenset[str]
    partner_id: str | None
    tier: str | None
    token_id: str
    expires_at: int
    token: str = ""

    @property
    def is_ops(self) -> bool:
        """Ops clients hold the `admin` scope; partner clients never do."""
        return "admin" in self.scopes

    def can_see(self, partner_id: str | None) -> bool:
        """Whether this caller may see data of `partner_id` (ops: all; a partner: its own)."""
        return self.is_ops or (self.partner_id is not None and self.partner_id == partner_id)


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged, expired or revoked."""


RevocationCheck = Callable[[str, str], bool]
"""(jti, client_id) -> revoked?"""


class TokenVerifier:
    """Verifies access tokens against the gateway's keys."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        keys: KeySet | None = None,
        refetch_interval: float = 10.0,
        is_revoked: RevocationCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if jwks_url is None and keys is None:
            raise ValueError("TokenVerifier needs jwks_url or keys")
        self.issuer = issuer
        self.audience = audience
        self._jwks_url = jwks_url
        self._keys = keys
        self._refetch_interval = refetch_interval
        self._last_fetch = float("-inf")
        self._fetch_lock = asyncio.Lock()
        self._cache: dict[bytes, Identity] = {}
        self.is_revoked = is_revoked
        self._clock = clock

    def set_keys(self, keys: KeySet) -> None:
        """Replace the key set (the gateway, which owns the keys, pushes them here)."""
        self._keys = keys
        self._cache.clear()

    async def verify(self, token: str) -> Identity:
        """The identity carried by `token`, or `InvalidToken`."""
        digest = hashlib.blake2b(token.encode(), digest_size=20).digest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached.expires_at + LEEWAY_SECONDS < now:
                self._cache.pop(digest, None)
                raise InvalidToken("the token has expired")
            self._check_revoked(cached)
            return cached
        identity = await self._verify_uncached(token, now)
        self._check_revoked(identity)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[digest] = identity
        return identity

    def _check_revoked(self, identity: Identity) -> None:
        if self.is_revoked is not None and self.is_revoked(identity.token_id, identity.client_id):
            raise InvalidToken("the token has been revoked")

    async def _verify_uncached(self, token: str, now: float) -> Identity:
        header = _unverified_header(token)
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken("unsupported token algorithm")
        if header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
            raise InvalidToken("not an access token (typ must be at+jwt)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token names no key (kid)")
        keys = await self._keys_with(kid)
        try:
            decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidToken(f"bad token signature or encoding: {exc.__class__.__name__}") from exc
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=int(now),
            leeway=LEEWAY_SECONDS,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidToken(f"token claims rejected: {exc.description or exc.error}") from exc
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise InvalidToken("scope claim must be a string")
        return Identity(
            client_id=str(claims.get("client_id") or claims["sub"]),
            scopes=frozenset(scope.split()),
            partner_id=claims.get("partner_id"),
            tier=claims.get("tier"),
            token_id=str(claims["jti"]),
            expires_at=int(claims["exp"]),
            token=token,
        )

    async def _keys_with(self, kid: str) -> KeySet:
        if self._keys is not None and _has_kid(self._keys, kid):
            return self._keys
        if self._jwks_url is None:
            raise InvalidToken("unknown signing key")
        async with self._fetch_lock:
            if self._keys is not None and _has_kid(self._keys, kid):
                return self._keys
            if time.monotonic() - self._last_fetch < self._refetch_interval:
                raise InvalidToken("unknown signing key")
            self._last_fetch = time.monotonic()
            try:
                async with async_client(timeout=5.0) as client:
                    response = await client.get(self._jwks_url)
                    response.raise_for_status()
                    self._keys = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                raise InvalidToken("signing keys are unavailable") from exc
        if not _has_kid(self._keys, kid):
            raise InvalidToken("unknown signing key")
        return self._keys


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


def _unverified_header(token: str) -> dict[str, Any]:
    import base64

    import orjson

    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token")
    try:
        padded = parts[0] + "=" * (-len(parts[0]) % 4)
        header = orjson.loads(base64.urlsafe_b64decode(padded))
    except ValueError as exc:
        raise InvalidToken("malformed token header") from exc
    if not isinstance(header, dict):
        raise InvalidToken("malformed token header")
    for forbidden in ("jku", "x5u", "jwk", "x5c"):
        if forbidden in header:
            raise InvalidToken(f"token header {forbidden!r} is not accepted")
    return header


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def unauthorized(detail: str) -> Problem:
    """401 with the RFC 6750 challenge."""
    return Problem(
        401,
        detail,
        title="Unauthorized",
        type="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="partnerhub", error="invalid_token"'},
    )


async def authenticate(request: Request) -> Identity:
    """FastAPI dependency: the verified caller (401 otherwise)."""
    verifier: TokenVerifier = request.app.state.verifier
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise unauthorized("a bearer access token is required")
    try:
        identity = await verifier.verify(token)
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from exc
    request.state.identity = identity
    return identity


Caller = Annotated[Identity, Depends(authenticate)]


async def metrics_audience(request: Request) -> str | None:
    """Whose series a `GET /metrics` caller may see: None for every partner's, else one partner id.

    Prometheus scrapes a service directly inside the deployment and sends no token: it
    sees everything. A caller that sends a token is judged by it (zero trust): ops see
    everything, a partner client only its own partner's series ("" when it has none).
    """
    if "authorization" not in request.headers:
        return None
    caller = await authenticate(request)
    return None if caller.is_ops else (caller.partner_id or "")


def require_scopes(*scopes: str) -> Callable[[Identity], Awaitable[Identity]]:
    """Dependency factory: the caller must hold every one of `scopes` (ops hold them all)."""

    async def check(identity: Caller) -> Identity:
        missing = [s for s in scopes if s not in identity.scopes and not identity.is_ops]
        if missing:
            raise Problem(
                403,
                f"this call needs scope {' '.join(missing)}",
                title="Insufficient Scope",
                type="insufficient-scope",
                headers={
                    "WWW-Authenticate": f'Bearer realm="partnerhub", error="insufficient_scope", scope="{" ".join(scopes)}"'
                },
            )
        return identity

    return check


def scoped(*scopes: str) -> Any:
    """`Annotated` alias of an identity holding `scopes`, e.g. `PartnersWriter = scoped("partners:write")`."""
    return Annotated[Identity, Depends(require_scopes(*scopes))]


async def require_ops(identity: Caller) -> Identity:
    """The caller must be an ops client (scope `admin`)."""
    if not identity.is_ops:
        raise Problem(403, "this call is for ops clients (scope admin)", title="Forbidden")
    return identity


Ops = Annotated[Identity, Depends(require_ops)]


def visible_partner(identity: Identity, partner_id: str | None, what: str, ident: str) -> None:
    """404 (not 403: existence is not leaked) unless `identity` may see `partner_id`'s data."""
    if not identity.can_see(partner_id):
        from services.runtime.problems import not_found

        raise not_found(what, ident)


def scopes_of(values: Iterable[str]) -> frozenset[str]:
    """Normalise a list of scopes."""
    return frozenset(v for v in values if v)
