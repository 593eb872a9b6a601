"""Wires webhooks into the lifecycle service: routes, the dispatcher subscription, delivery workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter

from events.catalog import EVENT_TYPES, is_webhook_deliverable
from events.envelope import RecordedEvent
from services.lifecycle.webhooks.api import router
from services.lifecycle.webhooks.dispatcher import SUBSCRIPTION_NAME, Dispatcher
from services.lifecycle.webhooks.metrics import metrics_router
from services.lifecycle.webhooks.secrets import SecretBox
from services.lifecycle.webhooks.sender import Sender
from services.lifecycle.webhooks.service import WebhookService
from services.lifecycle.webhooks.ssrf import SsrfGuard
from services.lifecycle.webhooks.workers import DeliveryWorkers
from services.runtime.app import Component, Runtime
from services.runtime.http import async_client
from services.runtime.tokens import TokenProvider

# Services whose topics the dispatcher follows: those that emit an event type partners
# may receive (onboarding, lifecycle). The gateway's topic carries client.*, token.* and
# gateway.* events only, which never go out; following it cost a fetch over four more
# partitions every 25 ms and the decoding of every traffic window, for nothing.
SOURCES: tuple[str, ...] = tuple(
    sorted({event.source for event in EVENT_TYPES.values() if is_webhook_deliverable(event.type)})
)


@dataclass
class Webhooks:
    """Everything webhooks add to a lifecycle process."""

    service: WebhookService
    dispatcher: Dispatcher
    workers: DeliveryWorkers
    guard: SsrfGuard
    routers: list[APIRouter]
    components: list[Component]


def build(
    runtime: Runtime,
    *,
    guard: SsrfGuard | None = None,
    subscription_options: dict[str, Any] | None = None,
) -> Webhooks:
    """Build the webhook parts of `runtime` (nothing runs until the components start).

    The dispatcher's subscription is included when a broker is configured;
    `subscription_options` are passed on to it (e.g. `manual_assignment`, `log_reader`).
    """
    settings = runtime.settings
    guard = guard or SsrfGuard(settings.webhook_allow_nets)
    sender = Sender(guard, timeout=settings.webhook_attempt_timeout)
    box = SecretBox(settings.secret_pepper)
    workers = DeliveryWorkers(
        engine=runtime.engine, store=runtime.store, clock=runtime.clock, sender=sender, secret_box=box
    )
    # SQLite is one process by construction: every endpoint change passes through it.
    single_process = runtime.engine.dialect.name == "sqlite"
    dispatcher = Dispatcher(clock=runtime.clock, on_stored=workers.stored, cache_endpoints=single_process)
    workers.on_disabled = dispatcher.forget
    service = WebhookService(
        engine=runtime.engine,
        store=runtime.store,
        clock=runtime.clock,
        guard=guard,
        secret_box=box,
        workers=workers,
        dispatcher=dispatcher,
    )
    components: list[Component] = [workers]
    if settings.kafka_bootstrap:
        components.append(subscription_for(runtime, dispatcher, **(subscription_options or {})))
    routers = [router(service), metrics_router(runtime.engine, runtime.clock.now)]
    return Webhooks(service, dispatcher, workers, guard, routers, components)


def install(runtime: Runtime) -> tuple[list[APIRouter], list[Component]]:
    """Routers for `/v1/webhooks/**` and the components (delivery workers, dispatcher subscription)."""
    webhooks = build(runtime)
    return webhooks.routers, webhooks.components


def subscription_for(runtime: Runtime, dispatcher: Dispatcher, **options: Any) -> Component:
    """The dispatcher's subscription on every source topic (`options` go to `Subscription`)."""
    from events.subscription import SourceInfo, Subscription

    settings = runtime.settings
    assert settings.kafka_bootstrap is not None
    sources = {
        name: SourceInfo(topic=settings.topic_of(name), partitions=settings.kafka_partitions, log_url=settings.url_of(name))
        for name in SOURCES
    }
    options.setdefault("log_reader", _LogReader(runtime))
    options.setdefault("max_retries", settings.consumer_max_retries)
    options.setdefault("session_timeout_ms", settings.consumer_session_timeout_ms)
    options.setdefault("heartbeat_interval_ms", settings.consumer_heartbeat_interval_ms)
    options.setdefault("fetch_max_wait_ms", settings.consumer_fetch_max_wait_ms)
    return Subscription(
        SUBSCRIPTION_NAME,
        sources=sources,
        handler=dispatcher.handle,
        engine=runtime.engine,
        bootstrap=settings.kafka_bootstrap,
        now=runtime.clock.now,
        **options,
    )


class _LogReader:
    """Catch-up reads: this service's own store directly, other services through their log API."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._token: TokenProvider | None = None
        settings = runtime.settings
        if settings.internal_client_id and settings.internal_client_secret:
            self._token = TokenProvider(settings)

    async def __call__(self, source: str, after: int, limit: int) -> list[RecordedEvent]:
        runtime = self._runtime
        if source == runtime.service:
            return await runtime.store.read_all(after=after, limit=limit)
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {await self._token()}"
        async with async_client(timeout=30.0) as client:
            response = await client.get(
                f"{runtime.settings.url_of(source)}/internal/events",
                params={"after": after, "limit": limit},
                headers=headers,
            )
        response.raise_for_status()
        return [RecordedEvent.from_json(item) for item in orjson.loads(response.content)["items"]]
