"""The simulated RakerOne API beyond its doc's example: runs that wait in the queue without a
startedAt, runs cancelled before they start, and free-form results with non-finite numbers, NUL
and lone surrogates. Over real HTTP on loopback."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import aiohttp
import pytest

from worker.simulator import Simulator
from worker.sources.rakerone.simulator import RAKER_OPEN, RAKER_QUEUED, RAKER_TERMINAL, RakerWorld

ANCHOR = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ANCHOR_MS = int(ANCHOR.timestamp() * 1000)
TOKEN = "test-token"
LIST = "/api/projects/{}/action-runs"


class Clock:
    """A hand-driven clock in epoch milliseconds."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds * 1000


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@asynccontextmanager
async def served(world: RakerWorld) -> AsyncIterator[aiohttp.ClientSession]:
    sim = Simulator(world, token=TOKEN)
    await sim.start()
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(sim.base_url, headers=headers) as http:
            yield http
    finally:
        await sim.stop()


async def walk_text(
    http: aiohttp.ClientSession, project: str, limit: int = 100, **params: str
) -> tuple[list[dict], list[str]]:
    """Every item of a listing by following nextCursor, and the raw body of each page."""
    items: list[dict] = []
    bodies: list[str] = []
    cursor = None
    while True:
        query = {"limit": str(limit), **params, **({"cursor": cursor} if cursor else {})}
        async with http.get(LIST.format(project), params=query) as response:
            assert response.status == 200
            bodies.append(await response.text())
        page = json.loads(bodies[-1])
        items += page["runs"]
        if (cursor := page["nextCursor"]) is None:
            return items, bodies


