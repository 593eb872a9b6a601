"""Reading a log by pages with the next pages already requested.

A catch-up or a rebuild reads a source's log page after page; one page's round trip
(the source formats it, the reader parses it) is time the reader would otherwise spend
waiting. Positions are gap-free (`events.store`), so a full page that starts after `a`
ends at `a + limit`: the following pages can be requested before it arrives. A guess
that turns out wrong (a short page, a log with gaps) is dropped and the page is read
again from where the previous one really ended, so the pages come out exactly as
sequential reads would give them, only sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar


class Positioned(Protocol):
    @property
    def position(self) -> int: ...


E = TypeVar("E", bound=Positioned)


async def read_ahead(
    read: Callable[[int, int], Awaitable[Sequence[E]]],
    *,
    after: int,
    limit: int,
    ahead: int = 2,
) -> AsyncGenerator[Sequence[E], None]:
    """The non-empty pages of `read(after, limit)` from `after` on, in position order.

    The first page is read alone (a caller that is already caught up costs one read, as
    before); after each full page, up to `ahead` further reads are in flight while the
    caller handles it. Iteration stops after the first page shorter than `limit` (the
    head at the time of that read). Use it inside `contextlib.aclosing` so that reads
    still in flight are cancelled, and have ended, as soon as the caller stops early.
    """
    pending: deque[tuple[int, asyncio.Future[Sequence[E]]]] = deque()

    def request(start: int) -> None:
        pending.append((start, asyncio.ensure_future(read(start, limit))))

    request(after)
    try:
        while pending:
            _, reading = pending.popleft()
            page = await reading
            full = len(page) >= limit
            if full:
                end = page[-1].position
                if pending and pending[0][0] != end:
                    _cancel(pending)  # a guess that missed: the log has a gap here
                if not pending:
                    request(end)
                while len(pending) < ahead:
                    request(pending[-1][0] + limit)
            if page:
                yield page
            if not full:
                return
    finally:
        readings = [reading for _, reading in pending]
        _cancel(pending)
        if readings:
            # Let the cancelled reads finish before the caller goes on (and, say, closes
            # the HTTP client they use).
            await asyncio.wait(readings)


def _cancel(pending: deque[tuple[int, asyncio.Future[Any]]]) -> None:
    for _, reading in pending:
        reading.cancel()
        # A read that already failed must not be reported as "exception never retrieved".
        reading.add_done_callback(_retrieve)
    pending.clear()


def _retrieve(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        future.result()
