"""The simulated GitHub Actions API, exercised over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from worker.simulator import Faults, Simulator
from worker.sources.apify.simulator import ApifyWorld
from worker.sources.github.simulator import (
    GITHUB_OPEN,
    GitHubWorld,
    created_bounds,
    signature_256,
    workflow_run_delivery,
)
from worker.sources.rakerone.simulator import RakerWorld

ANCHOR = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TOKEN = "test-token"
RUNS = "/repos/{}/actions/runs"
WORKFLOW_RUNS = "/repos/{}/actions/workflows/{}/runs"
ERROR_KEYS = {"message", "documentation_url", "status"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
RUN_FIELDS = [
    "id", "name", "node_id", "head_branch", "head_sha", "path", "display_title", "run_number",
    "event", "status", "conclusion", "workflow_id", "check_suite_id", "check_suite_node_id", "url",
    "html_url", "pull_requests", "created_at", "updated_at", "actor", "run_attempt",
    "referenced_workflows", "run_started_at", "triggering_actor", "jobs_url", "logs_url",
    "check_suite_url", "artifacts_url", "cancel_url", "rerun_url", "previous_attempt_url",
    "workflow_url", "head_commit", "repository", "head_repository",
]  # fmt: skip


class Clock:
    """The world's clock (epoch milliseconds), moved by the test."""

    def __init__(self, start: datetime = ANCHOR) -> None:
        self.ms = int(start.timestamp() * 1000)

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(clock: Clock) -> GitHubWorld:
    # A short span puts 300 runs close together, so some share a created_at second.
    return GitHubWorld(
        {"octo/app": 300, "octo/lib": 20, "octo/empty": 0},
        seed=11,
        anchor=ANCHOR,
        span=timedelta(hours=6),
        clock=clock,
    )


async def serving(world: GitHubWorld, **options: object) -> Simulator:
    simulator = Simulator(world, token=TOKEN, **options)  # type: ignore[arg-type]
    await simulator.start()
    return simulator


@pytest.fixture
async def sim(world: GitHubWorld) -> AsyncIterator[Simulator]:
    simulator = await serving(world)
    yield simulator
    await simulator.stop()


def session(sim: Simulator) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/vnd.github+json"}
    return aiohttp.ClientSession(base_url=sim.base_url, headers=headers)


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with session(sim) as client:
        yield client


class Answer:
    def __init__(self, status: int, headers: CIMultiDict, body: object) -> None:
        self.status, self.headers, self.body = status, headers, body


async def ask(
    http: aiohttp.ClientSession,
    path: str | URL,
    expect: int | None = 200,
    headers: dict | None = None,
    **params: object,
) -> Answer:
    query = {k: str(v) for k, v in params.items()}
    async with http.get(path, params=query or None, headers=headers) as response:
        raw = await response.read()
        body = json.loads(raw) if raw else None
        if expect is not None:
            assert response.status == expect, body
        return Answer(response.status, response.headers.copy(), body)


def links(answer: Answer) -> dict[str, int]:
    """The Link header's rels and the page numbers they point at."""
    header = answer.headers.get("Link")
    if header is None:
        return {}
    found = re.findall(r'<([^>]+)>; rel="(\w+)"', header)
    return {rel: int(URL(url).query["page"]) for url, rel in found}


async def walk(http: aiohttp.ClientSession, path: str, **params: object) -> list[dict]:
    """Every run of a listing, following the Link header's next."""
    answer = await ask(http, path, **params)
    runs = list(answer.body["workflow_runs"])
    while (next_url := _next(answer)) is not None:
        answer = await ask(http, URL(next_url).relative())
        runs += answer.body["workflow_runs"]
    return runs


def _next(answer: Answer) -> str | None:
    found = re.search(r'<([^>]+)>; rel="next"', answer.headers.get("Link", ""))
    return found.group(1) if found else None


def newest_first(runs: list[dict]) -> list[dict]:
    return sorted(runs, key=lambda run: (run["created_at"], run["id"]), reverse=True)


# --- auth, versions and 404s ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Requires authentication"),
        ({"Authorization": "Bearer nope"}, "Bad credentials"),
        ({"Authorization": TOKEN}, "Bad credentials"),
        ({"Authorization": f"Basic {TOKEN}"}, "Bad credentials"),
    ],
)
async def test_wrong_credentials_get_401_and_spend_only_the_anonymous_budget(
    sim: Simulator, world: GitHubWorld, headers: dict, message: str
) -> None:
    async with aiohttp.ClientSession(sim.base_url) as anonymous:
        answer = await ask(anonymous, RUNS.format("octo/app"), 401, headers=headers)
    assert answer.body == {
        "message": message,
        "documentation_url": "https://docs.github.com/rest",
        "status": "401",
    }
    assert answer.headers["x-ratelimit-limit"] == "60"
    assert answer.headers["x-ratelimit-remaining"] == "59"
    assert world.budget.used == 0
    assert sim.requests["github.list_repo_runs"] == 1


