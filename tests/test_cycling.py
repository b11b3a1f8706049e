"""Cycling, end to end in a real daemon (docs/configuration.md, "Cycling"):
intercycle parents and runahead over 48 backfilled cycles, a Europe/Oslo
pipeline backfilled across both changes of the clocks, a kill -9 of the
daemon during a cron catch-up, clock triggers, expiry and lateness. Real
database (SQLite and PostgreSQL), real processes, the real API; judged by the
jobs' own times, the numbered event log and a ledger the jobs write outside
the state directory."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio
from services import free_port  # tests/ is on sys.path
from waiting import wait_until, wait_until_async  # tests/ is on sys.path

from muppet import daemon
from muppet.api.client import connect
from muppet.config import load_config
from muppet.db import writes
from muppet.db.store import open_store
from muppet.messages import NewRun
from muppet.model import Job, JobState, Run, RunCause, RunState

MUPPET = [sys.executable, "-m", "muppet.cli"]
STAKEHOLDER = """
[stakeholders.ops]
name = "Operations"
"""
#: the run states in which a run has ended (docs/states.md, "Run states")
ENDED = {"succeeded", "failed", "expired"}
HOUR = timedelta(hours=1)


def write_config(tmp_path: Path, database_url: str, pipelines: dict[str, str], port: int = 0,
                 max_jobs: int = 8) -> Path:
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    for name, text in pipelines.items():
        (tmp_path / "pipelines" / f"{name}.toml").write_text(STAKEHOLDER + textwrap.dedent(text))
    config = tmp_path / "muppet.toml"
    config.write_text(textwrap.dedent(f"""
        [daemon]
        database = "{database_url}"
        state_dir = "{tmp_path / 'state'}"
        output_dir = "{tmp_path / 'output'}"
        pipelines = ["pipelines/*.toml"]
        [api]
        listen = "127.0.0.1:{port}"
        [web]
        listen = "127.0.0.1:0"
        [executors.local]
        type = "local"
        max_jobs = {max_jobs}
        """))
    return config


async def start(nursery: trio.Nursery, config_path: Path) -> str:
    port = await nursery.start(daemon.serve, load_config(config_path))
    return f"ws://127.0.0.1:{port}"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def by_step(run: dict) -> dict[str, dict]:
    """The newest job of each step of a run of one-job steps."""
    return {job["step"]: job for job in sorted(run["jobs"], key=lambda j: j["id"])}


async def wait_runs_ended(client: Any, run_ids: Iterable[int], seconds: float) -> list[dict]:
    """Every run of ``run_ids`` with its jobs, once each has ended."""
    wanted = sorted(run_ids)

    async def ended() -> list[dict] | None:
        runs = [await client.call("runs.get", {"run_id": run_id}) for run_id in wanted]
        return runs if all(r["state"] in ENDED for r in runs) else None

    async def states() -> str:
        runs = [await client.call("runs.get", {"run_id": run_id}) for run_id in wanted]
        return "\n".join(f"{r['id']} {r['reference_time']} {r['state']}: "
                         + ", ".join(f"{j['step']} {j['state']} {j['reason']}" for j in r["jobs"]) for r in runs)

    try:
        return await wait_until_async(ended, seconds, f"runs {wanted[0]}..{wanted[-1]} ending")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await states()}") from None


async def all_events(client: Any, kinds: list[str]) -> list[dict]:
    events: list[dict] = []
    while True:
        page = await client.call("events.list", {"since": events[-1]["id"] if events else 0, "kinds": kinds})
        if not page:
            return events
        events += page


# --- 48 hourly cycles, a[-PT1H], runahead 5 -------------------------------------------------------

FIRST = datetime(2026, 12, 1, 0, tzinfo=UTC)
CYCLES = 48
RUNAHEAD = 5
# hourly on the two days of the backfill only (1 and 2 December): a firing
# of the wall clock's hour while a test runs would make a run more, whose
# parent a[-PT1H] no run is ever made for
CHAIN = f"""
[pipeline]
name = "chain"
owner = "ops"
cron = ["0 * 1-2 12 *"]
initial = {iso(FIRST)}
runahead = {RUNAHEAD}

