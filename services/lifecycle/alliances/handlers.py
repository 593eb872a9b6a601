"""Alliance command handlers: load the stream, decide, append with the read-model effects."""

from __future__ import annotations

from datetime import datetime

from events.envelope import EventMetadata, RecordedEvent
from events.store import ConcurrencyError, DuplicateEvent, EventStore, NewEvent
from services.lifecycle.alliances.domain import Alliance, Command, Start, decide, evolve, stream_of
from services.lifecycle.projection import project


async def load(store: EventStore, partner_id: str) -> tuple[Alliance | None, list[RecordedEvent]]:
    """The alliance of `partner_id` (None before it started) and its events."""
    recorded = await store.read_stream(stream_of(partner_id))
    state: Alliance | None = None
    for event in recorded:
        state = evolve(state, event.domain(), event.occurred_at)
    return state, recorded


async def execute(
    store: EventStore,
    state: Alliance,
    command: Command,
    *,
    occurred_at: datetime | None,
    metadata: EventMetadata,
) -> tuple[Alliance, list[RecordedEvent]]:
    """Run `command` on `state` (appending at `state.version`); the new state and its events."""
    events = decide(state, command)
    recorded = await store.append(
        stream_id=stream_of(state.partner_id),
        expected_version=state.version,
        events=[NewEvent(e, occurred_at=occurred_at) for e in events],
        metadata=metadata,
        effects=project,
    )
    new_state: Alliance = state
    for event in recorded:
        new_state = evolve(new_state, event.domain(), event.occurred_at)
    return new_state, recorded


async def start(
    store: EventStore, command: Start, *, event_id: str, metadata: EventMetadata, occurred_at: datetime | None = None
) -> bool:
    """Start an alliance; False (and nothing appended) when it had already started.

    `occurred_at` is the activation's time, so an imported history stays in order.

    Idempotent under at-least-once delivery: the stream must not exist yet
    (expected version 0) and the event id is derived from the triggering event, so a
    redelivered `partner.activated` can never start the alliance twice.
    """
    events = decide(None, command)
    try:
        await store.append(
            stream_id=stream_of(command.partner_id),
            expected_version=0,
            events=[NewEvent(e, event_id=event_id, occurred_at=occurred_at) for e in events],
            metadata=metadata,
            effects=project,
        )
    except (ConcurrencyError, DuplicateEvent):
        return False
    return True
