"""What the lifecycle routes share: dependencies, refusals as problems, If-Match races."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from events.store import ConcurrencyError, EventStore
from services.lifecycle.errors import Conflict, Invalid, Refused
from services.runtime.clock import Clock
from services.runtime.commands import check_if_match, etag
from services.runtime.problems import Problem


def problem_of(refusal: Refused) -> Problem:
    """409 for a command that does not fit the state, 422 for a value that does not fit it."""
    if isinstance(refusal, Conflict):
        return Problem(
            409,
            refusal.detail,
            title="Invalid State Transition",
            type="invalid-state-transition",
            current_state=refusal.state,
            allowed=refusal.allowed,
        )
    assert isinstance(refusal, Invalid)
    return Problem(
        422,
        refusal.detail,
        title="Validation Failed",
        type="validation-failed",
        errors=[{"loc": ["body", refusal.field], "msg": refusal.detail, "type": "value_error"}],
    )


def precondition(request: Request, current_version: int) -> bool:
    """Whether the caller sent If-Match (412 when it names another version than the current)."""
    return check_if_match(request, current_version) is not None


@contextlib.contextmanager
def command_errors(*, if_match: bool) -> Iterator[None]:
    """Turn domain refusals into problems, and a lost race into 412 when If-Match was sent."""
    try:
        yield
    except Refused as refusal:
        raise problem_of(refusal) from refusal
    except ConcurrencyError as exc:
        if not if_match:
            raise
        raise Problem(
            412,
            f"{exc.stream_id} changed while this request ran; read it again",
            title="Precondition Failed",
            type="stale-if-match",
            current_etag=etag(exc.actual) if exc.actual >= 0 else None,
        ) from exc


# async on purpose: FastAPI runs a plain `def` dependency in a worker thread, three thread
# round trips per request here for what is an attribute lookup.
async def _store(request: Request) -> EventStore:
    return request.app.state.store  # type: ignore[no-any-return]


async def _engine(request: Request) -> AsyncEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def _clock(request: Request) -> Clock:
    return request.app.state.clock  # type: ignore[no-any-return]


Store = Annotated[EventStore, Depends(_store)]
Engine = Annotated[AsyncEngine, Depends(_engine)]
AppClock = Annotated[Clock, Depends(_clock)]
