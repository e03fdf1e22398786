"""The analytics views (sql/migrations/0005): each figure equals the one computed in Python from
the same rows of runsync.runs.

Percentiles are Postgres's percentile_cont (linear interpolation between the two nearest runs, in
float8), which `percentile_cont` below computes the same way, then rounded to ms as the view does.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from helpers import one_pass, passes

DAY = timedelta(days=1)
# 10:00 UTC, a few days back: a day's runs never spill into the next one.
MORNING = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) - DAY


def percentile_cont(values: list[Decimal], fraction: float) -> Decimal:
    """Postgres's percentile_cont over float8, then ::numeric (15 digits) and round(…, 3)."""
    ordered = sorted(float(v) for v in values)
    position = fraction * (len(ordered) - 1)
    low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
    value = low + (position - math.floor(position)) * (high - low)
    return Decimal(f"{value:.15g}").quantize(Decimal("0.001"), ROUND_HALF_UP)


def rate(part: int, whole: int) -> Decimal | None:
    return (Decimal(part) / whole).quantize(Decimal("0.0001"), ROUND_HALF_UP) if whole else None


def succeeded(row: dict) -> bool | None:
    if not row["is_terminal"]:
        return None
    if row["upstream"] == "apify":
        return row["status"] == "SUCCEEDED"
    return row["status"].lower() == "completed"


def expected_views(rows: list[dict]) -> dict[str, dict]:
    """The four views' rows, keyed by their grouping columns, computed from runs rows."""
    groups = defaultdict(list)
    for row in rows:
        day = row["started_at"].astimezone(UTC).date()
        groups[day, row["source"], row["upstream"], row["actor_id"] or row["project"]].append(row)
    per_day, rates, durations = {}, {}, {}
    for key, runs in groups.items():
        for status in {r["status"] for r in runs}:
            same = [r for r in runs if r["status"] == status]
            per_day[(*key, status)] = {
                "runs": len(same),
                "gone_runs": sum(r["gone_at"] is not None for r in same),
            }
        terminal = sum(r["is_terminal"] for r in runs)
        ok = sum(succeeded(r) is True for r in runs)
        rates[key] = {
            "terminal_runs": terminal,
            "succeeded_runs": ok,
            "open_runs": len(runs) - terminal,
            "success_rate": rate(ok, terminal),
        }
        finished = [
            Decimal((r["finished_at"] - r["started_at"]) / timedelta(microseconds=1)) / 1_000_000
            for r in runs
            if r["finished_at"] is not None
        ]
        if finished:
            durations[key] = {
                "finished_runs": len(finished),
                "p50_seconds": percentile_cont(finished, 0.5),
                "p90_seconds": percentile_cont(finished, 0.9),
                "p99_seconds": percentile_cont(finished, 0.99),
                "max_seconds": max(finished),
            }
    # Cost: each Apify run once, as last observed, whichever sources stored it.
    latest: dict[str, dict] = {}
    for row in rows:
        if row["upstream"] == "apify":
            seen = latest.get(row["run_id"])
            if seen is None or row["observed_at"] > seen["observed_at"]:
                latest[row["run_id"]] = row
    costs: dict[tuple, dict] = {}
    for row in latest.values():
        key = (row["started_at"].astimezone(UTC).date(), row["actor_id"])
        cost = costs.setdefault(key, {"runs": 0, "open_runs": 0, "usage_total_usd": Decimal(0)})
        cost["runs"] += 1
        cost["open_runs"] += not row["is_terminal"]
        cost["usage_total_usd"] += row["usage_total_usd"] or 0
    return {
        "runs_per_day": per_day,
        "success_rate_per_day": rates,
        "duration_per_day": durations,
        "cost_per_actor_per_day": costs,
    }


KEYS = {
    "runs_per_day": ("day", "source", "upstream", "scope", "status"),
    "success_rate_per_day": ("day", "source", "upstream", "scope"),
    "duration_per_day": ("day", "source", "upstream", "scope"),
    "cost_per_actor_per_day": ("day", "actor_id"),
}


async def read_views(conn) -> dict[str, dict]:
    views = {}
    for view, key in KEYS.items():
        rows = await conn.fetch(f"SELECT * FROM runsync.{view}")
        views[view] = {
            tuple(row[k] for k in key): {k: v for k, v in row.items() if k not in key}
            for row in rows
        }
    return views


