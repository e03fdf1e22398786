"""The simulated GitHub Actions REST API over a GitHubWorld: workflow-run listings and runs.

Listings are page-numbered, newest first, with total_count and a Link header, filtered by
actor/branch/event/head_sha/check_suite_id/status and the search-syntax `created`, and capped at
1,000 results when filtered. Every 200 carries an ETag and a matching If-None-Match gets a 304,
which costs nothing; everything else spends the world's hourly budget, and every answer carries
GitHub's rate-limit headers. Errors have GitHub's body. worker.simulator.Simulator serves it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import wraps
from typing import Any, ClassVar
from urllib.parse import urlsplit

from aiohttp import ClientSession, web

from worker.simulator.contract import Endpoints, Mistyping
from worker.simulator.faults import epoch_ms, listed, mistyped_id
from worker.simulator.seconds import seconds as _seconds
from worker.sources.github.simulator.hooks import workflow_run_delivery
from worker.sources.github.simulator.world import (
    API_VERSIONS,
    GITHUB_CONCLUSIONS,
    GITHUB_STATUSES,
    GitHubWorld,
    _Repo,
    _Run,
    _Workflow,
)

_DOCS = "https://docs.github.com/rest"
# The query parameters that make a listing a "search" capped at the result cap.
_FILTERS = ("actor", "branch", "check_suite_id", "created", "event", "head_sha", "status")


# --- queries --------------------------------------------------------------------------------

# A date or date-time of GitHub's search syntax: 2024-01-01, 2024-01-01T10:00, 2024-01-01T10:00:00,
# with fractions of a second, and Z or an offset like +07:00.
_MOMENT = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:T(\d\d):(\d\d)(?::(\d\d)(?:\.\d+)?)?(Z|[+-]\d\d:\d\d)?)?"
)
_COMPARISON = re.compile(r"(>=|<=|>|<)(.+)")


class _Rejected(Exception):
    """A request GitHub answers with an error body instead of the resource."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:  # JSON, for the body
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _invalid(field: str) -> _Rejected:
    """422 Validation Failed for one query parameter."""
    errors = [{"resource": "WorkflowRun", "field": field, "code": "invalid"}]
    return _Rejected(422, "Validation Failed", errors=errors)


def _span(text: str) -> tuple[int, int]:
    """The whole seconds a search-syntax date or date-time covers, first and last inclusive.

    A date alone covers its whole day, a date-time its one second (the observed resolution is
    whole seconds, so fractions are dropped). Chosen: without Z or an offset the value is UTC.
    An unencoded "+07:00" reaches the server as " 07:00" (a + in a query is a space) and is
    invalid here, as the docs say to URL-encode the value.
    """
    found = _MOMENT.fullmatch(text)
    if found is None:
        raise ValueError(text)
    year, month, day, hour, minute, second, zone = found.groups()
    if hour is None:
        start = _seconds(datetime(int(year), int(month), int(day), tzinfo=UTC))
        return start, start + 86_399
    # datetime() refuses a 13th month or a 25th hour with a ValueError, as it should.
    clock = (int(hour), int(minute), int(second or 0))
    start = _seconds(datetime(int(year), int(month), int(day), *clock, tzinfo=UTC))
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        start -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return start, start


def created_bounds(value: str) -> tuple[int | None, int | None]:
    """The inclusive (lowest, highest) creation second a `created` filter lets through; None is
    unbounded. Every documented form: X, >X, >=X, <X, <=X, X..Y, X..*, *..Y. ValueError if the
    value is none of them."""
    comparison = _COMPARISON.fullmatch(value)
    if comparison:
        operator, operand = comparison.groups()
        first, last = _span(operand)
        return {
            ">=": (first, None), ">": (last + 1, None), "<=": (None, last), "<": (None, first - 1),
        }[operator]  # fmt: skip
    if ".." in value:
        low, _, high = value.partition("..")
        return (
            None if low == "*" else _span(low)[0],
            None if high == "*" else _span(high)[1],
        )
    return _span(value)


