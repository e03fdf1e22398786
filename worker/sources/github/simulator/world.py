"""The simulated GitHub Actions upstream: repositories, workflows and their runs (GitHubWorld).

It follows upstream-docs/github-actions-workflow-runs.md: page-numbered listings newest first
with `total_count` and a Link header, the search-syntax `created` filter, the 1,000-result cap on
filtered listings, re-runs that keep the run's id, ETags and free 304s, an hourly request budget
with GitHub's rate-limit headers and answers, and GitHub's error bodies. Everything it generates
is deterministic given the seed (and the clock it is given). api.py serves it over HTTP (through
worker.simulator.Simulator); hooks.py builds `workflow_run` webhook deliveries from it.

Where the docs are silent the simulator chooses, and says so where it does (look for "Chosen").
"""

from __future__ import annotations

import bisect
import hashlib
import random
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from worker.simulator.seconds import iso as _iso
from worker.simulator.seconds import seconds as _seconds

if TYPE_CHECKING:  # named in annotations only
    from worker.sources.github.simulator.api import GitHubEndpoints

# The webhook schemas' enums; the REST schema has none, so both are open sets.
GITHUB_STATUSES = ("requested", "queued", "pending", "waiting", "in_progress", "completed")
GITHUB_OPEN = GITHUB_STATUSES[:-1]
GITHUB_CONCLUSIONS = (
    "success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required",
    "stale", "startup_failure",
)  # fmt: skip
API_VERSIONS = ("2022-11-28", "2026-03-10")
RATE_LIMIT = 5000  # a personal access token's requests per hour
ANONYMOUS_LIMIT = 60  # what requests without valid credentials get, per hour
RESULT_CAP = 1000  # documented: a filtered listing returns at most 1,000 results per search
PAGINATION_LIMIT = 40_000  # observed: unfiltered listings fail past about 40,000 items
RERUN_WINDOW = timedelta(days=30)  # a run can be re-run up to 30 days after the initial run

_API = "https://api.github.com"
_WEB = "https://github.com"
_HOUR = 3600
_CONCLUSION_MIX = ("success", "failure", "cancelled", "skipped", "timed_out")
_CONCLUSION_WEIGHTS = (85, 8, 4, 2, 1)
_OPEN_MIX = ("in_progress", "queued", "waiting", "pending", "requested")
_OPEN_WEIGHTS = (70, 15, 8, 5, 2)
# (file, name, events and their weights, share of a repository's runs)
_WORKFLOWS = (
    ("ci.yml", "CI", (("push", 60), ("pull_request", 40)), 70),
    ("release.yml", "Release", (("push", 80), ("workflow_dispatch", 20)), 10),
    ("nightly.yml", "Nightly", (("schedule", 100),), 20),
)
_LOGINS = ("octocat", "hubot", "monalisa", "mona-lin", "dependabot[bot]", "renovate[bot]")
_MESSAGES = (
    "Fix flaky test", "Bump actions/checkout from 3 to 4", "Add retry to the uploader",
    "Refactor the parser", "Update README", "Release v1.4.2", "Handle empty pages",
)  # fmt: skip
_FEATURE_BRANCHES = ("fix/flaky", "feature/parser", "dependabot/npm/lodash-4.17.21", "docs")
# The run object's fields in the order GitHub writes them.
_RUN_FIELDS = (
    "id", "name", "node_id", "head_branch", "head_sha", "path", "display_title", "run_number",
    "event", "status", "conclusion", "workflow_id", "check_suite_id", "check_suite_node_id", "url",
    "html_url", "pull_requests", "created_at", "updated_at", "actor", "run_attempt",
    "referenced_workflows", "run_started_at", "triggering_actor", "jobs_url", "logs_url",
    "check_suite_url", "artifacts_url", "cancel_url", "rerun_url", "previous_attempt_url",
    "workflow_url", "head_commit", "repository", "head_repository",
)  # fmt: skip
_OMITTABLE = _RUN_FIELDS[1:]  # every documented field may be absent or null, except the id


