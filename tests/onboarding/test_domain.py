"""The Partner aggregate: every transition, every forbidden one, quorum and versioned scoring."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from events.catalog import (
    DomainEvent,
    PartnerActivated,
    PartnerAgreementSigned,
    PartnerApplied,
    PartnerApprovalRecorded,
    PartnerApproved,
    PartnerAssessed,
    PartnerRejected,
    SlaTerms,
)
from services.onboarding.domain import (
    PHASES,
    STATUSES,
    Activate,
    Apply,
    Assess,
    Command,
    CommandName,
    CommandRejected,
    InvalidCommand,
    Partner,
    RecordApproval,
    RecordDueDiligence,
    SignAgreement,
    Status,
    decide,
    evolve,
    fold,
)
from services.onboarding.scoring import ASSESSMENT_MATRIX_V1, CRITERIA, ScoringModel

PID = "ptn_aaaaaaaaaaaaaaaaaaaa"
STRATEGIC = dict.fromkeys(CRITERIA, 9)
INNOVATION = dict.fromkeys(CRITERIA, 7)
NOT_RECOMMENDED = dict.fromkeys(CRITERIA, 3)


def run(state: Partner | None, *commands: Command) -> Partner:
    for command in commands:
        state = fold(decide(state, command), state)
    assert state is not None
    return state


def applied() -> Partner:
    return run(None, Apply(PID, "Acme", "https://acme.example.com/", "ai_ml", "alliances@acme.example.com"))


def assessed(scores: dict[str, int] = INNOVATION) -> Partner:
    return run(applied(), Assess(scores))


def in_due_diligence(scores: dict[str, int] = INNOVATION) -> Partner:
    return run(assessed(scores), RecordDueDiligence("initial_screening", True))


def awaiting_approval(scores: dict[str, int] = INNOVATION) -> Partner:
    return run(assessed(scores), *(RecordDueDiligence(phase, True) for phase in PHASES))


def approved(scores: dict[str, int] = INNOVATION) -> Partner:
    state = run(awaiting_approval(scores), RecordApproval("ops-1", "approve"))
    if state.status != "approved":
        state = run(state, RecordApproval("ops-2", "approve"))
    return state


AGREEMENT = SignAgreement("platform_integration", date(2026, 2, 1), date(2028, 1, 31))


def signed() -> Partner:
    return run(approved(), AGREEMENT)


def active() -> Partner:
    return run(signed(), Activate())


def rejected() -> Partner:
    return run(awaiting_approval(), RecordApproval("ops-1", "reject", "no fit"))


STATE_BUILDERS = {
    "applied": applied,
    "assessed": assessed,
    "in_due_diligence": in_due_diligence,
    "awaiting_approval": awaiting_approval,
    "approved": approved,
    "agreement_signed": signed,
    "active": active,
    "rejected": rejected,
}

COMMANDS: dict[CommandName, Command] = {
    "apply": Apply(PID, "Acme", "https://acme.example.com/", "ai_ml", "a@acme.example.com"),
    "assess": Assess(INNOVATION),
    "record_due_diligence": RecordDueDiligence("initial_screening", True),
    "approve": RecordApproval("ops-9", "approve"),
    "reject": RecordApproval("ops-9", "reject"),
    "sign_agreement": AGREEMENT,
    "activate": Activate(),
}

ALLOWED: dict[Status, set[CommandName]] = {
    "applied": {"assess"},
    "assessed": {"assess", "record_due_diligence"},
    "in_due_diligence": {"record_due_diligence"},
    "awaiting_approval": {"approve", "reject"},
    "approved": {"sign_agreement"},
    "agreement_signed": {"activate"},
    "active": set(),
    "rejected": set(),
}


def types(events: list[DomainEvent]) -> list[str]:
    return [e.type for e in events]


def test_every_status_has_a_builder_and_an_allowed_set() -> None:
    assert set(STATE_BUILDERS) == set(STATUSES) == set(ALLOWED)
    for status, build in STATE_BUILDERS.items():
        state = build()
        assert state.status == status
        assert set(state.allowed) == ALLOWED[status]


# --- allowed transitions ----------------------------------------------------------------------


def test_apply_starts_the_stream() -> None:
    events = decide(None, COMMANDS["apply"])
    assert events == [
        PartnerApplied(
            partner_id=PID, name="Acme", website="https://acme.example.com/", category="ai_ml",
            contact_email="a@acme.example.com",
        )
    ]
    state = fold(events)
    assert state is not None and state.status == "applied" and state.version == 1


def test_assess_records_score_tier_and_model() -> None:
    events = decide(applied(), Assess(STRATEGIC))
    assert events == [
        PartnerAssessed(
            partner_id=PID, scores={c: 9.0 for c in CRITERIA}, weighted_score=9.0,
            recommended_tier="strategic", scoring_model="assessment-matrix-v1",
        )
    ]
    state = fold(events, applied())
    assert state is not None and state.status == "assessed" and state.approvals_required == 2


def test_reassessment_before_due_diligence_replaces_the_assessment() -> None:
    state = run(assessed(STRATEGIC), Assess(INNOVATION))
    assert state.assessment is not None and state.assessment.recommended_tier == "innovation"
    assert state.approvals_required == 1


def test_due_diligence_phases_in_order_reach_awaiting_approval() -> None:
    state = assessed()
    statuses = []
    for phase in PHASES:
        events = decide(state, RecordDueDiligence(phase, True, "ok"))
        assert types(events) == ["partner.due_diligence_completed"]
        state = run(state, RecordDueDiligence(phase, True, "ok"))
        statuses.append(state.status)
    assert statuses == ["in_due_diligence", "in_due_diligence", "awaiting_approval"]
    assert state.next_phase is None


@pytest.mark.parametrize("phase", PHASES)
def test_a_failed_phase_rejects(phase: str) -> None:
    state = assessed()
    for earlier in PHASES[: PHASES.index(phase)]:
        state = run(state, RecordDueDiligence(earlier, True))
    events = decide(state, RecordDueDiligence(phase, False, "bad references", recorded_by="ops-1"))  # type: ignore[arg-type]
    assert events[1] == PartnerRejected(
        partner_id=PID, reason=f"due diligence failed in {phase}: bad references", rejected_by="ops-1"
    )
    assert fold(events, state).status == "rejected"  # type: ignore[union-attr]


def test_one_approval_approves_a_non_strategic_partner_with_its_recommended_tier() -> None:
    events = decide(awaiting_approval(), RecordApproval("ops-1", "approve", "good"))
    assert events == [
        PartnerApprovalRecorded(partner_id=PID, approver="ops-1", decision="approve", comment="good"),
        PartnerApproved(partner_id=PID, tier="innovation", approvers=["ops-1"]),
    ]


def test_strategic_needs_two_distinct_approvers() -> None:
    state = run(awaiting_approval(STRATEGIC), RecordApproval("ops-1", "approve"))
    assert state.status == "awaiting_approval"
    events = decide(state, RecordApproval("ops-2", "approve"))
    assert events[1] == PartnerApproved(partner_id=PID, tier="strategic", approvers=["ops-1", "ops-2"])


def test_the_same_approver_twice_counts_once() -> None:
    state = run(awaiting_approval(STRATEGIC), RecordApproval("ops-1", "approve"))
    events = decide(state, RecordApproval("ops-1", "approve", "again"))
    assert types(events) == ["partner.approval_recorded"]
    after = fold(events, state)
    assert after is not None and after.status == "awaiting_approval" and after.approvers == ("ops-1",)
    assert run(after, RecordApproval("ops-2", "approve")).status == "approved"


def test_one_reject_rejects_even_after_an_approval() -> None:
    state = run(awaiting_approval(STRATEGIC), RecordApproval("ops-1", "approve"))
    events = decide(state, RecordApproval("ops-2", "reject", "too risky"))
    assert events[1] == PartnerRejected(partner_id=PID, reason="rejected by ops-2: too risky", rejected_by="ops-2")
    assert fold(events, state).status == "rejected"  # type: ignore[union-attr]


def test_agreement_defaults_sla_terms_to_the_seed_targets() -> None:
    events = decide(approved(), AGREEMENT)
    assert events == [
        PartnerAgreementSigned(
            partner_id=PID, agreement_type="platform_integration", starts_on=date(2026, 2, 1),
            ends_on=date(2028, 1, 31), sla=SlaTerms(uptime_target_pct=99.9, integration_success_target_pct=95.0,
                                                   time_to_integration_target_days=60),
        )
    ]


def test_activation_carries_tier_and_agreement_end() -> None:
    assert decide(signed(), Activate()) == [
        PartnerActivated(partner_id=PID, tier="innovation", ends_on=date(2028, 1, 31))
    ]
    state = active()
    assert state.status == "active" and state.tier == "innovation" and state.version == 9


# --- forbidden transitions --------------------------------------------------------------------

FORBIDDEN = [
    (status, name)
    for status in STATUSES
    for name in COMMANDS
    if name not in ALLOWED[status]
]


@pytest.mark.parametrize(("status", "name"), FORBIDDEN, ids=[f"{s}-{n}" for s, n in FORBIDDEN])
def test_forbidden_transition_names_state_and_allowed(status: Status, name: CommandName) -> None:
    state = STATE_BUILDERS[status]()
    with pytest.raises(CommandRejected) as caught:
        decide(state, COMMANDS[name])
    assert caught.value.current_state == status
    assert set(caught.value.allowed) == ALLOWED[status]


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "apply"])
def test_commands_before_apply_are_rejected(name: CommandName) -> None:
    with pytest.raises(CommandRejected) as caught:
        decide(None, COMMANDS[name])
    assert caught.value.current_state is None and caught.value.allowed == ("apply",)


@pytest.mark.parametrize("phase", ["detailed_evaluation", "final_assessment"])
def test_due_diligence_out_of_order_names_the_expected_phase(phase: str) -> None:
    with pytest.raises(CommandRejected) as caught:
        decide(assessed(), RecordDueDiligence(phase, True))  # type: ignore[arg-type]
    assert caught.value.reason == "due-diligence-out-of-order"
    assert caught.value.extensions == {"expected_phase": "initial_screening"}


def test_a_passed_phase_cannot_be_recorded_again() -> None:
    with pytest.raises(CommandRejected, match="next phase is detailed_evaluation"):
        decide(in_due_diligence(), RecordDueDiligence("initial_screening", True))


def test_not_recommended_cannot_be_approved_only_rejected() -> None:
    state = awaiting_approval(NOT_RECOMMENDED)
    assert state.allowed == ("reject",)
    with pytest.raises(CommandRejected) as caught:
        decide(state, RecordApproval("ops-1", "approve"))
    assert caught.value.reason == "not-recommended"
    assert "cannot be approved" in caught.value.detail
    assert types(decide(state, RecordApproval("ops-1", "reject"))) == ["partner.approval_recorded", "partner.rejected"]


def test_invalid_scores_are_invalid_commands() -> None:
    with pytest.raises(InvalidCommand, match="unknown criteria: charm"):
        decide(applied(), Assess({**INNOVATION, "charm": 5}))


def test_agreement_must_end_after_it_starts() -> None:
    with pytest.raises(InvalidCommand, match="ends_on must be after starts_on"):
        decide(approved(), SignAgreement("joint_development", date(2026, 2, 1), date(2026, 2, 1)))


# --- history is not rewritten -----------------------------------------------------------------


def test_a_later_scoring_model_does_not_rewrite_recorded_assessments() -> None:
    history = [*decide(None, COMMANDS["apply"])]
    history += decide(fold(history), Assess(dict.fromkeys(CRITERIA, 8)))
    stricter = ScoringModel(
        name="assessment-matrix-v2",
        weights=ASSESSMENT_MATRIX_V1.weights,
        thresholds=((Decimal("9.0"), "strategic"), (Decimal("7.0"), "innovation"), (Decimal("5.0"), "platform_integration")),
    )
    replayed = fold(history)
    assert replayed is not None and replayed.assessment is not None
    assert replayed.assessment.recommended_tier == "strategic"
    assert replayed.assessment.scoring_model == "assessment-matrix-v1"
    # The new model applies to new assessments only.
    reassessed = run(replayed, Assess(dict.fromkeys(CRITERIA, 8), model=stricter))
    assert reassessed.assessment is not None and reassessed.assessment.recommended_tier == "innovation"
    assert reassessed.assessment.scoring_model == "assessment-matrix-v2"


def test_evolve_needs_applied_first() -> None:
    with pytest.raises(ValueError, match=r"before partner\.applied"):
        evolve(None, PartnerActivated(partner_id=PID, tier="strategic"))

