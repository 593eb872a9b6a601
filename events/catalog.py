"""Every event type partnerhub emits: the single source of the event contract.

Each event is a frozen pydantic model with a past-tense `type` name and a
`schema_version`. Payloads never contain secrets. When a payload changes shape,
bump `schema_version` and register an upcaster from the old version so that
stored history is read in the current shape (`upcast`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Tier = Literal["strategic", "innovation", "platform_integration", "not_recommended"]
DueDiligencePhase = Literal["initial_screening", "detailed_evaluation", "final_assessment"]
AgreementType = Literal[
    "joint_development", "technology_licensing", "platform_integration", "equity_investment"
]
AlliancePhase = Literal["initiation", "integration", "launch", "optimization", "maturity"]
IntegrationKind = Literal["rest_api", "webhook", "data_sync", "sso"]


class DomainEvent(BaseModel):
    """Base of every event: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    source: ClassVar[str]
    """The service that owns the event (its topic is `partnerhub.<source>.events`)."""

    partner_id: str | None = None

    def payload(self) -> dict[str, Any]:
        """The event's data as JSON-ready primitives."""
        return self.model_dump(mode="json")


# --- onboarding -------------------------------------------------------------------------


class PartnerApplied(DomainEvent):
    type: ClassVar[str] = "partner.applied"
    source: ClassVar[str] = "onboarding"
    partner_id: str
    name: str
    website: str
    category: str
    contact_email: str


class PartnerAssessed(DomainEvent):
    type: ClassVar[str] = "partner.assessed"
    source: ClassVar[str] = "onboarding"
    partner_id: str
    # Scores on the 1 to 10 scale, up to two decimals (committees average their marks).
    scores: dict[str, float]
    weighted_score: float
    recommended_tier: Tier
    scoring_model: str


class PartnerDueDiligenceCompleted(DomainEvent):
    type: ClassVar[str] = "partner.due_diligence_completed"
    source: ClassVar[str] = "onboarding"
    partner_id: str
    phase: DueDiligencePhase
    passed: bool
    findings: str = ""


class PartnerApprovalRecorded(DomainEvent):
    type: ClassVar[str] = "partner.approval_recorded"
    source: ClassVar[str] = "onboarding"
    partner_id: str
    approver: str
    decision: Literal["approve", "reject"]
    comment: str = ""


class PartnerApproved(DomainEvent):
    type: ClassVar[str] = "partner.approved"
    source: ClassVar[str] = "onboarding"
    partner_id: str
    tier: Tier
    approvers: list[str]


class PartnerRejected(DomainEvent):
    type: ClassVar[str] = "partner.rejected"
    source: ClassVar[str] = "onboarding"
    partner_id: str
    reason: str
    rejected_by: str | None = None


