"""The Partner aggregate (stream `partner-<id>`): pure `decide` and `evolve`, no I/O.

applied → assessed → in_due_diligence → awaiting_approval → approved → agreement_signed
→ active; a failed due-diligence phase or any reject ends in `rejected`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any, Literal, get_args

from events.catalog import (
    AgreementType,
    DomainEvent,
    DueDiligencePhase,
    PartnerActivated,
    PartnerAgreementSigned,
    PartnerApplied,
    PartnerApprovalRecorded,
    PartnerApproved,
    PartnerAssessed,
    PartnerDueDiligenceCompleted,
    PartnerRejected,
    SlaTerms,
    Tier,
)
from services.onboarding.scoring import CURRENT_SCORING_MODEL, InvalidScores, ScoringModel

Status = Literal[
    "applied",
    "assessed",
    "in_due_diligence",
    "awaiting_approval",
    "approved",
    "rejected",
    "agreement_signed",
    "active",
]
STATUSES: tuple[Status, ...] = get_args(Status)
CommandName = Literal["apply", "assess", "record_due_diligence", "approve", "reject", "sign_agreement", "activate"]
PHASES: tuple[DueDiligencePhase, ...] = get_args(DueDiligencePhase)
STRATEGIC_QUORUM = 2
DEFAULT_QUORUM = 1

_ALLOWED: dict[Status, tuple[CommandName, ...]] = {
    "applied": ("assess",),
    # Re-assessment is allowed until due diligence starts; the last assessment counts.
    "assessed": ("assess", "record_due_diligence"),
    "in_due_diligence": ("record_due_diligence",),
    "awaiting_approval": ("approve", "reject"),
    "approved": ("sign_agreement",),
    "agreement_signed": ("activate",),
    "active": (),
    "rejected": (),
}


# --- state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assessment:
    scores: Mapping[str, float]
    weighted_score: float
    recommended_tier: Tier
    scoring_model: str


@dataclass(frozen=True, slots=True)
class DueDiligenceResult:
    phase: DueDiligencePhase
    passed: bool
    findings: str


@dataclass(frozen=True, slots=True)
class Approval:
    approver: str
    decision: Literal["approve", "reject"]
    comment: str


@dataclass(frozen=True, slots=True)
class Agreement:
    agreement_type: AgreementType
    starts_on: date
    ends_on: date
    sla: SlaTerms


@dataclass(frozen=True, slots=True)
class Partner:
    """A partner's onboarding as rebuilt from its events."""

    id: str
    name: str
    website: str
    category: str
    contact_email: str
    status: Status = "applied"
    version: int = 1
    assessment: Assessment | None = None
    due_diligence: tuple[DueDiligenceResult, ...] = ()
    approvals: tuple[Approval, ...] = ()
    tier: Tier | None = None
    agreement: Agreement | None = None
    rejection_reason: str | None = None
    rejected_by: str | None = None

    @property
    def approvers(self) -> tuple[str, ...]:
        """Distinct clients that approved, in the order they first did."""
        return tuple(dict.fromkeys(a.approver for a in self.approvals if a.decision == "approve"))

    @property
    def approvals_required(self) -> int | None:
        """Distinct approvers the recommended tier needs (None before an assessment)."""
        if self.assessment is None:
            return None
        return STRATEGIC_QUORUM if self.assessment.recommended_tier == "strategic" else DEFAULT_QUORUM

    @property
    def next_phase(self) -> DueDiligencePhase | None:
        """The due-diligence phase to record next (None when all passed)."""
        done = len(self.due_diligence)
        return PHASES[done] if done < len(PHASES) else None

    @property
    def allowed(self) -> tuple[CommandName, ...]:
        """Commands that fit the current state."""
        if self.status == "awaiting_approval" and not self._approvable:
            return ("reject",)
        return _ALLOWED[self.status]

    @property
    def _approvable(self) -> bool:
        return self.assessment is not None and self.assessment.recommended_tier != "not_recommended"


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Apply:
    partner_id: str
    name: str
    website: str
    category: str
    contact_email: str


@dataclass(frozen=True, slots=True)
class Assess:
    scores: Mapping[str, Decimal | int | float | str]
    model: ScoringModel = CURRENT_SCORING_MODEL


