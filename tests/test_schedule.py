"""The schedule model: exact UTC instants across each DST change, missed runs, parsing and its messages.

Every instant is computed, never waited for: the clock is an argument. The DST days used:
Europe/London 2026-03-29 (01:00 GMT -> 02:00 BST, at 01:00Z) and 2026-10-25 (02:00 BST -> 01:00 GMT,
at 01:00Z); America/New_York 2026-03-08 (02:00 EST -> 03:00 EDT, at 07:00Z) and 2026-11-01
(02:00 EDT -> 01:00 EST, at 06:00Z).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.errors import ConfigError
from engine.schedule import (
    CronSchedule,
    DailySchedule,
    IntervalSchedule,
    Schedule,
    ScheduleError,
    describe,
    due,
    next_due,
    parse_schedule,
    upcoming,
)

LONDON = {"timezone": "Europe/London"}
NEW_YORK = {"timezone": "America/New_York"}


def z(month: int, day: int, hour: int = 0, minute: int = 0, year: int = 2026) -> datetime:
    """An instant in UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def runs(spec: Mapping[str, object], start: datetime, count: int) -> list[datetime]:
    return upcoming(parse_schedule(dict(spec)), start, count)


# --- intervals of an hour or less: every real instant on a slot ----------------------------------------------


def test_every_30_minutes_london_spring_forward_skips_the_lost_hour() -> None:
    # 00:30 GMT, then 02:00 BST: the clock has no 01:00 or 01:30 that day; the runs stay 30 real minutes apart.
    assert runs({"every": "30 minutes", **LONDON}, z(3, 29, 0), 4) == [z(3, 29, 0, 30), z(3, 29, 1), z(3, 29, 1, 30),
                                                                        z(3, 29, 2)]


def test_every_30_minutes_london_fall_back_runs_each_repeated_slot_once_per_instant() -> None:
    # 01:00 BST, 01:30 BST, 01:00 GMT, 01:30 GMT, 02:00 GMT.
    assert runs({"every": "30 minutes", **LONDON}, z(10, 24, 23, 45), 5) == [
        z(10, 25, 0), z(10, 25, 0, 30), z(10, 25, 1), z(10, 25, 1, 30), z(10, 25, 2)]


def test_every_30_minutes_new_york_spring_forward() -> None:
    # 01:30 EST (06:30Z), then 03:00 EDT (07:00Z).
    assert runs({"every": "30 minutes", **NEW_YORK}, z(3, 8, 6), 3) == [z(3, 8, 6, 30), z(3, 8, 7), z(3, 8, 7, 30)]


def test_every_30_minutes_new_york_fall_back() -> None:
    # 01:00 EDT, 01:30 EDT, 01:00 EST, 01:30 EST, 02:00 EST.
    assert runs({"every": "30 minutes", **NEW_YORK}, z(11, 1, 4, 45), 5) == [
        z(11, 1, 5), z(11, 1, 5, 30), z(11, 1, 6), z(11, 1, 6, 30), z(11, 1, 7)]


def test_every_hour_across_both_new_york_changes() -> None:
    every_hour = {"every": "1 hour", **NEW_YORK}
    # 00:00 EST, 01:00 EST, 03:00 EDT: 02:00 does not exist.
    assert runs(every_hour, z(3, 8, 4, 30), 3) == [z(3, 8, 5), z(3, 8, 6), z(3, 8, 7)]
    # 00:00 EDT, 01:00 EDT, 01:00 EST, 02:00 EST.
    assert runs(every_hour, z(11, 1, 3, 30), 4) == [z(11, 1, 4), z(11, 1, 5), z(11, 1, 6), z(11, 1, 7)]


def test_every_hour_across_both_london_changes() -> None:
    every_hour = {"every": "1 hour", **LONDON}
    assert runs(every_hour, z(3, 28, 23, 30), 3) == [z(3, 29, 0), z(3, 29, 1), z(3, 29, 2)]  # 00 GMT, 02 and 03 BST
    assert runs(every_hour, z(10, 24, 22, 30), 4) == [z(10, 24, 23), z(10, 25, 0), z(10, 25, 1), z(10, 25, 2)]


