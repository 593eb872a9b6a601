"""Keeps the lifecycle read models in step with the store (runs inside each append's transaction).

Pass `project` as `effects=` to every lifecycle append: the rows change in the same
transaction as the events, so a list endpoint never disagrees with the streams.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from events.catalog import (
    AllianceExitInitiated,
    AlliancePhaseChanged,
    AllianceRenewed,
    AllianceStarted,
    AllianceTerminated,
    IntegrationHealthChanged,
    IntegrationWentLive,
    PartnerSatisfactionRated,
)
from events.envelope import RecordedEvent
from services.lifecycle.integrations.domain import Integration, evolve
from services.lifecycle.tables import alliances, health_transitions, integrations

_INTEGRATION_FIELDS = tuple(f.name for f in fields(Integration))

# Statements built once, executed with parameters: built per call, SQLAlchemy spends
# as long constructing and keying them as running them. The update's SET clause comes
# from the parameters' keys.
INTEGRATION_ROW = select(integrations).where(integrations.c.integration_id == bindparam("integration_id"))
_INSERT_INTEGRATION = insert(integrations)
_UPDATE_INTEGRATION = update(integrations).where(integrations.c.integration_id == bindparam("key"))
_INSERT_TRANSITION = insert(health_transitions)
_INSERT_ALLIANCE = insert(alliances)
_UPDATE_ALLIANCE = update(alliances).where(alliances.c.partner_id == bindparam("key"))


async def project(conn: AsyncConnection, recorded: list[RecordedEvent]) -> None:
    """Apply freshly appended lifecycle events to the read-model tables."""
    for event in recorded:
        if event.stream_id.startswith("alliance-"):
            await _project_alliance(conn, event)
        elif event.stream_id.startswith("integration-"):
            await _project_integration(conn, event)


async def _project_alliance(conn: AsyncConnection, recorded: RecordedEvent) -> None:
    event = recorded.domain()
    at = recorded.occurred_at
    common = {"updated_at": at, "version": recorded.stream_version}
    values: dict[str, Any]
    match event:
        case AllianceStarted():
            await conn.execute(
                _INSERT_ALLIANCE,
                {
                    "partner_id": event.partner_id,
                    "phase": event.phase,
                    "status": "active",
                    "tier": event.tier,
                    "ends_on": event.ends_on,
                    "started_at": at,
                    "seq": recorded.position,
                    **common,
                },
            )
            return
        case AlliancePhaseChanged(to_phase=to):
            values = {"phase": to}
        case AllianceRenewed(ends_on=ends_on):
            values = {"ends_on": ends_on}
        case AllianceExitInitiated(effective_on=effective_on):
            values = {"status": "exiting", "exit_effective_on": effective_on}
        case AllianceTerminated():
            values = {"status": "terminated"}
        case PartnerSatisfactionRated(score=score):
            values = {"satisfaction_score": score}
        case _:
            values = {}
    partner_id = recorded.stream_id.removeprefix("alliance-")
    await conn.execute(_UPDATE_ALLIANCE, {**values, **common, "key": partner_id})


async def _project_integration(conn: AsyncConnection, recorded: RecordedEvent) -> None:
    integration_id = recorded.stream_id.removeprefix("integration-")
    row = (await conn.execute(INTEGRATION_ROW, {"integration_id": integration_id})).first()
    state = integration_from_row(row._mapping) if row is not None else None
    event = recorded.domain()
    new_state = evolve(state, event, recorded.occurred_at)
    values = integration_to_row(new_state)
    if state is None:
        await conn.execute(_INSERT_INTEGRATION, {**values, "seq": recorded.position})
    else:
        await conn.execute(_UPDATE_INTEGRATION, {**values, "key": integration_id})
    if isinstance(event, IntegrationHealthChanged | IntegrationWentLive):
        status = event.status if isinstance(event, IntegrationHealthChanged) else "unknown"
        await conn.execute(
            _INSERT_TRANSITION,
            {"position": recorded.position, "integration_id": integration_id, "status": status, "at": recorded.occurred_at},
        )


def integration_to_row(state: Integration) -> dict[str, Any]:
    """The `integrations` columns of `state`."""
    values = {name: getattr(state, name) for name in _INTEGRATION_FIELDS}
    values["integration_id"] = values.pop("id")
    return values


def integration_from_row(row: Any) -> Integration:
    """The aggregate state kept in an `integrations` row."""
    values = {name: row[name] for name in _INTEGRATION_FIELDS if name != "id"}
    return Integration(id=row["integration_id"], **values)
