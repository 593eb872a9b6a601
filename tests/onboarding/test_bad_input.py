"""Bad input: each case gets a precise 4xx problem and appends no event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.runtime.settings import Settings
from tests.onboarding.conftest import AGREEMENT, INNOVATION_SCORES, Onboarding, application, running

UNKNOWN = "ptn_zzzzzzzzzzzzzzzzzzzz"


@dataclass(frozen=True)
class Case:
    id: str
    path: str  # {applied}, {assessed}, {awaiting}, {approved} name a partner in that state
    body: Any
    status: int
    type: str
    loc: tuple[str, ...] | None = None
    detail: str | None = None
    method: str = "POST"
    params: dict[str, Any] = field(default_factory=dict)


def scores(**overrides: Any) -> dict[str, Any]:
    return {"scores": {**INNOVATION_SCORES, **overrides}}


def without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


CASES = [
    # --- application
    Case("apply-missing-name", "/v1/partners", without(application(), "name"), 422, "validation-failed", ("body", "name")),
    Case("apply-missing-everything", "/v1/partners", {}, 422, "validation-failed", ("body", "contact_email")),
    Case("apply-blank-name", "/v1/partners", {**application(), "name": "   "}, 422, "validation-failed", ("body", "name")),
    Case("apply-long-name", "/v1/partners", {**application(), "name": "x" * 201}, 422, "validation-failed", ("body", "name")),
    Case("apply-invalid-email", "/v1/partners", {**application(), "contact_email": "alliances-at-acme"}, 422, "validation-failed", ("body", "contact_email")),
    Case("apply-email-without-domain-dot", "/v1/partners", {**application(), "contact_email": "a@localhost"}, 422, "validation-failed", ("body", "contact_email")),
    Case("apply-invalid-url", "/v1/partners", {**application(), "website": "not a url"}, 422, "validation-failed", ("body", "website")),
    Case("apply-ftp-url", "/v1/partners", {**application(), "website": "ftp://acme.example.com"}, 422, "validation-failed", ("body", "website")),
    Case("apply-url-with-credentials", "/v1/partners", {**application(), "website": "https://u:p@acme.example.com"}, 422, "validation-failed", ("body", "website")),
    Case("apply-unknown-field", "/v1/partners", {**application(), "tier": "strategic"}, 422, "validation-failed", ("body", "tier")),
    Case("apply-name-not-a-string", "/v1/partners", {**application(), "name": 42}, 422, "validation-failed", ("body", "name")),
    Case("apply-malformed-json", "/v1/partners", b'{"name": "Acme",', 422, "malformed-json"),
    Case("apply-body-is-a-list", "/v1/partners", [application()], 422, "validation-failed"),
    Case("apply-occurred-at-in-future", "/v1/partners", {**application(), "occurred_at": "2027-01-01T00:00:00Z"}, 422, "occurred-at-in-future"),
    Case("apply-occurred-at-without-timezone", "/v1/partners", {**application(), "occurred_at": "2026-01-01T00:00:00"}, 422, "validation-failed", detail="occurred_at needs a timezone (e.g. 2026-01-31T12:00:00Z)"),
    # --- assessment
    Case("scores-missing", "/v1/partners/{applied}/assessment", {}, 422, "validation-failed", ("body", "scores")),
    Case("score-missing-criterion", "/v1/partners/{applied}/assessment", {"scores": without(INNOVATION_SCORES, "strategic_fit")}, 422, "validation-failed", ("body", "scores", "strategic_fit")),
    Case("score-unknown-criterion", "/v1/partners/{applied}/assessment", scores(charisma=9), 422, "validation-failed", ("body", "scores", "charisma")),
    Case("score-zero", "/v1/partners/{applied}/assessment", scores(market_position=0), 422, "validation-failed", ("body", "scores", "market_position")),
    Case("score-eleven", "/v1/partners/{applied}/assessment", scores(market_position=11), 422, "validation-failed", ("body", "scores", "market_position")),
    Case("score-negative", "/v1/partners/{applied}/assessment", scores(market_position=-3), 422, "validation-failed", ("body", "scores", "market_position")),
    Case("score-three-decimals", "/v1/partners/{applied}/assessment", scores(market_position=7.125), 422, "validation-failed", ("body", "scores", "market_position")),
    Case("score-as-string", "/v1/partners/{applied}/assessment", scores(market_position="7"), 422, "validation-failed", ("body", "scores", "market_position")),
    Case("score-as-boolean", "/v1/partners/{applied}/assessment", scores(market_position=True), 422, "validation-failed", ("body", "scores", "market_position")),
    Case("scores-not-an-object", "/v1/partners/{applied}/assessment", {"scores": [7, 7, 7, 7, 7, 7]}, 422, "validation-failed", ("body", "scores")),
    # --- due diligence
    Case("phase-unknown", "/v1/partners/{assessed}/due-diligence", {"phase": "background_check", "passed": True}, 422, "validation-failed", ("body", "phase")),
    Case("phase-missing", "/v1/partners/{assessed}/due-diligence", {"passed": True}, 422, "validation-failed", ("body", "phase")),
    Case("passed-as-string", "/v1/partners/{assessed}/due-diligence", {"phase": "initial_screening", "passed": "yes"}, 422, "validation-failed", ("body", "passed")),
    Case("findings-too-long", "/v1/partners/{assessed}/due-diligence", {"phase": "initial_screening", "passed": True, "findings": "x" * 5001}, 422, "validation-failed", ("body", "findings")),
    # --- approvals
    Case("decision-unknown", "/v1/partners/{awaiting}/approvals", {"decision": "maybe"}, 422, "validation-failed", ("body", "decision")),
    Case("decision-missing", "/v1/partners/{awaiting}/approvals", {"comment": "hm"}, 422, "validation-failed", ("body", "decision")),
    Case("approver-in-body", "/v1/partners/{awaiting}/approvals", {"decision": "approve", "approver": "ops-bob"}, 422, "validation-failed", ("body", "approver")),
    # --- agreement
    Case("ends-before-starts", "/v1/partners/{approved}/agreement", {**AGREEMENT, "ends_on": "2026-03-31"}, 422, "validation-failed", ("body",), detail="ends_on must be after starts_on"),
    Case("ends-on-start-day", "/v1/partners/{approved}/agreement", {**AGREEMENT, "ends_on": AGREEMENT["starts_on"]}, 422, "validation-failed", ("body",)),
    Case("date-invalid", "/v1/partners/{approved}/agreement", {**AGREEMENT, "starts_on": "2026-13-01"}, 422, "validation-failed", ("body", "starts_on")),
    Case("date-as-number", "/v1/partners/{approved}/agreement", {**AGREEMENT, "starts_on": 1767225600}, 422, "validation-failed", ("body", "starts_on")),
    Case("agreement-type-unknown", "/v1/partners/{approved}/agreement", {**AGREEMENT, "agreement_type": "handshake"}, 422, "validation-failed", ("body", "agreement_type")),
    Case("sla-uptime-above-100", "/v1/partners/{approved}/agreement", {**AGREEMENT, "sla": {"uptime_target_pct": 100.5}}, 422, "validation-failed", ("body", "sla", "uptime_target_pct")),
    Case("sla-days-zero", "/v1/partners/{approved}/agreement", {**AGREEMENT, "sla": {"time_to_integration_target_days": 0}}, 422, "validation-failed", ("body", "sla", "time_to_integration_target_days")),
    Case("sla-unknown-term", "/v1/partners/{approved}/agreement", {**AGREEMENT, "sla": {"penalty_pct": 5}}, 422, "validation-failed", ("body", "sla", "penalty_pct")),
    # --- occurred_at against the stream
    Case("occurred-at-in-future", "/v1/partners/{applied}/assessment", {**scores(), "occurred_at": "2026-03-02T09:00:01Z"}, 422, "occurred-at-in-future"),
    Case("occurred-at-before-last-event", "/v1/partners/{applied}/assessment", {**scores(), "occurred_at": "2026-03-02T08:59:59Z"}, 422, "occurred-at-before-stream"),
    Case("occurred-at-garbage", "/v1/partners/{applied}/assessment", {**scores(), "occurred_at": "last tuesday"}, 422, "validation-failed", ("body", "occurred_at")),
    Case("activate-unknown-field", "/v1/partners/{approved}/activate", {"force": True}, 422, "validation-failed", ("body", "force")),
    # --- unknown partner
    Case("assess-unknown-partner", f"/v1/partners/{UNKNOWN}/assessment", scores(), 404, "not-found", detail=f"partner '{UNKNOWN}' does not exist"),
    Case("diligence-unknown-partner", f"/v1/partners/{UNKNOWN}/due-diligence", {"phase": "initial_screening", "passed": True}, 404, "not-found"),
    Case("approve-unknown-partner", f"/v1/partners/{UNKNOWN}/approvals", {"decision": "approve"}, 404, "not-found"),
    Case("agreement-unknown-partner", f"/v1/partners/{UNKNOWN}/agreement", AGREEMENT, 404, "not-found"),
    Case("activate-unknown-partner", f"/v1/partners/{UNKNOWN}/activate", None, 404, "not-found"),
    Case("activate-malformed-id", "/v1/partners/'; DROP TABLE partners;--/activate", None, 404, "not-found"),
    Case("get-unknown-partner", f"/v1/partners/{UNKNOWN}", None, 404, "not-found", method="GET"),
    Case("events-unknown-partner", f"/v1/partners/{UNKNOWN}/events", None, 404, "not-found", method="GET"),
    Case("get-overlong-id", "/v1/partners/" + "p" * 500, None, 404, "not-found", method="GET"),
    # --- lists
    Case("list-unknown-status", "/v1/partners", None, 422, "validation-failed", ("query", "status"), method="GET", params={"status": "dormant"}),
    Case("list-limit-zero", "/v1/partners", None, 422, "validation-failed", ("query", "limit"), method="GET", params={"limit": 0}),
    Case("list-limit-too-big", "/v1/partners", None, 422, "validation-failed", ("query", "limit"), method="GET", params={"limit": 1000}),
    Case("list-forged-cursor", "/v1/partners", None, 422, "invalid-cursor", method="GET", params={"cursor": "eyJhZnRlciI6ICJ4In0"}),
    Case("list-garbage-cursor", "/v1/partners", None, 422, "invalid-cursor", method="GET", params={"cursor": "!!!"}),
    Case("events-garbage-cursor", "/v1/partners/{applied}/events", None, 422, "invalid-cursor", method="GET", params={"cursor": "e30"}),
]


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Onboarding]:
    # One app for all cases: each case asserts it appended nothing, so they cannot interfere.
    settings = Settings(var_dir=tmp_path_factory.mktemp("bad-input"), kafka_bootstrap=None)
    async with running(settings) as onboarding:
        yield onboarding


@pytest.fixture(scope="module")
async def partners(service: Onboarding) -> dict[str, str]:
    applied = await service.create()
    assessed = await service.create(INNOVATION_SCORES)
    awaiting = await service.awaiting_approval()
    approved = await service.awaiting_approval()
    await service.ok(f"/v1/partners/{approved}/approvals", {"decision": "approve"})
    return {"applied": applied, "assessed": assessed, "awaiting": awaiting, "approved": approved}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input(service: Onboarding, partners: dict[str, str], case: Case) -> None:
    onboarding = service
    before = await onboarding.event_count()
    path = case.path.format(**partners)
    headers = onboarding.ops()
    if case.method == "GET":
        response = await onboarding.http.get(path, params=case.params, headers=headers)
    elif isinstance(case.body, bytes):
        response = await onboarding.http.post(path, content=case.body, headers={**headers, "content-type": "application/json"})
    else:
        response = await onboarding.http.post(path, json=case.body, headers=headers)
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/" + case.type), problem
    if case.loc is not None:
        assert any(tuple(e["loc"][: len(case.loc)]) == case.loc for e in problem["errors"]), problem["errors"]
    if case.detail is not None:
        assert case.detail in problem["detail"]
    assert await onboarding.event_count() == before


async def test_a_huge_body_is_413_and_appends_nothing(service: Onboarding) -> None:
    onboarding = service
    before = await onboarding.event_count()
    body = {**application(), "category": "x" * 2_000_000}
    response = await onboarding.http.post("/v1/partners", json=body, headers=onboarding.ops())
    assert response.status_code == 413 and response.json()["type"].endswith("/content-too-large")
    assert await onboarding.event_count() == before

