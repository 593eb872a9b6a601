"""Subscriptions: consume other services' events into this service's database, exactly in effect.

A `Subscription` applies each event with a handler inside one database transaction that
also moves its checkpoint: per (source, partition) the last position applied. An event
at or below the checkpoint is a duplicate and is skipped, so Kafka's at-least-once
delivery (and any re-delivery) changes nothing. Kafka offsets are committed only after
the database commit (at most once a second), and only as a hint: the checkpoints are the truth.

The log API of each source is the authoritative channel, Kafka the live one. The
subscription catches up from the log on start, and again whenever it sees that the
broker lost records:
- a record's `partnerhub-prev-position` (the previous event of its partition, set by
  the relay) is above the checkpoint: something in between never arrived;
- the consumer's position is beyond the partition's high watermark (the embedded broker
  restarted empty and answers such fetches with nothing, forever);
- a source topic is gone, or a consumer group comes back without committed offsets;
- nothing arrived for `idle_catchup_interval` seconds (cheap when nothing is missing).

Partitions are the ones the relay uses: `partition_for(partition_key, partitions)`, so a
checkpoint means the same thing for an event read from Kafka and from the log API.

A handler that keeps failing on one event (after `max_retries` retries) parks it in
`dead_letters` and moves the checkpoint past it in the same transaction, so one bad
event does not stall every partner; `replay_dead_letter` applies it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.envelope import RecordedEvent
from events.kafka import ensure_topics, partition_for, topic_partitions
from events.readahead import read_ahead
from events.relay import PREV_POSITION_HEADER, TRACEPARENT_HEADER, upsert_positions
from events.schema import checkpoints, dead_letters

log = logging.getLogger(__name__)

Handler = Callable[[AsyncConnection, RecordedEvent], Awaitable[None]]
"""Applies one event's effects inside the given transaction (raise to refuse it)."""

LogReader = Callable[[str, int, int], Awaitable[list[RecordedEvent]]]
"""(source, after, limit) -> events after `after` in position order: direct log access."""

BatchHandler = Callable[[AsyncConnection, list[RecordedEvent]], Awaitable[None]]
"""Applies several events, in order, inside the given transaction: same effect as `Handler` on each."""

TokenProvider = Callable[[], Awaitable[str]]
"""Returns a bearer token with scope `events:read` for the sources' log APIs."""

_PROPAGATOR = TraceContextTextMapPropagator()
_WATERMARK_LIMIT = 200_000
_MAX_LINKS = 128


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """A service whose events a subscription reads."""

    topic: str
    partitions: int
    log_url: str | None = None
    """Base URL of the service; its log is served at `{log_url}/internal/events`."""


class BackboneSettings(Protocol):
    """What `source_infos` needs from the settings (services.runtime.settings.Settings)."""

    kafka_partitions: int

    def topic_of(self, service: str) -> str: ...

    def url_of(self, service: str) -> str: ...


