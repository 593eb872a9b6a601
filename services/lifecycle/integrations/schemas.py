"""Request and answer bodies of the integration API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from events.catalog import IntegrationKind
from services.lifecycle.integrations.domain import (
    SLA_WINDOW_HOURS,
    Health,
    Integration,
    IntegrationStatus,
    SlaStatus,
)
from services.runtime.text import FreeText, OneLine

# --- bodies -----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    occurred_at: datetime | None = Field(default=None, description="ops only: when it happened (historical import)")


class RegisterBody(_Body):
    partner_id: str | None = Field(
        default=None, min_length=1, max_length=100, description="ops only: the partner it belongs to"
    )
    kind: IntegrationKind
    name: OneLine = Field(min_length=1, max_length=200)
    health_url: str | None = Field(default=None, max_length=2048, description="http(s) URL the prober calls")
    sla_uptime_target_pct: float | None = Field(
        default=None, gt=0, le=100, allow_inf_nan=False, description="default: the partner's agreement, else 99.9"
    )


class AttemptBody(_Body):
    outcome: Literal["succeeded", "failed"]
    detail: FreeText = Field(default="", max_length=2000)
    duration_ms: int | None = Field(default=None, ge=0, le=86_400_000)


class GoLiveBody(_Body):
    pass


class RetireBody(_Body):
    reason: FreeText = Field(default="", max_length=1000)


# --- answers ----------------------------------------------------------------------------


class AttemptsOut(BaseModel):
    succeeded: int
    failed: int
    last_at: datetime | None


class HealthOut(BaseModel):
    status: Health
    since: datetime | None
    reason: str
    latency_ms: float | None


class SlaOut(BaseModel):
    uptime_target_pct: float
    status: SlaStatus
    uptime_pct: float | None = Field(description="rolling uptime when the status last changed")
    since: datetime | None
    window_hours: int


class IntegrationOut(BaseModel):
    id: str
    partner_id: str
    kind: IntegrationKind
    name: str
    health_url: str | None
    status: IntegrationStatus
    allowed: list[str]
    registered_at: datetime
    went_live_at: datetime | None
    retired_at: datetime | None
    retire_reason: str
    attempts: AttemptsOut
    health: HealthOut
    sla: SlaOut
    version: int


def present(state: Integration) -> IntegrationOut:
    """The API form of an integration."""
    return IntegrationOut(
        id=state.id,
        partner_id=state.partner_id,
        kind=state.kind,
        name=state.name,
        health_url=state.health_url,
        status=state.status,
        allowed=state.allowed(),
        registered_at=state.registered_at,
        went_live_at=state.went_live_at,
        retired_at=state.retired_at,
        retire_reason=state.retire_reason,
        attempts=AttemptsOut(
            succeeded=state.attempts_succeeded, failed=state.attempts_failed, last_at=state.last_attempt_at
        ),
        health=HealthOut(
            status=state.health, since=state.health_since, reason=state.health_reason, latency_ms=state.health_latency_ms
        ),
        sla=SlaOut(
            uptime_target_pct=state.sla_uptime_target_pct,
            status=state.sla_status,
            uptime_pct=state.sla_uptime_pct,
            since=state.sla_since,
            window_hours=SLA_WINDOW_HOURS,
        ),
        version=state.version,
    )
