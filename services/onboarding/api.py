"""The onboarding REST API (`/v1/partners/**`): thin routes over `Onboarding`."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

from services.onboarding import read_model
from services.onboarding.domain import (
    Activate,
    Apply,
    Assess,
    Command,
    CommandRejected,
    InvalidCommand,
    RecordApproval,
    RecordDueDiligence,
    SignAgreement,
    Status,
)
from services.onboarding.handlers import (
    OccurredAt,
    Onboarding,
    Outcome,
    PartnerNotFound,
    is_partner_id,
    new_partner_id,
    stream_of,
)
from services.onboarding.schemas import (
    AgreementIn,
    ApplicationIn,
    ApprovalIn,
    AssessmentIn,
    AssessmentResultOut,
    CommandBody,
    DueDiligenceIn,
    EventPage,
    PartnerOut,
    PartnerPage,
)
from services.runtime.auth import Identity, authenticate, require_scopes, visible_partner
from services.runtime.commands import check_if_match, etag, metadata_for, resolve_occurred_at
from services.runtime.pagination import Cursor, Limit, decode_cursor, encode_cursor
from services.runtime.problems import PROBLEM_SCHEMA, Problem, not_found, problem_response

# One dependency per route instead of a chain: FastAPI pays per dependency node on
# every request, and these routes sit on the onboarding hot path.
_needs_read = require_scopes("partners:read")
_needs_write = require_scopes("partners:write")


async def _reader(request: Request) -> Identity:
    return await _needs_read(await authenticate(request))


async def _onboarding_writer(request: Request) -> Identity:
    identity = await _needs_write(await authenticate(request))
    # A partner must never assess, diligence or approve itself, whatever scopes it was given.
    if identity.partner_id is not None and not identity.is_ops:
        raise Problem(
            403,
            "partner clients cannot run onboarding commands",
            title="Forbidden",
            type="partner-client-forbidden",
        )
    return identity


Reader = Annotated[Identity, Depends(_reader)]
Writer = Annotated[Identity, Depends(_onboarding_writer)]


async def _onboarding(request: Request) -> Onboarding:
    # async: FastAPI would run a plain `def` dependency in a worker thread.
    service: Onboarding = request.app.state.onboarding
    return service


Service = Annotated[Onboarding, Depends(_onboarding)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such partner (or another partner's)", **PROBLEM_SCHEMA},
    409: {"description": "The command does not fit the partner's state; names current_state and allowed", **PROBLEM_SCHEMA},
    412: {"description": "If-Match is stale", **PROBLEM_SCHEMA},
}

router = APIRouter(prefix="/v1/partners", tags=["partners"])


def _json(body: Any, *, status: int = 200, version: int | None = None, **headers: str) -> Response:
    if version is not None:
        headers["ETag"] = etag(version)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _when(body: CommandBody | None, caller: Identity, request: Request) -> OccurredAt:
    requested = body.occurred_at if body is not None else None
    clock = request.app.state.clock
    return lambda last: resolve_occurred_at(caller=caller, occurred_at=requested, clock=clock, not_before=last)


async def _execute(
    service: Onboarding, partner_id: str, command: Command, body: CommandBody | None, caller: Identity, request: Request
) -> Outcome:
    return await service.execute(
        partner_id,
        command,
        metadata=metadata_for(request, caller),
        precondition=(lambda version: check_if_match(request, version)) if "if-match" in request.headers else None,
        occurred_at=_when(body, caller, request),
    )


@router.post("", status_code=201, responses={201: {"model": PartnerOut}})
async def apply(body: ApplicationIn, caller: Writer, service: Service, request: Request) -> Response:
    """Record a partner's application; the partner starts as `applied`."""
    when = resolve_occurred_at(caller=caller, occurred_at=body.occurred_at, clock=request.app.state.clock, not_before=None)
    command = Apply(
        partner_id=new_partner_id(),
        name=body.name,
        website=str(body.website),
        category=body.category,
        contact_email=str(body.contact_email),
    )
    outcome = await service.apply(command, occurred_at=when, metadata=metadata_for(request, caller))
    return _json(outcome.record, status=201, version=outcome.version, Location=f"{router.prefix}/{command.partner_id}")