class _Query:
    """A listing's filters, parsed from the query string; unknown parameters are ignored."""

    def __init__(self, query: Mapping[str, str]) -> None:
        # Chosen: an empty value filters nothing and does not make the listing a capped search.
        self.given = {name: query[name] for name in _FILTERS if query.get(name)}
        self.filtered = bool(self.given)
        self.low = self.high = None
        if "created" in self.given:
            try:
                self.low, self.high = created_bounds(self.given["created"])
            except ValueError:
                raise _invalid("created") from None

    def matches(self, run: _Run) -> bool:
        given = self.given
        return (
            (self.low is None or run.created >= self.low)
            and (self.high is None or run.created <= self.high)
            and given.get("actor", run.actor) == run.actor
            and given.get("branch", run.ref) == run.ref
            and given.get("event", run.event) == run.event
            and given.get("head_sha", run.sha) == run.sha
            and given.get("check_suite_id", str(run.check_suite_id)) == str(run.check_suite_id)
            and _status_matches(given.get("status"), run)
        )


def _status_matches(wanted: str | None, run: _Run) -> bool:
    """`status` takes one value: a status filters on status, a conclusion on conclusion.
    Chosen: a value in neither enum (both are open sets) matches either field."""
    if wanted is None:
        return True
    if wanted in GITHUB_STATUSES:
        return run.status == wanted
    if wanted in GITHUB_CONCLUSIONS:
        return run.conclusion == wanted
    return wanted in (run.status, run.conclusion)


def _page_number(query: Mapping[str, str], name: str, default: int, most: int) -> int:
    """per_page or page. Chosen: a value that is not a whole number gets the default, and one out
    of range is clamped to 1..most (per_page's documented maximum is 100)."""
    raw = query.get(name, "")
    if not (raw.isascii() and raw.isdigit()):
        return default
    return max(1, min(int(raw), most))


# --- answers --------------------------------------------------------------------------------

# Injected failures by status (worker.simulator.faults): GitHub's messages.
_FAILURES = {
    429: "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again. If you reach out to GitHub Support for help, please include the request ID.",
    500: "Server Error",
    502: "Server Error",
    503: "Service Unavailable",
}
_PRIMARY = (
    "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please "
    "include the request ID."
)
_RATE_DOCS = f"{_DOCS}/overview/rate-limits-for-the-rest-api"
_LIST_DOCS = f"{_DOCS}/actions/workflow-runs#list-workflow-runs-for-a-repository"
_PAGINATION = "In order to keep the API fast for everyone, pagination is limited for this resource."


def _error(status: int, message: str, docs: str = _DOCS, **extra: object) -> web.Response:
    """GitHub's error body: message, documentation_url, and status as a string."""
    body = {"message": message, "documentation_url": docs, **extra, "status": str(status)}
    return web.json_response(body, status=status)


def _etag(body: bytes) -> str:
    return f'W/"{hashlib.sha256(body).hexdigest()}"'


def _matches_etag(header: str | None, etag: str) -> bool:
    """If-None-Match, weak comparison: any listed tag (W/ or not) or * matches."""
    if not header:
        return False
    wanted = etag.removeprefix("W/")
    return any(
        t.strip() == "*" or t.strip().removeprefix("W/") == wanted for t in header.split(",")
    )


