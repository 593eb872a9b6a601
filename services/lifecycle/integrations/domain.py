"""The integration aggregate (pure): registered → attempts → live → retired, plus health and SLA.

Going live needs at least one succeeded attempt. Health is recorded on transitions only
(unknown → up → down …); the SLA state flips only when the rolling uptime crosses the
integration's target.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from events.catalog import (
    DomainEvent,
    IntegrationAttemptRecorded,
    IntegrationHealthChanged,
    IntegrationKind,
    IntegrationRegistered,
    IntegrationRetired,
    IntegrationWentLive,
    SlaBreached,
    SlaRestored,
)
from services.lifecycle.errors import Conflict, Invalid

DEFAULT_SLA_UPTIME_PCT = 99.9
SLA_WINDOW_HOURS = 24
MAX_URL_LENGTH = 2048

IntegrationStatus = Literal["registered", "live", "retired"]
Health = Literal["unknown", "up", "down"]
SlaStatus = Literal["met", "breached"]


def new_integration_id() -> str:
    """An opaque, unguessable integration id: `int_` + 96 random bits in hex."""
    return "int_" + secrets.token_hex(12)


def stream_of(integration_id: str) -> str:
    """The stream of an integration."""
    return f"integration-{integration_id}"


def checked_health_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL without credentials, else `Invalid`."""
    if len(url) > MAX_URL_LENGTH:
        raise Invalid(f"health_url is longer than {MAX_URL_LENGTH} characters", field="health_url")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise Invalid(f"health_url is not a valid URL: {exc}", field="health_url") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise Invalid("health_url must be an http:// or https:// URL", field="health_url")
    if not parts.hostname:
        raise Invalid("health_url needs a host", field="health_url")
    if parts.username is not None or parts.password is not None:
        # Event payloads never carry secrets.
        raise Invalid("health_url must not contain credentials", field="health_url")
    if port == 0:
        raise Invalid("health_url has an invalid port", field="health_url")
    if any(ch.isspace() for ch in url):
        raise Invalid("health_url must not contain whitespace", field="health_url")
    return url


# --- state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Integration:
    """An integration as its events left it."""

    id: str
    partner_id: str
    kind: IntegrationKind
    name: str
    health_url: str | None
    sla_uptime_target_pct: float
    status: IntegrationStatus
    registered_at: datetime
    went_live_at: datetime | None = None
    retired_at: datetime | None = None
    retire_reason: str = ""
    attempts_succeeded: int = 0
    attempts_failed: int = 0
    last_attempt_at: datetime | None = None
    health: Health = "unknown"
    health_since: datetime | None = None
    health_reason: str = ""
    health_latency_ms: float | None = None
    sla_status: SlaStatus = "met"
    sla_uptime_pct: float | None = None
    sla_since: datetime | None = None
    last_event_at: datetime | None = None
    version: int = 0

    def allowed(self) -> list[str]:
        """The commands this integration accepts now (named as in the API)."""
        if self.status == "retired":
            return []
        if self.status == "live":
            return ["attempts", "retire"]
        return ["attempts", "go-live", "retire"] if self.attempts_succeeded else ["attempts", "retire"]


# --- commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    integration_id: str
    partner_id: str
    kind: IntegrationKind
    name: str
    health_url: str | None = None
    sla_uptime_target_pct: float = DEFAULT_SLA_UPTIME_PCT


@dataclass(frozen=True, slots=True)
class RecordAttempt:
    outcome: Literal["succeeded", "failed"]
    detail: str = ""
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class GoLive:
    pass


@dataclass(frozen=True, slots=True)
class Retire:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ObserveHealth:
    """What a probe saw; produces an event only when the status changes."""

    status: Literal["up", "down"]
    reason: str = ""
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class EvaluateSla:
    """The rolling uptime the SLA monitor computed (None: no known time in the window)."""

    uptime_pct: float | None
    window_hours: int = SLA_WINDOW_HOURS


Command = Register | RecordAttempt | GoLive | Retire | ObserveHealth | EvaluateSla


