"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from worker import runtime, sync
from worker.simulator import Faults

TOKEN = "test-token-4f1c9a"
REPO = "octo/app"  # the simulated GitHub repository of the shared fixtures
GITHUB_BUDGET = 3_600_000  # a simulated GitHub's requests an hour: a thousand a second


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a daemon's [http] listen."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clock_from(start: datetime) -> Callable[[], int]:
    """A simulated world's clock (epoch ms) that reads `start` now and runs on with real time:
    times in the world are fixed by the test (so seeded fault draws, which hash the requests'
    `created` ranges, replay), in the past (runsync takes no run from the future), and within
    GitHub's 30 days of re-runs."""
    offset = time.time_ns() // 1_000_000 - int(start.timestamp() * 1000)
    return lambda: time.time_ns() // 1_000_000 - offset


def config_toml(*sources: str, listen: str = "127.0.0.1:0", **database) -> str:
    """A config file's text: the [database] keys given, the [http] table, then the [[sources]]
    tables."""
    keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in database.items())
    return f"[database]\n{keys}" + f'[http]\nlisten = "{listen}"\n' + "".join(sources)


def source_toml(name: str, base_url: str, *, kind: str = "apify", **keys) -> str:
    """One [[sources]] table; values are strings, numbers or lists of strings."""
    values = {"name": name, "kind": kind, "token_env": "APIFY_TOKEN", "base_url": base_url}
    values.update(({} if "cron" in keys else {"every": "1s"}) | keys)
    return "\n[[sources]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


