"""Routes of `/v1/webhooks/**` (DESIGN §4a): endpoints, secrets, message log, resend, recover."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.lifecycle.webhooks.domain import MAX_EVENT_TYPES, MAX_URL_LENGTH, InvalidEndpoint
from services.lifecycle.webhooks.repository import (
    EndpointRow,
    MessageRow,
    attempts_of,
    list_endpoints,
    list_messages,
)
from services.lifecycle.webhooks.repository import get_message as load_message
from services.lifecycle.webhooks.service import StaleEndpoint, WebhookService
from services.runtime.auth import Identity, require_scopes
from services.runtime.commands import check_if_match, etag, set_etag
from services.runtime.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from services.runtime.problems import PROBLEM_SCHEMA, Problem, not_found
from services.runtime.text import FreeText

Reader = Annotated[Identity, Depends(require_scopes("webhooks:read"))]
Writer = Annotated[Identity, Depends(require_scopes("webhooks:write"))]
EventTypes = list[Annotated[str, Field(min_length=1, max_length=100)]]


# --- bodies --------------------------------------------------------------------------------


class EndpointIn(BaseModel):
    """A new endpoint."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, examples=["https://partner.example/webhooks"])
    event_types: EventTypes = Field(min_length=1, max_length=MAX_EVENT_TYPES, examples=[["integration.*", "sla.breached"]])
    description: FreeText = Field(default="", max_length=500)
    partner_id: str | None = Field(default=None, min_length=1, max_length=200, description="ops only")


