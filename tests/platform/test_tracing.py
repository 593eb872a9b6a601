"""One trace follows a partner API call across the platform (gateway → service → relay → projection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import traces
from tests.support.platform import eventually, running_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_post_partner_trace_crosses_gateway_onboarding_relay_and_a_projection(tmp_path: Path) -> None:
    async with running_platform(tmp_path, extra_env={"PARTNERHUB_TRACING": "on"}) as platform:
        ops = await platform.ops_http()
        response = await ops.post(
            "/v1/partners",
            json={"name": "Traced Co", "website": "https://traced.example", "category": "ai", "contact_email": "a@traced.example"},
        )
        assert response.status_code == 201, response.text
        partner_id = response.json()["id"]
        span_dir = tmp_path / "traces"

        async def crossing() -> dict[str, list[dict[str, object]]]:
            grouped = traces.group_traces(traces.load_spans(span_dir))
            found = {
                tid: spans
                for tid, spans in grouped.items()
                if {"gateway", "onboarding", "metrics"} <= traces.services_in(spans)
                and any("relay" in str(s["name"]).lower() or s.get("kind") == "PRODUCER" for s in spans)
                and any(s.get("kind") == "CONSUMER" and s.get("service") == "partnerhub-metrics" for s in spans)
            }
            assert found, f"no trace crosses the platform yet ({len(grouped)} traces for {partner_id})"
            return found

        found = await eventually(crossing, timeout=30)
    spans = next(iter(found.values()))
    names = {str(s["name"]) for s in spans}
    assert any("POST" in name for name in names), names
    assert traces.render(next(iter(found)), spans).label
