"""Cron expressions as crontab(5) means them, in UTC: parsed, checked, and stepped through.

Five fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec) and day of
week (0-7 or sun-sat; 0 and 7 are Sunday). Each field is `*`, a value, a range `a-b`, a list of
those separated by commas, and a range or `*` may take a step (`*/15`, `1-5/2`). When both day
fields are restricted (neither starts with `*`), a day matches if either does. The macros
@hourly, @daily (@midnight), @weekly, @monthly and @yearly (@annually) stand for their expressions.

Pure Python: config checks expressions with it, the scheduler builds its triggers from it and
finds the fire time before a tick with it.
"""

from __future__ import annotations

import calendar
import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# name, lowest, highest, names (numbered from lowest)
_Spec = tuple[str, int, int, tuple[str, ...]]
_FIELDS: tuple[_Spec, ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, WEEKDAYS),
)
_FORM = "minute hour day-of-month month day-of-week, e.g. '*/15 9-17 * * 1-5', or a macro"
# Every day and weekday comes round within the 400 years of the Gregorian cycle.
_SEARCH_DAYS = 366 * 401
# The years longest_gap looks over: long enough for a 29 February to come round twice.
GAP_YEARS = 8


class CronError(ValueError):
    """Not a cron expression, or one that never fires; the message says which field is wrong."""


@dataclass(frozen=True)
class Cron:
    """One expression's fire times: the values each field allows, in order."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]  # of the month
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday ... 6 = Saturday
    either_day: bool  # both day fields restricted: a day matches if either does

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        return in_month or in_week if self.either_day else in_month and in_week

    def days_of_month_come(self) -> bool:
        """Whether any of the months has any of the days of the month (February 30 never comes)."""
        return any(day <= _longest(month) for month in self.months for day in self.days)

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment`."""
        start = _minute(moment) + timedelta(minutes=1)
        day, earliest = start.date(), start.time()
        for _ in range(_SEARCH_DAYS):
            if self.day_matches(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        if time(hour, minute) >= earliest:
                            return datetime.combine(day, time(hour, minute), UTC)
            day, earliest = day + timedelta(days=1), time()
        raise CronError(f"{self.expression!r} never fires")

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last fire time at or before `moment`: the tick a run woken at `moment` serves."""
        end = _minute(moment)
        day, latest = end.date(), end.time()
        for _ in range(_SEARCH_DAYS):
            if self.day_matches(day):
                for hour in reversed(self.hours):
                    for minute in reversed(self.minutes):
                        if time(hour, minute) <= latest:
                            return datetime.combine(day, time(hour, minute), UTC)
            day, latest = day - timedelta(days=1), time(23, 59)
        raise CronError(f"{self.expression!r} never fires")

    def previous_before(self, moment: datetime) -> datetime:
        """The last fire time strictly before `moment`."""
        return self.latest_at_or_before(moment - timedelta(microseconds=1))

    def longest_gap(self, start: date) -> timedelta:
        """The longest time between two fire times in a row, over the GAP_YEARS from `start`: the
        schedule's interval, for the daemon's alerts ('0 9 * * 1-5' has gaps of a day and of three
        days). Every matching day fires at the same times of day, so it steps by day, not by fire
        time. A schedule that fires on fewer than two days of those years: all of them."""
        times = [timedelta(hours=h, minutes=m) for h in self.hours for m in self.minutes]
        span = timedelta(days=round(365.25 * GAP_YEARS))
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        matching = [
            day
            for day in (start + timedelta(days=n) for n in range(span.days))
            if self.day_matches(day)
        ]
        if len(matching) < 2:
            return span
        gaps += [
            timedelta(days=(later - earlier).days) - times[-1] + times[0]
            for earlier, later in itertools.pairwise(matching)
        ]
        return max(gaps)


def _longest(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _minute(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("cron times are aware datetimes (UTC)")
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def parse(expression: str) -> Cron:
    """The expression's fire times; CronError (naming the field) if it is not one, or never fires."""
    if not isinstance(expression, str):
        raise CronError(f"{expression!r} is not a cron expression ({_FORM})")
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise CronError(f"{text!r} is not a known macro (use one of {', '.join(MACROS)})")
        text = MACROS[text.lower()]
    fields = text.split()
    if len(fields) != 5:
        raise CronError(
            f"{expression!r} has {len(fields)} field{'s' * (len(fields) != 1)}; "
            f"a cron expression has 5: {_FORM}"
        )
    values = [_field(field, spec, expression) for field, spec in zip(fields, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = values
    weekdays = sorted({day % 7 for day in weekdays})  # 7 is Sunday too
    cron = Cron(
        expression=expression.strip(),
        minutes=tuple(minutes),
        hours=tuple(hours),
        days=tuple(days),
        months=tuple(months),
        weekdays=tuple(weekdays),
        either_day=not fields[2].startswith("*") and not fields[4].startswith("*"),
    )
    if not cron.either_day and not cron.days_of_month_come():
        raise CronError(f"{expression!r} never fires: no month has that day")
    return cron


def _field(text: str, spec: _Spec, expression: str) -> list[int]:
    name, low, high, _ = spec
    chosen: set[int] = set()
    for part in text.split(","):
        where = f"{expression!r}: {name} {part!r}"
        base, slash, step_text = part.partition("/")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first_text, _, last_text = base.partition("-")
            first, last = _value(first_text, spec, expression), _value(last_text, spec, expression)
            if name == "day of week" and last == 0:
                last = 7  # fri-sun
            if first > last:
                raise CronError(f"{where}: a range goes from low to high")
        else:
            first = last = _value(base, spec, expression)
            if slash:
                raise CronError(
                    f"{where}: a step follows a range or *, e.g. {first}-{high}/{step_text}"
                )
        step = 1
        if slash:
            if not _digits(step_text) or int(step_text) == 0:
                raise CronError(f"{where}: the step must be a whole number above 0")
            step = int(step_text)
        chosen.update(range(first, last + 1, step))
    return sorted(chosen)


def _value(text: str, spec: _Spec, expression: str) -> int:
    name, low, high, names = spec
    if _digits(text):
        value = int(text)
        if not low <= value <= high:
            raise CronError(f"{expression!r}: {name} {value} is outside {low}-{high}")
        return value
    if text.lower() in names:
        return names.index(text.lower()) + low
    accepted = f"{low}-{high}" + (f" or {names[0]}-{names[-1]}" if names else "")
    raise CronError(f"{expression!r}: {name} {text!r} is not {accepted}")


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()