def same(a: object, b: object) -> bool:
    """Equality of JSON values where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# --- queued runs ---------------------------------------------------------------------------


def test_a_queued_run_has_no_started_at_until_it_starts_and_keeps_its_place() -> None:
    clock = Clock(ANCHOR_MS)
    world = RakerWorld(projects={"p": 0}, seed=3, clock=clock, missing_start="absent")
    (queued,) = world.add_runs("p", status="queued")
    assert queued == {
        "id": queued["id"], "status": "queued", "finishedAt": None,
        "triggeredBy": queued["triggeredBy"], "result": None,
    }  # fmt: skip
    clock.advance(10)
    (later,) = world.add_runs("p")  # created and started ten seconds after the queued one
    clock.advance(10)
    started = world.start_run("p", queued["id"])
    assert started["startedAt"] == iso(ANCHOR + timedelta(seconds=20))
    assert started["status"] == "processing"
    items = world.list_items("p")
    # Newest created first: the run that started last is listed below one that started before it.
    assert [i["id"] for i in items] == [later["id"], queued["id"]]
    assert items[0]["startedAt"] < items[1]["startedAt"]
    done = world.set_status("p", queued["id"], "completed")
    assert done["finishedAt"] == iso(ANCHOR + timedelta(seconds=20))
    assert done["result"] == {"success": True, "details": "Action executed successfully"}
    with pytest.raises(ValueError, match="started already"):
        world.start_run("p", queued["id"])
    with pytest.raises(ValueError):
        world.add_runs("p", status="queued", started_at=ANCHOR)
    with pytest.raises(ValueError, match="before it is created"):
        world.add_runs("p", started_at=ANCHOR, created_at=ANCHOR + timedelta(seconds=1))


def test_a_run_cancelled_before_it_starts_never_gets_a_started_at() -> None:
    clock = Clock(ANCHOR_MS)
    world = RakerWorld(projects={"p": 0}, seed=3, clock=clock, missing_start="null")
    (queued,) = world.add_runs("p", status="queued")
    assert queued["startedAt"] is None
    clock.advance(30)
    cancelled = world.set_status("p", queued["id"], "cancelled")
    assert cancelled["startedAt"] is None and cancelled["status"] == "cancelled"
    assert cancelled["finishedAt"] == iso(ANCHOR + timedelta(seconds=30))
    assert cancelled["result"] == {"success": False, "details": "Cancelled before it started"}
    assert world.get("p", queued["id"]) == cancelled
    with pytest.raises(ValueError, match="before it started"):
        world.start_run("p", queued["id"])
    # Another status than queued or cancelled starts a queued run.
    (other,) = world.add_runs("p", status="queued")
    assert world.set_status("p", other["id"], "needs_review")["startedAt"] == iso(
        ANCHOR + timedelta(seconds=30)
    )
    assert world.get("p", "run_nope") is None


def test_missing_start_is_absent_null_or_a_seeded_mix() -> None:
    def shapes(mode: str) -> set[str]:
        world = RakerWorld(projects={"p": 0}, seed=5, missing_start=mode)
        items = world.add_runs("p", 40, status="queued")
        return {"absent" if "startedAt" not in i else "null" for i in items}

    assert shapes("absent") == {"absent"}
    assert shapes("null") == {"null"}
    assert shapes("mixed") == {"absent", "null"}
    with pytest.raises(ValueError):
        RakerWorld(missing_start="empty")


async def test_a_walk_stays_whole_while_queued_runs_start_and_finish() -> None:
    clock = Clock(ANCHOR_MS)
    world = RakerWorld(projects={"p": 0}, seed=7, clock=clock)
    for _ in range(60):
        world.add_runs("p", 2, status="queued")
        world.add_runs("p", 1, status="completed")
        clock.advance(1)
    before = [i["id"] for i in world.list_items("p")]
    queued = [i["id"] for i in world.list_items("p") if i["status"] == RAKER_QUEUED]
    seen: list[str] = []
    cursor = None
    async with served(world) as http:
        while True:
            query = {"limit": "7", **({"cursor": cursor} if cursor else {})}
            async with http.get(LIST.format("p"), params=query) as response:
                page = await response.json()
            seen += [item["id"] for item in page["runs"]]
            for run_id in queued[:5]:  # queued runs start and finish under the walk
                world.start_run("p", run_id)
                world.set_status("p", run_id, "failed")
            queued = queued[5:]
            clock.advance(1)
            if (cursor := page["nextCursor"]) is None:
                break
        only_queued, _ = await walk_text(http, "p", status="queued")
    assert seen == before  # none skipped, none twice
    assert [i["id"] for i in only_queued] == queued
    assert all("startedAt" not in i or i["startedAt"] is None for i in only_queued)


def test_generation_with_a_queue_puts_started_at_out_of_list_order() -> None:
    world = RakerWorld(
        projects={"p": 3000}, seed=9, anchor=ANCHOR, open_share=0.05, queue_share=0.3
    )
    items = world.list_items("p")
    newest, older = items[:150], items[150:]
    assert RAKER_QUEUED in {i["status"] for i in newest} <= {*RAKER_OPEN, RAKER_QUEUED}
    assert RAKER_QUEUED not in {i["status"] for i in older}
    unstarted = [i for i in items if i.get("startedAt") is None]
    assert all(i["status"] in (RAKER_QUEUED, "cancelled") for i in unstarted)
    cancelled_early = [i for i in unstarted if i["status"] == "cancelled"]
    assert 20 < len(cancelled_early) < 150
    assert all(i["finishedAt"] <= iso(ANCHOR) for i in cancelled_early)
    started = [i["startedAt"] for i in items if i.get("startedAt")]
    inversions = sum(a < b for a, b in pairwise(started))
    assert inversions > 100  # listed newest first, yet often started later than the one above
    assert all(i["finishedAt"] <= iso(ANCHOR) for i in older if i["finishedAt"])
    assert all(
        i["finishedAt"] >= i["startedAt"] for i in items if i["finishedAt"] and i.get("startedAt")
    )


def test_without_a_queue_every_run_starts_at_once_in_list_order() -> None:
    world = RakerWorld(projects={"p": 2000}, seed=9, anchor=ANCHOR)
    items = world.list_items("p")
    assert all(i["startedAt"] for i in items)
    assert items == sorted(items, key=lambda i: (i["startedAt"], i["id"]), reverse=True)


# --- free-form results ---------------------------------------------------------------------


ODD = {
    "score": float("nan"),
    "high": float("inf"),
    "low": float("-inf"),
    "log": "line\x00two \ud800 three \udfff\x07",
    "nested": [float("nan"), {"x": "\x00"}],
}


async def test_add_run_serves_non_finite_numbers_nul_and_lone_surrogates_as_given() -> None:
    world = RakerWorld(projects={"p": 0}, seed=1, anchor=ANCHOR)
    added = world.add_run("p", result=ODD, started_at=ANCHOR, finished_at=ANCHOR)
    scalar = world.add_run("p", result=float("-inf"), started_at=ANCHOR + timedelta(seconds=1))
    async with served(world) as http:
        items, (body,) = await walk_text(http, "p")
    assert ":NaN" in body and ":Infinity" in body and ":-Infinity" in body
    assert "\\u0000" in body and "\\ud800" in body and "\\udfff" in body and "\\u0007" in body
    assert same(items, world.list_items("p"))
    assert same(items[1]["result"], ODD) and same(added["result"], ODD)
    assert scalar["result"] == float("-inf") and items[0]["result"] == float("-inf")
    assert added["status"] == "completed" and added["finishedAt"] == iso(ANCHOR)
    # The world keeps its own copy: changing what it returned or was given changes nothing.
    added["result"]["log"] = "changed"
    assert world.get("p", added["id"])["result"]["log"] == ODD["log"]  # type: ignore[index]


def test_add_run_takes_extra_fields_and_refuses_what_is_not_json() -> None:
    world = RakerWorld(projects={"p": 0}, seed=1, anchor=ANCHOR)
    run = world.add_run(
        "p",
        status="processing",
        started_at=ANCHOR,
        fields={"attempt": 2, "labels": ["a\x00"], "triggeredBy": None},
    )
    assert run["result"] is None and run["finishedAt"] is None
    assert (run["attempt"], run["labels"], run["triggeredBy"]) == (2, ["a\x00"], None)
    assert world.list_items("p") == [run]
    assert world.set_status("p", run["id"], "completed", result=[1, 2])["result"] == [1, 2]
    unstarted = world.add_run("p", status="cancelled", unstarted=True)
    assert unstarted.get("startedAt") is None
    assert unstarted["result"] == {"success": False, "details": "Cancelled before it started"}
    with pytest.raises(ValueError, match="id or status"):
        world.add_run("p", fields={"status": "x"})
    with pytest.raises(TypeError, match="result"):
        world.add_run("p", result={1, 2})
    with pytest.raises(TypeError, match="fields"):
        world.add_run("p", fields={"when": ANCHOR})


async def test_odd_results_are_seeded_and_served_as_generated() -> None:
    def build() -> RakerWorld:
        world = RakerWorld(projects={"p": 600}, seed=4, anchor=ANCHOR, odd_results=0.3)
        world.add_runs("p", 50, status="completed", started_at=ANCHOR)
        return world

    world = build()
    results = [i["result"] for i in world.list_items("p") if i["status"] in RAKER_TERMINAL]
    odd = [r for r in results if not (isinstance(r, dict) and set(r) == {"success", "details"})]
    assert 0.2 < len(odd) / len(results) < 0.4
    assert any(isinstance(r, float) and math.isnan(r) for r in odd)
    assert any(not isinstance(r, dict) for r in odd) and any(isinstance(r, dict) for r in odd)
    assert same(build().list_items("p"), world.list_items("p"))
    async with served(world) as http:
        items, bodies = await walk_text(http, "p")
    text = "".join(bodies)
    assert "NaN" in text and "Infinity" in text and "\\u0000" in text and "\\ud800" in text
    assert same(items, world.list_items("p"))
    # Off by default: the results are the usual objects.
    plain = RakerWorld(projects={"p": 600}, seed=4, anchor=ANCHOR).list_items("p")
    assert all(set(i["result"]) == {"success", "details"} for i in plain if i["result"])
    with pytest.raises(ValueError):
        RakerWorld(odd_results=2)


def test_the_clock_drives_new_runs_and_finishes() -> None:
    clock = Clock(ANCHOR_MS + 999)
    world = RakerWorld(projects={"p": 5}, seed=2, clock=clock)
    assert world.anchor == ANCHOR and world.now() == ANCHOR
    (run,) = world.add_runs("p")
    assert run["startedAt"] == iso(ANCHOR)
    clock.advance(90)
    done = world.set_status("p", run["id"], "failed")
    assert done["finishedAt"] == iso(ANCHOR + timedelta(seconds=90))
