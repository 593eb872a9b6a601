"""Tables the lifecycle service keeps beside its event store (read models, registries).

Every row here is written by `services.lifecycle.projection` in the same transaction as
the events it reflects (store `append(effects=...)`), except `partner_agreements`, which
the alliance reactor fills in the transaction of its checkpoint.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from events.schema import UTCDateTime

metadata = MetaData()

alliances = Table(
    "alliances",
    metadata,
    Column("partner_id", String(100), primary_key=True),
    Column("phase", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("tier", String(40)),
    Column("ends_on", Date),
    Column("exit_effective_on", Date),
    Column("satisfaction_score", Float),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    # Store position of alliance.started: a stable, unique sort key for pagination.
    Column("seq", BigInteger, nullable=False, unique=True),
)
Index("ix_alliances_status_seq", alliances.c.status, alliances.c.seq)

partner_agreements = Table(
    "partner_agreements",
    metadata,
    Column("partner_id", String(100), primary_key=True),
    Column("agreement_type", String(40), nullable=False),
    Column("uptime_target_pct", Float, nullable=False),
    Column("starts_on", Date, nullable=False),
    Column("ends_on", Date, nullable=False),
    Column("source_event_id", String(36), nullable=False),
    Column("signed_at", UTCDateTime, nullable=False),
)

integrations = Table(
    "integrations",
    metadata,
    Column("integration_id", String(40), primary_key=True),
    Column("partner_id", String(100), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("name", String(200), nullable=False),
    Column("health_url", String(2048)),
    Column("sla_uptime_target_pct", Float, nullable=False),
    Column("status", String(20), nullable=False),
    Column("registered_at", UTCDateTime, nullable=False),
    Column("went_live_at", UTCDateTime),
    Column("retired_at", UTCDateTime),
    Column("retire_reason", Text, nullable=False, default=""),
    Column("attempts_succeeded", Integer, nullable=False, default=0),
    Column("attempts_failed", Integer, nullable=False, default=0),
    Column("last_attempt_at", UTCDateTime),
    Column("health", String(10), nullable=False),
    Column("health_since", UTCDateTime),
    Column("health_reason", Text, nullable=False, default=""),
    Column("health_latency_ms", Float),
    Column("sla_status", String(10), nullable=False),
    Column("sla_uptime_pct", Float),
    Column("sla_since", UTCDateTime),
    Column("last_event_at", UTCDateTime),
    Column("version", Integer, nullable=False),
    # Store position of integration.registered: a stable, unique sort key for pagination.
    Column("seq", BigInteger, nullable=False, unique=True),
)
Index("ix_integrations_partner_seq", integrations.c.partner_id, integrations.c.seq)
Index("ix_integrations_status", integrations.c.status)

health_transitions = Table(
    "integration_health_transitions",
    metadata,
    # The store position of the event that made the transition (went_live → unknown,
    # health_changed → up/down): unique, so replaying an event writes nothing twice.
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("integration_id", String(40), nullable=False),
    Column("status", String(10), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)
Index("ix_health_transitions_integration_at", health_transitions.c.integration_id, health_transitions.c.at)
