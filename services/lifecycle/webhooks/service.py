"""Endpoint and message operations behind the webhook API (authorisation stays in the routes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.catalog import WebhookEndpointDisabled
from events.envelope import EventMetadata, RecordedEvent
from events.store import EventStore
from services.lifecycle.webhooks import repository
from services.lifecycle.webhooks.dispatcher import Dispatcher
from services.lifecycle.webhooks.domain import (
    SECRET_OVERLAP,
    InvalidEndpoint,
    normalise_event_types,
    parse_destination,
)
from services.lifecycle.webhooks.outcomes import OUTCOME_STREAM
from services.lifecycle.webhooks.repository import EndpointRow, MessageRow
from services.lifecycle.webhooks.secrets import SecretBox, generate_secret
from services.lifecycle.webhooks.ssrf import Refused, SsrfGuard
from services.lifecycle.webhooks.tables import messages
from services.lifecycle.webhooks.workers import DeliveryWorkers
from services.runtime.clock import Clock

URL_CHECK_TIMEOUT = 3.0


class StaleEndpoint(Exception):
    """The endpoint changed since the caller's If-Match version."""

    def __init__(self, current: int) -> None:
        super().__init__(f"endpoint is at version {current}")
        self.current = current


@dataclass(frozen=True, slots=True)
class Created:
    """A new endpoint and its secret (shown once)."""

    endpoint: EndpointRow
    secret: str


