"""`GET /admin/consumers` on every service and dead-letter replay, through the gateway.

The parked event is a real `partner.activated` envelope placed in lifecycle's
dead-letter table (parking itself is the subscription runner's job, tested in
tests/events); replaying it must run the alliance reactor and start the alliance,
exactly once.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert

from events.catalog import PartnerActivated
from events.envelope import RecordedEvent
from events.schema import dead_letters
from services.runtime.db import create_engine
from tests.support.platform import RunningPlatform, eventually

pytestmark = [pytest.mark.e2e]

REACTOR = "lifecycle.alliance-reactor"


async def park_activation(platform: RunningPlatform, partner_id: str) -> int:
    """A `partner.activated` for `partner_id`, parked in lifecycle's dead-letter table; its id."""
    now = datetime.now(UTC)
    event = PartnerActivated(partner_id=partner_id, tier="strategic")
    recorded = RecordedEvent(
        position=10**9,
        event_id=str(uuid.uuid4()),
        source="onboarding",
        stream_id=f"partner-{partner_id}",
        stream_version=8,
        type=event.type,
        schema_version=event.schema_version,
        data=event.payload(),
        partition_key=partner_id,
        occurred_at=now,
        recorded_at=now,
    )
    engine = create_engine(f"sqlite+aiosqlite:///{platform.platform.var_dir / 'lifecycle.db'}")
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                insert(dead_letters).values(
                    subscription=REACTOR,
                    source="onboarding",
                    partition=0,
                    position=recorded.position,
                    event_id=recorded.event_id,
                    event_type=recorded.type,
                    partner_id=partner_id,
                    error="RuntimeError: the database was read-only",
                    attempts=6,
                    envelope=recorded.to_json(),
                    parked_at=now,
                )
            )
            return int(result.inserted_primary_key[0])
    finally:
        await engine.dispose()


def consumer(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in doc["consumers"] if c["subscription"] == name]
    assert found, [c["subscription"] for c in doc["consumers"]]
    return found[0]


async def test_every_service_shows_its_consumers_through_the_gateway(platform: RunningPlatform) -> None:
    ops = await platform.ops_http()

    onboarding = await ops.get("/admin/services/onboarding/consumers")
    assert onboarding.status_code == 200, onboarding.text
    assert onboarding.json()["consumers"] == []  # onboarding is a source only
    assert isinstance(onboarding.json()["relay"]["lag"], int)

    async def lifecycle_caught_up() -> dict[str, Any]:
        response = await ops.get("/admin/services/lifecycle/consumers")
        assert response.status_code == 200, response.text
        reactor = consumer(response.json(), REACTOR)
        (source,) = reactor["sources"]
        assert source["source"] == "onboarding" and source["head"] is not None
        assert source["lag"] == 0 and len(source["partitions"]) >= 1
        return response.json()

    doc = await eventually(lifecycle_caught_up, timeout=30)
    # The webhook dispatcher: the topics of deliverable events (not the gateway's).
    assert {s["source"] for c in doc["consumers"] if c["subscription"] != REACTOR for s in c["sources"]} == {
        "onboarding",
        "lifecycle",
    }

    gateway = await ops.get("/admin/consumers")
    assert gateway.status_code == 200
    assert [c["subscription"] for c in gateway.json()["consumers"]] == ["gateway-tiers"]

    partner = await platform.partner_http("ptn_" + secrets.token_hex(10))
    refused = await partner.get("/admin/services/lifecycle/consumers")
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_a_parked_event_is_listed_with_its_replay_request_and_replays_once(platform: RunningPlatform) -> None:
    ops = await platform.ops_http()
    partner_id = "ptn_" + secrets.token_hex(10)
    parked_id = await park_activation(platform, partner_id)

    listing = (await ops.get("/admin/services/lifecycle/consumers")).json()
    parked = {p["id"]: p for p in consumer(listing, REACTOR)["parked"]}
    assert parked[parked_id]["partner_id"] == partner_id
    assert parked[parked_id]["event_type"] == "partner.activated"
    replay = parked[parked_id]["replay"]
    assert replay == {
        "method": "POST",
        "path": f"/admin/services/lifecycle/consumers/{REACTOR}/dead-letters/{parked_id}/replay",
    }
    assert (await ops.get(f"/v1/alliances/{partner_id}")).status_code == 404

    replayed = await ops.request(replay["method"], replay["path"])
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["event_type"] == "partner.activated"
    alliance = await ops.get(f"/v1/alliances/{partner_id}")
    assert alliance.status_code == 200
    assert (alliance.json()["phase"], alliance.json()["tier"]) == ("initiation", "strategic")

    # Replayed once: it leaves the list, and a second replay is refused and changes nothing.
    listing = (await ops.get("/admin/services/lifecycle/consumers")).json()
    assert parked_id not in {p["id"] for p in consumer(listing, REACTOR)["parked"]}
    again = await ops.post(replay["path"])
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert "replayed" in again.json()["detail"]
    assert (await ops.get(f"/v1/alliances/{partner_id}")).json() == alliance.json()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/admin/services/lifecycle/consumers/{REACTOR}/dead-letters/987654321/replay", 404),
        ("/admin/services/lifecycle/consumers/no-such-subscription/dead-letters/1/replay", 404),
        (f"/admin/services/lifecycle/consumers/{REACTOR}/dead-letters/0/replay", 422),
        (f"/admin/services/lifecycle/consumers/{REACTOR}/dead-letters/abc/replay", 422),
    ],
)
async def test_replaying_what_is_not_parked_is_a_precise_problem(
    platform: RunningPlatform, path: str, status: int
) -> None:
    ops = await platform.ops_http()
    response = await ops.post(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
