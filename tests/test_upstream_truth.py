"""The table says what the upstream says: regression tests for runs that were lost, left stale or
stored wrong (resurrections, items without startedAt, unstorable text and numbers, views merged
into raw, ids shared across projects, runs that change between two passes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from helpers import assert_matches_upstream, one_pass, passes, stored_runs

from worker import sync

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def raker_iso(moment: datetime) -> str:
    """RakerOne's timestamp format, e.g. 2024-06-10T15:22:30Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def apify_iso(moment: datetime) -> str:
    """Apify's timestamp format, e.g. 2019-11-30T07:34:24.202Z."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def raker_history(raker, project: str, count: int, *, days: int = 10) -> datetime:
    """`count` completed runs over the last `days` days, oldest first; returns the newest start."""
    now = datetime.now(UTC).replace(microsecond=0)
    step = timedelta(days=days) / count
    for i in range(count):
        raker.add_runs(
            project, 1, status="completed", started_at=now - timedelta(days=days) + i * step
        )
    return max(datetime.fromisoformat(item["startedAt"]) for item in raker.list_items(project))


async def row(db, run_id: str, source: str = "apify") -> dict:
    """The run's row (one of the source's rows with that id)."""
    async with db.pool.acquire() as conn:
        found = await conn.fetchrow(
            "SELECT * FROM runsync.runs WHERE source = $1 AND run_id = $2", source, run_id
        )
    assert found is not None, f"run {run_id} is not stored"
    return dict(found)


async def scalar(db, query: str, *args):
    async with db.pool.acquire() as conn:
        return await conn.fetchval(query, *args)


async def quarantined(db) -> list[dict]:
    async with db.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch("SELECT reason, raw FROM runsync.quarantine")]


async def make_due_for_recheck(db, run_id: str) -> None:
    """The run's second look falls due now, as it does 15 s after a run read just as it ended."""
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE runsync.runs SET recheck_at = now() WHERE run_id = $1", run_id)


# 1. Resurrected Apify runs are found by polling, whatever their age.


@pytest.mark.parametrize("others_open", [True, False], ids=["newer-runs-open", "nothing-open"])
async def test_a_resurrected_run_older_than_every_open_run_is_found(
    world, sim, db, apify_settings, others_open
):
    """Defect: an Apify run resurrected below the oldest open run (or with none open) was never read again."""
    (oldest,) = world.add_runs(1, status="FAILED", started_at=T0)
    for hour in range(1, 4):
        status = "RUNNING" if others_open else "SUCCEEDED"
        world.add_runs(1, status=status, started_at=T0 + timedelta(hours=hour))
    world.add_runs(2, status="SUCCEEDED", started_at=T0 + timedelta(hours=5))
    settings = apify_settings()
    await one_pass(settings)
    assert (await row(db, oldest["id"]))["status"] == "FAILED"

    # Apify resurrects it: startedAt kept, finishedAt gone.
    world.set_status(oldest["id"], "RUNNING")
    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    stored = await row(db, oldest["id"])
    assert stored["status"] == "RUNNING" and not stored["is_terminal"]
    assert stored["finished_at"] is None
    assert stored["started_at"] == T0

    world.set_status(oldest["id"], "SUCCEEDED", finished_at=T0 + timedelta(hours=6))
    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    stored = await row(db, oldest["id"])
    assert (stored["status"], stored["is_terminal"]) == ("SUCCEEDED", True)
    assert stored["finished_at"] == T0 + timedelta(hours=6)


# 2. RakerOne items without startedAt are runs.


