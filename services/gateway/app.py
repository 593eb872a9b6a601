"""The gateway service: OAuth 2.0 authorization server and secured reverse proxy.

`uvicorn services.gateway.app:create_app --factory`. The proxy is a plain ASGI app in
front of FastAPI (`GatewayApp`): routed paths never touch FastAPI; FastAPI serves
/oauth/*, /.well-known/*, /admin/*, /internal/*, health and docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from services.gateway.api import admin_router, internal_router, oauth_router, operations_router
from services.gateway.authorization import AuthorizationService
from services.gateway.clients import ClientRegistry, SecretHasher, load_pepper
from services.gateway.context import GatewayContext
from services.gateway.denylist import database_fetch
from services.gateway.keys import KeyRing
from services.gateway.oauth import build_server
from services.gateway.proxy import GatewayApp, Proxy
from services.gateway.ratelimit import Limiter, MemoryLimiter, Plans, RedisLimiter
from services.gateway.tiers import TIER_EVENTS, TierBook
from services.gateway.traffic import TrafficRecorder
from services.runtime.app import Component, Runtime, build_runtime, create_service_app
from services.runtime.clock import Clock
from services.runtime.revocations import RevocationList
from services.runtime.settings import Settings

log = logging.getLogger(__name__)

INTERNAL_SCOPES = ("events:read",)
REFRESH_SECONDS = 2.0


class Startup:
    """First component: pepper, keys, tiers and the service-to-service client."""

    def __init__(self, runtime: Runtime, *, hasher: SecretHasher, keys: KeyRing, tiers: TierBook, registry: ClientRegistry) -> None:
        self.runtime = runtime
        self.hasher = hasher
        self.keys = keys
        self.tiers = tiers
        self.registry = registry

    async def start(self) -> None:
        settings = self.runtime.settings
        self.hasher.pepper = await load_pepper(self.runtime.engine, settings.secret_pepper)
        await self.keys.load()
        await self.tiers.load()
        if settings.internal_client_id and settings.internal_client_secret:
            record = await self.registry.ensure(
                client_id=settings.internal_client_id,
                secret=settings.internal_client_secret,
                name="partnerhub services (internal)",
                scopes=INTERNAL_SCOPES,
            )
            if record is None:
                log.error("the internal client %s is revoked; services cannot catch up", settings.internal_client_id)

    async def stop(self) -> None:
        return None


class Every:
    """Runs `jobs` every `seconds` (other replicas and the CLI change keys and tiers too)."""

    def __init__(self, seconds: float, *jobs: Callable[[], Awaitable[object]]) -> None:
        self.seconds = seconds
        self.jobs = jobs
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            for job in self.jobs:
                try:
                    await job()
                except Exception:  # try again next round
                    log.exception("periodic gateway job failed")


def _limiter(settings: Settings) -> Limiter:
    if settings.redis_url:
        return RedisLimiter(settings.redis_url, prefix=settings.redis_key_prefix)
    return MemoryLimiter()


TIER_FETCH_MAX_WAIT_MS = 250


def _tier_subscription(runtime: Runtime, tiers: TierBook) -> Component | None:
    """The subscription learning tiers from onboarding's events (needs the broker)."""
    settings = runtime.settings
    if not settings.kafka_bootstrap:
        return None
    from events.subscription import SourceInfo, Subscription

    token = None
    if settings.internal_client_id and settings.internal_client_secret:
        from services.runtime.tokens import TokenProvider

        token = TokenProvider(settings)
    subscription: Component = Subscription(
        "gateway-tiers",
        sources={
            "onboarding": SourceInfo(
                topic=settings.topic_of("onboarding"),
                partitions=settings.kafka_partitions,
                log_url=settings.url_of("onboarding"),
            )
        },
        handler=tiers.handle,
        batch_handler=tiers.handle_batch,
        engine=runtime.engine,
        bootstrap=settings.kafka_bootstrap,
        token_provider=token,
        event_types=TIER_EVENTS,
        max_retries=settings.consumer_max_retries,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_heartbeat_interval_ms,
        # Off every latency path: a tier reaching the rate limits 250 ms after the approval
        # changes nothing, and each fetch the embedded broker answers only when the wait
        # ends costs it CPU (the platform's consumers poll at 25 ms for freshness).
        fetch_max_wait_ms=max(settings.consumer_fetch_max_wait_ms, TIER_FETCH_MAX_WAIT_MS),
        now=runtime.clock.now,
    )
    return subscription


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> GatewayApp:
    """The gateway: the proxy dispatcher in front of the FastAPI app (reached as `.api`, or by attribute)."""
    settings = settings or Settings()
    runtime = build_runtime("gateway", settings, clock)
    now = runtime.clock.now
    revocations = RevocationList(
        database_fetch(runtime.engine, now), interval=settings.revocation_poll_interval, name="gateway"
    )
    runtime.verifier.is_revoked = revocations.is_revoked
    keys = KeyRing(runtime.engine, now=now, on_change=runtime.verifier.set_keys)
    tiers = TierBook(runtime.engine, now=now)
    hasher = SecretHasher(b"")
    registry = ClientRegistry(runtime.store, hasher)
    server = build_server(
        issuer=settings.token_issuer,
        audience=settings.audience,
        ttl=settings.access_token_ttl,
        keys=keys,
        hasher=hasher,
        tier_of=tiers.tier_of,
    )
    authorization = AuthorizationService(
        server=server,
        registry=registry,
        verifier=runtime.verifier,
        store=runtime.store,
        revocations=revocations,
        now=now,
    )
    traffic = TrafficRecorder(runtime.store, window_seconds=settings.traffic_window_seconds, now=now)
    proxy = Proxy(
        settings,
        verifier=runtime.verifier,
        plans=Plans(settings.rate_limits, tiers.tier_of),
        limiter=_limiter(settings),
        traffic=traffic,
    )
    runtime.components.extend(
        [
            Startup(runtime, hasher=hasher, keys=keys, tiers=tiers, registry=registry),
            revocations,
            Every(REFRESH_SECONDS, keys.load, tiers.load),
            proxy,
            traffic,
        ]
    )
    subscription = _tier_subscription(runtime, tiers)
    if subscription is not None:
        runtime.components.append(subscription)
    app = create_service_app(
        runtime,
        title="partnerhub gateway",
        description=(
            "OAuth 2.0 authorization server (client credentials, RFC 9068 JWT access tokens) and the "
            "secured reverse proxy in front of the onboarding, lifecycle and metrics services."
        ),
        routers=[oauth_router(), admin_router(), operations_router(), internal_router()],
        consumer_status=False,
    )
    app.state.gateway = GatewayContext(
        runtime=runtime,
        keys=keys,
        registry=registry,
        tiers=tiers,
        revocations=revocations,
        authorization=authorization,
        proxy=proxy,
        traffic=traffic,
        subscription=subscription,
    )
    return GatewayApp(app, proxy, authorization.token_endpoint)
