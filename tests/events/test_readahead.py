"""Reading a log ahead: the same pages as sequential reads, fewer waits, nothing left running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from events.readahead import read_ahead

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    position: int


class Log:
    """A log of the given positions; records every read and can hold reads until released."""

    def __init__(self, positions: list[int], *, hold_from: int | None = None) -> None:
        self.positions = positions
        self.hold_from = hold_from  # reads starting here wait until cancelled
        self.release = asyncio.Event()
        self.reads: list[int] = []
        self.tasks: list[asyncio.Future[list[Entry]]] = []
        self.most_in_flight = 0

    def read(self, after: int, limit: int) -> Awaitable[list[Entry]]:
        """Records the read; it is in flight from the moment it is requested until done."""
        self.reads.append(after)
        task = asyncio.ensure_future(self._read(after, limit))
        self.tasks.append(task)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return task

    @property
    def in_flight(self) -> int:
        return sum(not task.done() for task in self.tasks)

    @property
    def cancelled(self) -> int:
        return sum(task.cancelled() for task in self.tasks)

    async def _read(self, after: int, limit: int) -> list[Entry]:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if self.hold_from is not None and after >= self.hold_from:
            await self.release.wait()
        return [Entry(p) for p in self.positions if p > after][:limit]

    def sequential(self, after: int, limit: int) -> list[list[int]]:
        pages, rest = [], [p for p in self.positions if p > after]
        while rest:
            pages.append(rest[:limit])
            if len(rest) < limit:
                break
            rest = rest[limit:]
        return pages


async def pages_of(log: Log, *, after: int, limit: int, ahead: int) -> list[list[int]]:
    async with contextlib.aclosing(read_ahead(log.read, after=after, limit=limit, ahead=ahead)) as pages:
        return [[e.position for e in page] async for page in pages]


@pytest.mark.parametrize("ahead", [1, 2, 3, 5])
@pytest.mark.parametrize(
    ("positions", "after", "limit"),
    [
        (list(range(1, 101)), 0, 10),  # exact multiple: the last read is an empty page
        (list(range(1, 96)), 0, 10),  # short last page
        (list(range(1, 101)), 37, 10),  # starting mid-log
        ([1, 2, 3, 7, 8, 9, 20, 21, 22, 23, 40], 0, 3),  # gaps: every guess after one is wrong
        ([], 0, 10),
    ],
)
async def test_pages_are_those_of_sequential_reads(
    positions: list[int], after: int, limit: int, ahead: int
) -> None:
    log = Log(positions)

    assert await pages_of(log, after=after, limit=limit, ahead=ahead) == log.sequential(after, limit)
    assert log.in_flight == 0


async def test_after_a_full_page_the_next_ones_are_read_while_it_is_handled() -> None:
    log = Log(list(range(1, 1001)))
    ahead_while_handled = []

    async with contextlib.aclosing(read_ahead(log.read, after=0, limit=100, ahead=3)) as pages:
        async for handled, _ in enumerate_async(pages):
            ahead_while_handled.append(len(log.reads) - (handled + 1))

    assert log.reads[:4] == [0, 100, 200, 300]
    assert ahead_while_handled == [3] * 10  # guesses past the head come back empty
    assert log.in_flight == 0


async def enumerate_async(pages: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    n = 0
    async for page in pages:
        yield n, page
        n += 1


async def test_a_caught_up_reader_costs_one_read() -> None:
    log = Log(list(range(1, 51)))

    assert await pages_of(log, after=0, limit=100, ahead=3) == [list(range(1, 51))]
    assert await pages_of(log, after=50, limit=100, ahead=3) == []
    assert log.reads == [0, 50]


async def test_stopping_early_cancels_the_reads_in_flight() -> None:
    log = Log(list(range(1, 1001)), hold_from=100)
    pages = read_ahead(log.read, after=0, limit=100, ahead=3)

    async with contextlib.aclosing(pages):
        async for _ in pages:
            break
    await asyncio.sleep(0)

    assert log.in_flight == 0 and log.cancelled == 3


async def test_a_failed_read_surfaces_in_order() -> None:
    async def read(after: int, limit: int) -> list[Entry]:
        if after >= 20:
            raise OSError("source gone")
        return [Entry(p) for p in range(after + 1, after + limit + 1)]

    seen = []
    with pytest.raises(OSError, match="source gone"):
        async with contextlib.aclosing(read_ahead(read, after=0, limit=10, ahead=3)) as pages:
            async for page in pages:
                seen.append(page[-1].position)

    assert seen == [10, 20]