@dataclass(frozen=True, slots=True)
class RecordDueDiligence:
    phase: DueDiligencePhase
    passed: bool
    findings: str = ""
    recorded_by: str | None = None


@dataclass(frozen=True, slots=True)
class RecordApproval:
    approver: str
    decision: Literal["approve", "reject"]
    comment: str = ""


@dataclass(frozen=True, slots=True)
class SignAgreement:
    agreement_type: AgreementType
    starts_on: date
    ends_on: date
    sla: SlaTerms = field(default_factory=SlaTerms)


@dataclass(frozen=True, slots=True)
class Activate:
    pass


Command = Apply | Assess | RecordDueDiligence | RecordApproval | SignAgreement | Activate


class CommandRejected(Exception):
    """The command does not fit the partner's current state (HTTP 409)."""

    def __init__(
        self,
        detail: str,
        *,
        current_state: Status | None,
        allowed: Iterable[CommandName],
        reason: str = "invalid-state-transition",
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.current_state = current_state
        self.allowed = tuple(allowed)
        self.reason = reason
        self.extensions = extensions


class InvalidCommand(ValueError):
    """The command's own data is invalid whatever the state (HTTP 422)."""


# --- decide ---------------------------------------------------------------------------------


def command_name(command: Command) -> CommandName:
    """The name a command is known by in `allowed` lists."""
    if isinstance(command, RecordApproval):
        return command.decision
    return _NAMES[type(command)]


_NAMES: dict[type, CommandName] = {
    Apply: "apply",
    Assess: "assess",
    RecordDueDiligence: "record_due_diligence",
    SignAgreement: "sign_agreement",
    Activate: "activate",
}


def decide(state: Partner | None, command: Command) -> list[DomainEvent]:
    """The events `command` causes in `state`; raises `CommandRejected` or `InvalidCommand`."""
    if isinstance(command, Apply):
        if state is not None:
            raise CommandRejected(
                f"partner {state.id!r} already exists", current_state=state.status, allowed=state.allowed
            )
        return [
            PartnerApplied(
                partner_id=command.partner_id,
                name=command.name,
                website=command.website,
                category=command.category,
                contact_email=command.contact_email,
            )
        ]
    if state is None:
        raise CommandRejected("the partner has not applied", current_state=None, allowed=("apply",))
    name = command_name(command)
    if name not in state.allowed:
        raise _not_now(state, name)
    if isinstance(command, Assess):
        return _assess(state, command)
    if isinstance(command, RecordDueDiligence):
        return _due_diligence(state, command)
    if isinstance(command, RecordApproval):
        return _approval(state, command)
    if isinstance(command, SignAgreement):
        return _agreement(state, command)
    assert state.agreement is not None and state.tier is not None
    return [PartnerActivated(partner_id=state.id, tier=state.tier, ends_on=state.agreement.ends_on)]


def _not_now(state: Partner, name: CommandName) -> CommandRejected:
    if name == "approve" and state.status == "awaiting_approval":
        return CommandRejected(
            "the assessment did not recommend a tier (weighted score "
            f"{state.assessment.weighted_score if state.assessment else '?'}); "
            "a not_recommended partner cannot be approved, only rejected",
            current_state=state.status,
            allowed=state.allowed,
            reason="not-recommended",
        )
    allowed = ", ".join(state.allowed) or "nothing (final state)"
    return CommandRejected(
        f"{name} is not possible while the partner is {state.status}; allowed next: {allowed}",
        current_state=state.status,
        allowed=state.allowed,
    )


def _assess(state: Partner, command: Assess) -> list[DomainEvent]:
    model = command.model
    try:
        scores = model.validated(command.scores)
    except InvalidScores as exc:
        raise InvalidCommand(str(exc)) from exc
    weighted = model.weighted_score(scores)
    return [
        PartnerAssessed(
            partner_id=state.id,
            scores={c: float(s) for c, s in scores.items()},
            weighted_score=float(weighted),
            recommended_tier=model.tier_for(weighted),
            scoring_model=model.name,
        )
    ]


def _due_diligence(state: Partner, command: RecordDueDiligence) -> list[DomainEvent]:
    expected = state.next_phase
    if command.phase not in PHASES:
        raise InvalidCommand(f"unknown due-diligence phase {command.phase!r}")
    if command.phase != expected:
        raise CommandRejected(
            f"due diligence runs {' → '.join(PHASES)}; the next phase is {expected}, not {command.phase}",
            current_state=state.status,
            allowed=state.allowed,
            reason="due-diligence-out-of-order",
            expected_phase=expected,
        )
    events: list[DomainEvent] = [
        PartnerDueDiligenceCompleted(
            partner_id=state.id, phase=command.phase, passed=command.passed, findings=command.findings
        )
    ]
    if not command.passed:
        reason = f"due diligence failed in {command.phase}"
        events.append(
            PartnerRejected(
                partner_id=state.id,
                reason=f"{reason}: {command.findings}" if command.findings else reason,
                rejected_by=command.recorded_by,
            )
        )
    return events


def _approval(state: Partner, command: RecordApproval) -> list[DomainEvent]:
    recorded = PartnerApprovalRecorded(
        partner_id=state.id, approver=command.approver, decision=command.decision, comment=command.comment
    )
    if command.decision == "reject":
        reason = f"rejected by {command.approver}"
        return [
            recorded,
            PartnerRejected(
                partner_id=state.id,
                reason=f"{reason}: {command.comment}" if command.comment else reason,
                rejected_by=command.approver,
            ),
        ]
    assert state.assessment is not None and state.approvals_required is not None
    approvers = tuple(dict.fromkeys((*state.approvers, command.approver)))
    if len(approvers) < state.approvals_required:
        return [recorded]
    return [
        recorded,
        PartnerApproved(partner_id=state.id, tier=state.assessment.recommended_tier, approvers=list(approvers)),
    ]


def _agreement(state: Partner, command: SignAgreement) -> list[DomainEvent]:
    if command.ends_on <= command.starts_on:
        raise InvalidCommand("ends_on must be after starts_on")
    return [
        PartnerAgreementSigned(
            partner_id=state.id,
            agreement_type=command.agreement_type,
            starts_on=command.starts_on,
            ends_on=command.ends_on,
            sla=command.sla,
        )
    ]


# --- evolve ---------------------------------------------------------------------------------


def evolve(state: Partner | None, event: DomainEvent) -> Partner:
    """The state after `event` (events are facts: no rule is checked here)."""
    if isinstance(event, PartnerApplied):
        return Partner(
            id=event.partner_id,
            name=event.name,
            website=event.website,
            category=event.category,
            contact_email=event.contact_email,
        )
    if state is None:
        raise ValueError(f"{event.type} before partner.applied")
    state = replace(state, version=state.version + 1)
    if isinstance(event, PartnerAssessed):
        assessment = Assessment(
            scores=dict(event.scores),
            weighted_score=event.weighted_score,
            recommended_tier=event.recommended_tier,
            scoring_model=event.scoring_model,
        )
        return replace(state, status="assessed", assessment=assessment)
    if isinstance(event, PartnerDueDiligenceCompleted):
        results = (*state.due_diligence, DueDiligenceResult(event.phase, event.passed, event.findings))
        status: Status = "awaiting_approval" if len(results) == len(PHASES) else "in_due_diligence"
        return replace(state, status=status, due_diligence=results)
    if isinstance(event, PartnerApprovalRecorded):
        approval = Approval(event.approver, event.decision, event.comment)
        return replace(state, approvals=(*state.approvals, approval))
    if isinstance(event, PartnerApproved):
        return replace(state, status="approved", tier=event.tier)
    if isinstance(event, PartnerRejected):
        return replace(state, status="rejected", rejection_reason=event.reason, rejected_by=event.rejected_by)
    if isinstance(event, PartnerAgreementSigned):
        agreement = Agreement(event.agreement_type, event.starts_on, event.ends_on, event.sla)
        return replace(state, status="agreement_signed", agreement=agreement)
    if isinstance(event, PartnerActivated):
        return replace(state, status="active", tier=event.tier)
    return state


def fold(events: Iterable[DomainEvent], state: Partner | None = None) -> Partner | None:
    """The state after `events`, starting from `state`."""
    for event in events:
        state = evolve(state, event)
    return state
