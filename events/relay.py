"""The relay: tails one event store by position and publishes every event to Kafka.

- At least once, in position order per partition: a batch is read after the persisted
  cursor, sent (CloudEvents binary mode, key = partition key, acks=all), and only when
  the broker acknowledged all of it is the cursor moved, in `relay_cursors`.
- Records go to `partition_for(key)` explicitly (what the default partitioner would
  pick), so a topic auto-created with a wrong partition count cannot scatter a
  partner's events: sends to missing partitions fail, and the layout is checked again
  before a cursor moves.
- Every record carries `partnerhub-prev-position`: the position of the previous event
  of the same partition. A subscription that sees a predecessor it never applied knows
  the broker lost records (the embedded broker restarts empty) and catches up from the
  log API. The per-partition positions are persisted next to the cursor.
- One active relay per store: on PostgreSQL the holder of a session-level advisory lock
  on a dedicated connection; on SQLite the one process that owns the file.
- Broker trouble (connection lost, unknown topic, timeouts) makes it back off, rebuild
  its producer, re-create the topic and resume from the persisted cursor. Acks count
  only if the topic still exists afterwards: the embedded broker, restarted empty,
  acknowledges records for topics it does not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import Table, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.envelope import RecordedEvent
from events.kafka import ensure_topics, make_producer, partition_for, topic_partitions
from events.leader import Leadership
from events.schema import insert_text, relay_cursors
from events.store import EventStore

log = logging.getLogger(__name__)

PREV_POSITION_HEADER = "partnerhub-prev-position"
"""Kafka header: position of the previous event in the same partition ("0": none)."""

TRACEPARENT_HEADER = "traceparent"
"""Kafka header: W3C context of the producer span (`ce_traceparent` stays the origin's)."""

_PROPAGATOR = TraceContextTextMapPropagator()


class _TopicLost(KafkaError):  # type: ignore[misc]
    """The topic vanished or changed shape: the broker restarted or someone recreated it."""


@dataclass(slots=True)
class _InFlight:
    """A batch handed to the producer whose acknowledgements are still to come."""

    position: int
    last: dict[int, int]
    count: int
    futures: list[tuple[asyncio.Future[Any], list[Span | None]]]


class Relay:
    """Publishes one store's events to its Kafka topic, at least once, in position order."""

    def __init__(
        self,
        store: EventStore,
        *,
        bootstrap: str,
        topic: str,
        partitions: int,
        engine: AsyncEngine,
        name: str = "relay",
        batch_size: int = 500,
        poll_interval: float = 0.05,
        replication: int = 1,
        repair_topics: bool = True,
        topic_check_interval: float = 5.0,
        lock_retry_interval: float = 1.0,
        max_backoff: float = 5.0,
        now: Callable[[], datetime] | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """Configure a relay; nothing runs until `start()`.

        `repair_topics` lets the relay (the topic's only producer) delete and recreate a
        topic found with another partition count: the embedded broker auto-creates topics
        with 4 partitions whenever a client asks for an unknown one, for example a
        consumer refreshing metadata right after a broker restart. Pass False against a
        managed cluster whose topics are provisioned by operators.
        """
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.store = store
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.engine = engine
        self.name = name
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.replication = replication
        self.repair_topics = repair_topics
        self.topic_check_interval = topic_check_interval
        self.lock_retry_interval = lock_retry_interval
        self.max_backoff = max_backoff
        self._now = now or (lambda: datetime.now(UTC))
        self._is_postgres = engine.dialect.name == "postgresql"
        self._leadership = Leadership(
            engine, f"partnerhub.relay:{name}:{topic}", check_interval=lock_retry_interval * 5
        )
        # An explicit provider (tests, embedding) wins over the global one.
        self._tracer = trace.get_tracer("partnerhub.relay", tracer_provider=tracer_provider)
        self._traced_explicitly = tracer_provider is not None

        self._cursor = 0
        self._last: dict[int, int] = {}
        self._producer: AIOKafkaProducer | None = None
        self._inflight: _InFlight | None = None
        self._next_topic_check = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.published = 0
        """Records acknowledged by the broker since start (duplicates included)."""
        self.errors = 0
        """Broker or database errors survived since start."""

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start relaying in the background."""
        if self._task is not None and not self._task.done():
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"relay:{self.topic}")

    async def stop(self) -> None:
        """Finish the batch in flight, persist its cursor, release the producer and the lock."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def active(self) -> bool:
        """Whether this relay is the one publishing (holds the lock and a producer)."""
        return self._producer is not None

    @property
    def cursor(self) -> int:
        """The last position the broker acknowledged (persisted right after; see `persisted_cursor`)."""
        return self._cursor

    async def persisted_cursor(self) -> int:
        """The cursor as stored (valid from any replica, active or standby)."""
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(select(relay_cursors.c.position).where(relay_cursors.c.name == self.name))
            ).scalar_one_or_none()
        return int(value or 0)

    async def lag(self) -> int:
        """Events appended but not yet acknowledged by the broker: store head - cursor."""
        head = await self.store.head_position()
        return max(0, head - await self.persisted_cursor())

    # --- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    if not await self._hold_lock():
                        await self._pause(self.lock_retry_interval)
                        continue
                    if self._producer is None:
                        await self._connect()
                    more = await self._relay_batch()
                    backoff = 0.1
                    if not more:
                        await self.store.wait_for_append(self.poll_interval)
                except (KafkaError, OSError, TimeoutError) as exc:
                    self.errors += 1
                    log.warning("relay %s: %r; reconnecting", self.topic, exc)
                    await self._disconnect()
                    await self._pause(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                except SQLAlchemyError as exc:
                    self.errors += 1
                    log.warning("relay %s: database error %r; retrying", self.topic, exc)
                    await self._disconnect()
                    await self._release_lock()
                    await self._pause(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                except Exception:
                    self.errors += 1
                    log.exception("relay %s: unexpected error, retrying", self.topic)
                    await self._disconnect()
                    await self._pause(self.max_backoff)
        finally:
            batch = self._inflight
            if batch is not None and self._producer is not None:
                try:
                    await asyncio.wait_for(self._settle(batch), 10)
                    self._inflight = None
                except (KafkaError, OSError, TimeoutError, SQLAlchemyError) as exc:
                    log.warning("relay %s: last batch not acknowledged at stop: %r", self.topic, exc)
            await self._disconnect()
            await self._release_lock()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _connect(self) -> None:
        await ensure_topics(
            self.bootstrap,
            [self.topic],
            self.partitions,
            self.replication,
            recreate_mismatched=self.repair_topics,
        )
        # Resume from what is durable: whatever was sent but not persisted goes again.
        cursor, last = await self._load_positions()
        producer = make_producer(self.bootstrap)
        try:
            await asyncio.wait_for(producer.start(), 10)
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._cursor, self._last = cursor, last
        self._producer = producer
        self._next_topic_check = time.monotonic() + self.topic_check_interval
        log.info("relay %s: publishing from position %d", self.topic, self._cursor)

    async def _disconnect(self) -> None:
        await self._abandon_inflight()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def _relay_batch(self) -> bool:
        """Send a batch; while the broker acknowledges it, read the next one from the store.

        Only one batch is in flight, so a batch that fails is sent again before anything
        newer reaches its partitions. False when the store had nothing more: the caller
        waits for an append (a read right away would find nothing at a trickle, and cost
        a third read per event).
        """
        if time.monotonic() >= self._next_topic_check:
            await self._check_topic()
        if self._inflight is None:
            events = await self.store.read_all(after=self._cursor, limit=self.batch_size)
            if not events:
                return False
            self._inflight = await self._send(events, self._last)
        batch = self._inflight
        prefetch = asyncio.create_task(self.store.read_all(after=batch.position, limit=self.batch_size))
        try:
            await self._acknowledged(batch)
        except BaseException:
            prefetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await prefetch
            raise
        self._inflight = None
        persisted = self._advance(batch)
        events = await prefetch
        if events:
            self._inflight = await self._send(events, self._last)
        # The acknowledged batch's cursor is written while the next one is on its way:
        # the write waits its turn behind the service's own commits, and the next
        # batch need not wait for it. The cursor never passes an acknowledgement; a
        # crash before it is written sends that batch again (consumers skip duplicates).
        await self._persist(batch.position, batch.last, persisted)
        return bool(events)

    async def _settle(self, batch: _InFlight) -> None:
        await self._acknowledged(batch)
        persisted = self._advance(batch)
        await self._persist(batch.position, batch.last, persisted)

    def _advance(self, batch: _InFlight) -> dict[int, int]:
        """Move the in-memory positions past an acknowledged batch; the last persisted ones."""
        persisted = self._last
        self._cursor = batch.position
        self._last = batch.last
        self.published += batch.count
        return persisted

    async def _acknowledged(self, batch: _InFlight) -> None:
        pending = {f for f, _ in batch.futures}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=1.0)
            if pending:
                # aiokafka retries a send until its request timeout; a broker that came
                # back without our topic (or with a wrong one) would keep it retrying.
                await self._verify_topic()
        results = await asyncio.gather(*(f for f, _ in batch.futures), return_exceptions=True)
        failure: BaseException | None = None
        for result, (_, spans) in zip(results, batch.futures, strict=True):
            error = result if isinstance(result, BaseException) else None
            failure = failure or error
            base_offset = None if error is not None else getattr(result, "offset", None)
            for index, span in enumerate(spans):
                if span is None:
                    continue
                if error is not None:
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                elif base_offset is not None:
                    span.set_attribute("messaging.kafka.offset", int(base_offset) + index)
                span.end()
        if failure is not None:
            raise failure
        await self._verify_topic()

    async def _abandon_inflight(self) -> None:
        batch, self._inflight = self._inflight, None
        if batch is not None:
            for future, spans in batch.futures:
                future.cancel()
                for span in spans:
                    if span is not None:
                        span.set_status(Status(StatusCode.ERROR, "abandoned"))
                        span.end()
            await asyncio.gather(*(f for f, _ in batch.futures), return_exceptions=True)

    async def _verify_topic(self) -> None:
        # Measured: a Tansu broker that restarted empty acknowledges records sent to a
        # topic it does not have, and keeps nothing. Acks count only while the topic
        # still exists with our layout (one metadata round trip per batch).
        producer = self._producer
        assert producer is not None
        metadata = await producer.client.fetch_all_metadata()
        found = metadata.partitions_for_topic(self.topic)
        if found is None or len(found) != self.partitions:
            raise _TopicLost(f"topic {self.topic!r} is missing or has {len(found or ())} partitions")

    async def _check_topic(self) -> None:
        # A broker that restarted while we were idle comes back empty; the next send
        # would auto-create the topic with a wrong partition count.
        counts = await topic_partitions(self.bootstrap)
        self._next_topic_check = time.monotonic() + self.topic_check_interval
        if counts.get(self.topic) != self.partitions:
            raise _TopicLost(f"topic {self.topic!r} now has {counts.get(self.topic)} partitions")

    async def _send(self, events: Sequence[RecordedEvent], last_before: dict[int, int]) -> _InFlight:
        producer = self._producer
        assert producer is not None
        last = dict(last_before)
        tracing = self._traced_explicitly or _tracing_enabled()
        batch = _InFlight(position=events[-1].position, last=last, count=len(events), futures=[])
        open_batches: dict[int, tuple[Any, list[Span | None]]] = {}

        async def flush(partition: int) -> None:
            builder, spans = open_batches.pop(partition)
            future = await producer.send_batch(builder, self.topic, partition=partition)
            batch.futures.append((future, spans))

        for event in events:
            key, value, headers = kafka_record(event)
            partition = partition_for(key, self.partitions)
            headers.append((PREV_POSITION_HEADER, str(last.get(partition, 0)).encode()))
            last[partition] = event.position
            span = self._start_span(event, key, partition, headers) if tracing else None
            if partition not in open_batches:
                open_batches[partition] = (producer.create_batch(), [])
            builder, spans = open_batches[partition]
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                await flush(partition)
                open_batches[partition] = (producer.create_batch(), [])
                builder, spans = open_batches[partition]
                if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise KafkaError(f"event at position {event.position} does not fit in a batch")
            spans.append(span)
        for partition in list(open_batches):
            await flush(partition)
        return batch

    def _start_span(
        self, event: RecordedEvent, key: bytes, partition: int, headers: list[tuple[str, bytes]]
    ) -> Span | None:
        if not event.traceparent:
            return None
        parent = _PROPAGATOR.extract({"traceparent": event.traceparent})
        span = self._tracer.start_span(
            f"send {self.topic}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.name": "send",
                "messaging.operation.type": "send",
                "messaging.destination.name": self.topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.kafka.message.key": key.decode(errors="replace"),
                "messaging.message.id": event.event_id,
                "cloudevents.event_type": event.type,
                "partnerhub.position": event.position,
            },
        )
        if span.is_recording():
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            if "traceparent" in carrier:
                headers.append((TRACEPARENT_HEADER, carrier["traceparent"].encode()))
        return span

    # --- persisted positions ------------------------------------------------------------

    def _partition_row(self, partition: int) -> str:
        # Keyed by the partition count too: a layout change invalidates the old values.
        return f"{self.name}/{self.partitions}p/{partition}"

    async def _load_positions(self) -> tuple[int, dict[int, int]]:
        names = {self._partition_row(p): p for p in range(self.partitions)}
        query = select(relay_cursors.c.name, relay_cursors.c.position).where(
            relay_cursors.c.name.in_([self.name, *names])
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        cursor = 0
        last: dict[int, int] = {}
        for name, position in rows:
            if name == self.name:
                cursor = int(position)
            else:
                last[names[name]] = int(position)
        return cursor, last

    async def _persist(self, cursor: int, last: dict[int, int], persisted: dict[int, int]) -> None:
        rows = [{"name": self.name, "position": cursor}]
        rows += [
            {"name": self._partition_row(p), "position": position}
            for p, position in last.items()
            if persisted.get(p) != position
        ]
        async with self.engine.begin() as conn:
            await upsert_positions(conn, relay_cursors, ["name"], rows, now=self._now())

    # --- the lock -----------------------------------------------------------------------

    async def _hold_lock(self) -> bool:
        had = self._leadership.held
        held = await self._leadership.hold()
        if had and not held:
            # Another replica may be publishing now: stop producing at once.
            await self._disconnect()
        return held

    async def _release_lock(self) -> None:
        await self._leadership.release()


async def upsert_positions(
    conn: AsyncConnection,
    table: Table,
    keys: Sequence[str],
    rows: Sequence[dict[str, Any]],
    *,
    now: datetime,
) -> None:
    """Insert or raise `position` for each row (a position never moves backwards)."""
    if not rows:
        return
    keys = tuple(keys)
    statement = insert_text(table, (*keys, "position", "updated_at"), conn.dialect, _raise_position(keys))
    await conn.execute(statement, [{**row, "updated_at": now} for row in rows])


@cache
def _raise_position(keys: tuple[str, ...]) -> str:
    """`upsert_positions`' conflict clause: the row keeps the larger position."""
    return (
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET position = CASE WHEN excluded.position > "
        "{table}.position THEN excluded.position ELSE {table}.position END, updated_at = excluded.updated_at"
    )


def kafka_record(event: RecordedEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of `event` in CloudEvents Kafka binary mode.

    The same record `RecordedEvent.to_kafka()` builds through the CloudEvents SDK (the
    tests parse both with the SDK and compare), derived from the envelope's own
    attribute mapping (`to_json`) at a fifth of the cost: the SDK's validation and
    encoding held the relay to ~14k events/s on two cores.
    """
    body = event.to_json()
    data = body.pop("data")
    content_type = body.pop("datacontenttype", None)
    occurred = str(body.pop("time"))
    if occurred.endswith("+00:00"):
        # The binding writes UTC timestamps with a "Z", as the SDK does.
        occurred = occurred[:-6] + "Z"
    headers = [(_ce_header(name), str(value).encode()) for name, value in body.items()]
    headers.append(("ce_time", occurred.encode()))
    if content_type is not None:
        headers.append(("content-type", str(content_type).encode()))
    return event.partition_key.encode(), orjson.dumps(data), headers


@lru_cache(maxsize=256)
def _ce_header(attribute: str) -> str:
    return f"ce_{attribute}"


def _tracing_enabled() -> bool:
    # Without an SDK every span is a no-op; skip the per-event context parsing then.
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
