"""Tier 1: the alliance aggregate's rules, without a database."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from events.catalog import (
    AllianceExitInitiated,
    AlliancePhaseChanged,
    AllianceRenewed,
    AllianceStarted,
    AllianceTerminated,
    DomainEvent,
    PartnerSatisfactionRated,
)
from services.lifecycle.alliances.domain import (
    PHASES,
    Alliance,
    ChangePhase,
    Command,
    InitiateExit,
    RateSatisfaction,
    Renew,
    Start,
    Terminate,
    decide,
    evolve,
)
from services.lifecycle.errors import Conflict, Invalid

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def run(state: Alliance | None, command: Command, at: datetime = T0) -> tuple[Alliance, list[DomainEvent]]:
    events = decide(state, command)
    for event in events:
        state = evolve(state, event, at)
    assert state is not None
    return state, events


def started(ends_on: date | None = date(2027, 3, 1)) -> Alliance:
    state, _ = run(None, Start("ptn_1", tier="strategic", ends_on=ends_on))
    return state


def exiting(notice_days: int = 30) -> Alliance:
    state, _ = run(started(), InitiateExit("strategy changed", notice_days, T0), T0)
    return state


def test_start_begins_in_initiation() -> None:
    state, events = run(None, Start("ptn_1", tier="innovation"))
    assert events == [AllianceStarted(partner_id="ptn_1", tier="innovation")]
    assert (state.phase, state.status, state.version, state.next_phase) == ("initiation", "active", 1, "integration")


def test_start_twice_is_a_conflict() -> None:
    with pytest.raises(Conflict):
        decide(started(), Start("ptn_1"))


def test_phases_advance_one_step_at_a_time_to_maturity() -> None:
    state = started()
    for current, nxt in itertools.pairwise(PHASES):
        state, events = run(state, ChangePhase(nxt))
        assert events == [AlliancePhaseChanged(partner_id="ptn_1", from_phase=current, to_phase=nxt)]
    assert state.phase == "maturity" and state.next_phase is None
    with pytest.raises(Conflict) as info:
        decide(state, ChangePhase("maturity"))
    assert info.value.allowed == []


@pytest.mark.parametrize(
    ("reached", "to"),
    [
        ("launch", "integration"),  # backwards
        ("launch", "initiation"),  # far backwards
        ("launch", "launch"),  # the same phase
        ("initiation", "launch"),  # skipping a phase
    ],
)
def test_phase_moves_that_are_not_the_next_step_are_refused(reached: str, to: str) -> None:
    state = started()
    while state.phase != reached:
        state, _ = run(state, ChangePhase(state.next_phase))  # type: ignore[arg-type]
    with pytest.raises(Conflict) as info:
        decide(state, ChangePhase(to))  # type: ignore[arg-type]
    assert info.value.state == reached
    assert info.value.allowed == [state.next_phase]


def test_renewal_needs_a_later_end_date() -> None:
    state = started(ends_on=date(2027, 3, 1))
    with pytest.raises(Invalid) as info:
        decide(state, Renew(date(2027, 3, 1), T0))
    assert info.value.field == "ends_on"
    state, events = run(state, Renew(date(2028, 3, 1), T0))
    assert events == [AllianceRenewed(partner_id="ptn_1", ends_on=date(2028, 3, 1), previous_ends_on=date(2027, 3, 1))]
    assert (state.ends_on, state.renewals) == (date(2028, 3, 1), 1)


def test_renewal_without_an_end_date_must_lie_in_the_future() -> None:
    with pytest.raises(Invalid):
        decide(started(ends_on=None), Renew(T0.date(), T0))
    _, events = run(started(ends_on=None), Renew(T0.date() + timedelta(days=1), T0))
    assert len(events) == 1


def test_exit_fixes_the_effective_day_from_the_notice() -> None:
    state, events = run(started(), InitiateExit("budget cut", 30, T0))
    assert events == [
        AllianceExitInitiated(partner_id="ptn_1", reason="budget cut", notice_days=30, effective_on=date(2026, 3, 31))
    ]
    assert state.status == "exiting"
    assert state.allowed() == ["terminate", "satisfaction"]


@pytest.mark.parametrize(
    "command",
    [ChangePhase("integration"), Renew(date(2030, 1, 1), T0), InitiateExit("again", 1, T0)],
    ids=["phase", "renewal", "second-exit"],
)
def test_an_exiting_alliance_refuses_phase_renewal_and_a_second_exit(command: Command) -> None:
    with pytest.raises(Conflict) as info:
        decide(exiting(), command)
    assert info.value.state == "exiting"


def test_terminate_before_the_notice_ends_is_refused() -> None:
    state = exiting(30)
    with pytest.raises(Conflict) as info:
        decide(state, Terminate(T0 + timedelta(days=29)))
    assert "2026-03-31" in info.value.detail


def test_terminate_once_the_notice_ended() -> None:
    state, events = run(exiting(30), Terminate(T0 + timedelta(days=30)))
    assert events == [AllianceTerminated(partner_id="ptn_1", reason="strategy changed", forced=False)]
    assert state.status == "terminated" and state.allowed() == []


def test_forced_termination_needs_a_reason_and_is_marked_forced() -> None:
    with pytest.raises(Invalid):
        decide(exiting(30), Terminate(T0, force=True))
    _, events = run(exiting(30), Terminate(T0, force=True, reason="breach of contract"))
    assert events == [AllianceTerminated(partner_id="ptn_1", reason="breach of contract", forced=True)]


def test_terminate_without_an_exit_is_refused_even_when_forced() -> None:
    with pytest.raises(Conflict):
        decide(started(), Terminate(T0, force=True, reason="x"))


def test_a_terminated_alliance_accepts_nothing() -> None:
    state, _ = run(exiting(0), Terminate(T0))
    for command in (ChangePhase("integration"), RateSatisfaction(9), Renew(date(2030, 1, 1), T0)):
        with pytest.raises(Conflict):
            decide(state, command)


@pytest.mark.parametrize("score", [-0.1, 10.01, 11])
def test_satisfaction_outside_0_to_10_is_invalid(score: float) -> None:
    with pytest.raises(Invalid) as info:
        decide(started(), RateSatisfaction(score))
    assert info.value.field == "score"


def test_satisfaction_is_recorded_with_who_rated() -> None:
    state, events = run(started(), RateSatisfaction(8.5, "good support", "ops-1"))
    assert events == [PartnerSatisfactionRated(partner_id="ptn_1", score=8.5, comment="good support", rated_by="ops-1")]
    assert state.satisfaction is not None and state.satisfaction.score == 8.5


def test_commands_before_the_alliance_started_are_conflicts() -> None:
    with pytest.raises(Conflict) as info:
        decide(None, ChangePhase("integration"))
    assert info.value.state == "not_started"
