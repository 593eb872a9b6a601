"""The OAuth client registry: create, rotate, revoke; secrets shown once, stored as keyed hashes.

Secrets are 256-bit random, so a keyed SHA-256 (HMAC with a pepper) is enough: no slow
KDF on the token path. The pepper comes from `PARTNERHUB_SECRET_PEPPER`; without it one is
generated once and kept in the gateway's database (set it in production, so that a copy
of the database alone cannot be used to test guesses). Every change appends an audit
event (`client.created|secret_rotated|revoked`) whose effects keep the `clients` table
in the same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.catalog import ClientCreated, ClientRevoked, ClientSecretRotated
from events.envelope import EventMetadata, RecordedEvent
from events.store import NO_STREAM, ConcurrencyError, EventStore
from services.gateway.tables import clients, gateway_values, revocations

ALL_SCOPES: tuple[str, ...] = (
    "partners:read",
    "partners:write",
    "integrations:read",
    "integrations:write",
    "webhooks:read",
    "webhooks:write",
    "kpis:read",
    "events:read",
    "admin",
)
OPS_SCOPES: tuple[str, ...] = ALL_SCOPES
DEFAULT_PARTNER_SCOPES: tuple[str, ...] = (
    "partners:read",
    "integrations:read",
    "integrations:write",
    "webhooks:read",
    "webhooks:write",
    "kpis:read",
)
# A partner never administers the platform, nor reads every service's raw event log.
PARTNER_FORBIDDEN_SCOPES = frozenset({"admin", "events:read"})
CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PARTNER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")

Kind = Literal["ops", "partner"]


class ClientError(ValueError):
    """A client cannot be made or changed as asked (the API answers 422 or 404)."""


class UnknownClient(ClientError):
    """No client has this id."""


class ClientConflict(ClientError):
    """The client is revoked: it cannot change any more."""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """A registered client (never its secret)."""

    client_id: str
    name: str
    kind: Kind
    partner_id: str | None
    scopes: tuple[str, ...]
    secret_hash: str
    jwks: dict[str, Any] | None
    seq: int
    created_at: datetime
    secret_rotated_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        """The client as the admin API shows it."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "kind": self.kind,
            "partner_id": self.partner_id,
            "scopes": list(self.scopes),
            "token_endpoint_auth_methods": auth_methods(self),
            "created_at": self.created_at,
            "secret_rotated_at": self.secret_rotated_at,
            "revoked_at": self.revoked_at,
            "status": "active" if self.active else "revoked",
        }


def auth_methods(record: ClientRecord) -> list[str]:
    """Client authentication methods `record` may use at the token endpoint."""
    methods = ["client_secret_basic", "client_secret_post"]
    if record.jwks:
        methods.append("private_key_jwt")
    return methods


class SecretHasher:
    """HMAC-SHA256 of client secrets under the pepper."""

    def __init__(self, pepper: bytes) -> None:
        self.pepper = pepper

    def hash(self, secret: str) -> str:
        if not self.pepper:
            raise RuntimeError("the secret pepper is not loaded")
        return hmac.new(self.pepper, secret.encode(), hashlib.sha256).hexdigest()

    def verify(self, secret: str, expected: str) -> bool:
        return hmac.compare_digest(self.hash(secret), expected)


async def load_pepper(engine: AsyncEngine, configured: str | None) -> bytes:
    """The configured pepper, or the one generated for this database on first use."""
    if configured:
        return configured.encode()
    query = select(gateway_values.c.value).where(gateway_values.c.name == "secret_pepper")
    async with engine.connect() as conn:
        value = (await conn.execute(query)).scalar_one_or_none()
    if value is None:
        value = secrets.token_urlsafe(32)
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(gateway_values).values(name="secret_pepper", value=value))
        except IntegrityError:  # another process made it first: use theirs
            async with engine.connect() as conn:
                value = (await conn.execute(query)).scalar_one()
    return str(value).encode()


