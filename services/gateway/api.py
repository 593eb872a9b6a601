"""The gateway's own HTTP API: OAuth endpoints, discovery, client admin, the deny-list feed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.clients import ClientConflict, ClientError, ClientRecord, UnknownClient
from services.gateway.context import Gateway
from services.gateway.denylist import read_revocations
from services.gateway.oauth import metadata
from services.runtime.auth import Identity, Ops, require_scopes
from services.runtime.commands import metadata_for
from services.runtime.http import async_client
from services.runtime.pagination import INT64_MAX, Cursor, Limit, Page, decode_cursor, encode_cursor
from services.runtime.problems import PROBLEM_SCHEMA, Problem, not_found
from services.runtime.settings import Settings
from services.runtime.text import OneLine

# Answers carrying a secret must not be kept by any cache.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
EventsReader = Annotated[Identity, Depends(require_scopes("events:read"))]

_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "scope": {"type": "string", "description": "space-separated scopes (default: all of the client's)"},
                        "client_id": {"type": "string", "description": "client_secret_post"},
                        "client_secret": {"type": "string", "description": "client_secret_post"},
                        "client_assertion_type": {"type": "string", "description": "private_key_jwt"},
                        "client_assertion": {"type": "string", "description": "private_key_jwt"},
                    },
                    "required": ["grant_type"],
                }
            }
        },
    }
}
_TOKEN_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "token": {"type": "string"},
                        "token_type_hint": {"type": "string", "enum": ["access_token"]},
                    },
                    "required": ["token"],
                }
            }
        },
    }
}
_OAUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "RFC 6749 §5.2 error (invalid_request, invalid_scope, unsupported_grant_type, …)"},
    401: {"description": "invalid_client (with WWW-Authenticate)"},
}


def oauth_router() -> APIRouter:
    """RFC 6749 token endpoint, RFC 7662 introspection, RFC 7009 revocation, discovery."""
    router = APIRouter(tags=["oauth"])

    @router.post("/oauth/token", openapi_extra=_FORM, responses=_OAUTH_ERRORS)
    async def token(request: Request, gateway: Gateway) -> Response:
        """Issue an access token (client_credentials; client_secret_basic, client_secret_post or private_key_jwt)."""
        return await gateway.authorization.token(request)

    @router.post("/oauth/introspect", openapi_extra=_TOKEN_FORM, responses=_OAUTH_ERRORS)
    async def introspect(request: Request, gateway: Gateway) -> Response:
        """Introspect an access token (a client sees its own tokens; ops clients any)."""
        return await gateway.authorization.introspect(request)

    @router.post("/oauth/revoke", openapi_extra=_TOKEN_FORM, responses=_OAUTH_ERRORS)
    async def revoke(request: Request, gateway: Gateway) -> Response:
        """Revoke an access token: the gateway and every service reject it until it expires."""
        return await gateway.authorization.revoke(request)

    @router.get(
        "/.well-known/jwks.json",
        response_class=Response,
        responses={200: {"description": "JWK Set", "content": {"application/jwk-set+json": {"schema": {"type": "object"}}}}},
    )
    async def jwks(gateway: Gateway) -> Response:
        """The public keys access tokens are signed with (RFC 7517)."""
        import orjson

        return Response(
            orjson.dumps(gateway.keys.jwks()),
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=60"},
        )

    @router.get("/.well-known/oauth-authorization-server")
    async def discovery(gateway: Gateway) -> dict[str, Any]:
        """Authorization server metadata (RFC 8414)."""
        return metadata(gateway.runtime.settings.token_issuer)

    return router


class NewClient(BaseModel):
    """A client to register."""

    model_config = ConfigDict(extra="forbid")

    name: OneLine = Field(min_length=1, max_length=200)
    partner_id: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    scopes: list[str] = Field(min_length=1, max_length=20)
    jwks: dict[str, Any] | None = Field(
        default=None, description="public JWK Set for private_key_jwt client authentication (RFC 7523)"
    )


class ClientOut(BaseModel):
    """A registered client (its secret is never shown again)."""

    client_id: str
    name: str
    kind: str
    partner_id: str | None
    scopes: list[str]
    token_endpoint_auth_methods: list[str]
    created_at: datetime
    secret_rotated_at: datetime | None
    revoked_at: datetime | None
    status: str


class CreatedClient(ClientOut):
    """A new client with its secret, shown this once."""

    client_secret: str


class RotatedSecret(BaseModel):
    """A client's new secret, shown this once; the old one no longer works."""

    client_id: str
    client_secret: str
    secret_rotated_at: datetime | None


def _problem(exc: ClientError) -> Problem:
    if isinstance(exc, UnknownClient):
        return Problem(404, str(exc), title="Not Found", type="not-found")
    if isinstance(exc, ClientConflict):
        return Problem(409, str(exc), title="Conflict", type="client-revoked", state="revoked", allowed=[])
    return Problem(422, str(exc), title="Validation Failed", type="validation-failed")


def _out(record: ClientRecord) -> ClientOut:
    return ClientOut(**record.public())


