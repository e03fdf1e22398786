"""The status page over HTTP: what it shows (every source, failing ones marked, the charts' figures
against an oracle), what it never shows (secrets), where it is served, and what it costs."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
from helpers import TOKEN, config_toml, eventually, free_port, one_pass, passes, source_toml

from worker import health, scheduler, sources, statuspage
from worker.statuspage import BadRange, StatusPage, chart_data, chart_range

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()
REVOKED = "revoked-token-5e2d7b"  # a token the simulator refuses: its source fails


async def fetch(base: str, path: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as client, client.get(base + path) as answer:
        return answer.status, dict(answer.headers), await answer.text()


async def serve(page: StatusPage):
    """An endpoint serving `page` at / on a free port, as the daemon's does."""

    async def ready():
        return None

    server = health.HealthServer("127.0.0.1:0", ready, page=page)
    await server.start()
    return server, f"http://127.0.0.1:{server.port}"


def page_of(settings, db) -> StatusPage:
    names = [s.name for s in settings.sources]
    page = StatusPage(names, {s.name: sources.partitions(s) for s in settings.sources})
    page.store = db
    return page


# -- unit: ranges, chart data, the cache ---------------------------------------------------------


def test_a_range_is_7_30_or_90_days():
    assert chart_range(None) == chart_range("") == 30
    assert [chart_range(days) for days in ("7", "30", "90")] == [7, 30, 90]
    for wrong in ("5", "365", "-7", "7.0", "abc", " 7", "07", "\u00b2", "\u0667", "9" * 400):
        with pytest.raises(BadRange, match=r"days must be one of 7, 30, 90, not ") as caught:
            chart_range(wrong)
        assert len(str(caught.value)) < 80  # the input is cut short, never echoed whole


def test_the_charts_have_every_day_of_the_range_and_the_costliest_actors():
    first = date(2026, 3, 1)
    found = {
        "first_day": first,
        "last_day": first + timedelta(days=6),
        "runs": [
            {"day": first, "succeeded": 5, "failed": 1, "open": 0},
            {"day": first + timedelta(days=6), "succeeded": 0, "failed": 0, "open": 2},
        ],
        # ten actors: the seven costliest by name, the rest summed up as "other"
        "cost": [
            {
                "day": first + timedelta(days=i % 7),
                "actor_id": f"a{i}",
                "usage_total_usd": Decimal(i),
            }
            for i in range(10)
        ]
        + [{"day": first, "actor_id": "a9", "usage_total_usd": Decimal("NaN")}],
        "durations": [
            {
                "day": first + timedelta(days=1),
                "finished_runs": 3,
                "seconds": [1.5, 9.25, math.inf],
            },
            {"day": first + timedelta(days=2), "finished_runs": 0, "seconds": None},
        ],
    }
    data = chart_data(found, 7)
    assert data["labels"] == [(first + timedelta(days=i)).isoformat() for i in range(7)]
    assert data["runs"] == {
        "succeeded": [5, 0, 0, 0, 0, 0, 0],
        "failed": [1, 0, 0, 0, 0, 0, 0],
        "open": [0, 0, 0, 0, 0, 0, 2],
    }
    assert list(data["cost"]) == ["a9", "a8", "a7", "a6", "a5", "a4", "a3", "other"]
    assert data["cost"]["a9"] == [0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0]  # NaN counts nothing
    assert data["cost"]["other"] == [0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0]  # a0 (0), a1, a2
    assert data["durations"]["p50"] == [None, 1.5, None, None, None, None, None]
    assert data["durations"]["p99"][1] is None  # not finite: not a figure
    json.dumps(data, allow_nan=False)  # the browser gets strict JSON


def test_one_actor_past_the_top_is_shown_by_name_not_as_other():
    first = date(2026, 3, 1)
    cost = [
        {"day": first, "actor_id": f"a{i}", "usage_total_usd": Decimal(i + 1)}
        for i in range(statuspage.TOP_ACTORS + 1)
    ]
    found = {"first_day": first, "last_day": first, "runs": [], "cost": cost, "durations": []}
    assert "other" not in chart_data(found, 7)["cost"]


