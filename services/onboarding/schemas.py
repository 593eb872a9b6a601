"""Request and response bodies of the onboarding API (DESIGN.md §4a)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    HttpUrl,
    StrictBool,
    WithJsonSchema,
    model_validator,
)

from events.catalog import AgreementType, DueDiligencePhase, SlaTerms, Tier
from services.onboarding.domain import CommandName, Status
from services.runtime.text import FreeText, OneLine


def _number(value: Any) -> Any:
    # JSON numbers only: no "7" strings, and no booleans (True would pass as 1).
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    return value


def _iso_date(value: Any) -> Any:
    if not isinstance(value, str | date):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


def _no_credentials(url: HttpUrl) -> HttpUrl:
    if url.username or url.password:
        raise ValueError("must not contain credentials")
    return url


# Documented as what it accepts: a JSON number (pydantic would say "number or string").
Score = Annotated[
    Decimal,
    BeforeValidator(_number),
    Field(ge=1, le=10, decimal_places=2),
    WithJsonSchema({"type": "number", "minimum": 1, "maximum": 10, "description": "1 to 10, at most two decimals"}),
]
Percent = Annotated[float, BeforeValidator(_number), Field(gt=0, le=100)]
Day = Annotated[date, BeforeValidator(_iso_date)]
Text = Annotated[FreeText, Field(max_length=5000)]
_SLA_DEFAULTS = SlaTerms()


class CommandBody(BaseModel):
    """Fields every command accepts."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    occurred_at: datetime | None = Field(
        default=None,
        description="ops only: when this happened (historical import); not in the future, "
        "not before the partner's last event",
    )


class ApplicationIn(CommandBody):
    name: OneLine = Field(min_length=1, max_length=200)
    website: Annotated[HttpUrl, AfterValidator(_no_credentials), Field(max_length=2048)]
    category: OneLine = Field(min_length=1, max_length=100)
    contact_email: EmailStr = Field(max_length=254)


class ScoresIn(BaseModel):
    """The assessment matrix: each criterion scored 1 to 10 (up to two decimals)."""

    model_config = ConfigDict(extra="forbid")

    technology_leadership: Score
    market_position: Score
    financial_stability: Score
    strategic_fit: Score
    integration_capability: Score
    cultural_compatibility: Score


class AssessmentIn(CommandBody):
    scores: ScoresIn


class DueDiligenceIn(CommandBody):
    phase: DueDiligencePhase
    passed: StrictBool
    findings: Text = ""


class ApprovalIn(CommandBody):
    decision: Literal["approve", "reject"]
    comment: Text = ""


class SlaIn(BaseModel):
    """SLA terms; each one left out takes the seeds' target."""

    model_config = ConfigDict(extra="forbid")

    uptime_target_pct: Percent = _SLA_DEFAULTS.uptime_target_pct
    integration_success_target_pct: Percent = _SLA_DEFAULTS.integration_success_target_pct
    time_to_integration_target_days: Annotated[int, Field(strict=True, ge=1, le=3650)] = (
        _SLA_DEFAULTS.time_to_integration_target_days
    )

    def terms(self) -> SlaTerms:
        return SlaTerms(**self.model_dump())


class AgreementIn(CommandBody):
    agreement_type: AgreementType
    starts_on: Day
    ends_on: Day
    sla: SlaIn = Field(default_factory=SlaIn)

    @model_validator(mode="after")
    def _term(self) -> AgreementIn:
        if self.ends_on <= self.starts_on:
            raise ValueError("ends_on must be after starts_on")
        return self


# --- answers (for the OpenAPI document; routes return the stored record as is) ---------------


class AssessmentOut(BaseModel):
    scores: dict[str, float]
    weighted_score: float
    recommended_tier: Tier
    scoring_model: str


class DueDiligenceOut(BaseModel):
    class Phase(BaseModel):
        phase: DueDiligencePhase
        passed: bool
        findings: str

    phases: list[Phase]
    next_phase: DueDiligencePhase | None


class ApprovalsOut(BaseModel):
    class Decision(BaseModel):
        approver: str
        decision: Literal["approve", "reject"]
        comment: str

    required: int | None = Field(description="distinct approvers needed: 2 for strategic, else 1")
    approvers: list[str]
    decisions: list[Decision]


class AgreementOut(BaseModel):
    agreement_type: AgreementType
    starts_on: date
    ends_on: date
    sla: SlaTerms


class RejectionOut(BaseModel):
    reason: str
    rejected_by: str | None


class PartnerOut(BaseModel):
    id: str = Field(description="opaque id: ptn_ + 20 lowercase letters and digits")
    status: Status
    name: str
    website: str
    category: str
    contact_email: str
    tier: Tier | None = Field(description="decided at approval: the assessment's recommended tier")
    assessment: AssessmentOut | None
    due_diligence: DueDiligenceOut
    approvals: ApprovalsOut
    agreement: AgreementOut | None
    rejection: RejectionOut | None
    allowed_commands: list[CommandName]
    version: int = Field(description="stream version; also the ETag")
    created_at: datetime
    updated_at: datetime


class AssessmentResultOut(PartnerOut):
    weighted_score: float
    recommended_tier: Tier
    scoring_model: str


class PartnerPage(BaseModel):
    items: list[PartnerOut]
    next_cursor: str | None


class EventPage(BaseModel):
    items: list[dict[str, Any]] = Field(description="CloudEvents 1.0 JSON, oldest first")
    next_cursor: str | None
