"""The sans-I/O scheduler core: plain function calls, no Trio, no database.

`Harness` plays the other tasks' parts the way the daemon wires them: it
holds back each Persist until the test commits it (so "only persisted objects
move on" can be checked), then hands the committed copies back, refusing a
second run of one pipeline and reference time as the database's unique key
does. The database itself is tested in test_db.py and end to end in
test_daemon.py.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import attrs
import hypothesis.strategies as st
from hypothesis import given, settings

from muppet.messages import (
    Ack,
    Command,
    Control,
    EndedRun,
    JobFinished,
    JobNotStarted,
    JobStarted,
    KillJob,
    LateNotice,
    NewRun,
    OperatorEvent,
    Persist,
    Persisted,
    Reply,
    StartJob,
    Trigger,
    UpdateRequest,
)
from muppet.model import (
    Depends,
    ExecutorConfig,
    Job,
    JobState,
    Pipeline,
    RetryPolicy,
    Run,
    RunState,
    Step,
)
from muppet.scheduler.core import Answer, Scheduler, WakeAt

T0 = datetime(2026, 11, 28, 6, tzinfo=UTC)


def pipeline(name: str, *steps: Step) -> Pipeline:
    return Pipeline(name=name, owner="ops", steps={s.name: s for s in steps})


class ReplyBox:
    """Stands in for a requester waiting on its reply channel."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []


