"""The async side of the OAuth endpoints: parse, preload, run authlib, commit what it asked for."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from events.envelope import EventMetadata
from events.store import EventStore
from services.gateway.clients import ClientRegistry
from services.gateway.denylist import revoke_token
from services.gateway.oauth import (
    ASSERTION_TYPE,
    AuthorizationServer,
    IncomingRequest,
    RequestContext,
    assertion_subject,
    basic_client_id,
    invalid_client,
    set_context,
)
from services.gateway.tables import assertion_jtis
from services.runtime.auth import InvalidToken, TokenVerifier
from services.runtime.problems import Problem, problem_response
from services.runtime.revocations import RevocationList

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 64 * 1024
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class FormError(ValueError):
    """The request is not a valid form post (→ invalid_request)."""


class AuthorizationService:
    """Token, introspection and revocation endpoints."""

    def __init__(
        self,
        *,
        server: AuthorizationServer,
        registry: ClientRegistry,
        verifier: TokenVerifier,
        store: EventStore,
        revocations: RevocationList,
        now: Callable[[], datetime],
    ) -> None:
        self.server = server
        self.registry = registry
        self.verifier = verifier
        self.store = store
        self.revocations = revocations
        self.now = now

    async def token(self, request: Request) -> Response:
        """POST /oauth/token."""
        prepared = await self._prepare(request)
        if isinstance(prepared, Response):
            return prepared
        incoming, ctx = prepared
        if not incoming.form.get("grant_type"):
            return _answer(400, {"error": "invalid_request", "error_description": "grant_type is required"}, [])
        status, body, headers = self.server.create_token_response(incoming)
        if status == 200 and ctx.assertion_jtis and not await self._remember_assertions(ctx):
            status, body, headers = invalid_client("the client assertion (jti) was already used")
        return _answer(status, body, headers)

    async def token_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /oauth/token` as a plain ASGI app (the gateway's fast path around FastAPI)."""
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _REQUEST_ID.match(value):
                request_id = value.decode()
        try:
            response = await self.token(Request(scope, receive))
        except Exception:  # the FastAPI route would answer a problem; so does the shortcut
            log.exception("token endpoint failed")
            response = problem_response(Problem(500, "an unexpected error occurred; it has been logged"))
        response.headers["x-request-id"] = request_id or os.urandom(16).hex()
        await response(scope, receive, send)

    async def introspect(self, request: Request) -> Response:
        """POST /oauth/introspect (RFC 7662)."""
        prepared = await self._prepare(request, with_token=True)
        if isinstance(prepared, Response):
            return prepared
        incoming, _ = prepared
        status, body, headers = self.server.create_endpoint_response("introspection", incoming)
        return _answer(status, body, headers)

    async def revoke(self, request: Request) -> Response:
        """POST /oauth/revoke (RFC 7009)."""
        prepared = await self._prepare(request, with_token=True)
        if isinstance(prepared, Response):
            return prepared
        incoming, ctx = prepared
        status, body, headers = self.server.create_endpoint_response("revocation", incoming)
        if status == 200:
            actor = incoming.client.get_client_id() if incoming.client is not None else None
            for identity in ctx.revoked:
                if self.revocations.is_revoked(identity.token_id, identity.client_id):
                    continue
                revocation = await revoke_token(self.store, identity, EventMetadata(actor=actor))
                self.revocations.add(revocation)
        return _answer(status, body, headers)

    async def _prepare(
        self, request: Request, *, with_token: bool = False
    ) -> tuple[IncomingRequest, RequestContext] | Response:
        try:
            form = await _read_form(request)
        except FormError as exc:
            return _answer(400, {"error": "invalid_request", "error_description": str(exc)}, [])
        ctx = RequestContext()
        set_context(ctx)
        basic_id, malformed = basic_client_id(request.headers.get("authorization"))
        if malformed:
            return _answer(*invalid_client("the Basic credentials are malformed"))
        candidates = {basic_id, form.get("client_id")}
        if form.get("client_assertion_type") == ASSERTION_TYPE:
            candidates.add(assertion_subject(form.get("client_assertion")))
        for client_id in candidates:
            if client_id:
                record = await self.registry.lookup(client_id)
                if record is not None and not self.revocations.is_revoked("", client_id):
                    ctx.clients[client_id] = record
        if with_token and form.get("token"):
            try:
                ctx.token = await self.verifier.verify(form["token"])
                ctx.claims = _payload(form["token"])
            except InvalidToken:
                ctx.token = None
        incoming = IncomingRequest(request.method, request.scope["path"], request.headers, form)
        return incoming, ctx

    async def _remember_assertions(self, ctx: RequestContext) -> bool:
        """Record the assertion jtis; False when one was seen before (a replay)."""
        now = self.now()
        try:
            async with self.store.engine.begin() as conn:
                await conn.execute(delete(assertion_jtis).where(assertion_jtis.c.expires_at < now))
                for client_id, jti, exp in ctx.assertion_jtis:
                    await conn.execute(
                        insert(assertion_jtis).values(
                            client_id=client_id, jti=jti, expires_at=datetime.fromtimestamp(exp, UTC)
                        )
                    )
        except IntegrityError:
            return False
        return True


async def _read_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FormError("the body must be application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError("the form is not valid application/x-www-form-urlencoded UTF-8") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            # RFC 6749 §3.2: request parameters MUST NOT be included more than once.
            raise FormError(f"parameter {name!r} is repeated")
        form[name] = value
    return form


def _payload(token: str) -> dict[str, Any]:
    """The claims of a token that was verified just before."""
    part = token.split(".")[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _answer(status: int, body: dict[str, Any], headers: list[tuple[str, str]]) -> Response:
    merged = {name: value for name, value in headers if name.lower() != "content-type"}
    merged.update(NO_STORE)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=merged)