class SlaTerms(BaseModel):
    """SLA terms of an agreement; defaults are the seeds' KPI targets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uptime_target_pct: float = Field(default=99.9, gt=0, le=100)
    integration_success_target_pct: float = Field(default=95.0, gt=0, le=100)
    time_to_integration_target_days: int = Field(default=60, ge=1, le=3650)


class PartnerAgreementSigned(DomainEvent):
    type: ClassVar[str] = "partner.agreement_signed"
    source: ClassVar[str] = "onboarding"
    partner_id: str
    agreement_type: AgreementType
    starts_on: date
    ends_on: date
    sla: SlaTerms


class PartnerActivated(DomainEvent):
    type: ClassVar[str] = "partner.activated"
    source: ClassVar[str] = "onboarding"
    partner_id: str
    tier: Tier
    ends_on: date | None = None


# --- lifecycle: alliances ---------------------------------------------------------------


class AllianceStarted(DomainEvent):
    type: ClassVar[str] = "alliance.started"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    phase: AlliancePhase = "initiation"
    tier: Tier | None = None
    ends_on: date | None = None


class AlliancePhaseChanged(DomainEvent):
    type: ClassVar[str] = "alliance.phase_changed"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    from_phase: AlliancePhase
    to_phase: AlliancePhase


class AllianceRenewed(DomainEvent):
    type: ClassVar[str] = "alliance.renewed"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    ends_on: date
    previous_ends_on: date | None = None


class AllianceExitInitiated(DomainEvent):
    type: ClassVar[str] = "alliance.exit_initiated"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    reason: str
    notice_days: int
    effective_on: date


class AllianceTerminated(DomainEvent):
    type: ClassVar[str] = "alliance.terminated"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    reason: str = ""
    forced: bool = False


class PartnerSatisfactionRated(DomainEvent):
    type: ClassVar[str] = "partner.satisfaction_rated"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    score: float
    comment: str = ""
    rated_by: str | None = None


# --- lifecycle: integrations and SLA ----------------------------------------------------


class IntegrationRegistered(DomainEvent):
    type: ClassVar[str] = "integration.registered"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    integration_id: str
    kind: IntegrationKind
    name: str
    health_url: str | None = None
    sla_uptime_target_pct: float = 99.9


class IntegrationAttemptRecorded(DomainEvent):
    type: ClassVar[str] = "integration.attempt_recorded"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    integration_id: str
    outcome: Literal["succeeded", "failed"]
    detail: str = ""
    duration_ms: int | None = None


class IntegrationWentLive(DomainEvent):
    type: ClassVar[str] = "integration.went_live"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    integration_id: str


class IntegrationRetired(DomainEvent):
    type: ClassVar[str] = "integration.retired"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    integration_id: str
    reason: str = ""


class IntegrationHealthChanged(DomainEvent):
    type: ClassVar[str] = "integration.health_changed"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    integration_id: str
    status: Literal["up", "down"]
    reason: str = ""
    latency_ms: float | None = None


class SlaBreached(DomainEvent):
    type: ClassVar[str] = "sla.breached"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    integration_id: str
    uptime_pct: float
    target_pct: float
    window_hours: int = 24


class SlaRestored(DomainEvent):
    type: ClassVar[str] = "sla.restored"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    integration_id: str
    uptime_pct: float
    target_pct: float
    window_hours: int = 24


# --- lifecycle: webhooks ------------------------------------------------------------------


class WebhookMessageDelivered(DomainEvent):
    type: ClassVar[str] = "webhook.message_delivered"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    endpoint_id: str
    message_id: str
    event_type: str
    attempts: int
    latency_ms: float


class WebhookMessageFailed(DomainEvent):
    type: ClassVar[str] = "webhook.message_failed"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    endpoint_id: str
    message_id: str
    event_type: str
    attempts: int
    last_error: str = ""


class WebhookEndpointDisabled(DomainEvent):
    type: ClassVar[str] = "webhook.endpoint_disabled"
    source: ClassVar[str] = "lifecycle"
    partner_id: str
    endpoint_id: str
    reason: str


# --- gateway ------------------------------------------------------------------------------


class ClientCreated(DomainEvent):
    type: ClassVar[str] = "client.created"
    source: ClassVar[str] = "gateway"
    client_id: str
    name: str
    scopes: list[str]
    kind: Literal["ops", "partner"]


class ClientSecretRotated(DomainEvent):
    type: ClassVar[str] = "client.secret_rotated"
    source: ClassVar[str] = "gateway"
    client_id: str


class ClientRevoked(DomainEvent):
    type: ClassVar[str] = "client.revoked"
    source: ClassVar[str] = "gateway"
    client_id: str


class TokenRevoked(DomainEvent):
    """An access token was revoked (RFC 7009); services reject its jti until it expires."""

    type: ClassVar[str] = "token.revoked"
    source: ClassVar[str] = "gateway"
    client_id: str
    jti: str
    expires_at: datetime


class GatewayTrafficWindowClosed(DomainEvent):
    type: ClassVar[str] = "gateway.traffic_window_closed"
    source: ClassVar[str] = "gateway"
    route_group: str
    window_start: str
    window_end: str
    total: int = Field(ge=0)
    server_errors: int = Field(ge=0)
    client_errors: int = Field(ge=0)
    p50_ms: float
    p99_ms: float


# --- registry and upcasting ---------------------------------------------------------------

EVENT_TYPES: dict[str, type[DomainEvent]] = {
    cls.type: cls
    for cls in (
        PartnerApplied,
        PartnerAssessed,
        PartnerDueDiligenceCompleted,
        PartnerApprovalRecorded,
        PartnerApproved,
        PartnerRejected,
        PartnerAgreementSigned,
        PartnerActivated,
        AllianceStarted,
        AlliancePhaseChanged,
        AllianceRenewed,
        AllianceExitInitiated,
        AllianceTerminated,
        PartnerSatisfactionRated,
        IntegrationRegistered,
        IntegrationAttemptRecorded,
        IntegrationWentLive,
        IntegrationRetired,
        IntegrationHealthChanged,
        SlaBreached,
        SlaRestored,
        WebhookMessageDelivered,
        WebhookMessageFailed,
        WebhookEndpointDisabled,
        ClientCreated,
        ClientSecretRotated,
        ClientRevoked,
        TokenRevoked,
        GatewayTrafficWindowClosed,
    )
}

# Event types partners may receive as webhooks (never webhook.*, gateway.*, client.*).
WEBHOOK_DELIVERABLE_PREFIXES: tuple[str, ...] = ("partner.", "alliance.", "integration.", "sla.")

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, from_version) -> function returning the payload at from_version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class UnknownEventType(LookupError):
    """The stored or received event type is not in the catalog."""


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator registering a payload migration from `from_version` to the next version."""

    def decorate(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return decorate


def upcast(event_type: str, schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
    """Bring a stored payload of `schema_version` up to the catalog's current version."""
    cls = event_class(event_type)
    version = schema_version
    while version < cls.schema_version:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise UnknownEventType(f"no upcaster for {event_type} v{version}")
        data = step(data)
        version += 1
    return data


def event_class(event_type: str) -> type[DomainEvent]:
    """The catalog model for `event_type`."""
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise UnknownEventType(event_type) from None


def parse_event(event_type: str, schema_version: int, data: dict[str, Any]) -> DomainEvent:
    """Build the current-version model of a stored or received payload."""
    return event_class(event_type).model_validate(upcast(event_type, schema_version, data))


def is_webhook_deliverable(event_type: str) -> bool:
    """Whether partners may receive `event_type` through their webhook endpoints."""
    return event_type.startswith(WEBHOOK_DELIVERABLE_PREFIXES)
