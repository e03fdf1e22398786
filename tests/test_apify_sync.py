"""The Apify sync end to end: real Postgres, real HTTP against the simulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpers import (
    assert_matches_upstream,
    begin_on_empty_history,
    eventually,
    interrupted_pass,
    one_pass,
    stored_runs,
)

from worker import runtime, sync

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def seed_history(world, count: int, *, open_every: int = 0) -> None:
    for i in range(count):
        status = "RUNNING" if open_every and i % open_every == 0 else "SUCCEEDED"
        world.add_runs(1, status=status, started_at=T0 + timedelta(minutes=i))


async def test_first_sync_stores_exactly_the_upstreams_runs(world, sim, db, apify_settings):
    seed_history(world, 95, open_every=10)
    # A figure with all of a float's 17 digits survives the trip into numeric exactly.
    world.set_status(world.list_items()[3]["id"], "SUCCEEDED", usage_total_usd=0.30000000000000004)

    result = await one_pass(apify_settings(page_size=10))

    assert result.outcome == "succeeded", result.error
    # The first pass copies the history first, as a backfill pass in windows (two here: 47 and 48
    # runs, 5 pages each, the short fifth page ending each window); then the incremental pass goes
    # on from the copy's end: one page (the newest run, read again within the overlap), then the
    # 10 open runs, every one, whatever its age, in two pages.
    async with db.pool.acquire() as conn:
        records = await conn.fetch("SELECT stream, pages, items FROM runsync.passes ORDER BY id")
    assert [tuple(r) for r in records] == [("backfill", 10, 95), ("incremental", 1 + 2, 1)]
    assert result.pages == 1 + 2
    assert_matches_upstream(await stored_runs(db), world.list_items())
    rows = await stored_runs(db)
    some = world.list_items()[3]
    row = rows[some["id"]]
    assert row["actor_id"] == some["actId"] and row["build_number"] == some["buildNumber"]
    assert row["origin"] == some["meta"]["origin"]
    assert float(row["usage_total_usd"]) == some["usageTotalUsd"]
    assert row["default_dataset_id"] == some["defaultDatasetId"]
    assert row["is_terminal"] == (some["status"] == "SUCCEEDED")


async def test_next_pass_stores_new_runs_and_finished_runs(world, sim, db, apify_settings):
    seed_history(world, 30, open_every=7)
    settings = apify_settings(page_size=10)
    await one_pass(settings)
    assert sum(1 for r in (await stored_runs(db)).values() if not r["is_terminal"]) == 5

    world.finish_open("FAILED")
    world.add_runs(12, status="RUNNING")
    requests_before = sim.requests.copy()
    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    assert_matches_upstream(await stored_runs(db), world.list_items())
    # The five runs that were open were read again one by one; the list read only the new ones.
    assert sim.requests["apify.get_run"] - requests_before["apify.get_run"] == 5
    async with db.pool.acquire() as conn:
        history = await conn.fetch("SELECT previous_status, status FROM runsync.run_status_history")
    assert sorted(tuple(h) for h in history) == [("RUNNING", "FAILED")] * 5


async def test_pass_with_nothing_new_costs_two_requests_and_writes_nothing(
    world, sim, db, apify_settings
):
    seed_history(world, 25)
    settings = apify_settings(page_size=10)
    await one_pass(settings)
    before = sim.requests.copy()

    result = await one_pass(settings)

    assert result.outcome == "succeeded"
    # The newest page of the list, and the list of open runs (empty here)
    assert sum(sim.requests.values()) - sum(before.values()) == 2
    assert result.written == 0
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM runsync.run_status_history") == 0


async def test_killed_pass_resumes_without_losing_or_duplicating(world, sim, db, apify_settings):
    settings = apify_settings(page_size=10)
    # The history arrives after the stream began, so the pass killed below is an incremental walk
    # of it (not the first pass's copy: see test_first_copy).
    await begin_on_empty_history(settings)
    seed_history(world, 100)
    # Cancelled mid-flight: the fourth page's request or write is under way.
    await interrupted_pass(settings, "apify", after_pages=3)

    stored = await stored_runs(db)
    assert 30 <= len(stored) <= 40
    async with db.pool.acquire() as conn:
        watermark = await conn.fetchval(
            "SELECT watermark FROM runsync.checkpoints WHERE stream = 'incremental'"
        )
    # The checkpoint is exactly the newest stored run: never past uncommitted data.
    assert watermark == max(row["started_at"] for row in stored.values())

    world.add_runs(5, status="SUCCEEDED")  # new runs arrive meanwhile
    list_requests = sim.requests["apify.list_user_runs"]
    result = await one_pass(settings)

    assert result.outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db), world.list_items())
    # The resumed walk reads from the checkpoint, not from the beginning.
    assert sim.requests["apify.list_user_runs"] - list_requests <= 9


async def test_page_and_checkpoint_commit_together(world, sim, db, apify_settings):
    settings = apify_settings(page_size=10)
    # The history arrives after the stream began: the pass below walks it incrementally, one page
    # and its checkpoint at a time (not as the first pass's copy).
    await begin_on_empty_history(settings)
    seed_history(world, 50)
    async with db.pool.acquire() as conn:
        # The database refuses the third checkpoint update of the pass in flight, mid-transaction.
        await conn.execute(
            """
            CREATE FUNCTION fail_third() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF (SELECT count(*) FROM runsync.passes
                     WHERE outcome = 'running' AND pages >= 2) > 0 THEN
                    RAISE EXCEPTION 'disk full';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fail_third BEFORE UPDATE ON runsync.checkpoints
                FOR EACH ROW EXECUTE FUNCTION fail_third();
            """
        )
    result = await one_pass(settings)

    assert result.outcome == "failed" and "disk full" in result.error
    stored = await stored_runs(db)
    assert len(stored) == 20  # the third page's runs rolled back with its checkpoint
    async with db.pool.acquire() as conn:
        watermark = await conn.fetchval(
            "SELECT watermark FROM runsync.checkpoints WHERE stream = 'incremental'"
        )
        outcome = await conn.fetchval(
            "SELECT outcome FROM runsync.passes WHERE id = $1", result.pass_id
        )
    assert watermark == max(row["started_at"] for row in stored.values())
    assert outcome == "failed"


async def test_ties_longer_than_a_page_neither_stall_nor_skip(world, sim, db, apify_settings):
    seed_history(world, 5)
    tie = T0 + timedelta(hours=1)
    world.add_runs(23, status="SUCCEEDED", started_at=tie)  # more than two pages at one instant
    world.add_runs(4, status="SUCCEEDED", started_at=tie + timedelta(milliseconds=1))
    settings = apify_settings(page_size=10)

    result = await one_pass(settings)

    assert result.outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db), world.list_items())
    # More runs at the same instant, and after it, arrive before the next pass.
    world.add_runs(3, status="SUCCEEDED", started_at=tie + timedelta(milliseconds=1))
    world.add_runs(2, status="SUCCEEDED", started_at=tie + timedelta(milliseconds=2))
    await one_pass(settings)
    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_a_resurrected_run_is_taken_as_it_is(world, sim, db, apify_settings):
    (run,) = world.add_runs(1, status="RUNNING", started_at=T0)
    settings = apify_settings()
    await one_pass(settings)
    world.set_status(run["id"], "SUCCEEDED", finished_at=T0 + timedelta(minutes=5))
    await one_pass(settings)
    assert (await stored_runs(db))[run["id"]]["status"] == "SUCCEEDED"

    world.set_status(run["id"], "RUNNING")  # Apify resurrects the run
    # A later observation of it: a backfill of all of history, walked again (--restart), since the
    # first pass's copy already finished one and left its mark.
    result = await one_pass(settings, stream=sync.BACKFILL, restart=True)

    assert result.outcome == "succeeded"
    row = (await stored_runs(db))[run["id"]]
    assert row["status"] == "RUNNING" and not row["is_terminal"] and row["finished_at"] is None
    # Open again, so the next incremental pass follows it to its end.
    world.set_status(run["id"], "ABORTED")
    await one_pass(settings)
    assert (await stored_runs(db))[run["id"]]["status"] == "ABORTED"
    async with db.pool.acquire() as conn:
        history = await conn.fetch(
            "SELECT previous_status, status FROM runsync.run_status_history"
            " WHERE run_id = $1 ORDER BY id",
            run["id"],
        )
    assert [tuple(h) for h in history] == [
        ("RUNNING", "SUCCEEDED"),
        ("SUCCEEDED", "RUNNING"),
        ("RUNNING", "ABORTED"),
    ]


async def test_an_earlier_observation_never_replaces_a_later_one(world, sim, db, apify_settings):
    (run,) = world.add_runs(1, status="RUNNING", started_at=T0)
    settings = apify_settings()
    async with runtime.open_runtime(settings) as rt:
        source = rt.stream("apify")
        early = await rt.stream("apify").client.get_json(f"/v2/actor-runs/{run['id']}")
        world.set_status(run["id"], "SUCCEEDED")
        await sync.run_pass(source, rt.store)  # stores the later observation: SUCCEEDED
        stale = source.source.read_run(early.body, early.observed_at)
        async with rt.store.lease("apify", "test") as lease:
            pass_id = await lease.start_pass()
            written = await lease.save_refreshed(pass_id, "apify", [stale], [], [])

    assert written.runs == 0
    assert (await stored_runs(db))[run["id"]]["status"] == "SUCCEEDED"


async def test_a_just_finished_run_is_read_once_more_after_it_settles(
    world, sim, db, apify_settings
):
    (run,) = world.add_runs(1, status="RUNNING", started_at=T0)  # a long run...
    finished = datetime.now(UTC) - timedelta(seconds=13)  # ...finished 13 s ago: 2 s to settle
    world.set_status(run["id"], "SUCCEEDED", finished_at=finished)
    world.add_runs(1, status="SUCCEEDED")  # the watermark moves far past it
    settings = apify_settings()
    await one_pass(settings)
    row = (await stored_runs(db))[run["id"]]
    assert row["recheck_at"] == finished.replace(
        microsecond=finished.microsecond // 1000 * 1000
    ) + timedelta(seconds=15)

    gets = sim.requests["apify.get_run"]
    await one_pass(settings)
    assert sim.requests["apify.get_run"] == gets  # not due yet

    world.set_status(run["id"], "SUCCEEDED", finished_at=finished, usage_total_usd=1.25)

    async def due() -> bool:
        """Both clocks that matter have passed recheck_at: the database's, which says when the
        run is due, and ours, which stamps what a read observed."""
        async with db.pool.acquire() as conn:
            passed = await conn.fetchval("SELECT now() >= $1::timestamptz", row["recheck_at"])
        return passed and datetime.now(UTC) >= row["recheck_at"]

    await eventually(due)
    await one_pass(settings)

    row = (await stored_runs(db))[run["id"]]
    assert sim.requests["apify.get_run"] == gets + 1
    assert row["recheck_at"] is None and float(row["usage_total_usd"]) == 1.25


async def test_a_malformed_item_is_quarantined_and_the_page_goes_on(world, sim, db, apify_settings):
    seed_history(world, 12)
    world.add_raw_item({"status": "RUNNING", "startedAt": "2026-03-01T12:03:30.000Z"},
                       started_at=T0 + timedelta(minutes=3, seconds=30))  # fmt: skip
    world.add_raw_item({"id": "BADTIME", "status": "RUNNING", "startedAt": "yesterday"},
                       started_at=T0 + timedelta(minutes=5, seconds=30))  # fmt: skip
    world.add_raw_item(["not", "an", "object"], started_at=T0 + timedelta(minutes=8, seconds=30))

    result = await one_pass(apify_settings(page_size=5))

    assert result.outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db), world.list_items())
    async with db.pool.acquire() as conn:
        reasons = sorted(
            r["reason"] for r in await conn.fetch("SELECT reason FROM runsync.quarantine")
        )
    assert reasons == [
        "id is missing, not a string",
        "run BADTIME: startedAt 'yesterday' is not an ISO 8601 time",
        "the item is a list, not an object",
    ]


async def test_401_fails_that_source_and_the_others_go_on(world, sim, db, write_config):
    world.add_runs(3, status="SUCCEEDED", started_at=T0)
    settings = write_config(
        f"""
        [[sources]]
        name = "good"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"

        [[sources]]
        name = "revoked"
        kind = "apify"
        token_env = "OLD_TOKEN"
        base_url = "{sim.base_url}"
        """,
        env={"APIFY_TOKEN": "test-token-4f1c9a", "OLD_TOKEN": "revoked-token-77"},
    )
    from worker import scheduler

    results = {r.source: r for r in await scheduler.run_once(settings, [])}

    assert results["good"].outcome == "succeeded"
    assert results["revoked"].outcome == "failed"
    assert "HTTP 401" in results["revoked"].error
    assert "Authentication token is not valid" in results["revoked"].error
    assert "revoked-token-77" not in results["revoked"].error
    assert len(await stored_runs(db, "good")) == 3
    assert len(await stored_runs(db, "revoked")) == 0


async def test_a_backfill_in_windows_stores_exactly_the_upstreams_runs(
    world, sim, db, apify_settings
):
    for i in range(1000):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    # 120 runs at one instant, right where a window boundary falls (the middle of the history).
    world.add_runs(120, status="SUCCEEDED", started_at=T0 + timedelta(seconds=500))
    settings = apify_settings(page_size=25)

    result = await one_pass(settings, stream=sync.BACKFILL)

    assert result.outcome == "succeeded", result.error
    assert_matches_upstream(await stored_runs(db), world.list_items())
    async with db.pool.acquire() as conn:
        checkpoints = await conn.fetch("SELECT stream, cursor FROM runsync.checkpoints")
    # The windows' checkpoints are gone; the backfill's mark says it is done.
    assert [(c["stream"], c["cursor"]["done"]) for c in checkpoints] == [("backfill", True)]
    assert len(checkpoints[0]["cursor"]["windows"]) == 8
    (status,) = await db.status(["apify"])
    assert status["backfills_in_flight"] == 0 and status["runs"] == 1120
    # Each window adds its figures to the pass record as it ends.
    async with db.pool.acquire() as conn:
        record = await conn.fetchrow("SELECT pages, items, written FROM runsync.passes")
    assert (record["pages"], record["items"], record["written"]) == (
        result.pages,
        result.items,
        result.written,
    ) and record["items"] == record["written"] == 1120


async def test_open_runs_cost_one_list_request_until_they_change(world, sim, db, apify_settings):
    seed_history(world, 60, open_every=6)  # ten runs still open, spread over the history
    settings = apify_settings(page_size=100)
    await one_pass(settings)

    def spent(before):
        return (
            sim.requests["apify.list_user_runs"] - before["apify.list_user_runs"],
            sim.requests["apify.get_run"] - before["apify.get_run"],
        )

    before = sim.requests.copy()
    await one_pass(settings)
    # The newest page, then one list of every open status; no run is read on its own.
    assert spent(before) == (2, 0)

    open_ids = [item["id"] for item in world.list_items() if item["status"] == "RUNNING"]
    for run_id in open_ids[:3]:
        world.set_status(run_id, "SUCCEEDED", finished_at=T0 + timedelta(hours=2))
    before = sim.requests.copy()
    await one_pass(settings)

    assert spent(before) == (2, 3)  # only the three that finished are read one by one
    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_an_interrupted_backfill_in_windows_resumes_every_window(
    world, sim, db, apify_settings
):
    for i in range(1000):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    settings = apify_settings(page_size=25)
    await interrupted_pass(settings, "apify", after_pages=6, stream=sync.BACKFILL)

    (status,) = await db.status(["apify"])
    assert status["backfills_in_flight"] == 1  # one backfill, whatever its windows
    async with db.pool.acquire() as conn:
        windows = await conn.fetchval(
            "SELECT count(*) FROM runsync.checkpoints WHERE stream LIKE 'backfill#%'"
        )
    assert windows >= 2
    before = sim.requests["apify.list_user_runs"]

    result = await one_pass(settings, stream=sync.BACKFILL)

    assert result.outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db), world.list_items())
    # Resumed, not started over. Uninterrupted, the walk takes 56 requests: 8 probes, and per
    # window 5 pages of 25 plus the one that finds its end. The pages in flight at the interruption
    # (two per window at most) are all it may repeat.
    resumed = sim.requests["apify.list_user_runs"] - before
    assert resumed < 56 and before + resumed <= 56 + 2 * 8