async def test_a_read_answers_every_asker_and_a_stale_value_is_read_again_in_the_background():
    now = [0.0]
    reads = []
    fail = [False]

    async def read():
        reads.append(now[0])
        await asyncio.sleep(0.01)
        if fail[0]:
            raise OSError("the database went away")
        return len(reads)

    cached = statuspage._Cached(read, 5.0, lambda: now[0])
    assert await asyncio.gather(*(cached.get() for _ in range(20))) == [1] * 20  # one read
    now[0] = 4.9
    assert await cached.get() == 1 and len(reads) == 1
    now[0] = 5.0  # stale: answered at once, read again behind the answer, once
    assert await asyncio.gather(*(cached.get() for _ in range(5))) == [1] * 5
    await asyncio.sleep(0.05)
    assert await cached.get() == 2 and reads == [0.0, 5.0]
    now[0] = 10.0
    fail[0] = True
    assert await cached.get() == 2  # the read behind it fails...
    await asyncio.sleep(0.05)
    with pytest.raises(OSError):  # ...so the next asker is not shown old figures: it is told
        await cached.get()
    fail[0] = False
    assert await cached.get() == 5
    now[0] = 10.0 + 3 * 5.0  # too old to be shown as current: the asker waits for a read
    assert await cached.get() == 6 and len(reads) == 6
    await cached.close()


def test_the_shipped_chart_library_is_the_published_file_and_every_asset_is_in_the_package():
    import hashlib

    page = StatusPage(["apify"])
    version, digest = statuspage.CHART_JS
    chart = page.assets["chart.umd.min.js"].body
    assert hashlib.sha256(chart).hexdigest() == digest
    assert f"Chart.js v{version}" in chart[:100].decode()
    assert set(page.assets) == {"chart.umd.min.js", "chart.js-LICENSE.md", "page.js", "page.css"}


# -- integration: the page on Postgres and the simulator ------------------------------------------


async def test_the_page_shows_every_source_and_marks_the_failing_one(
    sim, world, db, raker, write_config
):
    world.add_runs(3, status="SUCCEEDED", started_at=NOW - timedelta(hours=2))
    raker.add_runs("proj_a", 2, status="completed")
    settings = write_config(
        config_toml(
            source_toml("good", sim.base_url),
            source_toml("revoked", sim.base_url, token_env="OLD_TOKEN", max_retries=0),
            source_toml("raker", sim.base_url, kind="rakerone", projects=["proj_a", "proj_b"]),
            source_toml("never", sim.base_url),  # configured, no pass yet
        ),
        env={"APIFY_TOKEN": TOKEN, "OLD_TOKEN": REVOKED},
    )
    await one_pass(settings, "good")
    await one_pass(settings, "revoked")
    await passes(settings, "raker")
    server, base = await serve(page_of(settings, db))
    try:
        status, headers, body = await fetch(base, "/")
    finally:
        await server.stop()

    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    rows = {name: bool(failing) for failing, name in re.findall(
        r'<tr class="source( failing)?" data-source="([^"]+)"', body)}  # fmt: skip
    assert rows == {"good": False, "revoked": True, "raker": False, "never": False}
    assert re.search(r'data-project="proj_a"', body) and re.search(r'data-project="proj_b"', body)
    assert "1 of 4 failing" in body
    assert "HTTP 401" in body  # the failing source's error, its first line
    assert "no pass yet" in body  # the source that has not run
    for secret in (TOKEN, REVOKED, "postgres:"):
        assert secret not in body