def admin_router() -> APIRouter:
    """The client registry (ops clients only)."""
    router = APIRouter(prefix="/admin/clients", tags=["clients"], responses={404: {"description": "Unknown client", **PROBLEM_SCHEMA}})

    @router.post("", status_code=201, response_model=CreatedClient)
    async def create_client(
        body: NewClient, caller: Ops, request: Request, response: Response, gateway: Gateway
    ) -> CreatedClient:
        """Register a client for a partner or for ops; the secret is shown only in this answer."""
        try:
            record, secret = await gateway.registry.create(
                name=body.name,
                scopes=body.scopes,
                partner_id=body.partner_id,
                jwks=body.jwks,
                metadata=metadata_for(request, caller),
            )
        except ClientError as exc:
            raise _problem(exc) from exc
        response.headers.update(NO_STORE)
        return CreatedClient(**record.public(), client_secret=secret)

    @router.get("", response_model=Page[ClientOut])
    async def list_clients(
        caller: Ops,
        gateway: Gateway,
        partner_id: str | None = Query(default=None, max_length=100),
        status: Literal["active", "revoked"] | None = Query(default=None),
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Page[ClientOut]:
        """Registered clients in creation order (`?partner_id=`, `?status=active|revoked`)."""
        try:
            after = int((decode_cursor(cursor) or {}).get("seq", 0))
        except (TypeError, ValueError) as exc:
            raise Problem(422, "cursor is not valid; pass next_cursor from a previous page", title="Invalid Cursor") from exc
        records = await gateway.registry.list(partner_id=partner_id, status=status, after_seq=after, limit=limit + 1)
        page = records[:limit]
        more = len(records) > limit
        return Page[ClientOut](
            items=[_out(r) for r in page],
            next_cursor=encode_cursor({"seq": page[-1].seq}) if more and page else None,
        )

    @router.get("/{client_id}", response_model=ClientOut)
    async def get_client(client_id: str, caller: Ops, gateway: Gateway) -> ClientOut:
        """One client."""
        record = await gateway.registry.get(client_id)
        if record is None:
            raise not_found("client", client_id)
        return _out(record)

    @router.post("/{client_id}/rotate-secret", response_model=RotatedSecret)
    async def rotate_secret(
        client_id: str, caller: Ops, request: Request, response: Response, gateway: Gateway
    ) -> RotatedSecret:
        """A new secret, shown only in this answer; the old one stops working now."""
        try:
            record, secret = await gateway.registry.rotate_secret(client_id, metadata=metadata_for(request, caller))
        except ClientError as exc:
            raise _problem(exc) from exc
        response.headers.update(NO_STORE)
        return RotatedSecret(client_id=client_id, client_secret=secret, secret_rotated_at=record.secret_rotated_at)

    @router.delete("/{client_id}", status_code=204)
    async def revoke_client(client_id: str, caller: Ops, request: Request, gateway: Gateway) -> Response:
        """Revoke a client: no new tokens, and every token it holds is rejected everywhere."""
        try:
            recorded = await gateway.registry.revoke(client_id, metadata=metadata_for(request, caller))
        except ClientError as exc:
            raise _problem(exc) from exc
        from services.runtime.revocations import Revocation

        gateway.revocations.add(Revocation(position=recorded.position, kind="client", client_id=client_id))
        return Response(status_code=204)

    return router


def operations_router() -> APIRouter:
    """The gateway's own consumer (partner tiers from onboarding)."""
    router = APIRouter(tags=["operations"])

    @router.get("/admin/consumers")
    async def consumers(caller: Ops, gateway: Gateway) -> dict[str, Any]:
        """The tier subscription's checkpoint per onboarding partition, its lag and parked events."""
        from events.subscription import list_dead_letters
        from services.runtime.consumers import dead_letter_view

        subscription = gateway.subscription
        runtime = gateway.runtime
        relay = runtime.relay
        parked = await list_dead_letters(runtime.engine, subscription="gateway-tiers")
        doc: dict[str, Any] = {
            "consumers": [],
            "relay": {"source": "gateway", "lag": await relay.lag()} if relay is not None else None,
        }
        if subscription is not None:
            positions = await subscription.positions()
            head = await _onboarding_head(runtime.settings)
            lag = await subscription.lag({"onboarding": head}) if head is not None else {}
            doc["consumers"].append(
                {
                    "subscription": subscription.name,
                    "sources": [
                        {
                            "source": source,
                            "head": head,
                            "lag": lag.get(source),
                            "partitions": [{"partition": p, "position": pos} for p, pos in sorted(parts.items())],
                        }
                        for source, parts in positions.items()
                    ],
                    "parked": [dead_letter_view(d, service="gateway") for d in parked],
                }
            )
        return doc

    return router


async def _onboarding_head(settings: Settings) -> int | None:
    """Onboarding's newest log position (None when it cannot be asked)."""
    if not settings.internal_client_id or not settings.internal_client_secret:
        return None
    import httpx

    from services.runtime.tokens import TokenProvider

    try:
        token = await TokenProvider(settings)()
        async with async_client(timeout=3.0) as http:
            response = await http.get(
                settings.url_of("onboarding") + "/internal/events",
                params={"after": 0, "limit": 1},
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
            return int(response.headers["x-head-position"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def internal_router() -> APIRouter:
    """The deny-list feed services poll (scope events:read)."""
    router = APIRouter(tags=["internal"])

    @router.get("/internal/revocations")
    async def revocations(
        caller: EventsReader,
        gateway: Gateway,
        after: int = Query(default=0, ge=0, le=INT64_MAX),
        limit: int = Query(default=1000, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Revoked tokens (until they expire) and revoked clients after store position `after`."""
        runtime = gateway.runtime
        items = await read_revocations(runtime.engine, after=after, limit=limit, now=runtime.clock.now())
        return {
            "items": [item.as_json() for item in items],
            "next_after": items[-1].position if items else after,
        }

    return router