class EndpointPatch(BaseModel):
    """Changes to an endpoint (only the fields given change)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH)
    event_types: EventTypes | None = Field(default=None, min_length=1, max_length=MAX_EVENT_TYPES)
    description: FreeText | None = Field(default=None, max_length=500)
    disabled: bool | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> EndpointPatch:
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self


class RecoverIn(BaseModel):
    """Which failed messages to send again."""

    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime


# --- answers -------------------------------------------------------------------------------


class EndpointOut(BaseModel):
    """An endpoint (its secret is shown only when created or rotated)."""

    id: str
    partner_id: str
    url: str
    description: str
    event_types: list[str]
    disabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None
    pending_messages: int = Field(description="messages waiting for delivery (queue depth)")
    created_at: datetime
    updated_at: datetime


class EndpointCreated(EndpointOut):
    """A new endpoint with its signing secret (shown this once)."""

    secret: str


class SecretOut(BaseModel):
    """A rotated secret; the previous one keeps signing until `previous_secret_expires_at`."""

    id: str
    secret: str
    previous_secret_expires_at: datetime | None


class AttemptOut(BaseModel):
    """One delivery attempt."""

    attempted_at: datetime
    status_code: int | None
    duration_ms: float
    outcome: Literal["succeeded", "failed"]
    error: str | None
    response_excerpt: str | None
    trigger: str


class MessageOut(BaseModel):
    """A message to an endpoint with every attempt."""

    id: str
    endpoint_id: str
    event_id: str = Field(description="CloudEvents id of the event; sent as webhook-id")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempt_count: int = Field(description="attempts in the current run")
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    payload: dict[str, Any]
    attempts: list[AttemptOut]


class RecoverOut(BaseModel):
    """How many failed messages were scheduled again."""

    endpoint_id: str
    since: datetime
    recovered: int


# --- routes --------------------------------------------------------------------------------


def router(service: WebhookService) -> APIRouter:
    """The webhook routes bound to `service`."""
    api = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses={404: {"description": "Not found", **PROBLEM_SCHEMA}})

    async def endpoint_for(caller: Identity, endpoint_id: str) -> EndpointRow:
        endpoint = await service.get(endpoint_id) if len(endpoint_id) <= 40 else None
        if endpoint is None or not caller.can_see(endpoint.partner_id):
            raise not_found("webhook endpoint", endpoint_id)
        return endpoint

    async def message_for(caller: Identity, message_id: str) -> MessageRow:
        message = await load_message(service.engine, message_id) if len(message_id) <= 40 else None
        if message is None or not caller.can_see(message.partner_id):
            raise not_found("webhook message", message_id)
        return message

    async def show(endpoint: EndpointRow, response: Response | None = None) -> EndpointOut:
        depth = (await service.pending([endpoint.id])).get(endpoint.id, 0)
        if response is not None:
            set_etag(response, endpoint.version)
        return _endpoint_out(endpoint, depth)

    def expected(request: Request, endpoint: EndpointRow) -> int | None:
        return check_if_match(request, endpoint.version)

    def stale(exc: StaleEndpoint) -> Problem:
        return Problem(
            412,
            f"the endpoint is at version {exc.current}; read it again",
            title="Precondition Failed",
            type="stale-if-match",
            current_etag=etag(exc.current),
        )

    @api.post(
        "/endpoints",
        status_code=status.HTTP_201_CREATED,
        response_model=EndpointCreated,
        responses={422: {"description": "Invalid or refused URL, unknown event type", **PROBLEM_SCHEMA}},
    )
    async def create_endpoint(body: EndpointIn, caller: Writer, response: Response) -> EndpointCreated:
        """Register a webhook endpoint; the signing secret is in this answer only."""
        partner_id = _owner(caller, body.partner_id)
        try:
            created = await service.create(
                partner_id=partner_id, url=body.url, event_types=body.event_types, description=body.description
            )
        except InvalidEndpoint as exc:
            raise _invalid(exc) from exc
        response.headers["Location"] = f"/v1/webhooks/endpoints/{created.endpoint.id}"
        set_etag(response, created.endpoint.version)
        return EndpointCreated(**_endpoint_out(created.endpoint, 0).model_dump(), secret=created.secret)

    @api.get("/endpoints", response_model=Page[EndpointOut])
    async def list_all(
        caller: Reader,
        limit: Limit = 50,
        cursor: Cursor = None,
        partner_id: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Page[EndpointOut]:
        """List endpoints (a partner sees its own; ops may filter by partner_id)."""
        if not caller.is_ops:
            if caller.partner_id is None:
                raise Problem(403, "this client belongs to no partner", title="Forbidden")
            if partner_id is not None and partner_id != caller.partner_id:
                raise not_found("partner", partner_id)
            partner_id = caller.partner_id
        after = _position(cursor)
        rows = await list_endpoints(service.engine, partner_id=partner_id, after=after, limit=limit + 1)
        page, more = rows[:limit], len(rows) > limit
        depths = await service.pending([row.id for row in page])
        next_cursor = (
            encode_cursor({"c": page[-1].created_at.isoformat(), "i": page[-1].id}) if more and page else None
        )
        return Page[EndpointOut](items=[_endpoint_out(row, depths.get(row.id, 0)) for row in page], next_cursor=next_cursor)

    @api.get("/endpoints/{endpoint_id}", response_model=EndpointOut)
    async def get_endpoint(endpoint_id: str, caller: Reader, response: Response) -> EndpointOut:
        """One endpoint with its pending queue depth."""
        return await show(await endpoint_for(caller, endpoint_id), response)

    @api.patch(
        "/endpoints/{endpoint_id}",
        response_model=EndpointOut,
        responses={412: {"description": "Stale If-Match", **PROBLEM_SCHEMA}},
    )
    async def update_endpoint(
        endpoint_id: str, body: EndpointPatch, caller: Writer, request: Request, response: Response
    ) -> EndpointOut:
        """Change url, event_types, description; disable or enable (enabling resumes pending messages)."""
        endpoint = await endpoint_for(caller, endpoint_id)
        version = expected(request, endpoint)
        try:
            updated = await service.update(
                endpoint,
                changes=body.model_dump(exclude_unset=True),
                expected_version=version,
                actor=caller.client_id,
            )
        except InvalidEndpoint as exc:
            raise _invalid(exc) from exc
        except StaleEndpoint as exc:
            raise stale(exc) from exc
        return await show(updated, response)

    @api.delete(
        "/endpoints/{endpoint_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses={412: {"description": "Stale If-Match", **PROBLEM_SCHEMA}},
    )
    async def delete_endpoint(endpoint_id: str, caller: Writer, request: Request) -> Response:
        """Delete an endpoint with its messages and delivery log."""
        endpoint = await endpoint_for(caller, endpoint_id)
        try:
            await service.delete(endpoint, expected_version=expected(request, endpoint))
        except StaleEndpoint as exc:
            raise stale(exc) from exc
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @api.post("/endpoints/{endpoint_id}/rotate-secret", response_model=SecretOut)
    async def rotate_secret(endpoint_id: str, caller: Writer, request: Request, response: Response) -> SecretOut:
        """A new signing secret (shown once); the old one keeps signing beside it for 24 h."""
        endpoint = await endpoint_for(caller, endpoint_id)
        try:
            updated, secret = await service.rotate_secret(endpoint, expected_version=expected(request, endpoint))
        except StaleEndpoint as exc:
            raise stale(exc) from exc
        set_etag(response, updated.version)
        return SecretOut(id=updated.id, secret=secret, previous_secret_expires_at=updated.previous_secret_expires_at)

    @api.get("/endpoints/{endpoint_id}/messages", response_model=Page[MessageOut])
    async def endpoint_messages(
        endpoint_id: str,
        caller: Reader,
        limit: Limit = 50,
        cursor: Cursor = None,
        status: Literal["pending", "delivered", "failed"] | None = None,
    ) -> Page[MessageOut]:
        """The endpoint's messages, newest first, each with every attempt."""
        endpoint = await endpoint_for(caller, endpoint_id)
        before = _position(cursor)
        rows = await list_messages(service.engine, endpoint.id, status=status, before=before, limit=limit + 1)
        page, more = rows[:limit], len(rows) > limit
        logs = await attempts_of(service.engine, [m.id for m in page])
        next_cursor = encode_cursor({"c": page[-1].created_at.isoformat(), "i": page[-1].id}) if more and page else None
        return Page[MessageOut](items=[_message_out(m, logs[m.id]) for m in page], next_cursor=next_cursor)

    @api.post(
        "/endpoints/{endpoint_id}/recover",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=RecoverOut,
        responses={409: {"description": "Endpoint disabled", **PROBLEM_SCHEMA}},
    )
    async def recover(endpoint_id: str, body: RecoverIn, caller: Writer) -> RecoverOut:
        """Send again every failed message of the endpoint created since `since`."""
        endpoint = await endpoint_for(caller, endpoint_id)
        try:
            since = body.since.astimezone(UTC)
        except OverflowError as exc:
            raise Problem(422, "since is out of range", title="Validation Failed", type="validation-failed") from exc
        if since > service.clock.now():
            raise Problem(422, "since is in the future", title="Validation Failed", type="validation-failed")
        _require_enabled(endpoint)
        recovered = await service.recover(endpoint, since=since)
        return RecoverOut(endpoint_id=endpoint.id, since=body.since, recovered=recovered)

    @api.get("/messages/{message_id}", response_model=MessageOut)
    async def get_message(message_id: str, caller: Reader) -> MessageOut:
        """One message with every attempt."""
        message = await message_for(caller, message_id)
        logs = await attempts_of(service.engine, [message.id])
        return _message_out(message, logs[message.id])

    @api.post(
        "/messages/{message_id}/resend",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=MessageOut,
        responses={409: {"description": "Endpoint disabled", **PROBLEM_SCHEMA}},
    )
    async def resend(message_id: str, caller: Writer) -> MessageOut:
        """Send one message again now (same webhook-id), whatever its status."""
        message = await message_for(caller, message_id)
        endpoint = await endpoint_for(caller, message.endpoint_id)
        _require_enabled(endpoint)
        again = await service.resend(message)
        logs = await attempts_of(service.engine, [again.id])
        return _message_out(again, logs[again.id])

    return api


