"""When syncs, groups and tenant profiles run unattended: the schedule model and its parsing.

A pure module (no clock, no I/O beyond the time zone database): every function takes the current
moment as an argument, so ``syncengine serve`` and the tests decide what "now" is.

Forms accepted by :func:`parse_schedule` (the value as YAML or JSON parsed it):

    {every: 30 minutes}                      every N minutes / hours, on the zone's clock
    {every: 1 day, at: "4:00 AM"}            every N days at one or more times of day
    {every: 1 day, at: ["04:00", "16:00"]}
    {cron: "*/15 6-18 * * MON-FRI"}          five-field cron (cronsim, Debian cron's rules), or @daily...
    {interval: 30, interval_type: 0, time: "4:00 AM"}
                                             Propelware Autofy's triple (0 minutes, 1 hours, 2 days)

each with an optional ``timezone`` (an IANA name). **The default zone is UTC**, not the machine's:
a pipeline must mean the same thing on a laptop, a server and CI.

The semantics, chosen once here so every schedule kind agrees:

* **Alignment.** Intervals count on the zone's wall clock from one anchor, local 1970-01-01 00:00, as
  if every day had 24 hours. So every 30 minutes runs at :00 and :30 local, every 2 hours at 00:00,
  02:00, ... local, every 7 hours at wall-clock times that drift from day to day but stay 7 hours
  apart, and every N days at the ``at`` times (default 00:00) of the days whose number since
  1970-01-01 is a multiple of N (so every 7 days falls on Thursdays: use cron for a chosen weekday).
  Runs do not depend on when the process started or last ran: a restart never shifts them.
* **Daylight saving, the Debian cron rule** (which cronsim applies to cron expressions too):

  - An interval of **one hour or less** runs at every real instant whose local time is a slot. In the
    hour lost in spring there are no such instants, so no runs (every 30 minutes in New York on
    2026-03-08: 01:30 EST, then 03:00 EDT, 30 real minutes later). In the hour repeated in autumn each
    slot happens twice and runs twice, once per distinct UTC instant (01:00 EDT, 01:30 EDT, 01:00 EST,
    01:30 EST), so the runs stay 30 real minutes apart.
  - An interval of **more than one hour**, and every ``every N days`` time, names a wall-clock time that
    must run once. A time in the lost hour runs once, at the first instant after the gap (02:30 in New
    York on 2026-03-08 runs at 03:00 EDT; several such times, or such a time and a real 03:00 slot, make
    one run; every 2 hours there runs at 00:00 EST, 03:00 EDT, 04:00 EDT). A time in the repeated hour
    runs once, at its first occurrence (01:30 EDT, not 01:30 EST).

* **Missed runs.** :func:`next_due` answers "run now" once however many slots passed while the
  process was down; it does not replay them. A schedule that never ran waits for its first slot
  unless asked to run at once (``first_run_now=True``).

Times are aware datetimes; every result is in UTC.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

from engine.errors import ConfigError
from engine.yaml_source import YamlPath, format_path

Unit = Literal["minutes", "hours", "days"]

_WALL_EPOCH = datetime(1970, 1, 1)
"""The anchor of every interval, read on the schedule zone's wall clock (naive on purpose)."""

_TICK = timedelta(microseconds=1)
"""The resolution of datetimes: "strictly after t" is "at or after t + _TICK"."""

_EXACT_UP_TO = timedelta(hours=1)
"""Intervals up to this run at every real instant on a slot; longer ones run each wall-clock slot once."""

_SCAN = timedelta(hours=6)
"""Offset changes are looked for at this step; no zone changes its offset twice within six hours."""

_MAX_DAYS = 366
"""The longest interval accepted (a year), in days; cron covers anything rarer."""

_UNIT_WORDS: dict[str, Unit] = {
    "minute": "minutes", "minutes": "minutes", "min": "minutes", "mins": "minutes",
    "hour": "hours", "hours": "hours", "hr": "hours", "hrs": "hours",
    "day": "days", "days": "days",
}
_AUTOFY_TYPES: dict[int, Unit] = {0: "minutes", 1: "hours", 2: "days"}
_MINUTES_PER: dict[Unit, int] = {"minutes": 1, "hours": 60, "days": 1440}

_FORMS = {"every": ("every", "at", "timezone"), "cron": ("cron", "timezone"),
          "interval": ("interval", "interval_type", "time", "timezone")}
