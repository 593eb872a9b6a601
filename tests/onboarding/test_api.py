"""The onboarding API in process: journey, quorum races, If-Match, Idempotency-Key, visibility."""

from __future__ import annotations

import asyncio

import pytest

from tests.onboarding.conftest import (
    AGREEMENT,
    INNOVATION_SCORES,
    NOT_RECOMMENDED_SCORES,
    PHASES,
    STRATEGIC_SCORES,
    Onboarding,
    application,
)

JSON_PROBLEM = "application/problem+json"


async def test_journey_from_application_to_activation(onboarding: Onboarding) -> None:
    http, ops = onboarding.http, onboarding.ops()
    created = await http.post("/v1/partners", json=application(), headers=ops)
    assert created.status_code == 201
    partner = created.json()
    pid = partner["id"]
    assert pid.startswith("ptn_") and len(pid) == 24
    assert created.headers["location"] == f"/v1/partners/{pid}"
    assert created.headers["etag"] == '"1"'
    assert partner["status"] == "applied" and partner["allowed_commands"] == ["assess"]
    assert partner["website"] == "https://acme-robotics.example.com/"

    assessed = await onboarding.ok(f"/v1/partners/{pid}/assessment", {"scores": INNOVATION_SCORES})
    assert (assessed["weighted_score"], assessed["recommended_tier"]) == (7.0, "innovation")
    assert assessed["scoring_model"] == "assessment-matrix-v1"
    assert assessed["approvals"]["required"] == 1

    for phase in PHASES:
        doc = await onboarding.ok(f"/v1/partners/{pid}/due-diligence", {"phase": phase, "passed": True, "findings": "clean"})
    assert doc["status"] == "awaiting_approval" and doc["allowed_commands"] == ["approve", "reject"]

    approved = await onboarding.ok(f"/v1/partners/{pid}/approvals", {"decision": "approve", "comment": "fits the roadmap"})
    assert approved["status"] == "approved" and approved["tier"] == "innovation"
    assert approved["approvals"]["approvers"] == ["ops-alice"]

    signed = await onboarding.ok(f"/v1/partners/{pid}/agreement", AGREEMENT)
    assert signed["agreement"]["sla"] == {
        "uptime_target_pct": 99.9,
        "integration_success_target_pct": 95.0,
        "time_to_integration_target_days": 60,
    }

    response = await http.post(f"/v1/partners/{pid}/activate", headers=ops)
    assert response.status_code == 200 and response.headers["etag"] == '"9"'
    assert response.json()["status"] == "active" and response.json()["allowed_commands"] == []

    detail = await http.get(f"/v1/partners/{pid}", headers=ops)
    assert detail.headers["etag"] == '"9"' and detail.json() == response.json()

    events = (await http.get(f"/v1/partners/{pid}/events", headers=ops)).json()
    assert [e["type"] for e in events["items"]] == [
        "partner.applied",
        "partner.assessed",
        "partner.due_diligence_completed",
        "partner.due_diligence_completed",
        "partner.due_diligence_completed",
        "partner.approval_recorded",
        "partner.approved",
        "partner.agreement_signed",
        "partner.activated",
    ]
    activated = events["items"][-1]
    assert activated["data"] == {"partner_id": pid, "tier": "innovation", "ends_on": "2028-03-31"}
    assert activated["subject"] == f"partner-{pid}" and activated["actor"] == "ops-alice"
    assert activated["source"] == "/onboarding" and activated["streamversion"] == "9"


async def test_strategic_partner_needs_two_distinct_approvers(onboarding: Onboarding) -> None:
    pid = await onboarding.awaiting_approval(STRATEGIC_SCORES)
    first = await onboarding.ok(f"/v1/partners/{pid}/approvals", {"decision": "approve"}, client_id="ops-alice")
    again = await onboarding.ok(f"/v1/partners/{pid}/approvals", {"decision": "approve"}, client_id="ops-alice")
    assert first["status"] == again["status"] == "awaiting_approval"
    assert again["approvals"] == {
        "required": 2,
        "approvers": ["ops-alice"],
        "decisions": [
            {"approver": "ops-alice", "decision": "approve", "comment": ""},
            {"approver": "ops-alice", "decision": "approve", "comment": ""},
        ],
    }
    second = await onboarding.ok(f"/v1/partners/{pid}/approvals", {"decision": "approve"}, client_id="ops-bob")
    assert second["status"] == "approved" and second["tier"] == "strategic"
    assert second["approvals"]["approvers"] == ["ops-alice", "ops-bob"]