[steps.a]
parents = ["a[-PT1H]"]
command = "true"

[steps.b]
parents = ["a"]
command = "true"

[steps.c]
parents = ["b"]
command = "true"
"""


def most_at_once(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals [begin, end) open at one moment; one that ends at
    the moment another begins does not overlap it."""
    moments = sorted(m for begin, end in intervals for m in ((begin, 1), (end, -1)))
    most = current = 0
    for _, step in moments:
        current += step
        most = max(most, current)
    return most


async def test_48_cycles_keep_their_order_and_the_runahead(nursery, tmp_path, database_url):
    """One backfill makes 48 hourly cycles of a -> b -> c, a waiting on the
    previous cycle's a, at most 5 running (docs/configuration.md, "Cycling").

    The order is read from the jobs' own times. The runahead counts runs
    *running*: a queued run is unfinished but has not begun (docs/states.md,
    "Run states": queued is "made, and waiting for its pipeline's
    runahead"), so all 48 are unfinished the moment the backfill makes them,
    and what must never exceed 5 is the runs between leaving ``queued`` (or
    being made running) and ending. A run's row keeps when it was made and
    when it ended, not when it left ``queued``; that moment is its event in
    the numbered log (every change of a run is one, in commit order), and
    its jobs' times must all come after it."""
    url = await start(nursery, write_config(tmp_path, database_url, {"chain": CHAIN}))
    async with connect(url) as client:
        last = FIRST + (CYCLES - 1) * HOUR
        reply = await client.call("runs.backfill", {"pipeline": "chain", "from": iso(FIRST), "to": iso(last)})
        assert reply["skipped"] == [] and len(reply["run_ids"]) == CYCLES
        runs = await wait_runs_ended(client, reply["run_ids"], 120)
        events = await all_events(client, ["run"])
    # oldest first, one per firing, each succeeded with its three jobs
    runs.sort(key=lambda r: r["reference_time"])
    assert [r["id"] for r in runs] == reply["run_ids"]
    assert [r["reference_time"] for r in runs] == [iso(FIRST + n * HOUR) for n in range(CYCLES)]
    assert {r["state"] for r in runs} == {"succeeded"} and {r["cause"] for r in runs} == {"manual"}
    jobs = [by_step(r) for r in runs]
    assert all(len(r["jobs"]) == 3 and {j["state"] for j in r["jobs"]} == {"succeeded"} for r in runs)

    # each cycle's a started after the previous cycle's a succeeded; b and c
    # after their parents in the cycle
    for n in range(1, CYCLES):
        assert when(jobs[n]["a"]["started_at"]) >= when(jobs[n - 1]["a"]["ended_at"]), (n, jobs[n - 1], jobs[n])
    for cycle in jobs:
        assert when(cycle["b"]["started_at"]) >= when(cycle["a"]["ended_at"])
        assert when(cycle["c"]["started_at"]) >= when(cycle["b"]["ended_at"])

    # the run's moves, in commit order: made running or queued, queued ->
    # running oldest first, then ended; never more than 5 running
    state: dict[int, str] = {}
    running_since: dict[int, float] = {}
    most = 0
    promoted: list[int] = []
    for event in events:
        run = event["data"]
        if run["pipeline"] != "chain":
            continue
        before = state.get(run["id"])
        state[run["id"]] = run["state"]
        if run["state"] == "running" and before != "running":
            running_since[run["id"]] = when(event["at"]).timestamp()
            if before == "queued":
                promoted.append(run["id"])
        most = max(most, sum(s == "running" for s in state.values()))
    assert most == RUNAHEAD, f"at most {most} runs running at once"
    first_state = {}
    for event in events:
        first_state.setdefault(event["data"]["id"], event["data"]["state"])
    ids = [r["id"] for r in runs]
    assert [first_state[i] for i in ids] == ["running"] * RUNAHEAD + ["queued"] * (CYCLES - RUNAHEAD)
    # should the pipeline's cron fire while the test runs (on 1 or 2
    # December, at the top of an hour), its run counts toward the runahead
    # above, and is no part of the backfill's order
    backfilled = set(ids)
    assert [i for i in promoted if i in backfilled] == ids[RUNAHEAD:], "queued runs start oldest reference time first"
    # from the times: a run is running from its made-running moment (its
    # created_at when it was never queued) to its ended_at; no job of a run
    # is submitted before then; never more than 5 such spans overlap
    spans = []
    for run, cycle in zip(runs, jobs, strict=True):
        begun = when(run["created_at"]).timestamp() if first_state[run["id"]] == "running" else (
            running_since[run["id"]])
        submitted = min(when(j["submitted_at"]).timestamp() for j in cycle.values())
        assert submitted >= begun, (run, cycle)
        spans.append((begun, when(run["ended_at"]).timestamp()))
    assert most_at_once(spans) <= RUNAHEAD
    # and, from the jobs' times alone, the runs that had a job submitted and
    # had not ended: never more than the runahead either
    assert most_at_once(
        (min(when(j["submitted_at"]).timestamp() for j in cycle.values()), when(run["ended_at"]).timestamp())
        for run, cycle in zip(runs, jobs, strict=True)
    ) <= RUNAHEAD