_ALL_KEYS = sorted({key for keys in _FORMS.values() for key in keys})

_CRON_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_RANGES = ("0-59", "0-23", "1-31", "1-12 or JAN-DEC", "0-7 or SUN-SAT")
_CRON_NAMES = {"month": "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(),
               "day-of-week": "SUN MON TUE WED THU FRI SAT".split()}

_TIME = re.compile(r"(\d{1,2})(?::(\d{2}))?(?::(\d{2}))?\s*(?:([AaPp])\.?[Mm]\.?)?")
_EVERY = re.compile(r"(?:(\d+(?:\.\d*)?)\s*)?([A-Za-z]+)")


class ScheduleError(ConfigError):
    """A schedule spec is wrong; ``path`` locates the bad value (a YAML path, so a caller can point at its line)."""

    def __init__(self, path: YamlPath, message: str) -> None:
        super().__init__(message, path=format_path(path) or None)
        self.path = path

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{where}: {self.message}" if where else self.message


# ---------------------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Schedule(ABC):
    """When something runs: the first run after any moment, and a sentence for people."""

    zone: tzinfo = field(default=UTC, kw_only=True)
    """The zone whose wall clock the schedule follows (UTC unless the spec names one)."""

    def next_after(self, moment: datetime) -> datetime:
        """The first run strictly after ``moment`` (aware), in UTC."""
        return self._next_after(_utc(moment, "moment"))

    @abstractmethod
    def _next_after(self, moment: datetime) -> datetime:
        """:meth:`next_after` for a moment already in UTC."""

    @abstractmethod
    def describe(self) -> str:
        """``every 30 minutes (Europe/London)``: what ``syncengine schedule`` and the logs print."""

    @property
    def zone_name(self) -> str:
        """The zone's IANA name (``UTC`` for the default)."""
        return str(getattr(self.zone, "key", None) or self.zone.tzname(None))


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """Every ``every`` minutes or hours, on the wall clock counted from local 1970-01-01 00:00."""

    every: int
    unit: Literal["minutes", "hours"]

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"an interval is at least 1 {self.unit[:-1]}, not {self.every}")

    @property
    def step(self) -> timedelta:
        """The interval as a duration of wall-clock time."""
        return timedelta(minutes=self.every * _MINUTES_PER[self.unit])

    def _next_after(self, moment: datetime) -> datetime:
        step = self.step // _TICK

        def ceil_slot(wall: datetime) -> datetime:
            ticks = (wall - _WALL_EPOCH) // _TICK
            return _WALL_EPOCH + _TICK * (-(-ticks // step) * step)

        return _first_run(self.zone, ceil_slot, self.step <= _EXACT_UP_TO, moment + _TICK)

    def describe(self) -> str:
        unit = self.unit[:-1] if self.every == 1 else f"{self.every} {self.unit}"
        return f"every {unit} ({self.zone_name})"


@dataclass(frozen=True)
class DailySchedule(Schedule):
    """Every ``every`` days (day numbers since 1970-01-01 divisible by ``every``) at each time in ``at``."""

    every: int = 1
    at: tuple[time, ...] = (time(0),)
    """Times of day, sorted and distinct; 00:00 when the spec names none."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"an interval is at least 1 day, not {self.every}")
        if not self.at or list(self.at) != sorted(set(self.at)):
            raise ValueError("'at' holds one or more distinct times, sorted")

    def _next_after(self, moment: datetime) -> datetime:
        return _first_run(self.zone, self._ceil_slot, False, moment + _TICK)

    def _ceil_slot(self, wall: datetime) -> datetime:
        """The first slot at or after the naive wall-clock time ``wall``."""
        day = wall.date()
        number = (day - _WALL_EPOCH.date()).days
        if number % self.every == 0:
            for at in self.at:
                if datetime.combine(day, at) >= wall:
                    return datetime.combine(day, at)
        return datetime.combine(day + timedelta(days=self.every - number % self.every), self.at[0])

    def describe(self) -> str:
        days = "every day" if self.every == 1 else f"every {self.every} days"
        times = [at.strftime("%H:%M:%S" if at.second else "%H:%M") for at in self.at]
        listed = times[0] if len(times) == 1 else ", ".join(times[:-1]) + " and " + times[-1]
        return f"{days} at {listed} ({self.zone_name})"


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """A five-field cron expression (or ``@daily``...) evaluated by cronsim in the schedule's zone.

    Build it with :func:`parse_schedule`, which checks the expression; a bad one built directly fails
    in :meth:`next_after` with cronsim's own error.

    cronsim follows Debian cron, DST included: an expression whose minute and hour fields both start
    with something other than ``*`` (``30 2 * * *``, ``0 0-23/2 * * *``) names wall-clock times run once:
    a time in the lost hour runs at the first valid minute after the gap, a time in the repeated hour
    at its first occurrence. Other expressions (``*/15 * * * *``, ``0 */2 * * *``) run at every real
    instant that matches: none in the lost hour, both occurrences in the repeated one.
    """

    expression: str
    """As written (a macro stays a macro, for :meth:`describe`)."""

    @property
    def fields(self) -> str:
        """The five fields cronsim evaluates (a macro expanded)."""
        return _CRON_MACROS.get(self.expression.strip().lower(), self.expression.strip())

    def _next_after(self, moment: datetime) -> datetime:
        # In its wall-clock mode cronsim drops the fold of a moment in a repeated hour, so it may answer
        # the first occurrence of a time when the moment is already in the second: skip such answers.
        for found in CronSim(self.fields, moment.astimezone(self.zone)):
            run = found.astimezone(UTC)
            if run > moment:
                return run
        raise ScheduleError(("cron",), f"'{self.expression}' has no run in the 50 years after {moment.isoformat()}")

    def describe(self) -> str:
        try:
            explained = CronSim(self.fields, datetime(2000, 1, 1, tzinfo=UTC)).explain()
        except Exception:  # the description is a courtesy: an expression cronsim cannot explain still runs
            return f"cron '{self.expression}' ({self.zone_name})"
        return f"cron '{self.expression}': {explained[:1].lower()}{explained[1:]} ({self.zone_name})"


# ---------------------------------------------------------------------------------------------------------------
# Finding runs on a wall clock that jumps


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got the naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _offset(zone: tzinfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # an aware datetime in a real zone always has one
    return offset


def _first_run(zone: tzinfo, ceil_slot: Callable[[datetime], datetime], exact: bool, start: datetime) -> datetime:
    """The first run at or after ``start`` (UTC) of a schedule whose slots are naive wall-clock times.

    ``ceil_slot(wall)`` is the first slot at or after ``wall``. The search walks forward in real time,
    one stretch of constant UTC offset at a time: within a stretch wall = UTC + offset, so the next slot
    maps straight to its instant; at an offset change it starts again from the change. ``exact`` runs
    every real instant on a slot; otherwise a slot in a skipped stretch of wall clock runs at the change
    and a slot the clock repeats runs at its first occurrence only (see the module's docstring).
    """
    at = start
    while True:
        offset = _offset(zone, at)
        slot = ceil_slot((at + offset).replace(tzinfo=None))
        candidate = (slot - offset).replace(tzinfo=UTC)
        change = _first_change(zone, at, offset, candidate)
        if change is None:
            first = slot.replace(tzinfo=zone, fold=0).astimezone(UTC)
            if exact or first >= candidate:
                return candidate
            at = candidate + _TICK  # the second occurrence of a wall-clock time that already ran
            continue
        changed_at, new_offset = change
        # The wall clock jumps from changed_at + offset to changed_at + new_offset; slot >= the former.
        if not exact and new_offset > offset and slot < (changed_at + new_offset).replace(tzinfo=None):
            return changed_at
        at = changed_at


def _first_change(zone: tzinfo, after: datetime, offset: timedelta,
                  until: datetime) -> tuple[datetime, timedelta] | None:
    """The first instant in (``after``, ``until``] whose offset is not ``offset``, with its new offset."""
    low = after
    while low < until:
        high = min(low + _SCAN, until)
        if _offset(zone, high) != offset:
            return _bisect(zone, low, high, offset)
        low = high
    return None


def _bisect(zone: tzinfo, low: datetime, high: datetime, offset: timedelta) -> tuple[datetime, timedelta]:
    """The change of offset in (``low``, ``high``]: zones change offsets on whole seconds, so search those."""
    second = timedelta(seconds=1)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    lo, hi = (low - epoch) // second, -((epoch - high) // second)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(zone, epoch + mid * second) == offset:
            lo = mid
        else:
            hi = mid
    changed_at = epoch + hi * second
    return changed_at, _offset(zone, changed_at)


# ---------------------------------------------------------------------------------------------------------------
# What the serve loop and the CLI ask


def next_due(schedule: Schedule, last_run: datetime | None, now: datetime, *, first_run_now: bool = False) -> datetime:
    """When to run next: ``now`` if a slot passed since ``last_run``, else the next slot (UTC).

    However many slots passed while the process was down, the answer is ``now`` once: the caller runs,
    records ``now`` as the last run, and the next answer is the next slot. With ``last_run=None`` (never
    ran) it is the first slot after ``now``, so a new or restarted-from-scratch schedule does not fire at
    once, unless ``first_run_now``. A ``last_run`` later than ``now`` (the clock was stepped back) waits
    for the first slot after ``last_run``: a slot runs at most once.
    """
    now = _utc(now, "now")
    if last_run is None:
        return now if first_run_now else schedule.next_after(now)
    slot = schedule.next_after(_utc(last_run, "last_run"))
    return now if slot <= now else slot


def due(schedule: Schedule, last_run: datetime | None, now: datetime, *, first_run_now: bool = False) -> bool:
    """Whether to run at ``now`` (see :func:`next_due`)."""
    return next_due(schedule, last_run, now, first_run_now=first_run_now) <= _utc(now, "now")


def upcoming(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` runs strictly after ``start``, in UTC (what ``syncengine schedule`` prints)."""
    if count < 0:
        raise ValueError(f"count must be 0 or more, not {count}")
    runs: list[datetime] = []
    moment = _utc(start, "start")
    for _ in range(count):
        moment = schedule.next_after(moment)
        runs.append(moment)
    return runs


def describe(schedule: Schedule) -> str:
    """``every 30 minutes (Europe/London)``, ``every day at 04:00 (UTC)``."""
    return schedule.describe()


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def parse_schedule(value: object, path: YamlPath = ()) -> Schedule:
    """The schedule a spec (as YAML or JSON parsed it) describes; ``path`` prefixes the error locations.

    Raises :class:`ScheduleError` naming the bad key or value, with a did-you-mean for a misspelt key,
    unit, interval type or zone.
    """
    if not isinstance(value, dict):
        raise ScheduleError(path, f"a schedule is a mapping such as {{every: 30 minutes}} or {{cron: '0 4 * * *'}}, "
                                  f"not {_kind(value)}")
    for key in value:
        if not isinstance(key, str) or key not in _ALL_KEYS:
            raise ScheduleError(path, f"unknown key '{key}'" + _did_you_mean(str(key), _ALL_KEYS))
    forms = [form for form in _FORMS if form in value]
    if not forms:
        missing = "'interval_type' needs 'interval'" if "interval_type" in value else None
        raise ScheduleError(path, missing or "a schedule needs 'every', 'cron' or 'interval' (Autofy's triple)")
    if len(forms) > 1:
        raise ScheduleError(path, f"give one of 'every', 'cron' or 'interval', not {' and '.join(map(repr, forms))}")
    form = forms[0]
    for key in value:
        if key not in _FORMS[form]:
            raise ScheduleError((*path, key), f"'{key}' does not go with '{form}'")
    zone = _parse_zone(value["timezone"], (*path, "timezone")) if "timezone" in value else UTC
    if form == "cron":
        return _parse_cron(value["cron"], (*path, "cron"), zone)
    if form == "every":
        every, unit = _parse_every(value["every"], (*path, "every"))
        if unit != "days":
            if "at" in value:
                raise ScheduleError((*path, "at"), f"'at' goes with 'every: N days'; every {every} {unit} runs on "
                                                   f"the clock (every 2 hours: 00:00, 02:00...), or use cron")
            return IntervalSchedule(every, unit, zone=zone)
        at = _parse_times(value["at"], (*path, "at")) if "at" in value else (time(0),)
        return DailySchedule(every, at, zone=zone)
    every, unit = _parse_autofy(value, path)
    if unit != "days":
        return IntervalSchedule(every, unit, zone=zone)  # Autofy ignores the time unless the type is days
    given = value.get("time")
    at = (time(0),) if given is None or given == "" else _parse_times(given, (*path, "time"), many=False)
    return DailySchedule(every, at, zone=zone)


def _parse_every(value: object, path: YamlPath) -> tuple[int, Unit]:
    example = "such as '30 minutes', '2 hours' or '1 day'"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ScheduleError(path, f"expected a number and a unit {example}, not {_kind(value)}")
    if isinstance(value, int):
        raise ScheduleError(path, f"{value} what? Name the unit, {example}")
    match = _EVERY.fullmatch(value.strip())
    if not match:
        raise ScheduleError(path, f"{value!r} is not an interval: expected a number and a unit, {example}")
    number, word = match.group(1), match.group(2).lower()
    if word in ("week", "weeks"):
        raise ScheduleError(path, "weeks are not a unit: use '7 days' (counted from 1970-01-01, a Thursday) "
                                  "or cron for a chosen weekday ('0 4 * * MON')")
    if word not in _UNIT_WORDS:
        raise ScheduleError(path, f"unknown unit '{match.group(2)}'" + _did_you_mean(word, list(_UNIT_WORDS))
                            + "; the units are minutes, hours and days")
    unit = _UNIT_WORDS[word]
    if number is not None and not number.isdigit():
        raise ScheduleError(path, f"{number} is not a whole number of {unit}: say it in a smaller unit "
                                  "(1.5 hours is '90 minutes')")
    return _check_count(int(number) if number is not None else 1, unit, path), unit


def _parse_autofy(value: dict[str, Any], path: YamlPath) -> tuple[int, Unit]:
    interval = value["interval"]
    if isinstance(interval, str) and interval.strip().isdigit():
        interval = int(interval)  # Autofy sends scheduleInterval as text: "30"
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise ScheduleError((*path, "interval"), f"expected a whole number, not {_kind(interval)}")
    if "interval_type" not in value:
        raise ScheduleError(path, "'interval' needs 'interval_type': 0 (minutes), 1 (hours) or 2 (days)")
    kind = value["interval_type"]
    where = (*path, "interval_type")
    if isinstance(kind, str) and kind.strip().isdigit():
        kind = int(kind)
    if isinstance(kind, bool) or not isinstance(kind, int | str):
        raise ScheduleError(where, f"expected 0 (minutes), 1 (hours) or 2 (days), not {_kind(kind)}")
    if isinstance(kind, int):
        if kind not in _AUTOFY_TYPES:
            raise ScheduleError(where, f"{kind} is not an interval type: 0 (minutes), 1 (hours) or 2 (days)")
        unit = _AUTOFY_TYPES[kind]
    else:
        word = kind.strip().lower()
        if word not in ("minute", "minutes", "hour", "hours", "day", "days"):
            raise ScheduleError(where, f"unknown interval type '{kind}'"
                                + _did_you_mean(word, ["minutes", "hours", "days"])
                                + "; expected 0 (minutes), 1 (hours) or 2 (days)")
        unit = _UNIT_WORDS[word]
    return _check_count(interval, unit, (*path, "interval")), unit


def _check_count(count: int, unit: Unit, path: YamlPath) -> int:
    if count < 1:
        raise ScheduleError(path, f"an interval is at least 1 {unit[:-1]}, not {count}")
    limit = _MAX_DAYS * 1440 // _MINUTES_PER[unit]
    if count > limit:
        raise ScheduleError(path, f"{count} {unit} is more than a year (at most {limit:,} {unit}); use cron")
    return count


def _parse_times(value: object, path: YamlPath, *, many: bool = True) -> tuple[time, ...]:
    if isinstance(value, list) and many:
        if not value:
            raise ScheduleError(path, "expected one or more times of day, not an empty list")
        times: list[time] = []
        for index, item in enumerate(value):
            at = _parse_time(item, (*path, index))
            if at in times:
                raise ScheduleError((*path, index), f"{at:%H:%M} is already at {format_path((*path, times.index(at)))}")
            times.append(at)
        return tuple(sorted(times))
    return (_parse_time(value, path),)


def _parse_time(value: object, path: YamlPath) -> time:
    """``4:00 AM``, ``4 AM``, ``4am``, ``04:00``, ``16:30`` (and seconds: ``16:30:15``)."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise ScheduleError(path, "a time of day takes no zone of its own; set the schedule's 'timezone'")
        return value.replace(microsecond=0)
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 (PyYAML, the engine's loader) reads an unquoted 16:30 as 990, a number in base 60.
        read = f" (an unquoted {value // 60}:{value % 60:02d} reads as {value})" if 60 <= value < 1440 else ""
        raise ScheduleError(path, f"{value} is a number, not a time of day{read}; quote the time: \"16:30\"")
    if not isinstance(value, str):
        raise ScheduleError(path, f"expected a time of day such as '04:00' or '4:00 AM', not {_kind(value)}")
    bad = f"{value!r} is not a time of day; write it as '04:00', '16:30' or '4:00 AM'"
    match = _TIME.fullmatch(value.strip())
    if not match:
        raise ScheduleError(path, bad)
    hour, minute, second = (int(part) if part else 0 for part in match.group(1, 2, 3))
    half = match.group(4)
    if half is None:
        if match.group(2) is None:
            raise ScheduleError(path, f"{value!r} is ambiguous: write '{hour:02d}:00', or '{value.strip()} AM' or PM")
        if hour > 23:
            raise ScheduleError(path, bad)
    else:
        if not 1 <= hour <= 12:
            raise ScheduleError(path, f"{value!r}: with AM or PM the hour is 1 to 12")
        hour = hour % 12 + (12 if half in "Pp" else 0)
    if minute > 59 or second > 59:
        raise ScheduleError(path, bad)
    return time(hour, minute, second)


def _parse_zone(value: object, path: YamlPath) -> tzinfo:
    if not isinstance(value, str) or not value.strip():
        raise ScheduleError(path, f"expected an IANA time zone name such as 'Europe/London', not {_kind(value)}")
    if value == "UTC":
        return UTC
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        names = _zone_names()
        if names == ["UTC"]:
            raise ScheduleError(path, f"no time zone database on this machine to look up '{value}' in: install "
                                      "the tzdata package") from None
        same = [name for name in names if name.lower() == value.strip().lower()]
        hint = f" (did you mean '{same[0]}'?)" if same else _did_you_mean(value, names)
        raise ScheduleError(path, f"unknown time zone '{value}'{hint}; use an IANA name such as "
                                  "'Europe/London', 'America/New_York' or 'UTC'") from None


@cache
def _zone_names() -> list[str]:
    """Every zone name the time zone database has (read once, and only to suggest a name)."""
    return sorted(available_timezones() | {"UTC"})


def _parse_cron(value: object, path: YamlPath, zone: tzinfo) -> CronSchedule:
    if not isinstance(value, str) or not value.strip():
        raise ScheduleError(path, f"expected a cron expression such as '*/15 6-18 * * MON-FRI', not {_kind(value)}")
    schedule = CronSchedule(value.strip(), zone=zone)
    text = schedule.fields
    if text.startswith("@"):
        raise ScheduleError(path, f"unknown cron macro '{text}'" + _did_you_mean(text.lower(), list(_CRON_MACROS))
                            + f"; the macros are {', '.join(_CRON_MACROS)}")
    parts = text.split()
    if len(parts) != 5:
        raise ScheduleError(path, f"'{text}' has {len(parts)} fields; cron takes 5: minute hour day-of-month month "
                                  "day-of-week")
    try:
        simulation = CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ScheduleError(path, _cron_problem(text, parts, str(exc))) from None
    if next(simulation, None) is None:
        raise ScheduleError(path, f"'{text}' never runs (no date in 50 years matches it)")
    return schedule


def _cron_problem(text: str, parts: list[str], message: str) -> str:
    """cronsim says ``Bad hour``; say which field holds what, what it may hold, and a near day or month name."""
    name = message.removeprefix("Bad ").strip()
    if name not in _CRON_FIELDS:
        return f"invalid cron expression '{text}': {message}"
    index = _CRON_FIELDS.index(name)
    hint = ""
    for word in re.findall(r"[A-Za-z]+", parts[index]):
        names = _CRON_NAMES.get(name, [])
        if word.upper() not in names and word.upper() not in ("L", "LW"):
            hint = _did_you_mean(word.upper(), names)
            break
    return f"invalid cron expression '{text}': bad {name} field '{parts[index]}'{hint} ({name}: {_CRON_RANGES[index]})"


def _did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close (the same wording as engine.schema_errors)."""
    close = difflib.get_close_matches(word, choices, 1, 0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true or false)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value) if value.strip() else "an empty text"
    return repr(value)


__all__ = ["CronSchedule", "DailySchedule", "IntervalSchedule", "Schedule", "ScheduleError", "Unit", "describe", "due",
           "next_due", "parse_schedule", "upcoming"]
