"""Tier 1: the integration aggregate and rolling uptime, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.catalog import DomainEvent, IntegrationHealthChanged, SlaBreached, SlaRestored
from services.lifecycle.errors import Conflict, Invalid
from services.lifecycle.integrations.domain import (
    Command,
    EvaluateSla,
    GoLive,
    Integration,
    ObserveHealth,
    RecordAttempt,
    Register,
    Retire,
    checked_health_url,
    decide,
    evolve,
    new_integration_id,
)
from services.lifecycle.integrations.uptime import rolling_uptime

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def run(state: Integration | None, command: Command) -> tuple[Integration, list[DomainEvent]]:
    events = decide(state, command)
    for event in events:
        state = evolve(state, event, T0)
    assert state is not None
    return state, events


def registered(health_url: str | None = "https://api.example.com/health") -> Integration:
    state, _ = run(None, Register("int_1", "ptn_1", "rest_api", "Orders API", health_url, 99.5))
    return state


def live() -> Integration:
    state, _ = run(registered(), RecordAttempt("succeeded"))
    state, _ = run(state, GoLive())
    return state


def test_ids_are_opaque_and_random() -> None:
    ids = {new_integration_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("int_") and len(i) == 28 for i in ids)


def test_going_live_needs_a_succeeded_attempt() -> None:
    state, _ = run(registered(), RecordAttempt("failed", "timeout", 1200))
    with pytest.raises(Conflict) as info:
        decide(state, GoLive())
    assert info.value.state == "registered"
    assert "go-live" not in info.value.allowed
    state, _ = run(state, RecordAttempt("succeeded"))
    assert "go-live" in state.allowed()
    state, _ = run(state, GoLive())
    assert (state.status, state.health, state.attempts_failed, state.attempts_succeeded) == ("live", "unknown", 1, 1)


def test_going_live_twice_is_a_conflict() -> None:
    with pytest.raises(Conflict):
        decide(live(), GoLive())


def test_retired_integrations_accept_no_command() -> None:
    state, _ = run(live(), Retire("replaced"))
    for command in (RecordAttempt("succeeded"), GoLive(), Retire()):
        with pytest.raises(Conflict):
            decide(state, command)
    assert decide(state, ObserveHealth("down")) == []


def test_health_is_recorded_on_transitions_only() -> None:
    state = live()
    state, events = run(state, ObserveHealth("up", "HTTP 200", 3.0))
    assert [type(e) for e in events] == [IntegrationHealthChanged]
    assert decide(state, ObserveHealth("up", "HTTP 200", 4.0)) == []
    state, events = run(state, ObserveHealth("down", "HTTP 503", 2.0))
    assert events[0].status == "down"  # type: ignore[attr-defined]
    assert decide(state, ObserveHealth("down", "HTTP 503")) == []


def test_health_is_ignored_before_going_live() -> None:
    assert decide(registered(), ObserveHealth("up")) == []


def test_sla_breach_and_restore_fire_on_crossings_only() -> None:
    state = live()  # target 99.5
    assert decide(state, EvaluateSla(99.9)) == []  # met, and was met: nothing
    state, events = run(state, EvaluateSla(99.0))
    assert isinstance(events[0], SlaBreached) and events[0].target_pct == 99.5
    assert decide(state, EvaluateSla(98.0)) == []  # still breached
    state, events = run(state, EvaluateSla(99.5))
    assert isinstance(events[0], SlaRestored)
    assert decide(state, EvaluateSla(None)) == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/health", "http"),
        ("file:///etc/passwd", "http"),
        ("javascript:alert(1)", "http"),
        ("example.com/health", "http"),
        ("http:///nohost", "host"),
        ("https://user:pw@example.com/h", "credentials"),
        ("https://example.com:99999/h", "valid"),
        ("https://example.com/a b", "whitespace"),
        ("https://example.com/" + "a" * 2048, "longer"),
    ],
    ids=["ftp", "file", "javascript", "no-scheme", "no-host", "credentials", "bad-port", "space", "too-long"],
)
def test_health_urls_that_are_not_plain_http_or_https_are_invalid(url: str, why: str) -> None:
    with pytest.raises(Invalid) as info:
        checked_health_url(url)
    assert info.value.field == "health_url"
    assert why in info.value.detail


@pytest.mark.parametrize("target", [0.0, -1.0, 100.1])
def test_sla_target_must_be_a_percentage(target: float) -> None:
    with pytest.raises(Invalid):
        decide(None, Register("int_1", "ptn_1", "sso", "SSO", None, target))


def h(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_uptime_counts_up_and_down_time_and_ignores_unknown() -> None:
    transitions = [(h(0), "unknown"), (h(10), "up"), (h(70), "down"), (h(76), "up")]
    uptime = rolling_uptime(transitions, window_start=h(-60), now=h(100))
    # up 60 + 24 minutes, down 6 minutes; the first 70 minutes were unknown.
    assert uptime == pytest.approx(100 * 84 / 90)


def test_uptime_uses_the_status_before_the_window_for_its_start() -> None:
    transitions = [(h(-120), "down"), (h(30), "up")]
    assert rolling_uptime(transitions, window_start=h(0), now=h(60)) == pytest.approx(50.0)


def test_uptime_without_known_time_is_none() -> None:
    assert rolling_uptime([(h(0), "unknown")], window_start=h(-10), now=h(10)) is None
    assert rolling_uptime([], window_start=h(-10), now=h(10)) is None
