"""The log API: a service's own events by position, for catch-up and rebuilds.

`GET /internal/events?after=<position>&limit=<n>` returns the events after `after` in
position order, as CloudEvents JSON, with the store's head position in the body and in
`X-Head-Position`. This is the authoritative channel; Kafka is the live one.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Response
from fastapi.params import Depends as DependsParam
from pydantic import BaseModel

from events.store import EventStore

HEAD_HEADER = "X-Head-Position"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_POSITION = 2**63 - 1  # a larger `after` cannot be bound to SQL (it answered 500)


class LogPage(BaseModel):
    """One page of a service's event log."""

    items: list[dict[str, Any]]
    """Events in CloudEvents JSON (structured) form, in position order."""
    next_after: int
    """Pass as `after` to read on (the last position returned, or `after` when none)."""
    head: int
    """The newest position in the store when the page was read."""


def log_router(store: EventStore, require_scope_dependency: Any) -> APIRouter:
    """A router serving `store`'s log; `require_scope_dependency` authorises (scope `events:read`).

    The dependency is either a dependency callable or an already wrapped
    `Depends(...)`; it runs before the handler and raises to refuse the request.
    """
    dependency = (
        require_scope_dependency
        if isinstance(require_scope_dependency, DependsParam)
        else Depends(require_scope_dependency)
    )
    router = APIRouter(dependencies=[dependency])

    @router.get(
        "/internal/events",
        response_class=Response,
        responses={200: {"model": LogPage, "description": "A page of events after `after`."}},
        summary="Read the event log by position",
    )
    async def read_events(
        after: Annotated[int, Query(ge=0, le=MAX_POSITION, description="Return events after this position.")] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="At most this many events.")] = DEFAULT_LIMIT,
    ) -> Response:
        """Events after `after` in position order (scope `events:read`); the head position is in `X-Head-Position`."""
        items = await store.read_all_json(after=after, limit=limit)
        # Read after the page so that the head is never below a position it contains.
        head = await store.head_position()
        body = {
            "items": items,
            "next_after": int(items[-1]["sequence"]) if items else after,
            "head": head,
        }
        return Response(
            content=orjson.dumps(body),
            media_type="application/json",
            headers={HEAD_HEADER: str(head), "Cache-Control": "no-store"},
        )

    return router
