"""A cron schedule means what crontab(5) says, in UTC: the daemon's trigger fires when it says."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from worker import cron, scheduler
from worker.config import Secret, SourceConfig

FRIDAY = datetime(2026, 11, 27, 12, 30, tzinfo=UTC)
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order


def source(expression: str) -> SourceConfig:
    return SourceConfig(
        name="apify", kind="apify", token_env="APIFY_TOKEN", token=Secret("t"),
        base_url="https://api.apify.com", cron=expression,
    )  # fmt: skip


def fires(expression: str, count: int, after: datetime = FRIDAY) -> list[datetime]:
    """The daemon's trigger's first fire times from `after` on, as APScheduler steps through them."""
    trigger = scheduler.trigger_for(source(expression))
    times = [trigger.get_next_fire_time(None, after)]
    while len(times) < count:
        times.append(trigger.get_next_fire_time(times[-1], times[-1]))
    return times


def days(times: list[datetime]) -> set[str]:
    return {DAY_NAMES[t.weekday()] for t in times}


@pytest.mark.parametrize(
    ("expression", "weekdays"),
    [
        ("0 12 * * 1-5", {"mon", "tue", "wed", "thu", "fri"}),
        ("0 12 * * mon-fri", {"mon", "tue", "wed", "thu", "fri"}),
        ("0 12 * * 0", {"sun"}),
        ("0 12 * * 7", {"sun"}),
        ("0 12 * * SUN", {"sun"}),
        ("0 12 * * 5-7", {"fri", "sat", "sun"}),
        ("0 12 * * fri-sun", {"fri", "sat", "sun"}),
        ("0 12 * * 1,3,5", {"mon", "wed", "fri"}),
        ("0 12 * * */2", {"sun", "tue", "thu", "sat"}),
    ],
)
def test_weekdays_are_numbered_from_sunday(expression, weekdays):
    times = fires(expression, 30)
    assert days(times) == weekdays
    assert {(t.hour, t.minute, t.tzinfo) for t in times} == {(12, 0, UTC)}


def test_every_minute_of_sunday_is_day_7():
    times = fires("* * * * 7", 1441)
    sunday = datetime(2026, 11, 29, tzinfo=UTC)
    assert times[:1440] == [sunday + timedelta(minutes=m) for m in range(1440)]
    assert times[1440] == sunday + timedelta(days=7)


def test_a_day_matches_if_either_restricted_day_field_does():
    # The 13th of every month, and every Friday.
    times = fires("0 0 13 * 5", 40, after=datetime(2026, 1, 1, tzinfo=UTC))
    expected = [
        day
        for day in (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n) for n in range(400))
        if day.day == 13 or day.weekday() == 4
    ]
    assert times == expected[:40]
    assert datetime(2026, 2, 13, tzinfo=UTC) in times  # a Friday the 13th fires once
    # A field that starts with * is not restricted (crontab(5)), even with a step: both must match.
    anded = fires("0 0 */2 * 5", 10, after=datetime(2026, 1, 1, tzinfo=UTC))
    assert all(t.day % 2 == 1 and t.weekday() == 4 for t in anded)
    # February 30 never comes; its Mondays do.
    assert days(fires("0 0 30 2 mon", 8)) == {"mon"}


@pytest.mark.parametrize(
    ("expression", "first"),
    [
        ("*/15 * * * *", ["12:30", "12:45", "13:00", "13:15", "13:30"]),
        ("5 1-5/2 * * *", ["01:05", "03:05", "05:05", "01:05", "03:05"]),
        ("0,30 8-9 * * *", ["08:00", "08:30", "09:00", "09:30", "08:00"]),
        ("@hourly", ["13:00", "14:00", "15:00", "16:00", "17:00"]),
        ("@daily", ["00:00"] * 5),
    ],
)
def test_steps_ranges_lists_and_macros(expression, first):
    assert [f"{t:%H:%M}" for t in fires(expression, 5)] == first


@pytest.mark.parametrize(
    ("expression", "first"),
    [
        ("@weekly", ["2026-11-29", "2026-12-06", "2026-12-13"]),
        ("@monthly", ["2026-12-01", "2027-01-01", "2027-02-01"]),
        ("@yearly", ["2027-01-01", "2028-01-01", "2029-01-01"]),
        ("0 0 1,15 jan-mar/2 *", ["2027-01-01", "2027-01-15", "2027-03-01"]),
        ("0 0 29 2 *", ["2028-02-29", "2032-02-29", "2036-02-29"]),
    ],
)
def test_days_and_months(expression, first):
    times = fires(expression, 3)
    assert [f"{t:%Y-%m-%d}" for t in times] == first
    assert {f"{t:%H:%M}" for t in times} == {"00:00"}


EXPRESSIONS = [
    "*/15 9-17 * * 1-5",
    "0 12 * * 0",
    "* * * * 7",
    "0 0 13 * 5",
    "0 0 1-31/2 * 5",
    "0 0 */2 * 5",
    "0 0 30 2 mon",
    "30 2 31 * *",
    "7,37 */5 1-10 jan,jul sat-sun",
    "@weekly",
]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_the_parser_steps_through_the_same_times_as_the_trigger(expression):
    """The daemon fires on APScheduler's trigger; a tick's fire time, and the one before it, come
    from the parser. They must agree, both ways."""
    times = fires(expression, 300)
    parsed = cron.parse(expression)
    stepped = [parsed.next_after(FRIDAY - timedelta(microseconds=1))]
    while len(stepped) < len(times):
        stepped.append(parsed.next_after(stepped[-1]))
    assert stepped == times
    for earlier, later in itertools.pairwise(times):
        assert parsed.previous_before(later) == earlier
        assert parsed.latest_at_or_before(later + timedelta(seconds=59)) == later


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("*/15 25 * * *", "'*/15 25 * * *': hour 25 is outside 0-23"),
        ("1 2 3", "'1 2 3' has 3 fields; a cron expression has 5"),
        ("* * * * * *", "has 6 fields"),
        ("60 * * * *", "minute 60 is outside 0-59"),
        ("* * 0 * *", "day of month 0 is outside 1-31"),
        ("* * * 13 *", "month 13 is outside 1-12"),
        ("* * * * 8", "day of week 8 is outside 0-7"),
        ("* * * * funday", "day of week 'funday' is not 0-7 or sun-sat"),
        ("* * * foo *", "month 'foo' is not 1-12 or jan-dec"),
        ("mon * * * *", "minute 'mon' is not 0-59"),
        ("17-9 * * * *", "minute '17-9': a range goes from low to high"),
        ("*/0 * * * *", "minute '*/0': the step must be a whole number above 0"),
        ("5/15 * * * *", "minute '5/15': a step follows a range or *, e.g. 5-59/15"),
        ("1,,2 * * * *", "minute '' is not 0-59"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6 *", "never fires"),
        ("@reboot", "'@reboot' is not a known macro"),
        ("", "has 0 fields"),
    ],
)
def test_mistakes_say_which_field(expression, message):
    with pytest.raises(cron.CronError) as caught:
        cron.parse(expression)
    assert message in str(caught.value)


def test_the_plan_lists_the_next_fire_times():
    friday_evening = datetime(2026, 11, 27, 17, 40, tzinfo=UTC)
    assert scheduler.next_fire_times(source("*/15 9-17 * * 1-5"), friday_evening) == [
        datetime(2026, 11, 27, 17, 45, tzinfo=UTC),
        datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 9, 15, tzinfo=UTC),
    ]
    every = SourceConfig(
        name="apify", kind="apify", token_env="APIFY_TOKEN", token=Secret("t"),
        base_url="https://api.apify.com", every=timedelta(minutes=1),
    )  # fmt: skip
    # An interval's ticks fall at the source's own phase of it, a minute apart.
    first, second = scheduler.next_fire_times(every, friday_evening, 2)
    assert friday_evening < first <= friday_evening + timedelta(minutes=1)
    assert second - first == timedelta(minutes=1)
    assert (first - scheduler.phase_of(every)) % timedelta(minutes=1) == timedelta(0)
    trigger = scheduler.trigger_for(every)
    trigger.jitter = None
    assert trigger.get_next_fire_time(None, friday_evening) == first
    # After the pass at start (off the grid), or a tick jittered late, the next tick is back on
    # the grid: jitter never adds up, and the phase is kept.
    started = friday_evening + timedelta(seconds=7)
    assert trigger.get_next_fire_time(started, started) == first
    assert trigger.get_next_fire_time(first + timedelta(seconds=5), first) == second
    trigger.jitter = 6
    ticks = [trigger.get_next_fire_time(None, friday_evening)]
    for _ in range(50):
        ticks.append(trigger.get_next_fire_time(ticks[-1], ticks[-1]))
    assert all(timedelta(0) <= t - (first + timedelta(minutes=n)) <= timedelta(seconds=6)
               for n, t in enumerate(ticks))  # fmt: skip


def test_the_plan_of_an_interval_starts_after_now_even_when_now_falls_on_a_tick():
    every = SourceConfig(
        name="apify", kind="apify", token_env="APIFY_TOKEN", token=Secret("t"),
        base_url="https://api.apify.com", every=timedelta(minutes=1),
    )  # fmt: skip
    on_a_tick = scheduler.phase_of(every) + timedelta(days=300)
    assert scheduler.next_fire_times(every, on_a_tick, 2) == [
        on_a_tick + timedelta(minutes=1),
        on_a_tick + timedelta(minutes=2),
    ]


def test_sources_on_one_interval_tick_at_phases_spread_over_it_the_same_in_every_replica():
    def config(name: str) -> SourceConfig:
        return SourceConfig(
            name=name, kind="apify", token_env="APIFY_TOKEN", token=Secret("t"),
            base_url="https://api.apify.com", every=timedelta(seconds=30),
        )  # fmt: skip

    now = datetime(2026, 12, 1, 4, 30, tzinfo=UTC)
    firsts = [scheduler.next_fire_times(config(f"source{i}"), now, 1)[0] for i in range(1000)]
    offsets = sorted((t - now).total_seconds() for t in firsts)
    # Evenly spread: each tenth of the interval holds about a tenth of the sources.
    tenths = [sum(3 * k < o <= 3 * (k + 1) for o in offsets) for k in range(10)]
    assert all(70 <= n <= 130 for n in tenths), tenths
    # A function of the name alone: another replica, started at another moment, agrees.
    later = now + timedelta(seconds=7)
    again = [scheduler.next_fire_times(config(f"source{i}"), later, 1)[0] for i in range(1000)]
    assert all(
        (b - a) % timedelta(seconds=30) == timedelta(0) for a, b in zip(firsts, again, strict=True)
    )


@pytest.mark.parametrize(
    ("expression", "longest"),
    [
        ("* * * * *", timedelta(minutes=1)),
        ("*/15 * * * *", timedelta(minutes=15)),
        ("0 9,17 * * *", timedelta(hours=16)),
        ("0 9 * * 1-5", timedelta(days=3)),  # Friday to Monday
        ("*/5 9-17 * * 1-5", timedelta(days=2, hours=15, minutes=5)),  # Friday 17:55 to Monday 9:00
        ("@monthly", timedelta(days=31)),
        ("@yearly", timedelta(days=366)),
        ("0 0 29 2 *", timedelta(days=4 * 365 + 1)),
        ("0 0 1 * mon", timedelta(days=7)),  # either day field: every Monday, and every 1st
    ],
)
def test_a_schedules_longest_interval_is_its_longest_gap_between_fire_times(expression, longest):
    assert scheduler.longest_interval(source(expression), FRIDAY.date()) == longest


def test_an_interval_schedules_longest_interval_is_its_interval():
    every = SourceConfig(
        name="apify", kind="apify", token_env="APIFY_TOKEN", token=Secret("t"),
        base_url="https://api.apify.com", every=timedelta(minutes=7),
    )  # fmt: skip
    assert scheduler.longest_interval(every, FRIDAY.date()) == timedelta(minutes=7)
