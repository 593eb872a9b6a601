"""Input limits on every service, through the gateway: each case names the limit and the exact 4xx.

Body size (413), string lengths, list and page sizes, unicode and control characters in
names, deeply nested and malformed JSON, out-of-range numbers and times, crafted
pagination cursors. Every refusal is problem+json with the expected `type` (and, for
validation errors, the offending field in `errors[].loc`); no input gives a 5xx. Limits
have a positive control just inside them where that is cheap.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.hardening.conftest import Tenant, send
from tests.support.platform import RunningPlatform

pytestmark = [pytest.mark.e2e]

MAX_BODY = 1_048_576  # Settings.max_body_bytes default
INT64_MAX = 2**63 - 1
VALIDATION = "validation-failed"
MALFORMED = "malformed-json"
TOO_LARGE = "content-too-large"
INVALID_CURSOR = "invalid-cursor"


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    status: int
    type: str | None = None
    loc: tuple[str, ...] | None = None
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] | list[tuple[str, Any]] | None = None
    direct: str | None = None
    """Call this service directly (with the same real token) instead of the gateway."""


def application(**changes: Any) -> dict[str, Any]:
    body = {"name": "Limits Inc", "website": "https://limits.example", "category": "ai", "contact_email": "a@limits.example"}
    return body | changes


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


def cursor(position: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def endpoint(**changes: Any) -> dict[str, Any]:
    return {"url": "http://127.0.0.1:9/hook", "event_types": ["*"], "partner_id": "ptn_limits"} | changes


def client(**changes: Any) -> dict[str, Any]:
    return {"name": "limits", "scopes": ["kpis:read"]} | changes


CASES: dict[str, Case] = {
    # --- body size (1 MiB) ----------------------------------------------------------------
    "body_over_1MiB_declared_at_gateway": Case("POST", "/v1/partners", 413, TOO_LARGE, content=b" " * (MAX_BODY + 1)),
    "body_over_1MiB_declared_at_service": Case("POST", "/v1/partners", 413, TOO_LARGE, content=b" " * (MAX_BODY + 1), direct="onboarding"),
    "body_just_under_1MiB_is_read_and_validated": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), json=application(name="n" * (MAX_BODY - 200))),
    # --- string lengths ---------------------------------------------------------------------
    "partner_name_201_chars": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), json=application(name="n" * 201)),
    "partner_name_empty": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), json=application(name="")),
    "partner_name_200_chars_accepted": Case("POST", "/v1/partners", 201, json=application(name="n" * 200)),
    "partner_category_101_chars": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "category"), json=application(category="c" * 101)),
    "partner_website_2049_chars": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "website"), json=application(website="https://a.example/" + "w" * 2031)),
    "partner_contact_email_255_chars": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "contact_email"), json=application(contact_email="e" * 243 + "@limits.example")),
    "due_diligence_findings_5001_chars": Case("POST", "/v1/partners/ptn_limits/due-diligence", 422, VALIDATION, ("body", "findings"), json={"phase": "initial_screening", "passed": True, "findings": "f" * 5001}),
    "approval_comment_5001_chars": Case("POST", "/v1/partners/ptn_limits/approvals", 422, VALIDATION, ("body", "comment"), json={"decision": "approve", "comment": "c" * 5001}),
    "alliance_exit_reason_1001_chars": Case("POST", "/v1/alliances/ptn_limits/exit", 422, VALIDATION, ("body", "reason"), json={"reason": "r" * 1001, "notice_days": 30}),
    "alliance_terminate_reason_1001_chars": Case("POST", "/v1/alliances/ptn_limits/terminate", 422, VALIDATION, ("body", "reason"), json={"force": True, "reason": "r" * 1001}),
    "alliance_satisfaction_comment_2001_chars": Case("POST", "/v1/alliances/ptn_limits/satisfaction", 422, VALIDATION, ("body", "comment"), json={"score": 9, "comment": "c" * 2001}),
    "integration_name_201_chars": Case("POST", "/v1/integrations", 422, VALIDATION, ("body", "name"), json={"partner_id": "ptn_limits", "kind": "sso", "name": "n" * 201}),
    "integration_health_url_2049_chars": Case("POST", "/v1/integrations", 422, VALIDATION, ("body", "health_url"), json={"partner_id": "ptn_limits", "kind": "sso", "name": "n", "health_url": "https://a.example/" + "h" * 2031}),
    "integration_attempt_detail_2001_chars": Case("POST", "/v1/integrations/int_limits/attempts", 422, VALIDATION, ("body", "detail"), json={"outcome": "failed", "detail": "d" * 2001}),
    "integration_retire_reason_1001_chars": Case("POST", "/v1/integrations/int_limits/retire", 422, VALIDATION, ("body", "reason"), json={"reason": "r" * 1001}),
    "webhook_url_2049_chars": Case("POST", "/v1/webhooks/endpoints", 422, VALIDATION, ("body", "url"), json=endpoint(url="http://127.0.0.1:9/" + "u" * 2030)),
    "webhook_description_501_chars": Case("POST", "/v1/webhooks/endpoints", 422, VALIDATION, ("body", "description"), json=endpoint(description="d" * 501)),
    "webhook_event_type_101_chars": Case("POST", "/v1/webhooks/endpoints", 422, VALIDATION, ("body", "event_types", "0"), json=endpoint(event_types=["e" * 101])),
    "client_name_201_chars": Case("POST", "/admin/clients", 422, VALIDATION, ("body", "name"), json=client(name="n" * 201)),
    "client_partner_id_101_chars": Case("POST", "/admin/clients", 422, VALIDATION, ("body", "partner_id"), json=client(partner_id="p" * 101)),
    "client_partner_id_with_slash": Case("POST", "/admin/clients", 422, VALIDATION, ("body", "partner_id"), json=client(partner_id="ptn/../x")),
    "alliance_path_partner_id_101_chars": Case("GET", "/v1/alliances/" + "p" * 101, 422, VALIDATION, ("path", "partner_id")),
    "integration_path_id_65_chars": Case("GET", "/v1/integrations/" + "i" * 65, 422, VALIDATION, ("path", "integration_id")),
    "kpi_path_partner_id_201_chars": Case("GET", "/v1/kpis/partners/" + "p" * 201, 422, VALIDATION, ("path", "partner_id")),
    "partner_path_id_10000_chars_is_unknown": Case("GET", "/v1/partners/" + "p" * 10_000, 404, "not-found"),
    "webhook_path_id_41_chars_is_unknown": Case("GET", "/v1/webhooks/endpoints/" + "e" * 41, 404, "not-found"),
    "integrations_query_partner_id_101_chars": Case("GET", "/v1/integrations", 422, VALIDATION, ("query", "partner_id"), params={"partner_id": "p" * 101}),
    "endpoints_query_partner_id_201_chars": Case("GET", "/v1/webhooks/endpoints", 422, VALIDATION, ("query", "partner_id"), params={"partner_id": "p" * 201}),
    "clients_query_partner_id_101_chars": Case("GET", "/admin/clients", 422, VALIDATION, ("query", "partner_id"), params={"partner_id": "p" * 101}),
    "cursor_513_chars": Case("GET", "/v1/partners", 422, VALIDATION, ("query", "cursor"), params={"cursor": "c" * 513}),
    # --- list sizes and page sizes ------------------------------------------------------------
    "webhook_event_types_51_entries": Case("POST", "/v1/webhooks/endpoints", 422, VALIDATION, ("body", "event_types"), json=endpoint(event_types=["*"] * 51)),
    "webhook_event_types_empty": Case("POST", "/v1/webhooks/endpoints", 422, VALIDATION, ("body", "event_types"), json=endpoint(event_types=[])),
    "client_scopes_21_entries": Case("POST", "/admin/clients", 422, VALIDATION, ("body", "scopes"), json=client(scopes=["kpis:read"] * 21)),
    "client_scopes_empty": Case("POST", "/admin/clients", 422, VALIDATION, ("body", "scopes"), json=client(scopes=[])),
    "partners_limit_201": Case("GET", "/v1/partners", 422, VALIDATION, ("query", "limit"), params={"limit": 201}),
    "partners_limit_0": Case("GET", "/v1/partners", 422, VALIDATION, ("query", "limit"), params={"limit": 0}),
    "partners_limit_not_a_number": Case("GET", "/v1/partners", 422, VALIDATION, ("query", "limit"), params={"limit": "1e3"}),
    "partners_limit_200_accepted": Case("GET", "/v1/partners", 200, params={"limit": 200}),
    "partner_events_limit_201": Case("GET", "/v1/partners/ptn_limits/events", 422, VALIDATION, ("query", "limit"), params={"limit": 201}),
    "alliances_limit_201": Case("GET", "/v1/alliances", 422, VALIDATION, ("query", "limit"), params={"limit": 201}),
    "integrations_limit_201": Case("GET", "/v1/integrations", 422, VALIDATION, ("query", "limit"), params={"limit": 201}),
    "endpoints_limit_201": Case("GET", "/v1/webhooks/endpoints", 422, VALIDATION, ("query", "limit"), params={"limit": 201}),
    "messages_limit_201": Case("GET", "/v1/webhooks/endpoints/ep_limits/messages", 422, VALIDATION, ("query", "limit"), params={"limit": 201}),
    "clients_limit_201": Case("GET", "/admin/clients", 422, VALIDATION, ("query", "limit"), params={"limit": 201}),
    "kpi_series_days_91": Case("GET", "/v1/kpis/series", 422, VALIDATION, ("query", "days"), params={"days": 91}),
    "kpi_series_kpi_repeated_500_times_accepted": Case("GET", "/v1/kpis/series", 200, params=[("kpi", "api_availability")] * 500),
    "kpi_worst_limit_51": Case("GET", "/v1/kpis/worst", 422, VALIDATION, ("query", "limit"), params={"limit": 51}),
    "kpi_window_unknown": Case("GET", "/v1/kpis", 422, VALIDATION, ("query", "window"), params={"window": "1y"}),
    "log_limit_10001": Case("GET", "/internal/events", 422, VALIDATION, ("query", "limit"), params={"limit": 10_001}, direct="onboarding"),
    "log_after_negative": Case("GET", "/internal/events", 422, VALIDATION, ("query", "after"), params={"after": -1}, direct="lifecycle"),
    "log_after_past_int64": Case("GET", "/internal/events", 422, VALIDATION, ("query", "after"), params={"after": INT64_MAX + 1}, direct="metrics"),
    "gateway_log_after_past_int64": Case("GET", "/internal/events", 422, VALIDATION, ("query", "after"), params={"after": INT64_MAX + 1}),
    "revocations_after_past_int64": Case("GET", "/internal/revocations", 422, VALIDATION, ("query", "after"), params={"after": INT64_MAX + 1}),
    "revocations_limit_1001": Case("GET", "/internal/revocations", 422, VALIDATION, ("query", "limit"), params={"limit": 1001}),
    # --- unicode and control characters in names --------------------------------------------
    "partner_name_emoji_cjk_accepted": Case("POST", "/v1/partners", 201, json=application(name="Acme 🚀 株式会社 Ünïcødé")),
    "partner_name_combining_marks_accepted": Case("POST", "/v1/partners", 201, json=application(name="Zoe\u0301 e\u0300")),
    "partner_name_nul": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), json=application(name="Acme\u0000Corp")),
    "partner_name_newline": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), json=application(name="Acme\nCorp")),
    "partner_name_escape_sequence": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), json=application(name="Acme\u001b[31mCorp")),
    "partner_name_bidi_override": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), json=application(name="Acme\u202egnp.exe")),
    "partner_category_tab": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "category"), json=application(category="ai\tml")),
    "partner_name_lone_surrogate": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), content=orjson.dumps(application(name="X")).replace(b'"X"', b'"a\\ud800b"')),
    "integration_name_nul": Case("POST", "/v1/integrations", 422, VALIDATION, ("body", "name"), json={"partner_id": "ptn_limits", "kind": "sso", "name": "a\u0000b"}),
    "client_name_control_character": Case("POST", "/admin/clients", 422, VALIDATION, ("body", "name"), json=client(name="ops\u0007")),
    "client_name_emoji_accepted": Case("POST", "/admin/clients", 201, json=client(name="🚀 launch team")),
    # --- control characters in free text (findings, comments, reasons, descriptions) ---------
    "approval_comment_nul": Case("POST", "/v1/partners/ptn_limits/approvals", 422, VALIDATION, ("body", "comment"), json={"decision": "approve", "comment": "ok\u0000"}),
    "due_diligence_findings_escape_sequence": Case("POST", "/v1/partners/ptn_limits/due-diligence", 422, VALIDATION, ("body", "findings"), json={"phase": "initial_screening", "passed": True, "findings": "\u001b[2J"}),
    "satisfaction_comment_nul": Case("POST", "/v1/alliances/ptn_limits/satisfaction", 422, VALIDATION, ("body", "comment"), json={"score": 8, "comment": "fine\u0000"}),
    "exit_reason_bidi_override": Case("POST", "/v1/alliances/ptn_limits/exit", 422, VALIDATION, ("body", "reason"), json={"reason": "cost\u202e", "notice_days": 30}),
    "attempt_detail_nul": Case("POST", "/v1/integrations/int_limits/attempts", 422, VALIDATION, ("body", "detail"), json={"outcome": "failed", "detail": "timeout\u0000"}),
    "retire_reason_bell": Case("POST", "/v1/integrations/int_limits/retire", 422, VALIDATION, ("body", "reason"), json={"reason": "done\u0007"}),
    "webhook_description_nul": Case("POST", "/v1/webhooks/endpoints", 422, VALIDATION, ("body", "description"), json=endpoint(description="a\u0000b")),
    "webhook_description_multiline_accepted": Case("POST", "/v1/webhooks/endpoints", 201, json=endpoint(description="line one\r\nline two\ttabbed")),
    # --- malformed and deeply nested JSON ------------------------------------------------------
    "body_not_json": Case("POST", "/v1/partners", 422, MALFORMED, content=b"{name: nope"),
    "body_invalid_utf8": Case("POST", "/v1/partners", 422, MALFORMED, content=b'{"name": "\xff\xfe"}'),
    "body_json_array_not_object": Case("POST", "/v1/partners", 422, VALIDATION, ("body",), json=[application()]),
    "body_nested_arrays_100000_deep": Case("POST", "/v1/partners", 422, MALFORMED, content=b"[" * 100_000 + b"]" * 100_000),
    "body_nested_objects_50000_deep": Case("POST", "/v1/alliances/ptn_limits/satisfaction", 422, MALFORMED, content=nested(50_000)),
    "field_nested_objects_500_deep": Case("POST", "/v1/partners", 422, VALIDATION, ("body", "name"), content=orjson.dumps(application(name="X")).replace(b'"X"', nested(500))),
    "client_jwks_nested_5000_deep": Case("POST", "/admin/clients", 422, MALFORMED, content=orjson.dumps(client(jwks={"x": 1})).replace(b'{"x":1}', nested(5000))),
    "number_with_5000_digits": Case("POST", "/v1/alliances/ptn_limits/satisfaction", 422, MALFORMED, content=b'{"score": 1' + b"0" * 5000 + b"}"),
    "number_nan_literal": Case("POST", "/v1/alliances/ptn_limits/satisfaction", 422, VALIDATION, ("body", "score"), content=b'{"score": NaN}'),
    "integer_past_int64": Case("POST", "/v1/integrations/int_limits/attempts", 422, VALIDATION, ("body", "duration_ms"), json={"outcome": "failed", "duration_ms": 10**30}),
    # --- times out of range -------------------------------------------------------------------
    "occurred_at_before_year_1_in_utc": Case("POST", "/v1/partners", 422, "occurred-at-out-of-range", json=application(occurred_at="0001-01-01T00:00:00+14:00")),
    "occurred_at_in_the_future": Case("POST", "/v1/partners", 422, "occurred-at-in-future", json=application(occurred_at="9999-12-31T00:00:00Z")),
    "occurred_at_without_timezone": Case("POST", "/v1/partners", 422, VALIDATION, json=application(occurred_at="2020-01-01T00:00:00")),
    # --- crafted cursors (each once gave a 500) -----------------------------------------------
    "partners_cursor_after_past_int64": Case("GET", "/v1/partners", 422, INVALID_CURSOR, params={"cursor": cursor({"after": INT64_MAX + 1})}),
    "partners_cursor_not_base64_json": Case("GET", "/v1/partners", 422, INVALID_CURSOR, params={"cursor": "%%%"}),
    "partner_events_cursor_after_past_int64": Case("GET", "/v1/partners/{partner_id}/events", 422, INVALID_CURSOR, params={"cursor": cursor({"after": INT64_MAX + 1})}),
    "alliances_cursor_seq_not_a_number": Case("GET", "/v1/alliances", 422, INVALID_CURSOR, params={"cursor": cursor({"seq": "abc"})}),
    "alliances_cursor_seq_past_int64": Case("GET", "/v1/alliances", 422, INVALID_CURSOR, params={"cursor": cursor({"seq": INT64_MAX + 1})}),
    "integrations_cursor_seq_a_list": Case("GET", "/v1/integrations", 422, INVALID_CURSOR, params={"cursor": cursor({"seq": [1]})}),
    "clients_cursor_seq_past_int64": Case("GET", "/admin/clients", 422, INVALID_CURSOR, params={"cursor": cursor({"seq": INT64_MAX + 1})}),
    "endpoints_cursor_naive_time": Case("GET", "/v1/webhooks/endpoints", 422, INVALID_CURSOR, params={"cursor": cursor({"c": "2020-01-01T00:00:00", "i": "ep_x"})}),
    "messages_cursor_naive_time": Case("GET", "/v1/webhooks/endpoints/{endpoint_id}/messages", 422, INVALID_CURSOR, params={"cursor": cursor({"c": "2020-01-01T00:00:00", "i": "msg_x"})}),
}


@pytest.fixture(scope="module")
async def ops(platform: RunningPlatform) -> AsyncIterator[httpx.AsyncClient]:
    yield await platform.ops_http()


def check_problem(response: httpx.Response, case: Case) -> None:
    assert response.headers.get("content-type", "").startswith("application/problem+json"), response.text
    doc = response.json()
    assert doc["status"] == case.status, doc
    if case.type is not None:
        assert doc["type"].rsplit("/", 1)[-1] == case.type, doc
    if case.loc is not None:
        locs = [tuple(error["loc"]) for error in doc.get("errors", [])]
        assert case.loc in locs, f"expected an error at {case.loc}, got {locs}"


@pytest.mark.parametrize("name", list(CASES))
async def test_input_limit(
    name: str, platform: RunningPlatform, ops: httpx.AsyncClient, tenants: tuple[Tenant, Tenant]
) -> None:
    case = CASES[name]
    a, _ = tenants
    base = platform.url(case.direct) if case.direct else platform.gateway
    path = case.path.replace("{endpoint_id}", a.endpoint_id).replace("{partner_id}", a.partner_id)
    kwargs: dict[str, Any] = {"params": case.params}
    if case.json is not None:
        kwargs["json"] = case.json
    elif case.content is not None:
        kwargs["content"] = case.content
        kwargs["headers"] = {"content-type": "application/json"}
    response = await send(ops, case.method, base + path, **kwargs)
    assert response.status_code == case.status, f"{name}: {response.status_code} {response.text[:500]}"
    if case.status >= 400:
        check_problem(response, case)
    elif case.json is not None and "name" in case.json and case.status == 201:
        assert response.json()["name"] == case.json["name"], "the name did not round-trip exactly"


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b" " * piece


@pytest.mark.parametrize("where", ["gateway", "onboarding"])
async def test_body_over_1MiB_streamed_without_length_is_413(where: str, platform: RunningPlatform, ops: httpx.AsyncClient) -> None:
    """A chunked body (no Content-Length) is counted while it streams and cut at the limit."""
    base = platform.gateway if where == "gateway" else platform.url(where)
    response = await ops.post(base + "/v1/partners", content=chunks(MAX_BODY + 64 * 1024), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    check_problem(response, Case("POST", "/v1/partners", 413, TOO_LARGE))