async def test_concurrent_approvals_of_a_strategic_partner_both_count(onboarding: Onboarding) -> None:
    pid = await onboarding.awaiting_approval(STRATEGIC_SCORES)
    before = await onboarding.event_count()
    answers = await asyncio.gather(
        *(
            onboarding.http.post(f"/v1/partners/{pid}/approvals", json={"decision": "approve"}, headers=onboarding.ops(who))
            for who in ("ops-alice", "ops-bob")
        )
    )
    assert [a.status_code for a in answers] == [200, 200]
    final = (await onboarding.http.get(f"/v1/partners/{pid}", headers=onboarding.ops())).json()
    assert final["status"] == "approved"
    assert sorted(final["approvals"]["approvers"]) == ["ops-alice", "ops-bob"]
    types = [e["type"] for e in (await onboarding.http.get(f"/v1/partners/{pid}/events", headers=onboarding.ops())).json()["items"]]
    assert types.count("partner.approved") == 1 and types.count("partner.approval_recorded") == 2
    assert await onboarding.event_count() == before + 3


async def test_concurrent_approvals_of_a_single_approver_tier_approve_once(onboarding: Onboarding) -> None:
    pid = await onboarding.awaiting_approval(INNOVATION_SCORES)
    answers = await asyncio.gather(
        *(
            onboarding.http.post(f"/v1/partners/{pid}/approvals", json={"decision": "approve"}, headers=onboarding.ops(who))
            for who in ("ops-alice", "ops-bob")
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 409]
    late = next(a for a in answers if a.status_code == 409).json()
    assert late["current_state"] == "approved" and late["allowed"] == ["sign_agreement"]


async def test_state_conflict_is_a_409_naming_state_and_allowed(onboarding: Onboarding) -> None:
    pid = await onboarding.create()
    before = await onboarding.event_count()
    response = await onboarding.http.post(f"/v1/partners/{pid}/activate", headers=onboarding.ops())
    assert response.status_code == 409
    assert response.headers["content-type"] == JSON_PROBLEM
    problem = response.json()
    assert problem["type"].endswith("/invalid-state-transition")
    assert problem["current_state"] == "applied" and problem["allowed"] == ["assess"]
    assert "activate is not possible while the partner is applied" in problem["detail"]
    assert await onboarding.event_count() == before


async def test_due_diligence_out_of_order_names_the_expected_phase(onboarding: Onboarding) -> None:
    pid = await onboarding.create(INNOVATION_SCORES)
    response = await onboarding.http.post(
        f"/v1/partners/{pid}/due-diligence", json={"phase": "final_assessment", "passed": True}, headers=onboarding.ops()
    )
    assert response.status_code == 409
    assert response.json()["expected_phase"] == "initial_screening"
    assert response.json()["current_state"] == "assessed"


async def test_a_failed_phase_rejects_the_partner(onboarding: Onboarding) -> None:
    pid = await onboarding.create(INNOVATION_SCORES)
    doc = await onboarding.ok(
        f"/v1/partners/{pid}/due-diligence", {"phase": "initial_screening", "passed": False, "findings": "insolvent"}
    )
    assert doc["status"] == "rejected"
    assert doc["rejection"] == {"reason": "due diligence failed in initial_screening: insolvent", "rejected_by": "ops-alice"}


async def test_a_not_recommended_partner_cannot_be_approved(onboarding: Onboarding) -> None:
    pid = await onboarding.awaiting_approval(NOT_RECOMMENDED_SCORES)
    response = await onboarding.http.post(f"/v1/partners/{pid}/approvals", json={"decision": "approve"}, headers=onboarding.ops())
    assert response.status_code == 409
    problem = response.json()
    assert problem["type"].endswith("/not-recommended") and problem["allowed"] == ["reject"]
    assert "cannot be approved" in problem["detail"]
    rejected = await onboarding.ok(f"/v1/partners/{pid}/approvals", {"decision": "reject", "comment": "below threshold"})
    assert rejected["status"] == "rejected"


async def test_stale_if_match_is_412_and_appends_nothing(onboarding: Onboarding) -> None:
    pid = await onboarding.create()
    path = f"/v1/partners/{pid}/assessment"
    before = await onboarding.event_count()
    stale = await onboarding.http.post(
        path, json={"scores": INNOVATION_SCORES}, headers={**onboarding.ops(), "If-Match": '"7"'}
    )
    assert stale.status_code == 412 and stale.json()["current_etag"] == '"1"'
    assert await onboarding.event_count() == before
    fresh = await onboarding.http.post(path, json={"scores": INNOVATION_SCORES}, headers={**onboarding.ops(), "If-Match": '"1"'})
    assert fresh.status_code == 200 and fresh.headers["etag"] == '"2"'
    # The ETag just read is stale once someone else wrote: a re-assessment with If-Match "1" fails.
    again = await onboarding.http.post(path, json={"scores": STRATEGIC_SCORES}, headers={**onboarding.ops(), "If-Match": '"1"'})
    assert again.status_code == 412


async def test_concurrent_writers_with_the_same_if_match_one_wins(onboarding: Onboarding) -> None:
    pid = await onboarding.create(INNOVATION_SCORES)
    answers = await asyncio.gather(
        *(
            onboarding.http.post(
                f"/v1/partners/{pid}/assessment",
                json={"scores": scores},
                headers={**onboarding.ops(), "If-Match": '"2"'},
            )
            for scores in (STRATEGIC_SCORES, NOT_RECOMMENDED_SCORES)
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 412]


async def test_idempotency_key_replays_the_first_response_and_appends_nothing(onboarding: Onboarding) -> None:
    headers = {**onboarding.ops(), "Idempotency-Key": "apply-acme-1"}
    first = await onboarding.http.post("/v1/partners", json=application(), headers=headers)
    after_first = await onboarding.event_count()
    replay = await onboarding.http.post("/v1/partners", json=application(), headers=headers)
    assert replay.status_code == 201 and replay.json() == first.json()
    assert replay.headers["etag"] == first.headers["etag"] and replay.headers["location"] == first.headers["location"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert await onboarding.event_count() == after_first
    listed = (await onboarding.http.get("/v1/partners", headers=onboarding.ops())).json()["items"]
    assert [p["id"] for p in listed] == [first.json()["id"]]

    other = await onboarding.http.post("/v1/partners", json=application("Other Co"), headers=headers)
    assert other.status_code == 422 and other.json()["type"].endswith("/idempotency-key-reused")
    assert await onboarding.event_count() == after_first


async def test_idempotency_key_on_a_command_replays_without_a_second_approval(onboarding: Onboarding) -> None:
    pid = await onboarding.awaiting_approval(STRATEGIC_SCORES)
    headers = {**onboarding.ops(), "Idempotency-Key": "approve-1"}
    path = f"/v1/partners/{pid}/approvals"
    first = await onboarding.http.post(path, json={"decision": "approve"}, headers=headers)
    count = await onboarding.event_count()
    replay = await onboarding.http.post(path, json={"decision": "approve"}, headers=headers)
    assert replay.status_code == 200 and replay.json() == first.json()
    assert await onboarding.event_count() == count
    changed = await onboarding.http.post(path, json={"decision": "reject"}, headers=headers)
    assert changed.status_code == 422
    assert await onboarding.event_count() == count


async def test_ops_import_with_occurred_at(onboarding: Onboarding) -> None:
    clock = onboarding.clock
    created = await onboarding.http.post(
        "/v1/partners", json={**application(), "occurred_at": "2025-06-01T10:00:00Z"}, headers=onboarding.ops()
    )
    assert created.status_code == 201 and created.json()["created_at"] == "2025-06-01T10:00:00+00:00"
    pid = created.json()["id"]
    doc = await onboarding.ok(
        f"/v1/partners/{pid}/assessment", {"scores": INNOVATION_SCORES, "occurred_at": "2025-06-15T10:00:00+00:00"}
    )
    assert doc["updated_at"] == "2025-06-15T10:00:00+00:00"
    events = (await onboarding.http.get(f"/v1/partners/{pid}/events", headers=onboarding.ops())).json()["items"]
    assert [e["time"] for e in events] == ["2025-06-01T10:00:00+00:00", "2025-06-15T10:00:00+00:00"]
    assert events[-1]["recordedtime"] == clock.now().isoformat()


async def test_partner_client_sees_only_its_own_partner(onboarding: Onboarding) -> None:
    mine = await onboarding.create(name="Mine")
    theirs = await onboarding.create(name="Theirs")
    as_partner = onboarding.partner(mine)

    own = await onboarding.http.get(f"/v1/partners/{mine}", headers=as_partner)
    assert own.status_code == 200 and own.json()["name"] == "Mine"
    for path in (f"/v1/partners/{theirs}", f"/v1/partners/{theirs}/events"):
        other = await onboarding.http.get(path, headers=as_partner)
        assert other.status_code == 404 and other.json()["detail"] == f"partner '{theirs}' does not exist"
    listed = (await onboarding.http.get("/v1/partners", headers=as_partner)).json()
    assert [p["id"] for p in listed["items"]] == [mine]
    assert (await onboarding.http.get(f"/v1/partners/{mine}/events", headers=as_partner)).status_code == 200


async def test_partner_clients_cannot_run_onboarding_commands(onboarding: Onboarding) -> None:
    pid = await onboarding.create(INNOVATION_SCORES)
    read_only = onboarding.partner(pid)
    with_write = {"Authorization": f"Bearer {onboarding.issuer.mint('self-serve', 'partners:read partners:write', partner_id=pid)}"}
    before = await onboarding.event_count()
    denied = await onboarding.http.post(f"/v1/partners/{pid}/due-diligence", json={"phase": "initial_screening", "passed": True}, headers=read_only)
    assert denied.status_code == 403 and denied.json()["type"].endswith("/insufficient-scope")
    self_approval = await onboarding.http.post(f"/v1/partners/{pid}/approvals", json={"decision": "approve"}, headers=with_write)
    assert self_approval.status_code == 403 and self_approval.json()["type"].endswith("/partner-client-forbidden")
    applied = await onboarding.http.post("/v1/partners", json=application(), headers=read_only)
    assert applied.status_code == 403
    assert await onboarding.event_count() == before


async def test_a_partner_manager_with_partners_write_runs_onboarding(onboarding: Onboarding) -> None:
    manager = {"Authorization": f"Bearer {onboarding.issuer.mint('manager', 'partners:read partners:write')}"}
    created = await onboarding.http.post("/v1/partners", json=application(), headers=manager)
    assert created.status_code == 201
    forbidden_time = await onboarding.http.post(
        f"/v1/partners/{created.json()['id']}/assessment",
        json={"scores": INNOVATION_SCORES, "occurred_at": "2026-01-01T00:00:00Z"},
        headers=manager,
    )
    assert forbidden_time.status_code == 403 and forbidden_time.json()["type"].endswith("/occurred-at-forbidden")


async def test_list_filters_by_status_and_pages_in_creation_order(onboarding: Onboarding) -> None:
    ids = [await onboarding.create(name=f"P{i}") for i in range(5)]
    for pid in ids[1::2]:
        await onboarding.ok(f"/v1/partners/{pid}/assessment", {"scores": INNOVATION_SCORES})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await onboarding.http.get("/v1/partners", params=params, headers=onboarding.ops())).json()
        seen += [p["id"] for p in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3
    assessed = (await onboarding.http.get("/v1/partners", params={"status": "assessed"}, headers=onboarding.ops())).json()
    assert [p["id"] for p in assessed["items"]] == ids[1::2] and assessed["next_cursor"] is None
    applied = (await onboarding.http.get("/v1/partners", params={"status": "applied", "limit": 1}, headers=onboarding.ops())).json()
    assert [p["id"] for p in applied["items"]] == [ids[0]]
    rest = (
        await onboarding.http.get(
            "/v1/partners", params={"status": "applied", "cursor": applied["next_cursor"]}, headers=onboarding.ops()
        )
    ).json()
    assert [p["id"] for p in rest["items"]] == [ids[2], ids[4]]


async def test_events_are_paginated(onboarding: Onboarding) -> None:
    pid = await onboarding.awaiting_approval()
    first = (await onboarding.http.get(f"/v1/partners/{pid}/events", params={"limit": 3}, headers=onboarding.ops())).json()
    assert [e["streamversion"] for e in first["items"]] == ["1", "2", "3"]
    second = (
        await onboarding.http.get(
            f"/v1/partners/{pid}/events", params={"limit": 3, "cursor": first["next_cursor"]}, headers=onboarding.ops()
        )
    ).json()
    assert [e["streamversion"] for e in second["items"]] == ["4", "5"] and second["next_cursor"] is None


async def test_detail_answers_304_to_a_current_if_none_match(onboarding: Onboarding) -> None:
    pid = await onboarding.create()
    response = await onboarding.http.get(f"/v1/partners/{pid}", headers={**onboarding.ops(), "If-None-Match": '"1"'})
    assert response.status_code == 304 and response.headers["etag"] == '"1"'


@pytest.mark.parametrize("path", ["/v1/partners", "/v1/partners/ptn_aaaaaaaaaaaaaaaaaaaa"])
async def test_reading_needs_a_token(onboarding: Onboarding, path: str) -> None:
    response = await onboarding.http.get(path)
    assert response.status_code == 401 and response.headers["content-type"] == JSON_PROBLEM


async def test_events_are_served_on_the_log_api_for_catch_up(onboarding: Onboarding) -> None:
    pid = await onboarding.create(INNOVATION_SCORES)
    page = (await onboarding.http.get("/internal/events", params={"after": 0}, headers=onboarding.ops())).json()
    mine = [e for e in page["items"] if e["subject"] == f"partner-{pid}"]
    assert [e["type"] for e in mine] == ["partner.applied", "partner.assessed"]
    assert {e["partitionkey"] for e in mine} == {pid}


async def test_openapi_documents_every_partner_route(onboarding: Onboarding) -> None:
    doc = (await onboarding.http.get("/openapi.json")).json()
    paths = doc["paths"]
    commands = ["assessment", "due-diligence", "approvals", "agreement", "activate"]
    assert {"/v1/partners", "/v1/partners/{partner_id}", "/v1/partners/{partner_id}/events"} <= set(paths)
    for command in commands:
        operation = paths[f"/v1/partners/{{partner_id}}/{command}"]["post"]
        assert operation["description"], command
        assert {"200", "404", "409", "412", "422"} <= set(operation["responses"]), command
    assert paths["/v1/partners"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/PartnerOut")
