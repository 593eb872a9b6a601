"""Webhook rules without I/O: event-type filters, URLs, the retry schedule and attempt outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

from events.catalog import EVENT_TYPES, is_webhook_deliverable

# Delay before attempt n+1 after n attempts (Standard Webhooks / Svix schedule); 8 attempts in all.
RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
JITTER = 0.2
MAX_RETRY_AFTER = 10 * 3600.0
DISABLE_AFTER = timedelta(days=5)
SECRET_OVERLAP = timedelta(hours=24)
RESPONSE_READ_CAP = 64 * 1024
MAX_URL_LENGTH = 2048
MAX_EVENT_TYPES = 50

DELIVERABLE_TYPES: tuple[str, ...] = tuple(sorted(t for t in EVENT_TYPES if is_webhook_deliverable(t)))
MessageStatus = Literal["pending", "delivered", "failed"]


class InvalidEndpoint(ValueError):
    """An endpoint's URL or event-type filter is not acceptable (the API answers 422)."""


# --- event-type filters ----------------------------------------------------------------


def normalise_event_types(patterns: list[str]) -> list[str]:
    """Validated, de-duplicated filter: exact deliverable types, `prefix.*`, or `*` (all)."""
    if not patterns:
        raise InvalidEndpoint("event_types needs at least one entry (use [\"*\"] for every event)")
    if len(patterns) > MAX_EVENT_TYPES:
        raise InvalidEndpoint(f"event_types takes at most {MAX_EVENT_TYPES} entries")
    seen: list[str] = []
    for raw in patterns:
        pattern = raw.strip()
        if pattern == "*":
            pass
        elif pattern.endswith(".*"):
            prefix = pattern[:-1]
            if not any(t.startswith(prefix) for t in DELIVERABLE_TYPES):
                raise InvalidEndpoint(f"{pattern!r} matches no deliverable event type")
        elif pattern not in DELIVERABLE_TYPES:
            if pattern in EVENT_TYPES:
                raise InvalidEndpoint(f"{pattern!r} is not delivered as a webhook")
            raise InvalidEndpoint(f"{pattern!r} is not an event type (known: {', '.join(DELIVERABLE_TYPES)})")
        if pattern not in seen:
            seen.append(pattern)
    return seen


def matches(patterns: list[str], event_type: str) -> bool:
    """Whether an endpoint filtering on `patterns` receives `event_type` (deliverable types only)."""
    if not is_webhook_deliverable(event_type):
        return False
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


# --- URLs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    """The parts of an endpoint URL the delivery path needs."""

    scheme: Literal["http", "https"]
    host: str
    port: int
    target: str
    """Path and query, as sent in the request line."""

    @property
    def host_header(self) -> str:
        """`Host` as a client would send it for the original URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_destination(url: str) -> Destination:
    """Split an endpoint URL; `InvalidEndpoint` when it is not an absolute http(s) URL."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidEndpoint(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x21 for ch in url):
        raise InvalidEndpoint("url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidEndpoint(f"url is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidEndpoint("url must be an http(s) URL")
    if not parts.hostname:
        raise InvalidEndpoint("url has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidEndpoint("url must not carry credentials")
    if parts.fragment:
        raise InvalidEndpoint("url must not have a fragment")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(
        scheme="https" if scheme == "https" else "http",
        host=parts.hostname.lower().rstrip("."),
        port=port if port is not None else (443 if scheme == "https" else 80),
        target=target,
    )


# --- the retry schedule and attempt outcomes ----------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one HTTP attempt produced."""

    status_code: int | None
    duration_ms: float
    error: str | None = None
    retry_after: float | None = None
    response_excerpt: str = ""

    @property
    def succeeded(self) -> bool:
        """2xx only: redirects are not followed and count as failures."""
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class AfterAttempt:
    """How a message and its endpoint change after an attempt."""

    status: MessageStatus
    next_attempt_at: datetime | None
    failing_since: datetime | None
    disable_reason: str | None = None


def retry_delay(attempts_made: int, *, rand: float, retry_after: float | None = None) -> float | None:
    """Seconds until the next attempt after `attempts_made` failed ones; None when none is left.

    `rand` in [0, 1) spreads the delay by ±20 %; a `Retry-After` (clamped to
    `MAX_RETRY_AFTER`) postpones the attempt but never brings it forward.
    """
    if attempts_made >= len(RETRY_SCHEDULE):
        return None
    delay = RETRY_SCHEDULE[attempts_made] * (1 - JITTER + 2 * JITTER * rand)
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), MAX_RETRY_AFTER))
    return delay


def after_attempt(
    *, attempts_made: int, result: AttemptResult, now: datetime, failing_since: datetime | None, rand: float
) -> AfterAttempt:
    """The message's next state after its `attempts_made`-th attempt in this run ended with `result`."""
    if result.succeeded:
        return AfterAttempt("delivered", None, None)
    failing_since = failing_since or now
    if result.status_code == 410:
        return AfterAttempt("failed", None, failing_since, disable_reason="endpoint answered 410 Gone")
    disable = None
    if now - failing_since >= DISABLE_AFTER:
        disable = f"every attempt failed for {DISABLE_AFTER.days} days"
    delay = retry_delay(attempts_made, rand=rand, retry_after=result.retry_after)
    if delay is None:
        return AfterAttempt("failed", None, failing_since, disable_reason=disable)
    return AfterAttempt("pending", now + timedelta(seconds=delay), failing_since, disable_reason=disable)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds named by a `Retry-After` header (delta-seconds or HTTP-date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)
