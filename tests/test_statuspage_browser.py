"""The status page in a real browser: Debian's headless Chromium, driven by Playwright, against the
daemon (`run_daemon`), a real Postgres and the simulator. It loads, shows every configured source,
draws the charts, and turns a source red when its upstream goes away, by itself."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import tools
from helpers import TOKEN, config_toml, eventually, free_port, source_toml

from worker import scheduler, statuspage

# Chromium as root in a container, on a closed network: no sandbox, and none of its background
# connections (they would be refused, many at a time).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

NOW = datetime.now(UTC).replace(microsecond=0)


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


@pytest.fixture
async def browser():
    chromium = tools.require("chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


# A canvas that Chart.js drew on has pixels that are not transparent.
PAINTED = """canvas => {
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
    return painted;
}"""


async def test_the_page_shows_every_source_draws_the_charts_and_turns_red_without_the_upstream(
    sim, world, raker, write_config, browser, monkeypatch
):
    monkeypatch.setattr(statuspage, "REFRESH_SECONDS", 1)  # an open page reads every second
    monkeypatch.setattr(statuspage, "STATUS_TTL", 0.2)
    for ago in range(6):
        started = NOW - timedelta(days=ago, hours=1)
        world.add_runs(3, status="SUCCEEDED", started_at=started)
        world.add_runs(1, status="FAILED", started_at=started)
    raker.add_runs("proj_a", 4, status="completed")
    port = free_port()
    names = ["everything", "revoked", "raker"]
    settings = write_config(
        config_toml(
            source_toml("everything", sim.base_url, max_retries=0),
            source_toml("revoked", sim.base_url, token_env="OLD_TOKEN", max_retries=0),
            source_toml(
                "raker", sim.base_url, kind="rakerone", projects=["proj_a", "proj_b"], max_retries=0
            ),
            listen=f"127.0.0.1:{port}",
        ),
        env={"APIFY_TOKEN": TOKEN, "OLD_TOKEN": "revoked-token-0000"},
    )
    stop = asyncio.Event()
    daemon = asyncio.create_task(scheduler.run_daemon(settings, stop=stop, install_signals=False))
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:

        async def first_passes_done():
            text = (await get(port, "/status/sources"))[1]
            return all(f'data-source="{n}"' in text for n in names) and text.count(" ago") >= 4

        await eventually(first_passes_done, 60, ignoring=(aiohttp.ClientError,))
        await page.goto(f"http://127.0.0.1:{port}/?days=7")

        # Every configured source, and RakerOne's projects under theirs.
        shown = await page.eval_on_selector_all(
            "tr.source", "rows => rows.map(r => r.dataset.source)"
        )
        assert sorted(shown) == sorted(names)
        assert await page.locator('tr.stream[data-project="proj_b"]').count() == 1
        # The failing source stands out; the others do not.
        assert await page.locator('tr.source.failing[data-source="revoked"]').count() == 1
        assert await page.locator("tr.source.failing").count() == 1
        assert "HTTP 401" in await page.inner_text('tr[data-source="revoked"] td.error')

        # The charts are drawn: a canvas each, painted, with the runs of the week.
        for chart in ("runs", "cost", "durations"):
            canvas = page.locator(f'#chart-{chart}[data-drawn="true"]')
            await canvas.wait_for(timeout=15_000)
            assert await canvas.evaluate(PAINTED) > 1000, chart
        counted = await page.evaluate(
            """() => Chart.getChart("chart-runs").data.datasets
                 .map(set => [set.label, set.data.reduce((a, b) => a + b, 0)])"""
        )
        assert dict(counted) == {"succeeded": 18 + 4, "failed": 6, "open": 0}

        # The upstream goes away: every source turns red on the open page, with no reload.
        await sim.stop()
        await page.locator("tr.source:not(.failing)").first.wait_for(
            state="detached", timeout=60_000
        )
        assert await page.locator("tr.source.failing").count() == len(names)
        assert "3 of 3 failing" in await page.inner_text(".summary")

        # The range switch shows 30 days.
        await page.click("text=30 days")
        await page.locator('#chart-runs[data-drawn="true"]').wait_for(timeout=15_000)
        labels = await page.evaluate('() => Chart.getChart("chart-runs").data.labels.length')
        assert labels == 30
        assert problems == []  # no script error, no asset refused (CSP), nothing missing
    finally:
        await page.close()
        stop.set()
        assert await asyncio.wait_for(daemon, 15) == 0


async def test_a_page_open_while_the_daemon_stops_says_it_is_not_answering(
    sim, world, write_config, browser, monkeypatch
):
    monkeypatch.setattr(statuspage, "REFRESH_SECONDS", 1)
    port = free_port()
    settings = write_config(
        config_toml(source_toml("apify", sim.base_url), listen=f"127.0.0.1:{port}"),
        env={"APIFY_TOKEN": TOKEN},
    )
    stop = asyncio.Event()
    daemon = asyncio.create_task(scheduler.run_daemon(settings, stop=stop, install_signals=False))
    page = await browser.new_page()
    try:

        async def listening():
            return (await get(port, "/healthz"))[0] == 200

        await eventually(listening, 30, ignoring=(aiohttp.ClientError,))
        await page.goto(f"http://127.0.0.1:{port}/")
        assert not await page.locator("#connection").is_visible()
    finally:
        stop.set()
        assert await asyncio.wait_for(daemon, 15) == 0
    await page.locator("#connection").wait_for(state="visible", timeout=15_000)
    assert "runsync is not answering" in await page.inner_text("#connection")
    await page.close()