def decide(state: Integration | None, command: Command) -> list[DomainEvent]:
    """The events `command` produces on `state`, or `Conflict` / `Invalid`."""
    if isinstance(command, Register):
        return _register(state, command)
    if state is None:
        raise Conflict("the integration does not exist", state="not_registered", allowed=[])
    if state.status == "retired" and not isinstance(command, ObserveHealth | EvaluateSla):
        raise Conflict("the integration is retired and accepts no command", state="retired", allowed=[])
    ids = {"partner_id": state.partner_id, "integration_id": state.id}
    match command:
        case RecordAttempt(outcome=outcome, detail=detail, duration_ms=duration_ms):
            if duration_ms is not None and duration_ms < 0:
                raise Invalid("duration_ms must be >= 0", field="duration_ms")
            return [IntegrationAttemptRecorded(**ids, outcome=outcome, detail=detail, duration_ms=duration_ms)]
        case GoLive():
            if state.status == "live":
                raise Conflict("the integration is already live", state="live", allowed=state.allowed())
            if state.attempts_succeeded == 0:
                raise Conflict(
                    "an integration goes live only after at least one succeeded attempt "
                    f"({state.attempts_failed} failed so far)",
                    state=state.status,
                    allowed=state.allowed(),
                )
            return [IntegrationWentLive(**ids)]
        case Retire(reason=reason):
            return [IntegrationRetired(**ids, reason=reason)]
        case ObserveHealth(status=status, reason=reason, latency_ms=latency_ms):
            if state.status != "live" or status == state.health:
                return []
            return [IntegrationHealthChanged(**ids, status=status, reason=reason, latency_ms=latency_ms)]
        case EvaluateSla(uptime_pct=uptime, window_hours=hours):
            return _evaluate_sla(state, uptime, hours)
    raise TypeError(f"unknown command {command!r}")  # pragma: no cover


def _register(state: Integration | None, command: Register) -> list[DomainEvent]:
    if state is not None:
        raise Conflict(f"integration {command.integration_id} already exists", state=state.status, allowed=state.allowed())
    if not command.name.strip():
        raise Invalid("name must not be blank", field="name")
    if not 0 < command.sla_uptime_target_pct <= 100:
        raise Invalid("sla_uptime_target_pct must be in (0, 100]", field="sla_uptime_target_pct")
    url = checked_health_url(command.health_url) if command.health_url is not None else None
    return [
        IntegrationRegistered(
            partner_id=command.partner_id,
            integration_id=command.integration_id,
            kind=command.kind,
            name=command.name.strip(),
            health_url=url,
            sla_uptime_target_pct=command.sla_uptime_target_pct,
        )
    ]


def _evaluate_sla(state: Integration, uptime: float | None, hours: int) -> list[DomainEvent]:
    if uptime is None or state.status != "live":
        return []
    ids = {"partner_id": state.partner_id, "integration_id": state.id}
    target = state.sla_uptime_target_pct
    rounded = round(uptime, 4)
    if uptime < target and state.sla_status != "breached":
        return [SlaBreached(**ids, uptime_pct=rounded, target_pct=target, window_hours=hours)]
    if uptime >= target and state.sla_status == "breached":
        return [SlaRestored(**ids, uptime_pct=rounded, target_pct=target, window_hours=hours)]
    return []


def evolve(state: Integration | None, event: DomainEvent, at: datetime) -> Integration:
    """`state` after `event`, which occurred at `at`."""
    if isinstance(event, IntegrationRegistered):
        return Integration(
            id=event.integration_id,
            partner_id=event.partner_id,
            kind=event.kind,
            name=event.name,
            health_url=event.health_url,
            sla_uptime_target_pct=event.sla_uptime_target_pct,
            status="registered",
            registered_at=at,
            last_event_at=at,
            version=1,
        )
    if state is None:
        raise ValueError(f"{event.type} before integration.registered")
    state = replace(state, last_event_at=at, version=state.version + 1)
    match event:
        case IntegrationAttemptRecorded(outcome="succeeded"):
            return replace(state, attempts_succeeded=state.attempts_succeeded + 1, last_attempt_at=at)
        case IntegrationAttemptRecorded():
            return replace(state, attempts_failed=state.attempts_failed + 1, last_attempt_at=at)
        case IntegrationWentLive():
            return replace(state, status="live", went_live_at=at, health="unknown", health_since=at)
        case IntegrationRetired(reason=reason):
            return replace(state, status="retired", retired_at=at, retire_reason=reason)
        case IntegrationHealthChanged():
            return replace(
                state,
                health=event.status,
                health_since=at,
                health_reason=event.reason,
                health_latency_ms=event.latency_ms,
            )
        case SlaBreached(uptime_pct=uptime):
            return replace(state, sla_status="breached", sla_uptime_pct=uptime, sla_since=at)
        case SlaRestored(uptime_pct=uptime):
            return replace(state, sla_status="met", sla_uptime_pct=uptime, sla_since=at)
    return state
