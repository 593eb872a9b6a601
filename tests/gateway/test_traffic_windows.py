"""Traffic windows: per (partner, route group) and minute, appended as gateway.traffic_window_closed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from events.schema import events_table
from services.runtime.clock import ManualClock
from services.runtime.db import create_engine
from tests.gateway.support import Upstream, gateway_settings, in_process_gateway

START = datetime(2026, 3, 2, 10, 0, 5, tzinfo=UTC)


async def _windows(engine) -> list[dict]:  # type: ignore[no-untyped-def]
    query = select(events_table.c.data, events_table.c.occurred_at).where(
        events_table.c.type == "gateway.traffic_window_closed"
    ).order_by(events_table.c.position)
    async with engine.connect() as conn:
        return [dict(row.data) | {"occurred_at": row.occurred_at} for row in (await conn.execute(query)).all()]


async def test_a_closed_minute_becomes_one_event_per_partner_and_group(tmp_path: Path, upstream: Upstream) -> None:
    clock = ManualClock(START)
    async with in_process_gateway(gateway_settings(tmp_path, upstream.url), clock=clock) as gateway:
        partner = await gateway.client(partner_id="ptn-t", scopes=["kpis:read", "partners:read"])
        p_auth = await gateway.bearer(partner)
        o_auth = await gateway.bearer(gateway.ops)
        for _ in range(3):
            assert (await gateway.http.get("/v1/kpis", headers=p_auth)).status_code == 200
        assert (await gateway.http.get("/v1/kpis?status=500", headers=p_auth)).status_code == 500
        assert (await gateway.http.get("/v1/kpis?status=404", headers=p_auth)).status_code == 404
        assert (await gateway.http.get("/v1/partners", headers=p_auth)).status_code == 200
        assert (await gateway.http.get("/v1/partners", headers=o_auth)).status_code == 200
        assert (await gateway.http.get("/v1/partners")).status_code == 401
        assert await gateway.ctx.traffic.flush() == 0  # the minute is still open
        clock.advance(60)
        assert await gateway.ctx.traffic.flush() == 3
        windows = await _windows(gateway.ctx.runtime.engine)
        by_key = {(w["partner_id"], w["route_group"]): w for w in windows}
        assert set(by_key) == {("ptn-t", "kpis"), ("ptn-t", "partners"), (None, "partners")}
        kpis = by_key[("ptn-t", "kpis")]
        assert (kpis["total"], kpis["server_errors"], kpis["client_errors"]) == (5, 1, 1)
        assert kpis["window_start"] == "2026-03-02T10:00:00+00:00"
        assert kpis["window_end"] == "2026-03-02T10:01:00+00:00"
        assert kpis["occurred_at"] == datetime(2026, 3, 2, 10, 1, tzinfo=UTC)
        assert 0 < kpis["p50_ms"] <= kpis["p99_ms"]
        ops_and_anonymous = by_key[(None, "partners")]
        assert (ops_and_anonymous["total"], ops_and_anonymous["client_errors"]) == (2, 1)
        # A minute without traffic appends nothing.
        clock.advance(120)
        assert await gateway.ctx.traffic.flush() == 0


async def test_open_windows_are_flushed_on_shutdown(tmp_path: Path, upstream: Upstream) -> None:
    clock = ManualClock(START)
    settings = gateway_settings(tmp_path, upstream.url)
    async with in_process_gateway(settings, clock=clock) as gateway:
        auth = await gateway.bearer(gateway.ops)
        for _ in range(2):
            assert (await gateway.http.get("/v1/integrations", headers=auth)).status_code == 200
        clock.advance(20)
    engine = create_engine(settings.database_url_of("gateway"))
    try:
        windows = await _windows(engine)
    finally:
        await engine.dispose()
    assert len(windows) == 1
    window = windows[0]
    assert (window["route_group"], window["total"], window["partner_id"]) == ("integrations", 2, None)
    assert window["window_start"] == "2026-03-02T10:00:00+00:00"
    assert window["window_end"] == "2026-03-02T10:00:25+00:00"  # partial: closed at shutdown
