"""Request pacing: published limits, learned from the answers, adaptive under 429, shared by the
sources of one token. The paces run on an injected clock; the shared budget is counted at the
simulator."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from helpers import assert_matches_upstream, stored_runs

from worker import ratelimit, scheduler, sources
from worker.sources import apify, rakerone

T0 = datetime(2026, 5, 1, tzinfo=UTC)
LIST = "/v2/actor-runs"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def starts(pace: ratelimit.Pace, clock: Clock, seconds: float) -> int:
    """How many requests the pace lets start in `seconds`, each taken as soon as it may."""
    count, end = 0, clock.now + seconds
    while True:
        wait = pace.reserve()
        clock.now += wait
        if clock.now >= end:
            return count
        count += 1
        pace.answered()


def test_a_pace_starts_just_under_the_published_limit():
    clock = Clock()
    limits = ratelimit.Limits(apify.LIMITS, "apify", clock=clock)
    pace = limits.pace(LIST)
    assert pace is not None and pace.limit == 60
    assert 50 <= starts(pace, clock, 10) / 10 < 60
    # Each list is a resource of its own; each single run is paced only by the token's limit.
    assert limits.pace("/v2/acts/abc/runs") is not pace
    assert limits.pace("/v2/actor-runs/run1") is None
    assert limits.token is not None and limits.token.limit == 250_000 / 60


def test_a_429_halves_the_rate_and_it_settles_below_where_it_was_refused():
    clock = Clock()
    pace = ratelimit.Pace(60, "list", clock=clock)
    before = pace.rate
    starts(pace, clock, 1)  # requests as fast as the pace lets them: it holds them back
    pace.refused()
    assert pace.rate == before / 2
    # The requests in flight when the limit was crossed come back refused together: one halving.
    pace.refused()
    pace.refused()
    assert pace.rate == before / 2 and pace.refusals == 3
    # It climbs back while answers come, but only to below where it was refused.
    starts(pace, clock, 5)
    assert pace.rate == pace.ceiling < before
    assert pace.ceiling == before * ratelimit.HEADROOM


def test_after_a_quiet_spell_the_ceiling_climbs_back_to_the_limit():
    clock = Clock()
    pace = ratelimit.Pace(60, "list", clock=clock)
    top = pace.rate
    starts(pace, clock, 1)
    pace.refused()
    starts(pace, clock, 5)
    assert pace.rate < top
    starts(pace, clock, 20 * ratelimit.QUIET)  # no 429 for a long while: the limit went up?
    assert pace.rate == top


def test_repeated_429s_slow_down_to_the_floor_and_no_further():
    clock = Clock()
    pace = ratelimit.Pace(60, "list", clock=clock)
    for _ in range(50):
        starts(pace, clock, 2)
        pace.refused()
    # A tenth of the limit: below it, the retries' own backoff spaces the requests out.
    assert pace.floor == 60 * ratelimit.LOWEST_SHARE
    assert pace.rate == pace.ceiling == pace.floor
    clock.now += 10
    assert pace.reserve() == 0 and round(pace.reserve(), 6) == round(1 / pace.floor, 6)
    # A tiny limit's floor is the absolute one.
    assert ratelimit.Pace(1, "tiny", clock=clock).floor == ratelimit.FLOOR


def test_429s_that_are_not_about_the_pace_do_not_lower_where_it_settles():
    """Requests slower than the pace allows, refused now and then (the budget spent by another
    client, or an upstream refusing at random): each 429 halves the rate, which climbs straight
    back; the ceiling stays, so a stream of such 429s never drives the pace to its floor."""
    clock = Clock()
    pace = ratelimit.Pace(60, "list", clock=clock)
    top = pace.ceiling
    for _ in range(100):
        clock.now += 0.5  # two requests a second, far below the pace's 54
        assert pace.reserve() == 0
        pace.refused()
        for _ in range(30):
            clock.now += 0.5
            assert pace.reserve() == 0
            pace.answered()
    assert pace.ceiling == top and pace.rate == top
    # Once the pace holds requests back, a 429 is about it: it settles below.
    starts(pace, clock, 1)
    pace.refused()
    assert pace.ceiling == top * ratelimit.HEADROOM


def test_the_limit_the_upstream_states_replaces_the_published_one():
    clock = Clock()
    limits = ratelimit.Limits(apify.LIMITS, "apify", clock=clock)
    limits.answered(LIST, 200, "20")
    pace = limits.pace(LIST)
    assert pace.limit == 20 and pace.rate == 20 * ratelimit.HEADROOM
    # A resource met later starts at the stated limit; a header that is not a number is ignored.
    limits.answered("/v2/acts/abc/runs", 200, "many")
    assert limits.pace("/v2/acts/abc/runs").limit == 20
    limits.answered(LIST, 200, "120")  # raised upstream: no config change needed
    assert pace.limit == 120 and pace.rate < 30  # it climbs there, not jumps
    starts(pace, clock, 2)
    assert pace.rate == 120 * ratelimit.HEADROOM


def test_an_upstream_without_a_published_limit_is_paced_conservatively_and_adapts():
    clock = Clock()
    limits = ratelimit.Limits(rakerone.LIMITS, "rakerone", clock=clock)
    assert limits.pace("/api/projects/p/action-runs") is None
    token = limits.token
    assert token is not None and token.rate <= 20
    token.reserve(), token.reserve()  # requests at the pace
    limits.answered("/api/projects/p/action-runs", 429, None)
    assert token.rate < 20 * ratelimit.HEADROOM and token.refusals == 1


def test_a_source_states_the_limit_an_upstream_does_not_publish_and_only_caps_a_published_one(
    write_config,
):
    settings = write_config(
        """
        [[sources]]
        name = "raker"
        kind = "rakerone"
        token_env = "RAKER_TOKEN"
        project = "p"
        every = "1m"
        max_requests_per_second = 100

        [[sources]]
        name = "apify"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        every = "1m"
        max_requests_per_second = 100
        """,
        env={"RAKER_TOKEN": "t", "APIFY_TOKEN": "t"},
    )
    assert sources.limits(settings.source("raker")).per_token == 100
    assert sources.limits(settings.source("apify")) == apify.LIMITS  # a cap, applied by the client


def test_sources_on_one_token_share_its_limits_and_other_tokens_do_not():
    registry = ratelimit.Registry()
    one = registry.limits("apify", "https://api.apify.com/", "token-a", apify.LIMITS)
    assert registry.limits("apify", "https://api.apify.com", "token-a", apify.LIMITS) is one
    assert registry.limits("apify", "https://api.apify.com", "token-b", apify.LIMITS) is not one
    assert "token-a" not in repr(vars(registry))


async def test_two_sources_on_one_token_stay_within_the_shared_limit_together(
    world, sim, db, write_config
):
    """Two sources walk the same list (one resource) with one token, at once: between them they
    never cross Apify's 60 a second, counted at the simulator, and lose nothing."""
    for i in range(3000):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    arrivals: Counter[int] = Counter()
    clock = world.rate_limiter.clock

    def admit(resource, _admit=world.rate_limiter.admit):
        arrivals[int(clock() * 4)] += 1  # quarter-second buckets
        return _admit(resource)

    world.rate_limiter.admit = admit
    sources = "".join(
        f"""
        [[sources]]
        name = "{name}"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        page_size = 20
        """
        for name in ("one", "two")
    )
    settings = write_config(sources)
    results = await scheduler.run_once(settings, [])
    assert [r.outcome for r in results] == ["succeeded", "succeeded"]
    assert world.rate_limiter.refused_total == 0
    # Over any second (four buckets in a row) the two stayed under the limit.
    buckets = [arrivals.get(b, 0) for b in range(min(arrivals), max(arrivals) + 1)]
    busiest = max(sum(buckets[i : i + 4]) for i in range(max(len(buckets) - 3, 1)))
    assert sum(buckets) >= 300 and busiest <= 60
    items = world.list_items()
    assert_matches_upstream(await stored_runs(db, "one"), items)
    assert_matches_upstream(await stored_runs(db, "two"), items)