def _user(login: str) -> dict[str, Any]:
    """A simple-user object; the id is derived from the login, so it is stable."""
    user_id = zlib.crc32(login.encode()) % 10_000_000 + 1
    kind = "Bot" if login.endswith("[bot]") else "User"
    return {
        "login": login, "id": user_id, "node_id": f"MDQ6VXNlcj{user_id}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
        "url": f"{_API}/users/{login}", "html_url": f"{_WEB}/{login}", "type": kind,
        "site_admin": False,
    }  # fmt: skip


class _Workflow:
    __slots__ = ("created", "file", "id", "name", "next_number", "repo")

    def __init__(self, workflow_id: int, file: str, name: str, repo: str, created: int) -> None:
        self.id, self.file, self.name = workflow_id, file, name
        self.repo, self.created = repo, created
        self.next_number = 1  # run_number: a per-workflow counter

    @property
    def path(self) -> str:
        return f".github/workflows/{self.file}"

    def object(self) -> dict[str, Any]:
        """The workflow object (GET …/actions/workflows/{id}), as webhooks carry it too."""
        return {
            "id": self.id, "node_id": f"W_kwDO{self.id}", "name": self.name, "path": self.path,
            "state": "active", "created_at": _iso(self.created), "updated_at": _iso(self.created),
            "url": f"{_API}/repos/{self.repo}/actions/workflows/{self.id}",
            "html_url": f"{_WEB}/{self.repo}/blob/main/{self.path}",
            "badge_url": f"{_WEB}/{self.repo}/workflows/{self.name}/badge.svg",
        }  # fmt: skip


class _Repo:
    __slots__ = ("full_name", "id", "listing", "object", "workflows")

    def __init__(self, full_name: str, repo_id: int) -> None:
        self.full_name, self.id = full_name, repo_id
        owner, name = full_name.split("/")
        # minimal-repository: every run of the repository carries a copy.
        self.object: dict[str, Any] = {
            "id": repo_id, "node_id": f"R_kgDO{repo_id}", "name": name, "full_name": full_name,
            "private": True, "owner": _user(owner), "html_url": f"{_WEB}/{full_name}",
            "description": None, "fork": False, "url": f"{_API}/repos/{full_name}",
        }  # fmt: skip
        self.workflows: dict[int, _Workflow] = {}
        self.listing: list[_Run] = []  # ascending by key; listings read it backwards

    def copy(self) -> dict[str, Any]:
        """A private copy of the minimal-repository object, so callers may change it."""
        return {**self.object, "owner": dict(self.object["owner"])}


class _Attempt:
    """What one finished attempt of a run looked like (GET …/runs/{id}/attempts/{n})."""

    __slots__ = ("conclusion", "started", "status", "triggering_actor", "updated")

    def __init__(self, run: _Run) -> None:
        self.status, self.conclusion = run.status, run.conclusion
        self.started, self.updated = run.started, run.updated
        self.triggering_actor = run.triggering_actor


class _Run:
    """One run. Its key (created, id) orders every listing and never changes, re-runs included."""

    __slots__ = ("actor", "attempt", "check_suite_id", "conclusion", "created", "event", "id",
                 "message", "number", "past", "prs", "ref", "repo", "sha", "started", "status",
                 "stuck", "title", "triggering_actor", "updated", "workflow")  # fmt: skip
    conclusion: str | None
    ref: str | None

    def __init__(self, run_id: int, repo: _Repo, workflow: _Workflow, created: int) -> None:
        self.id, self.repo, self.workflow, self.created = run_id, repo, workflow, created
        self.number = workflow.next_number
        workflow.next_number += 1
        self.attempt = 1
        self.started = self.updated = created  # the first attempt starts when it is created
        self.status, self.conclusion = "queued", None
        self.event, self.ref, self.sha, self.message, self.title = "push", "main", "", "", ""
        self.actor = self.triggering_actor = "octocat"
        self.check_suite_id = 0
        self.prs: list[dict[str, Any]] = []
        self.past: list[_Attempt] = []  # earlier attempts, oldest first
        self.stuck = False  # never picked up by a runner: progress() leaves it alone

    @property
    def key(self) -> tuple[int, int]:
        return self.created, self.id