class WebhookService:
    """Creates, changes and inspects endpoints and their messages."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        store: EventStore,
        clock: Clock,
        guard: SsrfGuard,
        secret_box: SecretBox,
        workers: DeliveryWorkers | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock
        self.guard = guard
        self.box = secret_box
        self.workers = workers
        self.dispatcher = dispatcher

    # --- endpoints -----------------------------------------------------------------------

    async def check_url(self, url: str) -> str:
        """The URL, once it is an http(s) URL the SSRF guard accepts (`InvalidEndpoint` otherwise)."""
        destination = parse_destination(url)
        try:
            async with asyncio.timeout(URL_CHECK_TIMEOUT):
                await self.guard.check(destination)
        except Refused as exc:
            raise InvalidEndpoint(f"url refused: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            # A name that does not resolve yet is accepted for https (checked again at each
            # attempt); plain http needs proof that the destination is allow-listed.
            if destination.scheme == "http":
                raise InvalidEndpoint(f"url refused: {destination.host} does not resolve ({exc.__class__.__name__})") from exc
        return url

    async def create(
        self, *, partner_id: str, url: str, event_types: list[str], description: str
    ) -> Created:
        """Register an endpoint; its secret is returned here and never again."""
        url = await self.check_url(url)
        patterns = normalise_event_types(event_types)
        secret = generate_secret()
        now = self.clock.now()
        endpoint_id = repository.new_id("ep_")
        await repository.insert_endpoint(
            self.engine,
            {
                "id": endpoint_id,
                "partner_id": partner_id,
                "url": url,
                "description": description,
                "event_types": patterns,
                "secret": self.box.seal(secret),
                "disabled": False,
                "version": 1,
                "created_at": now,
                "updated_at": now,
            },
        )
        endpoint = await repository.get_endpoint(self.engine, endpoint_id)
        assert endpoint is not None
        self._changed(endpoint)
        return Created(endpoint, secret)

    async def get(self, endpoint_id: str) -> EndpointRow | None:
        """The endpoint, if it exists."""
        return await repository.get_endpoint(self.engine, endpoint_id)

    async def update(
        self, endpoint: EndpointRow, *, changes: dict[str, Any], expected_version: int | None, actor: str
    ) -> EndpointRow:
        """Change url, event_types, description or disabled (enabling clears the failure record)."""
        values: dict[str, Any] = {}
        if "url" in changes and changes["url"] != endpoint.url:
            values["url"] = await self.check_url(changes["url"])
        if "event_types" in changes:
            values["event_types"] = normalise_event_types(changes["event_types"])
        if "description" in changes:
            values["description"] = changes["description"]
        now = self.clock.now()
        disabling = changes.get("disabled") is True and not endpoint.disabled
        if changes.get("disabled") is False and endpoint.disabled:
            values.update(disabled=False, disabled_reason=None, disabled_at=None, failing_since=None)
        if disabling:
            values.update(disabled=True, disabled_reason="disabled by client", disabled_at=now)
        version = endpoint.version if expected_version is None else expected_version
        if not values:
            if version != endpoint.version:
                raise StaleEndpoint(endpoint.version)
            return endpoint
        values["updated_at"] = now

        async def apply(conn: AsyncConnection, _recorded: list[RecordedEvent] | None = None) -> None:
            if not await repository.update_endpoint(conn, endpoint.id, expected_version=version, values=values):
                raise StaleEndpoint(await self._version(conn, endpoint.id))

        if disabling:
            await self.store.append(
                stream_id=OUTCOME_STREAM,
                expected_version=None,
                events=[WebhookEndpointDisabled(partner_id=endpoint.partner_id, endpoint_id=endpoint.id, reason="disabled by client")],
                metadata=EventMetadata(actor=actor),
                effects=apply,
            )
        else:
            async with self.engine.begin() as conn:
                await apply(conn)
        self._changed(endpoint)
        updated = await repository.get_endpoint(self.engine, endpoint.id)
        assert updated is not None
        return updated

    async def rotate_secret(self, endpoint: EndpointRow, *, expected_version: int | None) -> tuple[EndpointRow, str]:
        """A new secret; the current one keeps signing beside it for 24 hours."""
        secret = generate_secret()
        now = self.clock.now()
        values = {
            "secret": self.box.seal(secret),
            "previous_secret": endpoint.secret,
            "previous_secret_expires_at": now + SECRET_OVERLAP,
            "updated_at": now,
        }
        version = endpoint.version if expected_version is None else expected_version
        async with self.engine.begin() as conn:
            if not await repository.update_endpoint(conn, endpoint.id, expected_version=version, values=values):
                raise StaleEndpoint(await self._version(conn, endpoint.id))
        self._changed(endpoint)
        updated = await repository.get_endpoint(self.engine, endpoint.id)
        assert updated is not None
        return updated, secret

    async def delete(self, endpoint: EndpointRow, *, expected_version: int | None) -> None:
        """Remove the endpoint with its messages and delivery log."""
        version = endpoint.version if expected_version is None else expected_version
        if not await repository.delete_endpoint(self.engine, endpoint.id, expected_version=version):
            current = await repository.get_endpoint(self.engine, endpoint.id)
            raise StaleEndpoint(current.version if current else 0)
        self._changed(endpoint)

    async def pending(self, endpoint_ids: list[str]) -> dict[str, int]:
        """Queue depth per endpoint."""
        return await repository.pending_depths(self.engine, endpoint_ids)

    # --- messages --------------------------------------------------------------------------

    async def resend(self, message: MessageRow) -> MessageRow:
        """Send the message again now, as a new schedule run."""
        now = self.clock.now()
        await repository.restart_messages(self.engine, where=messages.c.id == message.id, now=now, trigger="resend")
        self._wake()
        again = await repository.get_message(self.engine, message.id)
        assert again is not None
        return again

    async def recover(self, endpoint: EndpointRow, *, since: datetime) -> int:
        """Send again every finally failed message of the endpoint created since `since`."""
        now = self.clock.now()
        ids = await repository.restart_messages(
            self.engine,
            where=and_(
                messages.c.endpoint_id == endpoint.id,
                messages.c.status == "failed",
                messages.c.created_at >= since,
            ),
            now=now,
            trigger="recover",
        )
        self._wake()
        return len(ids)

    async def _version(self, conn: AsyncConnection, endpoint_id: str) -> int:
        current = await repository.get_endpoint(conn, endpoint_id)
        return current.version if current else 0

    def _changed(self, endpoint: EndpointRow) -> None:
        if self.dispatcher is not None:
            self.dispatcher.forget(endpoint.partner_id)
        if self.workers is not None:
            self.workers.endpoint_changed(endpoint.id)

    def _wake(self) -> None:
        if self.workers is not None:
            self.workers.wake()