class Harness:
    def __init__(self, *pipelines: Pipeline, max_jobs: int = 100, now: float = 1000.0):
        self.pipelines = {p.name: p for p in pipelines}
        self.core = Scheduler(
            self.pipelines, {"local": ExecutorConfig("local", "local", max_jobs=max_jobs)}
        )
        self.now = now
        self.unsent: list[Persist] = []
        self.committed_keys: set[tuple[str, datetime]] = set()
        self.db_runs: dict[int, Run] = {}
        self.db_jobs: dict[int, Job] = {}
        self.starts: list[StartJob] = []
        self.kills: list[int] = []
        self.wake: float | None = None
        self.transactions = 0
        # the scheduler task's part: who waits for which request number
        self.requests = itertools.count(1)
        self.waiting: dict[int, ReplyBox] = {}
        self.unanswered: list[Reply] = []
        self.late_notices: list[LateNotice] = []
        self.operator_events: list[OperatorEvent] = []
        # the index as the database sees it: (product, reference time) pairs
        # with a complete instance, and the update requests as written
        self.complete: set[tuple[str, datetime]] = set()
        self.db_requests: dict[int, UpdateRequest] = {}

    def feed(self, *events) -> None:
        self._take(self.core.handle(events, self.now))

    def ask(self, event, box: ReplyBox | None = None) -> None:
        """Feed a request as the scheduler task does: numbered, its reply
        going to ``box``."""
        request = next(self.requests)
        if box is not None:
            self.waiting[request] = box
        self.feed(attrs.evolve(event, request=request))

    def _take(self, effects) -> None:
        self.wake = None
        for effect in effects:
            if isinstance(effect, Persist):
                self.unsent.append(effect)
            elif isinstance(effect, StartJob):
                self.starts.append(effect)
            elif isinstance(effect, KillJob):
                self.kills.append(effect.job_id)
            elif isinstance(effect, Answer):
                box = self.waiting.pop(effect.request, None)
                if box is None:
                    self.unanswered.append(effect.reply)
                else:
                    box.replies.append(effect.reply)
            elif isinstance(effect, WakeAt):
                self.wake = effect.time

    def commit(self) -> None:
        """The database task: one transaction per Persist waiting (with the
        ended runs a NewRun's ``needs`` names, as writes.py reads them)."""
        batch, self.unsent = self.unsent, []
        for persist in batch:
            committed, rejected, needs, acks, requests = [], [], set(), [], []
            for change in persist.changes:
                if isinstance(change, UpdateRequest):
                    # writes.py: with check, what it waits for as the index holds it now
                    waiting = change.waiting_for
                    if change.check:
                        waiting = tuple(p for p in waiting if (p, change.reference_time) not in self.complete)
                    written = attrs.evolve(change, waiting_for=waiting, check=False)
                    self.db_requests[change.id] = written
                    requests.append(written)
                    continue
                if isinstance(change, LateNotice):
                    self.late_notices.append(change)
                    continue
                if isinstance(change, OperatorEvent):
                    self.operator_events.append(change)
                    continue
                if isinstance(change, Ack):
                    acks.append(change.request)
                    continue
                if isinstance(change, Control):
                    continue
                if isinstance(change, NewRun):
                    needs.update((change.run.pipeline, moment) for moment in change.needs)
                    key = (change.run.pipeline, change.run.reference_time)
                    if key in self.committed_keys:
                        rejected.append(change)
                        continue
                    self.committed_keys.add(key)
                    self.db_runs[change.run.id] = change.run
                    self.db_jobs.update((j.id, j) for j in change.jobs)
                elif isinstance(change, Run):
                    self.db_runs[change.id] = change
                elif isinstance(change, Job):
                    self.db_jobs[change.id] = change
                committed.append(change)
            self.transactions += 1
            self.feed(Persisted(tuple(committed), tuple(rejected), ended=self.ended_runs(needs), acks=tuple(acks),
                                requests=tuple(requests)))

    def ended_runs(self, wanted) -> tuple[EndedRun, ...]:
        found = []
        for run in self.db_runs.values():
            if (run.pipeline, run.reference_time) in wanted and run.state.finished:
                newest = {}
                for job in self.db_jobs.values():
                    if job.run_id == run.id and job.successor is None:
                        newest[job.slot] = job.state
                slots = tuple(sorted((step, index, state) for (step, index), state in newest.items()))
                found.append(EndedRun(run.id, run.pipeline, run.reference_time, run.state, slots))
        return tuple(found)

    def settle(self) -> None:
        while self.unsent:
            self.commit()

    def trigger(self, name: str, when: datetime = T0, box: ReplyBox | None = None) -> None:
        self.ask(Trigger(name, when, "manual"), box)
        self.settle()

    def started_ids(self) -> list[int]:
        return [s.job.id for s in self.starts]

    def run_job(self, job_id: int, state: str = "succeeded", exit_code: int = 0) -> None:
        self.feed(JobStarted(job_id, str(job_id), "host", self.now))
        self.settle()
        reason = "" if exit_code == 0 else f"exit code {exit_code}"
        self.feed(JobFinished(job_id, state, exit_code, reason, self.now, self.now, "out", "err"))
        self.settle()

    def drain(self, outcome=lambda start: ("succeeded", 0), limit: int = 1000) -> None:
        """Finish every started job, over and over, until nothing starts."""
        done: set[int] = set()
        for _ in range(limit):
            todo = [s for s in self.starts if s.job.id not in done]
            if not todo:
                if self.wake is not None:
                    self.now = self.wake
                    self.feed()
                    self.settle()
                    continue
                return
            for start in todo:
                done.add(start.job.id)
                self.run_job(start.job.id, *outcome(start))
        raise AssertionError("did not settle")

    def job(self, step: str, index: int = 0, run_id: int = 1) -> Job:
        """The slot's current job, as committed."""
        jobs = [j for j in self.db_jobs.values() if (j.run_id, j.step, j.index) == (run_id, step, index)]
        return max(jobs, key=lambda j: j.id)

    def run(self, run_id: int = 1) -> Run:
        return self.db_runs[run_id]

    def active_count(self, step: str | None = None) -> int:
        return sum(
            1
            for j in self.db_jobs.values()
            if j.state.active and (step is None or j.step == step)
        )


def test_trigger_creates_every_job_of_the_run_in_one_transaction():
    h = Harness(pipeline("p", Step("a", "true"), Step("b", "true", parents=("a",), jobs=3)))
    box = ReplyBox()
    h.ask(Trigger("p", T0, "manual"), box)
    assert len(h.unsent) == 1
    [new] = h.unsent[0].changes
    assert isinstance(new, NewRun)
    assert [(j.step, j.index, j.count) for j in new.jobs] == [("a", 0, 1), ("b", 0, 3), ("b", 1, 3), ("b", 2, 3)]
    assert all(j.state is JobState.WAITING for j in new.jobs)
    assert box.replies == []  # not before it is committed
    h.commit()
    assert box.replies == [Reply(result={"run_id": new.run.id})]


def test_only_persisted_state_moves_jobs_on():
    h = Harness(pipeline("p", Step("a", "true"), Step("b", "true", parents=("a",))))
    h.feed(Trigger("p", T0, "manual"))
    h.commit()  # the run and its jobs
    assert h.started_ids() == []  # a is submitted, but not yet committed
    h.commit()
    assert h.started_ids() == [1]
    h.feed(JobFinished(1, "succeeded", 0, "", 1.0, 2.0))
    h.feed()  # a scheduling pass before the commit must not start b
    assert h.started_ids() == [1]
    h.settle()
    assert h.started_ids() == [1, 2]


