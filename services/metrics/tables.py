"""Tables the metrics service keeps beside its event store: the KPI read models.

Every read-model row carries a `generation`. `mx_projections` names the generation each
projection answers from; a rebuild fills generation N+1 while the API keeps reading N and
then switches the pointer in one transaction (see `services/metrics/rebuild.py`).
Event-level facts are keyed by the source position of the event that produced them, so a
row can always be traced back to its event.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from events.schema import UTCDateTime

metadata = MetaData()

_ID = 200  # partner, integration and route-group ids


def _position() -> Column[int]:
    return Column("position", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)


def _generation() -> Column[int]:
    return Column("generation", Integer, primary_key=True, autoincrement=False)


# --- bookkeeping -------------------------------------------------------------------------

projections = Table(
    "mx_projections",
    metadata,
    Column("name", String(100), primary_key=True),
    # The generation the API reads and the live subscription writes.
    Column("generation", Integer, nullable=False),
    # Bumped by every live write: taking this row's lock first orders live writes
    # against a rebuild's swap (see ProjectionWriter.live_generation).
    Column("writes", BigInteger, nullable=False, default=0),
    Column("rebuilt_at", UTCDateTime),
)

floors = Table(
    "mx_floors",
    metadata,
    Column("projection", String(100), primary_key=True),
    _generation(),
    Column("source", String(100), primary_key=True),
    # Every event of `source` at or below this position is already in the generation
    # (set by a rebuild); the live path skips them.
    Column("position", BigInteger, nullable=False),
)

# --- api_availability --------------------------------------------------------------------

api_traffic = Table(
    "mx_api_traffic",
    metadata,
    _generation(),
    _position(),
    Column("partner_id", String(_ID)),
    Column("route_group", String(_ID), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("day", String(10), nullable=False),
    Column("total", Integer, nullable=False),
    Column("server_errors", Integer, nullable=False),
    Column("client_errors", Integer, nullable=False),
)
Index("ix_mx_api_traffic_time", api_traffic.c.generation, api_traffic.c.occurred_at)

# --- integration_uptime ------------------------------------------------------------------

uptime_integrations = Table(
    "mx_uptime_integrations",
    metadata,
    _generation(),
    Column("integration_id", String(_ID), primary_key=True),
    Column("partner_id", String(_ID), nullable=False),
    Column("sla_target_pct", Float, nullable=False),
    Column("went_live_at", UTCDateTime),
    Column("retired_at", UTCDateTime),
)

uptime_transitions = Table(
    "mx_uptime_transitions",
    metadata,
    _generation(),
    _position(),
    Column("integration_id", String(_ID), nullable=False),
    Column("partner_id", String(_ID), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("status", String(4), nullable=False),
)
Index(
    "ix_mx_uptime_transitions_integration",
    uptime_transitions.c.generation,
    uptime_transitions.c.integration_id,
    uptime_transitions.c.occurred_at,
)

# --- integration_success_rate --------------------------------------------------------------

integration_attempts = Table(
    "mx_integration_attempts",
    metadata,
    _generation(),
    _position(),
    Column("partner_id", String(_ID), nullable=False),
    Column("integration_id", String(_ID), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("day", String(10), nullable=False),
    Column("succeeded", Boolean, nullable=False),
)
Index("ix_mx_integration_attempts_time", integration_attempts.c.generation, integration_attempts.c.occurred_at)

# --- time_to_integration_days --------------------------------------------------------------

tti_partners = Table(
    "mx_tti_partners",
    metadata,
    _generation(),
    Column("partner_id", String(_ID), primary_key=True),
    # Both facts arrive on different topics in any order; the KPI is computed on read.
    Column("agreement_signed_at", UTCDateTime),
    Column("first_live_at", UTCDateTime),
)

# --- time_to_partnership_days --------------------------------------------------------------

ttp_partners = Table(
    "mx_ttp_partners",
    metadata,
    _generation(),
    Column("partner_id", String(_ID), primary_key=True),
    Column("applied_at", UTCDateTime),
    Column("activated_at", UTCDateTime),
)

# --- partner_satisfaction ------------------------------------------------------------------

satisfaction_ratings = Table(
    "mx_satisfaction_ratings",
    metadata,
    _generation(),
    _position(),
    Column("partner_id", String(_ID), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("score", Float, nullable=False),
)
Index(
    "ix_mx_satisfaction_ratings_partner",
    satisfaction_ratings.c.generation,
    satisfaction_ratings.c.partner_id,
    satisfaction_ratings.c.occurred_at,
)

# --- partner_retention ---------------------------------------------------------------------

retention_outcomes = Table(
    "mx_retention_outcomes",
    metadata,
    _generation(),
    _position(),
    Column("partner_id", String(_ID), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("day", String(10), nullable=False),
    Column("renewed", Boolean, nullable=False),
)

# --- webhook_delivery_success --------------------------------------------------------------

webhook_outcomes = Table(
    "mx_webhook_outcomes",
    metadata,
    _generation(),
    _position(),
    Column("partner_id", String(_ID), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("day", String(10), nullable=False),
    Column("delivered", Boolean, nullable=False),
    Column("latency_ms", Float),
)
Index("ix_mx_webhook_outcomes_time", webhook_outcomes.c.generation, webhook_outcomes.c.occurred_at)

# --- partner_funnel ------------------------------------------------------------------------

funnel_partners = Table(
    "mx_funnel_partners",
    metadata,
    _generation(),
    Column("partner_id", String(_ID), primary_key=True),
    Column("name", String(300)),
    # Onboarding status (from onboarding's events, in their order for this partner).
    Column("status", String(30)),
    # From lifecycle: once terminated the funnel shows `terminated` whatever arrives later.
    Column("terminated_at", UTCDateTime),
)