async def test_bearer_and_token_schemes_are_both_accepted(sim: Simulator) -> None:
    async with aiohttp.ClientSession(sim.base_url) as client:
        for scheme in ("Bearer", "bearer", "token"):
            headers = {"Authorization": f"{scheme} {TOKEN}"}
            await ask(client, RUNS.format("octo/lib"), headers=headers)


async def test_api_versions(http: aiohttp.ClientSession) -> None:
    for version in ("2022-11-28", "2026-03-10"):
        answer = await ask(http, RUNS.format("octo/lib"), headers={"X-GitHub-Api-Version": version})
        assert answer.headers["x-github-api-version-selected"] == "2022-11-28"
    answer = await ask(
        http, RUNS.format("octo/lib"), 400, headers={"X-GitHub-Api-Version": "2021-01-01"}
    )
    assert set(answer.body) == ERROR_KEYS and answer.body["status"] == "400"


async def test_unknown_repos_workflows_runs_and_paths_get_404(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    app_run = world.runs("octo/app")[0]["id"]
    deleted = world.runs("octo/app")[1]["id"]
    world.delete_run("octo/app", deleted)
    paths = [
        RUNS.format("octo/nope"),
        RUNS.format("nobody/app"),
        WORKFLOW_RUNS.format("octo/app", "nope.yml"),
        WORKFLOW_RUNS.format("octo/app", 1),
        WORKFLOW_RUNS.format("octo/nope", "ci.yml"),
        f"{RUNS.format('octo/app')}/1",
        f"{RUNS.format('octo/app')}/abc",
        f"{RUNS.format('octo/lib')}/{app_run}",  # a run of another repository
        f"{RUNS.format('octo/app')}/{deleted}",
        f"{RUNS.format('octo/app')}/{app_run}/attempts/2",
        "/repos/octo/app/issues",
    ]
    for path in paths:
        answer = await ask(http, path, 404)
        assert set(answer.body) == ERROR_KEYS and answer.body["message"] == "Not Found", path
    # Owner and repository names are case-insensitive.
    assert (await ask(http, f"{RUNS.format('OCTO/App')}/{app_run}")).body["id"] == app_run


# --- listings ------------------------------------------------------------------------------


async def test_a_walk_by_link_next_is_every_run_newest_first(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    runs = await walk(http, RUNS.format("octo/app"), per_page=7)
    truth = world.runs("octo/app")
    assert runs == truth == newest_first(truth)
    assert len(runs) == 300 and len({run["id"] for run in runs}) == 300
    ties = Counter(run["created_at"] for run in runs)
    assert any(count > 1 for count in ties.values())  # one push can start two workflows
    for run in runs:
        assert list(run) == RUN_FIELDS
        assert TIMESTAMP.match(run["created_at"]) and TIMESTAMP.match(run["updated_at"])
        assert run["created_at"] <= run["run_started_at"] <= run["updated_at"]
        assert (run["conclusion"] is None) == (run["status"] != "completed")


async def test_pages_total_count_and_per_page_limits(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    truth = world.runs("octo/app")
    first = await ask(http, RUNS.format("octo/app"))
    assert first.body["total_count"] == 300 and first.body["workflow_runs"] == truth[:30]
    assert list(first.body) == ["total_count", "workflow_runs"]
    clamped = await ask(http, RUNS.format("octo/app"), per_page=5000, page=2)
    assert clamped.body["workflow_runs"] == truth[100:200]
    assert links(clamped) == {"prev": 1, "next": 3, "last": 3, "first": 1}
    odd = await ask(http, RUNS.format("octo/app"), per_page="ten", page="x")
    assert odd.body["workflow_runs"] == truth[:30]
    beyond = await ask(http, RUNS.format("octo/app"), per_page=100, page=9)
    assert beyond.body == {"total_count": 300, "workflow_runs": []}


async def test_link_header_rels_and_its_absence_on_a_single_page(
    http: aiohttp.ClientSession,
) -> None:
    path = RUNS.format("octo/app")
    assert links(await ask(http, path, per_page=100)) == {"next": 2, "last": 3}
    assert links(await ask(http, path, per_page=100, page=2)) == {
        "prev": 1, "next": 3, "last": 3, "first": 1,
    }  # fmt: skip
    assert links(await ask(http, path, per_page=100, page=3)) == {"prev": 2, "first": 1}
    header = (await ask(http, path, per_page=100, page=2)).headers["Link"]
    assert [rel for rel in re.findall(r'rel="(\w+)"', header)] == ["prev", "next", "last", "first"]
    assert "per_page=100" in header
    single = await ask(http, RUNS.format("octo/lib"), per_page=100)
    assert "Link" not in single.headers and len(single.body["workflow_runs"]) == 20
    empty = await ask(http, RUNS.format("octo/empty"))
    assert "Link" not in empty.headers and empty.body == {"total_count": 0, "workflow_runs": []}


async def test_workflow_listing_by_id_or_file_name(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    for workflow in world.workflows("octo/app"):
        file = workflow["path"].removeprefix(".github/workflows/")
        by_id = await walk(http, WORKFLOW_RUNS.format("octo/app", workflow["id"]), per_page=50)
        by_file = await walk(http, WORKFLOW_RUNS.format("octo/app", file), per_page=50)
        assert by_id == by_file == world.runs("octo/app", file)
        assert by_id and {run["workflow_id"] for run in by_id} == {workflow["id"]}
        assert {run["path"] for run in by_id} == {workflow["path"]}
        numbers = [run["run_number"] for run in by_id]
        assert numbers == sorted(numbers, reverse=True)  # a per-workflow counter


async def test_filters_on_branch_event_actor_sha_and_check_suite(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    truth = world.runs("octo/app")
    some = truth[5]
    cases = {
        "branch": lambda run: run["head_branch"],
        "event": lambda run: run["event"],
        "actor": lambda run: run["actor"]["login"],
        "head_sha": lambda run: run["head_sha"],
        "check_suite_id": lambda run: str(run["check_suite_id"]),
    }
    for name, value_of in cases.items():
        value = value_of(some)
        expected = [run for run in truth if value_of(run) == value]
        got = await walk(http, RUNS.format("octo/app"), per_page=100, **{name: value})
        assert got == expected and some in got, name
    assert {run["event"] for run in truth} >= {"push", "pull_request", "schedule"}
    nothing = await ask(http, RUNS.format("octo/app"), branch="no-such-branch")
    assert nothing.body == {"total_count": 0, "workflow_runs": []}
    everything = await ask(http, RUNS.format("octo/app"), branch="", per_page=1)
    assert everything.body["total_count"] == 300  # an empty value filters nothing


async def test_status_filter_takes_a_status_or_a_conclusion(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    truth = world.runs("octo/app")
    statuses = Counter(run["status"] for run in truth)
    conclusions = Counter(run["conclusion"] for run in truth if run["conclusion"])
    assert statuses["completed"] and len(statuses) >= 3 and len(conclusions) >= 3
    for value in [*statuses, *conclusions]:
        field = "status" if value in statuses else "conclusion"
        expected = [run for run in truth if run[field] == value]
        assert await walk(http, RUNS.format("octo/app"), per_page=100, status=value) == expected


async def test_exclude_pull_requests(http: aiohttp.ClientSession, world: GitHubWorld) -> None:
    truth = world.runs("octo/app")
    with_prs = [run for run in truth if run["pull_requests"]]
    assert with_prs and all(run["event"] == "pull_request" for run in with_prs)
    pr = with_prs[0]["pull_requests"][0]
    assert pr["head"]["ref"] == with_prs[0]["head_branch"] and pr["base"]["ref"] == "main"
    runs = await walk(http, RUNS.format("octo/app"), per_page=100, exclude_pull_requests="true")
    assert [run["id"] for run in runs] == [run["id"] for run in truth]
    assert all(run["pull_requests"] == [] for run in runs)
    one = await ask(
        http, f"{RUNS.format('octo/app')}/{with_prs[0]['id']}", exclude_pull_requests="true"
    )
    assert one.body["pull_requests"] == []
    kept = await ask(http, f"{RUNS.format('octo/app')}/{with_prs[0]['id']}")
    assert kept.body["pull_requests"] == with_prs[0]["pull_requests"]


# --- created -------------------------------------------------------------------------------

MOMENTS = {
    "a": "2025-02-28T23:59:59Z",
    "b": "2025-03-01T00:00:00Z",
    "c": "2025-03-01T09:59:59Z",
    "d": "2025-03-01T10:00:00Z",
    "e": "2025-03-01T10:00:01Z",
    "f": "2025-03-01T23:59:59Z",
    "g": "2025-03-02T00:00:00Z",
}
CREATED = {
    ">=2025-03-01T10:00:00Z": "defg",
    ">2025-03-01T10:00:00Z": "efg",
    "<2025-03-01T10:00:00Z": "abc",
    "<=2025-03-01T10:00:00Z": "abcd",
    "2025-03-01T09:59:59Z..2025-03-01T10:00:01Z": "cde",
    "2025-03-01T10:00:00Z..*": "defg",
    "*..2025-03-01T10:00:00Z": "abcd",
    "*..*": "abcdefg",
    "2025-03-01T10:00:00Z": "d",
    "2025-03-01T10:00:00.999Z": "d",  # whole seconds
    "2025-03-01T10:00:00": "d",  # no zone: UTC
    "2025-03-01T10:00": "d",
    "2025-03-01T11:00:00+01:00": "d",
    "2025-03-01T05:00:00-05:00": "d",
    ">=2025-03-01T11:00:01+01:00": "efg",
    "2025-03-01": "bcdef",  # a date alone is its whole day
    ">2025-03-01": "g",
    ">=2025-03-01": "bcdefg",
    "<2025-03-01": "a",
    "<=2025-03-01": "abcdef",
    "2025-03-01..2025-03-01": "bcdef",
    "2025-02-28..2025-03-01T09:59:59Z": "abc",
    "2025-03-01..*": "bcdefg",
    "*..2025-02-28": "a",
    "2025-03-02..2025-03-01": "",
}


@pytest.fixture
def dated(world: GitHubWorld) -> dict[int, str]:
    """One run created at each of MOMENTS in octo/empty: run id -> its letter."""
    ids = {}
    for letter, moment in MOMENTS.items():
        created = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        ids[world.add_run("octo/empty", created_at=created)["id"]] = letter
    return ids


@pytest.mark.parametrize(("created", "letters"), list(CREATED.items()))
async def test_created_filter_syntax_is_inclusive_to_the_second(
    http: aiohttp.ClientSession, dated: dict[int, str], created: str, letters: str
) -> None:
    answer = await ask(http, RUNS.format("octo/empty"), created=created)  # aiohttp encodes +
    got = [dated[run["id"]] for run in answer.body["workflow_runs"]]
    assert got == sorted(letters, reverse=True)
    assert answer.body["total_count"] == len(letters)


@pytest.mark.parametrize(
    "created",
    [
        "yesterday",
        "2025-3-1",
        ">=",
        "2025-13-01",
        "2025-03-01T25:00:00Z",
        "2025-03-01T10:00:00 01:00",
    ],
)
async def test_invalid_created_values_get_422(http: aiohttp.ClientSession, created: str) -> None:
    answer = await ask(http, RUNS.format("octo/app"), 422, created=created)
    assert answer.body["message"] == "Validation Failed"
    assert answer.body["errors"] == [
        {"resource": "WorkflowRun", "field": "created", "code": "invalid"}
    ]


async def test_an_unencoded_plus_arrives_as_a_space_and_is_refused(
    http: aiohttp.ClientSession,
) -> None:
    raw = URL("/repos/octo/app/actions/runs?created=2025-03-01T11:00:00+01:00", encoded=True)
    await ask(http, raw, 422)
    encoded = URL("/repos/octo/app/actions/runs?created=2025-03-01T11:00:00%2B01:00", encoded=True)
    await ask(http, encoded)


def test_created_bounds_directly() -> None:
    day = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())
    assert created_bounds("2025-03-01") == (day, day + 86_399)
    assert created_bounds(">2025-03-01") == (day + 86_400, None)
    assert created_bounds("<2025-03-01T00:00:00Z") == (None, day - 1)
    with pytest.raises(ValueError):
        created_bounds("2025-03-01...2025-03-02")


# --- the 1,000-result cap ------------------------------------------------------------------


@pytest.fixture
def crowded(world: GitHubWorld) -> list[dict]:
    """1,050 completed runs on main in octo/empty, a second apart, newest first."""
    for i in range(1050):
        world.add_run("octo/empty", created_at=ANCHOR - timedelta(seconds=i))
    return world.runs("octo/empty")


async def test_filtered_listings_reach_only_the_first_1000(
    http: aiohttp.ClientSession, crowded: list[dict]
) -> None:
    path = RUNS.format("octo/empty")
    filtered = await walk(http, path, per_page=100, branch="main")
    assert filtered == crowded[:1000]
    first = await ask(http, path, per_page=100, status="completed")
    assert first.body["total_count"] == 1050  # the count is not capped, the items are
    assert links(first) == {"next": 2, "last": 10}
    past = await ask(http, path, per_page=100, page=11, created="*..*")
    assert past.body == {"total_count": 1050, "workflow_runs": []}
    assert links(past) == {"prev": 10, "first": 1}
    assert await walk(http, path, per_page=100) == crowded  # unfiltered: no cap


async def test_past_the_cap_can_answer_422_instead(clock: Clock) -> None:
    world = GitHubWorld({"octo/app": 0}, clock=clock, past_cap="422", result_cap=10)
    world.add_runs("octo/app", 15)
    sim = await serving(world)
    try:
        async with session(sim) as http:
            path = RUNS.format("octo/app")
            assert len((await ask(http, path, per_page=5, page=2, event="push")).body[
                "workflow_runs"
            ]) == 5  # fmt: skip
            answer = await ask(http, path, 422, per_page=5, page=3, event="push")
            assert set(answer.body) == ERROR_KEYS
            assert len((await ask(http, path, per_page=5, page=3)).body["workflow_runs"]) == 5
    finally:
        await sim.stop()


async def test_unfiltered_listings_fail_past_the_pagination_limit(clock: Clock) -> None:
    world = GitHubWorld({"octo/app": 30}, seed=2, clock=clock, pagination_limit=20)
    sim = await serving(world)
    try:
        async with session(sim) as http:
            path = RUNS.format("octo/app")
            await ask(http, path, per_page=10, page=2)
            answer = await ask(http, path, 422, per_page=10, page=3)
            assert answer.body["message"] == (
                "In order to keep the API fast for everyone, pagination is limited for this "
                "resource."
            )
    finally:
        await sim.stop()


# --- runs: single, re-runs, queued, deleted ------------------------------------------------


async def test_a_rerun_keeps_the_id_and_place_and_raises_the_attempt(
    http: aiohttp.ClientSession, world: GitHubWorld, clock: Clock
) -> None:
    added = world.add_run("octo/lib", created_at=ANCHOR - timedelta(days=3), conclusion="failure")
    run_id, path = added["id"], f"{RUNS.format('octo/lib')}/{added['id']}"
    order = [run["id"] for run in world.runs("octo/lib")]
    clock.advance(600)
    again = world.rerun("octo/lib", run_id, triggering_actor="hubot")
    served = (await ask(http, path)).body
    assert served == again
    assert served["id"] == run_id and served["run_number"] == added["run_number"]
    assert served["created_at"] == added["created_at"]
    assert (served["run_attempt"], served["status"], served["conclusion"]) == (2, "queued", None)
    assert served["run_started_at"] == served["updated_at"] == iso(ANCHOR + timedelta(seconds=600))
    assert served["triggering_actor"]["login"] == "hubot"
    assert served["previous_attempt_url"].endswith(f"/actions/runs/{run_id}/attempts/1")
    assert added["previous_attempt_url"] is None
    assert [run["id"] for run in await walk(http, RUNS.format("octo/lib"))] == order
    first = (await ask(http, f"{path}/attempts/1")).body
    assert (first["run_attempt"], first["status"], first["conclusion"]) == (
        1,
        "completed",
        "failure",
    )
    assert first["run_started_at"] == added["run_started_at"]
    assert (await ask(http, f"{path}/attempts/2")).body == served
    world.progress("octo/lib")
    world.progress("octo/lib")
    done = (await ask(http, path)).body
    assert (done["run_attempt"], done["status"], done["conclusion"]) == (2, "completed", "success")
    with pytest.raises(ValueError, match="not completed"):
        world.rerun("octo/lib", world.add_run("octo/lib", status="in_progress")["id"])
    old = world.add_run("octo/lib", created_at=ANCHOR - timedelta(days=31))
    with pytest.raises(ValueError, match="30 days"):
        world.rerun("octo/lib", old["id"])


async def test_queued_runs_stay_queued_when_stuck(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    stuck = world.add_run("octo/empty", status="queued", stuck=True)
    moving = world.add_run("octo/empty", status="queued")
    waiting = world.add_run("octo/empty", status="in_progress")
    world.hold("octo/empty", waiting["id"], "waiting")
    for _ in range(3):
        world.progress("octo/empty")
    served = {run["id"]: run for run in await walk(http, RUNS.format("octo/empty"))}
    assert (served[stuck["id"]]["status"], served[stuck["id"]]["conclusion"]) == ("queued", None)
    assert served[waiting["id"]]["status"] == "waiting"
    assert (served[moving["id"]]["status"], served[moving["id"]]["conclusion"]) == (
        "completed", "success",
    )  # fmt: skip
    queued = await ask(http, RUNS.format("octo/empty"), status="queued")
    assert [run["id"] for run in queued.body["workflow_runs"]] == [stuck["id"]]
    world.finish_run("octo/empty", stuck["id"], "cancelled")  # after 35 days, say
    assert world.get("octo/empty", stuck["id"])["conclusion"] == "cancelled"


def test_generated_history_has_open_stuck_and_rerun_runs() -> None:
    world = GitHubWorld({"o/r": 3000}, seed=4, anchor=ANCHOR, span=timedelta(days=20))
    runs = world.runs("o/r")
    assert all(run["status"] in GITHUB_OPEN for run in runs[:60])  # the newest 2% are open
    old_open = [run for run in runs[60:] if run["status"] != "completed"]
    assert 5 <= len(old_open) <= 80 and {run["status"] for run in old_open} <= {"queued", "waiting"}
    reruns = [run for run in runs if run["run_attempt"] > 1]
    assert 50 <= len(reruns) <= 200
    assert all(run["run_started_at"] > run["created_at"] for run in reruns)
    assert all(run["created_at"] <= iso(ANCHOR - timedelta(hours=1)) for run in runs)
    ids = [run["id"] for run in reversed(runs)]
    assert ids == sorted(ids) and len(set(ids)) == 3000  # ids grow with creation


async def test_deleted_runs_vanish_and_later_pages_shift(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    truth = world.runs("octo/app")
    second_page = (await ask(http, RUNS.format("octo/app"), per_page=10, page=2)).body
    world.delete_run("octo/app", truth[0]["id"])
    shifted = (await ask(http, RUNS.format("octo/app"), per_page=10, page=2)).body
    assert shifted["workflow_runs"] == truth[11:21] != second_page["workflow_runs"]
    assert shifted["total_count"] == 299
    await ask(http, f"{RUNS.format('octo/app')}/{truth[0]['id']}", 404)
    assert world.get("octo/app", truth[0]["id"]) is None


# --- ETags and the budget ------------------------------------------------------------------


async def test_etag_and_304_which_costs_no_budget(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    run_id = world.runs("octo/app")[0]["id"]
    for path in (RUNS.format("octo/app"), f"{RUNS.format('octo/app')}/{run_id}"):
        first = await ask(http, path)
        etag = first.headers["ETag"]
        assert re.fullmatch(r'W/"[0-9a-f]{64}"', etag)
        used = world.budget.used
        for header in (etag, etag.removeprefix("W/"), f'"other", {etag}', "*"):
            again = await ask(http, path, 304, headers={"If-None-Match": header})
            assert again.body is None and again.headers["ETag"] == etag
            assert again.headers["x-ratelimit-used"] == str(used)
        assert world.budget.used == used
        await ask(http, path, headers={"If-None-Match": 'W/"stale"'})
        assert world.budget.used == used + 1
    world.progress("octo/app")
    changed = await ask(
        http, f"{RUNS.format('octo/app')}/{run_id}", headers={"If-None-Match": etag}
    )
    assert changed.headers["ETag"] != etag


async def test_budget_headers_count_down_and_the_limit_answers(clock: Clock) -> None:
    world = GitHubWorld({"octo/app": 5}, clock=clock, rate_limit=3)
    sim = await serving(world)
    try:
        async with session(sim) as http:
            path = RUNS.format("octo/app")
            seen = []
            for _ in range(3):
                headers = (await ask(http, path)).headers
                seen.append((headers["x-ratelimit-remaining"], headers["x-ratelimit-used"]))
                assert headers["x-ratelimit-limit"] == "3"
                assert headers["x-ratelimit-resource"] == "core"
                assert headers["x-ratelimit-reset"] == str(int(ANCHOR.timestamp()) + 3600)
            assert seen == [("2", "1"), ("1", "2"), ("0", "3")]
            clock.advance(1200)
            limited = await ask(http, path, 403)
            assert limited.body["message"].startswith("API rate limit exceeded")
            assert set(limited.body) == ERROR_KEYS
            assert limited.headers["x-ratelimit-remaining"] == "0"
            assert limited.headers["x-ratelimit-reset"] == str(int(ANCHOR.timestamp()) + 3600)
            await ask(http, path, 403, headers={"If-None-Match": "*"})  # not even a 304
            await ask(http, "/repos/octo/nope/actions/runs", 403)
            assert world.budget.used == 3
            clock.advance(2400)  # the hour is over
            refilled = await ask(http, path)
            assert refilled.headers["x-ratelimit-remaining"] == "2"
    finally:
        await sim.stop()


async def test_404s_spend_budget_and_the_limit_can_answer_429(clock: Clock) -> None:
    world = GitHubWorld({"octo/app": 5}, clock=clock, rate_limit=2, limited_status=429)
    sim = await serving(world)
    try:
        async with session(sim) as http:
            await ask(http, "/repos/octo/nope/actions/runs", 404)
            await ask(http, f"{RUNS.format('octo/app')}/1", 404)
            assert (await ask(http, RUNS.format("octo/app"), 429)).body["status"] == "429"
    finally:
        await sim.stop()


async def test_secondary_rate_limit_says_retry_after(
    http: aiohttp.ClientSession, world: GitHubWorld, clock: Clock
) -> None:
    world.trip_secondary_limit(90)
    clock.advance(30)
    answer = await ask(http, RUNS.format("octo/app"), 403)
    assert answer.body["message"].startswith("You have exceeded a secondary rate limit")
    assert answer.headers["retry-after"] == "60"
    assert world.budget.used == 0
    clock.advance(60)
    await ask(http, RUNS.format("octo/app"))


async def test_injected_faults_speak_github(world: GitHubWorld) -> None:
    sim = await serving(world, faults=Faults(1.0, ["429-retry-after"], retry_after=7))
    try:
        async with session(sim) as http:
            answer = await ask(http, RUNS.format("octo/app"), 429)
            assert answer.body["message"].startswith("You have exceeded a secondary rate limit")
            assert answer.headers["Retry-After"] == "7"
            assert answer.headers["x-ratelimit-remaining"] == "5000"  # the API never saw it
    finally:
        await sim.stop()
    sim = await serving(world, faults=Faults(1.0, ["wrong-types"], seed=3))
    try:
        async with session(sim) as http:
            runs = (await ask(http, RUNS.format("octo/app"))).body["workflow_runs"]
            truth = world.runs("octo/app")[:30]
            pairs = zip(runs, truth, strict=True)
            spoilt = [
                run
                for run, true in pairs
                if (run["id"], run["status"]) != (true["id"], true["status"])
            ]
            assert 5 <= len(spoilt) <= 15  # about a third of the page: a mistyped id or status
    finally:
        await sim.stop()


# --- omissions, determinism and serving ----------------------------------------------------


async def test_field_omission_is_seeded_stable_and_spares_the_id(clock: Clock) -> None:
    world = GitHubWorld({"octo/app": 200}, seed=5, clock=clock, omit_share=0.5)
    sim = await serving(world)
    try:
        async with session(sim) as http:
            runs = await walk(http, RUNS.format("octo/app"), per_page=100)
            assert runs == world.runs("octo/app")
            complete = {run["id"]: world.get("octo/app", run["id"], complete=True) for run in runs}
            spoilt = [run for run in runs if run != complete[run["id"]]]
            absent = Counter(f for run in runs for f in RUN_FIELDS if f not in run)
            nulled = Counter(f for run in runs for f, v in run.items() if v is None)
            assert 60 <= len(spoilt) <= 140 and len(absent) > 5 and "id" not in absent
            assert all(isinstance(run["id"], int) for run in runs)
            assert set(nulled) - {"conclusion", "previous_attempt_url"}  # beyond the usual nulls
            one = runs[3]
            assert (await ask(http, f"{RUNS.format('octo/app')}/{one['id']}")).body == one
            assert await walk(http, RUNS.format("octo/app"), per_page=100) == runs
    finally:
        await sim.stop()
    assert all(list(run) == RUN_FIELDS for run in complete.values())


def test_same_seed_gives_the_same_world(clock: Clock) -> None:
    repos = {"o/a": 300, "o/b": 40}
    first = GitHubWorld(repos, seed=3, anchor=ANCHOR, clock=clock, omit_share=0.2)
    again = GitHubWorld(repos, seed=3, anchor=ANCHOR, clock=clock, omit_share=0.2)
    other = GitHubWorld(repos, seed=4, anchor=ANCHOR, clock=clock, omit_share=0.2)
    for repo in repos:
        assert first.runs(repo) == again.runs(repo) != other.runs(repo)
    assert first.add_runs("o/a", 3) == again.add_runs("o/a", 3)
    assert first.delivery_guid() == again.delivery_guid() != other.delivery_guid()
    assert first.repos == ["o/a", "o/b"]


async def test_routes_exist_only_for_the_worlds_given(world: GitHubWorld) -> None:
    everything = Simulator(ApifyWorld(runs=3), RakerWorld(projects={"p": 3}), world, token="t")
    without = Simulator(ApifyWorld(runs=3), RakerWorld(projects={"p": 3}), token="t")
    paths = (RUNS.format("octo/app"), "/api/projects/p/action-runs", "/v2/actor-runs")
    for sim, statuses in ((everything, [200, 200, 200]), (without, [404, 200, 200])):
        base = await sim.start()
        try:
            async with aiohttp.ClientSession(base, headers={"Authorization": "Bearer t"}) as c:
                got = []
                for path in paths:
                    async with c.get(path) as response:
                        got.append(response.status)
                        if response.status == 404:  # GitHub's body even when not served
                            assert set(await response.json()) == ERROR_KEYS
                assert got == statuses
        finally:
            await sim.stop()


async def test_latency_applies(world: GitHubWorld) -> None:
    sim = await serving(world, latency=0.2)
    try:
        async with session(sim) as http:
            loop_time = asyncio.get_running_loop().time
            began = loop_time()
            await ask(http, RUNS.format("octo/lib"))
            assert loop_time() - began >= 0.2
    finally:
        await sim.stop()


# --- webhooks ------------------------------------------------------------------------------


def test_signature_matches_githubs_test_vector() -> None:
    assert signature_256("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_workflow_run_deliveries_are_signed_over_the_exact_body(world: GitHubWorld) -> None:
    secret = "hook-secret"
    added = world.add_run("octo/lib", status="requested")
    delivery = workflow_run_delivery(world, "octo/lib", added["id"], secret=secret)
    expected = hmac.new(secret.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(delivery.headers["X-Hub-Signature-256"], f"sha256={expected}")
    sha1 = hmac.new(secret.encode(), delivery.body, hashlib.sha1).hexdigest()
    assert delivery.headers["X-Hub-Signature"] == f"sha1={sha1}"
    assert delivery.headers["X-GitHub-Event"] == "workflow_run"
    assert delivery.headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert re.fullmatch(r"[0-9a-f-]{36}", delivery.guid)
    payload = delivery.payload
    assert payload["action"] == "requested" and payload["workflow_run"] == added
    assert payload["workflow"]["id"] == added["workflow_id"]
    assert payload["repository"]["full_name"] == "octo/lib"
    assert payload["sender"] == added["triggering_actor"]
    tampered = delivery.body.replace(b'"requested"', b'"completed"', 1)
    assert signature_256(secret, tampered) != delivery.headers["X-Hub-Signature-256"]


def test_delivery_actions_follow_the_run_and_redeliveries_keep_the_guid(
    world: GitHubWorld,
) -> None:
    run_id = world.add_run("octo/lib", status="queued")["id"]
    actions = [workflow_run_delivery(world, "octo/lib", run_id, secret="s").payload["action"]]
    for _ in range(2):
        world.progress("octo/lib")
        actions.append(
            workflow_run_delivery(world, "octo/lib", run_id, secret="s").payload["action"]
        )
    assert actions == ["requested", "in_progress", "completed"]
    world.rerun("octo/lib", run_id)
    rerun = workflow_run_delivery(world, "octo/lib", run_id, secret="s")
    assert rerun.payload["action"] == "requested"
    assert (rerun.payload["workflow_run"]["id"], rerun.payload["workflow_run"]["run_attempt"]) == (
        run_id, 2,
    )  # fmt: skip
    again = workflow_run_delivery(world, "octo/lib", run_id, secret="s", delivery_id=rerun.guid)
    assert again.guid == rerun.guid and again.body == rerun.body
    late = workflow_run_delivery(world, "octo/lib", run_id, secret="s", action="completed")
    assert late.payload["action"] == "completed" and late.guid != rerun.guid
    with pytest.raises(ValueError, match="actions"):
        workflow_run_delivery(world, "octo/lib", run_id, secret="s", action="queued")
    with pytest.raises(KeyError):
        workflow_run_delivery(world, "octo/lib", 1, secret="s")


async def test_demo_controls_shape_the_world_and_send_a_signed_delivery(
    http: aiohttp.ClientSession, world: GitHubWorld
) -> None:
    from aiohttp import web

    received: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.json_response({"outcome": "stored"})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    controls = "/_simulator/github/octo/lib"
    budget = world.budget.remaining
    try:
        async with http.post(controls + "/runs?count=2") as answer:
            added = (await answer.json())["ids"]
        assert answer.status == 201 and len(added) == 2
        assert all(world.get("octo/lib", i)["status"] == "in_progress" for i in added)
        async with http.post(controls + "/progress") as answer:
            assert (await answer.json())["moved"] >= 2
        assert world.get("octo/lib", added[0])["status"] == "completed"
        async with http.post(controls + f"/rerun?run_id={added[0]}") as answer:
            assert await answer.json() == {"id": added[0], "run_attempt": 2}
        secret = "demo-secret-0123456789"
        url = f"/deliver?run_id={added[0]}&to=http://127.0.0.1:{port}/hook"
        async with http.post(controls + url, headers={"X-Webhook-Secret": secret}) as answer:
            assert (await answer.json())["status"] == 200
        async with http.post(controls + "/deliver?to=http://example.com/hook") as answer:
            assert answer.status == 422  # only to this machine, and only with a secret
    finally:
        await runner.cleanup()

    (headers, body) = received[0]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected
    assert json.loads(body)["workflow_run"]["run_attempt"] == 2
    assert world.budget.remaining == budget  # the controls spend none of it
