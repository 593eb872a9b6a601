"""The alliance API in process: lifecycle journey, refusals, tenancy, If-Match, Idempotency-Key."""

from __future__ import annotations

import pytest

from tests.lifecycle.conftest import JSON_PROBLEM, Lifecycle

A = "/v1/alliances"


async def test_alliance_journey_from_start_to_termination(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    got = await lifecycle.http.get(f"{A}/ptn_a", headers=lifecycle.ops())
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    doc = got.json()
    assert (doc["phase"], doc["status"], doc["next_phase"], doc["tier"], doc["ends_on"]) == (
        "initiation", "active", "integration", "innovation", "2028-02-29",
    )
    assert [h["type"] for h in doc["history"]] == ["alliance.started"]
    assert doc["history"][0]["actor"] == "lifecycle.alliance-reactor"

    for phase in ("integration", "launch", "optimization", "maturity"):
        doc = await lifecycle.post(f"{A}/ptn_a/phase", {"to": phase})
    assert doc["phase"] == "maturity" and doc["next_phase"] is None

    doc = await lifecycle.post(f"{A}/ptn_a/renewal", {"ends_on": "2030-02-28"})
    assert (doc["ends_on"], doc["renewals"]) == ("2030-02-28", 1)
    doc = await lifecycle.post(f"{A}/ptn_a/satisfaction", {"score": 9, "comment": "great partner team"})
    assert doc["satisfaction"]["score"] == 9 and doc["satisfaction"]["rated_by"] == "ops-alice"

    doc = await lifecycle.post(f"{A}/ptn_a/exit", {"reason": "portfolio change", "notice_days": 30})
    assert doc["status"] == "exiting" and doc["exit"]["effective_on"] == "2026-04-01"
    lifecycle.clock.advance(30 * 86400)
    response = await lifecycle.http.post(f"{A}/ptn_a/terminate", headers=lifecycle.ops())
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["status"] == "terminated" and doc["termination"]["forced"] is False
    assert response.headers["etag"] == f'"{doc["version"]}"' == '"9"'
    types = [h["type"] for h in doc["history"]]
    assert types == [
        "alliance.started",
        *["alliance.phase_changed"] * 4,
        "alliance.renewed",
        "partner.satisfaction_rated",
        "alliance.exit_initiated",
        "alliance.terminated",
    ]


async def test_moving_a_phase_backwards_is_a_409_naming_the_allowed_step(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    await lifecycle.post(f"{A}/ptn_a/phase", {"to": "integration"})
    head = await lifecycle.head()
    for to in ("initiation", "integration", "optimization"):
        response = await lifecycle.http.post(f"{A}/ptn_a/phase", json={"to": to}, headers=lifecycle.ops())
        assert response.status_code == 409, to
        assert response.headers["content-type"] == JSON_PROBLEM
        problem = response.json()
        assert problem["current_state"] == "integration" and problem["allowed"] == ["launch"]
    assert await lifecycle.head() == head


async def test_terminating_before_the_notice_ends_is_refused_unless_forced_with_a_reason(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    await lifecycle.post(f"{A}/ptn_a/exit", {"reason": "merger", "notice_days": 90})
    head = await lifecycle.head()

    early = await lifecycle.http.post(f"{A}/ptn_a/terminate", json={}, headers=lifecycle.ops())
    assert early.status_code == 409 and "2026-05-31" in early.json()["detail"]
    no_reason = await lifecycle.http.post(f"{A}/ptn_a/terminate", json={"force": True}, headers=lifecycle.ops())
    assert no_reason.status_code == 422 and no_reason.json()["errors"][0]["loc"] == ["body", "reason"]
    assert await lifecycle.head() == head

    forced = await lifecycle.post(f"{A}/ptn_a/terminate", {"force": True, "reason": "contract breach"})
    assert forced["termination"] == {"reason": "contract breach", "forced": True, "at": forced["termination"]["at"]}


async def test_terminate_without_an_exit_is_a_409(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    response = await lifecycle.http.post(f"{A}/ptn_a/terminate", headers=lifecycle.ops())
    assert response.status_code == 409
    assert response.json()["allowed"] == ["phase:integration", "renewal", "exit", "satisfaction"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("satisfaction", {"score": 11}),
        ("satisfaction", {"score": -1}),
        ("satisfaction", {"score": "nine"}),
        ("satisfaction", {"score": 5, "comment": "x" * 2001}),
        ("satisfaction", {}),
        ("phase", {"to": "dormant"}),
        ("phase", {"to": "integration", "extra": 1}),
        ("renewal", {"ends_on": "2026-13-01"}),
        ("renewal", {"ends_on": "2027-01-01"}),  # not after the current end date 2028-02-29
        ("exit", {"reason": "", "notice_days": 10}),
        ("exit", {"reason": "x", "notice_days": -1}),
        ("exit", {"reason": "x", "notice_days": 99999}),
        ("terminate", {"force": "yes please"}),
        ("phase", {"to": "integration", "occurred_at": "2099-01-01T00:00:00Z"}),
    ],
    ids=[
        "score-11", "score-negative", "score-string", "comment-too-long", "score-missing", "unknown-phase",
        "unknown-field", "bad-date", "renewal-not-later", "blank-reason", "negative-notice", "huge-notice",
        "force-not-bool", "occurred-at-in-future",
    ],
)
async def test_bad_input_is_a_422_and_appends_nothing(lifecycle: Lifecycle, path: str, body: dict[str, object]) -> None:
    await lifecycle.start_alliance("ptn_a")
    head = await lifecycle.head()
    response = await lifecycle.http.post(f"{A}/ptn_a/{path}", json=body, headers=lifecycle.ops())
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == JSON_PROBLEM
    assert await lifecycle.head() == head


async def test_malformed_json_and_nan_scores_are_422(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    headers = {**lifecycle.ops(), "content-type": "application/json"}
    for raw in (b'{"score": 5', b'{"score": NaN}', b'{"score": Infinity}', b"[]"):
        response = await lifecycle.http.post(f"{A}/ptn_a/satisfaction", content=raw, headers=headers)
        assert response.status_code == 422, raw
    assert await lifecycle.count("partner.satisfaction_rated") == 0


async def test_a_partner_reads_only_its_own_alliance_and_changes_none(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    await lifecycle.start_alliance("ptn_b")
    mine = await lifecycle.http.get(f"{A}/ptn_a", headers=lifecycle.partner("ptn_a"))
    assert mine.status_code == 200
    theirs = await lifecycle.http.get(f"{A}/ptn_b", headers=lifecycle.partner("ptn_a"))
    unknown = await lifecycle.http.get(f"{A}/ptn_zzz", headers=lifecycle.partner("ptn_a"))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["detail"].replace("ptn_b", "X") == unknown.json()["detail"].replace("ptn_zzz", "X")

    head = await lifecycle.head()
    writer = lifecycle.partner("ptn_a", scopes="partners:read partners:write")
    own = await lifecycle.http.post(f"{A}/ptn_a/satisfaction", json={"score": 10}, headers=writer)
    assert own.status_code == 403
    other = await lifecycle.http.post(f"{A}/ptn_b/phase", json={"to": "integration"}, headers=writer)
    assert other.status_code == 404
    no_scope = await lifecycle.http.post(f"{A}/ptn_a/phase", json={"to": "integration"}, headers=lifecycle.partner("ptn_a"))
    assert no_scope.status_code == 403
    assert await lifecycle.head() == head

    listed = await lifecycle.http.get(A, headers=lifecycle.partner("ptn_a"))
    assert [a["partner_id"] for a in listed.json()["items"]] == ["ptn_a"]


async def test_without_a_token_it_is_401(lifecycle: Lifecycle) -> None:
    response = await lifecycle.http.get(f"{A}/ptn_a")
    assert response.status_code == 401 and "WWW-Authenticate" in response.headers


async def test_ops_list_alliances_with_filters_and_pagination(lifecycle: Lifecycle) -> None:
    for i in range(5):
        await lifecycle.start_alliance(f"ptn_{i}")
    await lifecycle.post(f"{A}/ptn_3/phase", {"to": "integration"})
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await lifecycle.http.get(A, params=params, headers=lifecycle.ops())).json()
        seen += [a["partner_id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"ptn_{i}" for i in range(5)]
    filtered = (await lifecycle.http.get(A, params={"phase": "integration"}, headers=lifecycle.ops())).json()
    assert [a["partner_id"] for a in filtered["items"]] == ["ptn_3"]
    bad = await lifecycle.http.get(A, params={"cursor": "!!!"}, headers=lifecycle.ops())
    assert bad.status_code == 422


async def test_if_match_guards_against_lost_updates(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    stale = await lifecycle.http.post(
        f"{A}/ptn_a/phase", json={"to": "integration"}, headers={**lifecycle.ops(), "If-Match": '"7"'}
    )
    assert stale.status_code == 412 and stale.json()["current_etag"] == '"1"'
    fresh = await lifecycle.http.post(
        f"{A}/ptn_a/phase", json={"to": "integration"}, headers={**lifecycle.ops(), "If-Match": '"1"'}
    )
    assert fresh.status_code == 200 and fresh.headers["etag"] == '"2"'


async def test_idempotency_key_replays_the_first_answer(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    headers = {**lifecycle.ops(), "Idempotency-Key": "phase-1"}
    first = await lifecycle.http.post(f"{A}/ptn_a/phase", json={"to": "integration"}, headers=headers)
    again = await lifecycle.http.post(f"{A}/ptn_a/phase", json={"to": "integration"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert await lifecycle.count("alliance.phase_changed") == 1


async def test_ops_may_import_history_with_occurred_at(lifecycle: Lifecycle) -> None:
    await lifecycle.start_alliance("ptn_a")
    before_start = await lifecycle.http.post(
        f"{A}/ptn_a/phase", json={"to": "integration", "occurred_at": "2020-01-01T00:00:00Z"}, headers=lifecycle.ops()
    )
    assert before_start.status_code == 422
    lifecycle.clock.advance(86400)
    doc = await lifecycle.post(f"{A}/ptn_a/phase", {"to": "integration", "occurred_at": "2026-03-02T12:00:00Z"})
    assert doc["history"][-1]["occurred_at"].startswith("2026-03-02T12:00:00")
