"""Onboarding end to end: real gateway, real OAuth tokens, real broker, services under uvicorn."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from events.envelope import RecordedEvent
from events.kafka import partition_for
from tests.onboarding.conftest import (
    AGREEMENT,
    INNOVATION_SCORES,
    PHASES,
    STRATEGIC_SCORES,
    application,
)
from tests.support.platform import RunningPlatform, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def ok(http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await http.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    doc: dict[str, Any] = response.json()
    return doc


async def awaiting_approval(http: httpx.AsyncClient, scores: dict[str, int]) -> str:
    pid = str((await ok(http, "/v1/partners", application()))["id"])
    await ok(http, f"/v1/partners/{pid}/assessment", {"scores": scores})
    for phase in PHASES:
        await ok(http, f"/v1/partners/{pid}/due-diligence", {"phase": phase, "passed": True})
    return pid


async def test_journey_from_application_to_activation_through_the_gateway(platform: RunningPlatform) -> None:
    ops = await platform.ops_http()
    pid = await awaiting_approval(ops, INNOVATION_SCORES)
    approved = await ok(ops, f"/v1/partners/{pid}/approvals", {"decision": "approve", "comment": "go"})
    assert approved["status"] == "approved" and approved["approvals"]["approvers"] == [platform.ops.client_id]
    await ok(ops, f"/v1/partners/{pid}/agreement", AGREEMENT)
    active = await ops.post(f"/v1/partners/{pid}/activate")
    assert active.status_code == 200 and active.json()["status"] == "active"
    assert active.headers["etag"] == '"9"'

    detail = await ops.get(f"/v1/partners/{pid}")
    assert detail.status_code == 200 and detail.headers["etag"] == '"9"' and detail.json()["tier"] == "innovation"
    events = (await ops.get(f"/v1/partners/{pid}/events")).json()["items"]
    assert [e["type"] for e in events][-2:] == ["partner.agreement_signed", "partner.activated"]
    assert {e["actor"] for e in events} == {platform.ops.client_id}

    # The partner's own client sees its record, and nothing of any other partner.
    other = str((await ok(ops, "/v1/partners", application("Someone Else")))["id"])
    partner = await platform.partner_http(pid)
    assert (await partner.get(f"/v1/partners/{pid}")).json()["status"] == "active"
    assert (await partner.get(f"/v1/partners/{other}")).status_code == 404
    assert [p["id"] for p in (await partner.get("/v1/partners")).json()["items"]] == [pid]
    assert (await partner.post(f"/v1/partners/{other}/activate")).status_code == 403

    # partner.activated is relayed to Kafka, keyed by partner, with tier and agreement end.
    activated = await _from_kafka(platform, pid, "partner.activated")
    assert activated.data == {"partner_id": pid, "tier": "innovation", "ends_on": AGREEMENT["ends_on"]}
    assert activated.stream_id == f"partner-{pid}" and activated.stream_version == 9


async def test_concurrent_approvals_by_two_ops_clients(platform: RunningPlatform) -> None:
    ops = await platform.ops_http()
    alice = await platform.http_for(await platform.create_client(name="ops alice", scopes=["admin"]))
    bob = await platform.http_for(await platform.create_client(name="ops bob", scopes=["admin"]))
    pid = await awaiting_approval(ops, STRATEGIC_SCORES)
    answers = await asyncio.gather(
        alice.post(f"/v1/partners/{pid}/approvals", json={"decision": "approve"}),
        bob.post(f"/v1/partners/{pid}/approvals", json={"decision": "approve"}),
    )
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    final = (await ops.get(f"/v1/partners/{pid}")).json()
    assert final["status"] == "approved" and final["tier"] == "strategic"
    assert len(final["approvals"]["approvers"]) == 2
    types = [e["type"] for e in (await ops.get(f"/v1/partners/{pid}/events")).json()["items"]]
    assert types.count("partner.approval_recorded") == 2 and types.count("partner.approved") == 1

    # A strategic partner approved twice by the same client still needs a second approver.
    again = await awaiting_approval(ops, STRATEGIC_SCORES)
    for _ in range(2):
        doc = await ok(alice, f"/v1/partners/{again}/approvals", {"decision": "approve"})
    assert doc["status"] == "awaiting_approval" and doc["approvals"]["required"] == 2


async def test_if_match_and_idempotency_key_through_the_gateway(platform: RunningPlatform) -> None:
    ops = await platform.ops_http()
    name = f"Idem Co {uuid.uuid4().hex[:8]}"
    key = {"Idempotency-Key": f"e2e-apply-{name}"}
    first = await ops.post("/v1/partners", json=application(name), headers=key)
    replay = await ops.post("/v1/partners", json=application(name), headers=key)
    assert first.status_code == replay.status_code == 201 and replay.json() == first.json()
    pid = first.json()["id"]
    assert len((await ops.get(f"/v1/partners/{pid}/events")).json()["items"]) == 1
    assert [p["id"] for p in await _all_partners(ops) if p["name"] == name] == [pid]
    reused = await ops.post("/v1/partners", json=application("Other Co"), headers=key)
    assert reused.status_code == 422

    stale = await ops.post(f"/v1/partners/{pid}/assessment", json={"scores": INNOVATION_SCORES}, headers={"If-Match": '"5"'})
    assert stale.status_code == 412 and stale.headers["content-type"] == "application/problem+json"
    fresh = await ops.post(f"/v1/partners/{pid}/assessment", json={"scores": INNOVATION_SCORES}, headers={"If-Match": '"1"'})
    assert fresh.status_code == 200 and fresh.headers["etag"] == '"2"'

    conflict = await ops.post(f"/v1/partners/{pid}/activate")
    assert conflict.status_code == 409
    assert conflict.json()["current_state"] == "assessed"
    assert conflict.json()["allowed"] == ["assess", "record_due_diligence"]


async def _all_partners(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = (await http.get("/v1/partners", params={"limit": 200} | ({"cursor": cursor} if cursor else {}))).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def _from_kafka(platform: RunningPlatform, partner_id: str, event_type: str) -> RecordedEvent:
    bootstrap = platform.platform.kafka_bootstrap
    assert bootstrap is not None
    topic = "partnerhub.onboarding.events"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()  # fetch metadata: a fresh client knows no partitions yet
        partitions = consumer.partitions_for_topic(topic) or set()
        partition = partition_for(partner_id.encode(), len(partitions))
        consumer.assign([TopicPartition(topic, partition)])
        await consumer.seek_to_beginning()
        seen: list[RecordedEvent] = []

        async def arrived() -> RecordedEvent | None:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                seen.extend(
                    RecordedEvent.from_kafka(key=r.key, value=r.value, headers=r.headers) for r in records
                )
            return next((e for e in seen if e.partner_id == partner_id and e.type == event_type), None)

        found = await eventually(arrived, timeout=20.0)
        assert found is not None
        return found
    finally:
        await consumer.stop()
