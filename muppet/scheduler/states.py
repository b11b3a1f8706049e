"""The states of jobs and runs, and the one table of moves between them.

Like h11's ``_state.py``: a small explicit table of legal transitions, and one
function per kind of object through which every change of a job or run goes.
The scheduler core never builds a changed Job or Run itself; it asks
``move_job`` / ``move_run``, which refuse a move the table does not hold with
``IllegalTransition``. A change that keeps the state (a job's successor link,
its batch id on re-attach) goes through the same function with the same state.

The table, each state's meaning and the reasons the scheduler writes are in
docs/states.md; a test checks that page against this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..model import Job, JobState, Run, RunState


class IllegalTransition(Exception):
    """A move the table does not allow: a bug in the caller's rules."""


_J = JobState
#: for each job state, the states it may move to
JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # waiting: the scheduler submits it, an operator holds or kills it, or a
    # parent that failed for good leaves it no way to run
    # -> expired: not started by its step's expire_after, or downstream of one;
    # -> succeeded, failed: an operator set its outcome; -> bypassed: an
    # operator bypassed its step
    _J.WAITING: frozenset({_J.SUBMITTED, _J.HELD, _J.KILLED, _J.SKIPPED, _J.EXPIRED,
                           _J.SUCCEEDED, _J.FAILED, _J.BYPASSED}),
    _J.HELD: frozenset({_J.WAITING, _J.KILLED, _J.SKIPPED, _J.EXPIRED, _J.SUCCEEDED, _J.FAILED, _J.BYPASSED}),
    # submitted -> succeeded/failed without running: the executor may report
    # the end before it saw the start (a short job, a re-attach after a crash);
    # submitted -> waiting: the executor could not start it for its own
    # trouble (disk full, batch system away), to be tried again; -> skipped:
    # so, and a parent has since ended without success
    _J.SUBMITTED: frozenset({_J.RUNNING, _J.SUCCEEDED, _J.FAILED, _J.KILLED, _J.WAITING, _J.SKIPPED}),
    _J.RUNNING: frozenset({_J.SUCCEEDED, _J.FAILED, _J.KILLED}),
    # an ended job never moves again: a retry or a rerun is a new job in the
    # same slot (MUPPET design, "the data model")
    _J.SUCCEEDED: frozenset(),
    _J.FAILED: frozenset(),
    _J.KILLED: frozenset(),
    _J.SKIPPED: frozenset(),
    _J.EXPIRED: frozenset(),
    _J.BYPASSED: frozenset(),
}

_R = RunState
#: for each run state, the states it may move to
RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    # queued: the pipeline's runahead lets it run, or its jobs all ended
    # while it waited (expired, or killed by an operator)
    _R.QUEUED: frozenset({_R.RUNNING, _R.EXPIRED, _R.FAILED}),
    _R.RUNNING: frozenset({_R.SUCCEEDED, _R.FAILED, _R.EXPIRED}),
    # a rerun of one of its jobs opens an ended run again
    _R.SUCCEEDED: frozenset({_R.RUNNING}),
    _R.FAILED: frozenset({_R.RUNNING}),
    _R.EXPIRED: frozenset({_R.RUNNING}),
}

#: what each job state means, as docs/states.md and `muppet jobs --help` say it
JOB_STATE_MEANINGS: Mapping[JobState, str] = {
    _J.WAITING: "not started: its parents, the step's concurrency, a conflicting step, "
                "an executor slot, its retry backoff or a failed start keep it back (the reason says which)",
    _J.HELD: "kept from starting by an operator until released",
    _J.SUBMITTED: "handed to the executor, not yet seen running",
    _J.RUNNING: "its command runs",
    _J.SUCCEEDED: "its command exited 0 and its outputs are in place",
    _J.FAILED: "its command failed, or could not be started; with tries left a successor waits",
    _J.KILLED: "stopped, or kept from starting, by an operator",
    _J.SKIPPED: "never run: a job it depends on failed for good or was killed",
    _J.EXPIRED: "never run: not started by its expire_after, or a job it depends on expired",
    _J.BYPASSED: "never run: an operator bypassed its step; its children go on as if it had succeeded",
}

#: what each run state means
RUN_STATE_MEANINGS: Mapping[RunState, str] = {
    _R.QUEUED: "made, and waiting for its pipeline's runahead to let it run",
    _R.RUNNING: "some of its slots have not ended",
    _R.SUCCEEDED: "the newest job of every slot succeeded (or was bypassed)",
    _R.FAILED: "every slot ended and at least one failed, was killed or skipped",
    _R.EXPIRED: "every slot ended succeeded or expired, and at least one expired",
}


def move_job(job: Job, state: JobState, **changes: Any) -> Job:
    """``job`` in ``state`` with ``changes``; raises IllegalTransition if
    the table has no move from its state to ``state``."""
    if state is not job.state and state not in JOB_TRANSITIONS[job.state]:
        raise IllegalTransition(
            f"job {job.id} ({job.pipeline}.{job.step}[{job.index}]) cannot move from "
            f"{job.state.value} to {state.value}"
        )
    return attrs.evolve(job, state=state, **changes)


def move_run(run: Run, state: RunState, **changes: Any) -> Run:
    """``run`` in ``state`` with ``changes``; raises IllegalTransition if
    the table has no move from its state to ``state``."""
    if state is not run.state and state not in RUN_TRANSITIONS[run.state]:
        raise IllegalTransition(
            f"run {run.id} ({run.pipeline}) cannot move from {run.state.value} to {state.value}"
        )
    return attrs.evolve(run, state=state, **changes)


# --- the reasons the scheduler writes on a job (``Job.reason``) ---------------------
# The executor writes its own (exit code, missing output, lost process: see
# docs/executor.md); docs/states.md lists both.

#: a job an operator killed, running or not
KILLED_BY_OPERATOR = "killed by operator"


def not_started(why: str) -> str:
    """Why a submitted job went back to waiting (the executor could not start it)."""
    return f"not started: {why}"


def upstream_did_not_succeed(parent: Job) -> str:
    """Why a job was skipped."""
    return f"upstream job {parent.id} ({parent.step}[{parent.index}]) did not succeed"


def expired(deadline: str) -> str:
    """Why a job expired: its expire_after passed (the deadline, formatted)."""
    return f"not started by {deadline} (expire_after)"


def upstream_expired(parent: Job) -> str:
    """Why a job expired with its upstream."""
    return f"upstream job {parent.id} ({parent.step}[{parent.index}]) expired"


def no_longer_configured(job: Job) -> str:
    """Why a job found at start-up failed: its step left the configuration."""
    return f"step {job.pipeline}.{job.step} is no longer configured"

