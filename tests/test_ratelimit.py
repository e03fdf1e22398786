"""Request pacing: published limits, learned from the answers, adaptive under 429, shared by the
sources of one token. The paces run on an injected clock; the shared budget is counted at the
simulator."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

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
    """A limit lowered upstream without saying so (no header): the 429s halve the pace, the pass
    loses nothing and succeeds."""
    for i in range(300):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    limiter = world.rate_limiter
    limiter.limit = 8
    world.stamp_rate_limit = False
    settings = apify_settings(page_size=10)
    (result,) = await scheduler.run_once(settings, [])
    assert result.outcome == "succeeded"
    assert 0 < limiter.refused_total < 40
    assert_matches_upstream(await stored_runs(db), world.list_items())
