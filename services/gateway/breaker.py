"""A circuit breaker per upstream: fail fast while an upstream is down, probe it now and then.

Counted as failures: transport errors (refused, timeouts, broken answers) and 502/503/504
answers. A 500 is an application error of one request, not a sign the upstream is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    """Circuit breaker of one upstream: opens after `threshold` failures in a row, probes after `reset`."""

    def __init__(self, threshold: int, reset: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._reset = reset
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._probe_started = 0.0

    @property
    def state(self) -> str:
        if self._failures < self._threshold:
            return "closed"
        return "open" if self._clock() < self._open_until else "half-open"

    def admit(self) -> float | None:
        """None when a request may go; else seconds until it may be tried again."""
        if self._failures < self._threshold:
            return None
        now = self._clock()
        if now < self._open_until:
            return self._open_until - now
        if self._probing and now - self._probe_started < self._reset:  # half-open: one probe at a time
            return 1.0
        # (A probe that never reported back, e.g. its client went away, is replaced after `reset`.)
        self._probing = True
        self._probe_started = now
        return None

    def success(self) -> None:
        self._failures = 0
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._reset
