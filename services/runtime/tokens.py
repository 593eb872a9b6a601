"""Service-to-service access tokens (client credentials against the gateway, cached)."""

from __future__ import annotations

import asyncio
import time

from services.runtime.http import async_client
from services.runtime.settings import Settings


class TokenProvider:
    """Fetches and caches a token of the internal client (`PARTNERHUB_INTERNAL_CLIENT_*`)."""

    def __init__(self, settings: Settings, *, scope: str = "events:read") -> None:
        if not settings.internal_client_id or not settings.internal_client_secret:
            raise ValueError("PARTNERHUB_INTERNAL_CLIENT_ID and _SECRET are needed for log-API catch-up")
        self._token_url = settings.url_of("gateway") + "/oauth/token"
        self._auth = (settings.internal_client_id, settings.internal_client_secret)
        self._scope = scope
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        """A valid access token."""
        async with self._lock:
            if self._token is None or time.monotonic() > self._expires - 60:
                async with async_client(timeout=10.0) as client:
                    response = await client.post(
                        self._token_url,
                        data={"grant_type": "client_credentials", "scope": self._scope},
                        auth=self._auth,
                    )
                    response.raise_for_status()
                    body = response.json()
                self._token = str(body["access_token"])
                self._expires = time.monotonic() + float(body.get("expires_in", 300))
            return self._token