def test_minutes_are_aligned_to_the_local_clock_not_to_a_start_time() -> None:
    # Every 15 minutes in London in summer (UTC+1): :00, :15, :30, :45 local, wherever the count starts.
    assert runs({"every": "15 minutes", **LONDON}, z(6, 1, 9, 7), 3) == [z(6, 1, 9, 15), z(6, 1, 9, 30),
                                                                           z(6, 1, 9, 45)]
    # A zone half an hour off UTC: the slots are its :00 and :30, which are UTC's :30 and :00 too.
    kolkata = parse_schedule({"every": "1 hour", "timezone": "Asia/Kolkata"})
    assert kolkata.next_after(z(6, 1, 9, 0)) == z(6, 1, 9, 30)


def test_an_interval_that_does_not_divide_a_day_keeps_its_spacing_across_midnight() -> None:
    # Counted from 1970-01-01 00:00 on the wall clock: 7 minutes apart through midnight, not reset at it.
    assert runs({"every": "7 minutes"}, z(3, 27, 23, 50), 3) == [z(3, 27, 23, 57), z(3, 28, 0, 4), z(3, 28, 0, 11)]
    seven_hours = runs({"every": "7 hours"}, z(1, 1, 0), 8)
    assert {b - a for a, b in zip(seven_hours, seven_hours[1:], strict=False)} == {timedelta(hours=7)}


# --- longer intervals and days: each wall-clock slot runs once -------------------------------------------------


def test_every_2_hours_new_york_spring_forward_runs_the_lost_0200_at_0300() -> None:
    # 00:00 EST; 02:00 is in the gap, so it runs at the first instant after it, 03:00 EDT; then 04:00 EDT.
    assert runs({"every": "2 hours", **NEW_YORK}, z(3, 8, 4), 4) == [z(3, 8, 5), z(3, 8, 7), z(3, 8, 8), z(3, 8, 10)]


def test_every_2_hours_new_york_fall_back() -> None:
    # 00:00 EDT, then 02:00 EST: three real hours, as the wall clock says two.
    assert runs({"every": "2 hours", **NEW_YORK}, z(11, 1, 3), 3) == [z(11, 1, 4), z(11, 1, 7), z(11, 1, 9)]


def test_every_2_hours_london_both_changes() -> None:
    # 00:00 GMT, 02:00 BST, 04:00 BST: the even local hours, one real hour apart across the gap.
    assert runs({"every": "2 hours", **LONDON}, z(3, 28, 23), 3) == [z(3, 29, 0), z(3, 29, 1), z(3, 29, 3)]
    # 00:00 BST, 02:00 GMT, 04:00 GMT.
    assert runs({"every": "2 hours", **LONDON}, z(10, 24, 22), 3) == [z(10, 24, 23), z(10, 25, 2), z(10, 25, 4)]


def test_daily_0230_on_the_new_york_spring_forward_day_runs_once_at_0300() -> None:
    daily = {"every": "1 day", "at": "2:30 AM", **NEW_YORK}
    # 02:30 EST on the 7th, 03:00 EDT (the first instant after the gap) on the 8th, 02:30 EDT after.
    assert runs(daily, z(3, 7, 0), 3) == [z(3, 7, 7, 30), z(3, 8, 7), z(3, 9, 6, 30)]
    assert parse_schedule(daily).next_after(z(3, 8, 7)) == z(3, 9, 6, 30)


def test_daily_0130_on_the_new_york_fall_back_day_runs_once_at_the_first_occurrence() -> None:
    daily = parse_schedule({"every": "1 day", "at": "1:30 AM", **NEW_YORK})
    assert upcoming(daily, z(10, 31, 0), 3) == [z(10, 31, 5, 30), z(11, 1, 5, 30), z(11, 2, 6, 30)]
    # From inside the repeated hour (01:10 EST, after the first 01:30 ran), the next run is the next day's.
    assert daily.next_after(z(11, 1, 6, 10)) == z(11, 2, 6, 30)
    assert daily.next_after(z(11, 1, 5, 30)) == z(11, 2, 6, 30)


def test_daily_runs_across_both_london_changes() -> None:
    # 01:30 does not exist on 2026-03-29: it runs at 02:00 BST (01:00Z), once.
    assert runs({"every": "1 day", "at": "01:30", **LONDON}, z(3, 28, 12), 2) == [z(3, 29, 1), z(3, 30, 0, 30)]
    # 01:30 happens twice on 2026-10-25: it runs at 01:30 BST (00:30Z), once.
    assert runs({"every": "1 day", "at": "01:30", **LONDON}, z(10, 24, 12), 2) == [z(10, 25, 0, 30), z(10, 26, 1, 30)]
    # A time clear of the change keeps its local time: 04:00 GMT, then 04:00 BST.
    assert runs({"every": "1 day", "at": "4 AM", **LONDON}, z(3, 28, 0), 2) == [z(3, 28, 4), z(3, 29, 3)]