def _owner(caller: Identity, partner_id: str | None) -> str:
    """Whose endpoint a create makes: ops name the partner; a partner client creates its own."""
    if caller.is_ops:
        if partner_id is None:
            raise Problem(422, "partner_id is required when an ops client creates an endpoint", title="Validation Failed", type="validation-failed")
        return partner_id
    if caller.partner_id is None:
        raise Problem(403, "this client belongs to no partner", title="Forbidden")
    if partner_id is not None and partner_id != caller.partner_id:
        raise Problem(403, "only ops clients may create endpoints for another partner", title="Forbidden")
    return caller.partner_id


def _require_enabled(endpoint: EndpointRow) -> None:
    if endpoint.disabled:
        raise Problem(
            409,
            f"endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); enable it first with PATCH {{\"disabled\": false}}",
            title="Endpoint Disabled",
            type="endpoint-disabled",
            state="disabled",
            allowed=["PATCH disabled=false"],
        )


def _position(cursor: str | None) -> tuple[datetime, str] | None:
    """The (created_at, id) key inside a cursor made by this API; 422 for anything else."""
    position = decode_cursor(cursor)
    if position is None:
        return None
    created_at: datetime | None = None
    ident = position.get("i")
    with contextlib.suppress(ValueError, OverflowError):
        parsed = datetime.fromisoformat(str(position.get("c")))
        # A naive time, or one outside the representable range in UTC, never reaches SQL.
        if parsed.tzinfo is not None:
            created_at = parsed.astimezone(UTC)
    if created_at is None or not isinstance(ident, str) or len(ident) > 40:
        raise Problem(422, "cursor is not valid; pass next_cursor from a previous page", title="Invalid Cursor")
    return created_at, ident


def _invalid(exc: InvalidEndpoint) -> Problem:
    return Problem(422, str(exc), title="Validation Failed", type="invalid-webhook-endpoint")


def _endpoint_out(row: EndpointRow, depth: int) -> EndpointOut:
    return EndpointOut(
        id=row.id,
        partner_id=row.partner_id,
        url=row.url,
        description=row.description,
        event_types=list(row.event_types),
        disabled=row.disabled,
        disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at,
        failing_since=row.failing_since,
        previous_secret_expires_at=row.previous_secret_expires_at,
        pending_messages=depth,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _message_out(row: MessageRow, log: list[dict[str, Any]]) -> MessageOut:
    return MessageOut(
        id=row.id,
        endpoint_id=row.endpoint_id,
        event_id=row.event_id,
        event_type=row.event_type,
        status=row.status,  # type: ignore[arg-type]
        attempt_count=row.attempts,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        payload=orjson.loads(row.payload),
        attempts=[
            AttemptOut(
                attempted_at=a["attempted_at"],
                status_code=a["status_code"],
                duration_ms=a["duration_ms"],
                outcome=a["outcome"],
                error=a["error"],
                response_excerpt=a["response_excerpt"],
                trigger=a["trigger"],
            )
            for a in log
        ],
    )
