"""Everything the gateway's routes and proxy are wired from (built once in `create_app`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from services.gateway.authorization import AuthorizationService
from services.gateway.clients import ClientRegistry
from services.gateway.keys import KeyRing
from services.gateway.tiers import TierBook
from services.gateway.traffic import TrafficRecorder
from services.runtime.app import Runtime
from services.runtime.revocations import RevocationList

if TYPE_CHECKING:
    from services.gateway.proxy import Proxy


@dataclass
class GatewayContext:
    """The gateway's parts."""

    runtime: Runtime
    keys: KeyRing
    registry: ClientRegistry
    tiers: TierBook
    revocations: RevocationList
    authorization: AuthorizationService
    proxy: Proxy
    traffic: TrafficRecorder
    subscription: Any = None
    """The tier subscription (events.subscription.Subscription) when the broker is configured."""


async def _gateway(request: Request) -> GatewayContext:
    context: GatewayContext = request.app.state.gateway
    return context


Gateway = Annotated[GatewayContext, Depends(_gateway)]
