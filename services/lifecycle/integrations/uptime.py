"""Rolling uptime from health transitions (pure): up seconds / (up + down seconds) in a window."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime


def rolling_uptime(
    transitions: Iterable[tuple[datetime, str]], *, window_start: datetime, now: datetime
) -> float | None:
    """Uptime in percent over [window_start, now], or None when no time in it is known.

    `transitions` are (time, status) in time order, status `up`, `down` or `unknown`;
    the one before `window_start`, if any, gives the status at the window's start.
    Time in `unknown` (before the first probe, after going live) counts for neither side.
    """
    up = down = 0.0
    status = "unknown"
    cursor = window_start
    for at, new_status in transitions:
        if at > now:
            break
        if at > cursor:
            span = (at - cursor).total_seconds()
            if status == "up":
                up += span
            elif status == "down":
                down += span
            cursor = at
        status = new_status
    if now > cursor:
        span = (now - cursor).total_seconds()
        if status == "up":
            up += span
        elif status == "down":
            down += span
    known = up + down
    if known <= 0:
        return None
    return 100.0 * up / known
