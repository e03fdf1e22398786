"""Takes the README's screenshot of the status page (docs/status-page.png) in headless Chromium.

    runsync simulate &
    RUNSYNC_DEMO_TOKEN=sim-token RUNSYNC_DEMO_WEBHOOK_SECRET=demo-secret-0123456789 \\
        runsync --config config/demo.toml run &
    sleep 30                             # the first passes
    python docs/status-page-screenshot.py http://127.0.0.1:9465/ docs/status-page.png

Needs Debian's chromium (as the browser tests do) and the test extra's Playwright.
"""

from __future__ import annotations

import asyncio
import sys

from playwright.async_api import async_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


async def shoot(url: str, path: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.goto(url)
        await page.locator('#chart-durations[data-drawn="true"]').wait_for(timeout=15_000)
        await page.screenshot(path=path, full_page=True)
        await browser.close()


if __name__ == "__main__":
    asyncio.run(shoot(sys.argv[1], sys.argv[2]))