@router.get("", responses={200: {"model": PartnerPage}})
async def list_partners(
    caller: Reader,
    request: Request,
    status: Annotated[Status | None, Query(description="only partners in this status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Partners in creation order (a partner client sees only itself)."""
    after = _int_in(decode_cursor(cursor), "after")
    only = None if caller.is_ops or caller.partner_id is None else caller.partner_id
    rows, more = await read_model.page(
        request.app.state.engine, status=status, only_partner=only, after_position=after, limit=limit
    )
    next_cursor = encode_cursor({"after": rows[-1].created_position}) if more and rows else None
    return _json({"items": [r.record for r in rows], "next_cursor": next_cursor})


@router.get("/{partner_id}", responses={200: {"model": PartnerOut}, 304: {"description": "Not modified"}, **_ERRORS})
async def get_partner(partner_id: str, caller: Reader, request: Request) -> Response:
    """One partner; `ETag` is its stream version."""
    visible_partner(caller, partner_id, "partner", partner_id)
    row = await read_model.get(request.app.state.engine, partner_id)
    if row is None:
        raise not_found("partner", partner_id)
    if request.headers.get("if-none-match") == etag(row.version):
        return Response(status_code=304, headers={"ETag": etag(row.version)})
    return _json(row.record, version=row.version)


@router.get("/{partner_id}/events", responses={200: {"model": EventPage}, **_ERRORS})
async def partner_events(
    partner_id: str, caller: Reader, service: Service, limit: Limit = 100, cursor: Cursor = None
) -> Response:
    """The partner's full event history as CloudEvents JSON, oldest first."""
    visible_partner(caller, partner_id, "partner", partner_id)
    after = _int_in(decode_cursor(cursor), "after")
    store = service.store
    stream = stream_of(partner_id)
    events = await store.read_stream(stream, after_version=after) if is_partner_id(partner_id) else []
    if not events and (after == 0 or await store.stream_version(stream) == 0):
        raise not_found("partner", partner_id)
    shown = events[:limit]
    next_cursor = encode_cursor({"after": shown[-1].stream_version}) if len(events) > limit else None
    return _json({"items": [e.to_json() for e in shown], "next_cursor": next_cursor})


@router.post("/{partner_id}/assessment", responses={200: {"model": AssessmentResultOut}, **_ERRORS})
async def assess(partner_id: str, body: AssessmentIn, caller: Writer, service: Service, request: Request) -> Response:
    """Score the partner on the assessment matrix; answers the weighted score and recommended tier."""
    command = Assess(scores=body.scores.model_dump())
    outcome = await _execute(service, partner_id, command, body, caller, request)
    assessment = outcome.record["assessment"]
    answer = {
        **outcome.record,
        "weighted_score": assessment["weighted_score"],
        "recommended_tier": assessment["recommended_tier"],
        "scoring_model": assessment["scoring_model"],
    }
    return _json(answer, version=outcome.version)


@router.post("/{partner_id}/due-diligence", responses={200: {"model": PartnerOut}, **_ERRORS})
async def due_diligence(
    partner_id: str, body: DueDiligenceIn, caller: Writer, service: Service, request: Request
) -> Response:
    """Record a due-diligence phase (in order); a failed phase rejects the partner."""
    command = RecordDueDiligence(
        phase=body.phase, passed=body.passed, findings=body.findings, recorded_by=caller.client_id
    )
    outcome = await _execute(service, partner_id, command, body, caller, request)
    return _json(outcome.record, version=outcome.version)


@router.post("/{partner_id}/approvals", responses={200: {"model": PartnerOut}, **_ERRORS})
async def approve(partner_id: str, body: ApprovalIn, caller: Writer, service: Service, request: Request) -> Response:
    """Approve or reject as the calling client; strategic needs two distinct approvers, any reject rejects."""
    command = RecordApproval(approver=caller.client_id, decision=body.decision, comment=body.comment)
    outcome = await _execute(service, partner_id, command, body, caller, request)
    return _json(outcome.record, version=outcome.version)


@router.post("/{partner_id}/agreement", responses={200: {"model": PartnerOut}, **_ERRORS})
async def sign_agreement(
    partner_id: str, body: AgreementIn, caller: Writer, service: Service, request: Request
) -> Response:
    """Record the signed agreement; SLA terms left out take the seeds' targets."""
    command = SignAgreement(
        agreement_type=body.agreement_type, starts_on=body.starts_on, ends_on=body.ends_on, sla=body.sla.terms()
    )
    outcome = await _execute(service, partner_id, command, body, caller, request)
    return _json(outcome.record, version=outcome.version)


@router.post("/{partner_id}/activate", responses={200: {"model": PartnerOut}, **_ERRORS})
async def activate(
    partner_id: str, caller: Writer, service: Service, request: Request, body: CommandBody | None = None
) -> Response:
    """Activate an approved partner whose agreement is signed."""
    outcome = await _execute(service, partner_id, Activate(), body, caller, request)
    return _json(outcome.record, version=outcome.version)


def _int_in(position: dict[str, Any] | None, key: str) -> int:
    if position is None:
        return 0
    value = position.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Problem(422, "cursor is not valid; pass next_cursor from a previous page", title="Invalid Cursor")
    return value


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors as problems: state conflicts 409, invalid commands 422, unknown 404."""

    @app.exception_handler(CommandRejected)
    async def _rejected(request: Request, exc: CommandRejected) -> Response:
        problem = Problem(
            409,
            exc.detail,
            title="Invalid State Transition" if exc.reason == "invalid-state-transition" else "Conflict",
            type=exc.reason,
            current_state=exc.current_state,
            allowed=list(exc.allowed),
            **exc.extensions,
        )
        return problem_response(problem, request.url.path)

    @app.exception_handler(InvalidCommand)
    async def _invalid(request: Request, exc: InvalidCommand) -> Response:
        return problem_response(
            Problem(422, str(exc), title="Validation Failed", type="validation-failed"), request.url.path
        )

    @app.exception_handler(PartnerNotFound)
    async def _unknown(request: Request, exc: PartnerNotFound) -> Response:
        return problem_response(not_found("partner", str(exc.args[0])), request.url.path)
