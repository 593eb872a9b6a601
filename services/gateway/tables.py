"""Tables the gateway service keeps beside its event store (registries, deny-lists, key ring).

`clients` and `revocations` are written in the same transaction as the audit events they
reflect (`client.*`, `token.revoked`; store `append(effects=...)`); `partner_tiers` in the
transaction of the tier subscription's checkpoint.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, MetaData, String, Table, Text

from events.schema import UTCDateTime

metadata = MetaData()

# OAuth clients. The secret is never stored: only HMAC-SHA256(pepper, secret).
clients = Table(
    "clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # ops | partner
    Column("partner_id", String(100)),
    Column("scopes", JSON, nullable=False),
    Column("secret_hash", String(64), nullable=False),
    # Public keys for private_key_jwt (RFC 7523); None: secret methods only.
    Column("jwks", JSON),
    # Store position of client.created: creation order, the list's sort and cursor key.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("secret_rotated_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
)
Index("ix_clients_partner", clients.c.partner_id, clients.c.seq)

# ES256 signing keys. The newest active key signs; a retired key stays published in the
# JWKS until `publish_until` (its last token's expiry plus leeway), then it is dropped.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("private_jwk", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("retired_at", UTCDateTime),
    Column("publish_until", UTCDateTime),
)

# Small process-independent values (the generated secret pepper when none is configured).
gateway_values = Table(
    "gateway_values",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Revoked tokens (jti) and revoked clients, keyed by the store position of the event that
# revoked them: gap-free and in commit order, so pollers tail it with `after=<position>`.
revocations = Table(
    "revocations",
    metadata,
    Column("position", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("kind", String(8), nullable=False),  # token | client
    Column("client_id", String(64), nullable=False),
    Column("jti", String(64)),
    # Token revocations matter until the token expires; client revocations forever.
    Column("expires_at", UTCDateTime),
    Column("revoked_at", UTCDateTime, nullable=False),
)
Index("ix_revocations_jti", revocations.c.jti)

# RFC 7523 replay store: a client assertion's jti is accepted once until it expires.
assertion_jtis = Table(
    "assertion_jtis",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(200), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
)

# Partner tiers learned from onboarding's partner.approved / partner.activated.
partner_tiers = Table(
    "partner_tiers",
    metadata,
    Column("partner_id", String(100), primary_key=True),
    Column("tier", String(32), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