def test_several_times_in_the_gap_make_one_run() -> None:
    spec = {"every": "1 day", "at": ["02:00", "2:30 AM", "03:00"], **NEW_YORK}
    assert runs(spec, z(3, 8, 0), 4) == [z(3, 8, 7), z(3, 9, 6), z(3, 9, 6, 30), z(3, 9, 7)]


def test_daily_with_several_times() -> None:
    assert runs({"every": "1 day", "at": ["16:00", "04:00"]}, z(5, 1, 5), 3) == [z(5, 1, 16), z(5, 2, 4), z(5, 2, 16)]


def test_days_without_a_time_run_at_local_midnight() -> None:
    assert runs({"every": "1 day", **NEW_YORK}, z(3, 7, 12), 2) == [z(3, 8, 5), z(3, 9, 4)]  # EST, then EDT


def test_every_n_days_counts_from_1970_01_01_in_the_zone() -> None:
    # 2026-03-28 is day 20540 since 1970-01-01, an even number: every 2 days runs on the 28th, 30th...
    assert runs({"every": "2 days", "at": "4 AM", **LONDON}, z(3, 27), 3) == [z(3, 28, 4), z(3, 30, 3), z(4, 1, 3)]
    # 1970-01-01 was a Thursday, so every 7 days runs on Thursdays.
    weekly = runs({"every": "7 days", "at": "09:00"}, z(6, 1), 3)
    assert [run.strftime("%A") for run in weekly] == ["Thursday"] * 3
    assert weekly[1] - weekly[0] == timedelta(days=7)


# --- cron: cronsim's (Debian cron's) rules in the zone -----------------------------------------------------------


def test_cron_frequent_expression_across_new_york_changes() -> None:
    half_hourly = {"cron": "*/30 * * * *", **NEW_YORK}
    assert runs(half_hourly, z(3, 8, 6), 2) == [z(3, 8, 6, 30), z(3, 8, 7)]
    assert runs(half_hourly, z(11, 1, 4, 45), 5) == [z(11, 1, 5), z(11, 1, 5, 30), z(11, 1, 6), z(11, 1, 6, 30),
                                                     z(11, 1, 7)]
    # Every quarter of the 01:00 hour on the fall-back day: both occurrences of the hour, eight runs.
    quarter = runs({"cron": "*/15 1 * * *", **NEW_YORK}, z(11, 1, 4), 9)
    assert quarter[:8] == [z(11, 1, 5) + timedelta(minutes=15 * i) for i in range(8)]
    assert quarter[8] == z(11, 2, 6)


def test_cron_fixed_times_across_new_york_changes_run_once() -> None:
    assert runs({"cron": "30 2 * * *", **NEW_YORK}, z(3, 7, 12), 2) == [z(3, 8, 7), z(3, 9, 6, 30)]
    fall = parse_schedule({"cron": "30 1 * * *", **NEW_YORK})
    assert upcoming(fall, z(10, 31, 12), 2) == [z(11, 1, 5, 30), z(11, 2, 6, 30)]
    assert fall.next_after(z(11, 1, 6, 10)) == z(11, 2, 6, 30)  # from inside the second 01:xx


def test_cron_weekday_hours_across_the_london_spring_change() -> None:
    # Friday 18:45 GMT, then Monday 06:00 BST (05:00Z).
    assert runs({"cron": "*/15 6-18 * * MON-FRI", **LONDON}, z(3, 27, 18, 20), 4) == [
        z(3, 27, 18, 30), z(3, 27, 18, 45), z(3, 30, 5), z(3, 30, 5, 15)]
    assert runs({"cron": "30 1 * * *", **LONDON}, z(3, 28, 12), 2) == [z(3, 29, 1), z(3, 30, 0, 30)]
    assert runs({"cron": "30 1 * * *", **LONDON}, z(10, 24, 12), 2) == [z(10, 25, 0, 30), z(10, 26, 1, 30)]


def test_cron_macros() -> None:
    assert runs({"cron": "@daily"}, z(3, 27, 18), 2) == [z(3, 28), z(3, 29)]
    assert runs({"cron": "@hourly", **LONDON}, z(3, 29, 0, 10), 2) == [z(3, 29, 1), z(3, 29, 2)]


