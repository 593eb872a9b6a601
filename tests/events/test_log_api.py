"""The log API: pages by position, the head in a header, strict query validation, auth first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from events.envelope import RecordedEvent
from events.store import EventStore, NewEvent
from tests.events.conftest import LOG_TOKEN, append_many, applied, log_client

AUTH = {"Authorization": f"Bearer {LOG_TOKEN}"}


async def test_pages_follow_positions_up_to_the_head(store: EventStore) -> None:
    await append_many(store, ["p1", "p2", "p3"], per_partner=4)
    stored = await store.read_all(after=0, limit=100)

    async with log_client(store) as http:
        first = await http.get("/internal/events", params={"after": 0, "limit": 5}, headers=AUTH)
        rest = await http.get("/internal/events", params={"after": first.json()["next_after"]}, headers=AUTH)
        beyond = await http.get("/internal/events", params={"after": 12}, headers=AUTH)

    assert first.status_code == 200 and first.headers["X-Head-Position"] == "12"
    page = first.json()
    assert page["head"] == 12 and page["next_after"] == 5
    assert [RecordedEvent.from_json(item) for item in page["items"]] == stored[:5]
    assert [RecordedEvent.from_json(item) for item in rest.json()["items"]] == stored[5:]
    assert beyond.json() == {"items": [], "next_after": 12, "head": 12}
    assert page["items"][0]["specversion"] == "1.0" and page["items"][0]["sequence"].endswith("1")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": -1},
        {"limit": 0},
        {"limit": 10_001},
        {"limit": 10**30},
        {"after": -1},
        {"after": "abc"},
        {"limit": "1.5"},
    ],
)
async def test_bad_after_or_limit_is_rejected(sqlite_store: EventStore, params: dict[str, object]) -> None:
    async with log_client(sqlite_store) as http:
        response = await http.get("/internal/events", params=params, headers=AUTH)

    assert response.status_code == 422


async def test_the_log_needs_the_callers_credentials(sqlite_store: EventStore) -> None:
    await append_many(sqlite_store, ["p1"], per_partner=1)

    async with log_client(sqlite_store) as http:
        anonymous = await http.get("/internal/events")
        invalid_and_anonymous = await http.get("/internal/events", params={"limit": -1})

    assert anonymous.status_code == 401
    assert invalid_and_anonymous.status_code in (401, 422)
    assert "items" not in anonymous.text


async def test_log_pages_match_each_events_own_json_to_the_byte(store: EventStore) -> None:
    """The log API has the database format timestamps; they must read exactly as `to_json`'s."""
    times = [
        datetime(2025, 6, 1, 10, 0, 0, tzinfo=UTC),  # no fraction: isoformat() leaves it out
        datetime(2025, 6, 1, 10, 0, 0, 500, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2025, 6, 1, 12, 0, 0, 120000, tzinfo=timezone(timedelta(hours=2))),  # stored in UTC
    ]
    for n, at in enumerate(times):
        await store.append(
            stream_id=f"partner-t{n}", expected_version=0, events=[NewEvent(applied(f"t{n}"), occurred_at=at)]
        )

    served = await store.read_all_json(after=0, limit=100)
    stored = await store.read_all(after=0, limit=100)

    assert [orjson.loads(orjson.dumps(item)) for item in served] == [e.to_json() for e in stored]
    assert served[0]["time"] == "2025-06-01T10:00:00+00:00"
    assert served[1]["time"] == "2025-06-01T10:00:00.000500+00:00"
    assert served[3]["time"] == "2025-06-01T10:00:00.120000+00:00"
    assert [RecordedEvent.from_json(orjson.loads(orjson.dumps(item))) for item in served] == stored