def _link(request: web.Request, page: int, last: int) -> str | None:
    """The Link header: prev, next, last, first as GitHub orders them; None on a single page."""
    if last <= 1 and page == 1:
        return None
    rels = []
    if page > 1:
        rels.append(("prev", page - 1))
    if page < last:
        rels += [("next", page + 1), ("last", last)]
    if page > 1:
        rels.append(("first", 1))
    return ", ".join(f'<{request.url.update_query(page=n)}>; rel="{rel}"' for rel, n in rels)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GitHubEndpoints(Endpoints):
    """GitHub's workflow-run endpoints (GET only) over a GitHubWorld, metered by its budget."""

    # Paths whose errors (401, unrouted) answer in GitHub's error format.
    paths = ("/repos/", "/_simulator/github/")
    mistypable: ClassVar[Mapping[str, Mistyping]] = {
        "id": mistyped_id,
        "created_at": epoch_ms,
        "status": listed,
    }

    def __init__(self, world: GitHubWorld) -> None:
        self.world = world

    def routes(self) -> list[tuple[str, str, _Handler, str]]:
        """(method, path, handler, route name) of every endpoint."""
        runs = "/repos/{owner}/{repo}/actions/runs"
        controls = "/_simulator/github/{owner}/{repo}"
        return [
            (method, path, self._metered(handler), name)
            for method, path, handler, name in (
                ("GET", runs, self._list_repo_runs, "github.list_repo_runs"),
                ("GET", "/repos/{owner}/{repo}/actions/workflows/{workflow}/runs",
                 self._list_workflow_runs, "github.list_workflow_runs"),
                ("GET", runs + "/{run_id}", self._get_run, "github.get_run"),
                ("GET", runs + "/{run_id}/attempts/{attempt}", self._get_attempt,
                 "github.get_attempt"),
            )
        ] + [
            # Controls for demos driven from a shell; they take the same token, spend no budget.
            (method, path, _controlled(handler), name)
            for method, path, handler, name in (
                ("POST", controls + "/runs", self._add_runs, "control.github.add_runs"),
                ("POST", controls + "/progress", self._progress, "control.github.progress"),
                ("POST", controls + "/rerun", self._rerun, "control.github.rerun"),
                ("POST", controls + "/deliver", self._deliver, "control.github.deliver"),
            )
        ]  # fmt: skip

    @staticmethod
    def authorized(request: web.Request, token: str) -> bool:
        """GitHub takes `Authorization: Bearer <token>` or the older `token <token>`."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and given.strip() == token

    def unauthorized(self, request: web.Request) -> web.Response:
        """401 for missing or wrong credentials; it spends the anonymous hourly budget.
        Chosen: no token at all is 401 "Requires authentication", as the simulated repositories
        are private (a real public one would answer anonymous requests)."""
        self.world.anonymous.spend()
        if not request.headers.get("Authorization"):
            return _error(401, "Requires authentication")
        return _error(401, "Bad credentials")

    @staticmethod
    def unrouted(exc: web.HTTPException) -> web.Response:
        return _error(exc.status, "Not Found" if exc.status == 404 else "Method Not Allowed")

    @staticmethod
    def failure(status: int) -> web.Response:
        """An injected secondary rate limit or server error (worker.simulator.faults)."""
        docs = _RATE_DOCS if status == 429 else _DOCS
        return _error(status, _FAILURES[status], docs)

    def stamp(self, response: web.StreamResponse) -> None:
        """The rate-limit headers, which every answer carries: a 401's are the anonymous ones."""
        budget = self.world.anonymous if response.status == 401 else self.world.budget
        response.headers.update(budget.headers())
        response.headers["x-github-api-version-selected"] = API_VERSIONS[0]

    @staticmethod
    def items(answer: object) -> list[dict[str, Any]]:
        """The runs of a listing (workflow_runs), or the run itself (the only answer with an id
        at its top)."""
        if not isinstance(answer, dict):
            return []
        runs = answer.get("workflow_runs")
        if isinstance(runs, list):
            return [i for i in runs if isinstance(i, dict)]
        return [answer] if "id" in answer else []

    def _metered(self, handler: _Handler) -> _Handler:
        """Refuses requests over a rate limit, turns rejections into error bodies, and spends the
        budget on every answer but a 304."""

        @wraps(handler)
        async def answer(request: web.Request) -> web.StreamResponse:
            refused = self._limited()
            if refused is not None:
                return refused
            try:
                _check_version(request)
                response = await handler(request)
            except _Rejected as exc:
                response = _error(exc.status, exc.message, **exc.extra)
            if response.status != 304:
                self.world.budget.spend()
            return response

        return answer

    async def _add_runs(self, request: web.Request) -> web.Response:
        """New runs of ci.yml created now (?count=1&status=in_progress)."""
        repo = self._repo(request).full_name
        count = min(_page_number(request.query, "count", 1, 100_000), 100_000)
        status = request.query.get("status", "in_progress")
        added = self.world.add_runs(repo, count, status=status)
        return web.json_response({"ids": [run["id"] for run in added]}, status=201)

    async def _progress(self, request: web.Request) -> web.Response:
        """One step for the open runs that are not stuck: waiting ones start, running ones end."""
        return web.json_response({"moved": self.world.progress(self._repo(request).full_name)})

    async def _rerun(self, request: web.Request) -> web.Response:
        """Re-runs ?run_id=, or the newest completed run: the same id, the next attempt."""
        repo = self._repo(request).full_name
        run_id = self._chosen_run(request, repo, completed=True)
        try:
            rerun = self.world.rerun(repo, run_id)
        except ValueError as exc:
            raise _Rejected(422, str(exc)) from None
        return web.json_response({"id": rerun["id"], "run_attempt": rerun["run_attempt"]})

    async def _deliver(self, request: web.Request) -> web.Response:
        """Sends the workflow_run delivery of ?run_id= (default: the newest run) to ?to=, a URL on
        this machine, signed with the secret in the X-Webhook-Secret header; answers with what
        the receiver answered."""
        repo = self._repo(request).full_name
        to, secret = request.query.get("to", ""), request.headers.get("X-Webhook-Secret", "")
        host = urlsplit(to).hostname
        if host not in ("127.0.0.1", "localhost", "::1") or not secret:
            raise _Rejected(422, "give ?to=<a URL on 127.0.0.1> and the X-Webhook-Secret header")
        delivery = workflow_run_delivery(
            self.world, repo, self._chosen_run(request, repo), secret=secret
        )
        async with (
            ClientSession() as session,
            session.post(to, data=delivery.body, headers=delivery.headers) as answer,
        ):
            text = await answer.text()
        return web.json_response({"status": answer.status, "answer": text[:2000]})

    def _chosen_run(self, request: web.Request, repo: str, *, completed: bool = False) -> int:
        given = request.query.get("run_id")
        if given is not None:
            if not given.isdigit() or self.world.get(repo, int(given)) is None:
                raise _Rejected(404, "Not Found")
            return int(given)
        for run in self.world.runs(repo):
            if not completed or run.get("status") == "completed":
                return int(run["id"])
        raise _Rejected(404, "no such run yet")

    def _limited(self) -> web.Response | None:
        """The secondary or primary rate-limit answer, or None to go on. Neither spends budget.
        Chosen: a conditional request is refused too while the budget is spent."""
        world = self.world
        wait = world.secondary_until - world._now()
        if wait > 0:
            response = _error(world.secondary_status, _FAILURES[429], _RATE_DOCS)
            response.headers["retry-after"] = str(wait)
            return response
        if world.budget.remaining == 0:
            return _error(world.limited_status, _PRIMARY, _RATE_DOCS)
        return None

    def _repo(self, request: web.Request) -> _Repo:
        """The repository of the path; 404 if unknown (a private one the token can't see is
        404 on GitHub too, never 403)."""
        info = request.match_info
        try:
            return self.world._repo(f"{info['owner']}/{info['repo']}")
        except KeyError:
            raise _Rejected(404, "Not Found", documentation_url=_LIST_DOCS) from None

    async def _list_repo_runs(self, request: web.Request) -> web.Response:
        return self._listing(request, self._repo(request), None)

    async def _list_workflow_runs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        workflow = self.world._workflow(repo, request.match_info["workflow"])
        if workflow is None:
            raise _Rejected(404, "Not Found")
        return self._listing(request, repo, workflow)

    def _listing(
        self, request: web.Request, repo: _Repo, workflow: _Workflow | None
    ) -> web.Response:
        """One page of runs: {"total_count", "workflow_runs"}, with the Link header."""
        world, query = self.world, request.query
        per_page = _page_number(query, "per_page", 30, 100)
        page = _page_number(query, "page", 1, 2**31)
        found = _Query(query)
        matching = world._matching(repo, workflow, found.matches)
        reachable = self._reachable(matching, found.filtered, page, per_page)
        runs = reachable[(page - 1) * per_page : page * per_page]
        omit_prs = query.get("exclude_pull_requests", "").lower() == "true"
        body = json.dumps(
            {"total_count": len(matching), "workflow_runs": [self._served(r, omit_prs) for r in runs]},
            separators=(",", ":"),
        ).encode()  # fmt: skip
        last = max(1, -(-len(reachable) // per_page))
        response = self._conditional(request, body)
        link = _link(request, page, last)
        if link is not None:
            response.headers["Link"] = link
        return response

    def _reachable(
        self, matching: list[_Run], filtered: bool, page: int, per_page: int
    ) -> list[_Run]:
        """The runs pages can reach.

        Documented: with any of actor, branch, check_suite_id, created, event, head_sha or status
        a listing returns at most 1,000 results per search. Observed past that: empty pages
        (apache/devlake #6876) or 422; past_cap picks one. total_count still counts every match
        (observed: a user was told 33,989 and got ~1,100). Unfiltered listings have no cap but
        answer 422 past about 40,000 items (page x per_page; observed, apache/devlake #8842).
        """
        world = self.world
        if not filtered:
            if page * per_page > world.pagination_limit:
                raise _Rejected(422, _PAGINATION, documentation_url=f"{_DOCS}#pagination")
            return matching
        if world.past_cap == "422" and (page - 1) * per_page >= world.result_cap:
            raise _Rejected(422, "Only the first 1000 search results are available")
        return matching[: world.result_cap]

    def _served(self, run: _Run, omit_prs: bool) -> dict[str, Any]:
        return self.world.served(run, omit_prs)  # exclude_pull_requests=true: omit_prs

    def _run(self, request: web.Request) -> _Run:
        repo, raw = self._repo(request), request.match_info["run_id"]
        run = self.world._runs.get(int(raw)) if raw.isascii() and raw.isdigit() else None
        if run is None or run.repo is not repo:
            raise _Rejected(404, "Not Found")  # unknown or deleted
        return run

    async def _get_run(self, request: web.Request) -> web.Response:
        run = self._run(request)
        omit_prs = request.query.get("exclude_pull_requests", "").lower() == "true"
        return self._conditional(request, json.dumps(self._served(run, omit_prs)).encode())

    async def _get_attempt(self, request: web.Request) -> web.Response:
        """The run as it was at one attempt; the latest attempt is the run as it is now."""
        run, raw = self._run(request), request.match_info["attempt"]
        number = int(raw) if raw.isascii() and raw.isdigit() else 0
        if not 1 <= number <= run.attempt:
            raise _Rejected(404, "Not Found")
        attempt = run.past[number - 1] if number < run.attempt else None
        return self._conditional(
            request, json.dumps(self.world._object(run, attempt=attempt)).encode()
        )

    @staticmethod
    def _conditional(request: web.Request, body: bytes) -> web.Response:
        """200 with the body and its ETag, or 304 (no body) if If-None-Match names that ETag."""
        etag = _etag(body)
        if _matches_etag(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag})
        response = web.Response(body=body, content_type="application/json")
        response.headers["ETag"] = etag
        return response


def _controlled(handler: _Handler) -> _Handler:
    """A demo control: rejections become GitHub's error bodies; no budget, no version check."""

    @wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Rejected as exc:
            return _error(exc.status, exc.message, **exc.extra)

    return answer


def _check_version(request: web.Request) -> None:
    """Without X-GitHub-Api-Version GitHub answers in the default version; an unknown one is
    400. Chosen message: the docs give none."""
    version = request.headers.get("X-GitHub-Api-Version")
    if version is not None and version not in API_VERSIONS:
        raise _Rejected(400, f"Unsupported 'X-GitHub-Api-Version' header: {version!r}")