# --- every search agrees with the runs listed, whatever moment it starts from ------------------------------------


CHANGE_DAYS = {"America/New_York": (z(3, 8), z(11, 1)), "Europe/London": (z(3, 29), z(10, 25))}


@pytest.mark.parametrize("spec", [
    {"every": "30 minutes", **NEW_YORK}, {"every": "1 hour", **LONDON}, {"every": "2 hours", **NEW_YORK},
    {"every": "90 minutes", **LONDON}, {"every": "1 day", "at": ["01:30", "02:30"], **NEW_YORK},
    {"every": "1 day", "at": "01:30", **LONDON}, {"cron": "*/20 1-3 * * *", **NEW_YORK},
    {"cron": "30 1 * * *", **NEW_YORK},
], ids=str)
def test_next_after_from_any_moment_is_the_next_listed_run(spec: dict[str, object]) -> None:
    schedule = parse_schedule(spec)
    for day in CHANGE_DAYS[str(spec["timezone"])]:
        start, end = day - timedelta(hours=12), day + timedelta(hours=36)
        listed = [start]
        while listed[-1] <= end:
            listed.append(schedule.next_after(listed[-1]))
        assert listed == sorted(set(listed))
        moment = start
        while moment < end:  # every 17 minutes and 13 seconds, so moments fall on, between and beside the runs
            assert schedule.next_after(moment) == next(run for run in listed if run > moment), moment
            moment += timedelta(minutes=17, seconds=13)


# --- what the serve loop asks -------------------------------------------------------------------------------------


def test_a_missed_period_runs_once_then_the_schedule_resumes() -> None:
    every_30 = parse_schedule({"every": "30 minutes"})
    down_since, back = z(5, 1, 10), z(5, 1, 13, 10)  # six slots passed while the process was down
    assert next_due(every_30, down_since, back) == back
    assert due(every_30, down_since, back)
    assert next_due(every_30, back, back) == z(5, 1, 13, 30)  # after running once, the next slot
    assert not due(every_30, back, back + timedelta(minutes=5))


def test_next_due_when_nothing_was_missed() -> None:
    every_30 = parse_schedule({"every": "30 minutes"})
    assert next_due(every_30, z(5, 1, 10), z(5, 1, 10, 20)) == z(5, 1, 10, 30)
    assert next_due(every_30, z(5, 1, 10), z(5, 1, 10, 30)) == z(5, 1, 10, 30)  # a slot at exactly now is due
    assert due(every_30, z(5, 1, 10), z(5, 1, 10, 30))


def test_a_schedule_that_never_ran_waits_for_its_first_slot_unless_asked() -> None:
    daily = parse_schedule({"every": "1 day", "at": "04:00"})
    assert next_due(daily, None, z(5, 1, 13)) == z(5, 2, 4)
    assert not due(daily, None, z(5, 1, 13))
    assert next_due(daily, None, z(5, 1, 13), first_run_now=True) == z(5, 1, 13)
    assert due(daily, None, z(5, 1, 13), first_run_now=True)


def test_a_clock_stepped_back_does_not_run_a_slot_twice() -> None:
    every_30 = parse_schedule({"every": "30 minutes"})
    assert next_due(every_30, z(5, 1, 10, 30) + timedelta(seconds=5), z(5, 1, 10, 20)) == z(5, 1, 11)


def test_upcoming_and_moments_in_other_zones() -> None:
    schedule = parse_schedule({"every": "1 day", "at": "04:00", **LONDON})
    in_tokyo = datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 03:00Z = 04:00 BST
    listed = upcoming(schedule, in_tokyo, 3)
    assert listed == [z(7, 2, 3), z(7, 3, 3), z(7, 4, 3)]
    assert all(run.tzinfo is UTC for run in listed)
    assert upcoming(schedule, in_tokyo, 0) == []
    with pytest.raises(ValueError, match="count"):
        upcoming(schedule, in_tokyo, -1)
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 7, 1))
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        next_due(schedule, None, datetime(2026, 7, 1))


# --- parsing ------------------------------------------------------------------------------------------------------