async def test_a_rakerone_item_without_started_at_is_stored_and_followed(
    raker, sim, db, raker_settings
):
    """Defect: a RakerOne item without startedAt (a queued run) was quarantined instead of stored."""
    raker_history(raker, "proj_a", 30)
    now = datetime.now(UTC)
    raker.add_raw_item("proj_a", {"id": "run_q", "status": "queued"}, started_at=now)
    settings = raker_settings()

    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    queued = await row(db, "run_q", "raker")
    assert (queued["status"], queued["is_terminal"]) == ("queued", False)
    assert queued["started_at"] is None
    assert queued["project"] == "proj_a"
    assert await quarantined(db) == []
    stored = await stored_runs(db, "raker")
    stored.pop("run_q")
    assert_matches_upstream(stored, raker.list_items("proj_a"))

    # The run is cancelled before it ever starts: the same id, a new state.
    assert raker.remove_raw_items("proj_a", "run_q") == 1
    raker.add_raw_item("proj_a", {"id": "run_q", "status": "cancelled"}, started_at=now)
    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    cancelled = await row(db, "run_q", "raker")
    assert (cancelled["status"], cancelled["is_terminal"]) == ("cancelled", True)
    assert cancelled["started_at"] is None
    assert await quarantined(db) == []


async def test_an_open_item_without_started_at_among_runs_stops_no_walk(
    raker, sim, db, raker_settings
):
    """Defect: a processing RakerOne item without startedAt was quarantined; the walks must still store every run around it."""
    newest = raker_history(raker, "proj_a", 250)  # three pages of 100
    # Listed just below the newest run: on the page where the next walk reaches its watermark.
    raker.add_raw_item(
        "proj_a",
        {"id": "run_p", "status": "processing", "triggeredBy": "schedule"},
        started_at=newest - timedelta(seconds=2),
    )
    settings = raker_settings()

    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    stored = await stored_runs(db, "raker")
    processing = stored.pop("run_p", None)
    assert processing is not None, "the item without startedAt is not stored"
    assert (processing["status"], processing["started_at"]) == ("processing", None)
    assert_matches_upstream(stored, raker.list_items("proj_a"))

    raker.add_runs("proj_a", 120, status="completed")  # new runs, more than a page
    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    stored = await stored_runs(db, "raker")
    assert stored.pop("run_p")["status"] == "processing"
    assert_matches_upstream(stored, raker.list_items("proj_a"))
    assert await quarantined(db) == []


async def test_a_run_cancelled_before_it_started_deep_in_the_history_is_stored(
    raker, sim, db, raker_settings
):
    """Defect: a RakerOne run cancelled before it started (never a startedAt) was quarantined."""
    raker_history(raker, "proj_a", 500, days=30)
    deep = datetime.now(UTC).replace(microsecond=0) - timedelta(days=29)
    never_started = {
        "id": "run_c",
        "status": "cancelled",
        "finishedAt": raker_iso(deep),
        "triggeredBy": "schedule",
        "result": {"success": False, "details": "Cancelled by user"},
    }
    raker.add_raw_item("proj_a", never_started, started_at=deep)

    (result,) = await passes(raker_settings())

    assert result.outcome == "succeeded", result.error
    stored = await stored_runs(db, "raker")
    cancelled = stored.pop("run_c", None)
    assert cancelled is not None, "the run cancelled before it started is not stored"
    assert (cancelled["status"], cancelled["is_terminal"]) == ("cancelled", True)
    assert cancelled["started_at"] is None and cancelled["finished_at"] == deep
    assert cancelled["raw"] == never_started
    assert_matches_upstream(stored, raker.list_items("proj_a"))
    assert await quarantined(db) == []


# 3. A backfill whose oldest item cannot be read.


async def test_a_backfill_whose_oldest_item_is_unreadable_stores_every_run(
    world, sim, db, apify_settings
):
    """Defect: a windowed Apify backfill whose oldest item could not be read stored nothing."""
    bad = {"id": "bad", "status": 5, "startedAt": apify_iso(T0)}
    world.add_raw_item(bad, started_at=T0)
    for i in range(1, 201):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))

    result = await one_pass(apify_settings(page_size=10), stream=sync.BACKFILL)

    assert result.outcome == "succeeded", result.error
    assert_matches_upstream(await stored_runs(db), world.list_items())
    (kept,) = await quarantined(db)
    assert json.loads(kept["raw"]) == bad


# 4. An open run whose new state holds a NUL or a lone surrogate in free text still gets its status.


