"""Schemathesis against every service's OpenAPI document, on the running platform.

Each service's document is read from the service itself; each request goes where a real
client's would: through the gateway when the gateway serves the path (the proxy's route
table decides: `/v1/**`, `/metrics`, `/dashboard` and the gateway's own routes), and
straight to the service otherwise (`/healthz`, `/readyz`, `/internal/events`,
`/admin/consumers`) with the same gateway-issued token, which the service verifies
itself. Two callers: an ops client (every operation) and partner A's client (every
operation a partner can reach, with every scope a partner may hold).

Checks: no 5xx; status codes, content types, headers and bodies as documented; every
error answer is RFC 9457 problem+json (the OAuth endpoints answer RFC 6749 JSON errors
instead, as those RFCs require). Budget: `PARTNERHUB_FUZZ_EXAMPLES` examples per
operation, half that for the partner (default 10: derandomized, so the suite's run is
repeatable; `make fuzz` runs 500, random, and shrinks what it finds). Writes never target
the ids of clients and partners other tests stand on. Findings are kept as plain
regression tests in test_limits.py and test_regressions.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.gateway.routes import match
from services.runtime.settings import SERVICES
from tests.hardening.catalogue import base_url
from tests.hardening.conftest import ALL_PARTNER_SCOPES, Tenant
from tests.support.platform import RunningPlatform

pytestmark = [pytest.mark.e2e, pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("PARTNERHUB_FUZZ_EXAMPLES", "10"))
LONG_RUN = EXAMPLES > 25
OAUTH_PATHS = ("/oauth/token", "/oauth/introspect", "/oauth/revoke")
# The gateway's rate limit may answer any proxied route: wait and send again.
GATEWAY_ONLY = {429}


@dataclass(frozen=True)
class Target:
    """Who fuzzes which service."""

    service: str
    role: str
    token: str
    platform: RunningPlatform
    protected: frozenset[str]
    """Ids the fuzzer must never send a write to (clients and partners other tests rely on)."""


@schemathesis.check
def problem_json(ctx: Any, response: schemathesis.Response, case: Case) -> bool | None:
    """Every error answer is RFC 9457 problem+json whose `status` is the HTTP status."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    if case.path in OAUTH_PATHS:
        # RFC 6749 §5.2 / RFC 7009 / RFC 7662: errors are application/json {"error": ...}.
        assert content_type.startswith("application/json"), f"OAuth error as {content_type!r}"
        assert "error" in response.json(), response.text
        return True
    assert content_type.startswith("application/problem+json"), f"{response.status_code} as {content_type!r}: {response.text[:300]}"
    doc = response.json()
    assert isinstance(doc, dict) and {"type", "title", "status"} <= set(doc), doc
    assert doc["status"] == response.status_code, doc
    return True


@schemathesis.check
def no_server_error(ctx: Any, response: schemathesis.Response, case: Case) -> bool | None:
    """No 5xx, whatever the input (the built-in check also reports a 503 from /readyz as one)."""
    if case.path == "/readyz" and response.status_code == 503:
        return None
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    return True


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    problem_json,
]


def partner_reachable(service: str, method: str, path: str) -> bool:
    """Operations a partner client reaches with the scopes a partner may hold."""
    if service == "gateway":
        return path.startswith(("/oauth/", "/.well-known/"))
    route = match(method.upper(), path)
    return route is not None and route.upstream == service and (route.scope is None or route.scope in ALL_PARTNER_SCOPES)


@pytest.fixture(scope="module")
async def fuzz_tokens(platform: RunningPlatform, tenants: tuple[Tenant, Tenant]) -> dict[str, Any]:
    """A dedicated ops client's token, partner A's token, and the ids no fuzzed write may touch."""
    ops = await platform.create_client(name="fuzz ops", scopes=["admin"])
    admin = await platform.ops_http()
    clients = (await admin.get("/admin/clients", params={"limit": 200})).json()["items"]
    protected = {c["client_id"] for c in clients} | {platform.ops.client_id, ops.client_id}
    for tenant in tenants:
        protected |= tenant.secrets_of()
    return {"ops": await platform.token(ops), "partner": tenants[0].token, "protected": frozenset(protected)}


TARGETS = [(service, "ops") for service in SERVICES] + [(service, "partner") for service in SERVICES]


@pytest.fixture(scope="module", params=TARGETS, ids=[f"{s}-as-{r}" for s, r in TARGETS])
def target(request: pytest.FixtureRequest, platform: RunningPlatform, fuzz_tokens: dict[str, Any]) -> Target:
    service, role = request.param
    return Target(service, role, fuzz_tokens[role], platform, fuzz_tokens["protected"])


def load_schema(target: Target) -> schemathesis.BaseSchema:
    """The service's live OpenAPI document (only what a partner reaches, for the partner)."""
    doc = httpx.get(target.platform.url(target.service) + "/openapi.json", timeout=10.0).json()
    if target.role == "partner":
        for path, item in list(doc["paths"].items()):
            for method in list(item):
                if not partner_reachable(target.service, method, path):
                    del item[method]
            if not item:
                del doc["paths"][path]
    return schemathesis.openapi.from_dict(doc)


def exercise(case: Case, target: Target) -> None:
    """Send `case` the way a real client would and check the answer."""
    if case.method.upper() != "GET" and set((case.path_parameters or {}).values()) & target.protected:
        return  # never rotate, revoke or change what other tests (or the fuzzer itself) stand on
    url = base_url(target.platform, target.service, case.method, case.path)
    headers = {"Authorization": f"Bearer {target.token}"}
    response = case.call(base_url=url, headers=headers, timeout=30)
    for _ in range(3):
        if response.status_code not in GATEWAY_ONLY or url != target.platform.gateway:
            break
        time.sleep(min(2.0, float(response.headers.get("retry-after", "1"))))
        response = case.call(base_url=url, headers=headers, timeout=30)
    case.validate_response(response, checks=CHECKS, headers=headers)


# Shrinking finds the smallest failing input; it is worth its time only in the long run.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if LONG_RUN else [])


def test_api_conforms_to_its_openapi_document(target: Target, subtests: pytest.Subtests) -> None:
    """Every operation: schema-valid and schema-invalid inputs (positive and negative modes)."""
    schema = load_schema(target)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "no operation to fuzz"
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @settings(
            # The partner's pass mostly checks refusals and isolation answers: half the budget.
            max_examples=EXAMPLES if target.role == "ops" else max(3, EXAMPLES // 2),
            deadline=None,
            derandomize=not LONG_RUN,
            database=None,
            phases=PHASES,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case: Case) -> None:
            exercise(case, target)

        with subtests.test(msg=operation.label):
            fuzz()
