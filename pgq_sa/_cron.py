"""Cron schedules as pure functions: validation, fire times across time zones and DST, missed runs.

No I/O and no clock: callers pass ``now``. Six-field expressions put the seconds first
(``"*/5 * * * * *"`` is every five seconds), five-field ones are classic minute cron.

Daylight saving time, the way cron users expect it:

* schedules at fixed hours (the hour field is a number or list, e.g. ``"30 2 * * *"``) follow
  the wall clock: a time that does not exist (spring forward) fires when the clock has jumped
  past it, and a time that happens twice (fall back) fires once, at its first occurrence;
* frequent schedules (the hour field has ``*``, e.g. ``"*/15 * * * *"``) follow real time: they
  keep their rhythm through the change, while day-of-week/month fields still read the local date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from pgq_sa import _validation as validation

UTC = timezone.utc
Missed = Literal["latest", "skip", "all"]
_MAX_STEPS = 200_000


@dataclass(frozen=True)
class CronSchedule:
    """A validated schedule: the task it enqueues, when, and what to do about missed runs."""

    name: str
    expression: str
    timezone: str
    missed: Missed = "latest"
    catch_up_limit: int = 10

    @property
    def seconds_field(self) -> bool:
        return len(self.expression.split()) == 6

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def follows_real_time(self) -> bool:
        """True for frequent schedules (any ``*`` in the hour field)."""
        fields = self.expression.split()
        hour = fields[2] if self.seconds_field else fields[1]
        return "*" in hour

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after`` (aware), as an aware UTC datetime."""
        if self.follows_real_time:
            return _next_real_time(self, after)
        return _next_wall_clock(self, after)

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """The latest ``limit`` fire times in ``(start, end]``, oldest first.

        Looks back from ``end`` in growing windows, so a long downtime of a per-second schedule
        costs a few dozen steps, not one per missed second.
        """
        window = timedelta(seconds=2)
        while True:
            begin = max(start, end - window)
            times: list[datetime] = []
            moment = begin
            for _ in range(_MAX_STEPS):
                moment = self.next_after(moment)
                if moment > end:
                    break
                times.append(moment)
            if len(times) >= limit or begin == start:
                return times[-limit:]
            window *= 4

    def due(self, last_fire: datetime | None, baseline: datetime, now: datetime) -> list[datetime]:
        """Which fire times to enqueue now, given the last one that fired (or, for a schedule
        that never fired, the time it was first seen), under the missed-run policy:
        ``latest`` fires the most recent due time, ``skip`` fires it only if it is on time,
        ``all`` catches up on up to ``catch_up_limit`` of them, oldest first."""
        start = last_fire or baseline
        if start >= now:
            return []
        limit = self.catch_up_limit if self.missed == "all" else 1
        pending = self.fires_between(start, now, limit)
        if not pending:
            return []
        if self.missed == "skip":
            latest = pending[-1]
            return [latest] if now - latest <= self.grace(latest) else []
        return pending

    def grace(self, fire: datetime) -> timedelta:
        """How late a fire may be and still count as on time (for ``missed="skip"``)."""
        interval = self.next_after(fire) - fire
        return min(timedelta(seconds=60), max(interval / 2, timedelta(seconds=1)))


def cron_schedule(
    name: object,
    expression: object,
    timezone_name: object = "UTC",
    missed: object = "latest",
    catch_up_limit: object = 10,
) -> CronSchedule:
    """Validate a schedule declaration; ValueError/TypeError say what to fix."""
    task = validation.task_name(name)
    if not isinstance(expression, str):
        raise TypeError(f"the cron expression must be a str, got {type(expression).__name__}")
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron expression {expression!r} has {len(fields)} fields; use 5 (minute hour day "
            "month weekday) or 6 (second minute hour day month weekday)"
        )
    normalized = " ".join(fields)
    try:
        croniter(normalized, datetime(2000, 1, 1), second_at_beginning=True)
    except (ValueError, KeyError, TypeError) as error:  # croniter's errors derive from ValueError
        raise ValueError(f"cron expression {expression!r} is not valid: {error}") from None
    if not croniter.is_valid(normalized, second_at_beginning=True, strict=True):
        raise ValueError(f"cron expression {expression!r} is not valid")
    if not isinstance(timezone_name, str):
        raise TypeError(f"timezone must be a str such as 'Europe/Paris', got {timezone_name!r}")
    try:
        ZoneInfo(timezone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {timezone_name!r}; use an IANA name such as 'UTC' or "
            "'America/New_York'"
        ) from None
    if missed not in ("latest", "skip", "all"):
        raise ValueError(f"missed must be 'latest', 'skip' or 'all', got {missed!r}")
    limit = validation._integer(catch_up_limit, "catch_up_limit")
    if not 1 <= limit <= 10_000:
        raise ValueError(f"catch_up_limit must be from 1 to 10000, got {limit}")
    policy: Missed = missed
    return CronSchedule(task, normalized, timezone_name, policy, limit)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("schedule times must be timezone-aware")
    return moment


def _next_wall_clock(schedule: CronSchedule, after: datetime) -> datetime:
    """Fixed-hour schedules: iterate local wall-clock times, each mapped to its first instant."""
    zone = schedule.zone
    after = _aware(after).astimezone(UTC)
    local = after.astimezone(zone).replace(tzinfo=None) - timedelta(hours=3)
    iterator = croniter(schedule.expression, local, second_at_beginning=True)
    for _ in range(_MAX_STEPS):
        wall: datetime = iterator.get_next(datetime)
        instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant > after:
            return instant
    raise ValueError(f"no fire time found for {schedule.expression!r}")


def _next_real_time(schedule: CronSchedule, after: datetime) -> datetime:
    """Frequent schedules: step through real time, keeping instants whose local time matches."""
    zone = schedule.zone
    after = _aware(after).astimezone(UTC)
    fields = schedule.expression.split()
    rhythm = (
        " ".join([fields[0], fields[1], "*", "*", "*", "*"])
        if schedule.seconds_field
        else " ".join([fields[0], "*", "*", "*", "*"])
    )
    offset = after.astimezone(zone).utcoffset() or timedelta(0)
    # Step in a fixed offset so the minute/second rhythm is that of the local clock.
    fixed = timezone(offset)
    iterator = croniter(
        rhythm, after.astimezone(fixed).replace(tzinfo=None), second_at_beginning=True
    )
    for _ in range(_MAX_STEPS):
        step: datetime = iterator.get_next(datetime)
        candidate = step.replace(tzinfo=fixed).astimezone(UTC)
        if candidate <= after:
            continue
        wall = candidate.astimezone(zone).replace(tzinfo=None)
        if croniter.match(schedule.expression, wall, second_at_beginning=True):
            return candidate
    raise ValueError(f"no fire time found for {schedule.expression!r}")
