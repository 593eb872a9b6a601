"""The alliance reactor: onboarding's `partner.activated` starts the partner's alliance.

It also remembers each partner's agreement SLA (`partner.agreement_signed`), the default
uptime target of the partner's integrations.

Delivery is at least once: the checkpoint commits in the subscription's transaction,
while the alliance is appended in the store's own, so a crash between the two
redelivers `partner.activated`. The append is idempotent (the stream must not exist
yet, and the event id is derived from the triggering event's id), so a redelivery
appends nothing. The agreement row is an idempotent upsert in its own transaction too:
on SQLite (one writer at a time) a write through the subscription's connection would
hold the write lock while the store, on another connection, waits for it to append.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.catalog import PartnerActivated, PartnerAgreementSigned
from events.envelope import EventMetadata, RecordedEvent
from events.store import EventStore
from services.lifecycle.alliances import handlers
from services.lifecycle.alliances.domain import Start
from services.lifecycle.tables import partner_agreements
from services.runtime.app import Component, Runtime
from services.runtime.tokens import TokenProvider

NAME = "lifecycle.alliance-reactor"
SOURCE = "onboarding"
HANDLED = frozenset({PartnerActivated.type, PartnerAgreementSigned.type})
# Namespace of the ids of events this reactor appends (uuid5 of the triggering event's id).
_EVENT_IDS = uuid.UUID("6f1d3c1e-8a57-4e0b-9a53-4b7f0c2d9e11")


def started_event_id(activated_event_id: str) -> str:
    """The id `alliance.started` gets when caused by the `partner.activated` with this id."""
    return str(uuid.uuid5(_EVENT_IDS, activated_event_id))


class AllianceReactor:
    """Handler of the reactor's subscription: `await reactor(conn, recorded)`."""

    def __init__(self, store: EventStore, engine: AsyncEngine) -> None:
        self._store = store
        self._engine = engine
        self.started = 0
        self.duplicates = 0

    async def __call__(self, conn: AsyncConnection, recorded: RecordedEvent) -> None:
        if recorded.type not in HANDLED:
            return
        event = recorded.domain()
        if isinstance(event, PartnerAgreementSigned):
            async with self._engine.begin() as own:
                await remember_agreement(own, recorded, event)
        elif isinstance(event, PartnerActivated):
            started = await handlers.start(
                self._store,
                Start(partner_id=event.partner_id, tier=event.tier, ends_on=event.ends_on),
                event_id=started_event_id(recorded.event_id),
                occurred_at=recorded.occurred_at,
                metadata=EventMetadata(
                    actor=NAME,
                    correlation_id=recorded.correlation_id or recorded.event_id,
                    causation_id=recorded.event_id,
                    traceparent=recorded.traceparent,
                ),
            )
            if started:
                self.started += 1
            else:
                self.duplicates += 1


async def remember_agreement(conn: AsyncConnection, recorded: RecordedEvent, event: PartnerAgreementSigned) -> None:
    """Keep the partner's latest agreement terms (a re-signed agreement replaces them)."""
    await conn.execute(_FORGET_AGREEMENT, {"partner_id": event.partner_id})
    await conn.execute(
        _INSERT_AGREEMENT,
        {
            "partner_id": event.partner_id,
            "agreement_type": event.agreement_type,
            "uptime_target_pct": event.sla.uptime_target_pct,
            "starts_on": event.starts_on,
            "ends_on": event.ends_on,
            "source_event_id": recorded.event_id,
            "signed_at": recorded.occurred_at,
        },
    )


_FORGET_AGREEMENT = delete(partner_agreements).where(partner_agreements.c.partner_id == bindparam("partner_id"))
_INSERT_AGREEMENT = insert(partner_agreements)


def subscription_for(runtime: Runtime, reactor: AllianceReactor, **options: Any) -> Component:
    """The reactor's subscription on onboarding's topic (`options` go to `Subscription`)."""
    from events.subscription import SourceInfo, Subscription

    settings = runtime.settings
    assert settings.kafka_bootstrap is not None
    if "log_reader" not in options and settings.internal_client_id and settings.internal_client_secret:
        options.setdefault("token_provider", TokenProvider(settings))
    options.setdefault("max_retries", settings.consumer_max_retries)
    options.setdefault("session_timeout_ms", settings.consumer_session_timeout_ms)
    options.setdefault("heartbeat_interval_ms", settings.consumer_heartbeat_interval_ms)
    options.setdefault("fetch_max_wait_ms", settings.consumer_fetch_max_wait_ms)
    subscription: Component = Subscription(
        NAME,
        sources={
            SOURCE: SourceInfo(
                topic=settings.topic_of(SOURCE), partitions=settings.kafka_partitions, log_url=settings.url_of(SOURCE)
            )
        },
        handler=reactor,
        engine=runtime.engine,
        bootstrap=settings.kafka_bootstrap,
        event_types=HANDLED,
        now=runtime.clock.now,
        **options,
    )
    return subscription
