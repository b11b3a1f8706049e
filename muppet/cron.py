"""Time triggers: each pipeline's croniter expressions, in its time zone.

The firing times are computed here without I/O (`next_firing`,
`latest_firing`); the task `run` only sleeps until the next one and sends a
`Trigger` whose reference time is the scheduled time, in UTC.

Daylight saving time, as ISC cron does it: an expression with a fixed hour
fires once on the day the clocks go back (at the first of the two wall-clock
times that repeat), and a wall-clock time skipped when they go forward fires
at the first moment after the gap (croniter gives that: 02:30 becomes 03:00).
Expressions whose hour field is a wildcard (``*``, ``*/2``) follow absolute
time and fire in both repeated hours. Whatever the clock does, the database
refuses a second run of one pipeline for one reference time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import trio
from croniter import croniter

from .messages import Trigger
from .model import Pipeline, RunCause
from .running import RunningConfig

log = logging.getLogger("muppet.cron")

#: a sleep is cut into pieces this long, so that a wall clock stepped by NTP
#: or by hand is noticed within a minute
MAX_SLEEP = 60.0


def next_firing(pipeline: Pipeline, after: datetime) -> datetime | None:
    """The first firing of any of the pipeline's expressions strictly after
    ``after`` (aware), in UTC; None for a pipeline without cron."""
    zone = ZoneInfo(pipeline.timezone)
    firings = [_next(expr, zone, after) for expr in pipeline.cron]
    return min(firings, default=None)


def firings_between(pipeline: Pipeline, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """The firings in ``(after, until]``, oldest first, at most the newest
    ``limit`` of them (a backfill's and a catch-up's reference times)."""
    found: list[datetime] = []
    moment = after
    while True:
        firing = next_firing(pipeline, moment)
        if firing is None or firing > until:
            return found
        found.append(firing)
        if len(found) > limit:
            del found[0]
        moment = firing


def missed_firings(pipeline: Pipeline, last: datetime, now: datetime) -> list[datetime]:
    """What the pipeline's catch-up policy makes of the firings missed in
    ``(last, now]`` (docs/configuration.md, "Cycling"): "latest" the latest
    one, "all" each of them, oldest first, at most ``catchup_limit``,
    "none" nothing."""
    if pipeline.catchup == "none":
        return []
    if pipeline.catchup == "all":
        return firings_between(pipeline, last, now, pipeline.catchup_limit)
    latest = latest_firing(pipeline, last, now)
    return [] if latest is None else [latest]


def latest_firing(pipeline: Pipeline, after: datetime, until: datetime) -> datetime | None:
    """The last firing in ``(after, until]``, in UTC, or None."""
    zone = ZoneInfo(pipeline.timezone)
    found = [_previous(expr, zone, until) for expr in pipeline.cron]
    latest = max(found, default=None)
    return latest if latest is not None and latest > after else None


def _previous(expr: str, zone: ZoneInfo, until: datetime) -> datetime:
    """The last firing at or before ``until``, in UTC."""
    fixed_hour = not expr.split()[1].startswith("*")
    moment = (until + timedelta(seconds=1)).astimezone(zone)
    while True:
        moment = croniter(expr, moment).get_prev(datetime)
        if not (fixed_hour and _second_occurrence(moment, zone)):
            return moment.astimezone(UTC)


def _next(expr: str, zone: ZoneInfo, after: datetime) -> datetime:
    fixed_hour = not expr.split()[1].startswith("*")
    moment = after.astimezone(zone)
    while True:
        moment = croniter(expr, moment).get_next(datetime)
        in_utc = moment.astimezone(UTC)
        if fixed_hour and _second_occurrence(moment, zone):
            continue
        if in_utc > after:
            return in_utc


def _second_occurrence(moment: datetime, zone: ZoneInfo) -> bool:
    """Whether a local time is the repeat of a wall-clock time on the day the
    clocks go back."""
    first = moment.replace(tzinfo=None).replace(tzinfo=zone, fold=0)
    return first.astimezone(UTC) != moment.astimezone(UTC)


def _now_utc(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


async def run(
    pipelines: Mapping[str, Pipeline],
    to_scheduler: trio.MemorySendChannel[Trigger],
    *,
    last_fired: Mapping[str, datetime],
    clock: Callable[[], float] = time.time,
    running: RunningConfig | None = None,
) -> None:
    """Send a `Trigger` (cause "cron") to the scheduler at each firing.

    ``last_fired`` holds, per pipeline, the reference time of its newest cron
    run in the database. At start, a pipeline that missed firings while no
    daemon ran gets the runs its catch-up policy says (``missed_firings``:
    by default one, for the latest missed firing); a pipeline never fired
    before starts from now. Cancellation is harmless at any await: a firing
    whose Trigger was not persisted is caught up at the next start (a run
    already made for one is refused as existing).

    With ``running``, a reload that adds, changes or removes pipelines
    applies at once (docs/operations.md, "Reload"): a removed pipeline fires
    no more, a new one fires from its next firing after the reload (no
    catch-up), one whose cron or time zone changed from its next firing
    under the new ones. Without it, ``pipelines`` hold for good and the task
    returns when none has cron.
    """
    timed = {name: p for name, p in pipelines.items() if p.cron}
    now = _now_utc(clock)
    due: dict[str, datetime] = {}
    for name, pipeline in timed.items():
        last = last_fired.get(name)
        if last is not None and last < now:
            missed = missed_firings(pipeline, last, now)
            if missed:
                log.info(
                    "catching up %s (catchup = %s): %d run(s), %s to %s",
                    name, pipeline.catchup, len(missed), missed[0].isoformat(), missed[-1].isoformat(),
                )
            for moment in missed:
                await to_scheduler.send(Trigger(name, moment, RunCause.CRON.value))
        _schedule(due, name, next_firing(pipeline, now))
    version = 0 if running is None else running.version
    while due or running is not None:
        name = min(due, key=due.__getitem__) if due else ""
        moment = due.get(name, _now_utc(clock))
        delay = moment.timestamp() - clock() if due else MAX_SLEEP
        if delay > 0:
            if running is None:
                await trio.sleep(min(delay, MAX_SLEEP))
                continue
            with trio.move_on_after(min(delay, MAX_SLEEP)):
                config = await running.changed(version)
                version = running.version
                timed = _reloaded(timed, due, config.pipelines, _now_utc(clock))
            continue
        log.info("firing %s for %s", name, moment.isoformat())
        await to_scheduler.send(Trigger(name, moment, RunCause.CRON.value))
        _schedule(due, name, next_firing(timed[name], moment))


def _reloaded(
    timed: Mapping[str, Pipeline], due: dict[str, datetime], pipelines: Mapping[str, Pipeline], now: datetime,
) -> dict[str, Pipeline]:
    """The pipelines with cron after a reload, and ``due`` brought in line:
    a pipeline taken away (or its cron) no longer fires; a new one, or one
    whose cron or time zone changed, fires next after ``now``."""
    reloaded = {name: p for name, p in pipelines.items() if p.cron}
    for name in [n for n in due if n not in reloaded]:
        del due[name]
        log.info("%s fires no more (reloaded)", name)
    for name, pipeline in reloaded.items():
        before = timed.get(name)
        if before is None or (before.cron, before.timezone) != (pipeline.cron, pipeline.timezone):
            due.pop(name, None)
            _schedule(due, name, next_firing(pipeline, now))
            if name in due:
                log.info("%s fires next at %s (reloaded)", name, due[name].isoformat())
    return reloaded


def _schedule(due: dict[str, datetime], name: str, firing: datetime | None) -> None:
    # None only for a pipeline without cron, and run() keeps only those with
    # some; an expression that never fires is refused by muppet validate
    if firing is not None:
        due[name] = firing
