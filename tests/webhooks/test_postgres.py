"""The webhook SQL on PostgreSQL (runs when PARTNERHUB_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import pytest

from tests.webhooks.conftest import HarnessFactory, attempt_event, eventually
from tests.webhooks.receiver import Receiver, fail_then_ok

pytestmark = pytest.mark.postgres


async def test_dispatch_claim_retry_resend_and_recover(
    harness_factory: HarnessFactory, pg_database: str, receiver: Receiver
) -> None:
    harness = await harness_factory(database_url=pg_database)
    a = await harness.create_endpoint("p-a", receiver.url("/a"), ["integration.*"])
    b = await harness.create_endpoint("p-b", receiver.url("/b"))
    receiver.expect("/a", [a["secret"]], fail_then_ok(3))
    receiver.expect("/b", [b["secret"]])
    recorded = [await harness.emit(attempt_event(p, n)) for n in range(3) for p in ("p-a", "p-b")]
    await harness.dispatch(recorded[0])  # a duplicate dispatch stores nothing new

    await eventually(lambda: len(receiver.at("/b")) == 3)
    await eventually(lambda: len(receiver.at("/a")) == 3)
    await harness.advance(10)
    await eventually(lambda: len(receiver.at("/a")) == 6)
    assert not receiver.unverified
    messages = await eventually(lambda: _all(harness, a["id"], "delivered"))
    assert len(messages) == 3 and all(len(m["attempts"]) == 2 for m in messages)

    resent = await harness.client.post(f"/v1/webhooks/messages/{messages[0]['id']}/resend", headers=harness.ops)
    assert resent.status_code == 202
    await eventually(lambda: len(receiver.at("/a")) == 7)
    page = await harness.client.get(f"/v1/webhooks/endpoints/{b['id']}/messages", params={"limit": 2}, headers=harness.ops)
    assert len(page.json()["items"]) == 2 and page.json()["next_cursor"]
    # The receiver has the resent delivery before its outcome is recorded: wait for the event.
    await eventually(lambda: _delivered_events(harness, 7))


async def _delivered_events(harness, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await harness.stored_events("webhook.message_delivered")) == n


async def _all(harness, endpoint_id: str, status: str):  # type: ignore[no-untyped-def]
    items = await harness.messages(endpoint_id)
    return items if items and all(m["status"] == status for m in items) else None