async def test_asking_why_jobs_wait_repeats_nothing(nursery, tmp_path, database_url):
    """Operators ask why jobs wait all the time (`muppet jobs`, the web page:
    docs/states.md, "Why a job waits"); the scheduler answers at once, and
    the question must change nothing. The 48 cycles again, with a client
    asking every 10 ms: the backfill's reply names the 48 runs it made, and
    the event log holds one event per change of a run or a job
    (docs/architecture.md, "The rules they keep"), never the same change of
    the same run or job twice in a row."""
    url = await start(nursery, write_config(tmp_path, database_url, {"chain": CHAIN}))
    async with connect(url) as client:

        async def ask() -> None:
            while True:
                await client.call("jobs.list", {"state": "waiting", "limit": 1000})
                await trio.sleep(0.01)

        async with trio.open_nursery() as asking:
            asking.start_soon(ask)
            last = FIRST + (CYCLES - 1) * HOUR
            reply = await client.call("runs.backfill", {"pipeline": "chain", "from": iso(FIRST), "to": iso(last)})
            run_ids = [r["id"] for r in await client.call("runs.list", {"pipeline": "chain"})]
            runs = await wait_runs_ended(client, run_ids, 120)
            asking.cancel_scope.cancel()
        events = await all_events(client, ["run", "job"])
    assert {r["state"] for r in runs} == {"succeeded"}
    assert (reply["run_ids"], reply["skipped"]) == (sorted(run_ids), [])
    repeated = [
        (event["id"], earlier["id"], event["kind"], event["subject_id"])
        for earlier, event in _each_subject_in_turn(events)
        if earlier["data"] == event["data"]
    ]
    assert not repeated, f"{len(repeated)} of {len(events)} events repeat the change before them: {repeated[:5]}"


def _each_subject_in_turn(events: list[dict]) -> Iterable[tuple[dict, dict]]:
    """(the event before, the event) of the same run or job, in log order."""
    last: dict[tuple[str, int], dict] = {}
    for event in events:
        key = (event["kind"], event["subject_id"])
        if key in last:
            yield last[key], event
        last[key] = event

# --- Europe/Oslo across both changes of the clocks -------------------------------------------------

OSLO = ZoneInfo("Europe/Oslo")
#: three local days around each change of 2026: the clocks go forward at
#: 02:00 on 29 March and back at 03:00 on 25 October
SPRING = [datetime(2026, 3, 28) + timedelta(days=d) for d in range(3)]
AUTUMN = [datetime(2026, 10, 24) + timedelta(days=d) for d in range(3)]
OSLO_PIPELINE = """
[pipeline]
name = "{name}"
owner = "ops"
cron = ["0 0,6,12,18 * * *"]
timezone = "Europe/Oslo"
initial = {initial}

[steps.a]
parents = ["a[-PT6H]"]
command = "true"

[steps.b]
parents = ["a", "b[-P1D]"]
command = "true"
"""