def test_the_forms_parse_to_the_model() -> None:
    london = ZoneInfo("Europe/London")
    assert parse_schedule({"every": "30 minutes"}) == IntervalSchedule(30, "minutes", zone=UTC)
    assert parse_schedule({"every": "2 hours", **LONDON}) == IntervalSchedule(2, "hours", zone=london)
    assert parse_schedule({"every": "hour"}) == IntervalSchedule(1, "hours")
    assert parse_schedule({"every": "1 day", "at": "4:00 AM"}) == DailySchedule(1, (time(4),))
    assert parse_schedule({"every": "day"}) == DailySchedule(1, (time(0),))
    assert parse_schedule({"every": "3 days", "at": ["16:00", "04:00"]}) == DailySchedule(3, (time(4), time(16)))
    assert parse_schedule({"cron": " */15 6-18 * * MON-FRI ", **LONDON}) == CronSchedule("*/15 6-18 * * MON-FRI",
                                                                                           zone=london)
    assert parse_schedule({"every": "1 day", "timezone": "UTC"}).zone is UTC


@pytest.mark.parametrize(("text", "expected"), [
    ("4:00 AM", time(4)), ("04:00", time(4)), ("4 AM", time(4)), ("4am", time(4)), ("4:00 a.m.", time(4)),
    ("16:30", time(16, 30)), ("4:30 PM", time(16, 30)), ("12:00 AM", time(0)), ("12 PM", time(12)),
    ("0:05", time(0, 5)), ("23:59:30", time(23, 59, 30)), (time(7, 15), time(7, 15)),
])
def test_times_of_day(text: object, expected: time) -> None:
    schedule = parse_schedule({"every": "1 day", "at": text})
    assert isinstance(schedule, DailySchedule) and schedule.at == (expected,)


