"""Tables of webhook endpoints, messages and attempts (in the lifecycle service's database)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from events.schema import UTCDateTime

metadata = MetaData()

endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("partner_id", String(200), nullable=False),
    Column("url", String(2048), nullable=False),
    Column("description", String(500), nullable=False, default=""),
    Column("event_types", JSON, nullable=False),
    # Sealed with services.lifecycle.webhooks.secrets.SecretBox (recoverable: we sign with it).
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text),
    Column("previous_secret_expires_at", UTCDateTime),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("disabled_reason", String(200)),
    Column("disabled_at", UTCDateTime),
    # Start of the current run of failed attempts (NULL after any success): 5 days → disabled.
    Column("failing_since", UTCDateTime),
    Column("version", Integer, nullable=False, default=1),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index("ix_webhook_endpoints_partner", endpoints.c.partner_id, endpoints.c.created_at)

messages = Table(
    "webhook_messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("endpoint_id", String(40), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
    Column("partner_id", String(200), nullable=False),
    # The CloudEvents id of the event: sent as `webhook-id`, stable across resends and restarts.
    Column("event_id", String(36), nullable=False),
    Column("event_type", String(100), nullable=False),
    # The exact JSON body that is signed and sent ({type, timestamp, data}).
    Column("payload", Text, nullable=False),
    Column("traceparent", String(64)),
    Column("event_recorded_at", UTCDateTime, nullable=False),
    # pending → delivered | failed; a resend or recover puts it back to pending.
    Column("status", String(16), nullable=False),
    # Attempts in the current schedule run (the schedule index); every attempt is in webhook_attempts.
    Column("attempts", Integer, nullable=False, default=0),
    # Schedule runs: a resend or recover starts a new one (an older run's late outcome is ignored).
    Column("run", Integer, nullable=False, default=1),
    # What started the current run: "event" (the dispatcher), "resend" or "recover".
    Column("trigger", String(16), nullable=False, default="event"),
    # When the next attempt is due; while an attempt is in flight, the end of its lease.
    Column("next_attempt_at", UTCDateTime),
    Column("first_attempt_at", UTCDateTime),
    Column("delivered_at", UTCDateTime),
    Column("last_status_code", Integer),
    Column("last_error", String(500)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_messages_event"),
)
Index("ix_webhook_messages_due", messages.c.status, messages.c.endpoint_id, messages.c.next_attempt_at)
Index("ix_webhook_messages_log", messages.c.endpoint_id, messages.c.created_at)

attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(40), ForeignKey("webhook_messages.id", ondelete="CASCADE"), nullable=False),
    Column("endpoint_id", String(40), nullable=False),
    Column("attempted_at", UTCDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("status_code", Integer),
    Column("outcome", String(16), nullable=False),
    Column("error", String(500)),
    Column("response_excerpt", Text),
    Column("trigger", String(16), nullable=False),
)
Index("ix_webhook_attempts_message", attempts.c.message_id, attempts.c.id)
