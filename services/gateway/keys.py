"""The gateway's ES256 signing keys: persisted in its database, rotated, published as a JWKS.

The newest unretired key signs. Rotation retires the current key but keeps it published
until its last token has expired (`publish_until` = retirement + token lifetime + leeway),
so verifiers that cached the old key set keep accepting tokens issued just before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from joserfc.jwk import ECKey, KeySet
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.gateway.tables import signing_keys
from services.runtime.auth import LEEWAY_SECONDS

ALGORITHM = "ES256"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One signing key as listed by `partnerhub keys` (no private material)."""

    kid: str
    created_at: datetime
    retired_at: datetime | None
    publish_until: datetime | None

    @property
    def signing(self) -> bool:
        return self.retired_at is None


def _new_key() -> ECKey:
    key = ECKey.generate_key("P-256", private=True)
    # RFC 7638 thumbprint: a stable kid derived from the public key itself.
    return ECKey.import_key(key.as_dict(private=True), parameters={"kid": key.thumbprint()})


def _public_jwk(private_jwk: dict[str, Any]) -> dict[str, Any]:
    key = ECKey.import_key(private_jwk)
    doc = key.as_dict(private=False)
    doc.update({"kid": private_jwk["kid"], "use": "sig", "alg": ALGORITHM})
    return doc


async def _insert_key(conn: AsyncConnection, now: datetime) -> str:
    key = _new_key()
    jwk = key.as_dict(private=True)
    await conn.execute(insert(signing_keys).values(kid=key.kid, private_jwk=jwk, created_at=now))
    return str(key.kid)


async def rotate(engine: AsyncEngine, *, now: datetime, token_ttl: int) -> tuple[str, list[KeyInfo]]:
    """Make a new signing key; retire the current ones (published until their tokens expire)."""
    publish_until = now + timedelta(seconds=token_ttl + LEEWAY_SECONDS)
    async with engine.begin() as conn:
        await conn.execute(delete(signing_keys).where(signing_keys.c.publish_until < now))
        await conn.execute(
            update(signing_keys)
            .where(signing_keys.c.retired_at.is_(None))
            .values(retired_at=now, publish_until=publish_until)
        )
        kid = await _insert_key(conn, now)
    return kid, await list_keys(engine)


async def list_keys(engine: AsyncEngine) -> list[KeyInfo]:
    """Every stored key, newest first."""
    query = select(
        signing_keys.c.kid, signing_keys.c.created_at, signing_keys.c.retired_at, signing_keys.c.publish_until
    ).order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [KeyInfo(r.kid, r.created_at, r.retired_at, r.publish_until) for r in rows]


class KeyRing:
    """The keys in memory: the signing key, and the public key set that is published."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        now: Callable[[], datetime],
        on_change: Callable[[KeySet], None] | None = None,
    ) -> None:
        self._engine = engine
        self._now = now
        self._on_change = on_change
        self._signing: KeySet | None = None
        self._kid = ""
        self._public: dict[str, Any] = {"keys": []}
        self._public_set = KeySet([])
        self._fingerprint: tuple[tuple[str, Any], ...] = ()
        self._publish_deadlines: list[datetime] = []

    @property
    def kid(self) -> str:
        """The kid of the key that signs new tokens."""
        return self._kid

    @property
    def signing_keyset(self) -> KeySet:
        """A key set holding only the signing key (joserfc then writes its kid in the header)."""
        if self._signing is None:
            raise RuntimeError("KeyRing.load() has not run")
        return self._signing

    @property
    def public_keyset(self) -> KeySet:
        """Every published public key."""
        return self._public_set

    def jwks(self) -> dict[str, Any]:
        """The RFC 7517 JWK Set document."""
        return self._public

    async def load(self) -> bool:
        """Read the keys (making the first one if there is none); True when they changed."""
        now = self._now()
        async with self._engine.begin() as conn:
            rows = (await conn.execute(select(signing_keys))).all()
            if not any(r.retired_at is None for r in rows):
                await _insert_key(conn, now)
                rows = (await conn.execute(select(signing_keys))).all()
        fingerprint = tuple(sorted((r.kid, r.publish_until) for r in rows))
        if fingerprint == self._fingerprint and not self._expired_published(now):
            return False
        active = sorted((r for r in rows if r.retired_at is None), key=lambda r: (r.created_at, r.kid))
        signer = active[-1]
        published = [r for r in rows if r.retired_at is None or (r.publish_until and r.publish_until > now)]
        published.sort(key=lambda r: (r.created_at, r.kid), reverse=True)
        self._signing = KeySet([ECKey.import_key(signer.private_jwk)])
        self._kid = signer.kid
        self._public = {"keys": [_public_jwk(r.private_jwk) for r in published]}
        self._public_set = KeySet.import_key_set(cast(Any, self._public))
        self._fingerprint = fingerprint
        self._publish_deadlines = [r.publish_until for r in published if r.publish_until is not None]
        if self._on_change is not None:
            self._on_change(self._public_set)
        return True

    def _expired_published(self, now: datetime) -> bool:
        return any(deadline <= now for deadline in self._publish_deadlines)