@pytest.mark.parametrize(("spec", "expected"), [
    ({"interval": 30, "interval_type": 0, "time": "4:00 AM"}, IntervalSchedule(30, "minutes")),
    ({"interval": "2", "interval_type": 1}, IntervalSchedule(2, "hours")),
    ({"interval": 1, "interval_type": 2, "time": "4:00 AM"}, DailySchedule(1, (time(4),))),
    ({"interval": 1, "interval_type": "days", "time": None}, DailySchedule(1, (time(0),))),
    ({"interval": 15, "interval_type": "minutes", **LONDON}, IntervalSchedule(15, "minutes",
                                                                              zone=ZoneInfo("Europe/London"))),
    ({"interval": 2, "interval_type": "2", "time": "16:30"}, DailySchedule(2, (time(16, 30),))),
], ids=str)
def test_the_autofy_triple(spec: dict[str, object], expected: Schedule) -> None:
    assert parse_schedule(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ({"every": "30 minuts"}, "every: unknown unit 'minuts' (did you mean 'minutes'?); the units are minutes, hours "
                             "and days"),
    ({"every": "2 hous"}, "every: unknown unit 'hous' (did you mean 'hours'?)"),
    ({"evrey": "30 minutes"}, "unknown key 'evrey' (did you mean 'every'?)"),
    ({"every": "1 day", "timezon": "UTC"}, "unknown key 'timezon' (did you mean 'timezone'?)"),
    ({"interval": 30, "intervalType": 0}, "unknown key 'intervalType' (did you mean 'interval_type'?)"),
    ({"interval": 30, "interval_type": "minuts"}, "interval_type: unknown interval type 'minuts' (did you mean "
                                                  "'minutes'?); expected 0 (minutes), 1 (hours) or 2 (days)"),
    ({"interval": 30, "interval_type": 3}, "interval_type: 3 is not an interval type"),
    ({"interval": 30}, "'interval' needs 'interval_type'"),
    ({"interval": 0, "interval_type": 0}, "interval: an interval is at least 1 minute, not 0"),
    ({"every": "1 day", "timezone": "Europe/Londn"}, "timezone: unknown time zone 'Europe/Londn' (did you mean "
                                                     "'Europe/London'?)"),
    ({"every": "1 day", "timezone": "europe/london"}, "(did you mean 'Europe/London'?)"),
    ({"every": "1 day", "timezone": "../../etc/passwd"}, "timezone: unknown time zone '../../etc/passwd'"),
    ({"every": "30"}, "every: '30' is not an interval"),
    ({"every": 30}, "every: 30 what? Name the unit, such as '30 minutes'"),
    ({"every": "1.5 hours"}, "every: 1.5 is not a whole number of hours: say it in a smaller unit"),
    ({"every": "0 minutes"}, "every: an interval is at least 1 minute, not 0"),
    ({"every": "400 days"}, "every: 400 days is more than a year (at most 366 days); use cron"),
    ({"every": "2 weeks"}, "every: weeks are not a unit: use '7 days'"),
    ({"every": "30 minutes", "at": "04:00"}, "at: 'at' goes with 'every: N days'"),
    ({"every": "1 day", "at": 990}, "at: 990 is a number, not a time of day (an unquoted 16:30 reads as 990); quote "
                                    "the time: \"16:30\""),
    ({"every": "1 day", "at": ["04:00", 960]}, "at[1]: 960 is a number, not a time of day (an unquoted 16:00"),
    ({"every": "1 day", "at": "25:00"}, "at: '25:00' is not a time of day; write it as '04:00', '16:30' or '4:00 AM'"),
    ({"every": "1 day", "at": "13 PM"}, "at: '13 PM': with AM or PM the hour is 1 to 12"),
    ({"every": "1 day", "at": "4"}, "at: '4' is ambiguous: write '04:00', or '4 AM' or PM"),
    ({"every": "1 day", "at": ["04:00", "4 AM"]}, "at[1]: 04:00 is already at at[0]"),
    ({"every": "1 day", "at": []}, "at: expected one or more times of day, not an empty list"),
    ({"cron": "*/15 6-25 * * MON-FRI"}, "cron: invalid cron expression '*/15 6-25 * * MON-FRI': bad hour field "
                                        "'6-25' (hour: 0-23)"),
    ({"cron": "0 4 * * MONN-FRI"}, "cron: invalid cron expression '0 4 * * MONN-FRI': bad day-of-week field "
                                   "'MONN-FRI' (did you mean 'MON'?) (day-of-week: 0-7 or SUN-SAT)"),
    ({"cron": "0 4 * *"}, "cron: '0 4 * *' has 4 fields; cron takes 5"),
    ({"cron": "0 0 4 * * *"}, "cron: '0 0 4 * * *' has 6 fields; cron takes 5"),
    ({"cron": "@daly"}, "cron: unknown cron macro '@daly' (did you mean '@daily'?)"),
    ({"cron": "* * */20 * 1L"}, "cron: '* * */20 * 1L' never runs"),
    ({"cron": "0 4 * * *", "at": "04:00"}, "at: 'at' does not go with 'cron'"),
    ({"every": "1 day", "cron": "0 4 * * *"}, "give one of 'every', 'cron' or 'interval', not 'every' and 'cron'"),
    ({"timezone": "UTC"}, "a schedule needs 'every', 'cron' or 'interval'"),
    ("every 30 minutes", "a schedule is a mapping such as {every: 30 minutes}"),
], ids=str)
def test_parsing_errors_are_precise(spec: object, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(spec)
    assert message in str(caught.value)


def test_errors_carry_a_yaml_path_and_are_config_errors() -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule({"every": "1 day", "at": ["04:00", "xx"]}, ("syncs", "orders", "schedule"))
    error = caught.value
    assert error.path == ("syncs", "orders", "schedule", "at", 1)
    assert str(error) == "syncs.orders.schedule.at[1]: 'xx' is not a time of day; write it as '04:00', '16:30' or " \
                         "'4:00 AM'"
    assert error.message.startswith("'xx' is not a time of day")
    assert isinstance(error, ConfigError) and error.exit_code == 2


@pytest.mark.parametrize(("spec", "text"), [
    ({"every": "30 minutes", **LONDON}, "every 30 minutes (Europe/London)"),
    ({"every": "1 minute"}, "every minute (UTC)"),
    ({"every": "2 hours"}, "every 2 hours (UTC)"),
    ({"every": "1 day", "at": "4:00 AM"}, "every day at 04:00 (UTC)"),
    ({"every": "2 days", "at": ["16:00", "04:00", "12:00"], **NEW_YORK},
     "every 2 days at 04:00, 12:00 and 16:00 (America/New_York)"),
    ({"every": "1 day", "at": ["04:00", "16:30:15"]}, "every day at 04:00 and 16:30:15 (UTC)"),
    ({"interval": 30, "interval_type": 0}, "every 30 minutes (UTC)"),
    ({"cron": "*/15 6-18 * * MON-FRI", **LONDON},
     "cron '*/15 6-18 * * MON-FRI': every 15th minute from 06:00 through 18:59 on Monday through Friday "
     "(Europe/London)"),
    ({"cron": "@daily"}, "cron '@daily': at 00:00 every day (UTC)"),
], ids=str)
def test_describe(spec: dict[str, object], text: str) -> None:
    assert describe(parse_schedule(spec)) == text