async def test_a_lower_limit_upstream_is_learned_from_the_first_answers(
    world, sim, db, apify_settings
):
    for i in range(400):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    world.rate_limiter.limit = 10  # and every answer says so in X-RateLimit-Limit
    settings = apify_settings(page_size=10)
    (result,) = await scheduler.run_once(settings, [])
    assert result.outcome == "succeeded"
    # The first requests go at the published pace and may cross the lower limit; once the header
    # is read, none does.
    assert world.rate_limiter.refused_total <= 10
    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_429s_without_a_stated_limit_slow_the_pace_and_the_stream_completes(
    world, sim, db, apify_settings
):
    """A limit lowered upstream without saying so (no header): the pass meets 429s, loses
    nothing and succeeds. (How a 429 halves the pace is checked on an injected clock above: here,
    the 8 windows' retries and their backoff meet about as many 429s whatever the pace does.)"""
    for i in range(300):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    limiter = world.rate_limiter
    limiter.limit = 8
    world.stamp_rate_limit = False
    settings = apify_settings(page_size=10)
    (result,) = await scheduler.run_once(settings, [])
    assert result.outcome == "succeeded"
    assert limiter.refused_total > 0
    assert_matches_upstream(await stored_runs(db), world.list_items())


# --- an hourly budget stated in the answers (GitHub) --------------------------------------------