_key = attrgetter("key")


class RateBudget:
    """GitHub's primary rate limit for one token: `limit` counted requests per hour.

    The hour starts with the first counted request after the previous one ended (GitHub's
    `x-ratelimit-reset` is that start plus an hour); `clock` gives epoch seconds. A 304 is not
    counted, as the docs say.
    """

    def __init__(self, limit: int, clock: Callable[[], int]) -> None:
        if limit < 0:
            raise ValueError(f"rate limit must not be negative, got {limit!r}")
        self.limit, self.clock = limit, clock
        self.used = 0
        self._reset: int | None = None

    def _roll(self) -> int:
        now = self.clock()
        if self._reset is not None and now >= self._reset:
            self.used, self._reset = 0, None
        return now

    @property
    def remaining(self) -> int:
        self._roll()
        return max(0, self.limit - self.used)

    @property
    def reset(self) -> int:
        """When the budget refills, epoch seconds (an hour from now if the hour has not begun)."""
        now = self._roll()
        return now + _HOUR if self._reset is None else self._reset

    def spend(self) -> None:
        now = self._roll()
        if self._reset is None:
            self._reset = now + _HOUR
        self.used = min(self.limit, self.used + 1)

    def exhaust(self) -> None:
        """Spends what is left of this hour (a test's shortcut to the limit)."""
        self.spend()
        self.used = self.limit

    def headers(self) -> dict[str, str]:
        """The rate-limit headers every answer of the REST API carries."""
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": str(self.reset),
            "x-ratelimit-used": str(min(self.used, self.limit)),
            "x-ratelimit-resource": "core",
        }


# A run to generate: (created, repository, workflow, event, head sha).
_Plan = tuple[int, _Repo, _Workflow, str, str]


