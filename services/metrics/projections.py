"""The KPI projections: what each event changes in which read model (pure, no I/O).

A projection maps one recorded event to a list of changes: `Insert` of an event-level
fact (keyed by the event's position) or `Merge` into a per-partner / per-integration row.
Merges are commutative where facts come from different topics (`earliest` keeps the
minimum), so the answer does not depend on the order in which topics are consumed;
`set` is used only for facts of one stream, which arrive in stream order.
The same changes are applied one event at a time by the live path and in bulk by a
rebuild (`services/metrics/writer.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table

from events import catalog as ev
from events.envelope import RecordedEvent
from services.metrics import tables as t
from services.metrics.kpis import DEFAULT_UPTIME_TARGET_PCT, day_of

SOURCES: tuple[str, ...] = ("onboarding", "lifecycle", "gateway")
LIVE_SUBSCRIPTION = "metrics.projections"
"""The one subscription that feeds every projection live (see consumers.py for why one)."""


# Insert and Merge are built for every event a rebuild replays: slotted but not frozen,
# as a frozen dataclass pays one object.__setattr__ per field (see RecordedEvent).
@dataclass(slots=True)
class Insert:
    """A new event-level fact row."""

    table: Table
    values: dict[str, Any]


@dataclass(slots=True)
class Merge:
    """An upsert into a keyed row: `set` overwrites, `earliest` keeps the minimum non-null."""

    table: Table
    key: dict[str, Any]
    set: dict[str, Any] = field(default_factory=dict)
    earliest: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)


Change = Insert | Merge


def merged(existing: dict[str, Any] | None, change: Merge) -> dict[str, Any]:
    """The row after applying `change` to `existing` (None: the row does not exist yet)."""
    row = dict(existing) if existing is not None else {**change.defaults, **change.key}
    row.update(change.set)
    for column, value in change.earliest.items():
        if value is None:
            continue
        current = row.get(column)
        if current is None or value < current:
            row[column] = value
    return row


@dataclass(frozen=True, slots=True)
class Projection:
    """A named projection: its read-model tables and its event → changes function."""

    name: str
    tables: tuple[Table, ...]
    handles: frozenset[str]
    project: Callable[[RecordedEvent], list[Change]]

    @property
    def subscription(self) -> str:
        """The name of the live subscription that feeds it (and of its checkpoints)."""
        return LIVE_SUBSCRIPTION

    def changes(self, event: RecordedEvent) -> list[Change]:
        """What `event` changes in this projection (nothing for types it ignores)."""
        if event.type not in self.handles:
            return []
        return self.project(event)


def payload(event: RecordedEvent) -> dict[str, Any]:
    """The event's data in the catalog's current shape.

    Projections read the payload as a dict rather than building the pydantic model: the
    store validated it against the catalog when it was appended, and skipping a second
    validation per event is what lets a rebuild replay tens of thousands of events a
    second. Payloads stored at an older schema version are upcast first.
    """
    if event.schema_version == ev.event_class(event.type).schema_version:
        return event.data
    return ev.upcast(event.type, event.schema_version, dict(event.data))


def _fact(event: RecordedEvent, **values: Any) -> dict[str, Any]:
    return {"position": event.position, "occurred_at": event.occurred_at, **values}


# --- api_availability ----------------------------------------------------------------------


def _api_availability(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    total = int(e["total"])
    return [
        Insert(
            t.api_traffic,
            _fact(
                event,
                partner_id=e.get("partner_id"),
                route_group=e["route_group"],
                day=day_of(event.occurred_at),
                total=total,
                server_errors=min(int(e["server_errors"]), total),
                client_errors=int(e["client_errors"]),
            ),
        )
    ]


# --- integration_uptime --------------------------------------------------------------------

_REGISTERED = ev.IntegrationRegistered.type
_WENT_LIVE = ev.IntegrationWentLive.type
_RETIRED = ev.IntegrationRetired.type


def _integration_uptime(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    table = t.uptime_integrations
    key = {"integration_id": e["integration_id"]}
    if event.type == _REGISTERED:
        return [
            Merge(
                table,
                key,
                set={
                    "partner_id": e["partner_id"],
                    "sla_target_pct": float(e.get("sla_uptime_target_pct", DEFAULT_UPTIME_TARGET_PCT)),
                },
            )
        ]
    defaults = {"partner_id": e["partner_id"], "sla_target_pct": DEFAULT_UPTIME_TARGET_PCT}
    if event.type == _WENT_LIVE:
        return [Merge(table, key, earliest={"went_live_at": event.occurred_at}, defaults=defaults)]
    if event.type == _RETIRED:
        return [Merge(table, key, earliest={"retired_at": event.occurred_at}, defaults=defaults)]
    return [
        Insert(
            t.uptime_transitions,
            _fact(event, integration_id=e["integration_id"], partner_id=e["partner_id"], status=e["status"]),
        )
    ]


# --- integration_success_rate --------------------------------------------------------------


def _integration_success_rate(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    return [
        Insert(
            t.integration_attempts,
            _fact(
                event,
                partner_id=e["partner_id"],
                integration_id=e["integration_id"],
                day=day_of(event.occurred_at),
                succeeded=e["outcome"] == "succeeded",
            ),
        )
    ]


# --- time_to_integration_days --------------------------------------------------------------


def _time_to_integration(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    # Two topics, any order: each fact is kept on its own; the KPI is computed on read.
    column = "agreement_signed_at" if event.type == ev.PartnerAgreementSigned.type else "first_live_at"
    return [Merge(t.tti_partners, {"partner_id": e["partner_id"]}, earliest={column: event.occurred_at})]


# --- time_to_partnership_days --------------------------------------------------------------


def _time_to_partnership(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    column = "applied_at" if event.type == ev.PartnerApplied.type else "activated_at"
    return [Merge(t.ttp_partners, {"partner_id": e["partner_id"]}, earliest={column: event.occurred_at})]


# --- partner_satisfaction ------------------------------------------------------------------


def _partner_satisfaction(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    return [Insert(t.satisfaction_ratings, _fact(event, partner_id=e["partner_id"], score=float(e["score"])))]


# --- partner_retention ---------------------------------------------------------------------


def _partner_retention(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    renewed = event.type == ev.AllianceRenewed.type
    return [
        Insert(
            t.retention_outcomes,
            _fact(event, partner_id=e["partner_id"], day=day_of(event.occurred_at), renewed=renewed),
        )
    ]


# --- webhook_delivery_success --------------------------------------------------------------


def _webhook_delivery_success(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    delivered = event.type == ev.WebhookMessageDelivered.type
    latency = e.get("latency_ms") if delivered else None
    return [
        Insert(
            t.webhook_outcomes,
            _fact(
                event,
                partner_id=e["partner_id"],
                day=day_of(event.occurred_at),
                delivered=delivered,
                latency_ms=float(latency) if latency is not None else None,
            ),
        )
    ]


# --- partner_funnel ------------------------------------------------------------------------

_FUNNEL_STATUS: dict[str, str] = {
    ev.PartnerApplied.type: "applied",
    ev.PartnerAssessed.type: "assessed",
    ev.PartnerDueDiligenceCompleted.type: "due_diligence",
    ev.PartnerApproved.type: "approved",
    ev.PartnerRejected.type: "rejected",
    ev.PartnerAgreementSigned.type: "signed",
    ev.PartnerActivated.type: "active",
}


def _partner_funnel(event: RecordedEvent) -> list[Change]:
    e = payload(event)
    key = {"partner_id": e["partner_id"]}
    if event.type == ev.AllianceTerminated.type:
        return [Merge(t.funnel_partners, key, earliest={"terminated_at": event.occurred_at})]
    values: dict[str, Any] = {"status": _FUNNEL_STATUS[event.type]}
    if event.type == ev.PartnerApplied.type:
        values["name"] = e["name"]
    return [Merge(t.funnel_partners, key, set=values)]


def _types(*classes: type[ev.DomainEvent]) -> frozenset[str]:
    return frozenset(cls.type for cls in classes)


PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        Projection(
            "api_availability", (t.api_traffic,), _types(ev.GatewayTrafficWindowClosed), _api_availability
        ),
        Projection(
            "integration_uptime",
            (t.uptime_integrations, t.uptime_transitions),
            _types(ev.IntegrationRegistered, ev.IntegrationWentLive, ev.IntegrationRetired, ev.IntegrationHealthChanged),
            _integration_uptime,
        ),
        Projection(
            "integration_success_rate",
            (t.integration_attempts,),
            _types(ev.IntegrationAttemptRecorded),
            _integration_success_rate,
        ),
        Projection(
            "time_to_integration_days",
            (t.tti_partners,),
            _types(ev.PartnerAgreementSigned, ev.IntegrationWentLive),
            _time_to_integration,
        ),
        Projection(
            "time_to_partnership_days",
            (t.ttp_partners,),
            _types(ev.PartnerApplied, ev.PartnerActivated),
            _time_to_partnership,
        ),
        Projection(
            "partner_satisfaction",
            (t.satisfaction_ratings,),
            _types(ev.PartnerSatisfactionRated),
            _partner_satisfaction,
        ),
        Projection(
            "partner_retention",
            (t.retention_outcomes,),
            _types(ev.AllianceRenewed, ev.AllianceTerminated),
            _partner_retention,
        ),
        Projection(
            "webhook_delivery_success",
            (t.webhook_outcomes,),
            _types(ev.WebhookMessageDelivered, ev.WebhookMessageFailed),
            _webhook_delivery_success,
        ),
        Projection(
            "partner_funnel",
            (t.funnel_partners,),
            frozenset(_FUNNEL_STATUS) | _types(ev.AllianceTerminated),
            _partner_funnel,
        ),
    )
}


def projection(name: str) -> Projection:
    """The projection called `name` (KeyError when unknown)."""
    return PROJECTIONS[name]