async def test_the_charts_count_runs_by_outcome_and_day_against_the_upstream(
    sim, world, db, apify_settings
):
    plan = {  # days ago: statuses started that day
        0: ["RUNNING"],
        1: ["SUCCEEDED"] * 3 + ["FAILED", "ABORTED"],
        6: ["TIMED-OUT", "SUCCEEDED"],
        7: ["SUCCEEDED"] * 4,  # out of the 7-day range, in the 30-day one
        40: ["FAILED"],  # out of both, in the 90-day one
    }
    for ago, statuses in plan.items():
        for status in statuses:
            started = datetime.combine(TODAY - timedelta(days=ago), datetime.min.time(), UTC)
            world.add_runs(1, status=status, started_at=min(started + timedelta(hours=1), NOW))
    settings = apify_settings()
    await one_pass(settings)
    page = page_of(settings, db)
    server, base = await serve(page)
    try:
        charts = {days: json.loads((await fetch(base, f"/status/charts?days={days}"))[2])
                  for days in (7, 30, 90)}  # fmt: skip
        status, _, wrong = await fetch(base, "/status/charts?days=365")
    finally:
        await server.stop()

    for days, data in charts.items():
        expected = {key: [0] * days for key in ("succeeded", "failed", "open")}
        for ago, statuses in plan.items():
            if ago < days:
                for state in statuses:
                    outcome = {"SUCCEEDED": "succeeded", "RUNNING": "open"}.get(state, "failed")
                    expected[outcome][days - 1 - ago] += 1
        assert data["labels"][-1] == TODAY.isoformat() and len(data["labels"]) == days
        assert data["runs"] == expected, days
    assert status == 400 and "days must be one of 7, 30, 90" in json.loads(wrong)["reason"]

    # Cost and durations, from the stored runs' own columns (not through the views).
    async with db.pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT actor_id, started_at, finished_at, usage_total_usd FROM runsync.runs"
        )
    cost: dict[str, list[float]] = defaultdict(lambda: [0.0] * 30)
    durations: dict[int, list[float]] = defaultdict(list)
    for run in stored:
        ago = (TODAY - run["started_at"].astimezone(UTC).date()).days
        if ago < 30 and run["usage_total_usd"] is not None:
            cost[run["actor_id"]][29 - ago] += float(run["usage_total_usd"])
        if ago < 30 and run["finished_at"] is not None:
            durations[29 - ago].append((run["finished_at"] - run["started_at"]).total_seconds())
    got = charts[30]
    assert {a: [round(v, 6) for v in s] for a, s in cost.items()} == got["cost"]
    for index, seconds in durations.items():
        seconds.sort()
        middle = (len(seconds) - 1) / 2  # the median, interpolated as percentile_cont does
        median = (seconds[math.floor(middle)] + seconds[math.ceil(middle)]) / 2
        assert got["durations"]["p50"][index] == pytest.approx(median, abs=1e-3)
    assert got["durations"]["p50"][29] is None  # today's only run is open


async def test_the_charts_follow_the_databases_day_when_it_changes_between_their_two_reads(
    sim, world, db, apify_settings
):
    """The older days and the recent ones are read apart: when midnight falls between the two
    reads, the part read the day before is read again, and the range ends on the new day."""
    world.add_runs(2, status="SUCCEEDED", started_at=NOW - timedelta(days=3))
    await one_pass(apify_settings())
    page = page_of(apify_settings(), db)
    today = [TODAY]

    async def database_today():
        return today[0]

    db.today = database_today  # the database's clock, moved by the test
    before = await page.charts(7)
    assert before["labels"][-1] == TODAY.isoformat() and sum(before["runs"]["succeeded"]) == 2
    today[0] = TODAY + timedelta(days=1)
    page._recent.forget()  # the recent days are read again first, on the new day
    after = await page.charts(7)
    assert after["labels"][0] == (TODAY - timedelta(days=5)).isoformat()
    assert after["labels"][-1] == (TODAY + timedelta(days=1)).isoformat()
    assert len(after["labels"]) == 7 and sum(after["runs"]["succeeded"]) == 2
    today[0] = TODAY + timedelta(days=2)
    page._history[7].forget()  # now the older days first: the recent ones are read again
    latest = await page.charts(7)
    assert latest["labels"][-1] == (TODAY + timedelta(days=2)).isoformat()
    assert sum(latest["runs"]["succeeded"]) == 2  # 3 days before TODAY: still in the week


async def test_what_upstreams_and_errors_say_is_shown_as_text_never_as_markup(
    sim, world, db, apify_settings
):
    settings = apify_settings()
    await one_pass(settings)
    async with db.pool.acquire() as conn:  # the newest pass failed with a hostile message
        await conn.execute(
            """INSERT INTO runsync.passes (source, stream, outcome, started_at, finished_at, error)
               VALUES ('apify', 'incremental', 'failed', now(), now(), $1)""",
            '<script>alert("x")</script> & <b>bold</b>\nsecond line',
        )
    server, base = await serve(page_of(settings, db))
    try:
        _, _, body = await fetch(base, "/status/sources")
    finally:
        await server.stop()
    assert "<script>alert" not in body and "<b>bold" not in body
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in body
    assert 'class="source failing"' in body