def test_fan_out_and_fan_in():
    h = Harness(
        pipeline(
            "p",
            Step("fetch", "true"),
            Step("convert", "true", parents=("fetch",), jobs=4),
            Step("publish", "true", parents=("convert",)),
        )
    )
    h.trigger("p")
    assert [s.job.step for s in h.starts] == ["fetch"]
    h.run_job(h.starts[0].job.id)
    assert sorted(s.job.index for s in h.starts if s.job.step == "convert") == [0, 1, 2, 3]
    converts = [s.job.id for s in h.starts if s.job.step == "convert"]
    for job_id in converts[:3]:
        h.run_job(job_id)
        assert "publish" not in [s.job.step for s in h.starts]  # fan-in waits for all 4
    h.run_job(converts[3])
    assert h.starts[-1].job.step == "publish"
    h.drain()
    assert h.run().state is RunState.SUCCEEDED
    assert h.run().ended_at == h.now


def test_depends_each_follows_the_same_index():
    h = Harness(
        pipeline(
            "p",
            Step("a", "true", jobs=3),
            Step("b", "true", parents=("a",), jobs=3, depends=Depends.EACH),
        )
    )
    h.trigger("p")
    h.run_job(h.job("a", 1).id)
    assert [(s.job.step, s.job.index) for s in h.starts][-1] == ("b", 1)
    assert ("b", 0) not in [(s.job.step, s.job.index) for s in h.starts]
    h.drain()
    assert h.run().state is RunState.SUCCEEDED


def test_step_concurrency_counts_jobs_of_every_run():
    h = Harness(pipeline("p", Step("a", "true", jobs=3, concurrency=2)))
    h.trigger("p", T0)
    h.trigger("p", T0 + timedelta(hours=1))
    assert len(h.starts) == 2 and h.active_count("a") == 2
    h.run_job(h.starts[0].job.id)
    assert len(h.starts) == 3 and h.active_count("a") == 2
    h.drain()
    assert {r.state for r in h.db_runs.values()} == {RunState.SUCCEEDED}


def test_executor_max_jobs():
    h = Harness(pipeline("p", Step("a", "true", jobs=10)), max_jobs=3)
    h.trigger("p")
    assert len(h.starts) == 3
    h.drain()
    assert h.run().state is RunState.SUCCEEDED