def oslo_firings(days: list[datetime]) -> list[datetime]:
    """The reference times docs/configuration.md gives a cron of fixed local
    hours: each firing at 00, 06, 12 and 18 Oslo time, in UTC (none of those
    hours is skipped or repeated by a change of the clocks)."""
    return [(day + timedelta(hours=h)).replace(tzinfo=OSLO).astimezone(UTC) for day in days for h in (0, 6, 12, 18)]


async def test_an_oslo_pipeline_finds_every_parent_across_both_changes_of_the_clocks(
    nursery, tmp_path, database_url,
):
    """Offsets move the reference time on the pipeline's wall clock: -PT6H is
    the previous firing on every day, the two days the clocks change
    included (5 and 7 hours back in absolute time), and -P1D the same local
    hour the day before. Two pipelines alike, each with its ``initial`` at
    the first of three days around one change: one backfilled through the
    API, the other with ``muppet trigger --from --to``. No job ever waits
    for a run that does not exist, and every job starts after its parents
    in the cycle before have ended."""
    pipelines = {}
    for name, days in (("spring", SPRING), ("autumn", AUTUMN)):
        initial = days[0].replace(tzinfo=OSLO).isoformat()
        pipelines[name] = OSLO_PIPELINE.format(name=name, initial=initial)
    url = await start(nursery, write_config(tmp_path, database_url, pipelines))
    spring, autumn = oslo_firings(SPRING), oslo_firings(AUTUMN)
    # what the docs say, written out: the hours between cycles
    assert [(b - a) / HOUR for a, b in itertools.pairwise(spring)] == [6] * 4 + [5] + [6] * 6
    assert [(b - a) / HOUR for a, b in itertools.pairwise(autumn)] == [6] * 4 + [7] + [6] * 6
    reasons: set[str] = set()
    async with connect(url) as client:

        async def watch(cancel: trio.CancelScope) -> None:
            # why every waiting job waits, as long as any may wait
            with cancel:
                while True:
                    for job in await client.call("jobs.list", {"state": "waiting", "limit": 1000}):
                        reasons.add(job["reason"])
                    await trio.sleep(0.01)

        watching = trio.CancelScope()
        nursery.start_soon(watch, watching)
        reply = await client.call("runs.backfill", {"pipeline": "spring", "from": iso(spring[0]),
                                                    "to": iso(spring[-1])})
        done = await trio.run_process(  # exit 0, or it raises
            [*MUPPET, "trigger", "autumn", "--from", iso(autumn[0]), "--to", iso(autumn[-1])],
            capture_stdout=True, capture_stderr=True, env={**os.environ, "MUPPET_API": url},
        )
        assert done.stderr == b"", done.stderr  # nothing skipped
        made = {"spring": reply["run_ids"], "autumn": [int(line) for line in done.stdout.split()]}
        for name, firings in (("spring", spring), ("autumn", autumn)):
            # the runs the replies name are every run the database has
            run_ids = [r["id"] for r in await client.call("runs.list", {"pipeline": name})]
            assert sorted(run_ids) == made[name], name
            runs = sorted(await wait_runs_ended(client, run_ids, 120), key=lambda r: r["reference_time"])
            assert [r["id"] for r in runs] == made[name]
            assert [r["reference_time"] for r in runs] == [iso(t) for t in firings], name
            assert {r["state"] for r in runs} == {"succeeded"}, runs
            jobs = [by_step(r) for r in runs]
            for n in range(1, len(runs)):
                # a[-PT6H]: the previous firing; b[-P1D]: four firings back
                assert when(jobs[n]["a"]["started_at"]) >= when(jobs[n - 1]["a"]["ended_at"]), (name, n)
                if n >= 4:
                    assert when(jobs[n]["b"]["started_at"]) >= when(jobs[n - 4]["b"]["ended_at"]), (name, n)
        watching.cancel()
    assert not [r for r in reasons if "no run for" in r], reasons


