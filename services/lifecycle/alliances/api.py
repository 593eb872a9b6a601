"""Alliance routes (`/v1/alliances`): read with `partners:read`; every change is an ops command.

A partner client sees only its own alliance (another partner's answers 404). Changes
(phase, renewal, exit, termination, satisfaction) need `partners:write` and an ops
(`admin`) client: partner managers record them, including the partner's satisfaction
rating, which they collect in reviews.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from events.catalog import AlliancePhase, Tier
from events.envelope import RecordedEvent
from services.lifecycle.alliances import handlers
from services.lifecycle.alliances.domain import (
    MAX_NOTICE_DAYS,
    Alliance,
    AllianceStatus,
    ChangePhase,
    Command,
    InitiateExit,
    RateSatisfaction,
    Renew,
    Terminate,
)
from services.lifecycle.http import AppClock, Engine, Store, command_errors, precondition
from services.lifecycle.tables import alliances
from services.runtime.auth import Identity, require_scopes, visible_partner
from services.runtime.commands import metadata_for, resolve_occurred_at, set_etag
from services.runtime.pagination import (
    Cursor,
    Limit,
    Page,
    cursor_int,
    decode_cursor,
    encode_cursor,
)
from services.runtime.problems import PROBLEM_SCHEMA, Problem, not_found
from services.runtime.text import FreeText

router = APIRouter(prefix="/v1/alliances", tags=["alliances"])

Reader = Annotated[Identity, Depends(require_scopes("partners:read"))]
Writer = Annotated[Identity, Depends(require_scopes("partners:write"))]
PartnerId = Path(min_length=1, max_length=100, description="the partner whose alliance it is")

_COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such alliance (or another partner's)", **PROBLEM_SCHEMA},
    409: {"description": "The command does not fit the alliance's state", **PROBLEM_SCHEMA},
    412: {"description": "If-Match is stale", **PROBLEM_SCHEMA},
}


# --- bodies -----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    occurred_at: datetime | None = Field(default=None, description="ops only: when it happened (historical import)")


class PhaseBody(_Body):
    to: AlliancePhase = Field(description="the next phase (phases advance one step at a time)")


class RenewalBody(_Body):
    ends_on: date = Field(description="the new end date, after the current one")


class ExitBody(_Body):
    reason: FreeText = Field(min_length=1, max_length=1000)
    notice_days: int = Field(ge=0, le=MAX_NOTICE_DAYS)


class TerminateBody(_Body):
    force: bool = Field(default=False, description="terminate before the notice period ends (needs a reason)")
    reason: FreeText = Field(default="", max_length=1000)


class SatisfactionBody(_Body):
    score: float = Field(ge=0, le=10, allow_inf_nan=False, description="0-10")
    comment: FreeText = Field(default="", max_length=2000)


# --- answers ----------------------------------------------------------------------------


class ExitOut(BaseModel):
    reason: str
    notice_days: int
    initiated_at: datetime
    effective_on: date


class TerminationOut(BaseModel):
    reason: str
    forced: bool
    at: datetime


class RatingOut(BaseModel):
    score: float
    comment: str
    rated_by: str | None
    rated_at: datetime


class HistoryEntry(BaseModel):
    version: int
    type: str
    occurred_at: datetime
    actor: str | None
    data: dict[str, Any]


class AllianceOut(BaseModel):
    partner_id: str
    phase: AlliancePhase
    status: AllianceStatus
    next_phase: AlliancePhase | None
    allowed: list[str]
    tier: Tier | None
    started_at: datetime
    ends_on: date | None
    renewals: int
    exit: ExitOut | None
    termination: TerminationOut | None
    satisfaction: RatingOut | None
    version: int
    history: list[HistoryEntry]


class AllianceSummary(BaseModel):
    partner_id: str
    phase: AlliancePhase
    status: AllianceStatus
    tier: Tier | None
    ends_on: date | None
    exit_effective_on: date | None
    satisfaction_score: float | None
    started_at: datetime
    updated_at: datetime
    version: int


def present(state: Alliance, recorded: list[RecordedEvent]) -> AllianceOut:
    """The API form of an alliance with its history."""
    return AllianceOut(
        partner_id=state.partner_id,
        phase=state.phase,
        status=state.status,
        next_phase=state.next_phase if state.status == "active" else None,
        allowed=state.allowed(),
        tier=state.tier,
        started_at=state.started_at,
        ends_on=state.ends_on,
        renewals=state.renewals,
        exit=ExitOut(**asdict(state.exit)) if state.exit else None,
        termination=TerminationOut(**asdict(state.termination)) if state.termination else None,
        satisfaction=RatingOut(**asdict(state.satisfaction)) if state.satisfaction else None,
        version=state.version,
        history=[
            HistoryEntry(version=r.stream_version, type=r.type, occurred_at=r.occurred_at, actor=r.actor, data=r.data)
            for r in recorded
        ],
    )


# --- routes -----------------------------------------------------------------------------


@router.get("", response_model=Page[AllianceSummary])
async def list_alliances(
    caller: Reader,
    engine: Engine,
    status: AllianceStatus | None = Query(default=None),
    phase: AlliancePhase | None = Query(default=None),
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[AllianceSummary]:
    """List alliances (a partner client sees only its own)."""
    after = decode_cursor(cursor)
    query = select(alliances).order_by(alliances.c.seq).limit(limit + 1)
    if not caller.is_ops:
        query = query.where(alliances.c.partner_id == (caller.partner_id or ""))
    if status is not None:
        query = query.where(alliances.c.status == status)
    if phase is not None:
        query = query.where(alliances.c.phase == phase)
    if after is not None:
        query = query.where(alliances.c.seq > cursor_int(after, "seq"))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    items = [AllianceSummary.model_validate(dict(row._mapping)) for row in rows[:limit]]
    next_cursor = encode_cursor({"seq": rows[limit - 1].seq}) if len(rows) > limit else None
    return Page[AllianceSummary](items=items, next_cursor=next_cursor)


@router.get("/{partner_id}", response_model=AllianceOut, responses={404: _COMMAND_RESPONSES[404]})
async def get_alliance(caller: Reader, store: Store, response: Response, partner_id: str = PartnerId) -> AllianceOut:
    """An alliance: phase, exit, satisfaction and its full history (ETag = version)."""
    state, recorded = await _visible(store, caller, partner_id)
    set_etag(response, state.version)
    return present(state, recorded)


@router.post("/{partner_id}/phase", response_model=AllianceOut, responses=_COMMAND_RESPONSES)
async def change_phase(
    body: PhaseBody, request: Request, response: Response, caller: Writer, store: Store, clock: AppClock,
    partner_id: str = PartnerId,
) -> AllianceOut:
    """Advance the alliance to its next phase (forward only, one step at a time)."""
    return await _run(request, response, caller, store, clock, partner_id, body.occurred_at, lambda _at: ChangePhase(body.to))


@router.post("/{partner_id}/renewal", response_model=AllianceOut, responses=_COMMAND_RESPONSES)
async def renew(
    body: RenewalBody, request: Request, response: Response, caller: Writer, store: Store, clock: AppClock,
    partner_id: str = PartnerId,
) -> AllianceOut:
    """Renew the alliance until a new end date (after the current one)."""
    return await _run(request, response, caller, store, clock, partner_id, body.occurred_at, lambda at: Renew(body.ends_on, at))


@router.post("/{partner_id}/exit", response_model=AllianceOut, responses=_COMMAND_RESPONSES)
async def initiate_exit(
    body: ExitBody, request: Request, response: Response, caller: Writer, store: Store, clock: AppClock,
    partner_id: str = PartnerId,
) -> AllianceOut:
    """Give notice: the alliance may be terminated once `notice_days` have passed."""
    return await _run(
        request, response, caller, store, clock, partner_id, body.occurred_at,
        lambda at: InitiateExit(body.reason, body.notice_days, at),
    )


@router.post("/{partner_id}/terminate", response_model=AllianceOut, responses=_COMMAND_RESPONSES)
async def terminate(
    request: Request, response: Response, caller: Writer, store: Store, clock: AppClock,
    partner_id: str = PartnerId, body: TerminateBody | None = None,
) -> AllianceOut:
    """Terminate the alliance after its notice period (or earlier with `force` and a reason)."""
    body = body or TerminateBody()
    return await _run(
        request, response, caller, store, clock, partner_id, body.occurred_at,
        lambda at: Terminate(at, force=body.force, reason=body.reason),
    )


@router.post("/{partner_id}/satisfaction", response_model=AllianceOut, responses=_COMMAND_RESPONSES)
async def rate_satisfaction(
    body: SatisfactionBody, request: Request, response: Response, caller: Writer, store: Store, clock: AppClock,
    partner_id: str = PartnerId,
) -> AllianceOut:
    """Record the partner's satisfaction (0-10, with a comment)."""
    return await _run(
        request, response, caller, store, clock, partner_id, body.occurred_at,
        lambda _at: RateSatisfaction(body.score, body.comment, caller.client_id),
    )


async def _visible(store: Store, caller: Identity, partner_id: str) -> tuple[Alliance, list[RecordedEvent]]:
    visible_partner(caller, partner_id, "alliance", partner_id)
    state, recorded = await handlers.load(store, partner_id)
    if state is None:
        raise not_found("alliance", partner_id)
    return state, recorded


async def _run(
    request: Request,
    response: Response,
    caller: Identity,
    store: Store,
    clock: AppClock,
    partner_id: str,
    occurred_at: datetime | None,
    make: Callable[[datetime], Command],
) -> AllianceOut:
    state, recorded = await _visible(store, caller, partner_id)
    if not caller.is_ops:
        raise Problem(403, "alliance changes are recorded by ops clients (scope admin)", title="Forbidden", type="ops-only")
    if_match = precondition(request, state.version)
    when = resolve_occurred_at(caller=caller, occurred_at=occurred_at, clock=clock, not_before=state.last_event_at)
    with command_errors(if_match=if_match):
        new_state, new_events = await handlers.execute(
            store, state, make(when or clock.now()), occurred_at=when, metadata=metadata_for(request, caller)
        )
    set_etag(response, new_state.version)
    return present(new_state, recorded + new_events)

