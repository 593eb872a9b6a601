"""`GET /admin/consumers` and dead-letter replay for a service's subscriptions (DESIGN.md §2).

Every service that runs subscriptions (lifecycle's alliance reactor and webhook
dispatcher, the gateway's tier consumer, metrics' projections) shows the same thing to
ops: per subscription and source, the checkpoint of each partition, the source's head
and the lag between them (computed from positions, never from Kafka end offsets), and
the events parked in the dead-letter table — each with the request that replays it.

`POST /admin/consumers/{subscription}/dead-letters/{id}/replay` applies a parked event
with the subscription's own handler and marks it replayed in the same transaction; if
the handler fails again nothing changes and the answer is a 409 problem naming the error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from fastapi import APIRouter, Path

from events.subscription import (
    DeadLetter,
    DeadLetterAlreadyReplayed,
    DeadLetterNotFound,
    Subscription,
    list_dead_letters,
    replay_dead_letter,
)
from services.runtime.auth import Ops
from services.runtime.http import async_client
from services.runtime.problems import PROBLEM_SCHEMA, Problem

PARKED_SHOWN = 100
HEADS_TTL = 2.0

SubscriptionsOf = Callable[[], Iterable[Subscription]]


class Heads:
    """Each source's newest log position, cached for a moment; None when it cannot be asked.

    A service's own store is read directly; another service's head comes from its log
    API (`X-Head-Position`) with the internal client's token.
    """

    def __init__(self, runtime: Any, *, ttl: float = HEADS_TTL) -> None:
        self._runtime = runtime
        self._ttl = ttl
        self._cached: dict[str, int | None] = {}
        self._at: dict[str, float] = {}
        self._token: Any = None
        settings = runtime.settings
        if settings.internal_client_id and settings.internal_client_secret:
            from services.runtime.tokens import TokenProvider

            self._token = TokenProvider(settings)

    async def of(self, sources: Iterable[str]) -> dict[str, int | None]:
        names = sorted(set(sources))
        values = await asyncio.gather(*(self._one(name) for name in names))
        return dict(zip(names, values, strict=True))

    async def _one(self, source: str) -> int | None:
        if time.monotonic() - self._at.get(source, float("-inf")) < self._ttl:
            return self._cached.get(source)
        value = await self._ask(source)
        self._cached[source], self._at[source] = value, time.monotonic()
        return value

    async def _ask(self, source: str) -> int | None:
        runtime = self._runtime
        if source == runtime.service:
            return int(await runtime.store.head_position())
        if self._token is None:
            return None
        try:
            headers = {"Authorization": f"Bearer {await self._token()}"}
            async with async_client(timeout=5.0) as client:
                response = await client.get(
                    f"{runtime.settings.url_of(source)}/internal/events",
                    params={"limit": 1},
                    headers=headers,
                )
            response.raise_for_status()
            return int(response.headers["X-Head-Position"])
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            return None


def dead_letter_view(letter: DeadLetter, *, service: str) -> dict[str, Any]:
    """A parked event as ops see it, with the gateway request that replays it."""
    # The gateway serves its own consumers; the others' are reached through it.
    base = "/admin/consumers" if service == "gateway" else f"/admin/services/{service}/consumers"
    path = f"{base}/{letter.subscription}/dead-letters/{letter.id}/replay"
    return {
        "id": letter.id,
        "source": letter.source,
        "partition": letter.partition,
        "position": letter.position,
        "event_id": letter.event_id,
        "event_type": letter.event_type,
        "partner_id": letter.partner_id,
        "error": letter.error,
        "attempts": letter.attempts,
        "parked_at": letter.parked_at.isoformat() if letter.parked_at else None,
        "replay": {"method": "POST", "path": path},
    }


async def subscription_status(
    subscription: Subscription, heads: dict[str, int | None], *, service: str
) -> dict[str, Any]:
    """One subscription's positions, lag per source and partition, and parked events."""
    positions = await subscription.positions()
    parked = await list_dead_letters(
        subscription.engine, subscription=subscription.name, limit=PARKED_SHOWN
    )
    sources = []
    for source, partitions in sorted(positions.items()):
        head = heads.get(source)
        position = min(partitions.values(), default=0)
        sources.append(
            {
                "source": source,
                "topic": subscription.sources[source].topic,
                "position": position,
                "head": head,
                "lag": None if head is None else max(0, head - position),
                "partitions": [
                    {
                        "partition": p,
                        "position": pos,
                        "lag": None if head is None else max(0, head - pos),
                    }
                    for p, pos in sorted(partitions.items())
                ],
            }
        )
    return {
        "subscription": subscription.name,
        "group_id": subscription.group_id,
        "sources": sources,
        "parked": [dead_letter_view(letter, service=service) for letter in parked],
    }


def consumers_router(
    runtime: Any, subscriptions: SubscriptionsOf, *, status: bool = True
) -> APIRouter:
    """Ops routes over `subscriptions()`: status (when `status`) and dead-letter replay."""
    router = APIRouter(tags=["operations"])
    heads = Heads(runtime)

    def named(name: str) -> Subscription:
        for subscription in subscriptions():
            if subscription.name == name:
                return subscription
        raise Problem(404, f"this service runs no subscription named {name!r}", title="Not Found")

    if status:

        @router.get("/admin/consumers", summary="Consumer positions, lag and parked events (ops)")
        async def consumers(caller: Ops) -> dict[str, Any]:
            """Each subscription's checkpoint per source partition, the lag behind the source's head, parked events."""
            running = list(subscriptions())
            known = await heads.of(source for s in running for source in s.sources)
            relay = runtime.relay
            return {
                "service": runtime.service,
                "consumers": [
                    await subscription_status(s, known, service=runtime.service) for s in running
                ],
                "relay": {"source": runtime.service, "lag": await relay.lag()}
                if relay is not None
                else None,
            }

    @router.post(
        "/admin/consumers/{subscription}/dead-letters/{dead_letter_id}/replay",
        summary="Replay a parked event (ops)",
        responses={
            404: {"description": "No such subscription or dead letter", **PROBLEM_SCHEMA},
            409: {"description": "Already replayed, or the handler failed again", **PROBLEM_SCHEMA},
        },
    )
    async def replay(
        caller: Ops,
        subscription: str = Path(max_length=200),
        dead_letter_id: int = Path(ge=1, le=2**63 - 1),
    ) -> dict[str, Any]:
        """Apply the parked event with the subscription's handler and mark it replayed, atomically."""
        target = named(subscription)
        try:
            event = await replay_dead_letter(
                target.engine, target.name, dead_letter_id, target.handler, now=runtime.clock.now
            )
        except DeadLetterNotFound as exc:
            raise Problem(404, str(exc), title="Not Found") from exc
        except DeadLetterAlreadyReplayed as exc:
            raise Problem(409, str(exc), title="Already Replayed") from exc
        except Exception as exc:  # the handler's own failure: the event stays parked
            raise Problem(
                409,
                f"the handler failed again; the event stays parked: {type(exc).__name__}: {exc}"[
                    :1000
                ],
                title="Replay Failed",
            ) from exc
        return {
            "replayed": dead_letter_id,
            "subscription": target.name,
            "event_id": event.event_id,
            "event_type": event.type,
            "position": event.position,
        }

    return router


def running_subscriptions(runtime: Any) -> SubscriptionsOf:
    """The subscriptions among a runtime's components (looked up on each request)."""

    def subscriptions() -> list[Subscription]:
        return [c for c in runtime.components if isinstance(c, Subscription)]

    return subscriptions
