"""Tier 1: what each event changes in the read models (pure), and order independence."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from events import catalog as ev
from events.envelope import RecordedEvent
from services.metrics import tables as t
from services.metrics.projections import PROJECTIONS, Insert, Merge, merged, payload

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def recorded(event: ev.DomainEvent, *, position: int, day: float) -> RecordedEvent:
    at = T0 + timedelta(days=day)
    return RecordedEvent(
        position=position,
        event_id=str(uuid.uuid4()),
        source=event.source,
        stream_id=f"s-{event.partner_id}",
        stream_version=position,
        type=event.type,
        schema_version=event.schema_version,
        data=event.payload(),
        partition_key=event.partner_id or "",
        occurred_at=at,
        recorded_at=at,
    )


def signed(partner: str, *, position: int, day: float) -> RecordedEvent:
    return recorded(
        ev.PartnerAgreementSigned(
            partner_id=partner,
            agreement_type="platform_integration",
            starts_on=date(2026, 1, 1),
            ends_on=date(2027, 1, 1),
            sla=ev.SlaTerms(),
        ),
        position=position,
        day=day,
    )


def live(partner: str, integration: str, *, position: int, day: float) -> RecordedEvent:
    return recorded(ev.IntegrationWentLive(partner_id=partner, integration_id=integration), position=position, day=day)


def fold(changes: list[Merge]) -> dict[tuple[object, ...], dict[str, object]]:
    rows: dict[tuple[object, ...], dict[str, object]] = {}
    for change in changes:
        key = tuple(change.key.values())
        rows[key] = merged(rows.get(key), change)
    return rows


def test_every_kpi_has_a_projection_and_the_funnel_too() -> None:
    from services.metrics.kpis import KPIS

    assert set(KPIS) | {"partner_funnel"} == set(PROJECTIONS)
    for projection in PROJECTIONS.values():
        assert projection.subscription == "metrics.projections"


def test_projection_ignores_types_it_does_not_handle() -> None:
    event = signed("p1", position=1, day=0)
    assert PROJECTIONS["api_availability"].changes(event) == []
    assert PROJECTIONS["partner_satisfaction"].changes(event) == []


def test_time_to_integration_keeps_both_facts_in_any_order() -> None:
    projection = PROJECTIONS["time_to_integration_days"]
    events = [
        signed("p1", position=3, day=0),
        live("p1", "i1", position=10, day=45),
        live("p1", "i2", position=12, day=50),
    ]
    results = []
    for order in itertools.permutations(events):
        changes = [c for e in order for c in projection.changes(e)]
        assert all(isinstance(c, Merge) for c in changes)
        results.append(fold(changes))  # type: ignore[arg-type]
    assert all(r == results[0] for r in results)
    row = results[0][("p1",)]
    assert row["agreement_signed_at"] == T0
    assert row["first_live_at"] == T0 + timedelta(days=45)


def test_merge_rules() -> None:
    change = Merge(t.funnel_partners, {"partner_id": "p"}, set={"status": "applied"}, earliest={"terminated_at": None})
    row = merged(None, change)
    assert row == {"partner_id": "p", "status": "applied"}
    later = Merge(t.funnel_partners, {"partner_id": "p"}, set={"status": "active"})
    assert merged(row, later)["status"] == "active"
    first = Merge(t.ttp_partners, {"partner_id": "p"}, earliest={"applied_at": T0 + timedelta(days=2)})
    earlier = Merge(t.ttp_partners, {"partner_id": "p"}, earliest={"applied_at": T0})
    assert merged(merged(None, first), earlier)["applied_at"] == T0
    assert merged(merged(None, earlier), first)["applied_at"] == T0


def test_facts_carry_position_time_and_day() -> None:
    event = recorded(
        ev.IntegrationAttemptRecorded(partner_id="p1", integration_id="i1", outcome="failed"), position=7, day=2.5
    )
    (change,) = PROJECTIONS["integration_success_rate"].changes(event)
    assert isinstance(change, Insert)
    assert change.values == {
        "position": 7,
        "occurred_at": T0 + timedelta(days=2.5),
        "partner_id": "p1",
        "integration_id": "i1",
        "day": "2026-01-03",
        "succeeded": False,
    }


def test_funnel_follows_onboarding_and_termination_wins() -> None:
    projection = PROJECTIONS["partner_funnel"]
    applied = recorded(
        ev.PartnerApplied(partner_id="p1", name="Acme", website="https://acme.test", category="ai", contact_email="a@acme.test"),
        position=1,
        day=0,
    )
    activated = recorded(ev.PartnerActivated(partner_id="p1", tier="strategic"), position=5, day=10)
    terminated = recorded(ev.AllianceTerminated(partner_id="p1", reason="done"), position=2, day=300)
    changes = [c for e in (applied, terminated, activated) for c in projection.changes(e)]
    row = fold(changes)[("p1",)]  # type: ignore[arg-type]
    assert row["name"] == "Acme"
    assert row["status"] == "active"
    assert row["terminated_at"] == T0 + timedelta(days=300)


def test_payloads_stored_at_an_older_schema_version_are_upcast(monkeypatch: pytest.MonkeyPatch) -> None:
    # A v0 attempt said "ok": true; the v1 shape says outcome.
    monkeypatch.setitem(
        ev.UPCASTERS,
        ("integration.attempt_recorded", 0),
        lambda d: {k: v for k, v in d.items() if k != "ok"} | {"outcome": "succeeded" if d["ok"] else "failed"},
    )
    old = recorded(ev.IntegrationAttemptRecorded(partner_id="p1", integration_id="i1", outcome="failed"), position=3, day=1)
    stored = RecordedEvent(**{**{f: getattr(old, f) for f in (
        "position", "event_id", "source", "stream_id", "stream_version", "type", "partition_key", "occurred_at", "recorded_at"
    )}, "schema_version": 0, "data": {"partner_id": "p1", "integration_id": "i1", "ok": True}})
    assert payload(stored)["outcome"] == "succeeded"
    (change,) = PROJECTIONS["integration_success_rate"].changes(stored)
    assert isinstance(change, Insert)
    assert change.values["succeeded"] is True
