"""Tables the onboarding service keeps beside its event store (read models, registries)."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, MetaData, String, Table

from events.schema import UTCDateTime

metadata = MetaData()

# Read model of every partner, written in the same transaction as the partner's events
# (EventStore.append(effects=...)); it serves lists and detail reads without a replay.
partners = Table(
    "partners",
    metadata,
    Column("id", String(40), primary_key=True),
    # Global position of partner.applied: creation order, the list's sort and cursor key.
    Column("created_position", BigInteger().with_variant(Integer, "sqlite"), nullable=False, unique=True),
    Column("status", String(32), nullable=False),
    Column("tier", String(32)),
    Column("version", Integer, nullable=False),
    Column("record", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index("ix_partners_status_created", partners.c.status, partners.c.created_position)
