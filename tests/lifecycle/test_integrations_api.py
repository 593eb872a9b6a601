"""The integration API in process: register → attempts → live → retired, refusals, tenancy."""

from __future__ import annotations

import pytest

from tests.lifecycle.conftest import JSON_PROBLEM, Lifecycle

I = "/v1/integrations"  # noqa: E741


async def test_partner_registers_records_attempts_goes_live_and_retires(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a", uptime_target_pct=99.5)
    me = lifecycle.partner("ptn_a")
    created = await lifecycle.http.post(
        I, json={"kind": "rest_api", "name": "Orders API", "health_url": "https://orders.example.com/health"}, headers=me
    )
    assert created.status_code == 201, created.text
    doc = created.json()
    iid = doc["id"]
    assert iid.startswith("int_") and len(iid) == 28
    assert created.headers["location"] == f"{I}/{iid}" and created.headers["etag"] == '"1"'
    assert (doc["partner_id"], doc["status"], doc["health"]["status"]) == ("ptn_a", "registered", "unknown")
    assert doc["sla"]["uptime_target_pct"] == 99.5  # the partner's agreement
    assert doc["allowed"] == ["attempts", "retire"]

    failed = await lifecycle.post(f"{I}/{iid}/attempts", {"outcome": "failed", "detail": "401 from sandbox", "duration_ms": 830}, headers=me)
    assert failed["attempts"]["failed"] == 1
    ok = await lifecycle.post(f"{I}/{iid}/attempts", {"outcome": "succeeded", "duration_ms": 120}, headers=me)
    assert ok["allowed"] == ["attempts", "go-live", "retire"]
    live = await lifecycle.post(f"{I}/{iid}/go-live", headers=me)
    assert live["status"] == "live" and live["went_live_at"] is not None
    got = await lifecycle.http.get(f"{I}/{iid}", headers=me)
    assert got.headers["etag"] == '"4"' and got.json() == live

    retired = await lifecycle.post(f"{I}/{iid}/retire", {"reason": "replaced by v2"}, headers=me)
    assert (retired["status"], retired["retire_reason"], retired["allowed"]) == ("retired", "replaced by v2", [])
    again = await lifecycle.http.post(f"{I}/{iid}/attempts", json={"outcome": "succeeded"}, headers=me)
    assert again.status_code == 409 and again.json()["current_state"] == "retired"


async def test_sla_target_defaults_to_99_9_without_an_agreement_and_may_be_given(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    default = await lifecycle.integration("ptn_a")
    assert default["sla"]["uptime_target_pct"] == 99.9
    explicit = await lifecycle.integration("ptn_a", sla_uptime_target_pct=99.0)
    assert explicit["sla"]["uptime_target_pct"] == 99.0


async def test_going_live_without_a_succeeded_attempt_is_a_409_and_appends_nothing(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    me = lifecycle.partner("ptn_a")
    doc = await lifecycle.integration("ptn_a")
    await lifecycle.post(f"{I}/{doc['id']}/attempts", {"outcome": "failed"}, headers=me)
    head = await lifecycle.head()
    response = await lifecycle.http.post(f"{I}/{doc['id']}/go-live", headers=me)
    assert response.status_code == 409 and response.headers["content-type"] == JSON_PROBLEM
    problem = response.json()
    assert problem["current_state"] == "registered" and problem["allowed"] == ["attempts", "retire"]
    assert "succeeded attempt" in problem["detail"]
    assert await lifecycle.head() == head


async def test_another_partners_integration_is_404_everywhere_and_untouched(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    await lifecycle.start_alliance("ptn_b")
    theirs = await lifecycle.integration("ptn_b")
    head = await lifecycle.head()
    me = lifecycle.partner("ptn_a")
    unknown_id = "int_" + "0" * 24
    for method, suffix, body in [
        ("GET", "", None),
        ("POST", "/attempts", {"outcome": "succeeded"}),
        ("POST", "/go-live", None),
        ("POST", "/retire", {"reason": "mine now"}),
    ]:
        other = await lifecycle.http.request(method, f"{I}/{theirs['id']}{suffix}", json=body, headers=me)
        unknown = await lifecycle.http.request(method, f"{I}/{unknown_id}{suffix}", json=body, headers=me)
        assert other.status_code == unknown.status_code == 404, (method, suffix)
        assert other.json()["title"] == unknown.json()["title"] == "Not Found"
    assert await lifecycle.head() == head


async def test_partner_id_in_the_body_is_for_ops(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    await lifecycle.start_alliance("ptn_b")
    head = await lifecycle.head()
    base = {"kind": "sso", "name": "SSO"}
    other = await lifecycle.http.post(I, json={**base, "partner_id": "ptn_b"}, headers=lifecycle.partner("ptn_a"))
    assert other.status_code == 422 and other.json()["errors"][0]["loc"] == ["body", "partner_id"]
    ops_without = await lifecycle.http.post(I, json=base, headers=lifecycle.ops())
    assert ops_without.status_code == 422
    ops_unknown = await lifecycle.http.post(I, json={**base, "partner_id": "ptn_nobody"}, headers=lifecycle.ops())
    assert ops_unknown.status_code == 422 and "no alliance" in ops_unknown.json()["detail"]
    assert await lifecycle.head() == head

    own = await lifecycle.post(I, {**base, "partner_id": "ptn_a"}, headers=lifecycle.partner("ptn_a"), status=201)
    for_b = await lifecycle.post(I, {**base, "partner_id": "ptn_b"}, headers=lifecycle.ops(), status=201)
    assert (own["partner_id"], for_b["partner_id"]) == ("ptn_a", "ptn_b")
    # Ops act for any partner on its integrations too.
    await lifecycle.post(f"{I}/{own['id']}/attempts", {"outcome": "succeeded"}, headers=lifecycle.ops())


async def test_partner_without_alliance_or_with_a_terminated_one_cannot_register(lifecycle: Lifecycle) -> None:
    none_yet = await lifecycle.http.post(I, json={"kind": "sso", "name": "SSO"}, headers=lifecycle.partner("ptn_new"))
    assert none_yet.status_code == 409 and none_yet.json()["current_state"] == "no_alliance"
    await lifecycle.start_alliance("ptn_a")
    await lifecycle.post("/v1/alliances/ptn_a/exit", {"reason": "done", "notice_days": 0})
    await lifecycle.post("/v1/alliances/ptn_a/terminate")
    ended = await lifecycle.http.post(I, json={"kind": "sso", "name": "SSO"}, headers=lifecycle.partner("ptn_a"))
    assert ended.status_code == 409 and ended.json()["current_state"] == "terminated"
    assert await lifecycle.count("integration.registered") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "rest_api", "name": "x", "health_url": "ftp://example.com/health"},
        {"kind": "rest_api", "name": "x", "health_url": "file:///etc/passwd"},
        {"kind": "rest_api", "name": "x", "health_url": "not a url"},
        {"kind": "rest_api", "name": "x", "health_url": "https://user:secret@example.com/health"},
        {"kind": "rest_api", "name": "x", "health_url": "http://10.0.0.7/health"},
        {"kind": "rest_api", "name": "x", "health_url": "http://169.254.169.254/latest/meta-data"},
        {"kind": "rest_api", "name": "x", "health_url": "https://example.com/" + "a" * 2100},
        {"kind": "graphql", "name": "x"},
        {"kind": "rest_api", "name": ""},
        {"kind": "rest_api", "name": "   "},
        {"kind": "rest_api", "name": "x" * 201},
        {"kind": "rest_api", "name": "x", "sla_uptime_target_pct": 0},
        {"kind": "rest_api", "name": "x", "sla_uptime_target_pct": 100.5},
        {"kind": "rest_api", "name": "x", "sla_uptime_target_pct": "high"},
        {"kind": "rest_api", "name": "x", "unexpected": True},
        {"name": "x"},
        {"kind": "rest_api", "name": "x", "occurred_at": "2026-01-01T00:00:00Z"},
    ],
    ids=[
        "ftp-url", "file-url", "not-a-url", "credentials-in-url", "private-address", "metadata-address",
        "url-too-long", "unknown-kind", "empty-name", "blank-name", "name-too-long", "target-zero",
        "target-over-100", "target-string", "unknown-field", "kind-missing", "partner-sets-occurred-at",
    ],
)
async def test_bad_registrations_are_refused_and_append_nothing(lifecycle: Lifecycle, body: dict[str, object]) -> None:
    await lifecycle.start_alliance("ptn_a")
    head = await lifecycle.head()
    response = await lifecycle.http.post(I, json=body, headers=lifecycle.partner("ptn_a"))
    expected = 403 if "occurred_at" in body else 422
    assert response.status_code == expected, response.text
    assert response.headers["content-type"] == JSON_PROBLEM
    assert await lifecycle.head() == head


@pytest.mark.parametrize(
    "body",
    [
        {"outcome": "maybe"},
        {},
        {"outcome": "failed", "duration_ms": -1},
        {"outcome": "failed", "duration_ms": "fast"},
        {"outcome": "failed", "detail": "x" * 2001},
    ],
    ids=["unknown-outcome", "outcome-missing", "negative-duration", "duration-string", "detail-too-long"],
)
async def test_bad_attempts_are_422(lifecycle: Lifecycle, body: dict[str, object]) -> None:
    await lifecycle.start_alliance("ptn_a")
    doc = await lifecycle.integration("ptn_a")
    head = await lifecycle.head()
    response = await lifecycle.http.post(f"{I}/{doc['id']}/attempts", json=body, headers=lifecycle.partner("ptn_a"))
    assert response.status_code == 422
    assert await lifecycle.head() == head


async def test_loopback_health_urls_are_accepted_when_allow_listed(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    doc = await lifecycle.integration("ptn_a", health_url="http://127.0.0.1:9/health")
    assert doc["health_url"] == "http://127.0.0.1:9/health"


async def test_list_shows_a_partner_only_its_own(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    await lifecycle.start_alliance("ptn_b")
    mine = [await lifecycle.integration("ptn_a", name=f"a{i}") for i in range(3)]
    await lifecycle.integration("ptn_b", live=True)

    listed = (await lifecycle.http.get(I, headers=lifecycle.partner("ptn_a"))).json()
    assert [i["id"] for i in listed["items"]] == [m["id"] for m in mine]
    filtered = await lifecycle.http.get(I, params={"partner_id": "ptn_b"}, headers=lifecycle.partner("ptn_a"))
    assert filtered.status_code == 404

    everything = (await lifecycle.http.get(I, headers=lifecycle.ops())).json()
    assert len(everything["items"]) == 4
    live = (await lifecycle.http.get(I, params={"status": "live"}, headers=lifecycle.ops())).json()
    assert [i["partner_id"] for i in live["items"]] == ["ptn_b"]

    page1 = (await lifecycle.http.get(I, params={"limit": 2}, headers=lifecycle.partner("ptn_a"))).json()
    page2 = (await lifecycle.http.get(I, params={"limit": 2, "cursor": page1["next_cursor"]}, headers=lifecycle.partner("ptn_a"))).json()
    assert [i["id"] for i in page1["items"] + page2["items"]] == [m["id"] for m in mine]
    assert page2["next_cursor"] is None


async def test_scopes_are_enforced(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    reader = lifecycle.partner("ptn_a", scopes="integrations:read")
    response = await lifecycle.http.post(I, json={"kind": "sso", "name": "SSO"}, headers=reader)
    assert response.status_code == 403
    nothing = lifecycle.partner("ptn_a", scopes="kpis:read")
    assert (await lifecycle.http.get(I, headers=nothing)).status_code == 403


async def test_stale_if_match_is_412(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    doc = await lifecycle.integration("ptn_a")
    headers = {**lifecycle.partner("ptn_a"), "If-Match": '"5"'}
    response = await lifecycle.http.post(f"{I}/{doc['id']}/attempts", json={"outcome": "succeeded"}, headers=headers)
    assert response.status_code == 412
    assert await lifecycle.count("integration.attempt_recorded") == 0


async def test_idempotent_registration_creates_one_integration(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    headers = {**lifecycle.partner("ptn_a"), "Idempotency-Key": "reg-1"}
    first = await lifecycle.http.post(I, json={"kind": "sso", "name": "SSO"}, headers=headers)
    again = await lifecycle.http.post(I, json={"kind": "sso", "name": "SSO"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert await lifecycle.count("integration.registered") == 1