def new_secret() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def normalise_scopes(values: Iterable[str], *, partner: bool) -> tuple[str, ...]:
    """Known, de-duplicated scopes in catalogue order; ClientError otherwise."""
    wanted = {part for value in values for part in re.split(r"[\s,]+", value) if part}
    unknown = sorted(wanted - set(ALL_SCOPES))
    if unknown:
        raise ClientError(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}")
    if not wanted:
        raise ClientError("a client needs at least one scope")
    if partner and wanted & PARTNER_FORBIDDEN_SCOPES:
        raise ClientError(
            f"a partner client cannot hold {', '.join(sorted(wanted & PARTNER_FORBIDDEN_SCOPES))}"
        )
    return tuple(s for s in ALL_SCOPES if s in wanted)


def check_jwks(jwks: dict[str, Any] | None) -> dict[str, Any] | None:
    """A client's public JWK Set for private_key_jwt: public asymmetric keys only."""
    if jwks is None:
        return None
    try:
        keyset = KeySet.import_key_set(cast(Any, jwks))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ClientError(f"jwks is not a valid JWK Set: {exc}") from exc
    if not keyset.keys:
        raise ClientError("jwks holds no key")
    for key in keyset.keys:
        if key.key_type not in ("EC", "RSA", "OKP"):
            raise ClientError("jwks may hold only EC, RSA or OKP public keys")
        if key.is_private:
            raise ClientError("jwks must hold public keys only; never send a private key")
    return {"keys": [key.as_dict(private=False) for key in keyset.keys]}


def _record(row: Any) -> ClientRecord:
    return ClientRecord(
        client_id=row.client_id,
        name=row.name,
        kind=row.kind,
        partner_id=row.partner_id,
        scopes=tuple(row.scopes),
        secret_hash=row.secret_hash,
        jwks=row.jwks,
        seq=int(row.seq),
        created_at=row.created_at,
        secret_rotated_at=row.secret_rotated_at,
        revoked_at=row.revoked_at,
    )


