"""Pure parts of the proxy: the circuit breaker and the route table."""

from __future__ import annotations

import pytest

from services.gateway.breaker import Breaker
from services.gateway.routes import allowed, has_dot_segments, match


def test_breaker_opens_probes_once_and_closes_on_success() -> None:
    now = [0.0]
    breaker = Breaker(threshold=3, reset=10, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
        assert breaker.admit() is None
    breaker.failure()
    assert breaker.state == "open" and breaker.admit() == 10
    now[0] = 10.5
    assert breaker.state == "half-open"
    assert breaker.admit() is None  # the probe
    assert breaker.admit() == 1.0  # everyone else waits for it
    breaker.failure()  # the probe failed: open again
    assert breaker.admit() == pytest.approx(10)
    now[0] = 21
    assert breaker.admit() is None
    breaker.success()
    assert breaker.state == "closed" and breaker.admit() is None


def test_a_probe_that_never_reports_back_is_replaced() -> None:
    now = [0.0]
    breaker = Breaker(threshold=1, reset=5, clock=lambda: now[0])
    breaker.failure()
    now[0] = 6
    assert breaker.admit() is None
    now[0] = 8
    assert breaker.admit() == 1.0
    now[0] = 12
    assert breaker.admit() is None


@pytest.mark.parametrize(
    ("method", "path", "upstream", "group", "scope", "rewritten"),
    [
        ("GET", "/v1/partners", "onboarding", "partners", "partners:read", None),
        ("POST", "/v1/partners/p1/approvals", "onboarding", "partners", "partners:write", None),
        ("HEAD", "/v1/alliances/p1", "lifecycle", "alliances", "partners:read", None),
        ("POST", "/v1/alliances/p1/renewal", "lifecycle", "alliances", "partners:write", None),
        ("GET", "/v1/integrations/i1", "lifecycle", "integrations", "integrations:read", None),
        ("PATCH", "/v1/webhooks/endpoints/e1", "lifecycle", "webhooks", "webhooks:write", None),
        ("GET", "/v1/kpis/partners/p1", "metrics", "kpis", "kpis:read", None),
        ("GET", "/metrics", "metrics", "metrics", "kpis:read", None),
        ("GET", "/dashboard", "metrics", "dashboard", None, None),
        ("GET", "/dashboard/app.js", "metrics", "dashboard", None, None),
        ("GET", "/admin/services/lifecycle/consumers", "lifecycle", "admin", "admin", "/admin/consumers"),
        ("POST", "/admin/services/metrics/consumers/x/replay", "metrics", "admin", "admin", "/admin/consumers/x/replay"),
    ],
)
def test_route_table(method: str, path: str, upstream: str, group: str, scope: str | None, rewritten: str | None) -> None:
    route = match(method, path)
    assert route is not None
    assert (route.upstream, route.group, route.scope, route.path) == (upstream, group, scope, rewritten)


@pytest.mark.parametrize(
    "path",
    ["/oauth/token", "/admin/clients", "/v1/partnersX", "/v1/nothing", "/admin/services/gateway/consumers", "/admin/services/x", "/healthz", "/metricsx"],
)
def test_paths_the_gateway_serves_itself(path: str) -> None:
    assert match("GET", path) is None


def test_scope_rules() -> None:
    assert allowed(None, frozenset())
    assert allowed("kpis:read", frozenset({"kpis:read"}))
    assert allowed("kpis:read", frozenset({"admin"}))
    assert not allowed("kpis:read", frozenset({"partners:read"}))
    assert has_dot_segments("/v1/a/../b") and has_dot_segments("/v1/.") and not has_dot_segments("/v1/a.b/..c")
