"""ISO 8601 durations applied to reference times, in a pipeline's time zone.

Cycling pipelines (docs/configuration.md, "Cycling") say how far back an
intercycle parent is (``forecast[-PT6H]``), and how long after its reference
time a step may start (``not_before``), expires (``expire_after``) or is late
(``late_after``). One rule for all of them: a duration moves the reference
time on the wall clock of the pipeline's time zone, calendar parts (days,
months, years) and clock parts (hours, minutes, seconds) alike. For a UTC
pipeline that is plain arithmetic; for a Europe/Oslo pipeline that fires at
00, 06, 12 and 18 local time, ``-PT6H`` is the previous firing on every day,
the two days the clocks change included. A wall-clock time that does not
exist (the hour skipped in spring) becomes the first moment after the gap, and
one that happens twice (in autumn) the first of the two, as cron does
(muppet/cron.py).

Pure functions, no I/O; the parser is isodate's.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo

import isodate

#: a parsed duration: a timedelta, or isodate's Duration when it has months
#: or years (isodate publishes no types: to the checker it is Any)
Duration: TypeAlias = Any


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Duration:
    """The duration ``text`` ("PT6H", "-P1D", "P1M"); ValueError saying what
    an ISO 8601 duration looks like when it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"must be an ISO 8601 duration such as \"PT6H\" or \"P1D\", got {text!r}")
    try:
        # ISO 8601 wants an element after the "T"; isodate reads "PT" as zero
        if text.upper().endswith("T"):
            raise ValueError(text)
        duration: Duration = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError):
        raise ValueError(
            f"must be an ISO 8601 duration such as \"PT6H\", \"PT3H20M\" or \"P1D\", got {text!r}"
        ) from None
    return duration


def is_negative(duration: Duration) -> bool:
    """Whether it points back in time (an intercycle offset must)."""
    moment = datetime(2000, 1, 1)
    return bool(moment + duration < moment)


def is_zero(duration: Duration) -> bool:
    moment = datetime(2000, 1, 1)
    return bool(moment + duration == moment)


def before(moment: datetime, text: str) -> datetime:
    """``moment`` (aware) less the duration ``text``, on UTC's calendar: the
    edge of a retention such as ``[daemon] keep_history`` ("P30D": everything
    that ended before this is old). A retention needs no time zone: a day
    more or less of history across a change of the clocks matters to nobody."""
    earlier: datetime = moment.astimezone(UTC) - parse(text)
    return earlier


def shift(reference_time: datetime, text: str, zone: str) -> datetime:
    """``reference_time`` (aware, UTC) moved by the duration ``text`` on the
    wall clock of ``zone`` (an IANA name), in UTC."""
    tz = ZoneInfo(zone)
    wall = reference_time.astimezone(tz).replace(tzinfo=None)
    duration = parse(text)
    moved: datetime = wall + duration
    return _localize(moved, tz, backward=is_negative(duration))


def _localize(wall: datetime, tz: ZoneInfo, *, backward: bool = False) -> datetime:
    """A naive wall-clock time in ``tz`` as an aware UTC time: the first of
    two that repeat; one that is skipped (the clocks went forward) is read
    as the first moment after the gap, or, moving ``backward``, as the same
    distance before it: 03:00 CEST less PT1H is 01:00 CET, the hour before,
    not 03:00 CEST again (docs/configuration.md, "Cycling")."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    if backward:
        # zoneinfo reads a skipped time with the offset before the change
        # (fold=0) or after it (fold=1); the earlier of the two is before the gap
        return min(first, wall.replace(tzinfo=tz, fold=1).astimezone(UTC))
    # skipped: from the earlier of the two readings, the first minute whose
    # wall clock is at or past ``wall`` (a gap is an hour, rarely two)
    moment = min(first, wall.replace(tzinfo=tz, fold=1).astimezone(UTC))
    moment = moment.replace(second=0, microsecond=0)
    for _ in range(24 * 60):
        if moment.astimezone(tz).replace(tzinfo=None) >= wall:
            return moment
        moment += timedelta(minutes=1)
    return first  # not reached for any time zone in the tz database
