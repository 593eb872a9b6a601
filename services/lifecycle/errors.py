"""Why the lifecycle domain refuses a command (pure; the API turns them into problems)."""

from __future__ import annotations

from collections.abc import Sequence


class Refused(Exception):
    """Base of the domain's refusals."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Conflict(Refused):
    """The command does not fit the aggregate's current state (HTTP 409)."""

    def __init__(self, detail: str, *, state: str, allowed: Sequence[str]) -> None:
        super().__init__(detail)
        self.state = state
        self.allowed = list(allowed)


class Invalid(Refused):
    """A value of the command is wrong given the aggregate (HTTP 422)."""

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(detail)
        self.field = field
