"""The scheduler core under every interleaving hypothesis finds.

``World`` plays the rest of the daemon around a real ``Scheduler``, each part
with the freedom the real one has: the database commits the core's writes in
the order they were sent, but late (any number of other events may come in
between); the executor launches a job only when a StartJob was not followed
by a KillJob in the same batch, re-attaches after a restart, and its
processes end in any order; operators trigger, kill, hold, release and rerun
at any moment; and the daemon dies at random points, losing everything not
committed, and a new core ``load``s what the database holds while the jobs'
processes go on.

Properties, checked all along and once the world has drained:
- a job's command is launched at most once, and only once its "submitted"
  state is committed;
- the executor's slots, a step's concurrency and conflicts are never
  exceeded by the processes running;
- no kill is lost: a job whose kill was answered "killing" is never launched
  afterwards and ends killed (or succeeded, when it had finished first);
- every waiting job says why it waits, and never waits on a parent that
  ended without success (it would wait for ever);
- every run ends.
"""

from __future__ import annotations

import os
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from muppet.messages import (
    Ack,
    Command,
    Control,
    DaemonCommand,
    JobFinished,
    JobNotStarted,
    JobStarted,
    KillJob,
    LateNotice,
    NewRun,
    OperatorEvent,
    Persist,
    Persisted,
    PipelineCommand,
    Reply,
    RunCommand,
    StartJob,
    Trigger,
)
from muppet.model import Depends, ExecutorConfig, Job, JobState, Pipeline, RetryPolicy, Run, RunState, Step
from muppet.scheduler.core import DONE, Answer, Scheduler

T0 = datetime(2026, 11, 28, 6, tzinfo=UTC)
MAX_JOBS = 3
CONCURRENCY = 2
ENDED_BADLY = {JobState.FAILED, JobState.KILLED, JobState.SKIPPED}


def the_pipeline(depends: Depends, tries: int) -> Pipeline:
    retry = RetryPolicy(tries=tries, interval=2.0, factor=2.0)
    steps = [
        Step("a", "x", jobs=2, retry=retry),
        Step("b", "x", parents=("a",), jobs=2, depends=depends, concurrency=CONCURRENCY, retry=retry),
        Step("c", "x", parents=("b",), conflicts=("a",)),
    ]
    return Pipeline(name="p", owner="ops", steps={s.name: s for s in steps})


@attrs.define
class Process:
    """A job's command as the executor launched it."""

    job: Job
    ended: bool = False
    outcome: str = ""
    killed: bool = False