async def spawn(database_url: str, *args: str, env=None, prefix=(), stdout=None, stderr=None):
    """`python -m worker ARGS` with the test token and database; output dropped unless asked."""
    return await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "worker", *args,
        env={**os.environ, "APIFY_TOKEN": TOKEN, "RUNSYNC_DATABASE_URL": database_url, **(env or {})},
        stdout=stdout or asyncio.subprocess.DEVNULL, stderr=stderr or asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def eventually(
    check: Callable[[], Any],
    seconds: float = 20.0,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
    interval: float = 0.05,
) -> Any:
    """Polls `check` (a function, or a coroutine function) until it returns something true, and
    returns that; an exception in `ignoring` counts as false. `seconds` only keeps a broken test
    from hanging: it is no bound on how fast the code under test is, so make it generous."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                found = check()
                if inspect.isawaitable(found):
                    found = await found
            except ignoring:
                found = None
            if found:
                return found
            await asyncio.sleep(interval)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a Prometheus text exposition, read by its own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def one_pass(settings, name: str = "apify", **options) -> sync.PassResult:
    async with runtime.open_runtime(settings, [name]) as rt:
        return await sync.run_pass(rt.stream(name), rt.store, **options)


async def begin_on_empty_history(settings, name: str = "apify") -> None:
    """The source's first pass, made while the upstream has no run yet: its copy of the history
    (a backfill pass, sync._first_copy) finds nothing, and the incremental stream starts at the
    beginning of history. A test of the incremental walk adds its runs after this, so the pass it
    looks at walks them as an incremental pass (as every first pass did before the first copy)."""
    result = await one_pass(settings, name)
    assert result.outcome == "succeeded" and result.items == 0, result


async def passes(settings, name: str = "raker", **options) -> list[sync.PassResult]:
    """One pass of every stream (project) of a source, side by side."""
    async with runtime.open_runtime(settings, [name]) as rt:
        return [await sync.run_pass(stream, rt.store, **options) for stream in rt.streams[name]]


async def stored_runs(db, source: str = "apify") -> dict[str, dict]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM runsync.runs WHERE source = $1", source)
    return {row["run_id"]: dict(row) for row in rows}


# Each typed column and the upstream field it holds: (column, how to read the item), by upstream.
_APIFY_COLUMNS = {
    "actor_id": lambda i: i["actId"], "task_id": lambda i: i["actorTaskId"],
    "build_id": lambda i: i["buildId"], "build_number": lambda i: _text(i["buildNumber"]),
    "origin": lambda i: (i["meta"] or {}).get("origin"),
    "usage_total_usd": lambda i: i["usageTotalUsd"],
    "default_key_value_store_id": lambda i: i["defaultKeyValueStoreId"],
    "default_dataset_id": lambda i: i["defaultDatasetId"],
    "default_request_queue_id": lambda i: i["defaultRequestQueueId"],
}  # fmt: skip
_RAKER_COLUMNS = {"triggered_by": lambda i: i["triggeredBy"], "result": lambda i: i["result"]}
_TIMES = {"started_at": "startedAt", "finished_at": "finishedAt"}


def _text(value):
    return None if value is None else str(value)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def assert_matches_upstream(stored: dict[str, dict], items: list[dict]) -> None:
    """Exactly the upstream's runs, each with the upstream's current list fields: in raw, and in
    every typed column (status, is_terminal, times, ids, usage, RakerOne's fields). A field the
    item omits is not compared (a list item that omits one says nothing of it)."""
    from worker.sources.apify.simulator import TERMINAL_STATUSES

    truth = {item["id"]: item for item in items}
    missing, extra = truth.keys() - stored.keys(), stored.keys() - truth.keys()
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    for run_id, item in truth.items():
        row = stored[run_id]
        raw = row["raw"] if isinstance(row["raw"], dict) else json.loads(row["raw"])
        differing = {k: (raw.get(k), v) for k, v in item.items() if raw.get(k) != v}
        assert not differing, f"run {run_id} differs from upstream: {differing}"
        assert row["status"] == item["status"]
        apify = row["upstream"] == "apify"
        expected = {column: _time(item.get(key)) for column, key in _TIMES.items() if key in item}
        for column, read in (_APIFY_COLUMNS if apify else _RAKER_COLUMNS).items():
            try:
                expected[column] = read(item)
            except KeyError:  # omitted by this view
                continue
        if apify:
            expected["is_terminal"] = item["status"] in TERMINAL_STATUSES
        actual = {column: row[column] for column in expected}
        if actual.get("usage_total_usd") is not None:
            actual["usage_total_usd"] = float(actual["usage_total_usd"])
        wrong = {c: (actual[c], expected[c]) for c in expected if actual[c] != expected[c]}
        assert not wrong, f"run {run_id}: typed columns (stored, upstream) differ: {wrong}"


def github_items(hub, repo: str, workflow: str | None = None) -> list[dict]:
    """The runs of a simulated repository (or one workflow) as runsync asks for them: the
    listing's objects, with their seeded omissions, under exclude_pull_requests=true."""
    return hub.runs(repo, workflow, exclude_pull_requests=True)


def _github_time(item: dict, key: str) -> datetime | None:
    value = item.get(key)
    return None if value is None else datetime.fromisoformat(value)


def github_columns(item: dict) -> dict[str, Any]:
    """The columns a GitHub run object must be stored with, read from the object by the test's
    own rules (never by runsync's reader): the shared columns, then every typed one."""
    status = item.get("status")
    completed = status == "completed"
    return {
        "upstream": "github",
        "status": "unknown" if status is None else status,
        "is_terminal": completed,
        "started_at": _github_time(item, "run_started_at") or _github_time(item, "created_at"),
        "finished_at": _github_time(item, "updated_at") if completed else None,
        "succeeded": item.get("conclusion") == "success" if completed else None,
        "scope": item.get("name") or item.get("path"),
        "github_workflow": item.get("name"),
        "github_workflow_id": item.get("workflow_id"),
        "github_event": item.get("event"),
        "github_branch": item.get("head_branch"),
        "github_head_sha": item.get("head_sha"),
        "github_actor": (item.get("actor") or {}).get("login"),
        "github_conclusion": item.get("conclusion"),
        "github_attempt": item.get("run_attempt"),
        "github_run_number": item.get("run_number"),
        "github_created_at": _github_time(item, "created_at"),
        "github_updated_at": _github_time(item, "updated_at"),
    }


def github_differences(row: dict, item: dict) -> dict[str, tuple[Any, Any]]:
    """{column: (stored, upstream)} of every column, raw included, where the row differs from
    the upstream's object (empty: it matches)."""
    raw = json.loads(row["raw"]) if isinstance(row["raw"], str) else row["raw"]
    expected = {**github_columns(item), "gone_at": None}
    wrong = {c: (row[c], v) for c, v in expected.items() if row[c] != v}
    keys = sorted(set(raw) | set(item))
    wrong |= {f"raw.{k}": (raw.get(k, "(none)"), item.get(k, "(none)")) for k in keys
              if k not in raw or k not in item or raw[k] != item[k]}  # fmt: skip
    return wrong


def assert_matches_github(stored: dict[str, dict], items: list[dict]) -> None:
    """Exactly the upstream's runs (github_items), each with its object whole in raw and every
    column as the object says."""
    truth = {str(item["id"]): item for item in items}
    missing, extra = truth.keys() - stored.keys(), stored.keys() - truth.keys()
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    for run_id, item in truth.items():
        wrong = github_differences(stored[run_id], item)
        assert not wrong, f"run {run_id}: columns (stored, upstream) differ: {wrong}"


async def interrupted_pass(settings, name: str, *, after_pages: int, **options) -> None:
    """A pass cancelled while it fetches or writes the page after `after_pages` committed ones."""
    committed = asyncio.Event()
    pages = []

    def count(page, _written):
        pages.append(page)
        if len(pages) == after_pages:
            committed.set()

    async with runtime.open_runtime(settings, [name]) as rt:
        task = asyncio.create_task(
            sync.run_pass(rt.stream(name), rt.store, progress=count, **options)
        )
        await committed.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class FaultOn(Faults):
    """One kind of fault on the requests whose key (method, path, sorted query) holds `needle`:
    the first `times` askings of each (None: every one); no other request is touched. `alike`:
    every asking spoilt the same way (else each its own way)."""

    def __init__(
        self, needle: str, kind: str, *, times: int | None = None, alike: bool = True
    ) -> None:
        super().__init__(rate=0.0, kinds=(kind,))
        self.needle, self.kind, self.times, self.alike = needle, kind, times, alike
        self.asked: dict[str, int] = {}

    def draw(self, key: str) -> tuple[str | None, int]:
        if self.needle not in key:
            return None, 0
        asked = self.asked[key] = self.asked.get(key, 0) + 1
        spoilt = self.times is None or asked <= self.times
        return (self.kind if spoilt else None), (7 if self.alike else asked)


class ThreeSources:
    """Runs in three sources of the simulator's worlds (the whole Apify account, one task of it,
    two RakerOne projects), and a fourth when given a GitHub world (`hub`: its repository REPO),
    their config and the check that the database holds them as the upstream does: what the tests
    of replicas share."""

    def __init__(
        self, world, raker, sim, *, runs: int, raker_runs: int, open_every: int, hub=None
    ) -> None:
        self.world, self.raker, self.sim, self.hub = world, raker, sim, hub
        self.task = world.tasks[0]["id"]
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for i in range(runs):
            world.add_runs(1, status="RUNNING" if i % open_every == 0 else "SUCCEEDED",
                           started_at=start + timedelta(minutes=i),
                           task_id=self.task if i % 2 else None)  # fmt: skip
        for project in ("proj_a", "proj_b"):
            raker.add_runs(project, raker_runs, status="completed", started_at=start)
        if hub is not None:  # within the last day: GitHub re-runs runs of 30 days at most
            yesterday = hub.now() - timedelta(days=1)
            for i in range(raker_runs):
                hub.add_runs(REPO, 1, status="in_progress" if i % open_every == 0 else "completed",
                             created_at=yesterday + timedelta(minutes=i))  # fmt: skip

    def config(self, **database) -> str:
        github = (
            source_toml("hub", self.sim.base_url, kind="github", token_env="GITHUB_TOKEN",
                        repository=REPO, page_size=100)
            if self.hub is not None else ""
        )  # fmt: skip
        return config_toml(
            source_toml("apify", self.sim.base_url, page_size=50),
            source_toml("task", self.sim.base_url, page_size=50, task=self.task),
            source_toml("raker", self.sim.base_url, kind="rakerone", projects=["proj_a", "proj_b"]),
            github,
            **database,
        )

    def change(self, new_task_runs: int, new_raker_runs: int) -> None:
        """The open runs finish; new ones start in the task and in proj_b (and in the
        repository, where a finished run is re-run too)."""
        self.world.finish_open("SUCCEEDED")
        self.world.add_runs(new_task_runs, status="RUNNING", task_id=self.task)
        self.raker.add_runs("proj_b", new_raker_runs, status="processing")
        if self.hub is not None:
            self.hub.progress(REPO)
            self.hub.progress(REPO)
            finished = [r["id"] for r in self.hub.runs(REPO) if r.get("status") == "completed"]
            self.hub.rerun(REPO, finished[len(finished) // 2])
            self.hub.add_runs(REPO, new_raker_runs, status="in_progress")

    async def stored_as_upstream(self, db) -> bool:
        """Every source holds the upstream's runs, each with its current status."""
        items = self.world.list_items()
        truth = {
            "apify": items,
            "task": [i for i in items if i["actorTaskId"] == self.task],
            "raker": self.raker.list_items("proj_a") + self.raker.list_items("proj_b"),
        }
        if self.hub is not None:
            truth["hub"] = [
                {"id": str(item["id"]), "status": item.get("status") or "unknown"}
                for item in github_items(self.hub, REPO)
            ]
        for source, expected in truth.items():
            stored = {k: row["status"] for k, row in (await stored_runs(db, source)).items()}
            if stored != {item["id"]: item["status"] for item in expected}:
                return False
        return True