def source_infos(settings: BackboneSettings, services: Iterable[str]) -> dict[str, SourceInfo]:
    """`sources` for a Subscription reading `services`, as configured in `settings`."""
    return {
        service: SourceInfo(
            topic=settings.topic_of(service),
            partitions=settings.kafka_partitions,
            log_url=settings.url_of(service),
        )
        for service in services
    }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a subscription parked after its handler kept failing."""

    id: int
    subscription: str
    source: str
    partition: int
    position: int
    event_id: str
    event_type: str
    partner_id: str | None
    error: str
    attempts: int
    parked_at: datetime
    replayed_at: datetime | None
    envelope: dict[str, Any]


class DeadLetterNotFound(LookupError):
    """No such dead letter for this subscription."""


class DeadLetterAlreadyReplayed(Exception):
    """The dead letter was replayed before."""


@dataclass(slots=True)
class _Item:
    source: str
    partition: int
    event: RecordedEvent
    producer_traceparent: str | None = None
    topic: str | None = None

    @property
    def position(self) -> int:
        return self.event.position


@dataclass(slots=True)
class _Passed:
    """A record of a type the handler does not take: only its place in the log counts,
    so it is not decoded (the alliance reactor takes 2 of onboarding's 8 types)."""

    source: str
    partition: int
    position: int


_Entry = _Item | _Passed


class _Stopped(Exception):
    """`stop()` was called while an event was being retried."""


class _BatchFailed(Exception):
    """The batch handler raised: apply the batch again one event at a time."""


class _HandlerFailed(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


class _Watermark:
    """The highest position up to which every event of a source has been handled here."""

    def __init__(self) -> None:
        self.low = 0
        self._above: set[int] = set()
        self.valid = True

    def raise_to(self, low: int) -> None:
        if low > self.low:
            self.low = low
            self._above = {p for p in self._above if p > low}
        self._advance()

    def preview(self, positions: Iterable[int]) -> int:
        if not self.valid:
            return self.low
        pending = {p for p in positions if p > self.low}
        low = self.low
        while low + 1 in self._above or low + 1 in pending:
            low += 1
        return low

    def add(self, positions: Iterable[int]) -> None:
        if not self.valid:
            return
        self._above.update(p for p in positions if p > self.low)
        self._advance()
        if len(self._above) > _WATERMARK_LIMIT:
            # Partitions owned by other group members never show up here: stop tracking
            # until the next catch-up re-establishes a contiguous range.
            self.valid = False
            self._above.clear()

    def reset(self, low: int) -> None:
        self.valid = True
        self._above.clear()
        self.low = low

    def _advance(self) -> None:
        while self.low + 1 in self._above:
            self._above.remove(self.low + 1)
            self.low += 1


class Subscription:
    """Applies the events of one or more sources to this service's database, in order per partition."""

    def __init__(
        self,
        name: str,
        *,
        sources: Mapping[str, SourceInfo],
        handler: Handler,
        engine: AsyncEngine,
        bootstrap: str,
        group_id: str | None = None,
        max_retries: int = 5,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        fetch_max_wait_ms: int = 25,
        log_client: httpx.AsyncClient | None = None,
        token_provider: TokenProvider | None = None,
        log_reader: LogReader | None = None,
        manual_assignment: bool = False,
        event_types: Collection[str] | None = None,
        batch_handler: BatchHandler | None = None,
        batch_size: int = 500,
        catchup_page_size: int = 1000,
        catchup_read_ahead: int = 2,
        retry_backoff: float = 0.1,
        idle_catchup_interval: float = 5.0,
        broker_check_interval: float = 1.0,
        commit_timeout: float = 5.0,
        offset_commit_interval: float = 1.0,
        now: Callable[[], datetime] | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """Configure the subscription; nothing runs until `start()`.

        `sources` maps a source service name to its topic, partition count and log API
        base URL. `log_reader` replaces the HTTP log API by direct reads (for a process
        that owns the source store, and for tests). `manual_assignment` reads every
        partition of every topic without a consumer group (single replica, tests).
        `event_types` limits the handler to those types; other events only move the
        checkpoint. `batch_handler`, when given, applies a whole batch in one call (one
        upsert per partner instead of one per event, say); if it raises, the batch is
        applied again event by event with `handler`, which retries and parks as usual.
        `fetch_max_wait_ms` bounds how long a fetch waits for records: the embedded
        broker answers a fetch over several partitions only when this wait ends (measured:
        a record reached the consumer after 66 ms at 200 ms, 6 ms at 25 ms), so it sets
        the event → handler latency; each idle fetch costs the broker CPU (~10 % of a core
        more at 25 ms than at 200 ms for the platform's consumers). Apache Kafka answers
        as soon as records arrive.
        """
        if not sources:
            raise ValueError("a subscription needs at least one source")
        self.name = name
        self.sources = dict(sources)
        self.handler = handler
        self.engine = engine
        self.bootstrap = bootstrap
        self.group_id = group_id or f"partnerhub.{name}"
        self.max_retries = max_retries
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.manual_assignment = manual_assignment
        self.event_types = frozenset(event_types) if event_types is not None else None
        self.batch_handler = batch_handler
        self.batch_size = batch_size
        self.catchup_page_size = catchup_page_size
        self.catchup_read_ahead = catchup_read_ahead
        self.retry_backoff = retry_backoff
        self.idle_catchup_interval = idle_catchup_interval
        self.broker_check_interval = broker_check_interval
        self.commit_timeout = commit_timeout
        self.offset_commit_interval = offset_commit_interval
        self._log_client = log_client
        self._own_client: httpx.AsyncClient | None = None
        self._token_provider = token_provider
        self._log_reader = log_reader
        self._now = now or (lambda: datetime.now(UTC))
        self._is_postgres = engine.dialect.name == "postgresql"
        self._source_of_topic = {info.topic: source for source, info in self.sources.items()}
        # An explicit provider (tests, embedding) wins over the global one.
        self._tracer = trace.get_tracer("partnerhub.subscription", tracer_provider=tracer_provider)
        self._traced_explicitly = tracer_provider is not None

        self._checkpoints: dict[str, dict[int, int]] = {s: {} for s in self.sources}
        self._rows_exist = False
        self._watermarks: dict[str, _Watermark] = {s: _Watermark() for s in self.sources}
        self._offsets: dict[TopicPartition, int] = {}
        self._uncommitted: dict[TopicPartition, int] = {}
        self._next_offset_commit = 0.0  # the first batch commits at once
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._resync = asyncio.Event()
        self._retry_catch_up_at: float | None = None
        self._rebuild = False
        self._caught_up = asyncio.Event()
        self.applied = 0
        """Events whose handler committed since start."""
        self.parked = 0
        """Events parked in dead_letters since start."""
        self.catchups = 0
        """Catch-up passes over the log API since start."""
        self.errors = 0
        """Broker, log API or database errors survived since start."""

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming in the background (catch-up from the log API first)."""
        if self._task is not None and not self._task.done():
            return
        if self._log_client is None and self._log_reader is None:
            self._own_client = httpx.AsyncClient(timeout=30.0)  # one per subscription, for its lifetime
            self._log_client = self._own_client
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"subscription:{self.name}")

    async def stop(self) -> None:
        """Finish the event in flight, commit, and close the consumer."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own_client is not None:
            await self._own_client.aclose()
            self._own_client = None
            self._log_client = None

    async def wait_caught_up(self, timeout: float) -> None:
        """Wait until the first catch-up from the log API finished (TimeoutError otherwise)."""
        await asyncio.wait_for(self._caught_up.wait(), timeout)

    def reconnect(self, bootstrap: str | None = None) -> None:
        """Rebuild the consumer (against `bootstrap` when given) and catch up first."""
        if bootstrap is not None:
            self.bootstrap = bootstrap
        self._rebuild = True

    async def positions(self) -> dict[str, dict[int, int]]:
        """The checkpoint of every (source, partition), as committed (0: nothing applied)."""
        result = {s: dict.fromkeys(range(info.partitions), 0) for s, info in self.sources.items()}
        async with self.engine.connect() as conn:
            for source, partition, position in (await conn.execute(_CHECKPOINTS, {"name": self.name})).all():
                if source in result and partition in result[source]:
                    result[source][partition] = int(position)
        return result

    async def lag(self, heads: Mapping[str, int]) -> dict[str, int]:
        """Per source: its log head minus the lowest partition checkpoint (0 when caught up).

        Checkpoints of partitions without recent events are raised whenever every earlier
        event of the source is known to be handled, so a quiet partition does not count
        as lag. Kafka end offsets are never used (the embedded broker reports them wrong).
        """
        positions = await self.positions()
        return {
            source: max(0, int(head) - min(positions[source].values(), default=0))
            for source, head in heads.items()
            if source in positions
        }

    # --- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    self._rebuild = False
                    await self._load_checkpoints()
                    await self._catch_up()
                    self._caught_up.set()
                    if self._stopping.is_set():
                        break
                    await self._open_consumer()
                    backoff = 0.1
                    await self._follow()
                    if self._stopping.is_set() and self._consumer is not None:
                        # A clean stop hands over where we got to (not a failure's path:
                        # a broker that is gone would hold the commit to its timeout).
                        await self._flush_offsets(self._consumer)
                    await self._close_consumer()
                except _Stopped:
                    break
                except (KafkaError, OSError, TimeoutError, httpx.HTTPError, SQLAlchemyError) as exc:
                    self.errors += 1
                    log.warning("subscription %s: %r; recovering", self.name, exc)
                    await self._close_consumer()
                    await self._pause(backoff)
                    backoff = min(backoff * 2, 5.0)
                except Exception:
                    self.errors += 1
                    log.exception("subscription %s: unexpected error; recovering", self.name)
                    await self._close_consumer()
                    await self._pause(5.0)
        finally:
            await self._close_consumer()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _open_consumer(self) -> None:
        # Create the topics before any consumer asks for them: the embedded broker would
        # auto-create them with a wrong partition count.
        for info in self.sources.values():
            try:
                await ensure_topics(self.bootstrap, [info.topic], info.partitions)
            except KafkaError as exc:
                # Another count: the relay (the producer) repairs its topic; read on.
                log.warning("subscription %s: %r", self.name, exc)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None if self.manual_assignment else self.group_id,
            client_id=f"partnerhub-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            max_poll_records=self.batch_size,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            request_timeout_ms=max(15_000, self.session_timeout_ms + 5_000),
            retry_backoff_ms=100,
        )
        self._consumer = consumer  # closed by _close_consumer even if start fails
        await asyncio.wait_for(consumer.start(), 15)
        topics = [info.topic for info in self.sources.values()]
        if self.manual_assignment:
            tps = [TopicPartition(info.topic, p) for info in self.sources.values() for p in range(info.partitions)]
            consumer.assign(tps)
            for tp in tps:
                # Where this process got to before a rebuild; else the beginning (records
                # at or below the checkpoints are skipped without touching the database).
                offset = self._offsets.get(tp)
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
        else:
            consumer.subscribe(topics, listener=_Rebalance(self))

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        # Read by this consumer: the next one commits its own, from its first batch.
        self._uncommitted = {}
        self._next_offset_commit = 0.0
        if consumer is not None:
            # With the broker gone, aiokafka's stop() can end in a CancelledError of its own
            # (it cancels a fetch task backing off and awaits it); awaited directly, that
            # ended this subscription's task for good (tests/hardening/test_regressions.py).
            closing = asyncio.ensure_future(consumer.stop())
            closing.add_done_callback(lambda task: task.cancelled() or task.exception())
            await asyncio.wait({closing}, timeout=10)
            if not closing.done():
                closing.cancel()

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        last_records = time.monotonic()
        next_check = time.monotonic() + self.broker_check_interval
        next_topic_check = time.monotonic() + 5.0
        while not self._stopping.is_set() and not self._rebuild:
            retry_due = self._retry_catch_up_at is not None and time.monotonic() >= self._retry_catch_up_at
            if self._resync.is_set() or retry_due:
                self._resync.clear()
                await self._catch_up()
            batch = await consumer.getmany(timeout_ms=200, max_records=self.batch_size)
            now = time.monotonic()
            if batch:
                last_records = now
                await self._process(batch)
                await self._commit_offsets(consumer, batch)
            elif self._uncommitted and now >= self._next_offset_commit:
                await self._flush_offsets(consumer)
            elif now - last_records >= self.idle_catchup_interval:
                await self._catch_up()
                last_records = now
            if now >= next_check:
                next_check = now + self.broker_check_interval
                await self._check_positions(consumer)
                if now >= next_topic_check:
                    next_topic_check = now + 5.0
                    await self._check_topics()

    async def _check_positions(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), 1.0)
            except (TimeoutError, KafkaError):
                continue
            if position > highwater:
                # The broker lost records we had read: read the partition again from its
                # start and everything since our checkpoints from the log.
                log.warning(
                    "subscription %s: %s is at offset %d beyond the high watermark %d; catching up",
                    self.name, tp, position, highwater,
                )
                await consumer.seek_to_beginning(tp)
                self._offsets.pop(tp, None)
                self._resync.set()

    async def _check_topics(self) -> None:
        counts = await topic_partitions(self.bootstrap)
        for info in self.sources.values():
            if info.topic not in counts:
                log.warning("subscription %s: topic %s is gone; catching up", self.name, info.topic)
                await ensure_topics(self.bootstrap, [info.topic], info.partitions)
                self._resync.set()

    async def _commit_offsets(self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, Sequence[Any]]) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        self._offsets.update(offsets)
        if self.manual_assignment or not offsets:
            return
        self._uncommitted.update(offsets)
        if time.monotonic() >= self._next_offset_commit:
            await self._flush_offsets(consumer)

    async def _flush_offsets(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the offsets read since the last commit (at most every `offset_commit_interval`).

        Offsets only save re-reading: the checkpoints in our database are the truth, and
        a record below them is skipped without touching the database. So they are
        committed on an interval, on revocation and on a clean stop, not after every batch: a
        commit per batch was a broker round trip (and a write in the broker) per batch
        and consumer group.
        """
        offsets, self._uncommitted = self._uncommitted, {}
        self._next_offset_commit = time.monotonic() + self.offset_commit_interval
        if not offsets:
            return
        try:
            await asyncio.wait_for(consumer.commit(offsets), self.commit_timeout)
        except (KafkaError, TimeoutError) as exc:
            log.info("subscription %s: offset commit failed: %r", self.name, exc)

    # --- processing Kafka records -------------------------------------------------------

    async def _process(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> None:
        working = {s: dict(cps) for s, cps in self._checkpoints.items()}
        pending: list[_Entry] = []
        seen: dict[str, list[int]] = {}
        for tp, records in batch.items():
            source = self._source_of_topic.get(tp.topic)
            if source is None:
                continue
            info = self.sources[source]
            for record in records:
                headers = dict(record.headers or ())
                try:
                    position = int(headers["ce_sequence"])
                except (KeyError, ValueError):
                    log.error("subscription %s: %s@%d is not a partnerhub event", self.name, tp, record.offset)
                    continue
                key = record.key or b""
                partition = partition_for(key, info.partitions)
                if position <= working[source].get(partition, 0):
                    seen.setdefault(source, []).append(position)
                    continue
                prev = _int_header(headers.get(PREV_POSITION_HEADER))
                if prev is not None and prev > working[source].get(partition, 0):
                    # An earlier event of this partition never reached us.
                    await self._apply(pending)
                    self._mark_seen(seen)
                    pending, seen = [], {}
                    await self._load_checkpoints()
                    if prev > self._checkpoints[source].get(partition, 0):
                        log.warning(
                            "subscription %s: %s lost events between positions %d and %d; catching up",
                            self.name, source, self._checkpoints[source].get(partition, 0), prev,
                        )
                        await self._catch_up(strict=True)
                    working = {s: dict(cps) for s, cps in self._checkpoints.items()}
                    if position <= working[source].get(partition, 0):
                        continue
                type_ = headers.get("ce_type")
                entry: _Entry
                if self.event_types is not None and type_ is not None and type_.decode() not in self.event_types:
                    entry = _Passed(source, partition, position)
                else:
                    try:
                        event = RecordedEvent.from_kafka(key=record.key, value=record.value, headers=record.headers)
                    except Exception as exc:  # noqa: BLE001 - a malformed record must not stop the partition
                        log.error("subscription %s: cannot parse %s@%d: %r", self.name, tp, record.offset, exc)
                        continue
                    traceparent = headers.get(TRACEPARENT_HEADER)
                    entry = _Item(source, partition, event, traceparent.decode() if traceparent else None, tp.topic)
                pending.append(entry)
                working[source][partition] = position
                if len(pending) >= self.batch_size:
                    await self._apply(pending)
                    self._mark_seen(seen)
                    pending, seen = [], {}
        await self._apply(pending)
        self._mark_seen(seen)

    def _mark_seen(self, seen: Mapping[str, list[int]]) -> None:
        for source, positions in seen.items():
            self._watermarks[source].add(positions)

    # --- catching up from the log API ---------------------------------------------------

    async def _catch_up(self, *, strict: bool = False) -> None:
        """Apply every event of every source after our lowest checkpoint, up to the log head.

        A source whose log cannot be read is retried later (`strict=False`): the others
        keep flowing, and records from it still apply as long as none is missing. When a
        record is known to be missing (`strict=True`) the error propagates instead.
        """
        self.catchups += 1
        failed = False
        for source in self.sources:
            try:
                await self._catch_up_source(source)
            except (httpx.HTTPError, OSError, TimeoutError, ValueError, KeyError) as exc:
                if strict:
                    raise
                failed = True
                log.warning("subscription %s: cannot read the log of %s yet: %r", self.name, source, exc)
        self._retry_catch_up_at = time.monotonic() + min(30.0, self.idle_catchup_interval) if failed else None

    async def _catch_up_source(self, source: str) -> None:
        info = self.sources[source]
        if self._log_reader is None and not info.log_url:
            return
        lowest = min((self._checkpoints[source].get(p, 0) for p in range(info.partitions)), default=0)
        # Every event at or below the lowest checkpoint is handled; reading on from
        # there makes the watermark contiguous again.
        watermark = self._watermarks[source]
        if watermark.valid:
            watermark.raise_to(lowest)
        else:
            watermark.reset(lowest)
        # The next pages are requested while this one applies: the source formats them
        # while our transaction runs (events/readahead.py).
        pages = read_ahead(
            lambda after, limit: self._read_log(source, after, limit),
            after=watermark.low,
            limit=self.catchup_page_size,
            ahead=self.catchup_read_ahead,
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                items = [_Item(source, partition_for(e.partition_key.encode(), info.partitions), e) for e in page]
                await self._apply(items)
                if self._stopping.is_set():
                    break

    async def _read_log(self, source: str, after: int, limit: int) -> list[RecordedEvent]:
        if self._log_reader is not None:
            return await self._log_reader(source, after, limit)
        info = self.sources[source]
        assert self._log_client is not None and info.log_url
        headers = {"Accept": "application/json"}
        if self._token_provider is not None:
            headers["Authorization"] = f"Bearer {await self._token_provider()}"
        response = await self._log_client.get(
            f"{info.log_url.rstrip('/')}/internal/events",
            params={"after": after, "limit": limit},
            headers=headers,
        )
        response.raise_for_status()
        body = orjson.loads(response.content)
        return [RecordedEvent.from_json(item) for item in body["items"]]

    # --- applying -----------------------------------------------------------------------

    async def _apply(self, items: Sequence[_Entry]) -> None:
        """Apply `items` in transactions of a batch each; a failing event is retried alone and parked."""
        batched = self.batch_handler is not None
        start = 0
        while start < len(items):
            try:
                await self._apply_batch(items[start:], batched=batched)
                return
            except _BatchFailed:
                # Find the culprit: the same events one handler call at a time.
                batched = False
            except _HandlerFailed as failed:
                bad = start + failed.index
                if bad > start:
                    await self._apply(items[start:bad])
                culprit = items[bad]
                assert isinstance(culprit, _Item)  # only a handled event can fail
                await self._retry_or_park(culprit, failed.error)
                start = bad + 1

    async def _apply_batch(self, items: Sequence[_Entry], *, batched: bool = False) -> None:
        if not items:
            return
        sources = sorted({item.source for item in items})
        async with self.engine.begin() as conn:
            current = await self._read_checkpoints(conn, sources, lock=True)
            changed: dict[tuple[str, int], int] = {}
            due: list[tuple[int, _Item]] = []
            fresh = 0
            for index, item in enumerate(items):
                key = (item.source, item.partition)
                if item.position <= current.get(key, 0):
                    continue  # applied before: a duplicate
                fresh += 1
                current[key] = item.position
                changed[key] = item.position
                if isinstance(item, _Item) and (self.event_types is None or item.event.type in self.event_types):
                    due.append((index, item))
            if batched and len(due) > 1:
                try:
                    await self._handle_batch(conn, [item for _, item in due])
                except Exception as exc:
                    if _is_infrastructure(exc):
                        raise
                    raise _BatchFailed from exc
            else:
                for index, item in due:
                    try:
                        await self._handle(conn, item)
                    except Exception as exc:
                        if _is_infrastructure(exc):
                            raise
                        raise _HandlerFailed(index, exc) from exc
            rows = self._checkpoint_rows(changed, current, items)
            await upsert_positions(conn, checkpoints, ["subscription", "source", "partition"], rows, now=self._now())
        self._committed(current, items, applied=fresh)

    async def _handle_batch(self, conn: AsyncConnection, items: Sequence[_Item]) -> None:
        assert self.batch_handler is not None
        events = [item.event for item in items]
        if not (self._traced_explicitly or _tracing_enabled()):
            await self.batch_handler(conn, events)
            return
        # One span for the batch, linked to every event's origin (OpenTelemetry's batch form).
        links = [
            Link(trace.get_current_span(_PROPAGATOR.extract({"traceparent": e.traceparent})).get_span_context())
            for e in events[:_MAX_LINKS]
            if e.traceparent
        ]
        with self._tracer.start_as_current_span(
            f"process {self.sources[items[0].source].topic}",
            kind=SpanKind.CONSUMER,
            links=[link for link in links if link.context.is_valid],
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.batch.message_count": len(events),
                "messaging.consumer.group.name": self.group_id,
                "partnerhub.subscription": self.name,
            },
        ):
            await self.batch_handler(conn, events)

    async def _retry_or_park(self, item: _Item, error: BaseException) -> None:
        attempts = 1
        while attempts <= self.max_retries and not self._stopping.is_set():
            await asyncio.sleep(min(self.retry_backoff * 2 ** (attempts - 1), 2.0))
            attempts += 1
            try:
                await self._apply_batch([item])
                return
            except _HandlerFailed as failed:
                error = failed.error
        if attempts <= self.max_retries:
            # Stopping: leave it for the next run rather than parking it early.
            raise _Stopped
        await self._park(item, error, attempts)

    async def _park(self, item: _Item, error: BaseException, attempts: int) -> None:
        event = item.event
        log.error(
            "subscription %s: parking %s at %s/%d after %d attempts: %r",
            self.name, event.type, item.source, event.position, attempts, error,
        )
        text = "".join(traceback.format_exception(error))[-8000:]
        values = {
            "subscription": self.name,
            "source": item.source,
            "partition": item.partition,
            "position": event.position,
            "event_id": event.event_id,
            "event_type": event.type,
            "partner_id": event.partner_id,
            "error": text,
            "attempts": attempts,
            "envelope": event.to_json(),
            "parked_at": self._now(),
        }
        async with self.engine.begin() as conn:
            current = await self._read_checkpoints(conn, [item.source], lock=True)
            key = (item.source, item.partition)
            if event.position <= current.get(key, 0):
                return
            dialect_insert = postgresql.insert if self._is_postgres else sqlite.insert
            await conn.execute(
                dialect_insert(dead_letters).values(values).on_conflict_do_nothing(
                    index_elements=[dead_letters.c.subscription, dead_letters.c.event_id]
                )
            )
            current[key] = event.position
            rows = self._checkpoint_rows({key: event.position}, current, [item])
            await upsert_positions(conn, checkpoints, ["subscription", "source", "partition"], rows, now=self._now())
        self.parked += 1
        self._committed(current, [item], applied=0)

    async def _handle(self, conn: AsyncConnection, item: _Item) -> None:
        if not (self._traced_explicitly or _tracing_enabled()):
            await self.handler(conn, item.event)
            return
        event = item.event
        parent = _PROPAGATOR.extract({"traceparent": event.traceparent}) if event.traceparent else Context()
        links = []
        if item.producer_traceparent:
            producer = trace.get_current_span(_PROPAGATOR.extract({"traceparent": item.producer_traceparent}))
            if producer.get_span_context().is_valid:
                links.append(Link(producer.get_span_context()))
        with self._tracer.start_as_current_span(
            f"process {item.topic or self.sources[item.source].topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.destination.name": self.sources[item.source].topic,
                "messaging.destination.partition.id": str(item.partition),
                "messaging.consumer.group.name": self.group_id,
                "messaging.message.id": event.event_id,
                "cloudevents.event_type": event.type,
                "partnerhub.subscription": self.name,
                "partnerhub.position": event.position,
                "partnerhub.delivery": "kafka" if item.topic else "log",
            },
        ):
            await self.handler(conn, event)

    # --- checkpoints --------------------------------------------------------------------

    async def _load_checkpoints(self) -> None:
        if not self._rows_exist:
            # Rows to lock: two replicas must never both find "no checkpoint yet" and
            # apply the same first event.
            rows = [
                {"subscription": self.name, "source": source, "partition": partition, "position": 0}
                for source, info in self.sources.items()
                for partition in range(info.partitions)
            ]
            async with self.engine.begin() as conn:
                await upsert_positions(conn, checkpoints, ["subscription", "source", "partition"], rows, now=self._now())
            self._rows_exist = True
        async with self.engine.connect() as conn:
            current = await self._read_checkpoints(conn, list(self.sources), lock=False)
        for (source, partition), position in current.items():
            cps = self._checkpoints[source]
            cps[partition] = max(cps.get(partition, 0), position)

    async def _read_checkpoints(
        self, conn: AsyncConnection, sources: Sequence[str], *, lock: bool
    ) -> dict[tuple[str, int], int]:
        # Two group members briefly owning one partition during a rebalance take turns:
        # on PostgreSQL the rows are locked. All of the subscription's rows are read (a
        # handful: sources × partitions) so that one statement, built once, serves every
        # batch; the ones of other sources are dropped here.
        query = _CHECKPOINTS_LOCKED if lock and self._is_postgres else _CHECKPOINTS
        rows = (await conn.execute(query, {"name": self.name})).all()
        wanted = set(sources)
        return {(str(s), int(p)): int(pos) for s, p, pos in rows if s in wanted}

    def _checkpoint_rows(
        self,
        changed: Mapping[tuple[str, int], int],
        current: dict[tuple[str, int], int],
        items: Sequence[_Entry],
    ) -> list[dict[str, Any]]:
        rows = {key: position for key, position in changed.items()}
        # Raise quiet partitions to the source's watermark: every event up to it is
        # handled, so none of theirs is pending (keeps lag and catch-up short).
        for source in {item.source for item in items}:
            low = self._watermarks[source].preview(i.position for i in items if i.source == source)
            for partition in range(self.sources[source].partitions):
                key = (source, partition)
                if current.get(key, 0) < low:
                    current[key] = low
                    rows[key] = low
        return [
            {"subscription": self.name, "source": source, "partition": partition, "position": position}
            for (source, partition), position in rows.items()
        ]

    def _committed(self, current: Mapping[tuple[str, int], int], items: Sequence[_Entry], *, applied: int) -> None:
        for (source, partition), position in current.items():
            cps = self._checkpoints.setdefault(source, {})
            cps[partition] = max(cps.get(partition, 0), position)
        by_source: dict[str, list[int]] = {}
        for item in items:
            by_source.setdefault(item.source, []).append(item.position)
        for source, positions in by_source.items():
            self._watermarks[source].add(positions)
        self.applied += applied


_CHECKPOINTS = (
    select(checkpoints.c.source, checkpoints.c.partition, checkpoints.c.position)
    .where(checkpoints.c.subscription == bindparam("name"))
    .order_by(checkpoints.c.source, checkpoints.c.partition)
)
_CHECKPOINTS_LOCKED = _CHECKPOINTS.with_for_update()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        subscription = self._subscription
        if subscription._consumer is not None and subscription._uncommitted:
            # The next owner starts from what is committed: hand over where we got to.
            await subscription._flush_offsets(subscription._consumer)
        for tp in revoked:
            subscription._offsets.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        subscription = self._subscription
        consumer = subscription._consumer
        if consumer is None:
            return
        for tp in assigned:
            source = subscription._source_of_topic.get(tp.topic)
            if source is None:
                continue
            try:
                committed = await consumer.committed(tp)
            except KafkaError:
                committed = None
            if committed is None and any(subscription._checkpoints[source].values()):
                # We consumed this topic before but the group has no offsets: the broker
                # lost them (and maybe records); the log fills in whatever is missing.
                subscription._resync.set()


async def replay_dead_letter(
    engine: AsyncEngine,
    subscription: str,
    dead_letter_id: int,
    handler: Handler,
    *,
    now: Callable[[], datetime] | None = None,
) -> RecordedEvent:
    """Apply a parked event with `handler` and mark it replayed, in one transaction.

    Raises `DeadLetterNotFound`, `DeadLetterAlreadyReplayed`, or whatever the handler
    raises (then nothing changes and the event stays parked).
    """
    clock = now or (lambda: datetime.now(UTC))
    query = select(dead_letters).where(
        dead_letters.c.id == dead_letter_id, dead_letters.c.subscription == subscription
    )
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            query = query.with_for_update()
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise DeadLetterNotFound(f"no dead letter {dead_letter_id} for {subscription!r}")
        if row["replayed_at"] is not None:
            raise DeadLetterAlreadyReplayed(f"dead letter {dead_letter_id} was replayed at {row['replayed_at']}")
        event = RecordedEvent.from_json(dict(row["envelope"]))
        await handler(conn, event)
        await conn.execute(
            update(dead_letters).where(dead_letters.c.id == dead_letter_id).values(replayed_at=clock())
        )
    return event


async def list_dead_letters(
    engine: AsyncEngine, *, subscription: str | None = None, include_replayed: bool = False, limit: int = 100
) -> list[DeadLetter]:
    """Parked events, oldest first (for `GET /admin/consumers`)."""
    query = select(dead_letters).order_by(dead_letters.c.id).limit(limit)
    if subscription is not None:
        query = query.where(dead_letters.c.subscription == subscription)
    if not include_replayed:
        query = query.where(dead_letters.c.replayed_at.is_(None))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [
        DeadLetter(
            id=int(r["id"]),
            subscription=r["subscription"],
            source=r["source"],
            partition=int(r["partition"]),
            position=int(r["position"]),
            event_id=r["event_id"],
            event_type=r["event_type"],
            partner_id=r["partner_id"],
            error=r["error"],
            attempts=int(r["attempts"]),
            parked_at=r["parked_at"],
            replayed_at=r["replayed_at"],
            envelope=dict(r["envelope"]),
        )
        for r in rows
    ]


def _int_header(value: bytes | None) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _is_infrastructure(exc: BaseException) -> bool:
    """A database that went away is not the event's fault: never park for it."""
    if isinstance(exc, OperationalError | InterfaceError | OSError):
        return True
    return bool(getattr(exc, "connection_invalidated", False))


def _tracing_enabled() -> bool:
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)