class World:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.now = 1000.0
        # the database
        self.runs: dict[int, Run] = {}
        self.jobs: dict[int, Job] = {}
        self.keys: set[tuple[str, datetime]] = set()
        # the daemon: its core, its writes not yet committed, and the
        # executor's reports not yet delivered (all lost when it dies)
        self.core = self._new_core()
        self.unsent: deque[Persist] = deque()
        self.reports: deque[JobStarted | JobFinished | JobNotStarted] = deque()
        self.in_hand: set[int] = set()
        # the jobs' processes: they outlive the daemon
        self.processes: dict[int, Process] = {}
        # the executor's own trouble (a full disk): no job can be started
        self.trouble = False
        self.launches: dict[int, int] = {}
        # operators: requests by number, the kills answered "killing"
        self.requests = 0
        self.asked: dict[int, Command | Trigger] = {}
        self.killing: dict[int, bool] = {}  # job id -> it had been launched when answered
        self.restarts = 0

    def _new_core(self) -> Scheduler:
        next_run = max(self.runs, default=0) + 1
        next_job = max(self.jobs, default=0) + 1
        return Scheduler(
            {"p": self.pipeline}, {"local": ExecutorConfig("local", "local", max_jobs=MAX_JOBS)},
            next_run_id=next_run, next_job_id=next_job,
        )

    # --- the daemon's parts -----------------------------------------------------------

    def take(self, effects: list[Any]) -> None:
        launching: list[Job] = []
        for effect in effects:
            if isinstance(effect, Persist):
                self.unsent.append(effect)
            elif isinstance(effect, StartJob):
                self._start(effect.job, launching)
            elif isinstance(effect, KillJob):
                self._kill(effect.job_id, launching)
            elif isinstance(effect, Answer):
                self._answered(effect.request, effect.reply)
        # the real executor starts a task per StartJob; a KillJob that came
        # in the same batch is seen before that task launches anything
        for job in launching:
            self._launch(job)

    def _start(self, job: Job, launching: list[Job]) -> None:
        if job.id in self.in_hand:
            return
        self.in_hand.add(job.id)
        process = self.processes.get(job.id)
        if process is None:
            launching.append(job)
        elif process.ended:
            self.reports.append(self._finished(process))
        else:
            self.reports.append(JobStarted(job.id, str(job.id), "host", self.now))

    def _kill(self, job_id: int, launching: list[Job]) -> None:
        if job_id not in self.in_hand:
            return  # the real executor ignores a job it does not hold
        for job in launching:
            if job.id == job_id:
                launching.remove(job)
                self.reports.append(JobFinished(job_id, "killed", None, "killed by operator", None, self.now))
                return
        process = self.processes.get(job_id)
        if process is not None and not process.ended:
            process.ended, process.killed = True, True
            self.reports.append(self._finished(process))

    def _launch(self, job: Job) -> None:
        if self.trouble:
            self.reports.append(JobNotStarted(job.id, "no space left on device"))
            return
        committed = self.jobs[job.id]
        assert committed.state is JobState.SUBMITTED, f"job {job.id} launched while {committed.state.value}"
        self.launches[job.id] = self.launches.get(job.id, 0) + 1
        assert self.launches[job.id] == 1, f"job {job.id} launched twice"
        assert not (job.id in self.killing and not self.killing[job.id]), f"job {job.id} launched after its kill"
        self.processes[job.id] = Process(job)
        self.reports.append(JobStarted(job.id, str(job.id), "host", self.now))
        self._check_limits()

    def _finished(self, process: Process) -> JobFinished:
        state = "killed" if process.killed else process.outcome
        code = None if process.killed else (0 if state == "succeeded" else 1)
        return JobFinished(process.job.id, state, code, "", self.now, self.now)

    def _answered(self, request: int, reply: Reply) -> None:
        asked = self.asked.pop(request, None)
        if isinstance(asked, Command) and asked.action == "kill" and reply.error is None:
            if reply.result["state"] == "killing":
                launched = asked.job_id in self.processes
                self.killing.setdefault(asked.job_id, launched)

    def _check_limits(self) -> None:
        running = [p.job for p in self.processes.values() if not p.ended]
        assert len(running) <= MAX_JOBS
        assert sum(1 for j in running if j.step == "b") <= CONCURRENCY
        assert not (any(j.step == "a" for j in running) and any(j.step == "c" for j in running))

    # --- what can happen next -------------------------------------------------------------

    def feed(self, *events: Any) -> None:
        self.take(self.core.handle(events, self.now))

    def commit(self) -> None:
        """The database commits the oldest write and tells the core."""
        persist = self.unsent.popleft()
        committed: list[Any] = []
        rejected: list[NewRun] = []
        acks: list[int] = []
        newly_submitted = [
            change for change in persist.changes
            if isinstance(change, Job) and change.state is JobState.SUBMITTED
            and (change.id not in self.jobs or self.jobs[change.id].state is not JobState.SUBMITTED)
        ]
        for change in persist.changes:
            if isinstance(change, (OperatorEvent, Control, LateNotice)):
                continue  # events and standing orders: nothing the core reads back
            if isinstance(change, Ack):
                acks.append(change.request)
                continue
            if isinstance(change, NewRun):
                key = (change.run.pipeline, change.run.reference_time)
                if key in self.keys:
                    rejected.append(change)
                    continue
                self.keys.add(key)
                self.runs[change.run.id] = change.run
                self.jobs.update((j.id, j) for j in change.jobs)
            elif isinstance(change, Run):
                self.runs[change.id] = change
            elif isinstance(change, Job):
                self.jobs[change.id] = change
            committed.append(change)
        self._check_submitted_after_parents(newly_submitted)
        self.feed(Persisted(tuple(committed), tuple(rejected), acks=tuple(acks)))

    def _check_submitted_after_parents(self, submitted: list[Job]) -> None:
        """No committed state has a job submitted before its parents' success
        is committed too (the core may decide on a success in flight: it
        goes in the same transaction or an earlier one)."""
        newest: dict[tuple[int, str, int], Job] = {}
        for job in self.jobs.values():
            key = (job.run_id, job.step, job.index)
            if key not in newest or newest[key].id < job.id:
                newest[key] = job
        for job in submitted:
            for step, index in self.core._parent_slots(job, self.pipeline):
                parent = newest.get((job.run_id, step, index))
                assert parent is not None and parent.state in DONE, (
                    f"job {job.id} submitted with parent {step}[{index}] "
                    f"{parent.state.value if parent else 'missing'} in the database"
                )

    def deliver(self) -> None:
        report = self.reports.popleft()
        if isinstance(report, (JobFinished, JobNotStarted)):
            self.in_hand.discard(report.job_id)
        self.feed(report)

    def end_process(self, index: int, outcome: str) -> None:
        running = [p for p in self.processes.values() if not p.ended]
        process = running[index % len(running)]
        process.ended, process.outcome = True, outcome
        if process.job.id in self.in_hand:
            self.reports.append(self._finished(process))

    def ask(self, event: Any) -> None:
        self.requests += 1
        self.asked[self.requests] = event
        self.feed(attrs.evolve(event, request=self.requests))

    def command(self, action: str, index: int) -> None:
        if not self.jobs:
            return
        job = self.jobs[sorted(self.jobs)[index % len(self.jobs)]]
        run = self.runs[job.run_id]
        # the API passes a command the run and its jobs from the database
        jobs = tuple(j for j in self.jobs.values() if j.run_id == run.id)
        if action.startswith("run-"):
            step = "b" if index % 2 else "c"
            self.ask(RunCommand(action[4:], run.id, run=run, jobs=jobs, step=step))
        elif action == "rerun-down":
            self.ask(Command("rerun", job.id, run=run, jobs=jobs, downstream=True))
        elif action.startswith("set-"):
            self.ask(Command("set", job.id, run=run, jobs=jobs, outcome=action[4:]))
        else:
            self.ask(Command(action, job.id, run=run, jobs=jobs))

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.feed()

    def restart(self) -> None:
        """The daemon dies: what was not committed is gone, the processes
        run on; a new daemon loads the database."""
        self.restarts += 1
        self.unsent.clear()
        self.reports.clear()
        self.in_hand.clear()
        self.asked.clear()
        self.core = self._new_core()
        running = [r for r in self.runs.values() if r.state is RunState.RUNNING]
        ids = {r.id for r in running}
        self.take(self.core.load(running, [j for j in self.jobs.values() if j.run_id in ids], self.now))

    # --- properties -------------------------------------------------------------------------

    def check_waiting(self) -> None:
        # the core's incremental account of what keeps each run from ending
        # is what a scan of every slot finds
        for run_id in self.core.runs:
            scanned = {
                job_id for job_id in self.core.current.get(run_id, {}).values()
                if job_id in self.core.pending_jobs or not self.core.jobs[job_id].state.finished
            }
            assert self.core.unsettled.get(run_id, set()) == scanned, f"run {run_id}"
        # the waiting jobs by group, as the scheduling pass merges them: each
        # group's ids in order, every waiting job in its own group once
        # (parked groups, of ``all`` steps, out of the pass, alike)
        groups = {**self.core.waiting_groups, **self.core.parked_groups}
        assert len(groups) == len(self.core.waiting_groups) + len(self.core.parked_groups)
        for group, ids in groups.items():
            assert ids and ids == sorted(ids), group
            for job_id in ids:
                job = self.core.jobs[job_id]
                assert job_id in self.core.waiting and group == (job.run_id, job.step, job.executor)
        # parked jobs (an ``each`` parent not done) are out of their groups
        assert not self.core.parked & {j for ids in groups.values() for j in ids}
        assert self.core.parked <= set(self.core.waiting)
        assert sum(len(ids) for ids in groups.values()) + len(self.core.parked) == len(self.core.waiting)
        for job_id in self.core.parked:
            job = self.core.jobs[job_id]
            assert not self.core._dependencies_met(job, self.pipeline), f"job {job_id} parked, its parent done"
        # a parked group waits on a parent slot of its run that is not done,
        # and that slot's record names it
        assert set(self.core.parked_group_slot) == set(self.core.parked_groups)
        assert {(slot, group) for slot, parked in self.core.parked_on.items() for group in parked} == {
            (slot, group) for group, slot in self.core.parked_group_slot.items()}
        for group, (run_id, step, index) in self.core.parked_group_slot.items():
            assert run_id == group[0]
            parent = self.core._newest_in_slot(run_id, (step, index))
            assert parent is None or parent.state not in DONE, f"group {group} parked, its parent {parent} done"
        # the jobs holding slots, counted as the scheduling pass counts them
        by_step: dict = {}
        by_executor: dict = {}
        for job_id in self.core.active:
            job = self.core._current_copy(job_id)
            by_step[(job.pipeline, job.step)] = by_step.get((job.pipeline, job.step), 0) + 1
            by_executor[job.executor] = by_executor.get(job.executor, 0) + 1
        assert (self.core.active_by_step, self.core.active_by_executor) == (by_step, by_executor)
        # every job in memory under its own run, for forgetting the run
        assert {(job.run_id, job.id) for job in self.core.jobs.values()} == {
            (run_id, job_id) for run_id, ids in self.core.run_jobs.items() for job_id in ids}
        for job_id in sorted(self.core.waiting):
            why = self.core.why_waiting(job_id, self.now)
            assert why, f"job {job_id} waits without a reason"
            job = self.core.jobs[job_id]
            if job.id in self.core.pending_jobs:
                continue
            for slot in self.core._parent_slots(job, self.pipeline):
                parent = self.core.jobs[self.core.current[job.run_id][slot]]
                assert parent.state not in ENDED_BADLY, f"job {job_id} would wait for ever: {why}"

    def drain(self) -> None:
        """Let everything settle: operators release what they held, every
        process succeeds, time passes for the backoffs."""
        for _ in range(2000):
            if self.unsent:
                self.commit()
            elif self.reports:
                self.deliver()
            elif self.trouble:
                self.trouble = False  # the disk is emptied
            elif "draining" in self.core.controls:
                self.ask(DaemonCommand("undrain"))
            elif "paused:p" in self.core.controls:
                self.ask(PipelineCommand("resume", "p"))
            elif any(not p.ended for p in self.processes.values()):
                self.end_process(0, "succeeded")
            elif any(j.state is JobState.HELD for j in self.core.jobs.values()):
                held = min(j.id for j in self.core.jobs.values() if j.state is JobState.HELD)
                self.ask(Command("release", held))
            elif self.core.waiting:
                self.tick(60.0)
            else:
                return
            self.check_waiting()
        raise AssertionError("the world did not settle")