class ClientRegistry:
    """Reads and changes clients; keeps a short-lived cache for the token endpoint."""

    def __init__(self, store: EventStore, hasher: SecretHasher, *, cache_seconds: float = 2.0) -> None:
        self.store = store
        self.engine = store.engine
        self.hasher = hasher
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ClientRecord | None]] = {}

    # --- reading --------------------------------------------------------------------------

    async def get(self, client_id: str) -> ClientRecord | None:
        """The client, revoked or not (None when unknown)."""
        if not CLIENT_ID.match(client_id):
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(clients).where(clients.c.client_id == client_id))).first()
        return _record(row) if row is not None else None

    async def lookup(self, client_id: str) -> ClientRecord | None:
        """The active client (cached a moment: secret checks on the token path stay cheap)."""
        now = time.monotonic()
        hit = self._cache.get(client_id)
        if hit is not None and now - hit[0] < self._cache_seconds:
            return hit[1]
        record = await self.get(client_id)
        if record is not None and not record.active:
            record = None
        if record is not None:  # unknown ids are not cached: a client made elsewhere is found at once
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[client_id] = (now, record)
        return record

    def forget(self, client_id: str) -> None:
        """Drop `client_id` from the cache (after a change)."""
        self._cache.pop(client_id, None)

    async def list(
        self,
        *,
        partner_id: str | None = None,
        status: Literal["active", "revoked"] | None = None,
        after_seq: int = 0,
        limit: int = 50,
    ) -> list[ClientRecord]:
        """Clients in creation order after `after_seq`."""
        query = select(clients).where(clients.c.seq > after_seq).order_by(clients.c.seq).limit(limit)
        if partner_id is not None:
            query = query.where(clients.c.partner_id == partner_id)
        if status == "active":
            query = query.where(clients.c.revoked_at.is_(None))
        elif status == "revoked":
            query = query.where(clients.c.revoked_at.is_not(None))
        async with self.engine.connect() as conn:
            return [_record(row) for row in (await conn.execute(query)).all()]

    # --- changing -------------------------------------------------------------------------

    async def create(
        self,
        *,
        name: str,
        scopes: Sequence[str],
        partner_id: str | None = None,
        jwks: dict[str, Any] | None = None,
        metadata: EventMetadata | None = None,
        client_id: str | None = None,
        secret: str | None = None,
    ) -> tuple[ClientRecord, str]:
        """A new client and its secret (the only time the secret is known)."""
        name = name.strip()
        if not name or len(name) > 200:
            raise ClientError("name must be 1-200 characters")
        if partner_id is not None and not PARTNER_ID.match(partner_id):
            raise ClientError("partner_id must be 1-100 characters of letters, digits and . _ : -")
        kind: Kind = "partner" if partner_id is not None else "ops"
        normalised = normalise_scopes(scopes, partner=kind == "partner")
        checked_jwks = check_jwks(jwks)
        client_id = client_id or f"{'ptn' if kind == 'partner' else 'ops'}_{secrets.token_hex(10)}"
        if not CLIENT_ID.match(client_id):
            raise ClientError("client_id must be 1-64 characters of letters, digits and . _ -")
        secret = secret or new_secret()
        secret_hash = self.hasher.hash(secret)
        event = ClientCreated(
            client_id=client_id, name=name, scopes=list(normalised), kind=kind, partner_id=partner_id
        )

        async def effects(conn: AsyncConnection, recorded: list[RecordedEvent]) -> None:
            await conn.execute(
                insert(clients).values(
                    client_id=client_id,
                    name=name,
                    kind=kind,
                    partner_id=partner_id,
                    scopes=list(normalised),
                    secret_hash=secret_hash,
                    jwks=checked_jwks,
                    seq=recorded[0].position,
                    created_at=recorded[0].occurred_at,
                )
            )

        await self.store.append(
            stream_id=f"client-{client_id}",
            expected_version=NO_STREAM,
            events=[event],
            metadata=metadata,
            effects=effects,
        )
        record = await self.get(client_id)
        assert record is not None
        return record, secret

    async def rotate_secret(
        self, client_id: str, *, metadata: EventMetadata | None = None, secret: str | None = None
    ) -> tuple[ClientRecord, str]:
        """A new secret for an active client; the old one stops working at once."""
        record = await self._active(client_id)
        secret = secret or new_secret()
        secret_hash = self.hasher.hash(secret)

        async def effects(conn: AsyncConnection, recorded: list[RecordedEvent]) -> None:
            await conn.execute(
                update(clients)
                .where(clients.c.client_id == client_id)
                .values(secret_hash=secret_hash, secret_rotated_at=recorded[0].occurred_at)
            )

        await self.store.append(
            stream_id=f"client-{client_id}",
            expected_version=None,
            events=[ClientSecretRotated(client_id=client_id, partner_id=record.partner_id)],
            metadata=metadata,
            effects=effects,
        )
        self.forget(client_id)
        updated = await self.get(client_id)
        assert updated is not None
        return updated, secret

    async def revoke(self, client_id: str, *, metadata: EventMetadata | None = None) -> RecordedEvent:
        """Revoke a client: it gets no more tokens, and every token it holds is rejected."""
        record = await self._active(client_id)

        async def effects(conn: AsyncConnection, recorded: list[RecordedEvent]) -> None:
            at = recorded[0].occurred_at
            await conn.execute(update(clients).where(clients.c.client_id == client_id).values(revoked_at=at))
            await conn.execute(
                insert(revocations).values(
                    position=recorded[0].position, kind="client", client_id=client_id, revoked_at=at
                )
            )

        recorded = await self.store.append(
            stream_id=f"client-{client_id}",
            expected_version=None,
            events=[ClientRevoked(client_id=client_id, partner_id=record.partner_id)],
            metadata=metadata,
            effects=effects,
        )
        self.forget(client_id)
        return recorded[0]

    async def ensure(self, *, client_id: str, secret: str, name: str, scopes: Sequence[str]) -> ClientRecord | None:
        """Make sure a configured client exists with this secret (the service-to-service client).

        Returns None when the client was revoked by ops: it stays revoked.
        """
        record = await self.get(client_id)
        if record is None:
            try:
                record, _ = await self.create(name=name, scopes=scopes, client_id=client_id, secret=secret)
            except (ConcurrencyError, IntegrityError):
                # Another gateway process made it at the same moment.
                record = await self.get(client_id)
                if record is None:
                    raise
            return record
        if not record.active:
            return None
        if not self.hasher.verify(secret, record.secret_hash):
            record, _ = await self.rotate_secret(client_id, secret=secret)
        return record

    async def _active(self, client_id: str) -> ClientRecord:
        record = await self.get(client_id)
        if record is None:
            raise UnknownClient(f"client {client_id!r} does not exist")
        if not record.active:
            raise ClientConflict(f"client {client_id!r} is revoked; make a new client instead")
        return record
