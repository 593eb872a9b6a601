"""Command handlers: load a partner's stream, decide, append with the read model in step."""

from __future__ import annotations

import secrets
import string
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from events.envelope import EventMetadata, RecordedEvent
from events.store import NO_STREAM, BatchedEffects, ConcurrencyError, EventStore, NewEvent
from services.onboarding import read_model
from services.onboarding.domain import Apply, Command, CommandRejected, Partner, decide, fold

ID_PREFIX = "ptn_"
ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 20  # 36^20 ≈ 2^103: unguessable and collision-free in practice
# Enough random bits that every digit is near-uniform (bias below 2^-40).
ID_BITS = 144
STREAM_PREFIX = "partner-"
MAX_ATTEMPTS = 8
CACHE_SIZE = 10_000

Precondition = Callable[[int], int | None]
"""Given the stream's current version: the version the caller insists on (None: any), or raise."""
OccurredAt = Callable[[datetime | None], datetime | None]
"""Given the time of the stream's last event: when the command happened (None: now), or raise."""


def new_partner_id() -> str:
    """An opaque partner id: `ptn_` + 20 random lowercase letters and digits."""
    value = secrets.randbits(ID_BITS)
    chars = []
    for _ in range(ID_LENGTH):
        value, digit = divmod(value, len(ID_ALPHABET))
        chars.append(ID_ALPHABET[digit])
    return ID_PREFIX + "".join(chars)


def is_partner_id(value: str) -> bool:
    """Whether `value` has the shape of a partner id (anything else cannot exist)."""
    body = value.removeprefix(ID_PREFIX)
    return len(value) == len(ID_PREFIX) + ID_LENGTH and value.startswith(ID_PREFIX) and all(
        c in ID_ALPHABET for c in body
    )


def stream_of(partner_id: str) -> str:
    """The event stream of a partner."""
    return STREAM_PREFIX + partner_id


class PartnerNotFound(LookupError):
    """No partner has this id."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A partner's state with the times the handler needs."""

    partner: Partner
    created_at: datetime
    last_occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command did: the new state, its public record and the recorded events."""

    partner: Partner
    record: dict[str, Any]
    recorded: list[RecordedEvent]

    @property
    def version(self) -> int:
        return self.recorded[-1].stream_version


class Onboarding:
    """The onboarding service layer: one method per way a command reaches the store."""

    def __init__(
        self, store: EventStore, *, max_attempts: int = MAX_ATTEMPTS, cache_size: int = CACHE_SIZE
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        # Partners as last written by this process. An entry is stale only if another
        # process appended since: a command it accepts then fails the append's version
        # check and one it rejects is re-judged, both on a fresh read, so a stale entry
        # never decides an outcome.
        self._cache: OrderedDict[str, Loaded] = OrderedDict()
        self._cache_size = cache_size

    async def load(self, partner_id: str, *, fresh: bool = True) -> Loaded:
        """The partner rebuilt from its stream (or the cache unless `fresh`); `PartnerNotFound`."""
        if not fresh and (cached := self._cache.get(partner_id)) is not None:
            self._cache.move_to_end(partner_id)
            return cached
        recorded = await self.store.read_stream(stream_of(partner_id)) if is_partner_id(partner_id) else []
        partner = fold(r.domain() for r in recorded)
        if partner is None:
            raise PartnerNotFound(partner_id)
        loaded = Loaded(partner, recorded[0].occurred_at, recorded[-1].occurred_at)
        self._remember(partner_id, loaded)
        return loaded

    def _remember(self, partner_id: str, loaded: Loaded) -> None:
        self._cache[partner_id] = loaded
        self._cache.move_to_end(partner_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def apply(self, command: Apply, *, occurred_at: datetime | None, metadata: EventMetadata) -> Outcome:
        """Start a partner's stream with `partner.applied`."""
        events = decide(None, command)
        partner = fold(events)
        assert partner is not None
        pending = read_model.Pending(partner, created_at=None)
        recorded = await self.store.append(
            stream_id=stream_of(command.partner_id),
            expected_version=NO_STREAM,
            events=[NewEvent(e, occurred_at=occurred_at) for e in events],
            metadata=metadata,
            effects=BatchedEffects(read_model.save_all, pending),
        )
        self._remember(command.partner_id, Loaded(partner, recorded[0].occurred_at, recorded[-1].occurred_at))
        assert pending.record is not None
        return Outcome(partner, pending.record, recorded)

    async def execute(
        self,
        partner_id: str,
        command: Command,
        *,
        metadata: EventMetadata,
        precondition: Precondition | None,
        occurred_at: OccurredAt,
    ) -> Outcome:
        """Run `command` on the partner's current state.

        Without a precondition (If-Match) a concurrent writer only makes us re-read and
        decide again (two approvers racing both count); with one, the precondition is
        checked against a fresh read and fails on the re-read version after a race.
        """
        fresh = precondition is not None
        for _ in range(self.max_attempts):
            loaded = await self.load(partner_id, fresh=fresh)
            before = loaded.partner
            if precondition is not None:
                precondition(before.version)
            when = occurred_at(loaded.last_occurred_at)
            try:
                events = decide(before, command)
            except CommandRejected:
                if fresh:
                    raise
                # The cached state may be behind another replica's writes: judge on a fresh read.
                fresh = True
                continue
            after = fold(events, before)
            assert after is not None
            pending = read_model.Pending(after, created_at=loaded.created_at)
            try:
                recorded = await self.store.append(
                    stream_id=stream_of(partner_id),
                    expected_version=before.version,
                    events=[NewEvent(e, occurred_at=when) for e in events],
                    metadata=metadata,
                    effects=BatchedEffects(read_model.save_all, pending),
                )
            except ConcurrencyError:
                self._cache.pop(partner_id, None)
                fresh = True
                continue
            self._remember(partner_id, Loaded(after, loaded.created_at, recorded[-1].occurred_at))
            assert pending.record is not None
            return Outcome(after, pending.record, recorded)
        raise ConcurrencyError(stream_of(partner_id), None, -1)