# Hourly in Oslo: on 29 March 2026 the firing after 01:00 CET is 03:00 CEST
# (02:00 does not exist that day), one hour later in absolute time.
HOURLY = """
[pipeline]
name = "hourly"
owner = "ops"
cron = ["0 * * * *"]
timezone = "Europe/Oslo"
initial = 2026-03-29T00:00:00+01:00

[steps.a]
parents = ["a[-PT1H]"]
command = "true"
"""


async def test_an_hourly_oslo_cycle_after_the_skipped_hour_waits_on_the_cycle_before(
    nursery, tmp_path, database_url,
):
    """A parent one hour back, across the hour the clocks skip: 03:00 CEST
    minus one hour on the wall clock is 02:00, which does not exist that
    day. Whatever the rule for such a time, the parent must be an earlier
    cycle: the one at 01:00 CET, the previous firing (docs/configuration.md,
    "Cycling": "the offset points back"); never the run itself, on which its
    job would wait for ever."""
    url = await start(nursery, write_config(tmp_path, database_url, {"hourly": HOURLY}))
    firings = [datetime(2026, 3, 28, 23, tzinfo=UTC) + n * HOUR for n in range(5)]
    local = [t.astimezone(ZoneInfo("Europe/Oslo")).strftime("%H:%M") for t in firings]
    assert local == ["00:00", "01:00", "03:00", "04:00", "05:00"]
    async with connect(url) as client:
        reply = await client.call("runs.backfill", {"pipeline": "hourly", "from": iso(firings[0]),
                                                    "to": iso(firings[-1])})
        assert len(reply["run_ids"]) == len(firings)

        async def ended_or_waiting_on_itself() -> tuple[str, Any] | None:
            runs = [await client.call("runs.get", {"run_id": run_id}) for run_id in reply["run_ids"]]
            for run in runs:
                for job in run["jobs"]:
                    if job["state"] == "waiting" and f"(run {run['id']} for " in job["reason"]:
                        return "waits on its own run", (run["reference_time"], job["reason"])
            return ("ended", runs) if all(r["state"] in ENDED for r in runs) else None

        outcome, seen = await wait_until_async(
            ended_or_waiting_on_itself, 60, "the runs ending, or a job waiting on its own run")
    assert outcome == "ended", seen
    runs = sorted(seen, key=lambda r: r["reference_time"])
    assert {r["state"] for r in runs} == {"succeeded"}
    for earlier, later in itertools.pairwise(runs):
        assert when(by_step(later)["a"]["started_at"]) >= when(by_step(earlier)["a"]["ended_at"]), later

# --- clock triggers, expiry and lateness ------------------------------------------------------------

# Seconds, so that a test sees them pass: clock may start 2 s after the
# reference time; slow runs until the test opens its gate (5 minutes at most)
# and is late 3 s after; after must start within 4 s (it cannot: slow still
# runs), the other steps within 8 s; the run is late after 3 s. One run at a
# time: a second waits queued, and expires there.
DEADLINES = """
[pipeline]
name = "deadlines"
owner = "ops"
runahead = 1
expire_after = "PT8S"
late_after = "PT3S"

[steps.clock]
not_before = "PT2S"
command = "true"

[steps.slow]
parents = ["clock"]
late_after = "PT3S"
command = "until [ -e {gate} ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done"

[steps.after]
parents = ["slow"]
expire_after = "PT4S"
command = "true"

[steps.tail]
parents = ["after"]
command = "true"
"""


def expired_by(moment: datetime) -> re.Pattern[str]:
    """The reason of a job not started by ``moment`` (docs/states.md,
    "Reasons"), its time with or without milliseconds."""
    return re.compile(re.escape(f"not started by {iso(moment)[:-1]}") + r"(\.000)?Z \(expire_after\)")


