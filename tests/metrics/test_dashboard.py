"""The dashboard in a real headless Chromium: the page draws its charts from the JSON API
with the vendored Chart.js, and shows the right numbers."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from services.metrics.app import create_app
from services.runtime.clock import ManualClock
from services.runtime.settings import Settings
from tests.metrics.conftest import NOW, Feed, source_stores
from tests.metrics.live import Served, free_port, serve
from tests.metrics.test_api import seed_scenario
from tests.support.tokens import TestIssuer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"{CHROMIUM} is not installed (Debian package `chromium`: apt-get install -y chromium)",
    ),
]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Served, TestIssuer]]:
    settings = Settings(var_dir=tmp_path, env="test")
    app = create_app(settings, clock=ManualClock(NOW))
    issuer = TestIssuer(settings.token_issuer)
    app.state.verifier.set_keys(issuer.keyset)
    running = await serve(app, free_port())
    try:
        async with source_stores(tmp_path) as stores:
            # The same hand-computed scenario as test_api.py.
            await seed_scenario(Feed(app.state.engine, stores))
        yield running, issuer
    finally:
        await running.stop()


async def chart_data(page: Page, canvas_id: str) -> dict[str, Any]:
    data: dict[str, Any] = await page.evaluate(
        """(id) => {
            const chart = Chart.getChart(document.getElementById(id));
            return {labels: chart.data.labels, datasets: chart.data.datasets.map((d) => d.data),
                    drawn: chart.chartArea.right - chart.chartArea.left > 0};
        }""",
        canvas_id,
    )
    return data


async def test_dashboard_draws_kpis_trends_worst_partners_and_lag(
    served: tuple[Served, TestIssuer], tmp_path: Path
) -> None:
    running, issuer = served
    token = issuer.mint("ops-dashboard", "admin kpis:read")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 2200})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))

            await page.goto(f"{running.url}/dashboard#token={token}")
            try:
                await page.wait_for_selector("body[data-loaded]", timeout=15_000)
            except PlaywrightTimeout:
                raise AssertionError(f"the page never loaded its data; script errors: {errors}") from None
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert errors == []
            # Everything came from this origin: no CDN; the token left the address bar.
            assert all(url.startswith(running.url) for url in requests), requests
            assert "token" not in page.url

            # KPI cards: value against target, met/breached at a glance.
            card = page.locator('article[data-kpi="integration_success_rate"]')
            assert await card.get_attribute("data-status") == "breached"
            assert "90.0 %" in await card.inner_text()
            assert "BREACHED" in await card.inner_text()
            availability = page.locator('article[data-kpi="api_availability"]')
            assert await availability.get_attribute("data-status") == "met"
            assert "99.975 %" in await availability.inner_text()
            assert "error budget left 75.0 %" in await availability.inner_text()
            ttp = page.locator('article[data-kpi="time_to_partnership_days"]')
            assert "NO DATA" in await ttp.inner_text()
            assert "3 met · 4 breached · 1 without data" in await page.locator("#summary").inner_text()

            # Trend charts: 30 daily points per KPI and the target line.
            success = await chart_data(page, "trend-integration_success_rate")
            assert success["drawn"]
            assert len(success["labels"]) == 30
            assert success["labels"][-1] == "06-30"
            by_day = dict(zip(success["labels"], success["datasets"][0], strict=True))
            assert by_day["06-25"] == 100.0
            assert by_day["06-26"] == 0.0
            assert by_day["06-24"] is None
            assert set(success["datasets"][1]) == {95.0}
            uptime = await chart_data(page, "trend-integration_uptime")
            assert dict(zip(uptime["labels"], uptime["datasets"][0], strict=True))["06-20"] == 50.0

            # Worst partners and the funnel.
            worst = page.locator('.worst-box[data-kpi="api_availability"] tr[data-partner]')
            assert await worst.count() == 2
            assert "Acme" in await worst.nth(0).inner_text()
            assert "99.900 %" in await worst.nth(0).inner_text()
            funnel = await chart_data(page, "funnel-chart")
            counts = dict(zip(funnel["labels"], funnel["datasets"][0], strict=True))
            assert (counts["active"], counts["terminated"], counts["signed"]) == (1, 1, 1)

            # Consumer lag: one row per projection, a cell per source (heads unknown here: "?").
            assert await page.locator("#consumers tbody tr").count() == 9
            cell = page.locator('#consumers tr[data-projection="partner_funnel"] td[data-source="lifecycle"]')
            assert await cell.inner_text() == "?"

            # Changing the window redraws the cards from the API.
            await page.select_option("#window", "all")
            ttp = page.locator('article[data-kpi="time_to_partnership_days"]')
            await expect(ttp).to_have_attribute("data-status", "met")
            assert "65.0 d" in await ttp.inner_text()
        finally:
            await browser.close()


async def test_dashboard_asks_for_a_token_and_reports_a_bad_one(served: tuple[Served, TestIssuer]) -> None:
    running, issuer = served
    partner_token = issuer.mint("c-p1", "kpis:read", partner_id="p1")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{running.url}/dashboard")
            status = page.locator("#status")
            await expect(status).to_contain_text("Paste an ops access token")
            await page.fill("#token", "not-a-token")
            await page.click("#token-form button[type=submit]")
            await expect(status).to_contain_text("401")
            assert "expired or not trusted" in await status.inner_text()
            # A partner's token is refused too (the page is for ops).
            await page.fill("#token", partner_token)
            await page.click("#token-form button[type=submit]")
            await expect(status).to_contain_text("403")
        finally:
            await browser.close()