@pytest.mark.parametrize(
    ("character", "named", "escaped"),
    [("\x00", "NUL", "\\u0000"), ("\ud800", "lone surrogate", "\\ud800")],
    ids=["NUL", "lone-surrogate"],
)
async def test_an_apify_run_whose_message_postgres_cannot_hold_gets_its_status(
    world, sim, db, apify_settings, character, named, escaped
):
    """Defect: an open Apify run whose new state had a NUL or lone surrogate in statusMessage was quarantined and stayed open."""
    (run,) = world.add_runs(1, status="RUNNING", started_at=T0)
    world.add_runs(3, status="SUCCEEDED", started_at=T0 + timedelta(hours=1))  # far past it
    settings = apify_settings()
    await one_pass(settings)
    assert (await row(db, run["id"]))["status"] == "RUNNING"

    world.set_status(run["id"], "SUCCEEDED", finished_at=T0 + timedelta(minutes=30))
    world.set_detail(run["id"], {"statusMessage": f"a{character}b"})
    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    stored = await row(db, run["id"])
    assert (stored["status"], stored["is_terminal"]) == ("SUCCEEDED", True)
    message = await scalar(
        db, "SELECT raw->>'statusMessage' FROM runsync.runs WHERE run_id = $1", run["id"]
    )
    assert message == f"a{escaped}b"  # the six characters of the escape, as text
    assert stored["notes"] is not None
    assert named in stored["notes"] and "statusMessage" in stored["notes"]


async def test_a_rakerone_run_whose_result_holds_a_nul_gets_its_status(
    raker, sim, db, raker_settings
):
    """Defect: an open RakerOne run whose result held a NUL was quarantined and marked gone, still processing."""
    now = datetime.now(UTC).replace(microsecond=0)
    (run,) = raker.add_runs("proj_a", 1, status="processing", started_at=now - timedelta(hours=3))
    raker.add_runs("proj_a", 5, status="completed", started_at=now - timedelta(hours=1))
    settings = raker_settings()
    await passes(settings)
    assert (await row(db, run["id"], "raker"))["status"] == "processing"

    raker.set_status(
        "proj_a", run["id"], "completed", result={"success": True, "details": "x\x00y"}
    )
    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    stored = await row(db, run["id"], "raker")
    assert (stored["status"], stored["is_terminal"], stored["gone_at"]) == ("completed", True, None)
    details = await scalar(
        db, "SELECT raw->'result'->>'details' FROM runsync.runs WHERE run_id = $1", run["id"]
    )
    assert details == "x\\u0000y"
    assert stored["notes"] is not None and "NUL" in stored["notes"]


# 5. Non-finite numbers.


@pytest.mark.parametrize("token", ["NaN", "Infinity", "1e999"])
async def test_a_non_finite_number_in_a_rakerone_result_neither_loses_the_page_nor_freezes_the_stream(
    raker, sim, db, raker_settings, token
):
    """Defect: a bare NaN, Infinity or 1e999 in a RakerOne result failed the page's write on every pass."""
    now = datetime.now(UTC).replace(microsecond=0)
    for minutes in range(10, 0, -1):  # ten runs, oldest first
        raker.add_runs("proj_a", 1, status="completed", started_at=now - timedelta(minutes=minutes))
    # Newest first, seven runs, the item, then three older runs on the same page.
    started = now - timedelta(minutes=7, seconds=30)
    item = {
        "id": "run_odd",
        "status": "completed",
        "startedAt": raker_iso(started),
        "finishedAt": raker_iso(started + timedelta(seconds=20)),
        "triggeredBy": "schedule",
        "result": {"success": True, "score": "@score"},
    }
    body = json.dumps(item, separators=(",", ":")).replace('"@score"', token).encode()
    raker.add_raw_item("proj_a", body, started_at=started)
    settings = raker_settings()

    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    stored = await stored_runs(db, "raker")
    odd = stored.pop("run_odd", None)
    assert odd is not None, "the run with a non-finite number is not stored"
    assert odd["status"] == "completed"
    assert_matches_upstream(stored, raker.list_items("proj_a"))
    score = await scalar(
        db, "SELECT raw->'result'->>'score' FROM runsync.runs WHERE run_id = 'run_odd'"
    )
    assert score == token  # the token, kept as a JSON string
    assert odd["notes"] is not None
    if token != "1e999":
        assert token in odd["notes"]

    (later,) = raker.add_runs("proj_a", 1, status="completed")
    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    assert later["id"] in await stored_runs(db, "raker")


