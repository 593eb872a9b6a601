"""What every command route does the same way: ETag/If-Match, occurred_at, event metadata."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import Request, Response

from events.envelope import EventMetadata
from services.runtime.auth import Identity
from services.runtime.clock import Clock
from services.runtime.problems import Problem
from services.runtime.telemetry import current_traceparent


def etag(version: int) -> str:
    """The strong ETag of an aggregate at `version`."""
    return f'"{version}"'


def set_etag(response: Response, version: int) -> None:
    """Put the aggregate's version in the answer's `ETag`."""
    response.headers["ETag"] = etag(version)


def check_if_match(request: Request, current_version: int) -> int | None:
    """The expected version from `If-Match` (412 when stale); None when the header is absent."""
    header = request.headers.get("if-match")
    if header is None:
        return None
    header = header.strip()
    if header == "*":
        return current_version
    candidates = [part.strip().removeprefix("W/") for part in header.split(",")]
    if etag(current_version) not in candidates:
        raise Problem(
            412,
            f"the resource is at version {current_version}; If-Match was {header}",
            title="Precondition Failed",
            type="stale-if-match",
            current_etag=etag(current_version),
        )
    return current_version


def resolve_occurred_at(
    *, caller: Identity, occurred_at: datetime | None, clock: Clock, not_before: datetime | None
) -> datetime | None:
    """Validate an ops-supplied `occurred_at` (historical import); None means now."""
    if occurred_at is None:
        return None
    if not caller.is_ops:
        raise Problem(403, "only ops clients may set occurred_at", title="Forbidden", type="occurred-at-forbidden")
    if occurred_at.tzinfo is None:
        raise Problem(422, "occurred_at needs a timezone (e.g. 2026-01-31T12:00:00Z)", title="Validation Failed", type="validation-failed")
    try:
        occurred_at.astimezone(UTC)  # stored in UTC: 0001-01-01T00:00+14:00 is before year 1
    except OverflowError:
        raise Problem(422, "occurred_at is out of range", title="Validation Failed", type="occurred-at-out-of-range") from None
    if occurred_at > clock.now():
        raise Problem(422, "occurred_at is in the future", title="Validation Failed", type="occurred-at-in-future")
    if not_before is not None and occurred_at < not_before:
        raise Problem(
            422,
            f"occurred_at is before the last event of this stream ({not_before.isoformat()})",
            title="Validation Failed",
            type="occurred-at-before-stream",
        )
    return occurred_at


def metadata_for(request: Request, caller: Identity | None) -> EventMetadata:
    """Event metadata of a command: actor, correlation (request id) and trace context."""
    request_id = getattr(request.state, "request_id", None) or request.scope.get("state", {}).get("request_id")
    return EventMetadata(
        actor=caller.client_id if caller else None,
        correlation_id=request_id,
        causation_id=request_id,
        traceparent=current_traceparent() or request.headers.get("traceparent"),
    )
