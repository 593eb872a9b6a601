"""The app factory every service is built with: one place for middleware, errors, health."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from events.store import EventStore
from services.runtime.auth import TokenVerifier, require_scopes
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import create_engine, ping
from services.runtime.idempotency import IdempotencyMiddleware
from services.runtime.middleware import BodyLimitMiddleware, RequestIdMiddleware
from services.runtime.migrations import migrate
from services.runtime.problems import PROBLEM_SCHEMA, Problem, install_problem_handlers
from services.runtime.settings import Settings
from services.runtime.telemetry import instrument_app, setup_telemetry

log = logging.getLogger(__name__)

# `FastAPI(telemetry=...)` exists in the releases with built-in OpenTelemetry only.
_WITHOUT_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


class Component(Protocol):
    """Something a service runs beside its routes (relay, consumers, workers)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ReadinessCheck = Callable[[], Any]


@dataclass
class Runtime:
    """What a service is wired from: settings, clock, its own database and event store."""

    service: str
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    store: EventStore
    verifier: TokenVerifier
    components: list[Component] = field(default_factory=list)
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    relay: Any = None


def build_runtime(service: str, settings: Settings, clock: Clock | None = None) -> Runtime:
    """Engine, store and token verifier of `service` (nothing connects until start-up)."""
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url_of(service), pool_size=settings.database_pool_size)
    store = EventStore(engine, source=service, now=clock.now)
    verifier = TokenVerifier(
        issuer=settings.token_issuer,
        audience=settings.audience,
        jwks_url=settings.url_of("gateway") + "/.well-known/jwks.json",
        refetch_interval=settings.jwks_refetch_interval,
    )
    runtime = Runtime(service, settings, clock, engine, store, verifier)
    runtime.readiness["database"] = lambda: ping(engine)
    return runtime


def create_service_app(
    runtime: Runtime,
    *,
    title: str,
    description: str,
    routers: Sequence[APIRouter],
    with_relay: bool = True,
    consumer_status: bool = True,
) -> FastAPI:
    """A FastAPI app with the shared conventions of DESIGN.md §4 wired in.

    Ops routes over the runtime's subscriptions come with it: dead-letter replay, and
    `GET /admin/consumers` unless the service serves its own (`consumer_status=False`).
    """
    settings = runtime.settings
    setup_telemetry(runtime.service, settings)
    if runtime.service != "gateway":
        # Zero trust: every service learns revoked tokens and clients from the gateway
        # (the gateway feeds its own list from its database).
        from services.runtime.revocations import install_revocations

        install_revocations(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await migrate(runtime.engine, runtime.service)
        started: list[Component] = []
        components = list(runtime.components)
        if with_relay and settings.kafka_bootstrap:
            components.insert(0, _relay_for(runtime))
        try:
            for component in components:
                await component.start()
                started.append(component)
            yield
        finally:
            for component in reversed(started):
                try:
                    await component.stop()
                except Exception:
                    log.exception("stopping %s failed", type(component).__name__)
            await runtime.store.close()
            await runtime.engine.dispose()

    app = FastAPI(
        title=title,
        description=description,
        version="1.0.0",
        lifespan=lifespan,
        # instrument_app (opentelemetry-instrumentation-fastapi) owns the server spans.
        # FastAPI's own telemetry, in the releases that have it, would step aside for it
        # anyway, but only after looking up the global tracer, meter and logger providers
        # on every request: ~3 % of an onboarding command's CPU.
        **_WITHOUT_NATIVE_TELEMETRY,
        responses={
            401: {"description": "Missing or invalid access token", **PROBLEM_SCHEMA},
            403: {"description": "Insufficient scope", **PROBLEM_SCHEMA},
            422: {"description": "Validation failed", **PROBLEM_SCHEMA},
        },
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.engine = runtime.engine
    app.state.store = runtime.store
    app.state.verifier = runtime.verifier
    app.state.clock = runtime.clock
    install_problem_handlers(app)

    health = APIRouter(tags=["health"])

    @health.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok", "service": runtime.service}

    @health.get("/readyz", summary="Readiness", responses={503: {"description": "Not ready", **PROBLEM_SCHEMA}})
    async def readyz() -> dict[str, Any]:
        """The database and the broker answer."""
        checks: dict[str, str] = {}
        failed = False
        for name, check in runtime.readiness.items():
            try:
                result = check()
                if hasattr(result, "__await__"):
                    result = await result
                ok = result is not False
            except Exception:  # noqa: BLE001 - any failure means not ready
                ok = False
            checks[name] = "ok" if ok else "failing"
            failed |= not ok
        if failed:
            raise Problem(503, "a dependency is not reachable", title="Not Ready", checks=checks)
        return {"status": "ready", "service": runtime.service, "checks": checks}

    app.include_router(health)
    from events.log_api import log_router

    app.include_router(log_router(runtime.store, Depends(require_scopes("events:read"))), tags=["events"])
    for router in routers:
        app.include_router(router)
    from services.runtime.consumers import consumers_router, running_subscriptions

    app.include_router(consumers_router(runtime, running_subscriptions(runtime), status=consumer_status))

    # Outermost last: request id → body limit → idempotency → app.
    app.add_middleware(IdempotencyMiddleware, now=runtime.clock.now)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    instrument_app(app, runtime.engine)
    return app


def _relay_for(runtime: Runtime) -> Component:
    from events.relay import Relay

    settings = runtime.settings
    assert settings.kafka_bootstrap is not None
    relay = Relay(
        runtime.store,
        bootstrap=settings.kafka_bootstrap,
        topic=settings.topic_of(runtime.service),
        partitions=settings.kafka_partitions,
        engine=runtime.engine,
        batch_size=settings.relay_batch_size,
        poll_interval=settings.relay_poll_interval,
    )
    runtime.readiness.setdefault("broker", _broker_check(settings.kafka_bootstrap))
    runtime.relay = relay
    return relay


def _broker_check(bootstrap: str) -> ReadinessCheck:
    async def check() -> bool:
        from events.kafka import broker_reachable

        return bool(await broker_reachable(bootstrap, timeout=2.0))

    return check