async def test_a_nan_usage_in_an_apify_item_is_no_number(world, sim, db, apify_settings):
    """Defect: an Apify item with usageTotalUsd NaN stored the numeric NaN and dropped it from raw."""
    (run,) = world.add_runs(1, status="SUCCEEDED", started_at=T0)
    world.delete_run(run["id"])
    world.add_raw_item({**run, "usageTotalUsd": float("nan")}, started_at=T0)
    world.add_runs(2, status="SUCCEEDED", started_at=T0 + timedelta(minutes=1))

    result = await one_pass(apify_settings())

    assert result.outcome == "succeeded", result.error
    stored = await row(db, run["id"])
    assert stored["status"] == "SUCCEEDED"
    assert stored["usage_total_usd"] is None  # SQL NULL, never the numeric NaN
    raw_usage = await scalar(
        db, "SELECT raw->>'usageTotalUsd' FROM runsync.runs WHERE run_id = $1", run["id"]
    )
    assert raw_usage == "NaN"
    assert stored["notes"] is not None and "NaN" in stored["notes"]


# 6. Typed columns and raw agree.


@pytest.mark.parametrize("usage", ["omitted", "null"])
async def test_a_list_item_without_the_usage_keeps_the_stored_usage(
    world, sim, db, apify_settings, usage
):
    """Defect: a later Apify list item without usageTotalUsd emptied usage_total_usd while raw kept 1.5."""
    (run,) = world.add_runs(1, status="SUCCEEDED", started_at=T0)
    world.set_status(
        run["id"], "SUCCEEDED", finished_at=T0 + timedelta(minutes=5), usage_total_usd=1.5
    )
    settings = apify_settings()
    await one_pass(settings)
    assert float((await row(db, run["id"]))["usage_total_usd"]) == 1.5

    (item,) = world.list_items()
    world.delete_run(run["id"])
    later = {**item, "statusMessage": "Finished"}  # same status; the item says something new
    if usage == "omitted":
        del later["usageTotalUsd"]
    else:
        later["usageTotalUsd"] = None
    world.add_raw_item(later, started_at=T0)
    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    stored = await row(db, run["id"])
    assert stored["status"] == "SUCCEEDED" and stored["raw"]["statusMessage"] == "Finished"
    assert stored["usage_total_usd"] is not None and float(stored["usage_total_usd"]) == 1.5
    raw_usage = await scalar(
        db, "SELECT raw->>'usageTotalUsd' FROM runsync.runs WHERE run_id = $1", run["id"]
    )
    assert raw_usage == "1.5"


async def test_a_resurrection_read_by_the_single_run_endpoint_replaces_raw(
    world, sim, db, apify_settings
):
    """Defect: raw kept the exitCode of a finished Apify run after the single-run endpoint showed it running again."""
    (run,) = world.add_runs(1, status="RUNNING", started_at=T0)
    world.add_runs(3, status="SUCCEEDED", started_at=T0 + timedelta(hours=1))  # far past it
    settings = apify_settings()
    await one_pass(settings)
    world.set_status(run["id"], "SUCCEEDED")  # read one by one, just as it ends
    await one_pass(settings)
    stored = await row(db, run["id"])
    assert stored["status"] == "SUCCEEDED" and stored["raw"]["exitCode"] == 0

    world.set_status(run["id"], "RUNNING")  # resurrected: no exit code any more
    world.set_detail(run["id"], omit=["exitCode"])
    await make_due_for_recheck(db, run["id"])
    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    stored = await row(db, run["id"])
    assert stored["status"] == "RUNNING" and not stored["is_terminal"]
    assert stored["finished_at"] is None
    assert "exitCode" not in stored["raw"]
    assert "finishedAt" not in stored["raw"] or stored["raw"]["finishedAt"] is None