async def test_clock_triggers_expiry_and_lateness(nursery, tmp_path, database_url):
    """docs/configuration.md, "Cycling", through a real daemon: a job waits
    for its not_before ("clock: not before ..."); a job not started by its
    expire_after ends expired, and so do the jobs downstream of it; a run
    whose jobs ended succeeded or expired ends expired; a queued run's jobs
    expire while it waits, and it ends without having run; a job or run not
    succeeded by its late_after is flagged late, with an event of kind late
    (docs/states.md)."""
    gate = tmp_path / "gate"
    url = await start(nursery, write_config(tmp_path, database_url, {"deadlines": DEADLINES.format(gate=gate)}))
    # a reference time a little ahead, so that the clock trigger is seen waiting
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    second = first + timedelta(seconds=1)
    seconds = timedelta(seconds=1)
    async with connect(url) as client:
        one = (await client.call("runs.trigger", {"pipeline": "deadlines", "reference_time": iso(first)}))["run_id"]
        two = (await client.call("runs.trigger", {"pipeline": "deadlines", "reference_time": iso(second)}))["run_id"]

        async def reasons(run_id: int) -> dict[str, str]:
            run = await client.call("runs.get", {"run_id": run_id})
            return {j["step"]: j["reason"] for j in run["jobs"] if j["state"] == "waiting"}

        waiting = await reasons(one)
        assert waiting["clock"] == f"clock: not before {iso(first + 2 * seconds)}", waiting
        queued = await client.call("runs.get", {"run_id": two})
        assert queued["state"] == "queued"
        assert set((await reasons(two)).values()) == {"runahead: 1 of 1 runs of deadlines running; this one is queued"}
        # the queued run expires where it waits, never having run
        (never,) = await wait_runs_ended(client, [two], 60)
        # slow runs and after has expired: let slow end
        (ran,) = await wait_runs_ended_when_gated(client, one, gate)
        late = await all_events(client, ["late"])
    jobs = by_step(ran)
    assert ran["state"] == "expired" and ran["late"] is True
    assert [(step, jobs[step]["state"]) for step in jobs] == [
        ("clock", "succeeded"), ("slow", "succeeded"), ("after", "expired"), ("tail", "expired")]
    assert when(jobs["clock"]["started_at"]) >= first + 2 * seconds
    assert expired_by(first + 4 * seconds).fullmatch(jobs["after"]["reason"]), jobs["after"]
    assert when(jobs["after"]["ended_at"]) >= first + 4 * seconds
    assert jobs["after"]["started_at"] is None and jobs["tail"]["started_at"] is None
    assert jobs["tail"]["reason"] == f"upstream job {jobs['after']['id']} (after[0]) expired"
    assert [jobs[step]["late"] for step in jobs] == [False, True, False, False]

    held = by_step(never)
    assert never["state"] == "expired" and never["late"] is True
    assert {j["state"] for j in never["jobs"]} == {"expired"}
    assert all(j["submitted_at"] is None and j["started_at"] is None for j in never["jobs"])
    assert expired_by(second + 4 * seconds).fullmatch(held["after"]["reason"]), held["after"]
    assert held["tail"]["reason"] == f"upstream job {held['after']['id']} (after[0]) expired"
    assert expired_by(second + 8 * seconds).fullmatch(held["clock"]["reason"]), held["clock"]
    # slow's own expire_after is the same moment as clock's: either reason
    assert (expired_by(second + 8 * seconds).fullmatch(held["slow"]["reason"])
            or held["slow"]["reason"] == f"upstream job {held['clock']['id']} (clock[0]) expired"), held["slow"]
    assert when(held["clock"]["ended_at"]) >= second + 8 * seconds
    assert [held[step]["late"] for step in held] == [False, True, False, False]

    # one kind of late event per run and per late job, at its late_after
    flagged = {(e["data"]["kind"], e["data"]["id"]): e for e in late}
    assert set(flagged) == {("run", one), ("job", jobs["slow"]["id"]), ("run", two), ("job", held["slow"]["id"])}
    for (kind, ident), event in flagged.items():
        reference = first if (kind, ident) in (("run", one), ("job", jobs["slow"]["id"])) else second
        assert when(event["data"]["late_after"]) == reference + 3 * seconds, event
        assert event["data"]["pipeline"] == "deadlines" and event["data"]["reference_time"] == iso(reference)
        if kind == "job":
            assert (event["data"]["step"], event["data"]["index"]) == ("slow", 0), event
        assert when(event["at"]) >= reference + 3 * seconds


