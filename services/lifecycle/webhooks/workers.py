"""Delivery workers: one task per endpoint with due messages, so a slow endpoint only slows itself.

The due-time queue is SQL (`webhook_messages.next_attempt_at`). A scheduler loop finds
endpoints with due messages and starts a worker task for each; the dispatcher wakes an
endpoint's worker as soon as its new messages are committed. A worker claims due
messages of its endpoint in batches, sends up to the endpoint's concurrency at once (one
at a time while the endpoint is failing), and exits when its endpoint has nothing due.
Outcomes are recorded by an `OutcomeWriter`, batched across endpoints.

Claims: on PostgreSQL (where several replicas may run) a claim leases the rows by
moving `next_attempt_at` past the time their attempts can take; on SQLite (one process
by construction) a claim only reads, the process remembers what it holds, and the
dispatcher's committed messages are queued without being read back, so deliveries add
no write contention to the single-writer database.

Isolation: an endpoint's attempts only ever take its own slots (8 by default, 1 while it
is failing) out of a global bound far larger, and the HTTP client has no shared
per-host pool to exhaust, so a hanging endpoint delays nobody else.

Restarts: a message is only marked done once its outcome is recorded, so a process that
dies loses nothing; an attempt that was in flight (sent, outcome not yet recorded: at most
twice the endpoint's concurrency) is sent again after the restart (on PostgreSQL once its
lease ended). A clean stop hands claimed-but-unstarted messages back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from opentelemetry import propagate, trace
from sqlalchemy.ext.asyncio import AsyncEngine

from events.catalog import (
    WebhookEndpointDisabled,
    WebhookMessageDelivered,
    WebhookMessageFailed,
)
from events.store import EventStore
from services.lifecycle.webhooks import repository
from services.lifecycle.webhooks.domain import AttemptResult, after_attempt
from services.lifecycle.webhooks.outcomes import Outcome, OutcomeWriter
from services.lifecycle.webhooks.repository import EndpointRow, MessageRow
from services.lifecycle.webhooks.secrets import SecretBox, Signer
from services.lifecycle.webhooks.sender import Sender
from services.runtime.clock import Clock

log = logging.getLogger(__name__)
tracer = trace.get_tracer("partnerhub.webhooks")

ENDPOINT_REFRESH = 1.0
PREFETCH = 2
"""A claim takes up to this many times the endpoint's concurrency (fewer, larger claims)."""
HANDOVER_LIMIT = 64
"""Beyond this many queued messages an endpoint's new messages are left to claims."""
RECORDING_SLACK = 2
"""Attempts of an endpoint in flight, counting those whose outcome is being recorded: this
many times its concurrency (so a crash repeats at most that many of its attempts)."""


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout` seconds (asyncio.timeout: cancellation-safe)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


@dataclass
class _Endpoint:
    """What a worker knows about its endpoint (reloaded at most every second, or when told)."""

    row: EndpointRow
    signer: Signer
    loaded_at: float
    failing_since: datetime | None


@dataclass
class _Worker:
    endpoint_id: str
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    fresh: bool = False
    """New messages were stored, or time jumped: claim again even if the last claim came back short."""
    stale: bool = False
    """The endpoint changed: reload it."""
    queued: deque[MessageRow] = field(default_factory=deque)
    """Claimed, not yet started."""
    sending: int = 0
    """Requests under way (at most the endpoint's concurrency)."""
    unrecorded: int = 0
    """Attempts started whose outcome is not yet recorded (at most twice the concurrency)."""
    attempts: set[asyncio.Task[None]] = field(default_factory=set)
    exhausted_until: float = 0.0


class DeliveryWorkers:
    """The delivery side of webhooks: a `Component` (start/stop) of the lifecycle service."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        store: EventStore,
        clock: Clock,
        sender: Sender,
        secret_box: SecretBox,
        per_endpoint_concurrency: int = 8,
        max_in_flight: int = 512,
        poll_interval: float = 1.0,
        idle_linger: float = 2.0,
        lease_margin: float = 5.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock
        self.sender = sender
        self.box = secret_box
        self.per_endpoint = per_endpoint_concurrency
        self.max_in_flight = max_in_flight
        self.poll_interval = poll_interval
        self.idle_linger = idle_linger
        self.lease_margin = lease_margin
        self._rand = rand
        self.outcomes = OutcomeWriter(engine, store)
        self._workers: dict[str, _Worker] = {}
        # Per endpoint, messages claimed and not yet recorded (a claim never takes one twice).
        self._held: dict[str, set[str]] = {}
        self._claiming: dict[str, int] = {}
        self._release_later: dict[str, set[str]] = {}
        # PostgreSQL (possibly several replicas): claims lease rows. SQLite (one process by
        # construction): claims only read, so deliveries add no write contention there.
        self._leases = engine.dialect.name != "sqlite"
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.scheduling_passes = 0
        """Times the scheduler looked for due messages (tests wait on it)."""
        self.claims = 0
        """Claim transactions since start (a cost figure for benchmarks)."""
        self.on_disabled: Callable[[str], None] | None = None
        """Called with the partner id when an endpoint is disabled automatically."""

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session and start scheduling."""
        await self.sender.start()
        self._wakeup = asyncio.Event()
        self._loop_task = asyncio.create_task(self._schedule_loop(), name="webhook-scheduler")

    async def stop(self) -> None:
        """Stop at once: attempts in flight are abandoned (sent again after their lease)."""
        workers = list(self._workers.values())
        tasks = [w.task for w in workers if w.task is not None]
        tasks += [t for w in workers for t in w.attempts]
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop_task = None
        self._workers.clear()
        self._held.clear()
        self._claiming.clear()
        self._release_later.clear()
        await self.outcomes.close()
        for worker in workers:
            with contextlib.suppress(Exception):
                await self._hand_back(worker)
        await self.sender.close()

    # --- signals from the dispatcher and the API --------------------------------------

    def stored(self, messages: list[MessageRow], committed: bool) -> None:
        """The dispatcher stored `messages`; `committed`: their transaction is known to have committed.

        On SQLite (one process) committed messages are queued at once, with no claim to
        read them back; otherwise their endpoints' workers are told to claim.
        """
        if self._loop_task is None:
            return
        by_endpoint: dict[str, list[MessageRow]] = {}
        for message in messages:
            by_endpoint.setdefault(message.endpoint_id, []).append(message)
        for endpoint_id, batch in by_endpoint.items():
            worker = self._workers.get(endpoint_id) or self._spawn(endpoint_id)
            if committed and not self._leases and len(worker.queued) < HANDOVER_LIMIT:
                held = self._held.setdefault(endpoint_id, set())
                for message in batch:
                    if message.id not in held:
                        held.add(message.id)
                        worker.queued.append(message)
            else:
                worker.fresh = True
            worker.wake.set()

    def endpoint_changed(self, endpoint_id: str) -> None:
        """The endpoint was updated, rotated, enabled, disabled or deleted."""
        worker = self._workers.get(endpoint_id)
        if worker is not None:
            worker.stale = True
            worker.wake.set()
        self._wakeup.set()

    def wake(self) -> None:
        """Look for due messages now (after a clock jump, a resend or a recover)."""
        for worker in self._workers.values():
            worker.fresh = True
            worker.wake.set()
        self._wakeup.set()

    @property
    def in_flight(self) -> int:
        """Attempts started and not yet recorded, across every endpoint."""
        return self._in_flight

    def active_endpoints(self) -> list[str]:
        """Endpoints with a running worker."""
        return list(self._workers)

    # --- scheduling --------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while True:
            self._wakeup.clear()
            timeout = self.poll_interval
            try:
                now = self.clock.now()
                for endpoint_id, next_at in await repository.due_endpoints(self.engine):
                    if endpoint_id in self._workers:
                        continue
                    if next_at <= now:
                        self._spawn(endpoint_id)
                    else:
                        timeout = min(timeout, (next_at - now).total_seconds())
            except Exception:  # a database hiccup must not end scheduling
                log.exception("webhook scheduling failed; retrying")
            self.scheduling_passes += 1
            await _wait(self._wakeup, max(timeout, 0.001))

    def _spawn(self, endpoint_id: str) -> _Worker:
        worker = _Worker(endpoint_id, fresh=True)
        self._workers[endpoint_id] = worker
        worker.task = asyncio.create_task(self._run_worker(worker), name=f"webhook-endpoint:{endpoint_id}")
        return worker

    async def _run_worker(self, worker: _Worker) -> None:
        endpoint: _Endpoint | None = None
        try:
            while True:
                try:
                    endpoint, done = await self._step(worker, endpoint)
                except Exception:  # a database hiccup must not strand the endpoint's messages
                    log.exception("webhook worker for %s failed; retrying", worker.endpoint_id)
                    await _wait(worker.wake, self.poll_interval)
                    continue
                if done:
                    break
        finally:
            if self._workers.get(worker.endpoint_id) is worker:
                del self._workers[worker.endpoint_id]
            self._wakeup.set()

    async def _step(self, worker: _Worker, endpoint: _Endpoint | None) -> tuple[_Endpoint | None, bool]:
        """One round of a worker: claim, start attempts, wait. True when the worker may exit."""
        worker.wake.clear()
        if worker.fresh:
            worker.fresh = False
            worker.exhausted_until = 0.0
        if endpoint is None or worker.stale or time.monotonic() - endpoint.loaded_at > ENDPOINT_REFRESH:
            worker.stale = False
            endpoint = await self._load(worker.endpoint_id)
        if endpoint is None or endpoint.row.disabled:
            await self._hand_back(worker)
            if worker.unrecorded == 0:
                return endpoint, True
            await _wait(worker.wake, self.poll_interval)
            return endpoint, False
        cap = 1 if endpoint.failing_since else self.per_endpoint
        # A claim that came back short is repeated only when new messages were stored (or
        # the clock jumped), or after a poll interval (retries may have come due).
        if 2 * len(worker.queued) <= cap and time.monotonic() >= worker.exhausted_until:
            want = PREFETCH * cap - len(worker.queued)
            if await self._claim(worker, want, cap) < want:
                worker.exhausted_until = time.monotonic() + self.poll_interval
        if worker.unrecorded == 0 and not worker.queued:
            # Linger briefly (new messages often follow), then leave it to the scheduler.
            return endpoint, not await _wait(worker.wake, self.idle_linger)
        while (
            worker.queued
            and worker.sending < cap
            and worker.unrecorded < RECORDING_SLACK * cap
            and self._in_flight < self.max_in_flight
        ):
            self._start(worker, endpoint, worker.queued.popleft())
        # Woken by an attempt ending, new messages or a change; else look again when a short
        # claim may be repeated, or after a poll interval (messages may have come due).
        until_claim = worker.exhausted_until - time.monotonic()
        await _wait(worker.wake, until_claim if until_claim > 0 else self.poll_interval)
        return endpoint, False

    async def _claim(self, worker: _Worker, want: int, cap: int) -> int:
        now = self.clock.now()
        endpoint_id = worker.endpoint_id
        held = self._held.setdefault(endpoint_id, set())
        # While a claim reads, ids it may still see as due stay held (their release waits).
        self._claiming[endpoint_id] = self._claiming.get(endpoint_id, 0) + 1
        try:
            if self._leases:
                # Long enough for everything this worker holds to be attempted in turn.
                rounds = math.ceil((worker.unrecorded + len(worker.queued) + want) / cap)
                lease_until = now + timedelta(seconds=rounds * self.sender.timeout + self.lease_margin)
                claimed = await repository.claim_due(
                    self.engine, endpoint_id, now=now, lease_until=lease_until, limit=want
                )
            else:
                claimed = await repository.due_messages(
                    self.engine, endpoint_id, now=now, limit=want, exclude=held
                )
            if self._leases:
                # A leasing claim only returns what is really due (its UPDATE sees the latest
                # outcome), including messages whose outcome was recorded while it ran: those
                # are taken again rather than left leased and unattempted.
                finished = self._release_later.get(endpoint_id, set())
                fresh = [m for m in claimed if m.id not in held or m.id in finished]
                finished.difference_update(m.id for m in fresh)
            else:
                # A reading claim may see a message as it was before its outcome committed.
                fresh = [m for m in claimed if m.id not in held]
            held.update(m.id for m in fresh)
        finally:
            self._claiming[endpoint_id] -= 1
            if not self._claiming[endpoint_id]:
                del self._claiming[endpoint_id]
                self._release(endpoint_id, self._release_later.pop(endpoint_id, ()))
        self.claims += 1
        worker.queued.extend(fresh)
        return len(claimed)

    async def _hand_back(self, worker: _Worker) -> None:
        """Release claimed but unstarted messages (the endpoint went away, or we stop)."""
        if not worker.queued:
            return
        ids = [m.id for m in worker.queued]
        worker.queued.clear()
        self._release(worker.endpoint_id, ids)
        if self._leases:
            await repository.make_due(self.engine, ids, now=self.clock.now())

    def _release(self, endpoint_id: str, ids: Iterable[str]) -> None:
        if self._claiming.get(endpoint_id):
            self._release_later.setdefault(endpoint_id, set()).update(ids)
            return
        held = self._held.get(endpoint_id)
        if held is not None:
            held.difference_update(ids)
            if not held:
                del self._held[endpoint_id]

    def _start(self, worker: _Worker, endpoint: _Endpoint, message: MessageRow) -> None:
        worker.sending += 1
        worker.unrecorded += 1
        self._in_flight += 1
        task = asyncio.create_task(self._attempt(worker, endpoint, message), name=f"webhook-attempt:{message.id}")
        worker.attempts.add(task)
        task.add_done_callback(worker.attempts.discard)

    async def _load(self, endpoint_id: str) -> _Endpoint | None:
        row = await repository.get_endpoint(self.engine, endpoint_id)
        if row is None:
            return None
        now = self.clock.now()
        in_use = [self.box.open(row.secret)]
        if row.previous_secret and row.previous_secret_expires_at and row.previous_secret_expires_at > now:
            in_use.append(self.box.open(row.previous_secret))
        return _Endpoint(row=row, signer=Signer(in_use), loaded_at=time.monotonic(), failing_since=row.failing_since)

    # --- one attempt -------------------------------------------------------------------

    async def _attempt(self, worker: _Worker, endpoint: _Endpoint, message: MessageRow) -> None:
        try:
            context = propagate.extract({"traceparent": message.traceparent}) if message.traceparent else None
            with tracer.start_as_current_span(
                "webhook.deliver",
                context=context,
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "webhook.endpoint_id": endpoint.row.id,
                    "webhook.message_id": message.id,
                    "webhook.event_type": message.event_type,
                    "webhook.attempt": message.attempts + 1,
                    "partner_id": message.partner_id,
                },
            ) as span:
                attempted_at = self.clock.now()
                try:
                    result = await self._send(endpoint, message)
                finally:
                    # The request's slot frees now; recording is batched across endpoints.
                    worker.sending -= 1
                    worker.wake.set()
                span.set_attribute("http.response.status_code", result.status_code or 0)
                if not result.succeeded:
                    span.set_status(trace.StatusCode.ERROR, result.error or "")
                try:
                    if not await self._record(endpoint, message, result, attempted_at):
                        # Resent or recovered meanwhile: its new run is due now.
                        worker.fresh = True
                except Exception:
                    log.exception("recording webhook attempt %s failed", message.id)
        finally:
            # Until recorded, an attempt counts as in flight: a crash may repeat it.
            worker.unrecorded -= 1
            worker.wake.set()
            self._in_flight -= 1
            self._release(message.endpoint_id, [message.id])
            if self._in_flight == self.max_in_flight - 1:
                for other in self._workers.values():
                    if other.queued:
                        other.wake.set()

    async def _send(self, endpoint: _Endpoint, message: MessageRow) -> AttemptResult:
        timestamp = int(time.time())  # the wall clock: receivers check it against theirs
        headers = {
            "webhook-id": message.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": endpoint.signer.signature(
                msg_id=message.event_id, timestamp=timestamp, body=message.payload
            ),
            "content-type": "application/json",
        }
        return await self.sender.send(endpoint.row.url, headers=headers, body=message.payload.encode())

    async def _record(
        self, endpoint: _Endpoint, message: MessageRow, result: AttemptResult, attempted_at: datetime
    ) -> bool:
        now = self.clock.now()
        made = message.attempts + 1
        decision = after_attempt(
            attempts_made=made, result=result, now=now, failing_since=endpoint.failing_since, rand=self._rand()
        )
        disable = decision.disable_reason is not None and not endpoint.row.disabled
        if disable:
            endpoint.row = replace(endpoint.row, disabled=True)
            self.endpoint_changed(endpoint.row.id)
            if self.on_disabled is not None:
                self.on_disabled(endpoint.row.partner_id)
        was_failing = endpoint.failing_since is not None
        endpoint.failing_since = decision.failing_since
        first_attempt_at = message.first_attempt_at or attempted_at
        outcome = Outcome(
            message, result, decision, attempted_at, first_attempt_at, now, endpoint_was_failing=was_failing
        )
        if decision.status == "delivered":
            latency = (now - first_attempt_at).total_seconds() * 1000
            outcome.events.append(
                WebhookMessageDelivered(
                    partner_id=message.partner_id,
                    endpoint_id=message.endpoint_id,
                    message_id=message.id,
                    event_type=message.event_type,
                    attempts=made,
                    latency_ms=round(max(latency, result.duration_ms), 3),
                )
            )
        elif decision.status == "failed":
            outcome.events.append(
                WebhookMessageFailed(
                    partner_id=message.partner_id,
                    endpoint_id=message.endpoint_id,
                    message_id=message.id,
                    event_type=message.event_type,
                    attempts=made,
                    last_error=(result.error or "")[:500],
                )
            )
        if disable and decision.disable_reason is not None:
            outcome.events.append(
                WebhookEndpointDisabled(
                    partner_id=message.partner_id, endpoint_id=message.endpoint_id, reason=decision.disable_reason
                )
            )
        return await self.outcomes.record(outcome)
