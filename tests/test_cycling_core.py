"""Cycling in the scheduler core, with a clock the test controls: intercycle
parents, runahead, clock triggers, expiry, lateness, backfill, and timers
derived again after a restart (docs/configuration.md, "Cycling"). Plain calls,
no Trio, no database: the Harness of test_scheduler_core plays the database,
NewRun.needs included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
from test_scheduler_core import Harness, ReplyBox  # tests/ is on sys.path

from muppet import durations
from muppet.messages import Backfill, JobFinished, JobStarted, Trigger
from muppet.model import ExecutorConfig, IntercycleParent, Job, JobState, Pipeline, Run, RunState, Step
from muppet.scheduler.core import Scheduler

T0 = datetime(2026, 12, 1, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def at(moment: datetime) -> float:
    return moment.timestamp()


def cycling(*steps: Step, **pipeline) -> Pipeline:
    return Pipeline(name="p", owner="ops", steps={s.name: s for s in steps}, **pipeline)


LOOP = Step("a", "x", intercycle=(IntercycleParent("a", "-PT1H"),))


def run_ids(h: Harness, state: RunState | None = None) -> list[int]:
    return sorted(r.id for r in h.db_runs.values() if state is None or r.state is state)


def job_of(h: Harness, run_id: int, step: str = "a") -> Job:
    return h.job(step, 0, run_id)


def finish(h: Harness, job_id: int, state: str = "succeeded") -> None:
    h.feed(JobStarted(job_id, str(job_id), "host", h.now))
    h.settle()
    h.feed(JobFinished(job_id, state, 0 if state == "succeeded" else 1, "", h.now, h.now))
    h.settle()


def test_an_intercycle_parent_waits_for_the_earlier_run_and_initial_satisfies_the_first():
    h = Harness(cycling(LOOP, Step("b", "x", parents=("a",)), initial=T0), now=at(T0))
    h.trigger("p", T0 + HOUR)
    h.trigger("p", T0)
    first, second = sorted(run_ids(h), key=lambda i: h.db_runs[i].reference_time)
    # the first cycle's parent would be before initial: it starts at once
    assert h.started_ids() == [job_of(h, first).id]
    late = job_of(h, second)
    assert h.core.why_waiting(late.id, h.now) == (
        f"parents: a[-PT1H] submitted (run {first} for 2026-12-01T00:00:00Z)"
    )
    finish(h, job_of(h, first).id)
    assert job_of(h, second).id in h.started_ids()


def test_a_missing_earlier_run_is_named_and_waited_for():
    h = Harness(cycling(LOOP, initial=T0 + HOUR), now=at(T0))
    h.trigger("p", T0 + 2 * HOUR)
    (run,) = run_ids(h)
    assert h.started_ids() == []
    assert h.core.why_waiting(job_of(h, run).id, h.now) == "parents: a[-PT1H]: no run for 2026-12-01T01:00:00Z yet"
    h.trigger("p", T0 + HOUR)  # its parent is before initial
    middle = max(run_ids(h))
    finish(h, job_of(h, middle).id)
    assert job_of(h, run).id in h.started_ids()


def test_an_ended_earlier_run_comes_from_the_database_with_the_new_run():
    """The earlier run ended and left the scheduler's memory: the NewRun's
    ``needs`` bring its outcome back in the same commit."""
    h = Harness(cycling(LOOP, initial=T0), now=at(T0))
    h.trigger("p", T0)
    finish(h, job_of(h, 1).id)
    assert h.db_runs[1].state is RunState.SUCCEEDED and h.core.runs == {}
    h.core.ended.clear()  # as after a restart: only the database knows it
    h.trigger("p", T0 + HOUR)
    assert job_of(h, 2).id in h.started_ids()


def test_an_earlier_run_that_failed_keeps_the_next_cycle_waiting_saying_so():
    h = Harness(cycling(LOOP, initial=T0), now=at(T0))
    h.trigger("p", T0)
    finish(h, job_of(h, 1).id, "failed")
    h.trigger("p", T0 + HOUR)
    assert h.core.why_waiting(job_of(h, 2).id, h.now) == "parents: a[-PT1H] failed (run 1 for 2026-12-01T00:00:00Z)"


def test_runahead_queues_runs_and_starts_them_oldest_first():
    h = Harness(cycling(Step("a", "x"), runahead=2), now=at(T0))
    for hour in (3, 1, 0, 2):
        h.trigger("p", T0 + hour * HOUR)
    running = [h.db_runs[i].reference_time for i in run_ids(h, RunState.RUNNING)]
    queued = run_ids(h, RunState.QUEUED)
    assert sorted(running) == [T0 + HOUR, T0 + 3 * HOUR]  # the first two made
    assert len(queued) == 2
    why = h.core.why_waiting(job_of(h, queued[0]).id, h.now)
    assert why == "runahead: 2 of 2 runs of p running; this one is queued"
    started = []
    while run_ids(h, RunState.QUEUED) or run_ids(h, RunState.RUNNING):
        running_now = run_ids(h, RunState.RUNNING)
        assert len(running_now) <= 2
        started += [h.db_runs[i].reference_time for i in running_now if h.db_runs[i].reference_time not in started]
        finish(h, job_of(h, min(running_now)).id)
    # the queued ones started oldest first
    assert started == [T0 + 3 * HOUR, T0 + HOUR, T0, T0 + 2 * HOUR]


def test_a_clock_trigger_holds_a_job_until_its_time():
    h = Harness(cycling(Step("a", "x", not_before="PT30M")), now=at(T0))
    h.trigger("p", T0)
    assert h.started_ids() == []
    assert h.core.why_waiting(1, h.now) == "clock: not before 2026-12-01T00:30:00Z"
    assert h.wake == at(T0 + timedelta(minutes=30))
    h.now = h.wake
    h.feed()
    h.settle()
    assert h.started_ids() == [1]


def test_a_job_not_started_by_its_expiry_expires_with_its_downstream_and_the_run():
    pipeline = cycling(
        Step("a", "x", not_before="PT2H"),  # held back past the expiry
        Step("b", "x", parents=("a",)),
        Step("c", "x"),
        expire_after="PT1H",
    )
    h = Harness(pipeline, now=at(T0))
    h.trigger("p", T0)
    finish(h, job_of(h, 1, "c").id)
    assert h.wake == at(T0 + HOUR)  # the expiry comes before the clock trigger
    h.now = h.wake
    h.feed()
    h.settle()
    a, b = job_of(h, 1, "a"), job_of(h, 1, "b")
    assert a.state is JobState.EXPIRED and a.reason == "not started by 2026-12-01T01:00:00Z (expire_after)"
    assert b.state is JobState.EXPIRED and b.reason == f"upstream job {a.id} (a[0]) expired"
    assert h.run().state is RunState.EXPIRED
    # an operator can still run it
    run = h.run()
    jobs = tuple(j for j in h.db_jobs.values() if j.run_id == run.id)
    box = ReplyBox()
    from muppet.messages import Command

    h.ask(Command("rerun", a.id, run=run, jobs=jobs), box)
    h.settle()
    assert box.replies[0].error is None and h.run().state is RunState.RUNNING
    h.now = at(T0 + 2 * HOUR)  # its clock trigger: a rerun waits for it, but does not expire
    h.drain()
    assert h.run().state is RunState.SUCCEEDED


def test_late_jobs_and_runs_are_flagged_once_with_an_event():
    pipeline = cycling(Step("a", "x", late_after="PT10M"), late_after="PT20M")
    h = Harness(pipeline, now=at(T0))
    h.trigger("p", T0)
    h.feed(JobStarted(1, "1", "host", h.now))
    h.settle()
    h.now = at(T0 + timedelta(minutes=10))
    h.feed()
    h.settle()
    assert h.db_jobs[1].late and h.db_jobs[1].state is JobState.RUNNING
    assert [(n.kind, n.id) for n in h.late_notices] == [("job", 1)]
    h.now = at(T0 + timedelta(minutes=20))
    h.feed()
    h.settle()
    assert h.db_runs[1].late and [(n.kind, n.id) for n in h.late_notices] == [("job", 1), ("run", 1)]
    h.now += 600
    h.feed()
    h.settle()
    assert len(h.late_notices) == 2  # once
    h.feed(JobFinished(1, "succeeded", 0, "", h.now, h.now))
    h.settle()
    assert h.db_runs[1].state is RunState.SUCCEEDED and h.db_runs[1].late


class _NotWalked(list):
    """A timer heap that must not be walked entry by entry: a batch of the
    core takes what is due from the heap's top (heapq reads the list
    directly, not through ``__iter__``)."""

    def __iter__(self):
        raise AssertionError("a batch looked at every timer")


def test_deadlines_of_a_big_step_cost_a_batch_only_what_is_due():
    """A step with deadlines keeps one timer per job and deadline, however
    often its jobs are stored, and a batch looks only at those due: a
    fan-out of 10,000 jobs with expire_after and late_after cost 4 ms per
    event when every batch scanned all of them (bench/core.py)."""
    pipeline = cycling(Step("a", "x", jobs=50, late_after="PT10M"), expire_after="PT1H")
    h = Harness(pipeline, max_jobs=10, now=at(T0))
    h.core.timers = _NotWalked()
    h.trigger("p", T0)
    for start in list(h.starts[:5]):
        h.feed(JobStarted(start.job.id, str(start.job.id), "host", h.now))
        h.settle()
    # waiting, submitted, running: stored up to three times each, one entry
    # per (moment, deadline, job): expire and late for each of the 50
    assert len(h.core.timers) == 50 * 2, sorted(h.core.timers)[:6]
    h.now = at(T0 + timedelta(minutes=10))
    h.feed()
    h.settle()
    assert sorted(n.id for n in h.late_notices) == list(range(1, 51))
    h.now = at(T0 + HOUR)
    h.feed()
    h.settle()
    assert {h.db_jobs[j].state for j in range(11, 51)} == {JobState.EXPIRED}


def test_a_restart_derives_the_timers_again():
    """After a restart, an expiry that passed while no daemon ran is carried
    out at once, and the next clock trigger is the next wake-up."""
    pipeline = cycling(Step("a", "x", not_before="PT3H"), Step("b", "x", not_before="PT30M"), expire_after="PT2H")
    core = Scheduler({"p": pipeline}, {"local": ExecutorConfig("local", "local")}, next_run_id=2, next_job_id=3)
    run = Run(1, "p", T0)
    jobs = [Job(1, 1, "p", "a", 0, 1, "local"), Job(2, 1, "p", "b", 0, 1, "local")]
    effects = core.load([run], jobs, at(T0 + timedelta(minutes=10)))
    assert [type(e).__name__ for e in effects] == ["WakeAt"]  # nothing expired, nothing started
    wake = [e.time for e in effects if type(e).__name__ == "WakeAt"]
    assert wake == [at(T0 + timedelta(minutes=30))]
    effects = Scheduler({"p": pipeline}, {"local": ExecutorConfig("local", "local")}).load(
        [run], jobs, at(T0 + 3 * HOUR))
    (persist,) = [e for e in effects if type(e).__name__ == "Persist"]
    assert {c.id for c in persist.changes if isinstance(c, Job) and c.state is JobState.EXPIRED} == {1, 2}


def test_a_backfill_makes_the_missing_runs_oldest_first_and_skips_the_others():
    h = Harness(cycling(Step("a", "x"), runahead=1), now=at(T0))
    h.trigger("p", T0 + HOUR)
    box = ReplyBox()
    h.ask(Backfill("p", tuple(T0 + n * HOUR for n in (2, 0, 1))), box)
    h.settle()
    (reply,) = box.replies
    made = reply.result["run_ids"]
    assert [h.db_runs[i].reference_time for i in made] == [T0, T0 + 2 * HOUR]
    assert reply.result["skipped"] == ["2026-12-01T01:00:00Z"]
    assert {h.db_runs[i].state for i in made} == {RunState.QUEUED}


def test_a_backfill_skips_a_run_the_database_has_but_memory_does_not():
    h = Harness(cycling(Step("a", "x")), now=at(T0))
    h.trigger("p", T0)
    finish(h, 1)
    assert h.core.runs == {}
    box = ReplyBox()
    h.ask(Backfill("p", (T0, T0 + HOUR)), box)
    h.settle()
    # run id 2 went to the refused run of T0
    assert box.replies[0].result == {"run_ids": [3], "skipped": ["2026-12-01T00:00:00Z"]}


def test_a_queued_run_can_expire_without_running():
    pipeline = cycling(Step("a", "x"), runahead=1, expire_after="PT1H")
    h = Harness(pipeline, now=at(T0))
    h.trigger("p", T0)
    h.trigger("p", T0 + timedelta(minutes=5))
    assert run_ids(h, RunState.QUEUED) == [2]
    h.now = at(T0 + timedelta(minutes=65))
    h.feed()
    h.settle()
    assert h.db_runs[2].state is RunState.EXPIRED
    assert h.db_jobs[job_of(h, 2).id].state is JobState.EXPIRED
    assert attrs.evolve(h.db_runs[1]).state is RunState.RUNNING  # started before its expiry


def test_trigger_of_an_existing_queued_run_is_refused():
    h = Harness(cycling(Step("a", "x"), runahead=1), now=at(T0))
    h.trigger("p", T0)
    h.trigger("p", T0 + HOUR)
    box = ReplyBox()
    h.ask(Trigger("p", T0 + HOUR, "manual"), box)
    assert box.replies[0].code == -32002


def test_a_duration_moves_on_the_wall_clock_and_a_skipped_hour_counts_back_from_before_it():
    """Europe/Oslo, 29 March 2026: the clocks go from 02:00 CET to 03:00 CEST
    (01:00Z). Backward, 03:00 CEST less PT1H is the hour before the skip
    (01:00 CET, 00:00Z), not 03:00 CEST again; forward, 01:00 CET plus PT1H
    is the first moment after it (03:00 CEST, 01:00Z); across the day,
    -P1D keeps the wall-clock hour."""
    oslo = "Europe/Oslo"
    at = datetime.fromisoformat
    assert durations.shift(at("2026-03-29T01:00:00+00:00"), "-PT1H", oslo) == at("2026-03-29T00:00:00+00:00")
    assert durations.shift(at("2026-03-29T01:30:00+00:00"), "-PT1H", oslo) == at("2026-03-29T00:30:00+00:00")
    assert durations.shift(at("2026-03-29T00:00:00+00:00"), "PT1H", oslo) == at("2026-03-29T01:00:00+00:00")
    assert durations.shift(at("2026-03-29T04:00:00+00:00"), "-P1D", oslo) == at("2026-03-28T05:00:00+00:00")
    assert durations.shift(at("2026-03-29T01:00:00+00:00"), "-PT1H", "UTC") == at("2026-03-29T00:00:00+00:00")