def _count_calls(monkeypatch, core: Scheduler, name: str) -> list[int]:
    """How many times ``core.<name>`` is called from now on (a list of one count)."""
    calls = [0]
    method = getattr(core, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return method(*args, **kwargs)

    monkeypatch.setattr(core, name, counted)
    return calls


def test_a_step_waiting_for_its_parents_is_left_whole_by_the_scheduling_pass(monkeypatch):
    """A step of 2,000 jobs that waits for its parent is looked at once a
    pass, not job by job: one-job runs beside it cost the same as without
    it (a pass that looked at every waiting job made each of them cost 0.9 s
    of CPU beside 50,000 such jobs, bench/core.py)."""
    big = pipeline("big", Step("a", "true"), Step("b", "true", jobs=2000, parents=("a",)))
    small = pipeline("small", Step("a", "true"))
    h = Harness(big, small, max_jobs=16)
    h.trigger("big")
    (first,) = h.starts
    h.feed(JobStarted(first.job.id, "1", "host", h.now))  # the parent runs on
    h.settle()
    checked = _count_calls(monkeypatch, h.core, "_dependencies_met")
    for hour in range(1, 11):
        h.trigger("small", T0 + timedelta(hours=hour))
        h.run_job(h.starts[-1].job.id)
    assert [r.state for r in h.db_runs.values() if r.pipeline == "small"] == [RunState.SUCCEEDED] * 10
    assert checked[0] <= 10 * 10, checked[0]
    # once the parent has succeeded, the whole step starts as before
    h.run_job(first.job.id)
    h.drain(limit=3000)
    assert h.run(1).state is RunState.SUCCEEDED


def test_a_full_executor_holds_back_its_waiting_jobs_together(monkeypatch):
    """Jobs waiting for a full executor are left together by the pass while
    another executor's jobs start, each in its turn: oldest first."""
    busy = pipeline("busy", Step("a", "true", jobs=500, executor="batch"))
    small = pipeline("small", Step("a", "true"))
    h = Harness(busy, small, max_jobs=16)
    h.core.configure(h.pipelines, {"local": ExecutorConfig("local", "local", max_jobs=16),
                                   "batch": ExecutorConfig("batch", "local", max_jobs=2)})
    h.trigger("busy")
    assert len(h.starts) == 2
    clocked = _count_calls(monkeypatch, h.core, "_deadlines")
    for hour in range(1, 6):
        h.trigger("small", T0 + timedelta(hours=hour))
        h.run_job(h.starts[-1].job.id)
    assert len([s for s in h.starts if s.job.pipeline == "small"]) == 5
    assert clocked[0] <= 5 * 30, clocked[0]
    # the batch executor's jobs go on in order as its slots free up
    h.run_job(h.starts[0].job.id)
    busy_started = [s.job.index for s in h.starts if s.job.pipeline == "busy"]
    assert busy_started == [0, 1, 2]


def test_each_jobs_behind_a_full_executor_wait_out_of_the_pass_until_their_parent_succeeds(monkeypatch):
    """The jobs of an ``each`` step whose parents queue for a full executor
    are not looked at again on every batch while the parents run: each is
    put aside once, and looked at again when its own parent succeeds (a
    pass over all of them cost 5.2 ms per event at 10,000 jobs,
    bench/core.py); they still start in their parents' order."""
    p = pipeline("p", Step("a", "true", jobs=300, executor="batch"),
                 Step("b", "true", jobs=300, parents=("a",), depends=Depends.EACH))
    h = Harness(p, max_jobs=16)
    h.core.configure(h.pipelines, {"local": ExecutorConfig("local", "local", max_jobs=16),
                                   "batch": ExecutorConfig("batch", "local", max_jobs=2)})
    h.trigger("p")
    checked = _count_calls(monkeypatch, h.core, "_dependencies_met")
    for _ in range(20):
        h.run_job(next(s.job.id for s in h.starts if s.job.step == "a" and h.db_jobs[s.job.id].state.active))
    # twenty parents done: the first pass put each b aside, and each
    # success woke one; without that, 300 looks on each of some 80 batches
    assert checked[0] <= 300 + 20 * 5, checked[0]
    # in their parents' order, until they fill the local executor's 16 slots
    assert [s.job.index for s in h.starts if s.job.step == "b"] == list(range(16))
    h.drain(limit=5000)
    assert h.run().state is RunState.SUCCEEDED


def test_the_later_steps_of_a_chain_wait_out_of_the_pass_until_their_parent_succeeds(monkeypatch):
    """The steps of a chain that wait for their parent are not looked at
    again on every batch while the earlier ones run: each step is put aside
    on the parent slot it waits for, and looked at again once that slot's
    job succeeds (a chain of 400 steps cost 866 us per event against 241 at
    100, bench/core.py)."""
    steps = [Step(f"s{n}", "true", parents=(f"s{n - 1}",) if n else ()) for n in range(50)]
    h = Harness(pipeline("p", *steps))
    h.trigger("p")
    assert len(h.core.parked_groups) == 49  # all but s0, by the first pass
    looked = _count_calls(monkeypatch, h.core, "_unmet_parent_slot")
    h.drain()
    assert [s.job.step for s in h.starts] == [f"s{n}" for n in range(50)]
    assert h.run().state is RunState.SUCCEEDED
    # each woken once, when its parent succeeded; without the parking, the
    # pass looked at every later step on each of some 100 batches
    assert looked[0] <= 50, looked[0]
    assert not h.core.parked_groups and not h.core.parked_on


def test_a_step_gathering_a_busy_step_looks_at_each_parent_slot_about_once(monkeypatch):
    """A step gathering the jobs of a step on another, full executor, while
    its own has room, waits on one parent slot at a time and starts its
    next look where the last one stopped: a few looks per parent, not one
    look at every parent on each batch (3.1 ms per event at 10,000 jobs,
    bench/core.py). A parent rerun after the step last looked at it is
    still waited for."""
    p = pipeline("p", Step("a", "true", jobs=300, executor="batch"), Step("b", "true", parents=("a",)))
    h = Harness(p, max_jobs=16)
    h.core.configure(h.pipelines, {"local": ExecutorConfig("local", "local", max_jobs=16),
                                   "batch": ExecutorConfig("batch", "local", max_jobs=2)})
    h.trigger("p")
    looked = _count_calls(monkeypatch, h.core, "_newest_in_slot")

    def run_parents(count: int) -> None:
        for _ in range(count):
            h.run_job(next(s.job.id for s in h.starts if h.db_jobs[s.job.id].state.active))

    run_parents(150)
    assert list(h.core.parked_groups) == [(1, "b", "local")]
    # the operator reruns a parent that succeeded long before
    h.ask(Command("rerun", h.job("a", 3).id))
    h.settle()
    rerun = h.job("a", 3)
    assert rerun.state is JobState.WAITING and rerun.predecessor is not None
    run_parents(150)
    assert not any(s.job.step == "b" for s in h.starts)  # the rerun has not run yet
    assert h.core.parked_group_slot == {(1, "b", "local"): (1, "a", 3)}
    run_parents(1)
    assert h.starts[-1].job.step == "b"
    h.drain()
    assert h.run().state is RunState.SUCCEEDED
    # some 900 (two a wake, and once round all 300 at the end); a look at
    # every parent on each batch made it some 45,000
    assert looked[0] <= 4 * 300, looked[0]


def test_conflicts_hold_both_ways():
    # only "a" declares the conflict; "b" must still wait for "a"
    h = Harness(pipeline("p", Step("a", "true", conflicts=("b",)), Step("b", "true")))
    h.trigger("p")
    assert [s.job.step for s in h.starts] == ["a"]
    h.run_job(h.starts[0].job.id)
    assert [s.job.step for s in h.starts] == ["a", "b"]
    h2 = Harness(pipeline("q", Step("a", "true"), Step("b", "true", conflicts=("a",))))
    h2.trigger("q")
    assert [s.job.step for s in h2.starts] == ["a"]


def test_retry_makes_a_linked_successor_after_backoff():
    step = Step("a", "false", retry=RetryPolicy(tries=3, interval=5.0, factor=2.0))
    h = Harness(pipeline("p", step, Step("b", "true", parents=("a",))))
    h.trigger("p")
    h.run_job(1, "failed", 1)
    first, retry = h.db_jobs[1], h.job("a")
    assert first.state is JobState.FAILED and first.successor == retry.id
    assert retry.predecessor == 1 and retry.failures == 1 and retry.state is JobState.WAITING
    assert retry.not_before == h.now + 5.0
    assert h.wake == h.now + 5.0
    assert h.started_ids() == [1]  # backoff not over
    h.now += 4.9
    h.feed()
    h.settle()
    assert h.started_ids() == [1]
    h.now = h.wake
    h.feed()
    h.settle()
    assert h.started_ids() == [1, retry.id]
    h.run_job(retry.id, "failed", 1)
    third = h.job("a")
    assert third.failures == 2 and third.not_before == h.now + 10.0  # 5 * 2**(2-1)
    h.now += 10
    h.feed()
    h.settle()
    h.run_job(third.id)  # the third try succeeds: b runs
    h.drain()
    assert h.run().state is RunState.SUCCEEDED
    assert h.db_jobs[1].state is JobState.FAILED  # history kept


def test_failed_for_good_skips_downstream_and_fails_the_run_when_idle():
    h = Harness(
        pipeline(
            "p",
            Step("a", "false"),
            Step("b", "true", parents=("a",), jobs=2),
            Step("c", "true", parents=("b",)),
            Step("slow", "sleep"),
        )
    )
    h.trigger("p")
    assert {s.job.step for s in h.starts} == {"a", "slow"}
    h.run_job(h.job("a").id, "failed", 2)
    assert [h.job("b", i).state for i in (0, 1)] == [JobState.SKIPPED] * 2
    assert h.job("c").state is JobState.SKIPPED
    assert "did not succeed" in h.job("c").reason
    assert h.run().state is RunState.RUNNING  # "slow" still runs
    h.run_job(h.job("slow").id)
    assert h.run().state is RunState.FAILED


def test_each_failure_skips_only_its_own_branch():
    h = Harness(
        pipeline(
            "p",
            Step("a", "true", jobs=2),
            Step("b", "true", parents=("a",), jobs=2, depends=Depends.EACH),
        )
    )
    h.trigger("p")
    h.run_job(h.job("a", 0).id, "failed", 1)
    assert h.job("b", 0).state is JobState.SKIPPED
    assert h.job("b", 1).state is JobState.WAITING
    h.drain()
    assert h.job("b", 1).state is JobState.SUCCEEDED
    assert h.run().state is RunState.FAILED


def test_a_run_is_never_made_twice():
    h = Harness(pipeline("p", Step("a", "true")))
    box = ReplyBox()
    h.trigger("p", T0, box)
    h.trigger("p", T0, box)  # still in memory: refused at once
    assert box.replies[1].error and "exists" in box.replies[1].error
    h.drain()
    assert h.run().state is RunState.SUCCEEDED
    h.trigger("p", T0, box)  # finished and forgotten: the database refuses it
    assert len(h.db_runs) == 1
    assert box.replies[2].error and box.replies[2].code == -32002


def test_unknown_pipeline():
    h = Harness(pipeline("p", Step("a", "true")))
    box = ReplyBox()
    h.trigger("nope", T0, box)
    assert box.replies[0].code == -32001 and h.db_runs == {}


def test_finished_runs_leave_memory():
    h = Harness(pipeline("p", Step("a", "true")))
    h.trigger("p")
    h.drain()
    assert h.core.runs == {} and h.core.jobs == {} and h.core.current == {}


def test_hold_and_release():
    h = Harness(pipeline("p", Step("a", "true"), Step("b", "true", parents=("a",))))
    h.trigger("p")
    box = ReplyBox()
    b = h.job("b").id
    h.ask(Command("hold", b), box)
    h.settle()
    assert box.replies[-1].result == {"job_id": b, "state": "held"}
    h.run_job(1)
    assert h.started_ids() == [1]  # b is held
    h.ask(Command("hold", 1), box)
    assert box.replies[-1].code == -32002  # a finished job cannot be held
    h.ask(Command("release", b), box)
    h.settle()
    assert h.started_ids() == [1, b]


def test_kill_running_job_is_not_retried_and_skips_downstream():
    step = Step("a", "sleep", retry=RetryPolicy(tries=5))
    h = Harness(pipeline("p", step, Step("b", "true", parents=("a",))))
    h.trigger("p")
    box = ReplyBox()
    h.ask(Command("kill", 1), box)
    assert h.kills == [] and box.replies == []  # not before the request is committed
    h.commit()
    assert h.kills == [1] and box.replies[0].result["state"] == "killing"
    assert h.db_jobs[1].kill_requested
    # the executor's report says the process died of SIGTERM: still "killed"
    h.feed(JobFinished(1, "failed", 143, "exit code 143", 1.0, 2.0))
    h.settle()
    assert h.db_jobs[1].state is JobState.KILLED and h.db_jobs[1].successor is None
    assert h.job("b").state is JobState.SKIPPED
    assert h.run().state is RunState.FAILED


def test_kill_waiting_job():
    h = Harness(pipeline("p", Step("a", "true"), Step("b", "true", parents=("a",))))
    h.trigger("p")
    h.ask(Command("kill", 2), ReplyBox())
    h.settle()
    assert h.db_jobs[2].state is JobState.KILLED and h.kills == []
    h.drain()
    assert h.run().state is RunState.FAILED


def test_rerun_of_a_finished_run_reopens_it_and_revives_skipped_jobs():
    h = Harness(pipeline("p", Step("a", "false"), Step("b", "true", parents=("a",))))
    h.trigger("p")
    h.run_job(1, "failed", 1)
    assert h.run().state is RunState.FAILED
    assert h.core.runs == {}
    # the API loads the finished run and passes it along
    box = ReplyBox()
    run = h.run()
    jobs = tuple(j for j in h.db_jobs.values() if j.run_id == run.id)
    h.ask(Command("rerun", 1, run=run, jobs=jobs), box)
    h.settle()
    fresh = h.job("a")
    assert box.replies == [Reply(result={"job_id": fresh.id})]
    assert fresh.predecessor == 1 and h.db_jobs[1].successor == fresh.id
    assert fresh.failures == 0
    assert h.run().state is RunState.RUNNING
    assert h.job("b").state is JobState.WAITING and h.job("b").predecessor == 2
    h.drain()
    assert h.run().state is RunState.SUCCEEDED


def test_a_child_released_while_a_rerun_of_its_parent_is_in_flight_waits_for_the_rerun():
    """The release of a held child commits before the rerun of its parent
    that the operator asked after it: the child waits for the rerun (the
    slot's newest job), not for the parent's first success."""
    h = Harness(pipeline("p", Step("a", "true"), Step("b", "true", parents=("a",))))
    h.trigger("p")
    b = h.job("b").id
    h.ask(Command("hold", b), ReplyBox())
    h.settle()
    h.run_job(1)
    run = h.run()
    jobs = tuple(j for j in h.db_jobs.values() if j.run_id == run.id)
    h.ask(Command("release", b), ReplyBox())
    h.ask(Command("rerun", 1, run=run, jobs=jobs), ReplyBox())
    h.settle()  # the release's commit first, then the rerun's
    rerun = h.job("a").id
    assert rerun != 1 and h.started_ids() == [1, rerun]
    assert h.db_jobs[b].state is JobState.WAITING
    h.drain()
    assert h.started_ids() == [1, rerun, b]
    assert h.run().state is RunState.SUCCEEDED


def test_rerun_refuses_a_job_that_has_not_ended():
    h = Harness(pipeline("p", Step("a", "true")))
    h.trigger("p")
    box = ReplyBox()
    h.ask(Command("rerun", 1), box)
    assert box.replies[0].code == -32002


def test_a_kill_while_the_submission_is_in_flight_is_honoured():
    """The kill arrives after the scheduler proposed "submitted" and before
    that commit came back: the job is never handed to the executor, and ends
    killed once the kill is committed."""
    h = Harness(pipeline("p", Step("a", "sleep 60", retry=RetryPolicy(tries=3))))
    h.ask(Trigger("p", T0, "manual"))
    h.commit()  # the run: its pass proposes a submitted, not yet committed
    assert [c.state for p in h.unsent for c in p.changes] == [JobState.SUBMITTED]
    box = ReplyBox()
    h.ask(Command("kill", 1), box)
    h.settle()  # "submitted" first, then the kill: never handed over
    assert h.started_ids() == [] and h.kills == []
    assert box.replies[0].result == {"job_id": 1, "state": "killing"}
    assert h.db_jobs[1].state is JobState.KILLED and h.db_jobs[1].successor is None
    assert h.db_jobs[1].reason == "killed by operator"
    assert h.run().state is RunState.FAILED


def test_a_kill_outlives_a_restart():
    """Committed but not yet carried out when the daemon died: the next
    daemon starts (re-attaches to) the job and kills it."""
    p = pipeline("p", Step("a", "sleep 60"))
    doomed = Job(1, 1, "p", "a", 0, 1, "local", state=JobState.SUBMITTED, kill_requested=True)
    core = Scheduler({"p": p}, {"local": ExecutorConfig("local", "local")}, next_run_id=2, next_job_id=2)
    effects = core.load([Run(1, "p", T0)], [doomed], now=5.0)
    assert [type(e).__name__ for e in effects if isinstance(e, (StartJob, KillJob))] == ["StartJob", "KillJob"]


def test_a_job_that_succeeded_before_the_kill_landed_is_a_success():
    h = Harness(pipeline("p", Step("a", "true")))
    h.trigger("p")
    h.ask(Command("kill", 1), ReplyBox())
    h.settle()
    # the executor had moved the outputs before the KillJob reached it
    h.feed(JobFinished(1, "succeeded", 0, "", 1.0, 2.0))
    h.settle()
    assert h.db_jobs[1].state is JobState.SUCCEEDED and h.run().state is RunState.SUCCEEDED


def test_a_rerun_that_would_wait_for_ever_is_refused_naming_what_to_rerun():
    h = Harness(pipeline("slow", Step("a", "sleep 60"), Step("b", "true", parents=("a",))))
    h.trigger("slow")
    h.ask(Command("kill", 1), ReplyBox())
    h.settle()
    h.feed(JobFinished(1, "killed", None, "killed by operator", None, 2.0))
    h.settle()
    assert h.job("b").state is JobState.SKIPPED and h.run().state is RunState.FAILED
    run = h.run()
    jobs = tuple(j for j in h.db_jobs.values() if j.run_id == run.id)
    box = ReplyBox()
    h.ask(Command("rerun", h.job("b").id, run=run, jobs=jobs), box)
    assert box.replies[0].code == -32002
    assert box.replies[0].error == (
        "job 2 (b[0]) depends on job 1 (a[0]), which is killed: rerun job 1, which reruns this one with it"
    )
    assert h.unsent == [] and h.core.runs == {}  # the ended run left memory again
    # what the message says works: both run again, and the run ends
    h.ask(Command("rerun", 1, run=run, jobs=jobs), box)
    h.settle()
    h.drain()
    assert h.run().state is RunState.SUCCEEDED


def test_a_failed_start_waits_and_tries_again_without_using_a_try():
    """The executor could not start the job (its own trouble, a full disk):
    back to waiting with the reason, a backoff doubling per failed start,
    its one try unused."""
    h = Harness(pipeline("p", Step("a", "true")))
    h.trigger("p")
    assert h.started_ids() == [1]
    h.feed(JobNotStarted(1, "cannot prepare /state/jobs/1: [Errno 28] No space left on device"))
    h.settle()
    job = h.db_jobs[1]
    assert job.state is JobState.WAITING and job.failures == 0 and job.successor is None
    assert job.not_before == h.now + 1.0
    assert h.core.why_waiting(1, h.now) == (
        "not started: cannot prepare /state/jobs/1: [Errno 28] No space left on device;"
        " trying again at 1970-01-01T00:16:41.000Z"
    )
    assert h.wake == h.now + 1.0
    h.now = h.wake
    h.feed()
    h.settle()
    assert h.started_ids() == [1, 1]  # handed over again: the executor launches it once
    h.feed(JobNotStarted(1, "still full"))
    h.settle()
    assert h.db_jobs[1].not_before == h.now + 2.0  # doubled
    h.now += 2.0
    h.drain()
    assert h.db_jobs[1].state is JobState.SUCCEEDED and h.run().state is RunState.SUCCEEDED


def test_load_reattaches_active_jobs_and_closes_finished_runs():
    p = pipeline("p", Step("a", "true"), Step("b", "true", parents=("a",)))
    run = Run(1, "p", T0)
    running = Job(1, 1, "p", "a", 0, 1, "local", state=JobState.RUNNING, batch_id="42")
    waiting = Job(2, 1, "p", "b", 0, 1, "local")
    done_run = Run(2, "p", T0 + timedelta(hours=1))
    done_jobs = [
        Job(3, 2, "p", "a", 0, 1, "local", state=JobState.SUCCEEDED),
        Job(4, 2, "p", "b", 0, 1, "local", state=JobState.SUCCEEDED),
    ]
    core = Scheduler({"p": p}, {"local": ExecutorConfig("local", "local")}, next_run_id=3, next_job_id=5)
    effects = core.load([run, done_run], [running, waiting, *done_jobs], now=5.0)
    [persist] = [e for e in effects if isinstance(e, Persist)]
    assert persist.changes == (attrs.evolve(done_run, state=RunState.SUCCEEDED, ended_at=5.0),)
    assert [e.job for e in effects if isinstance(e, StartJob)] == [running]


@settings(max_examples=300, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from(["succeeded", "failed", "killed"]), min_size=1, max_size=60),
    jobs=st.integers(1, 4),
    concurrency=st.integers(1, 3),
    max_jobs=st.integers(1, 5),
    depends=st.sampled_from([Depends.ALL, Depends.EACH]),
    tries=st.integers(1, 3),
    runs=st.integers(1, 3),
)
def test_any_outcomes_keep_the_invariants(outcomes, jobs, concurrency, max_jobs, depends, tries, runs):
    """Whatever the jobs do: limits hold at every moment, no job starts twice,
    every run ends, and a run succeeds exactly when every slot's newest job
    succeeded."""
    retry = RetryPolicy(tries=tries, interval=1.0, factor=2.0)
    p = pipeline(
        "p",
        Step("a", "x", jobs=jobs, retry=retry),
        Step("b", "x", parents=("a",), jobs=jobs, depends=depends, concurrency=concurrency, retry=retry),
        Step("c", "x", parents=("b",), conflicts=("a",)),
    )
    h = Harness(p, max_jobs=max_jobs)
    for n in range(runs):
        h.trigger("p", T0 + timedelta(hours=n))
    answers = iter(outcomes)
    seen: set[int] = set()

    def outcome(start: StartJob):
        assert start.job.id not in seen
        seen.add(start.job.id)
        assert h.active_count() <= max_jobs
        assert h.active_count("b") <= concurrency
        assert not (h.active_count("a") and h.active_count("c"))
        state = next(answers, "succeeded")
        return (state, 0 if state == "succeeded" else 1)

    h.drain(outcome)
    assert len(h.db_runs) == runs
    for run in h.db_runs.values():
        current = {}
        for job in h.db_jobs.values():
            if job.run_id == run.id:
                current[job.slot] = max(current.get(job.slot, job), job, key=lambda j: j.id)
        assert all(j.state.finished for j in current.values())
        ok = all(j.state is JobState.SUCCEEDED for j in current.values())
        assert run.state is (RunState.SUCCEEDED if ok else RunState.FAILED)
        for job in h.db_jobs.values():
            if job.successor is not None:
                assert h.db_jobs[job.successor].predecessor == job.id
    assert h.core.runs == {} and h.core.pending_jobs == {}
