"""Integration routes (`/v1/integrations`): partners manage their own, ops act for any partner.

A partner's own id is implied by its token: `partner_id` in the registration body is for
ops clients (required for them); a partner client may omit it or repeat its own id, and
another partner's id answers 422 (it cannot act for anyone else, and nothing about that
partner is revealed). Any integration of another partner answers 404.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy import select

from events.catalog import IntegrationKind
from services.lifecycle.errors import Invalid, Refused
from services.lifecycle.http import (
    AppClock,
    Engine,
    Store,
    command_errors,
    precondition,
    problem_of,
)
from services.lifecycle.integrations import handlers
from services.lifecycle.integrations.destinations import literal_allowed, networks
from services.lifecycle.integrations.domain import (
    Command,
    GoLive,
    Integration,
    IntegrationStatus,
    RecordAttempt,
    Register,
    Retire,
    checked_health_url,
    new_integration_id,
)
from services.lifecycle.integrations.schemas import (
    AttemptBody,
    GoLiveBody,
    IntegrationOut,
    RegisterBody,
    RetireBody,
    present,
)
from services.lifecycle.projection import integration_from_row
from services.lifecycle.tables import integrations
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

router = APIRouter(prefix="/v1/integrations", tags=["integrations"])

Reader = Annotated[Identity, Depends(require_scopes("integrations:read"))]
Writer = Annotated[Identity, Depends(require_scopes("integrations:write"))]
IntegrationId = Path(min_length=1, max_length=64, description="the integration's id (`int_…`)")

_COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such integration (or another partner's)", **PROBLEM_SCHEMA},
    409: {"description": "The command does not fit the integration's state", **PROBLEM_SCHEMA},
    412: {"description": "If-Match is stale", **PROBLEM_SCHEMA},
}


# --- routes -----------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=IntegrationOut,
    responses={409: _COMMAND_RESPONSES[409], 422: {"description": "Validation failed", **PROBLEM_SCHEMA}},
)
async def register(
    body: RegisterBody, request: Request, response: Response, caller: Writer, store: Store, engine: Engine, clock: AppClock
) -> IntegrationOut:
    """Register an integration (kind, name, optional health URL and SLA uptime target)."""
    partner_id = _partner_of(caller, body.partner_id)
    status = await handlers.alliance_status(engine, partner_id)
    if status is None:
        if caller.is_ops:
            raise problem_of(Invalid(f"partner {partner_id!r} has no alliance (it starts at activation)", field="partner_id"))
        raise Problem(
            409, "your alliance has not started yet", title="Invalid State Transition",
            type="invalid-state-transition", current_state="no_alliance", allowed=[],
        )
    if status == "terminated":
        raise Problem(
            409, f"the alliance of {partner_id} is terminated", title="Invalid State Transition",
            type="invalid-state-transition", current_state="terminated", allowed=[],
        )
    if body.health_url is not None:
        _check_destination(request, body.health_url)
    target = body.sla_uptime_target_pct
    if target is None:
        target = await handlers.default_uptime_target(engine, partner_id)
    when = resolve_occurred_at(caller=caller, occurred_at=body.occurred_at, clock=clock, not_before=None)
    command = Register(
        integration_id=new_integration_id(),
        partner_id=partner_id,
        kind=body.kind,
        name=body.name,
        health_url=body.health_url,
        sla_uptime_target_pct=target,
    )
    with command_errors(if_match=False):
        state = await handlers.register(store, command, occurred_at=when, metadata=metadata_for(request, caller))
    set_etag(response, state.version)
    response.headers["Location"] = f"/v1/integrations/{state.id}"
    return present(state)


@router.get(
    "",
    response_model=Page[IntegrationOut],
    responses={404: {"description": "`partner_id` names another partner (partner clients)", **PROBLEM_SCHEMA}},
)
async def list_integrations(
    caller: Reader,
    engine: Engine,
    partner_id: str | None = Query(default=None, max_length=100),
    status: IntegrationStatus | None = Query(default=None),
    kind: IntegrationKind | None = Query(default=None),
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[IntegrationOut]:
    """List integrations, oldest first (a partner client sees only its own)."""
    if partner_id is not None:
        visible_partner(caller, partner_id, "partner", partner_id)
    elif not caller.is_ops:
        partner_id = caller.partner_id or ""
    after = decode_cursor(cursor)
    query = select(integrations).order_by(integrations.c.seq).limit(limit + 1)
    if partner_id is not None:
        query = query.where(integrations.c.partner_id == partner_id)
    if status is not None:
        query = query.where(integrations.c.status == status)
    if kind is not None:
        query = query.where(integrations.c.kind == kind)
    if after is not None:
        query = query.where(integrations.c.seq > cursor_int(after, "seq"))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    items = [present(integration_from_row(row._mapping)) for row in rows[:limit]]
    next_cursor = encode_cursor({"seq": rows[limit - 1].seq}) if len(rows) > limit else None
    return Page[IntegrationOut](items=items, next_cursor=next_cursor)


@router.get("/{integration_id}", response_model=IntegrationOut, responses={404: _COMMAND_RESPONSES[404]})
async def get_integration(
    caller: Reader, engine: Engine, response: Response, integration_id: str = IntegrationId
) -> IntegrationOut:
    """An integration: status, attempts, health and SLA (ETag = version)."""
    state = await _visible(engine, caller, integration_id)
    set_etag(response, state.version)
    return present(state)


@router.post("/{integration_id}/attempts", response_model=IntegrationOut, responses=_COMMAND_RESPONSES)
async def record_attempt(
    body: AttemptBody, request: Request, response: Response, caller: Writer, store: Store, engine: Engine,
    clock: AppClock, integration_id: str = IntegrationId,
) -> IntegrationOut:
    """Record an integration attempt (`succeeded` or `failed`, detail, duration)."""
    return await _run(
        request, response, caller, store, engine, clock, integration_id, body.occurred_at,
        lambda: RecordAttempt(body.outcome, body.detail, body.duration_ms),
    )


@router.post("/{integration_id}/go-live", response_model=IntegrationOut, responses=_COMMAND_RESPONSES)
async def go_live(
    request: Request, response: Response, caller: Writer, store: Store, engine: Engine, clock: AppClock,
    integration_id: str = IntegrationId, body: GoLiveBody | None = None,
) -> IntegrationOut:
    """Put the integration live (needs at least one succeeded attempt); probing starts."""
    answer = await _run(
        request, response, caller, store, engine, clock, integration_id, body.occurred_at if body else None, GoLive
    )
    _prober_refresh(request)
    return answer


@router.post("/{integration_id}/retire", response_model=IntegrationOut, responses=_COMMAND_RESPONSES)
async def retire(
    request: Request, response: Response, caller: Writer, store: Store, engine: Engine, clock: AppClock,
    integration_id: str = IntegrationId, body: RetireBody | None = None,
) -> IntegrationOut:
    """Retire the integration (probing stops)."""
    body = body or RetireBody()
    answer = await _run(
        request, response, caller, store, engine, clock, integration_id, body.occurred_at, lambda: Retire(body.reason)
    )
    _prober_refresh(request)
    return answer


# --- helpers ----------------------------------------------------------------------------


def _partner_of(caller: Identity, requested: str | None) -> str:
    if caller.is_ops:
        if requested is None:
            raise problem_of(Invalid("partner_id is required when ops register an integration", field="partner_id"))
        return requested
    if caller.partner_id is None:
        raise Problem(403, "only partner and ops clients register integrations", title="Forbidden")
    if requested is not None and requested != caller.partner_id:
        raise problem_of(
            Invalid("partner_id is for ops clients; omit it (your own partner is implied by your token)", field="partner_id")
        )
    return caller.partner_id


def _prober_refresh(request: Request) -> None:
    # The prober in this process picks the change up now instead of at its next refresh.
    prober = getattr(request.app.state, "prober", None)
    if prober is not None:
        prober.refresh()


def _check_destination(request: Request, url: str) -> None:
    try:
        checked_health_url(url)
    except Refused as refusal:
        raise problem_of(refusal) from refusal
    host = urlsplit(url).hostname or ""
    allow = networks(request.app.state.settings.webhook_allow_nets)
    if literal_allowed(host, allow) is False:
        raise problem_of(
            Invalid("health_url points to a private, loopback or link-local address", field="health_url")
        )


async def _visible(engine: Engine, caller: Identity, integration_id: str) -> Integration:
    state = await handlers.load(engine, integration_id)
    if state is None:
        raise not_found("integration", integration_id)
    visible_partner(caller, state.partner_id, "integration", integration_id)
    return state


async def _run(
    request: Request,
    response: Response,
    caller: Identity,
    store: Store,
    engine: Engine,
    clock: AppClock,
    integration_id: str,
    occurred_at: datetime | None,
    make: Callable[[], Command],
) -> IntegrationOut:
    state = await _visible(engine, caller, integration_id)
    if_match = precondition(request, state.version)
    when = resolve_occurred_at(caller=caller, occurred_at=occurred_at, clock=clock, not_before=state.last_event_at)
    with command_errors(if_match=if_match):
        state, _ = await handlers.execute(
            store, state, make(), occurred_at=when, metadata=metadata_for(request, caller)
        )
    set_etag(response, state.version)
    return present(state)
