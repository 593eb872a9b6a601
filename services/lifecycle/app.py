"""The lifecycle service: alliances, integrations, health probing, SLA monitoring, webhooks.

`uvicorn services.lifecycle.app:create_app --factory`
"""

from __future__ import annotations

import importlib
import importlib.util

from fastapi import APIRouter, FastAPI

from events.leader import Leadership
from services.lifecycle.alliances.api import router as alliances_router
from services.lifecycle.alliances.reactor import AllianceReactor, subscription_for
from services.lifecycle.integrations.api import router as integrations_router
from services.lifecycle.integrations.destinations import networks
from services.lifecycle.integrations.prober import HealthProber
from services.lifecycle.integrations.sla import SlaMonitor
from services.runtime.app import Component, Runtime, build_runtime, create_service_app
from services.runtime.clock import Clock
from services.runtime.settings import Settings

SERVICE = "lifecycle"
WEBHOOKS_WIRING = "services.lifecycle.webhooks.wiring"


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The lifecycle app with its prober, SLA monitor, alliance reactor and webhooks."""
    settings = settings or Settings()
    runtime = build_runtime(SERVICE, settings, clock)
    prober = HealthProber(
        engine=runtime.engine,
        store=runtime.store,
        clock=runtime.clock,
        interval=settings.probe_interval,
        timeout=settings.probe_timeout,
        allow_nets=networks(settings.webhook_allow_nets),
        leadership=Leadership(runtime.engine, "partnerhub.lifecycle.prober"),
    )
    monitor = SlaMonitor(
        engine=runtime.engine,
        store=runtime.store,
        clock=runtime.clock,
        check_interval=settings.probe_interval,
        leadership=Leadership(runtime.engine, "partnerhub.lifecycle.sla-monitor"),
    )
    reactor = AllianceReactor(runtime.store, runtime.engine)
    runtime.components.extend([prober, monitor])
    if settings.kafka_bootstrap:
        runtime.components.append(subscription_for(runtime, reactor))

    routers: list[APIRouter] = [alliances_router, integrations_router]
    webhook_routers, webhook_components = _webhooks(runtime)
    routers.extend(webhook_routers)
    runtime.components.extend(webhook_components)

    app = create_service_app(
        runtime,
        title="partnerhub lifecycle",
        description="Alliances, integrations, health probing, SLA monitoring and webhooks.",
        routers=routers,
    )
    app.state.prober = prober
    app.state.sla_monitor = monitor
    app.state.alliance_reactor = reactor
    return app


def _webhooks(runtime: Runtime) -> tuple[list[APIRouter], list[Component]]:
    # Webhooks are built beside this module; wire them in when their package provides it.
    if importlib.util.find_spec(WEBHOOKS_WIRING) is None:
        return [], []
    wiring = importlib.import_module(WEBHOOKS_WIRING)
    routers, components = wiring.install(runtime)
    return list(routers), list(components)