async def test_without_its_database_the_page_says_why_and_the_charts_answer_503():
    page = StatusPage(
        ["apify"], waiting=lambda: "waiting for the database (ConnectionRefusedError)"
    )
    server, base = await serve(page)
    try:
        status, _, body = await fetch(base, "/")
        chart_status, _, chart_body = await fetch(base, "/status/charts?days=7")
    finally:
        await server.stop()
    assert status == 200 and "waiting for the database (ConnectionRefusedError)" in body
    assert chart_status == 503
    assert json.loads(chart_body) == {"reason": "waiting for the database (ConnectionRefusedError)"}


async def test_the_page_loads_nothing_from_elsewhere_and_its_assets_are_kept_by_version():
    page = StatusPage(["apify"])
    server, base = await serve(page)
    try:
        _, _, body = await fetch(base, "/")
        links = re.findall(r'(?:src|href)="([^"]*)"', body)
        answers = {
            link: await fetch(base, "/" + link)
            for link in links
            if link.startswith("status/assets/")
        }
        status, _, _ = await fetch(base, "/status/assets/nothing.js")
        _, unversioned, _ = await fetch(base, "/status/assets/page.js")
    finally:
        await server.stop()
    # Own origin only, and relative: the page works under a proxy's path prefix too.
    assert links and all(link.startswith(("status/", "?")) for link in links)
    assert len(answers) == 3  # Chart.js, the page's script and its style
    for link, (code, headers, text) in answers.items():
        assert code == 200 and "immutable" in headers["Cache-Control"], link
        assert "http://" not in text.replace("http://www.w3.org", "") or link.endswith(".js")
    assert status == 404
    assert unversioned["Cache-Control"] == "no-cache"
    assert "Chart.js v4" in answers[next(k for k in answers if "chart.umd" in k)][2][:200]


async def get_status(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status


@pytest.mark.parametrize("http", ["status_page = false", "status_page_listen = '127.0.0.1:{page}'"])
async def test_the_page_can_be_switched_off_or_served_on_its_own_address(
    sim, world, write_config, http
):
    port, page = free_port(), free_port()
    text = config_toml(source_toml("apify", sim.base_url), listen=f"127.0.0.1:{port}")
    settings = write_config(
        text.replace("[http]\n", f"[http]\n{http.format(page=page)}\n"), env={"APIFY_TOKEN": TOKEN}
    )
    stop = asyncio.Event()
    daemon = asyncio.create_task(scheduler.run_daemon(settings, stop=stop, install_signals=False))
    try:

        async def metrics_served():
            return await get_status(port, "/metrics") == 200

        await eventually(metrics_served, ignoring=(aiohttp.ClientError,))
        assert await get_status(port, "/") == 404
        assert await get_status(port, "/status/charts?days=7") == 404
        if "listen" in http:
            assert await get_status(page, "/") == 200
            assert await get_status(page, "/status/sources") == 200
            assert await get_status(page, "/metrics") == 404  # only the page there
        else:
            with pytest.raises(aiohttp.ClientConnectionError):
                await get_status(page, "/")
    finally:
        stop.set()
        assert await asyncio.wait_for(daemon, 15) == 0


async def test_the_chart_queries_filter_the_runs_through_the_start_day_index(db):
    """A range's read is bounded by the index on the runs' start day (runs_started_day_idx), not
    by the whole table: with sequential scans priced out, every chart query's plan uses it."""
    first, last = TODAY - timedelta(days=6), TODAY
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        for name in ("chart_runs_per_day", "chart_cost_per_day", "chart_durations_per_day"):
            plan = "\n".join(
                row[0] for row in await conn.fetch(f"EXPLAIN {db.q[name]}", first, last)
            )
            assert "runs_started_day_idx" in plan, (name, plan)
            assert "Seq Scan on runs" not in plan, (name, plan)
