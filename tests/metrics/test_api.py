"""Tier 2: the KPI API over real read models (SQLite), every expected number worked out by hand.

Events are applied by the same `LiveApplier` the live subscriptions use; the path
through Kafka and through the public API is covered by test_live.py and test_e2e.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.metrics.conftest import (
    NOW,
    Feed,
    MetricsApp,
    activated,
    applied,
    attempt,
    days_ago,
    delivered,
    failed,
    health,
    rated,
    registered,
    renewed,
    signed,
    terminated,
    traffic,
    went_live,
)


async def seed_scenario(feed: Feed) -> None:
    """Two partners (p1, p2) and a signed-only p3; numbers in the tests below."""
    emit = feed.emit
    # Onboarding.
    await emit(applied("p1", "Acme"), days_ago(190))
    await emit(signed("p1"), days_ago(100))
    await emit(activated("p1"), days_ago(100))
    await emit(applied("p2", "Globex"), days_ago(80))
    await emit(activated("p2"), days_ago(40))
    await emit(signed("p2"), days_ago(35))
    await emit(signed("p3"), days_ago(20))
    # Integrations: p1 first live on i0 (day -55); i1 is probed.
    await emit(registered("p1", "i0"), days_ago(60))
    await emit(went_live("p1", "i0"), days_ago(55))
    await emit(registered("p1", "i1", target=99.0), days_ago(21))
    await emit(went_live("p1", "i1"), days_ago(20))
    await emit(health("p1", "i1", "up"), days_ago(20))
    await emit(health("p1", "i1", "down"), days_ago(10))
    await emit(health("p1", "i1", "up"), days_ago(9.5))
    await emit(registered("p2", "i2"), days_ago(6))
    await emit(went_live("p2", "i2"), days_ago(5))
    await emit(health("p2", "i2", "up"), days_ago(4))
    for _ in range(9):
        await emit(attempt("p1", "i1", True), days_ago(5))
    await emit(attempt("p1", "i1", False), days_ago(4))
    await emit(attempt("p2", "i2", False), days_ago(60))
    # Gateway traffic.
    await emit(traffic("p1", 1000, 1), days_ago(10))
    await emit(traffic("p1", 1000, 100), days_ago(40))
    await emit(traffic("p2", 3000, 0), days_ago(2))
    # Satisfaction, retention, webhooks.
    await emit(rated("p1", 6.0), days_ago(40))
    await emit(rated("p1", 9.0), days_ago(3))
    await emit(rated("p2", 8.0), days_ago(10))
    await emit(renewed("p1"), days_ago(20))
    await emit(terminated("p2"), days_ago(5))
    await emit(renewed("p3"), days_ago(60))
    for latency in (100.0, 200.0, 300.0):
        await emit(delivered("p1", latency), days_ago(1))
    await emit(failed("p2"), days_ago(2))


async def kpis(m: MetricsApp, window: str | None = None, **params: Any) -> dict[str, Any]:
    query = {"window": window} if window else {}
    response = await m.http.get("/v1/kpis", params=query | params, headers=m.ops())
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_platform_kpis_default_window_is_30_days(any_db_app: MetricsApp) -> None:
    await seed_scenario(any_db_app.feed)
    doc = await kpis(any_db_app)
    assert doc["window"] == "30d"
    k = doc["kpis"]

    # Traffic in (now-30d, now]: 1000 + 3000 requests, 1 server error.
    assert k["api_availability"]["value"] == pytest.approx(100 * 3999 / 4000)
    assert k["api_availability"]["target"] == 99.9
    assert k["api_availability"]["status"] == "met"
    assert k["api_availability"]["sample_size"] == 4000
    assert k["api_availability"]["error_budget_remaining"] == pytest.approx(1 - 1 / 4.0)

    # i1: up 10 d, down 12 h, up 9.5 d → 19.5 / 20 = 97.5 %; i2: known only since day -4, all up.
    # i0 went live but was never probed: no known time, not in the mean.
    uptime = k["integration_uptime"]
    assert uptime["value"] == pytest.approx((97.5 + 100.0) / 2)
    assert uptime["sample_size"] == 2
    assert uptime["status"] == "breached"  # i1 is below its own 99.0 % target
    assert uptime["breaching"] == ["i1"]

    # 9 succeeded, 1 failed (p2's failure on day -60 is outside).
    assert k["integration_success_rate"]["value"] == pytest.approx(90.0)
    assert k["integration_success_rate"]["status"] == "breached"
    assert k["integration_success_rate"]["sample_size"] == 10

    # Only p2 went live inside the window: signed day -35, live day -5 → 30 days.
    tti = k["time_to_integration_days"]
    assert (tti["value"], tti["median"], tti["p90"], tti["sample_size"]) == (30.0, 30.0, 30.0, 1)
    assert tti["status"] == "met"

    # No partner was activated in the last 30 days.
    ttp = k["time_to_partnership_days"]
    assert ttp["value"] is None
    assert ttp["status"] == "no_data"
    assert ttp["sample_size"] == 0

    # Latest ratings within the window: p1 9.0 (its 6.0 is older), p2 8.0 → 8.5.
    assert k["partner_satisfaction"]["value"] == pytest.approx(8.5)
    assert k["partner_satisfaction"]["status"] == "met"

    # p1 renewed, p2 terminated → 50 %.
    assert k["partner_retention"]["value"] == pytest.approx(50.0)
    assert k["partner_retention"]["status"] == "breached"

    # 3 delivered, 1 failed; latencies 100, 200, 300 → p50 200, p99 200 + 0.98 · 100.
    webhook = k["webhook_delivery_success"]
    assert webhook["value"] == pytest.approx(75.0)
    assert webhook["latency_p50_ms"] == pytest.approx(200.0)
    assert webhook["latency_p99_ms"] == pytest.approx(298.0)


async def test_window_all_and_7d(any_db_app: MetricsApp) -> None:
    await seed_scenario(any_db_app.feed)
    k_all = (await kpis(any_db_app, "all"))["kpis"]
    assert k_all["api_availability"]["value"] == pytest.approx(100 * (5000 - 101) / 5000)
    assert k_all["api_availability"]["status"] == "breached"
    assert k_all["api_availability"]["error_budget_remaining"] == pytest.approx(1 - 101 / 5.0)
    assert k_all["integration_success_rate"]["value"] == pytest.approx(100 * 9 / 11)
    # p1: day -100 → day -55 = 45 d; p2: 30 d → mean 37.5, p90 30 + 0.9 · 15.
    tti = k_all["time_to_integration_days"]
    assert (tti["value"], tti["median"], tti["p90"], tti["sample_size"]) == (37.5, 37.5, 43.5, 2)
    # p1: 190 → 100 = 90 d; p2: 80 → 40 = 40 d.
    assert k_all["time_to_partnership_days"]["value"] == pytest.approx(65.0)
    assert k_all["time_to_partnership_days"]["status"] == "met"
    assert k_all["partner_retention"]["value"] == pytest.approx(100 * 2 / 3)

    k7 = (await kpis(any_db_app, "7d"))["kpis"]
    assert k7["api_availability"]["value"] == pytest.approx(100.0)
    # Last 7 days: i1 all up, i2 up since day -4.
    assert k7["integration_uptime"]["value"] == pytest.approx(100.0)
    assert k7["integration_uptime"]["status"] == "met"
    assert k7["partner_satisfaction"]["value"] == pytest.approx(9.0)
    assert k7["partner_satisfaction"]["sample_size"] == 1
    assert k7["time_to_partnership_days"]["status"] == "no_data"


async def test_window_edges_are_exclusive_at_the_start(any_db_app: MetricsApp) -> None:
    emit = any_db_app.feed.emit
    await emit(traffic("p1", 100, 100), NOW - timedelta(days=7))  # exactly at the start: outside
    await emit(traffic("p1", 100, 0), NOW - timedelta(days=7) + timedelta(seconds=1))  # just inside
    k7 = (await kpis(any_db_app, "7d"))["kpis"]
    assert k7["api_availability"]["value"] == pytest.approx(100.0)
    assert k7["api_availability"]["sample_size"] == 100
    k30 = (await kpis(any_db_app, "30d"))["kpis"]
    assert k30["api_availability"]["value"] == pytest.approx(50.0)
    # The clock moves on: a second later the in-window event is exactly at the edge.
    any_db_app.clock.advance(1)
    k7 = (await kpis(any_db_app, "7d"))["kpis"]
    assert k7["api_availability"]["status"] == "no_data"


async def test_no_data_everywhere_on_an_empty_platform(metrics_app: MetricsApp) -> None:
    doc = await kpis(metrics_app, "all")
    assert {name: v["status"] for name, v in doc["kpis"].items()} == {
        "api_availability": "no_data",
        "integration_uptime": "no_data",
        "integration_success_rate": "no_data",
        "time_to_integration_days": "no_data",
        "time_to_partnership_days": "no_data",
        "partner_satisfaction": "no_data",
        "partner_retention": "no_data",
        "webhook_delivery_success": "no_data",
    }
    assert all(v["value"] is None and v["sample_size"] == 0 for v in doc["kpis"].values())
    assert doc["as_of"] == {"onboarding": 0, "lifecycle": 0, "gateway": 0}
    # Targets are the seeds'.
    assert {name: v["target"] for name, v in doc["kpis"].items()} == {
        "api_availability": 99.9,
        "integration_uptime": 99.9,
        "integration_success_rate": 95.0,
        "time_to_integration_days": 60.0,
        "time_to_partnership_days": 90.0,
        "partner_satisfaction": 8.5,
        "partner_retention": 85.0,
        "webhook_delivery_success": 99.5,
    }


async def test_partner_kpis(any_db_app: MetricsApp) -> None:
    await seed_scenario(any_db_app.feed)
    response = await any_db_app.http.get("/v1/kpis/partners/p1", headers=any_db_app.partner("p1"))
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["partner_id"] == "p1"
    k = doc["kpis"]
    assert k["api_availability"]["value"] == pytest.approx(99.9)  # 1000 requests, 1 error: exactly the target
    assert k["api_availability"]["status"] == "met"
    assert k["integration_uptime"]["value"] == pytest.approx(97.5)
    assert k["integration_uptime"]["integrations"] == [
        {"integration_id": "i1", "uptime_pct": 97.5, "target": 99.0, "status": "breached", "known_seconds": 20 * 86400.0}
    ]
    assert k["integration_success_rate"]["value"] == pytest.approx(90.0)
    assert k["time_to_integration_days"]["status"] == "no_data"  # p1 went live on day -55
    assert k["partner_satisfaction"]["value"] == pytest.approx(9.0)
    assert k["partner_retention"]["value"] == pytest.approx(100.0)
    assert k["webhook_delivery_success"]["value"] == pytest.approx(100.0)

    response = await any_db_app.http.get(
        "/v1/kpis/partners/p1", params={"window": "all"}, headers=any_db_app.ops()
    )
    k = response.json()["kpis"]
    assert k["time_to_integration_days"]["value"] == pytest.approx(45.0)
    assert k["time_to_partnership_days"]["value"] == pytest.approx(90.0)
    assert k["time_to_partnership_days"]["status"] == "met"


async def test_a_partner_reads_only_its_own_kpis(metrics_app: MetricsApp) -> None:
    await seed_scenario(metrics_app.feed)
    other = await metrics_app.http.get("/v1/kpis/partners/p2", headers=metrics_app.partner("p1"))
    assert other.status_code == 404
    assert other.headers["content-type"].startswith("application/problem+json")
    assert "p2" in other.json()["detail"]
    # Ops may read anyone's, but an unknown partner is 404.
    assert (await metrics_app.http.get("/v1/kpis/partners/p2", headers=metrics_app.ops())).status_code == 200
    unknown = await metrics_app.http.get("/v1/kpis/partners/nobody", headers=metrics_app.ops())
    assert unknown.status_code == 404
    # A partner with no data yet still reads its own (all no_data).
    fresh = await metrics_app.http.get("/v1/kpis/partners/p9", headers=metrics_app.partner("p9"))
    assert fresh.status_code == 200
    assert {v["status"] for v in fresh.json()["kpis"].values()} == {"no_data"}
    # Worst partners and the funnel name partners: ops only.
    for path in ("/v1/kpis/worst", "/v1/kpis/funnel", "/admin/consumers"):
        assert (await metrics_app.http.get(path, headers=metrics_app.partner("p1"))).status_code == 403, path


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/kpis", {"window": "14d"}, 422),
        ("/v1/kpis", {"window": ""}, 422),
        ("/v1/kpis", {"window": "30D"}, 422),
        ("/v1/kpis/partners/p1", {"window": "1y"}, 422),
        ("/v1/kpis/series", {"days": "0"}, 422),
        ("/v1/kpis/series", {"days": "91"}, 422),
        ("/v1/kpis/series", {"days": "ten"}, 422),
        ("/v1/kpis/series", {"kpi": "revenue"}, 422),
        ("/v1/kpis/worst", {"limit": "0"}, 422),
        ("/v1/kpis/worst", {"limit": "51"}, 422),
        ("/v1/kpis/partners/" + "x" * 201, {}, 422),
        ("/v1/kpis/nothing-here", {}, 404),
    ],
    ids=[
        "unknown-window", "empty-window", "window-case", "partner-unknown-window", "zero-days",
        "too-many-days", "days-not-int", "unknown-kpi", "zero-limit", "limit-too-big",
        "partner-id-too-long", "unknown-path",
    ],
)
async def test_bad_input(metrics_app: MetricsApp, path: str, params: dict[str, str], status: int) -> None:
    response = await metrics_app.http.get(path, params=params, headers=metrics_app.ops())
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
    ids=["no-token", "garbage-token", "basic-auth"],
)
async def test_kpis_need_a_valid_token(metrics_app: MetricsApp, headers: dict[str, str]) -> None:
    for path in ("/v1/kpis", "/v1/kpis/partners/p1", "/v1/kpis/series", "/admin/consumers"):
        response = await metrics_app.http.get(path, headers=headers)
        assert response.status_code == 401, path


async def test_kpis_need_the_kpis_read_scope(metrics_app: MetricsApp) -> None:
    token = metrics_app.issuer.mint("c-p1", "partners:read", partner_id="p1")
    response = await metrics_app.http.get("/v1/kpis", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    expired = metrics_app.issuer.mint("c-p1", "kpis:read", partner_id="p1", ttl=-3600)
    response = await metrics_app.http.get("/v1/kpis", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401


async def test_daily_series(any_db_app: MetricsApp) -> None:
    await seed_scenario(any_db_app.feed)
    response = await any_db_app.http.get(
        "/v1/kpis/series", params={"days": 30, "kpi": ["integration_success_rate", "integration_uptime"]},
        headers=any_db_app.ops(),
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert set(doc["series"]) == {"integration_success_rate", "integration_uptime"}
    success = {p["day"]: p for p in doc["series"]["integration_success_rate"]["points"]}
    assert len(success) == 30
    assert min(success) == "2026-06-01" and max(success) == "2026-06-30"
    assert success["2026-06-25"]["value"] == pytest.approx(100.0)  # 9 succeeded that day
    assert success["2026-06-26"]["value"] == pytest.approx(0.0)  # the failure
    assert success["2026-06-26"]["status"] == "breached"
    assert success["2026-06-24"]["value"] is None
    assert success["2026-06-24"]["status"] == "no_data"
    uptime = {p["day"]: p for p in doc["series"]["integration_uptime"]["points"]}
    # i1 went down at 12:00 on 06-20 (day -10) and up at 00:00 on 06-21: that day 12 h up, 12 h down.
    assert uptime["2026-06-20"]["value"] == pytest.approx(50.0)
    assert uptime["2026-06-21"]["value"] == pytest.approx(100.0)
    # Before i1 went live (06-10 12:00) nothing is known.
    assert uptime["2026-06-09"]["value"] is None


async def test_worst_partners_and_funnel(any_db_app: MetricsApp) -> None:
    await seed_scenario(any_db_app.feed)
    response = await any_db_app.http.get("/v1/kpis/worst", params={"window": "all"}, headers=any_db_app.ops())
    assert response.status_code == 200, response.text
    worst = response.json()["kpis"]
    assert [(e["partner_id"], e["name"]) for e in worst["api_availability"]] == [("p1", "Acme"), ("p2", "Globex")]
    assert worst["api_availability"][0]["value"] == pytest.approx(100 * 1899 / 2000)
    assert [e["partner_id"] for e in worst["integration_success_rate"]] == ["p2", "p1"]
    # The longest time to integration is the worst.
    assert [e["partner_id"] for e in worst["time_to_integration_days"]] == ["p1", "p2"]
    assert [e["partner_id"] for e in worst["partner_retention"]] == ["p2", "p1", "p3"]

    funnel = (await any_db_app.http.get("/v1/kpis/funnel", headers=any_db_app.ops())).json()
    assert funnel["counts"]["active"] == 1  # p1
    assert funnel["counts"]["terminated"] == 1  # p2
    assert funnel["counts"]["signed"] == 1  # p3
    assert funnel["total"] == 3


async def test_prometheus_text(metrics_app: MetricsApp) -> None:
    await seed_scenario(metrics_app.feed)
    response = await metrics_app.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'partnerhub_kpi_value{kpi="integration_success_rate",window="30d"} 90.0' in text
    assert 'partnerhub_kpi_met{kpi="integration_success_rate",window="30d"} 0.0' in text
    assert 'partnerhub_kpi_target{kpi="api_availability"} 99.9' in text
    assert 'partnerhub_kpi_partner_value{kpi="partner_satisfaction",partner="p1",window="30d"} 9.0' in text
    assert 'partnerhub_kpi_sample_size{kpi="time_to_partnership_days",window="30d"} 0.0' in text
    assert 'partnerhub_api_error_budget_remaining{window="30d"} 0.75' in text
    assert "# TYPE partnerhub_consumer_lag_events gauge" in text


async def test_dashboard_page_is_served_with_its_assets(metrics_app: MetricsApp) -> None:
    page = await metrics_app.http.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="dashboard/static/chart.umd.js"' in page.text
    chart = await metrics_app.http.get("/dashboard/static/chart.umd.js")
    assert chart.status_code == 200
    assert "Chart.js v4" in chart.text[:200]
    assert (await metrics_app.http.get("/dashboard/static/dashboard.js")).status_code == 200
    assert (await metrics_app.http.get("/dashboard/static/nothing.js")).status_code == 404


async def test_admin_consumers_lists_every_projection(metrics_app: MetricsApp) -> None:
    response = await metrics_app.http.get("/admin/consumers", headers=metrics_app.ops())
    assert response.status_code == 200, response.text
    consumers = {c["projection"]: c for c in response.json()["consumers"]}
    assert len(consumers) == 9
    uptime = consumers["integration_uptime"]
    assert uptime["subscription"] == "metrics.projections"
    assert uptime["generation"] == 1
    assert uptime["parked"] == 0
    assert [s["source"] for s in uptime["sources"]] == ["onboarding", "lifecycle", "gateway"]
    # No internal client configured here: source heads are unknown, so is the lag.
    assert uptime["sources"][0]["head"] is None
    assert uptime["sources"][0]["lag"] is None


async def test_rebuild_reaches_the_live_rows_on_every_database(any_db_app: MetricsApp) -> None:
    """The same rebuild as test_rebuild.py, reading the source stores directly (SQLite and PostgreSQL)."""
    from services.metrics.projections import PROJECTIONS
    from services.metrics.rebuild import Rebuilder
    from tests.metrics.test_rebuild import read_model_rows

    await seed_scenario(any_db_app.feed)
    engine = any_db_app.app.state.engine
    before_rows = await read_model_rows(engine)
    before = await kpis(any_db_app, "all")
    result = await Rebuilder(
        engine, any_db_app.feed.logs(), list(PROJECTIONS.values()), now=any_db_app.clock.now, retire_after=0
    ).run()
    assert result.generations == dict.fromkeys(PROJECTIONS, 2)
    assert await read_model_rows(engine) == before_rows
    after = await kpis(any_db_app, "all")
    assert after["kpis"] == before["kpis"]
    # No live subscription ran here: as_of now comes from the rebuild's floors.
    assert after["as_of"] == {"onboarding": 7, "lifecycle": 31, "gateway": 3}