async def wait_runs_ended_when_gated(client: Any, run_id: int, gate: Path) -> list[dict]:
    """Open ``gate`` once run ``run_id``'s after has expired, and its run
    late; then the run, once ended."""

    async def expired() -> bool:
        run = await client.call("runs.get", {"run_id": run_id})
        return by_step(run)["after"]["state"] == "expired" and run["late"]

    await wait_until_async(expired, 60, f"run {run_id}'s after expired and the run late")
    await trio.Path(gate).touch()
    return await wait_runs_ended(client, [run_id], 60)

# --- kill -9 during a catch-up of 24 cycles --------------------------------------------------------

# The jobs write their cycle and step to a ledger outside state_dir when they
# start and when they end; cycle {gated}'s a waits for the test to open its
# gate (for 5 minutes at most, so that a failed test leaves no job behind).
CATCHUP = """
[pipeline]
name = "catchup"
owner = "ops"
cron = ["0 * * * *"]
catchup = "all"
runahead = 5

[steps.a]
parents = ["a[-PT1H]"]
command = '''
echo "$MUPPET_REFERENCE_TIME a $MUPPET_JOB_ID start" >> {ledger}
if [ "$MUPPET_REFERENCE_TIME" = "{gated}" ]; then
  until [ -e {gate} ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done
fi
echo "$MUPPET_REFERENCE_TIME a $MUPPET_JOB_ID end" >> {ledger}'''

[steps.b]
parents = ["a"]
command = '''
echo "$MUPPET_REFERENCE_TIME b $MUPPET_JOB_ID start" >> {ledger}
echo "$MUPPET_REFERENCE_TIME b $MUPPET_JOB_ID end" >> {ledger}'''
"""