async def all_runs(conn) -> list[dict]:
    return [dict(row) for row in await conn.fetch("SELECT * FROM runsync.runs")]


def assert_views_match(views: dict, expected: dict) -> None:
    for view, rows in expected.items():
        assert views[view].keys() == rows.keys(), view
        for key, figures in rows.items():
            assert views[view][key] == figures, (view, key)


async def test_views_over_synced_apify_and_rakerone_runs(world, raker, sim, db, write_config):
    # Four days: mixed outcomes, a day whose runs are all still open, and a run deleted upstream.
    for days_ago, status, count in [
        (4, "SUCCEEDED", 9), (4, "FAILED", 3), (4, "TIMED-OUT", 1),
        (3, "SUCCEEDED", 5), (3, "ABORTED", 2), (3, "RUNNING", 2),
        (2, "RUNNING", 4),
    ]:  # fmt: skip
        for i in range(count):
            world.add_runs(
                1, status=status, started_at=MORNING - days_ago * DAY + i * timedelta(minutes=7)
            )
    doomed = world.add_runs(1, status="RUNNING", started_at=MORNING - 3 * DAY)[0]["id"]
    for project, days_ago, status, count in [
        ("proj_a", 4, "completed", 6), ("proj_a", 4, "failed", 2), ("proj_a", 3, "processing", 3),
        ("proj_b", 3, "completed", 4), ("proj_b", 3, "cancelled", 1), ("proj_b", 2, "needs_review", 2),
    ]:  # fmt: skip
        for i in range(count):
            raker.add_runs(
                project,
                1,
                status=status,
                started_at=MORNING - days_ago * DAY + i * timedelta(seconds=61),
            )
    settings = write_config(
        f"""
        [[sources]]
        name = "apify"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        page_size = 10

        [[sources]]
        name = "raker"
        kind = "rakerone"
        token_env = "RAKER_TOKEN"
        base_url = "{sim.base_url}"
        projects = ["proj_a", "proj_b"]
        """
    )
    assert (await one_pass(settings, "apify")).outcome == "succeeded"
    world.delete_run(doomed)  # Apify's retention removed it: stored as gone, kept in history
    assert (await one_pass(settings, "apify")).outcome == "succeeded"
    assert all(p.outcome == "succeeded" for p in await passes(settings, "raker"))

    async with db.pool.acquire() as conn:
        rows, views = await all_runs(conn), await read_views(conn)

    assert {row["source"] for row in rows} == {"apify", "raker"} and len(rows) == 27 + 18
    assert [r["run_id"] for r in rows if r["gone_at"] is not None] == [doomed]
    assert_views_match(views, expected_views(rows))
    open_day = (MORNING - 2 * DAY).date()
    apify_open_day = [
        v for k, v in views["success_rate_per_day"].items() if k[:2] == (open_day, "apify")
    ]
    assert apify_open_day and all(
        v["terminal_runs"] == 0 and v["success_rate"] is None for v in apify_open_day
    )
    assert sum(v["gone_runs"] for v in views["runs_per_day"].values()) == 1
    assert sum(v["runs"] for v in views["runs_per_day"].values()) == len(rows)


def run(run_id: str, started_at: datetime, **fields) -> dict:
    upstream = fields.pop("upstream", "apify")
    row = {
        "source": fields.pop("source", upstream),
        "run_id": run_id,
        "upstream": upstream,
        "status": "SUCCEEDED",
        "is_terminal": True,
        "started_at": started_at,
        "finished_at": None,
        "actor_id": "act_1" if upstream == "apify" else None,
        "project": "proj_1" if upstream == "rakerone" else None,
        "usage_total_usd": None,
        "gone_at": None,
        "observed_at": started_at + timedelta(hours=1),
        **fields,
    }
    # What the readers say of such a run (apify.read_item, rakerone.read_item).
    success = "SUCCEEDED" if upstream == "apify" else "completed"
    row.setdefault("scope", row["actor_id"] or row["project"])
    row.setdefault(
        "succeeded", row["status"].casefold() == success.casefold() if row["is_terminal"] else None
    )
    return row


async def insert(conn, runs: list[dict]) -> None:
    columns = list(runs[0])
    await conn.executemany(
        f"INSERT INTO runsync.runs ({', '.join(columns)}, raw) "
        f"VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))}, '{{}}'::jsonb)",
        [[r[c] for c in columns] for r in runs],
    )


