"""Operators' commands in the sans-I/O scheduler core (muppet/scheduler/
operators.py): plain function calls, no Trio, no database.

On one job (hold, release, kill, rerun, rerun downstream, set its outcome),
on a whole run (hold, release, kill, rerun what ended badly, bypass a step,
an ended run brought back for a rerun or a bypass), on a pipeline (pause,
resume and its catch-up policy) and on the daemon (drain, undrain): each
one's effect and each refusal, with what the refusal tells the operator to
do instead.

The promises common to every command, checked by ``act`` and ``refuse`` on
each call: a command that changes something adds exactly one OperatorEvent
(who, why, what it touched) to the Persist that carries the change, and is
answered only once that Persist is committed (its Ack); a refused command is
answered at once, writes nothing and adds no event. Standing orders (a
pause, a drain) are Control changes in the Persist, and a Scheduler loaded
with them after a restart keeps obeying them.

``Ops`` is test_scheduler_core's Harness (the database held back until the
test commits) plus the database's controls and a restart.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest
from test_scheduler_core import T0, Harness, ReplyBox, pipeline

from muppet.messages import (
    CONFLICT,
    NOT_FOUND,
    Ack,
    Backfill,
    Command,
    Control,
    DaemonCommand,
    JobFinished,
    NewRun,
    Operator,
    OperatorEvent,
    Persist,
    PipelineCommand,
    Reply,
    RunCommand,
    Trigger,
)
from muppet.model import Job, JobState, Pipeline, RetryPolicy, RunState, Step
from muppet.scheduler.core import Scheduler

OPS = Operator("ops", "maintenance")
HOUR = timedelta(hours=1)


class Ops(Harness):
    """The Harness, keeping the standing orders the database holds, and
    able to restart the daemon on what is committed."""

    def __init__(self, *pipelines: Pipeline, max_jobs: int = 100) -> None:
        super().__init__(*pipelines, max_jobs=max_jobs)
        self.controls: dict[str, Any] = {}

    def commit(self) -> None:
        for persist in self.unsent:
            for change in persist.changes:
                if isinstance(change, Control):
                    if change.value is None:
                        self.controls.pop(change.key, None)
                    else:  # stored as JSON, read back as JSON
                        self.controls[change.key] = json.loads(json.dumps(change.value))
        super().commit()

    def restart(self) -> None:
        """A new daemon loads the unfinished runs, their jobs and the
        standing orders; whatever was not committed is lost."""
        self.unsent = []
        self.core = Scheduler(
            self.pipelines, self.core.executors,
            next_run_id=max(self.db_runs, default=0) + 1, next_job_id=max(self.db_jobs, default=0) + 1,
        )
        runs = [r for r in self.db_runs.values() if not r.state.finished]
        jobs = [j for j in self.db_jobs.values() if j.run_id in {r.id for r in runs}]
        self._take(self.core.load(runs, jobs, self.now, controls=self.controls))
        self.settle()

    def ended(self, run_id: int = 1) -> dict[str, Any]:
        """What the API passes along with a command on an ended run."""
        assert self.run(run_id).state.finished and run_id not in self.core.runs
        return {"run": self.run(run_id), "jobs": tuple(j for j in self.db_jobs.values() if j.run_id == run_id)}

    def cron(self, name: str, when: datetime) -> None:
        self.feed(Trigger(name, when, "cron"))
        self.settle()


def act(h: Ops, event: Any) -> tuple[Any, OperatorEvent]:
    """Carry out ``event`` by OPS: one Persist holding exactly one operator
    event and the request's Ack, answered only once it is committed.
    Returns the result and the event."""
    box = ReplyBox()
    h.ask(attrs.evolve(event, by=OPS), box)
    assert box.replies == []  # not before the commit
    [request] = [number for number, waiting in h.waiting.items() if waiting is box]
    [persist] = h.unsent
    assert isinstance(persist, Persist)
    events = [c for c in persist.changes if isinstance(c, OperatorEvent)]
    assert [c for c in persist.changes if isinstance(c, Ack)] == [Ack(request)]
    assert len(events) == 1 and events[0].by == OPS and events[0].action == event.action
    h.commit()  # that transaction alone
    [reply] = box.replies
    assert reply.error is None, reply.error
    h.settle()
    return reply.result, events[0]


def refuse(h: Ops, event: Any, code: int = CONFLICT) -> str:
    """``event`` is refused at once with ``code``, writing nothing; returns
    the message."""
    box = ReplyBox()
    h.ask(attrs.evolve(event, by=OPS), box)
    assert h.unsent == []  # no change, no operator event
    [reply] = box.replies
    assert reply.code == code and reply.error, reply
    return reply.error


def chain(name: str = "p", **step: Any) -> Pipeline:
    """a -> b -> c."""
    return pipeline(
        name, Step("a", "x", **step), Step("b", "x", parents=("a",)), Step("c", "x", parents=("b",)),
    )


def started_steps(h: Ops) -> list[str]:
    return [s.job.step for s in h.starts]


# --- one job: hold, release, kill ----------------------------------------------------


def test_hold_keeps_a_waiting_job_from_starting_until_released():
    h = Ops(chain())
    h.trigger("p")
    result, event = act(h, Command("hold", 2))
    assert result == {"job_id": 2, "state": "held"} and h.db_jobs[2].state is JobState.HELD
    assert event.target == {"job_id": 2, "run_id": 1}
    h.run_job(1)
    assert h.started_ids() == [1]
    result, _ = act(h, Command("release", 2))
    assert result == {"job_id": 2, "state": "waiting"}
    assert h.started_ids() == [1, 2]


def test_hold_and_release_refuse_a_job_in_another_state():
    h = Ops(chain())
    h.trigger("p")
    assert refuse(h, Command("hold", 1)) == "job 1 is submitted; only a waiting job can be held"
    assert refuse(h, Command("release", 2)) == "job 2 is waiting, not held"
    assert refuse(h, Command("hold", 99), NOT_FOUND) == "job 99 is not in an unfinished run"


def test_kill_of_a_held_job_ends_it_at_once_and_skips_its_downstream():
    h = Ops(chain())
    h.trigger("p")
    act(h, Command("hold", 2))
    result, event = act(h, Command("kill", 2))
    assert result == {"job_id": 2, "state": "killed"} and event.target == {"job_id": 2, "run_id": 1}
    assert h.db_jobs[2].state is JobState.KILLED
    assert h.db_jobs[2].reason == "killed by operator ops: maintenance"
    assert h.job("c").state is JobState.SKIPPED and h.kills == []
    h.run_job(1)
    assert h.run().state is RunState.FAILED


def test_kill_of_a_running_job_is_killing_only_once_the_request_is_committed():
    h = Ops(chain(retry=RetryPolicy(tries=3)))
    h.trigger("p")
    h.ask(Command("kill", 1, by=OPS))
    [persist] = h.unsent
    [job] = [c for c in persist.changes if isinstance(c, Job)]
    assert job.state is JobState.SUBMITTED and job.kill_requested  # the kill, as it will be persisted
    assert h.kills == []  # not before the commit
    h.settle()
    assert h.kills == [1] and h.db_jobs[1].kill_requested
    h.feed(JobFinished(1, "failed", 143, "exit code 143", 1.0, 2.0))
    h.settle()
    assert h.db_jobs[1].state is JobState.KILLED and h.db_jobs[1].successor is None  # no retry


def test_kill_of_a_running_job_answers_killing():
    h = Ops(chain())
    h.trigger("p")
    result, _ = act(h, Command("kill", 1))
    assert result == {"job_id": 1, "state": "killing"} and h.kills == [1]


def test_a_second_kill_of_a_killing_job_is_answered_at_once_and_writes_nothing():
    h = Ops(chain())
    h.trigger("p")
    act(h, Command("kill", 1))
    box = ReplyBox()
    h.ask(Command("kill", 1, by=OPS), box)
    assert box.replies == [Reply(result={"job_id": 1, "state": "killing"})] and h.unsent == []
    assert h.kills == [1]


def test_kill_refuses_an_ended_job():
    h = Ops(chain(), pipeline("q", Step("slow", "x")))
    h.trigger("p")
    h.trigger("q")
    h.run_job(1)
    assert refuse(h, Command("kill", 1)) == "job 1 has already ended (succeeded)"


# --- one job: rerun --------------------------------------------------------------------


def test_rerun_refuses_a_job_that_has_not_ended_or_is_not_the_newest_of_its_slot():
    h = Ops(chain(retry=RetryPolicy(tries=2, interval=60.0)))
    h.trigger("p")
    h.run_job(1, "failed", 1)
    retry = h.job("a").id
    assert refuse(h, Command("rerun", 1)) == (
        "job 1 is failed; only the newest job of a slot that has ended can be rerun"
    )
    assert refuse(h, Command("rerun", retry)) == (
        f"job {retry} is waiting; only the newest job of a slot that has ended can be rerun"
    )


def test_rerun_refuses_a_job_whose_parent_failed_naming_the_parent():
    h = Ops(chain())
    h.trigger("p")
    h.run_job(1, "failed", 1)
    assert h.job("b").state is JobState.SKIPPED
    assert refuse(h, Command("rerun", 2, **h.ended())) == (
        "job 2 (b[0]) depends on job 1 (a[0]), which is failed: rerun job 1, which reruns this one with it"
    )
    assert h.core.runs == {}  # the ended run left memory again


def test_rerun_of_a_succeeded_job_leaves_its_succeeded_children_alone():
    h = Ops(chain())
    h.trigger("p")
    h.drain()
    result, event = act(h, Command("rerun", 1, **h.ended()))
    assert result == {"job_id": 4}
    assert event.target == {"job_id": 1, "run_id": 1, "new_job_id": 4, "downstream": False}
    h.drain()
    assert sorted(h.db_jobs) == [1, 2, 3, 4] and h.run().state is RunState.SUCCEEDED


def test_rerun_downstream_reruns_every_later_job_children_after_parents():
    h = Ops(chain())
    h.trigger("p")
    h.drain()
    _, event = act(h, Command("rerun", 1, downstream=True, **h.ended()))
    assert event.target["downstream"] is True
    assert [h.job(s).predecessor for s in "abc"] == [1, 2, 3]
    assert h.run().state is RunState.RUNNING
    assert started_steps(h) == ["a", "b", "c", "a"]  # b and c wait for their parents again
    h.run_job(h.job("a").id)
    assert started_steps(h)[-1] == "b" and len(h.starts) == 5
    h.drain()
    assert started_steps(h) == ["a", "b", "c", "a", "b", "c"] and h.run().state is RunState.SUCCEEDED


# --- one job: set its outcome ------------------------------------------------------------


def test_set_a_waiting_job_succeeded_lets_its_downstream_run():
    h = Ops(chain())
    h.trigger("p")  # a runs, b waits for it
    result, event = act(h, Command("set", 2, outcome="succeeded"))
    assert result == {"job_id": 2, "state": "succeeded"}
    assert event.target == {"job_id": 2, "run_id": 1, "outcome": "succeeded"}
    b = h.db_jobs[2]
    assert b.state is JobState.SUCCEEDED and b.reason == "set succeeded by operator ops: maintenance"
    assert started_steps(h) == ["a", "c"]  # c's one parent has succeeded


def test_set_a_held_job_failed_skips_its_downstream():
    h = Ops(chain())
    h.trigger("p")
    act(h, Command("hold", 2))
    result, _ = act(h, Command("set", 2, outcome="failed"))
    assert result == {"job_id": 2, "state": "failed"}
    assert h.db_jobs[2].state is JobState.FAILED and h.db_jobs[2].exit_code is None
    assert h.job("c").state is JobState.SKIPPED
    h.run_job(1)
    assert h.run().state is RunState.FAILED


def _end_b(h: Ops, how: str) -> None:
    """b of chain() ends failed, killed or skipped; so does the run."""
    h.trigger("p")
    if how == "skipped":
        h.run_job(1, "failed", 1)
    else:
        h.run_job(1)
        if how == "killed":
            act(h, Command("kill", 2))
            h.feed(JobFinished(2, "killed", None, "killed by operator", 2.0, 3.0))
            h.settle()
        else:
            h.run_job(2, "failed", 1)
    assert h.db_jobs[2].state.value == how and h.run().state is RunState.FAILED


@pytest.mark.parametrize("how", ["failed", "killed", "skipped"])
def test_set_an_unsuccessful_job_succeeded_makes_a_successor_and_runs_what_was_skipped(how):
    h = Ops(chain())
    _end_b(h, how)
    old = h.db_jobs[2]
    result, event = act(h, Command("set", 2, outcome="succeeded", **h.ended()))
    fresh = h.job("b")
    assert result == {"job_id": fresh.id, "state": "succeeded"} and event.target["new_job_id"] == fresh.id
    assert fresh.state is JobState.SUCCEEDED and fresh.predecessor == 2 and fresh.ended_at == h.now
    assert fresh.reason == "set succeeded by operator ops: maintenance"
    assert h.db_jobs[2] == attrs.evolve(old, successor=fresh.id)  # an ended job keeps its end
    assert h.run().state is RunState.RUNNING  # reopened
    assert h.job("c").predecessor == 3 and started_steps(h)[-1] == "c"
    h.drain()
    assert h.job("c").state is JobState.SUCCEEDED
    assert h.run().state is (RunState.FAILED if how == "skipped" else RunState.SUCCEEDED)  # a still failed


def test_set_refuses_a_running_job_saying_to_kill_it_first():
    h = Ops(chain())
    h.trigger("p")
    assert refuse(h, Command("set", 1, outcome="succeeded")) == (
        "job 1 is submitted: kill it first (muppet kill 1), then set its outcome"
    )


def test_set_refuses_a_succeeded_job_and_failed_for_an_ended_one():
    h = Ops(chain(), pipeline("q", Step("slow", "x")))
    h.trigger("p")
    h.trigger("q")
    h.run_job(1)
    assert "only a job that ended without success can be set succeeded" in refuse(
        h, Command("set", 1, outcome="succeeded")
    )
    h.run_job(2, "failed", 1)  # p has ended: the API passes the run along
    assert "only a waiting or held one failed" in refuse(h, Command("set", 2, outcome="failed", **h.ended()))
    assert refuse(h, Command("set", 2, outcome="done", **h.ended()), NOT_FOUND) == "unknown outcome 'done'"
    assert h.core.runs.keys() == {2}  # the ended run left memory again


def test_set_refuses_a_job_that_is_not_the_newest_of_its_slot():
    h = Ops(chain(retry=RetryPolicy(tries=2)))
    h.trigger("p")
    h.run_job(1, "failed", 1)
    retry = h.job("a").id
    assert refuse(h, Command("set", 1, outcome="succeeded")) == (
        f"job 1 is not the newest of its slot: set job {retry} instead"
    )


# --- a whole run -------------------------------------------------------------------------


def two_wide() -> Pipeline:
    """a -> b[0], b[1]."""
    return pipeline("p", Step("a", "x"), Step("b", "x", parents=("a",), jobs=2))


def test_run_hold_and_release_every_waiting_job():
    h = Ops(two_wide())
    h.trigger("p")
    result, event = act(h, RunCommand("hold", 1))
    assert result == {"run_id": 1, "jobs": 2} and event.target == {"run_id": 1, "job_ids": [2, 3]}
    h.run_job(1)
    assert h.started_ids() == [1]
    assert refuse(h, RunCommand("hold", 1)) == "run 1 has no waiting job to hold"
    act(h, RunCommand("release", 1))
    assert h.started_ids() == [1, 2, 3]
    assert refuse(h, RunCommand("release", 1)) == "run 1 has no held job to release"


def test_run_kill_kills_waiting_jobs_at_once_and_asks_running_ones():
    h = Ops(two_wide())
    h.trigger("p")
    result, event = act(h, RunCommand("kill", 1))
    assert result == {"run_id": 1, "jobs": 3} and event.target == {"run_id": 1, "job_ids": [1, 2, 3]}
    assert [h.db_jobs[j].state for j in (2, 3)] == [JobState.KILLED] * 2
    assert h.db_jobs[1].state is JobState.SUBMITTED and h.db_jobs[1].kill_requested and h.kills == [1]
    assert refuse(h, RunCommand("kill", 1)) == "run 1's jobs are being killed already"
    h.feed(JobFinished(1, "killed", None, "killed by operator", 1.0, 2.0))
    h.settle()
    assert h.run().state is RunState.FAILED
    assert refuse(h, RunCommand("kill", 1, **h.ended())).startswith("run 1 has ended (failed): ")
    assert refuse(h, RunCommand("kill", 1), NOT_FOUND) == "run 1 is not an unfinished run"
    assert h.core.runs == {}


def test_run_rerun_reruns_every_slot_that_ended_badly_parents_first():
    h = Ops(pipeline("p", Step("a", "x", jobs=2), Step("b", "x", parents=("a",)), Step("solo", "x")))
    h.trigger("p")
    h.drain(lambda start: ("failed", 1) if start.job.id == 1 else ("succeeded", 0))
    assert h.job("b").state is JobState.SKIPPED and h.run().state is RunState.FAILED
    result, event = act(h, RunCommand("rerun", 1, **h.ended()))
    assert result == {"run_id": 1, "jobs": 2}
    assert event.target == {"run_id": 1, "job_ids": [1, 3], "new_job_ids": [5, 6]}
    assert h.run().state is RunState.RUNNING
    assert h.started_ids()[-1] == 5  # a[0] again; b waits for it
    h.drain()
    assert h.started_ids()[-2:] == [5, 6] and h.run().state is RunState.SUCCEEDED


def test_run_rerun_refuses_a_run_with_nothing_ended_badly_and_it_leaves_memory_again():
    h = Ops(chain())
    h.trigger("p")
    h.drain()
    assert refuse(h, RunCommand("rerun", 1, **h.ended())) == (
        "run 1 has no failed, killed, expired or skipped slot that can run again now"
    )
    assert h.core.runs == {} and h.core.jobs == {}


def test_bypass_ends_a_steps_jobs_and_its_children_run_as_if_it_succeeded():
    h = Ops(chain())
    h.trigger("p")
    result, event = act(h, RunCommand("bypass", 1, step="b"))
    assert result == {"run_id": 1, "jobs": 1} and event.target == {"run_id": 1, "step": "b", "job_ids": [2]}
    assert h.db_jobs[2].state is JobState.BYPASSED
    assert h.db_jobs[2].reason == "bypassed by operator ops: maintenance"
    h.drain()
    assert started_steps(h) == ["a", "c"] and h.run().state is RunState.SUCCEEDED


def test_bypass_refusals_say_why():
    h = Ops(chain())
    h.trigger("p")
    assert refuse(h, RunCommand("bypass", 1, step="a")) == (
        "run 1: step a has jobs running (1): kill them first, then bypass"
    )
    assert refuse(h, RunCommand("bypass", 1, step="z"), NOT_FOUND) == "run 1: p has no step 'z'"
    act(h, Command("set", 2, outcome="succeeded"))
    assert refuse(h, RunCommand("bypass", 1, step="b")) == (
        "run 1: step b has ended; only a step with jobs not yet started can be bypassed"
    )


def test_bypass_of_an_ended_run_is_refused_and_it_leaves_memory_again():
    h = Ops(chain())
    h.trigger("p")
    h.run_job(1, "failed", 1)
    message = refuse(h, RunCommand("bypass", 1, step="b", **h.ended()), CONFLICT)
    assert message == ("run 1 has ended (failed): no job of it is left to bypass; "
                       "muppet rerun 1 --run --failed runs its failed slots again")
    assert h.core.runs == {} and h.core.jobs == {}


# --- a pipeline: pause, resume ---------------------------------------------------------------


def test_pause_starts_no_new_job_of_that_pipeline_and_others_go_on():
    h = Ops(chain(), pipeline("q", Step("x", "x")))
    h.trigger("p")
    result, event = act(h, PipelineCommand("pause", "p"))
    assert result == {"pipeline": "p"} and event.target == {"pipeline": "p"}
    h.trigger("q")
    h.run_job(1)  # a running job finishes normally
    assert h.db_jobs[1].state is JobState.SUCCEEDED
    assert started_steps(h) == ["a", "x"]  # not b
    act(h, PipelineCommand("resume", "p"))
    assert started_steps(h) == ["a", "x", "b"]


def test_a_cron_run_made_while_paused_is_queued():
    h = Ops(chain())
    act(h, PipelineCommand("pause", "p"))
    h.cron("p", T0)
    h.trigger("p", T0 + HOUR)
    assert h.run(1).state is RunState.QUEUED and h.run(2).state is RunState.RUNNING
    assert h.starts == []


@pytest.mark.parametrize(
    ("catchup", "limit", "expired"),
    [("all", 2, [1]), ("all", 48, []), ("latest", 48, [1, 2]), ("none", 48, [1, 2, 3])],
)
def test_resume_runs_the_cron_runs_made_while_paused_as_the_catchup_policy_says(catchup, limit, expired):
    h = Ops(attrs.evolve(pipeline("p", Step("a", "x")), catchup=catchup, catchup_limit=limit))
    act(h, PipelineCommand("pause", "p"))
    for hour in range(3):
        h.cron("p", T0 + hour * HOUR)
    _, event = act(h, PipelineCommand("resume", "p"))
    assert event.target == {"pipeline": "p", "expired_run_ids": expired}
    h.drain()
    ran = sorted({s.job.run_id for s in h.starts})
    assert ran == [r for r in (1, 2, 3) if r not in expired]
    for run_id in expired:
        assert h.run(run_id).state is RunState.EXPIRED
        assert h.job("a", run_id=run_id).state is JobState.EXPIRED
        assert "catchup" in h.job("a", run_id=run_id).reason
    assert all(h.run(r).state is RunState.SUCCEEDED for r in ran)


def test_resume_under_a_runahead_runs_the_kept_run_and_never_the_expired_ones():
    h = Ops(attrs.evolve(pipeline("p", Step("a", "x")), runahead=1))  # catchup "latest"
    act(h, PipelineCommand("pause", "p"))
    for hour in range(3):
        h.cron("p", T0 + hour * HOUR)
    act(h, PipelineCommand("resume", "p"))
    h.drain()
    assert [s.job.run_id for s in h.starts] == [3]
    assert [h.run(r).state for r in (1, 2, 3)] == [RunState.EXPIRED, RunState.EXPIRED, RunState.SUCCEEDED]


def test_a_run_expired_on_resume_can_be_rerun():
    h = Ops(attrs.evolve(pipeline("p", Step("a", "x")), catchup="none"))
    act(h, PipelineCommand("pause", "p"))
    h.cron("p", T0)
    act(h, PipelineCommand("resume", "p"))
    result, _ = act(h, RunCommand("rerun", 1, **h.ended()))
    assert result == {"run_id": 1, "jobs": 1}
    h.drain()
    assert h.started_ids() == [2] and h.run().state is RunState.SUCCEEDED


def test_resume_starts_the_queued_cron_runs_while_another_run_is_unfinished():
    # no runahead: a run made queued by the pause need not wait for another
    h = Ops(attrs.evolve(pipeline("p", Step("a", "x")), catchup="all"))
    act(h, PipelineCommand("pause", "p"))
    h.trigger("p", T0)  # manual: running, its job kept back
    h.cron("p", T0 + HOUR)
    act(h, PipelineCommand("resume", "p"))
    assert h.run(2).state is RunState.RUNNING
    assert sorted(h.started_ids()) == [1, 2]


def test_pause_and_resume_refusals():
    h = Ops(chain())
    assert refuse(h, PipelineCommand("resume", "p")) == "pipeline p is not paused"
    act(h, PipelineCommand("pause", "p"))
    assert refuse(h, PipelineCommand("pause", "p")) == (
        "pipeline p is paused already (by ops since 1970-01-01T00:16:40.000Z)"
    )
    assert refuse(h, PipelineCommand("pause", "nope"), NOT_FOUND) == "unknown pipeline 'nope'"
    assert refuse(h, PipelineCommand("resume", "nope"), NOT_FOUND) == "unknown pipeline 'nope'"


# --- the daemon: drain, undrain ----------------------------------------------------------------


def test_drain_starts_no_job_of_any_pipeline_and_running_ones_finish():
    h = Ops(chain(), pipeline("q", Step("x", "x")))
    h.trigger("p")
    result, event = act(h, DaemonCommand("drain"))
    assert result == {"draining": True} and event.target == {}
    h.trigger("q")
    h.run_job(1)
    assert h.db_jobs[1].state is JobState.SUCCEEDED and started_steps(h) == ["a"]
    result, _ = act(h, DaemonCommand("undrain"))
    assert result == {"draining": False}
    assert sorted(started_steps(h)) == ["a", "b", "x"]


def test_drain_and_undrain_refusals():
    h = Ops(chain())
    assert refuse(h, DaemonCommand("undrain")) == "the daemon is not draining"
    act(h, DaemonCommand("drain"))
    assert refuse(h, DaemonCommand("drain")) == (
        "the daemon is draining already (by ops since 1970-01-01T00:16:40.000Z)"
    )


# --- who did it: triggers and backfills -------------------------------------------------------


def test_a_trigger_by_an_operator_names_them_on_its_new_run():
    h = Ops(chain())
    h.feed(Trigger("p", T0, "manual", by=OPS))
    h.feed(Trigger("p", T0 + HOUR, "cron"))
    [first], [second] = (p.changes for p in h.unsent)
    assert isinstance(first, NewRun) and isinstance(second, NewRun)
    assert first.by == OPS and second.by is None


def test_a_backfill_by_an_operator_adds_one_operator_event():
    h = Ops(chain())
    h.trigger("p", T0 + HOUR)
    box = ReplyBox()
    h.ask(Backfill("p", (T0, T0 + HOUR, T0 + 2 * HOUR), by=OPS), box)
    [persist] = h.unsent
    events = [c for c in persist.changes if isinstance(c, OperatorEvent)]
    assert len([c for c in persist.changes if isinstance(c, NewRun)]) == 2
    assert events == [OperatorEvent("backfill", OPS, {
        "pipeline": "p", "from": "2026-11-28T06:00:00Z", "to": "2026-11-28T08:00:00Z", "runs": 2,
    })]
    h.settle()
    assert box.replies == [Reply(result={"run_ids": [2, 3], "skipped": ["2026-11-28T07:00:00Z"]})]


def test_a_backfill_of_no_time_is_answered_and_writes_nothing():
    # a range with no cron firing in it: the API passes no reference time
    h = Ops(chain())
    box = ReplyBox()
    h.ask(Backfill("p", (), by=OPS), box)
    assert box.replies == [Reply(result={"run_ids": [], "skipped": []})] and h.unsent == []


# --- standing orders across a restart ------------------------------------------------------------


def test_a_pause_is_a_control_in_the_persist_and_outlives_a_restart():
    h = Ops(chain())
    h.trigger("p")
    h.ask(PipelineCommand("pause", "p", by=OPS))
    [control] = [c for c in h.unsent[0].changes if isinstance(c, Control)]
    assert control.key == "paused:p" and control.value["by"] == "ops" and control.value["reason"] == "maintenance"
    h.settle()
    h.run_job(1)
    h.restart()
    assert h.core.controls == h.controls
    h.trigger("p", T0 + HOUR)
    assert started_steps(h) == ["a"]
    act(h, PipelineCommand("resume", "p"))
    assert h.controls == {} and sorted(started_steps(h)) == ["a", "a", "b"]


def test_a_drain_outlives_a_restart():
    h = Ops(chain())
    act(h, DaemonCommand("drain"))
    assert list(h.controls) == ["draining"]
    h.restart()
    h.trigger("p")
    assert h.starts == []
    act(h, DaemonCommand("undrain"))
    assert h.controls == {} and started_steps(h) == ["a"]


def test_resume_after_a_restart_still_applies_the_catchup_policy():
    h = Ops(pipeline("p", Step("a", "x")))  # catchup "latest"
    act(h, PipelineCommand("pause", "p"))
    h.cron("p", T0)
    h.cron("p", T0 + HOUR)
    h.restart()
    _, event = act(h, PipelineCommand("resume", "p"))
    assert event.target["expired_run_ids"] == [1]
    h.drain()
    assert [s.job.run_id for s in h.starts] == [2]
    assert (h.run(1).state, h.run(2).state) == (RunState.EXPIRED, RunState.SUCCEEDED)
