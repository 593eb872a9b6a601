"""Tier 1: the KPI math, with numbers worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.metrics import kpis as k

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def at(days: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours)


def test_status_compares_in_the_kpis_direction() -> None:
    assert k.status_of(99.9, 99.9, ">=") == "met"
    assert k.status_of(99.89, 99.9, ">=") == "breached"
    assert k.status_of(60.0, 60.0, "<=") == "met"
    assert k.status_of(60.1, 60.0, "<=") == "breached"
    assert k.status_of(None, 60.0, "<=") == "no_data"


def test_api_availability_and_error_budget() -> None:
    # 10,000 requests, 5 server errors: 99.95 % available; budget 0.1 % = 10 errors, half used.
    v = k.api_availability(10_000, 5, windows=3)
    assert v.value == pytest.approx(99.95)
    assert v.status == "met"
    assert v.sample_size == 10_000
    assert v.extra["error_budget_remaining"] == pytest.approx(0.5)
    # 20 errors: 99.8 %, budget overspent by 100 %.
    v = k.api_availability(10_000, 20)
    assert v.value == pytest.approx(99.8)
    assert v.status == "breached"
    assert v.extra["error_budget_remaining"] == pytest.approx(-1.0)


def test_no_traffic_is_no_data() -> None:
    v = k.api_availability(0, 0)
    assert v.value is None
    assert v.status == "no_data"
    assert v.to_json()["error_budget_remaining"] is None


def test_ratio_kpis() -> None:
    assert k.integration_success_rate(19, 1).value == pytest.approx(95.0)
    assert k.integration_success_rate(19, 1).status == "met"
    assert k.partner_retention(17, 3).value == pytest.approx(85.0)
    assert k.partner_retention(0, 0).status == "no_data"
    w = k.webhook_delivery_success(199, 1, [100.0, 200.0, 300.0, 400.0, 500.0])
    assert w.value == pytest.approx(99.5)
    assert w.extra["latency_p50_ms"] == pytest.approx(300.0)
    # p99 of 5 values: rank 0.99 * 4 = 3.96 → 400 + 0.96 * 100.
    assert w.extra["latency_p99_ms"] == pytest.approx(496.0)


def test_percentile_interpolates_between_ranks() -> None:
    assert k.percentile([], 0.5) is None
    assert k.percentile([7.0], 0.9) == 7.0
    # 10, 20, 30, 40: p90 rank 2.7 → 30 + 0.7 * 10 = 37.
    assert k.percentile([10.0, 20.0, 30.0, 40.0], 0.9) == pytest.approx(37.0)
    assert k.percentile([10.0, 20.0, 30.0, 40.0], 0.5) == pytest.approx(25.0)


def test_duration_kpi_mean_median_p90() -> None:
    # Signed day 0; live on days 45, 30 and 90 → 45, 30, 90 days.
    pairs = [(at(0), at(45)), (at(0), at(30)), (at(10), at(100)), (at(5), None), (None, at(3))]
    durations = k.closed_durations(pairs, since=None)
    v = k.duration_kpi("time_to_integration_days", durations)
    assert v.value == pytest.approx(55.0)
    assert v.extra["median"] == pytest.approx(45.0)
    # 30, 45, 90: rank 1.8 → 45 + 0.8 * 45 = 81.
    assert v.extra["p90"] == pytest.approx(81.0)
    assert v.sample_size == 3
    assert v.status == "met"


def test_duration_window_is_by_the_closing_event() -> None:
    now = at(100)
    since = now - timedelta(days=30)
    pairs = [(at(0), at(70)), (at(0), at(70, hours=1)), (at(60), at(99))]
    # Exactly at the window start is outside (windows are (now - span, now]).
    assert k.closed_durations(pairs, since=since) == pytest.approx([70 + 1 / 24, 39.0])


def test_satisfaction_uses_each_partners_latest_rating() -> None:
    ratings = [
        k.Rating("p1", at(1), 1, 6.0),
        k.Rating("p1", at(2), 5, 9.0),
        k.Rating("p2", at(1), 2, 8.0),
        k.Rating("p2", at(1), 3, 7.0),  # same time: the later position wins
    ]
    latest = k.latest_ratings(ratings, since=None)
    assert latest == {"p1": 9.0, "p2": 7.0}
    assert k.partner_satisfaction(latest).value == pytest.approx(8.0)
    assert k.partner_satisfaction(latest).status == "breached"
    # Within a window after day 1.5 only p1's second rating counts.
    assert k.latest_ratings(ratings, since=at(1.5)) == {"p1": 9.0}
    # As of the end of day 1 p1's first rating is its latest.
    assert k.latest_ratings(ratings, since=None, until=at(1.5)) == {"p1": 6.0, "p2": 7.0}


def _integration(
    transitions: list[tuple[float, bool]], *, target: float = 99.9, live: float = 0, retired: float | None = None
) -> k.UptimeIntegration:
    return k.UptimeIntegration(
        "i1",
        "p1",
        target,
        at(live),
        at(retired) if retired is not None else None,
        tuple(k.Transition(at(hours=h), n, up) for n, (h, up) in enumerate(transitions)),
    )


def test_uptime_is_time_weighted_and_excludes_unknown_time() -> None:
    # Live at 0; first probe result at hour 2 (hours 0-2 unknown): up 2→10, down 10→11, up 11→20.
    integration = _integration([(2, True), (10, False), (11, True)])
    up, down = k.up_down_seconds(integration.transitions, start=None, end=at(hours=20))
    assert (up, down) == (17 * 3600.0, 3600.0)
    pct, known = k.integration_uptime_pct(integration, start=None, end=at(hours=20))
    assert pct == pytest.approx(100 * 17 / 18)
    assert known == 18 * 3600.0


def test_uptime_open_interval_counts_up_to_now_and_window_clips() -> None:
    integration = _integration([(0, True), (10, False)])
    # Still down at hour 12: up 10 h, down 2 h.
    pct, _ = k.integration_uptime_pct(integration, start=None, end=at(hours=12))
    assert pct == pytest.approx(100 * 10 / 12)
    # Window (hour 8, hour 12]: up 2 h, down 2 h.
    pct, _ = k.integration_uptime_pct(integration, start=at(hours=8), end=at(hours=12))
    assert pct == pytest.approx(50.0)


def test_uptime_stops_at_retirement() -> None:
    integration = _integration([(0, True), (4, False)], retired=0.25)  # retired at hour 6
    up, down = k.up_down_seconds(integration.transitions, start=None, end=at(1), retired_at=integration.retired_at)
    assert (up, down) == (4 * 3600.0, 2 * 3600.0)


def test_platform_uptime_is_the_mean_and_each_integration_has_its_own_target() -> None:
    a = _integration([(0, True), (9, False), (10, True)], target=90.0)  # 95 % over 20 h
    b = k.UptimeIntegration("i2", "p2", 99.0, at(0), None, (k.Transition(at(), 9, True),))  # 100 %
    v = k.integration_uptime([a, b], start=None, end=at(hours=20))
    assert v.value == pytest.approx(97.5)
    assert v.status == "met"  # 95 ≥ 90 and 100 ≥ 99 although the mean is below 99.9
    strict = k.UptimeIntegration("i1", "p1", 99.0, a.went_live_at, None, a.transitions)
    v = k.integration_uptime([strict, b], start=None, end=at(hours=20), detail=True)
    assert v.status == "breached"
    assert v.extra["breaching"] == ["i1"]
    assert [i["status"] for i in v.extra["integrations"]] == ["breached", "met"]


def test_uptime_ignores_integrations_not_live() -> None:
    retired = _integration([(0, False)], retired=0.5)
    never_live = k.UptimeIntegration("i3", "p1", 99.9, None, None, (k.Transition(at(), 1, False),))
    v = k.integration_uptime([retired, never_live], start=None, end=at(1))
    assert v.value is None
    assert v.status == "no_data"


def test_funnel_counts_every_stage() -> None:
    statuses = [k.funnel_status("active", False), k.funnel_status("active", True), k.funnel_status("applied", False)]
    counts = k.funnel_counts(statuses)
    assert counts["active"] == 1
    assert counts["terminated"] == 1
    assert counts["applied"] == 1
    assert counts["rejected"] == 0
    assert list(counts) == list(k.FUNNEL_STATUSES)


def test_worst_orders_by_the_wrong_side_of_the_target() -> None:
    rates = {p: k.integration_success_rate(good, 10 - good) for p, good in (("a", 9), ("b", 5), ("c", 10))}
    rates["d"] = k.integration_success_rate(0, 0)  # no data: never listed
    assert [p for p, _ in k.worst(rates, 2)] == ["b", "a"]
    days = {p: k.duration_kpi("time_to_integration_days", [d]) for p, d in (("a", 30.0), ("b", 90.0))}
    assert [p for p, _ in k.worst(days, 5)] == ["b", "a"]


def test_windows() -> None:
    now = at(100)
    assert k.window_start("7d", now) == at(93)
    assert k.window_start("all", now) is None
    assert [d.isoformat() for d in k.last_days(now, 3)] == ["2026-06-07", "2026-06-08", "2026-06-09"]
