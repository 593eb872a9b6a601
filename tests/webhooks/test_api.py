"""Tier 2: the /v1/webhooks endpoints API (in-process app, real SQLite, test tokens)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.runtime.pagination import encode_cursor
from tests.webhooks.conftest import Harness, HarnessFactory
from tests.webhooks.receiver import Receiver

PATH = "/v1/webhooks/endpoints"


async def test_create_shows_the_secret_once(harness: Harness, receiver: Receiver) -> None:
    response = await harness.client.post(
        PATH,
        json={"url": receiver.url("/a"), "event_types": ["integration.*"], "description": "CRM sync"},
        headers=harness.partner("p-1"),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["secret"].startswith("whsec_")
    assert body["id"].startswith("ep_")
    assert body["partner_id"] == "p-1"
    assert body["event_types"] == ["integration.*"]
    assert body["pending_messages"] == 0
    assert response.headers["location"] == f"{PATH}/{body['id']}"
    assert response.headers["etag"] == '"1"'

    shown = await harness.client.get(f"{PATH}/{body['id']}", headers=harness.partner("p-1"))
    assert shown.status_code == 200
    assert "secret" not in shown.json()
    assert body["secret"] not in shown.text
    assert shown.json()["description"] == "CRM sync"


async def test_list_is_paginated_and_a_partner_sees_only_its_own(harness: Harness, receiver: Receiver) -> None:
    mine = [await harness.create_endpoint("p-1", receiver.url(f"/m{i}")) for i in range(5)]
    await harness.create_endpoint("p-2", receiver.url("/theirs"))
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await harness.client.get(PATH, params=params, headers=harness.partner("p-1"))).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in mine]
    everything = (await harness.client.get(PATH, params={"limit": 200}, headers=harness.ops)).json()
    assert len(everything["items"]) == 6
    only_p2 = (await harness.client.get(PATH, params={"partner_id": "p-2"}, headers=harness.ops)).json()
    assert [i["partner_id"] for i in only_p2["items"]] == ["p-2"]
    other = await harness.client.get(PATH, params={"partner_id": "p-2"}, headers=harness.partner("p-1"))
    assert other.status_code == 404


async def test_another_partners_endpoint_is_not_found(harness: Harness, receiver: Receiver) -> None:
    theirs = await harness.create_endpoint("p-2", receiver.url("/x"))
    me = harness.partner("p-1")
    base = f"{PATH}/{theirs['id']}"
    assert (await harness.client.get(base, headers=me)).status_code == 404
    assert (await harness.client.patch(base, json={"description": "mine"}, headers=me)).status_code == 404
    assert (await harness.client.delete(base, headers=me)).status_code == 404
    assert (await harness.client.post(f"{base}/rotate-secret", headers=me)).status_code == 404
    assert (await harness.client.get(f"{base}/messages", headers=me)).status_code == 404
    recover = await harness.client.post(f"{base}/recover", json={"since": "2020-01-01T00:00:00Z"}, headers=me)
    assert recover.status_code == 404
    assert (await harness.client.get(base, headers=harness.partner("p-2"))).status_code == 200


async def test_update_disable_enable_and_delete(harness: Harness, receiver: Receiver) -> None:
    created = await harness.create_endpoint("p-1", receiver.url("/a"))
    url = f"{PATH}/{created['id']}"
    me = harness.partner("p-1")
    patched = await harness.client.patch(
        url, json={"event_types": ["sla.*"], "description": "SLA only", "url": receiver.url("/b")}, headers=me
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["event_types"] == ["sla.*"]
    assert patched.json()["url"] == receiver.url("/b")
    assert patched.headers["etag"] == '"2"'

    disabled = await harness.client.patch(url, json={"disabled": True}, headers=me)
    assert disabled.json()["disabled"] is True
    assert disabled.json()["disabled_reason"] == "disabled by client"
    assert [e["type"] for e in await harness.stored_events()] == ["webhook.endpoint_disabled"]
    enabled = await harness.client.patch(url, json={"disabled": False}, headers=me)
    assert enabled.json()["disabled"] is False
    assert enabled.json()["disabled_reason"] is None

    assert (await harness.client.delete(url, headers=me)).status_code == 204
    assert (await harness.client.get(url, headers=me)).status_code == 404


async def test_if_match_guards_writes(harness: Harness, receiver: Receiver) -> None:
    created = await harness.create_endpoint("p-1", receiver.url("/a"))
    url = f"{PATH}/{created['id']}"
    me = harness.partner("p-1")
    ok = await harness.client.patch(url, json={"description": "v2"}, headers={**me, "If-Match": '"1"'})
    assert ok.status_code == 200
    stale = await harness.client.patch(url, json={"description": "v3"}, headers={**me, "If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"
    assert (await harness.client.delete(url, headers={**me, "If-Match": '"1"'})).status_code == 412
    assert (await harness.client.delete(url, headers={**me, "If-Match": '"2"'})).status_code == 204


async def test_rotate_secret_returns_a_new_secret_once(harness: Harness, receiver: Receiver) -> None:
    created = await harness.create_endpoint("p-1", receiver.url("/a"))
    rotated = await harness.client.post(f"{PATH}/{created['id']}/rotate-secret", headers=harness.partner("p-1"))
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != created["secret"]
    shown = (await harness.client.get(f"{PATH}/{created['id']}", headers=harness.ops)).json()
    assert shown["previous_secret_expires_at"] == body["previous_secret_expires_at"]
    assert "secret" not in shown


async def test_ops_create_endpoints_for_a_partner(harness: Harness, receiver: Receiver) -> None:
    made = await harness.client.post(
        PATH, json={"url": receiver.url("/o"), "event_types": ["*"], "partner_id": "p-9"}, headers=harness.ops
    )
    assert made.status_code == 201 and made.json()["partner_id"] == "p-9"
    missing = await harness.client.post(PATH, json={"url": receiver.url("/o"), "event_types": ["*"]}, headers=harness.ops)
    assert missing.status_code == 422
    forged = await harness.client.post(
        PATH, json={"url": receiver.url("/o"), "event_types": ["*"], "partner_id": "p-9"}, headers=harness.partner("p-1")
    )
    assert forged.status_code == 403


async def test_scopes_are_enforced(harness: Harness, receiver: Receiver) -> None:
    reader = harness.partner("p-1", scopes="webhooks:read")
    denied = await harness.client.post(PATH, json={"url": receiver.url("/a"), "event_types": ["*"]}, headers=reader)
    assert denied.status_code == 403
    assert (await harness.client.get(PATH, headers=reader)).status_code == 200
    nothing = harness.partner("p-1", scopes="kpis:read")
    assert (await harness.client.get(PATH, headers=nothing)).status_code == 403
    assert (await harness.client.get(PATH)).status_code == 401


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"url": "ftp://example.com/x", "event_types": ["*"]}, "http(s)"),
        ({"url": "https://u:p@example.com/", "event_types": ["*"]}, "credentials"),
        ({"url": "https://example.com/" + "a" * 3000, "event_types": ["*"]}, "url"),
        ({"url": "https://example.com/", "event_types": []}, "event_types"),
        ({"url": "https://example.com/", "event_types": ["nope.happened"]}, "not an event type"),
        ({"url": "https://example.com/", "event_types": ["webhook.*"]}, "matches no deliverable"),
        ({"url": "https://example.com/", "event_types": ["gateway.traffic_window_closed"]}, "not delivered"),
        ({"url": "https://example.com/", "event_types": "integration.*"}, "event_types"),
        ({"url": "https://example.com/", "event_types": ["*"], "secret": "whsec_x"}, "secret"),
        ({"url": 42, "event_types": ["*"]}, "url"),
        ({"event_types": ["*"]}, "url"),
    ],
    ids=[
        "ftp-url",
        "credentials-in-url",
        "huge-url",
        "no-event-types",
        "unknown-event-type",
        "webhook-prefix",
        "gateway-event",
        "event-types-not-a-list",
        "unknown-field",
        "url-wrong-type",
        "url-missing",
    ],
)
async def test_bad_create_bodies_are_422(harness: Harness, body: dict[str, Any], detail: str) -> None:
    response = await harness.client.post(PATH, json=body, headers=harness.partner("p-1"))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.text


async def test_malformed_json_and_huge_bodies(harness: Harness) -> None:
    malformed = await harness.client.post(
        PATH, content=b'{"url": ', headers={**harness.partner("p-1"), "content-type": "application/json"}
    )
    assert malformed.status_code == 422 and malformed.json()["title"] == "Malformed JSON"
    huge = await harness.client.post(
        PATH,
        content=b'{"url": "' + b"a" * 2_000_000 + b'"}',
        headers={**harness.partner("p-1"), "content-type": "application/json"},
    )
    assert huge.status_code == 413


async def test_bad_patch_and_query_input(harness: Harness, receiver: Receiver) -> None:
    created = await harness.create_endpoint("p-1", receiver.url("/a"))
    url = f"{PATH}/{created['id']}"
    me = harness.partner("p-1")
    assert (await harness.client.patch(url, json={"url": None}, headers=me)).status_code == 422
    assert (await harness.client.patch(url, json={"disabled": "maybe"}, headers=me)).status_code == 422
    assert (await harness.client.patch(url, json={"event_types": ["client.*"]}, headers=me)).status_code == 422
    assert (await harness.client.get(PATH, params={"cursor": "!!!"}, headers=me)).status_code == 422
    for position in ({"c": "2020-01-01T00:00:00", "i": "ep_x"}, {"c": "0001-01-01T00:00:00+14:00", "i": "ep_x"}, {"c": 5, "i": "ep_x"}, {"c": "2020-01-01T00:00:00Z", "i": 7}, {"x": 1}):
        for path in (PATH, f"{url}/messages"):
            bad = await harness.client.get(path, params={"cursor": encode_cursor(position)}, headers=me)
            assert bad.status_code == 422 and bad.json()["title"] == "Invalid Cursor", (path, position)
    assert (await harness.client.get(PATH, params={"limit": 0}, headers=me)).status_code == 422
    assert (await harness.client.get(f"{url}/messages", params={"status": "lost"}, headers=me)).status_code == 422
    assert (await harness.client.get(f"{PATH}/{'x' * 300}", headers=me)).status_code == 404
    assert (await harness.client.post("/v1/webhooks/messages/msg_unknown/resend", headers=me)).status_code == 404


async def test_recover_validates_since(harness: Harness, receiver: Receiver) -> None:
    created = await harness.create_endpoint("p-1", receiver.url("/a"))
    url = f"{PATH}/{created['id']}/recover"
    me = harness.partner("p-1")
    future = (harness.clock.now() + timedelta(days=1)).isoformat()
    assert (await harness.client.post(url, json={"since": future}, headers=me)).status_code == 422
    assert (await harness.client.post(url, json={"since": "2026-01-01T00:00:00"}, headers=me)).status_code == 422
    assert (await harness.client.post(url, json={}, headers=me)).status_code == 422
    for extreme in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        assert (await harness.client.post(url, json={"since": extreme}, headers=me)).status_code == 422, extreme
    done = await harness.client.post(url, json={"since": "2020-01-01T00:00:00Z"}, headers=me)
    assert done.status_code == 202 and done.json()["recovered"] == 0


async def test_idempotency_key_replays_the_creation(harness: Harness, receiver: Receiver) -> None:
    body = {"url": receiver.url("/a"), "event_types": ["*"]}
    headers = {**harness.partner("p-1"), "Idempotency-Key": "create-1"}
    first = await harness.client.post(PATH, json=body, headers=headers)
    again = await harness.client.post(PATH, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    listed = (await harness.client.get(PATH, headers=harness.partner("p-1"))).json()["items"]
    assert len(listed) == 1


async def test_private_destinations_are_refused_at_creation(harness_factory: HarnessFactory) -> None:
    strict = await harness_factory(allow_nets=[])
    for url in ("http://127.0.0.1:8080/x", "https://169.254.169.254/", "https://[::1]/", "http://localhost/x"):
        response = await strict.client.post(PATH, json={"url": url, "event_types": ["*"]}, headers=strict.partner("p-1"))
        assert response.status_code == 422, url
        assert "refused" in response.json()["detail"]