GITHUB = ratelimit.Published(per_token=15.0, budget=ratelimit.Budget())
REPO_RUNS = "/repos/octo/app/actions/runs"
SECONDARY = (
    ": You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)


def github_limits() -> tuple[ratelimit.Limits, Clock]:
    """GitHub's limits on one clock, in epoch seconds (its resets are stated in them)."""
    clock = Clock()
    clock.now = T0.timestamp()
    return ratelimit.Limits(GITHUB, "github", clock=clock, wall=clock), clock


def budget(remaining: int, reset: float, limit: int = 5000, resource: str = "core") -> dict:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-used": str(limit - remaining),
        "x-ratelimit-reset": str(int(reset)),
        "x-ratelimit-resource": resource,
    }


def spacing(allowance: ratelimit.Allowance, clock: Clock) -> tuple[float, float]:
    """The seconds between two requests that each start as soon as the budget lets them, and the
    seconds from the first to the reset."""
    clock.now += allowance.take()
    left = allowance.reset - clock.now
    wait = allowance.take()
    clock.now += wait
    return wait, left


def test_a_budget_paces_nothing_while_half_is_left_then_more_as_it_falls():
    limits, clock = github_limits()
    allowance = limits.allowance
    reset = clock.now + 1800
    assert allowance.take() == 0  # nothing stated yet
    limits.answered(REPO_RUNS, 200, None, headers=budget(2501, reset))
    assert [allowance.take() for _ in range(50)] == [0] * 50
    gaps = []
    for remaining in (2500, 1500, 1000, 600, 501):
        limits.answered(REPO_RUNS, 200, None, headers=budget(remaining, reset))
        gap, left = spacing(allowance, clock)
        # What is left above the reserve (500 of 5000), spread over the seconds to the reset.
        assert gap == pytest.approx(left / (remaining - 500))
        gaps.append(gap)
    assert gaps == sorted(gaps) and gaps[0] < 1 < 100 < gaps[-1]


def test_a_paced_budget_lasts_until_the_reset_and_stops_at_the_reserve():
    """Requests taken as fast as the pace lets them, each spending one: the budget comes down to
    the reserve just as it refills, never before."""
    limits, clock = github_limits()
    reset = clock.now + 1800
    remaining = 2500
    limits.answered(REPO_RUNS, 200, None, headers=budget(remaining, reset))
    with pytest.raises(ratelimit.Spent) as spent:
        while True:
            clock.now += limits.allowance.take()
            assert clock.now < reset
            remaining -= 1
            limits.answered(REPO_RUNS, 200, None, headers=budget(remaining, reset))
    assert remaining == 500 and reset - 2 < clock.now < reset
    assert "is down to 500, the 500 runsync leaves to the token's other users, until" in str(
        spent.value
    )
    assert spent.value.wait == pytest.approx(reset + ratelimit.RESET_MARGIN - clock.now)


def test_a_304_costs_no_budget_and_gives_its_place_back():
    limits, clock = github_limits()
    reset = clock.now + 1800
    limits.answered(REPO_RUNS, 200, None, headers=budget(1000, reset))
    gap, _ = spacing(limits.allowance, clock)
    assert gap > 1
    limits.answered(REPO_RUNS, 304, None, headers=budget(1000, reset))
    assert limits.allowance.take() == 0  # the 304's place
    limits.answered(REPO_RUNS, 200, None, headers=budget(999, reset))
    assert limits.allowance.take() == pytest.approx(gap, rel=0.01)


