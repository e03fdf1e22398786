"""The guards that keep a wrong answer from becoming wrong data: the overlap before the
watermark, the page's one transaction, answers read again, and the single-run endpoint's id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpers import (
    FaultOn,
    assert_matches_upstream,
    begin_on_empty_history,
    one_pass,
    stored_runs,
)

NOW = datetime.now(UTC).replace(microsecond=0)


async def quarantine(db) -> list[str]:
    async with db.pool.acquire() as conn:
        return [r["reason"] for r in await conn.fetch("SELECT reason FROM runsync.quarantine")]


async def test_a_run_that_shows_up_late_inside_the_overlap_is_read(world, sim, db, apify_settings):
    for i in range(12):
        world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(minutes=10, seconds=-i))
    settings = apify_settings(page_size=5)
    await one_pass(settings)
    async with db.pool.acquire() as conn:
        watermark = await conn.fetchval("SELECT watermark FROM runsync.checkpoints")
    # Started two seconds before the newest run stored, but listed only now (overlap: 5 s).
    world.add_runs(1, status="SUCCEEDED", started_at=watermark - timedelta(seconds=2))

    await one_pass(settings)

    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_a_page_whose_runs_cannot_be_written_leaves_the_checkpoint_where_it_was(
    world, sim, db, apify_settings
):
    settings = apify_settings(page_size=5)
    # The runs arrive after the stream began: the pass below walks them incrementally, page by
    # page with its checkpoint (not as the first pass's copy).
    await begin_on_empty_history(settings)
    runs = [
        world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(hours=1, minutes=-i))[0]
        for i in range(12)
    ]
    async with db.pool.acquire() as conn:  # the database fails the write of one run's page
        await conn.execute(f"""
            CREATE FUNCTION fail_one() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.run_id = '{runs[7]["id"]}' THEN
                    RAISE EXCEPTION 'injected failure' USING ERRCODE = 'XX000';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fail_one BEFORE INSERT ON runsync.runs
                FOR EACH ROW EXECUTE FUNCTION fail_one();
        """)  # fmt: skip

    result = await one_pass(settings)

    assert result.outcome == "failed" and "injected failure" in result.error
    async with db.pool.acquire() as conn:
        checkpoint = await conn.fetchrow(
            "SELECT watermark, cursor FROM runsync.checkpoints WHERE stream = 'incremental'"
        )
        await conn.execute("DROP TRIGGER fail_one ON runsync.runs")
    # The first page's runs and checkpoint committed; the second page's did not, nor its mark.
    assert checkpoint["watermark"] == datetime.fromisoformat(runs[4]["startedAt"])
    assert len(await stored_runs(db)) == 5
    assert (await one_pass(settings)).outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_a_page_garbled_on_the_way_is_read_again_and_nothing_is_quarantined(
    world, sim, db, apify_settings
):
    for i in range(9):
        world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(hours=1, minutes=-i))
    sim.faults = FaultOn("/v2/actor-runs?limit=", "wrong-types", times=1)

    result = await one_pass(apify_settings(page_size=5))

    assert result.outcome == "succeeded" and sum(sim.faults.injected.values()) >= 1
    assert await quarantine(db) == []
    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_a_single_run_garbled_on_the_way_is_read_again(world, sim, db, apify_settings):
    run, settings = await open_run_finished(world, sim, db, apify_settings)
    sim.faults = FaultOn(f"/v2/actor-runs/{run['id']}?", "wrong-types", times=1)

    await one_pass(settings)

    assert sim.faults.injected["wrong-types"] == 1
    assert await quarantine(db) == []
    assert (await stored_runs(db))[run["id"]]["status"] == "SUCCEEDED"


async def test_a_single_run_answer_about_another_run_is_refused(world, sim, db, apify_settings):
    (run,) = world.add_runs(1, status="RUNNING", started_at=NOW - timedelta(hours=2))
    (other,) = world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(hours=1))
    settings = apify_settings()
    await one_pass(settings)
    world.set_status(run["id"], "FAILED")
    world.settle_all()
    world.set_detail(run["id"], {"id": other["id"], "status": "ABORTED"})  # the wrong run's id

    await one_pass(settings)

    stored = await stored_runs(db)
    assert stored[other["id"]]["status"] == "SUCCEEDED"  # not overwritten by the answer
    assert stored[run["id"]]["status"] == "RUNNING"  # not read: still followed
    (reason,) = await quarantine(db)
    assert reason == f"asked for run {run['id']}, got run {other['id']}"


async def test_an_item_garbled_alike_on_every_read_is_read_again_by_id_and_let_go(
    world, sim, db, apify_settings
):
    """A page garbled the same way on both reads looks like a bad item; the run is read again by
    id, stored, and its quarantined item let go: the quarantine holds only what stays bad."""
    settings = apify_settings(page_size=10)
    # The runs arrive after the stream began: the incremental pass reads their page by one
    # request, garbled twice (a first pass's copy would read it by requests of its own).
    await begin_on_empty_history(settings)
    for i in range(6):
        world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(hours=1, minutes=-i))
    sim.faults = FaultOn("/v2/actor-runs?limit=", "wrong-types", times=2)

    result = await one_pass(settings)

    assert result.outcome == "succeeded" and sim.faults.injected["wrong-types"] == 2
    assert result.quarantined >= 1  # quarantined on the way
    assert await quarantine(db) == []  # and let go once read well
    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_a_page_that_reads_differently_every_time_fails_and_is_read_again(
    world, sim, db, apify_settings
):
    """No read agrees on which items are unreadable: nothing is quarantined and nothing skipped;
    the pass fails, the checkpoint stays, and the next pass reads the page again."""
    for i in range(9):
        world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(hours=1, minutes=-i))
    settings = apify_settings(page_size=9)
    sim.faults = FaultOn("/v2/actor-runs?limit=", "wrong-types", alike=False)

    result = await one_pass(settings)

    assert result.outcome == "failed" and "differed on each of 4 reads" in result.error
    assert await quarantine(db) == [] and await stored_runs(db) == {}
    sim.faults = None
    assert (await one_pass(settings)).outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_a_task_run_that_shows_up_late_inside_the_overlap_is_read(
    world, sim, db, apify_settings
):
    """The task list is walked newest first: it too goes on a little below the watermark."""
    task = world.tasks[0]["id"]
    for i in range(8):
        world.add_runs(1, status="SUCCEEDED", task_id=task,
                       started_at=NOW - timedelta(minutes=10, seconds=-i))  # fmt: skip
    # Pages of two: the first page of the next pass already reaches the watermark.
    settings = apify_settings(page_size=2, extra=f'task = "{task}"')
    await one_pass(settings)
    async with db.pool.acquire() as conn:
        watermark = await conn.fetchval("SELECT watermark FROM runsync.checkpoints")
    (late,) = world.add_runs(1, status="SUCCEEDED", task_id=task,
                             started_at=watermark - timedelta(seconds=2))  # fmt: skip

    result = await one_pass(settings)

    assert result.outcome == "succeeded" and late["id"] in await stored_runs(db)
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT watermark FROM runsync.checkpoints") == watermark


async def test_an_open_run_the_single_run_endpoint_no_longer_has_is_marked_gone(
    world, sim, db, apify_settings
):
    (deleted,) = world.add_runs(1, status="RUNNING", started_at=NOW - timedelta(hours=2))
    (kept,) = world.add_runs(1, status="RUNNING", started_at=NOW - timedelta(hours=1))
    settings = apify_settings()
    await one_pass(settings)
    world.delete_run(deleted["id"])  # the open list no longer has it: read alone, a 404

    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    stored = await stored_runs(db)
    assert stored[deleted["id"]]["gone_at"] is not None
    assert (stored[kept["id"]]["status"], stored[kept["id"]]["gone_at"]) == ("RUNNING", None)
    assert await quarantine(db) == []


async def open_run_finished(world, sim, db, apify_settings) -> tuple[dict, object]:
    """An open run stored by a first pass, finished since: the next pass reads it alone."""
    (run,) = world.add_runs(1, status="RUNNING", started_at=NOW - timedelta(hours=1))
    world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(minutes=30))  # the newest
    settings = apify_settings()
    await one_pass(settings)
    world.set_status(run["id"], "SUCCEEDED")
    world.settle_all()
    return run, settings


async def test_a_single_run_garbled_the_same_way_twice_is_quarantined_after_two_reads(
    world, sim, db, apify_settings
):
    run, settings = await open_run_finished(world, sim, db, apify_settings)
    sim.faults = FaultOn(f"/v2/actor-runs/{run['id']}?", "wrong-types")

    await one_pass(settings)

    assert sum(sim.faults.asked.values()) == 2  # the second read says the first was no accident
    assert len(await quarantine(db)) == 1
    assert (await stored_runs(db))[run["id"]]["status"] == "RUNNING"  # still followed


async def test_a_single_run_garbled_differently_each_time_fails_the_pass_after_four_reads(
    world, sim, db, apify_settings
):
    run, settings = await open_run_finished(world, sim, db, apify_settings)
    sim.faults = FaultOn(f"/v2/actor-runs/{run['id']}?", "wrong-types", alike=False)

    result = await one_pass(settings)

    assert sum(sim.faults.asked.values()) == 4  # walk.PAGE_READS, and no two alike
    assert result.outcome == "failed" and "differed on each of 4 reads" in result.error
    assert await quarantine(db) == []  # a transient is never quarantined
    assert (await stored_runs(db))[run["id"]]["status"] == "RUNNING"  # still followed