class GitHubWorld:
    """Repositories, their workflows and workflow runs, in memory.

    - repos: full name ("owner/name") -> how many runs to generate, spread over `span` before
      `anchor` (default: the clock's now), up to an hour before it. Each repository has the
      workflows ci.yml, release.yml and nightly.yml. One push often triggers CI and Release in the
      same second, so creation times tie. The newest `open_share` of a repository's runs are
      still open; about 1% of the older ones are stuck queued or waiting (no runner, an
      environment nobody approves), and about 4% of the finished ones were re-run.
    - clock: the world's time, epoch milliseconds (default: real time). Runs are created, start,
      finish and are re-run by it; the rate budget's hour runs on it too.
    - omit_share: the share of runs whose objects leave out or null some fields (a seeded,
      stable choice per run), since every documented field may be absent or null but the id.
    - rate_limit: the token's requests per hour (RateBudget); limited_status: 403 or 429, the
      status of the primary rate-limit answer (the docs allow both).
    - past_cap: what a filtered listing answers past RESULT_CAP results: "empty" pages (observed,
      apache/devlake #6876) or "422" (observed too). result_cap and pagination_limit replace
      RESULT_CAP and PAGINATION_LIMIT, so tests need not make 40,000 runs.
    """

    def __init__(
        self,
        repos: Mapping[str, int] | None = None,
        *,
        seed: int = 1,
        anchor: datetime | None = None,
        span: timedelta = timedelta(days=30),
        open_share: float = 0.02,
        clock: Callable[[], int] | None = None,
        omit_share: float = 0.0,
        rate_limit: int = RATE_LIMIT,
        limited_status: int = 403,
        past_cap: str = "empty",
        result_cap: int = RESULT_CAP,
        pagination_limit: int = PAGINATION_LIMIT,
    ) -> None:
        for name, share in (("open_share", open_share), ("omit_share", omit_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {share!r}")
        if limited_status not in (403, 429):
            raise ValueError(f"limited_status must be 403 or 429, got {limited_status!r}")
        if past_cap not in ("empty", "422"):
            raise ValueError(f"past_cap must be 'empty' or '422', got {past_cap!r}")
        self._seed = seed
        self._rng = random.Random(seed)
        self._deliveries = random.Random(f"{seed}-deliveries")  # draws apart from the runs'
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.omit_share = omit_share
        self.limited_status = limited_status
        self.past_cap = past_cap
        self.result_cap, self.pagination_limit = result_cap, pagination_limit
        self.budget = RateBudget(rate_limit, self._now)
        self.anonymous = RateBudget(ANONYMOUS_LIMIT, self._now)
        self.secondary_until = 0  # epoch seconds; before it every request is refused
        self.secondary_status = 403
        self.anchor = anchor or datetime.fromtimestamp(self._now(), UTC)
        self._repos: dict[str, _Repo] = {}
        self._runs: dict[int, _Run] = {}
        self._next_id = 9_000_000_000 + self._rng.randrange(1_000_000)
        for full_name in repos or {}:
            self._create(full_name)
        self._generate(dict(repos or {}), span, open_share)

    def endpoints(self) -> GitHubEndpoints:
        """Its HTTP endpoints (api.py), as worker.simulator.Simulator serves them."""
        from worker.sources.github.simulator.api import GitHubEndpoints  # api.py imports this

        return GitHubEndpoints(self)

    # --- building ---------------------------------------------------------------------------

    def _now(self) -> int:
        """The world's clock in whole seconds."""
        return self._clock() // 1000

    def _create(self, full_name: str) -> _Repo:
        if full_name.count("/") != 1 or full_name.lower() in self._repos:
            raise ValueError(f"repository names are 'owner/name' and unique, got {full_name!r}")
        repo = _Repo(full_name, self._rng.randrange(100_000_000, 900_000_000))
        born = _seconds(self.anchor) - 400 * 86_400
        for file, name, _, _ in _WORKFLOWS:
            workflow_id = self._rng.randrange(1_000_000, 99_999_999)
            repo.workflows[workflow_id] = _Workflow(workflow_id, file, name, full_name, born)
        self._repos[full_name.lower()] = repo
        return repo

    def _new_id(self) -> int:
        """Run ids grow with creation, with gaps (other repositories' runs take the rest)."""
        self._next_id += self._rng.randint(1, 40)
        return self._next_id

    def _generate(self, counts: dict[str, int], span: timedelta, open_share: float) -> None:
        """Plans every repository's runs, then numbers them all in creation order."""
        high = _seconds(self.anchor) - _HOUR
        low = high - span // timedelta(seconds=1) + _HOUR
        plans = [
            plan for name, count in counts.items() for plan in self._plan(name, count, low, high)
        ]
        plans.sort(key=lambda plan: plan[0])
        by_repo: dict[str, list[_Run]] = {}
        for created, repo, workflow, event, sha in plans:
            run = _Run(self._new_id(), repo, workflow, created)
            self._describe(run, event, sha)
            by_repo.setdefault(repo.full_name, []).append(run)
        for runs in by_repo.values():
            open_from = len(runs) - min(len(runs), round(len(runs) * open_share))
            for i, run in enumerate(runs):
                self._age(run, is_open=i >= open_from, anchor=high + _HOUR)
            self._add(runs)

    def _plan(self, name: str, count: int, low: int, high: int) -> list[_Plan]:
        """(created, repo, workflow, event, sha) of `count` runs; a push may start two at once."""
        rng, repo = self._rng, self._repos[name.lower()]
        workflows = list(repo.workflows.values())
        weights = [share for *_, share in _WORKFLOWS]
        plans: list[_Plan] = []
        while len(plans) < count:
            created, sha = rng.randint(low, high), f"{rng.getrandbits(160):040x}"
            workflow = rng.choices(workflows, weights)[0]
            event = _event(rng, workflow)
            plans.append((created, repo, workflow, event, sha))
            if event == "push" and workflow.file == "ci.yml" and rng.random() < 0.1:
                release = next(w for w in workflows if w.file == "release.yml")
                plans.append((created, repo, release, "push", sha))  # one push, two workflows
        return plans[:count]

    def _describe(self, run: _Run, event: str, sha: str, ref: str | None = None) -> None:
        """Fills in what triggered the run: event, branch, commit, actor, pull requests."""
        rng = self._rng
        run.event, run.sha = event, sha or f"{rng.getrandbits(160):040x}"
        run.message = rng.choice(_MESSAGES)
        run.actor = run.triggering_actor = rng.choice(_LOGINS)
        run.check_suite_id = 20_000_000_000 + run.id
        if ref is not None:
            run.ref = ref
        elif event == "pull_request":
            run.ref = rng.choice(_FEATURE_BRANCHES)
        else:
            run.ref = "main"
        run.title = run.workflow.name if event == "schedule" else run.message
        if event == "pull_request":
            run.prs = [_pull_request(run, rng.randint(1, 4000))]

    def _age(self, run: _Run, *, is_open: bool, anchor: int) -> None:
        """Moves a generated run to where it is at the anchor: open, stuck, re-run or done."""
        rng = self._rng
        if is_open:
            run.status = rng.choices(_OPEN_MIX, _OPEN_WEIGHTS)[0]
            if run.status == "in_progress":
                run.updated = min(anchor, run.created + rng.randint(5, 600))
            return
        if rng.random() < 0.01:  # no runner ever picks it up, or nobody approves the environment
            run.status, run.stuck = rng.choice(("queued", "waiting")), True
            return
        self._finish(run, rng.choices(_CONCLUSION_MIX, _CONCLUSION_WEIGHTS)[0], anchor)
        if rng.random() < 0.04:
            later = min(anchor - 60, run.updated + rng.randint(60, 3 * 86_400))
            if later > run.updated:
                self._begin_attempt(run, later, rng.choice(_LOGINS))
                self._finish(run, "success", anchor)

    def _finish(self, run: _Run, conclusion: str, anchor: int) -> None:
        run.status, run.conclusion = "completed", conclusion
        run.updated = min(anchor, run.started + 30 + int(self._rng.expovariate(1 / 400)))
        run.updated = max(run.updated, run.started)

    def _begin_attempt(self, run: _Run, at: int, triggering_actor: str) -> None:
        """A re-run: same id and run_number, run_attempt + 1, back to queued with no conclusion;
        run_started_at resets, created_at keeps its first value."""
        run.past.append(_Attempt(run))
        run.attempt += 1
        run.status, run.conclusion = "queued", None
        run.started = run.updated = at
        run.triggering_actor = triggering_actor

    def _add(self, runs: list[_Run]) -> None:
        for run in runs:
            self._runs[run.id] = run
        listing = runs[0].repo.listing if runs else []
        listing.extend(runs)
        listing.sort(key=_key)

    # --- serving ----------------------------------------------------------------------------

    def _repo(self, full_name: str) -> _Repo:
        """The repository; owner and repository names are case-insensitive on GitHub."""
        try:
            return self._repos[full_name.lower()]
        except KeyError:
            raise KeyError(f"unknown repository {full_name!r}") from None

    def _workflow(self, repo: _Repo, ref: str | int) -> _Workflow | None:
        """A workflow by numeric id or by file name (ci.yml), as the endpoint takes either."""
        for workflow in repo.workflows.values():
            if str(ref) in (str(workflow.id), workflow.file):
                return workflow
        return None

    def _run(self, repo: str, run_id: int) -> _Run:
        run = self._runs.get(run_id)
        if run is None or run.repo is not self._repo(repo):
            raise KeyError(f"repository {repo!r} has no run {run_id!r}")
        return run

    def _object(
        self, run: _Run, *, attempt: _Attempt | None = None, complete: bool = False
    ) -> dict[str, Any]:
        """One run as the API serves it (the single definition of a run object): as it is now, or
        as it was at an earlier `attempt`; with seeded omissions unless `complete`."""
        state = attempt or run
        number = run.attempt if attempt is None else run.past.index(attempt) + 1
        base = f"{_API}/repos/{run.repo.full_name}/actions/runs/{run.id}"
        previous = f"{base}/attempts/{number - 1}" if number > 1 else None
        obj = {
            "id": run.id, "name": run.workflow.name, "node_id": f"WFR_kwLO{run.id}",
            "head_branch": run.ref, "head_sha": run.sha, "path": run.workflow.path,
            "display_title": run.title, "run_number": run.number, "event": run.event,
            "status": state.status, "conclusion": state.conclusion,
            "workflow_id": run.workflow.id, "check_suite_id": run.check_suite_id,
            "check_suite_node_id": f"CS_kwDO{run.check_suite_id}", "url": base,
            "html_url": f"{_WEB}/{run.repo.full_name}/actions/runs/{run.id}",
            "pull_requests": [dict(pr) for pr in run.prs], "created_at": _iso(run.created),
            "updated_at": _iso(state.updated), "actor": _user(run.actor), "run_attempt": number,
            "referenced_workflows": [], "run_started_at": _iso(state.started),
            "triggering_actor": _user(state.triggering_actor), "jobs_url": f"{base}/jobs",
            "logs_url": f"{base}/logs", "check_suite_url": f"{_API}/repos/"
            f"{run.repo.full_name}/check-suites/{run.check_suite_id}",
            "artifacts_url": f"{base}/artifacts", "cancel_url": f"{base}/cancel",
            "rerun_url": f"{base}/rerun", "previous_attempt_url": previous,
            "workflow_url": f"{_API}/repos/{run.repo.full_name}/actions/workflows/{run.workflow.id}",
            "head_commit": self._commit(run), "repository": run.repo.copy(),
            "head_repository": run.repo.copy(),
        }  # fmt: skip
        return obj if complete else self._omitted(run, obj)

    def _commit(self, run: _Run) -> dict[str, Any]:
        author = {"name": run.actor, "email": f"{run.actor}@users.noreply.github.com"}
        return {
            "id": run.sha, "tree_id": hashlib.sha1(run.sha.encode()).hexdigest(),
            "message": run.message, "timestamp": _iso(run.created), "author": author,
            "committer": {"name": "GitHub", "email": "noreply@github.com"},
        }  # fmt: skip

    def _omitted(self, run: _Run, obj: dict[str, Any]) -> dict[str, Any]:
        """The object with this run's seeded omissions: 1-4 fields left out or set to null.
        The choice depends on the seed and the run id only, so every answer agrees."""
        if not self.omit_share:
            return obj
        digest = hashlib.blake2b(f"{self._seed}\0omit\0{run.id}".encode(), digest_size=8)
        rng = random.Random(digest.digest())
        if rng.random() >= self.omit_share:
            return obj
        for field in rng.sample(_OMITTABLE, rng.randint(1, 4)):
            if rng.random() < 0.5:
                del obj[field]
            else:
                obj[field] = None
        return obj

    def _matching(
        self,
        repo: _Repo,
        workflow: _Workflow | None,
        wanted: Callable[[_Run], bool] | None = None,
    ) -> list[_Run]:
        """The runs a listing answers with, newest first (created_at, then id, descending).

        Chosen: the docs leave the order undocumented, and every client seen gets newest first.
        """
        return [
            run
            for run in reversed(repo.listing)
            if (workflow is None or run.workflow is workflow) and (wanted is None or wanted(run))
        ]

    def delivery_guid(self) -> str:
        """A fresh X-GitHub-Delivery GUID, from the seed (so deliveries replay too)."""
        return str(uuid.UUID(int=self._deliveries.getrandbits(128), version=4))

    # --- the public API used by tests and demos to shape the world --------------------------

    @property
    def repos(self) -> list[str]:
        return [repo.full_name for repo in self._repos.values()]

    def now(self) -> datetime:
        """The world's clock as a datetime (UTC, whole seconds, as GitHub's times are)."""
        return datetime.fromtimestamp(self._now(), UTC)

    def workflows(self, repo: str) -> list[dict[str, Any]]:
        """The repository's workflow objects (ci.yml, release.yml, nightly.yml)."""
        return [workflow.object() for workflow in self._repo(repo).workflows.values()]

    def workflow(self, repo: str, ref: str | int) -> dict[str, Any]:
        """One workflow object, by numeric id or file name."""
        found = self._workflow(self._repo(repo), ref)
        if found is None:
            raise KeyError(f"repository {repo!r} has no workflow {ref!r}")
        return found.object()

    def repository(self, repo: str) -> dict[str, Any]:
        """The minimal-repository object that runs carry."""
        return self._repo(repo).copy()

    def add_run(self, repo: str, **options: Any) -> dict[str, Any]:
        """One new run (add_runs' options), and returns its complete object."""
        return self.add_runs(repo, 1, **options)[0]

    def add_runs(
        self,
        repo: str,
        count: int = 1,
        *,
        workflow: str | int = "ci.yml",
        status: str = "completed",
        conclusion: str | None = None,
        created_at: datetime | None = None,
        event: str = "push",
        branch: str | None = "main",
        actor: str | None = None,
        head_sha: str | None = None,
        stuck: bool = False,
    ) -> list[dict[str, Any]]:
        """`count` new runs created in the same second, at `created_at` (default now), newest
        first.

        status is any string (an open set); "completed" takes `conclusion` (default "success"),
        any other status has none. A completed run finished a few minutes after it was created,
        never after now. stuck: progress() never moves it (a queued run no runner picks up).
        """
        found = self._repo(repo)
        chosen = self._workflow(found, workflow)
        if chosen is None:
            raise KeyError(f"repository {repo!r} has no workflow {workflow!r}")
        now = self._now()
        created = now if created_at is None else _seconds(created_at)
        runs = []
        for _ in range(count):
            run = _Run(self._new_id(), found, chosen, created)
            self._describe(run, event, head_sha or "", ref=branch or "")
            run.ref = branch  # may be None: the key is required, the value nullable
            run.actor = run.triggering_actor = actor or run.actor
            run.stuck = stuck
            self._place(run, status, conclusion, now)
            runs.append(run)
        if runs:
            self._add(runs)
        return [self._object(run, complete=True) for run in reversed(runs)]

    def _place(self, run: _Run, status: str, conclusion: str | None, now: int) -> None:
        if status == "completed":
            self._finish(run, conclusion or "success", max(now, run.created))
        elif conclusion is not None:
            raise ValueError(f"a {status!r} run has no conclusion yet")
        else:
            run.status = status

    def set_status(
        self, repo: str, run_id: int, status: str, conclusion: str | None = None
    ) -> dict[str, Any]:
        """Moves a run to `status` (any string) now; "completed" takes a conclusion (default
        "success"), every other status clears it. updated_at becomes now. Returns its object."""
        run = self._run(repo, run_id)
        if status != "completed" and conclusion is not None:
            raise ValueError(f"a {status!r} run has no conclusion yet")
        run.status = status
        run.conclusion = (conclusion or "success") if status == "completed" else None
        run.updated = max(self._now(), run.updated)
        return self._object(run, complete=True)

    def start_run(self, repo: str, run_id: int) -> dict[str, Any]:
        """A runner picks the run up: in_progress now (run_started_at stays the attempt's)."""
        return self.set_status(repo, run_id, "in_progress")

    def finish_run(self, repo: str, run_id: int, conclusion: str = "success") -> dict[str, Any]:
        """The run completes now with `conclusion`."""
        return self.set_status(repo, run_id, "completed", conclusion)

    def progress(self, repo: str | None = None) -> int:
        """One step for every open run that is not stuck: waiting ones start, in_progress ones
        complete with success. Returns how many moved."""
        repos = [self._repo(repo)] if repo else list(self._repos.values())
        moved = 0
        for found in repos:
            for run in found.listing:
                if run.stuck or run.status == "completed":
                    continue
                step = "completed" if run.status == "in_progress" else "in_progress"
                self.set_status(found.full_name, run.id, step)
                moved += 1
        return moved

    def hold(self, repo: str, run_id: int, status: str = "queued") -> dict[str, Any]:
        """Leaves the run in an open `status` forever: progress() skips it from now on."""
        if status == "completed":
            raise ValueError("a held run stays open")
        obj = self.set_status(repo, run_id, status)
        self._run(repo, run_id).stuck = True
        return obj

    def rerun(
        self, repo: str, run_id: int, *, triggering_actor: str | None = None
    ) -> dict[str, Any]:
        """Re-runs a completed run now: the same id and run_number, run_attempt + 1, status
        queued, conclusion null, run_started_at and updated_at now, created_at unchanged,
        previous_attempt_url set. GitHub allows it up to 30 days after the initial run."""
        run = self._run(repo, run_id)
        if run.status != "completed":
            raise ValueError(f"run {run_id} is {run.status}, not completed: it cannot be re-run")
        now = self._now()
        if now - run.created > RERUN_WINDOW // timedelta(seconds=1):
            raise ValueError(f"run {run_id} is more than 30 days old: it cannot be re-run")
        self._begin_attempt(run, max(now, run.updated), triggering_actor or run.triggering_actor)
        run.stuck = False
        return self._object(run, complete=True)

    def delete_run(self, repo: str, run_id: int) -> None:
        """Deletes a run: silently (no webhook), later GETs answer 404, and later listing pages
        shift forward by one."""
        run = self._run(repo, run_id)
        listing = run.repo.listing
        del listing[bisect.bisect_left(listing, run.key, key=_key)]
        del self._runs[run_id]

    def runs(
        self,
        repo: str,
        workflow: str | int | None = None,
        *,
        exclude_pull_requests: bool = False,
    ) -> list[dict[str, Any]]:
        """Every run of the repository (or one workflow) as listed now, newest first, with the
        seeded omissions: the truth the listings serve (with exclude_pull_requests=true, as they
        serve it then)."""
        found = self._repo(repo)
        chosen = None if workflow is None else self._workflow(found, workflow)
        if workflow is not None and chosen is None:
            raise KeyError(f"repository {repo!r} has no workflow {workflow!r}")
        return [self.served(run, exclude_pull_requests) for run in self._matching(found, chosen)]

    def get(
        self,
        repo: str,
        run_id: int,
        *,
        complete: bool = False,
        exclude_pull_requests: bool = False,
    ) -> dict[str, Any] | None:
        """One run as GET …/actions/runs/{run_id} returns it now (complete: without omissions),
        or None if there is no such run."""
        try:
            run = self._run(repo, run_id)
        except KeyError:
            return None
        return self.served(run, exclude_pull_requests, complete=complete)

    def served(
        self, run: _Run, exclude_pull_requests: bool, *, complete: bool = False
    ) -> dict[str, Any]:
        """The run object an endpoint answers with: exclude_pull_requests=true empties
        pull_requests (a key the seeded omissions left out stays out)."""
        obj = self._object(run, complete=complete)
        if exclude_pull_requests and "pull_requests" in obj:
            obj["pull_requests"] = []
        return obj

    def trip_secondary_limit(self, seconds: int = 60, status: int = 403) -> None:
        """For the next `seconds` of the clock every request gets the secondary rate-limit
        answer (403 or 429, retry-after), as when a client sends too much too fast."""
        self.secondary_until, self.secondary_status = self._now() + seconds, status


def _event(rng: random.Random, workflow: _Workflow) -> str:
    events = next(e for file, _, e, _ in _WORKFLOWS if file == workflow.file)
    return rng.choices([name for name, _ in events], [weight for _, weight in events])[0]


def _pull_request(run: _Run, number: int) -> dict[str, Any]:
    """The pull-request summary a run lists (head: the run's branch, base: main)."""
    repo = run.repo
    short = {"id": repo.id, "url": f"{_API}/repos/{repo.full_name}", "name": repo.object["name"]}
    return {
        "id": 1_000_000_000 + number, "number": number,
        "url": f"{_API}/repos/{repo.full_name}/pulls/{number}",
        "head": {"ref": run.ref, "sha": run.sha, "repo": short},
        "base": {"ref": "main", "sha": f"{zlib.crc32(run.sha.encode()):040x}", "repo": short},
    }  # fmt: skip