ACTIONS = [
    "commit", "deliver", "succeed", "fail", "kill", "hold", "release", "rerun", "trigger", "tick", "restart",
    "trouble", "rerun-down", "set-succeeded", "set-failed", "run-hold", "run-release", "run-kill", "run-rerun",
    "run-bypass", "pause", "resume", "drain", "undrain",
]


@settings(max_examples=int(os.environ.get("MUPPET_EXAMPLES", "400")), deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    depends=st.sampled_from([Depends.ALL, Depends.EACH]),
    tries=st.integers(1, 3),
)
def test_every_interleaving_keeps_the_promises(data, depends, tries):
    world = World(the_pipeline(depends, tries))
    world.ask(Trigger("p", T0, "manual"))
    steps = data.draw(st.integers(10, 150), label="steps")
    for _ in range(steps):
        action = data.draw(st.sampled_from(ACTIONS), label="action")
        if action == "commit" and world.unsent:
            world.commit()
        elif action == "deliver" and world.reports:
            world.deliver()
        elif action in ("succeed", "fail") and any(not p.ended for p in world.processes.values()):
            world.end_process(data.draw(st.integers(0, 9)), "succeeded" if action == "succeed" else "failed")
        elif action in ("kill", "hold", "release", "rerun", "rerun-down", "set-succeeded", "set-failed") or (
            action.startswith("run-")
        ):
            world.command(action, data.draw(st.integers(0, 30)))
        elif action in ("pause", "resume"):
            world.ask(PipelineCommand(action, "p"))
        elif action in ("drain", "undrain"):
            world.ask(DaemonCommand(action))
        elif action == "trigger":
            world.ask(Trigger("p", T0 + timedelta(hours=data.draw(st.integers(0, 2))), "manual"))
        elif action == "tick":
            world.tick(data.draw(st.sampled_from([0.5, 2.0, 10.0])))
        elif action == "restart":
            world.restart()
        elif action == "trouble":
            world.trouble = not world.trouble
        world.check_waiting()
    world.drain()

    assert all(n == 1 for n in world.launches.values())
    for run in world.runs.values():
        assert run.state is not RunState.RUNNING, f"run {run.id} never ended"
    for job in world.jobs.values():
        assert job.state.finished, f"job {job.id} is {job.state.value} in an ended run"
    for job_id in world.killing:
        job = world.jobs[job_id]
        assert job.state in (JobState.KILLED, JobState.SUCCEEDED), f"kill of job {job_id} lost: {job.state.value}"
        if job.successor is not None:  # an operator's rerun, never a retry
            assert world.jobs[job.successor].failures == 0, f"killed job {job_id} was retried"