class DaemonProcess:
    """`muppet daemon` as a process of its own, so that it can be killed -9."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.log = config, log
        self.url = f"ws://127.0.0.1:{port}"
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([*MUPPET, "daemon", "--config", str(self.config)], stdout=log, stderr=log)

        def listening() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_until(listening, 30, "the daemon listening", detail=self.log.read_text)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        async def one() -> Any:
            async with connect(self.url) as client:
                return await client.call(method, params)

        return trio.run(one)

    def runs(self, pipeline: str) -> list[dict]:
        """Every run of ``pipeline``, oldest reference time first, with its jobs."""
        async def every() -> list[dict]:
            async with connect(self.url) as client:
                listed = await client.call("runs.list", {"pipeline": pipeline, "limit": 1000})
                return [await client.call("runs.get", {"run_id": r["id"]}) for r in listed]

        return sorted(trio.run(every), key=lambda r: r["reference_time"])

    def events(self, kinds: list[str]) -> list[dict]:
        async def every() -> list[dict]:
            async with connect(self.url) as client:
                return await all_events(client, kinds)

        return trio.run(every)

    def stop(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


def last_cron_run(database_url: str, reference_time: datetime) -> None:
    """The database as a daemon that stopped a day ago leaves it: its last
    cron run, at ``reference_time``, succeeded. Written by the daemon's own
    writer (``writes.write``, a NewRun with cause cron, as the database task
    commits one), so the run, its jobs and their events are what a daemon
    writes; only the job directories of that day are not there."""
    made = time.time() - 24 * 3600
    run = Run(id=1, pipeline="catchup", reference_time=reference_time, state=RunState.SUCCEEDED,
              cause=RunCause.CRON, created_at=made, ended_at=made + 2)
    jobs = tuple(
        Job(id=n, run_id=1, pipeline="catchup", step=step, index=0, count=1, executor="local",
            state=JobState.SUCCEEDED, exit_code=0, created_at=made, submitted_at=made + n - 1,
            started_at=made + n - 1, ended_at=made + n)
        for n, step in ((1, "a"), (2, "b"))
    )
    with open_store(database_url) as store:
        committed = writes.write(store, [NewRun(run, jobs)])
    assert committed.rejected == ()


def ledger_lines(ledger: Path) -> list[tuple[str, str, str, str]]:
    if not ledger.exists():
        return []
    return [tuple(line.split()) for line in ledger.read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.slow
def test_kill_9_during_a_catch_up_of_24_cycles_runs_each_cycle_once(tmp_path, database_url):
    """The newest cron run in the database is 24 hours old and the pipeline
    has catchup = "all": the daemon makes the 24 missed cycles at start,
    oldest first, under the runahead, each waiting on the one before
    (docs/configuration.md, "Cycling"). It is killed -9 while the 8th
    cycle's a runs (5 runs running, the rest queued); that job ends while no
    daemon runs; a new daemon takes over from the database alone. Every
    cycle ran each of its jobs once (the ledger), in order, and every run
    ended succeeded."""
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    now = datetime.now(UTC)
    top = now.replace(minute=0, second=0, microsecond=0)  # the newest firing
    last = top - 24 * HOUR
    gated = top - 16 * HOUR  # the 8th missed firing
    last_cron_run(database_url, last)
    port = free_port()
    pipeline = CATCHUP.format(ledger=ledger, gate=gate, gated=iso(gated))
    d = DaemonProcess(write_config(tmp_path, database_url, {"catchup": pipeline}, port=port),
                      port, tmp_path / "daemon.log")
    d.start()
    try:
        wait_until(lambda: (iso(gated), "a") in {(t, step) for t, step, _, _ in ledger_lines(ledger)}, 60,
                   "the 8th cycle's a running", detail=d.log.read_text)

        def settled() -> dict[str, str] | None:
            # the cycles before the gated one ended: nothing moves until the gate opens
            states = {r["reference_time"]: r["state"] for r in d.runs("catchup")}
            done = all(state == "succeeded" for t, state in states.items() if t < iso(gated))
            return states if done else None

        before = wait_until(settled, 60, "the cycles before the 8th succeeded", detail=d.log.read_text)
        # made at start: the 24 missed firings, each once, oldest first
        assert sorted(before) == [iso(last + n * HOUR) for n in range(len(before))]
        assert len(before) >= 25  # and the 25th, if the hour turned meanwhile
        assert "catching up catchup (catchup = all): 24 run(s)" in d.log.read_text() or len(before) > 25
        assert Counter(before.values())["running"] == 5, before
        assert (iso(gated), "a", "end") not in {(t, s, e) for t, s, _, e in ledger_lines(ledger)}
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        gate.touch()
        wait_until(lambda: (iso(gated), "a", "end") in {(t, s, e) for t, s, _, e in ledger_lines(ledger)}, 30,
                   "the 8th cycle's a ending while no daemon runs")
        d.start()

        def all_ended() -> list[dict] | None:
            runs = d.runs("catchup")
            return runs if all(r["state"] in ENDED for r in runs) and len(runs) >= 25 else None

        runs = wait_until(all_ended, 120, "every cycle ending", detail=d.log.read_text)
        events = d.events(["run"])
    finally:
        if d.process is not None and d.process.poll() is None:
            d.stop(signal.SIGTERM)
    # one run per hourly firing from the last cron run on, made by cron
    assert [r["reference_time"] for r in runs] == [iso(last + n * HOUR) for n in range(len(runs))]
    assert {r["cause"] for r in runs} == {"cron"}
    assert [r["state"] for r in runs] == ["succeeded"] * len(runs), [(r["reference_time"], r["state"]) for r in runs]
    # each job of each cycle ran once: one start and one end in the ledger,
    # by the job the database has in that slot
    lines = ledger_lines(ledger)
    assert len(lines) == len(set(lines)), "a line written twice: a job ran twice"
    expected = {
        (r["reference_time"], j["step"], str(j["id"]), edge)
        for r in runs[1:] for j in r["jobs"] for edge in ("start", "end")
    }
    assert set(lines) == expected
    assert all(len(r["jobs"]) == 2 for r in runs)  # no retry, no second job in a slot
    for earlier, later in itertools.pairwise(runs):
        assert when(by_step(later)["a"]["started_at"]) >= when(by_step(earlier)["a"]["ended_at"])
    # the runahead held across the restart: never more than 5 running
    state: dict[int, str] = {}
    for event in events:
        state[event["data"]["id"]] = event["data"]["state"]
        assert sum(s == "running" for s in state.values()) <= 5, event