async def test_a_single_run_answer_without_a_key_removes_it_from_raw(
    world, sim, db, apify_settings
):
    """Defect: a key the single-run endpoint no longer returned stayed in raw forever."""
    (run,) = world.add_runs(1, status="RUNNING", started_at=T0)
    world.add_runs(3, status="SUCCEEDED", started_at=T0 + timedelta(hours=1))  # far past it
    settings = apify_settings()
    await one_pass(settings)
    world.set_status(run["id"], "SUCCEEDED")  # read one by one, just as it ends
    world.set_detail(run["id"], {"statusMessage": "Finishing up"})
    await one_pass(settings)
    assert (await row(db, run["id"]))["raw"]["statusMessage"] == "Finishing up"

    world.set_detail(run["id"], omit=("statusMessage",))  # the settled answer has none
    await make_due_for_recheck(db, run["id"])
    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    stored = await row(db, run["id"])
    assert stored["status"] == "SUCCEEDED"
    assert "statusMessage" not in stored["raw"]
    assert stored["raw"] == world.get(run["id"])  # the settled answer, as it is


# 7. RakerOne run ids are unique only within a project.


async def test_the_same_run_id_in_two_projects_is_two_runs(raker, sim, db, raker_settings):
    """Defect: RakerOne runs of two projects that share an id were stored as one row."""
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for project, status in (("proj_a", "completed"), ("proj_b", "failed")):
        raker.add_runs(project, 3, status="completed", started_at=started - timedelta(hours=1))
        twin = {
            "id": "run_twin",
            "status": status,
            "startedAt": raker_iso(started),
            "finishedAt": raker_iso(started + timedelta(minutes=2)),
            "triggeredBy": "schedule",
            "result": {"success": status == "completed", "details": f"in {project}"},
        }
        raker.add_raw_item(project, twin, started_at=started)

    results = await passes(raker_settings(projects=("proj_a", "proj_b")))

    assert [r.outcome for r in results] == ["succeeded", "succeeded"]
    async with db.pool.acquire() as conn:
        twins = await conn.fetch(
            "SELECT project, status, raw->'result'->>'details' AS details FROM runsync.runs"
            " WHERE source = 'raker' AND run_id = 'run_twin' ORDER BY project"
        )
        runs = await conn.fetchval("SELECT count(*) FROM runsync.runs WHERE source = 'raker'")
    assert [tuple(t) for t in twins] == [
        ("proj_a", "completed", "in proj_a"),
        ("proj_b", "failed", "in proj_b"),
    ]
    assert runs == 8


# 8. A reconcile sweep catches what changed between two passes.


async def test_a_run_resurrected_and_finished_between_passes_is_caught_by_reconcile(
    world, sim, db, apify_settings
):
    """Defect: an Apify run resurrected and finished again between two passes kept its old state forever."""
    now = datetime.now(UTC).replace(microsecond=0)
    (run,) = world.add_runs(1, status="TIMED-OUT", started_at=now - timedelta(hours=3))
    world.set_status(
        run["id"], "TIMED-OUT", finished_at=now - timedelta(hours=2), usage_total_usd=0.13
    )
    world.add_runs(3, status="SUCCEEDED", started_at=now - timedelta(hours=1))
    settings = apify_settings()
    await one_pass(settings)
    stored = await row(db, run["id"])
    assert stored["status"] == "TIMED-OUT" and float(stored["usage_total_usd"]) == 0.13

    # Between two passes: resurrected, then finished again.
    world.set_status(run["id"], "RUNNING")
    finished = now - timedelta(minutes=10)
    world.set_status(run["id"], "SUCCEEDED", finished_at=finished, usage_total_usd=139.75)
    result = await one_pass(settings, stream=sync.RECONCILE)

    assert result.outcome == "succeeded", result.error
    stored = await row(db, run["id"])
    assert (stored["status"], stored["is_terminal"]) == ("SUCCEEDED", True)
    assert float(stored["usage_total_usd"]) == 139.75 and stored["finished_at"] == finished
    async with db.pool.acquire() as conn:
        history = await conn.fetch(
            "SELECT previous_status, status FROM runsync.run_status_history"
            " WHERE run_id = $1 ORDER BY id",
            run["id"],
        )
    assert [tuple(h) for h in history] == [("TIMED-OUT", "SUCCEEDED")]
