"""The alliance aggregate (pure): phases move forward one step at a time, then renewal or exit.

Phases follow seed 000 §5: initiation → integration → launch → optimization → maturity.
An exit (reason, notice days) fixes the day the alliance may be terminated; ops may
force termination earlier, with a reason. A terminated alliance accepts no command.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Literal

from events.catalog import (
    AllianceExitInitiated,
    AlliancePhase,
    AlliancePhaseChanged,
    AllianceRenewed,
    AllianceStarted,
    AllianceTerminated,
    DomainEvent,
    PartnerSatisfactionRated,
    Tier,
)
from services.lifecycle.errors import Conflict, Invalid

PHASES: tuple[AlliancePhase, ...] = ("initiation", "integration", "launch", "optimization", "maturity")
MAX_NOTICE_DAYS = 3650
MIN_SCORE, MAX_SCORE = 0.0, 10.0

AllianceStatus = Literal["active", "exiting", "terminated"]


def stream_of(partner_id: str) -> str:
    """The alliance stream of a partner."""
    return f"alliance-{partner_id}"


# --- state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exit:
    reason: str
    notice_days: int
    initiated_at: datetime
    effective_on: date


@dataclass(frozen=True, slots=True)
class Rating:
    score: float
    comment: str
    rated_by: str | None
    rated_at: datetime


@dataclass(frozen=True, slots=True)
class Termination:
    reason: str
    forced: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class Alliance:
    """An alliance as its events left it."""

    partner_id: str
    phase: AlliancePhase
    started_at: datetime
    tier: Tier | None = None
    ends_on: date | None = None
    renewals: int = 0
    exit: Exit | None = None
    termination: Termination | None = None
    satisfaction: Rating | None = None
    last_event_at: datetime | None = None
    version: int = 0

    @property
    def status(self) -> AllianceStatus:
        if self.termination is not None:
            return "terminated"
        return "exiting" if self.exit is not None else "active"

    @property
    def next_phase(self) -> AlliancePhase | None:
        index = PHASES.index(self.phase)
        return PHASES[index + 1] if index + 1 < len(PHASES) else None

    def allowed(self) -> list[str]:
        """The commands this alliance accepts now (named as in the API)."""
        if self.status == "terminated":
            return []
        if self.status == "exiting":
            return ["terminate", "satisfaction"]
        steps = [f"phase:{self.next_phase}"] if self.next_phase else []
        return [*steps, "renewal", "exit", "satisfaction"]


# --- commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    partner_id: str
    tier: Tier | None = None
    ends_on: date | None = None


@dataclass(frozen=True, slots=True)
class ChangePhase:
    to: AlliancePhase


@dataclass(frozen=True, slots=True)
class Renew:
    ends_on: date
    at: datetime


@dataclass(frozen=True, slots=True)
class InitiateExit:
    reason: str
    notice_days: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Terminate:
    at: datetime
    force: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RateSatisfaction:
    score: float
    comment: str = ""
    rated_by: str | None = None


Command = Start | ChangePhase | Renew | InitiateExit | Terminate | RateSatisfaction


# --- decide / evolve --------------------------------------------------------------------


def decide(state: Alliance | None, command: Command) -> list[DomainEvent]:
    """The events `command` produces on `state`, or `Conflict` / `Invalid`."""
    if isinstance(command, Start):
        if state is not None:
            raise Conflict(
                f"the alliance of {state.partner_id} already started", state=state.status, allowed=state.allowed()
            )
        return [AllianceStarted(partner_id=command.partner_id, tier=command.tier, ends_on=command.ends_on)]
    if state is None:
        raise Conflict("the alliance has not started", state="not_started", allowed=[])
    if state.status == "terminated":
        raise Conflict("the alliance is terminated and accepts no command", state="terminated", allowed=[])
    match command:
        case ChangePhase(to=to):
            return _change_phase(state, to)
        case Renew():
            return _renew(state, command)
        case InitiateExit():
            return _initiate_exit(state, command)
        case Terminate():
            return _terminate(state, command)
        case RateSatisfaction():
            return _rate(state, command)
    raise TypeError(f"unknown command {command!r}")  # pragma: no cover


def _change_phase(state: Alliance, to: AlliancePhase) -> list[DomainEvent]:
    if state.status == "exiting":
        raise Conflict(
            f"the alliance is exiting (effective {_effective(state)}); its phase no longer changes",
            state="exiting",
            allowed=state.allowed(),
        )
    if to == state.next_phase:
        return [AlliancePhaseChanged(partner_id=state.partner_id, from_phase=state.phase, to_phase=to)]
    nxt = state.next_phase
    if PHASES.index(to) <= PHASES.index(state.phase):
        why = f"phases only move forward; the alliance is in {state.phase}"
    else:
        why = f"phases advance one step at a time; the alliance is in {state.phase}"
    tail = f" and may move to {nxt}" if nxt else " (the last phase)"
    raise Conflict(why + tail, state=state.phase, allowed=[nxt] if nxt else [])


def _renew(state: Alliance, command: Renew) -> list[DomainEvent]:
    if state.status == "exiting":
        raise Conflict(
            "the alliance is exiting; it can no longer be renewed", state="exiting", allowed=state.allowed()
        )
    floor = state.ends_on or command.at.date()
    if command.ends_on <= floor:
        what = "the current end date" if state.ends_on else "today"
        raise Invalid(f"ends_on must be after {what} ({floor.isoformat()})", field="ends_on")
    return [AllianceRenewed(partner_id=state.partner_id, ends_on=command.ends_on, previous_ends_on=state.ends_on)]


def _initiate_exit(state: Alliance, command: InitiateExit) -> list[DomainEvent]:
    if state.exit is not None:
        raise Conflict(
            f"an exit is already under way (effective {_effective(state)})", state="exiting", allowed=state.allowed()
        )
    if not command.reason.strip():
        raise Invalid("reason must not be blank", field="reason")
    if not 0 <= command.notice_days <= MAX_NOTICE_DAYS:
        raise Invalid(f"notice_days must be 0-{MAX_NOTICE_DAYS}", field="notice_days")
    effective = command.at.date() + timedelta(days=command.notice_days)
    return [
        AllianceExitInitiated(
            partner_id=state.partner_id,
            reason=command.reason,
            notice_days=command.notice_days,
            effective_on=effective,
        )
    ]


def _terminate(state: Alliance, command: Terminate) -> list[DomainEvent]:
    if state.exit is None:
        raise Conflict(
            "an exit must be initiated (reason, notice days) before the alliance is terminated",
            state=state.status,
            allowed=state.allowed(),
        )
    early = command.at.date() < state.exit.effective_on
    if early and not command.force:
        raise Conflict(
            f"the notice period runs until {state.exit.effective_on.isoformat()}; "
            "terminate on or after that day, or force it with a reason (ops)",
            state="exiting",
            allowed=["terminate:force", "satisfaction"],
        )
    if early and not command.reason.strip():
        raise Invalid("a forced termination needs a reason", field="reason")
    reason = command.reason.strip() or state.exit.reason
    return [AllianceTerminated(partner_id=state.partner_id, reason=reason, forced=early)]


def _rate(state: Alliance, command: RateSatisfaction) -> list[DomainEvent]:
    if not MIN_SCORE <= command.score <= MAX_SCORE:
        raise Invalid(f"score must be {MIN_SCORE:g}-{MAX_SCORE:g}", field="score")
    return [
        PartnerSatisfactionRated(
            partner_id=state.partner_id, score=command.score, comment=command.comment, rated_by=command.rated_by
        )
    ]


def _effective(state: Alliance) -> str:
    return state.exit.effective_on.isoformat() if state.exit else "?"


def evolve(state: Alliance | None, event: DomainEvent, at: datetime) -> Alliance:
    """`state` after `event`, which occurred at `at`."""
    if isinstance(event, AllianceStarted):
        return Alliance(
            partner_id=event.partner_id,
            phase=event.phase,
            started_at=at,
            tier=event.tier,
            ends_on=event.ends_on,
            last_event_at=at,
            version=1,
        )
    if state is None:
        raise ValueError(f"{event.type} before alliance.started")
    state = replace(state, last_event_at=at, version=state.version + 1)
    match event:
        case AlliancePhaseChanged(to_phase=to):
            return replace(state, phase=to)
        case AllianceRenewed(ends_on=ends_on):
            return replace(state, ends_on=ends_on, renewals=state.renewals + 1)
        case AllianceExitInitiated():
            return replace(state, exit=Exit(event.reason, event.notice_days, at, event.effective_on))
        case AllianceTerminated():
            return replace(state, termination=Termination(event.reason, event.forced, at))
        case PartnerSatisfactionRated():
            return replace(state, satisfaction=Rating(event.score, event.comment, event.rated_by, at))
    return state


def fold(events: list[tuple[DomainEvent, datetime]]) -> Alliance | None:
    """The alliance built from its stream (None when it has not started)."""
    state: Alliance | None = None
    for event, at in events:
        state = evolve(state, event, at)
    return state
