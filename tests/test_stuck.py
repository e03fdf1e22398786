"""One page that cannot be read or stored never freezes a stream (DESIGN.md, invariant 9).

New runs and the open runs' changes keep flowing past a stuck page; the pass that meets it fails
and says so, and the next pass tries again.
"""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from helpers import (
    FaultOn,
    assert_matches_upstream,
    begin_on_empty_history,
    interrupted_pass,
    one_pass,
    passes,
    stored_runs,
)

NOW = datetime.now(UTC).replace(microsecond=0)


async def test_a_walk_stuck_on_a_page_lets_new_runs_and_open_runs_through(
    raker, sim, db, raker_settings
):
    for i in range(20):
        raker.add_runs(
            "proj_a", 1, status="completed", started_at=NOW - timedelta(hours=3, minutes=i)
        )
    (still_open,) = raker.add_runs(
        "proj_a", 1, status="processing", started_at=NOW - timedelta(hours=2)
    )
    settings = raker_settings(extra="page_size = 5\nmax_retries = 0")
    await passes(settings)
    for i in range(30):  # the next walk needs several pages to get back down to the watermark
        raker.add_runs(
            "proj_a", 1, status="completed", started_at=NOW - timedelta(hours=1, minutes=i)
        )
    await interrupted_pass(settings, "raker", after_pages=1)
    async with db.pool.acquire() as conn:
        cursor = await conn.fetchval("SELECT cursor ->> 'cursor' FROM runsync.checkpoints")
    sim.faults = FaultOn(urlencode({"cursor": cursor}), "bad-json")  # the next page, for good
    newcomers = raker.add_runs(
        "proj_a", 2, status="completed", started_at=NOW - timedelta(minutes=1)
    )
    raker.set_status("proj_a", still_open["id"], "completed")

    (result,) = await passes(settings)

    assert result.outcome == "failed" and "JSON" in result.error  # reported, never skipped
    stored = await stored_runs(db, "raker")
    assert {run["id"] for run in newcomers} <= stored.keys()  # new runs flow past the stuck page
    assert stored[still_open["id"]]["status"] == "completed"  # and so do open runs' changes
    async with db.pool.acquire() as conn:
        after = await conn.fetchval("SELECT cursor ->> 'cursor' FROM runsync.checkpoints")
    assert after == cursor  # the stuck page is tried again, from where the walk stood

    sim.faults = None  # the page reads again: the walk ends and nothing was lost
    (result,) = await passes(settings)
    assert result.outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))


async def test_a_run_the_database_refuses_is_quarantined_and_the_page_is_stored(
    raker, sim, db, raker_settings
):
    runs = [
        raker.add_runs("proj_a", 1, status="completed", started_at=NOW - timedelta(minutes=i))[0]
        for i in range(8)
    ]
    # An id of 9,000 random letters: too large for the primary key's index, whatever the page.
    huge = "".join(random.Random(3).choices(string.ascii_letters, k=9000))
    poison = {
        "id": huge,
        "status": "completed",
        "startedAt": (NOW - timedelta(minutes=2, seconds=30)).isoformat(),
    }
    raker.add_raw_item("proj_a", poison, started_at=NOW - timedelta(minutes=2, seconds=30))
    settings = raker_settings(extra="page_size = 5")

    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    assert result.quarantined == 1
    assert (result.inserted, result.updated) == (8, 0)  # the page's others, merged one by one
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))
    async with db.pool.acquire() as conn:
        (reason,) = await conn.fetch("SELECT reason FROM runsync.quarantine")
    assert reason["reason"].startswith(f"run {huge[:40]}: the database refused it: ")
    # The next pass is not held up either: a new run is stored, and a changed one beside it.
    (new,) = raker.add_runs("proj_a", 1, status="completed")
    raker.set_status("proj_a", runs[1]["id"], "failed")
    (result,) = await passes(settings)
    assert result.outcome == "succeeded" and new["id"] in await stored_runs(db, "raker")
    assert (result.inserted, result.updated, result.quarantined) == (1, 1, 1)
    assert (await stored_runs(db, "raker"))[runs[1]["id"]]["status"] == "failed"


async def test_an_answer_over_the_size_cap_is_asked_for_again_in_smaller_pages(
    world, sim, db, apify_settings
):
    settings = apify_settings(page_size=1000, extra="max_response_mb = 1")
    # The runs arrive after the stream began: the pass below reads them as an incremental walk,
    # whose pages are counted below (a first pass's copy would walk them in windows).
    await begin_on_empty_history(settings)
    planted = []
    for i in range(800):  # 2.4 kB a run: a page of 1,000 would be 1.9 MB, over a 1 MB cap
        started = NOW - timedelta(hours=2) + timedelta(seconds=i)
        run = {"id": f"big{i:04d}", "status": "SUCCEEDED", "startedAt": started.isoformat(),
               "finishedAt": started.isoformat(), "statusMessage": "x" * 2300}  # fmt: skip
        world.add_raw_item(run, started_at=started)
        planted.append(run["id"])

    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    assert sorted(await stored_runs(db)) == planted
    # Refused at 1,000 and 500 a page; read at 250.
    assert result.pages == 4 + 1  # and the list of open runs
