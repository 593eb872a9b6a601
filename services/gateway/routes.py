"""The route table of the proxy (DESIGN §1, §4a): path → upstream service, route group, scope.

| path | upstream | scope |
| --- | --- | --- |
| `/v1/partners/**` | onboarding | GET/HEAD `partners:read`, other methods `partners:write` |
| `/v1/alliances/**` | lifecycle | GET/HEAD `partners:read`, other methods `partners:write` |
| `/v1/integrations/**` | lifecycle | `integrations:read` / `integrations:write` |
| `/v1/webhooks/**` | lifecycle | `webhooks:read` / `webhooks:write` |
| `/v1/kpis/**` | metrics | `kpis:read` |
| `/metrics` | metrics | `kpis:read` |
| `/dashboard`, `/dashboard/**` | metrics | none: the page is public; the data it loads (`/v1/kpis`) needs a token |
| `/admin/services/<svc>/consumers/**` | `<svc>` (onboarding, lifecycle, metrics) as `/admin/consumers/**` | `admin` |

Ops clients (scope `admin`) pass every scope check, as in the services themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONSUMER_SERVICES = frozenset({"onboarding", "lifecycle", "metrics"})


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes and what it needs."""

    upstream: str
    group: str
    scope: str | None
    """The scope the token must hold; None: no token needed (a token sent is still verified)."""
    path: str | None = None
    """The upstream path when it differs from the inbound one."""


_PREFIXES: tuple[tuple[str, str, str, str, str], ...] = (
    # prefix, upstream, group, read scope, write scope
    ("/v1/partners", "onboarding", "partners", "partners:read", "partners:write"),
    ("/v1/alliances", "lifecycle", "alliances", "partners:read", "partners:write"),
    ("/v1/integrations", "lifecycle", "integrations", "integrations:read", "integrations:write"),
    ("/v1/webhooks", "lifecycle", "webhooks", "webhooks:read", "webhooks:write"),
    ("/v1/kpis", "metrics", "kpis", "kpis:read", "kpis:read"),
)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def has_dot_segments(path: str) -> bool:
    """Whether `path` has `.`/`..` segments (they could climb out of a route's prefix upstream)."""
    if "/." not in path:
        return False
    return any(segment in (".", "..") for segment in path.split("/"))


def match(method: str, path: str) -> Route | None:
    """The route of `method path`, or None when the gateway itself serves it."""
    if path.startswith("/v1/"):
        for prefix, upstream, group, read, write in _PREFIXES:
            if _under(path, prefix):
                return Route(upstream, group, read if method in READ_METHODS else write)
        return None
    if path == "/metrics":
        return Route("metrics", "metrics", "kpis:read")
    if _under(path, "/dashboard"):
        return Route("metrics", "dashboard", None)
    if path.startswith("/admin/services/"):
        parts = path.split("/", 5)  # '', admin, services, <svc>, consumers, rest
        if len(parts) >= 5 and parts[3] in CONSUMER_SERVICES and parts[4] == "consumers":
            rest = "/" + parts[5] if len(parts) == 6 else ""
            return Route(parts[3], "admin", "admin", path="/admin/consumers" + rest)
    return None


def allowed(scope: str | None, scopes: frozenset[str]) -> bool:
    """Whether a token holding `scopes` may use a route needing `scope`."""
    return scope is None or scope in scopes or "admin" in scopes