async def test_edge_cases_of_the_views(db):
    day = datetime(2026, 3, 9, tzinfo=UTC)
    late = day + timedelta(hours=23, minutes=30)  # still 9 March in UTC, 10 March in Tokyo
    runs = [
        # Durations 1..10 s, and the gone run's 5 s: p99 interpolates between 9 and 10.
        *(
            run(
                f"d{i}",
                late,
                finished_at=late + timedelta(seconds=i),
                usage_total_usd=Decimal("0.1"),
            )
            for i in range(1, 11)
        ),
        run("no-end", day, finished_at=None, usage_total_usd=Decimal("0.2")),  # terminal, no end
        run(
            "gone",
            day,
            status="FAILED",
            gone_at=day + 3 * DAY,
            finished_at=day + timedelta(seconds=5),
        ),
        # The same run stored by the account's source and by an actor's source, seen later there.
        run(
            "twice",
            day,
            source="apify-actor",
            usage_total_usd=Decimal("0.7"),
            observed_at=day + 2 * DAY,
        ),
        run("twice", day, source="apify", usage_total_usd=Decimal("0.3")),
        # A day of runs all still open.
        run(
            "open1", day + DAY, status="RUNNING", is_terminal=False, usage_total_usd=Decimal("0.05")
        ),
        # RakerOne: success is "completed" in any case; a configured terminal status is not one.
        run(
            "r1",
            day,
            upstream="rakerone",
            status="completed",
            finished_at=day + timedelta(seconds=30),
        ),
        run(
            "r2",
            day,
            upstream="rakerone",
            status="Completed",
            finished_at=day + timedelta(seconds=60),
        ),
        run(
            "r3",
            day,
            upstream="rakerone",
            status="rejected",
            finished_at=day + timedelta(seconds=90),
        ),
        run("r4", day, upstream="rakerone", status="needs_review", is_terminal=False),
    ]
    async with db.pool.acquire() as conn:
        await insert(conn, runs)
        await conn.execute("SET TIME ZONE 'Asia/Tokyo'")  # days are UTC days whatever the session's
        views = await read_views(conn)
        rows = await all_runs(conn)

    assert_views_match(views, expected_views(rows))
    d = day.date()
    assert views["duration_per_day"][d, "apify", "apify", "act_1"] == {
        "finished_runs": 11,  # 1..10 s and the gone run's 5 s; "no-end" has no duration
        "p50_seconds": Decimal("5.000"),
        "p90_seconds": Decimal("9.000"),
        "p99_seconds": Decimal("9.900"),
        "max_seconds": Decimal("10.000000"),
    }
    assert views["success_rate_per_day"][d, "apify", "apify", "act_1"] == {
        "terminal_runs": 13,
        "succeeded_runs": 12,
        "open_runs": 0,
        "success_rate": Decimal("0.9231"),
    }
    assert views["success_rate_per_day"][d + DAY, "apify", "apify", "act_1"] == {
        "terminal_runs": 0,
        "succeeded_runs": 0,
        "open_runs": 1,
        "success_rate": None,
    }
    assert views["success_rate_per_day"][d, "rakerone", "rakerone", "proj_1"] == {
        "terminal_runs": 3,
        "succeeded_runs": 2,
        "open_runs": 1,
        "success_rate": Decimal("0.6667"),
    }
    assert views["runs_per_day"][d, "apify", "apify", "act_1", "FAILED"] == {
        "runs": 1,
        "gone_runs": 1,
    }
    # "twice" counts once, at 0.7 (its latest observation): 10 x 0.1 + 0.2 + 0.7, exactly.
    assert views["cost_per_actor_per_day"] == {
        (d, "act_1"): {"runs": 13, "open_runs": 0, "usage_total_usd": Decimal("1.9")},
        (d + DAY, "act_1"): {"runs": 1, "open_runs": 1, "usage_total_usd": Decimal("0.05")},
    }


async def test_day_filters_can_use_the_day_index(db):
    """A filter on `day` reaches runs through runs_started_day_idx, not by reading every run."""
    async with db.pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        for view in KEYS:
            plan = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) SELECT * FROM runsync.{view} "
                "WHERE day >= (now() AT TIME ZONE 'UTC')::date - 7"
            )
            assert "runs_started_day_idx" in json.dumps(plan), view