def test_a_spent_budget_refuses_every_request_until_the_reset_then_refills():
    limits, clock = github_limits()
    reset = clock.now + 1800
    words = ": API rate limit exceeded for user ID 1."
    for status in (403, 429):
        refused = limits.answered(REPO_RUNS, status, None, headers=budget(0, reset), message=words)
        assert refused is ratelimit.Refused.BUDGET
    assert limits.token.refusals == 0  # the hour's budget, not the pace
    for _ in range(3):
        with pytest.raises(ratelimit.Spent) as spent:
            limits.allowance.take()
        assert str(spent.value) == (
            "the hourly request budget (core, 5000 requests) is spent until 2026-05-01 00:30:00 UTC"
        )
        assert spent.value.wait == 1800 + ratelimit.RESET_MARGIN
    clock.now = reset + ratelimit.RESET_MARGIN
    assert limits.spent() is None and limits.allowance.take() == 0
    # A 200 that leaves none spends it as well: the next request is not sent.
    limits.answered(REPO_RUNS, 200, None, headers=budget(0, reset + 3600))
    assert limits.spent() is not None


def test_the_secondary_limit_slows_the_pace_and_other_403s_are_no_refusal():
    limits, clock = github_limits()
    reset = clock.now + 1800
    token = limits.token
    top = token.rate
    starts(token, clock, 1)
    refused = limits.answered(REPO_RUNS, 403, None, headers=budget(4000, reset), message=SECONDARY)
    assert refused is ratelimit.Refused.SECONDARY and token.rate == top / 2
    clock.now += 5
    with_retry_after = {**budget(3999, reset), "Retry-After": "30"}
    assert limits.answered(REPO_RUNS, 429, None, headers=with_retry_after) is not None
    assert token.refusals == 2
    # Permission or SSO: GitHub's 403 that is about no limit, and the budget is left as it was.
    words = ": Resource not accessible by personal access token"
    assert limits.answered(REPO_RUNS, 403, None, headers=budget(3998, reset), message=words) is None
    assert token.refusals == 2 and limits.spent() is None
    # Apify and RakerOne, which state no budget, are as they were: a 403 is no refusal.
    apify_limits = ratelimit.Limits(apify.LIMITS, "apify", clock=clock)
    assert apify_limits.answered(LIST, 403, None, message=SECONDARY) is None
    assert apify_limits.answered(LIST, 429, None) is ratelimit.Refused.PACE


def test_figures_of_another_resource_or_an_answer_overtaken_on_the_way_are_left_out():
    limits, clock = github_limits()
    reset = clock.now + 1800
    allowance = limits.allowance
    limits.answered(REPO_RUNS, 200, None, headers=budget(3000, reset))
    limits.answered(REPO_RUNS, 200, None, headers=budget(3001, reset))  # sent earlier, came later
    limits.answered("/search/code", 403, None, headers=budget(0, reset, 30, "search"))
    limits.answered(REPO_RUNS, 401, None, headers=budget(59, reset + 60, 60))  # anonymous
    assert (allowance.remaining, allowance.limit) == (3000, 5000) and limits.spent() is None
    limits.answered(REPO_RUNS, 200, None, headers=budget(4999, reset - 3600))  # an hour ago
    assert allowance.remaining == 3000
    limits.answered(REPO_RUNS, 200, None, headers=budget(4999, reset + 3600))  # the next hour
    assert allowance.remaining == 4999


def test_a_wait_past_the_patience_is_not_taken():
    """Paced so far apart that the request could not wait for its turn: it fails at once, and
    its place stays free for one that can."""
    limits, clock = github_limits()
    reset = clock.now + 1800
    limits.answered(REPO_RUNS, 200, None, headers=budget(503, reset))  # 3 above the reserve
    assert limits.allowance.take(patience=120) == 0
    with pytest.raises(ratelimit.Spent, match="paced to last: the next request may start at"):
        limits.allowance.take(patience=120)
    assert limits.allowance.take() == pytest.approx(600)


def test_sources_on_one_token_share_its_budget():
    registry = ratelimit.Registry(wall=lambda: T0.timestamp())
    one = registry.limits("github", "https://api.github.com", "token-a", GITHUB)
    other = registry.limits("github", "https://api.github.com/", "token-a", GITHUB)
    apart = registry.limits("github", "https://api.github.com", "token-b", GITHUB)
    one.answered(REPO_RUNS, 403, None, headers=budget(0, T0.timestamp() + 60))
    assert other.spent() is not None and apart.spent() is None
