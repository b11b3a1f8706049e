"""Which of the scheduler's own changes open or resolve an incident:
sans-I/O, as the core it serves (docs/alerts.md, "Incidents").

``IncidentRules.derive`` looks at the changes one pass of the scheduler core
is about to persist and returns the alert changes to persist with them, in
the same ``Persist``: an incident commits in the transaction of its cause,
and a cause that is decided again after a crash is decided with its
incident. No awaits, no clock (``now`` comes in), no database: whether an
incident of that key is open already is for the writer to see
(``records.py``), so the rules keep only what saves needless writes.

The rules, each keyed by (kind, pipeline, step, subject, reference time):

- a job that ends ``failed`` with no successor failed for good: its tries are
  spent (a retry is a new job, so a failure with tries left has a successor
  and is no incident). ``job_failed`` for its step; resolved when every slot
  of the step has succeeded again (a rerun, ``muppet set --succeeded``);
- a run that ends ``failed`` or ``expired``: ``run_failed``, ``run_expired``;
- a ``LateNotice`` (docs/configuration.md, "Cycling"): ``late``, for the
  step (its jobs) or the run (step "");
- a run that succeeds resolves every incident of its pipeline and reference
  time but ``product_late`` (that one resolves when the instance is
  complete, in ``records.resolve_completed``); a step whose slots have all
  succeeded resolves its ``job_failed`` and ``late``;
- a job put back to waiting with ``not started: ...`` (the executor could
  not start it: docs/operations.md, "When the disk is full") opens
  ``executor_down`` for its executor; a job of that executor seen running
  resolves it (one that a daemon before this one left open is resolved by
  the alerts task, ``task.py``, when a job of the executor starts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from ..messages import LateNotice
from ..model import Job, JobState, Run, RunState
from .changes import AlertChange, OpenIncident, ResolveIncidents
from .kinds import EXECUTOR_DOWN, JOB_FAILED, LATE, RUN_EXPIRED, RUN_FAILED

#: what a run's success resolves
RUN_KINDS = (JOB_FAILED, RUN_FAILED, RUN_EXPIRED, LATE)
#: what a step's success resolves
STEP_KINDS = (JOB_FAILED, LATE)
#: the prefix of the reason of a job the executor could not start (scheduler/states.py)
NOT_STARTED = "not started: "
#: a slot in these states counts as done for its step's incidents
_DONE = frozenset({JobState.SUCCEEDED, JobState.BYPASSED})


class SchedulerView(Protocol):
    """What the rules read of the scheduler core (``scheduler/core.py``):
    its runs and the persisted and proposed copies of its jobs."""

    @property
    def runs(self) -> Mapping[int, Run]: ...
    @property
    def current(self) -> Mapping[int, Mapping[tuple[str, int], int]]: ...
    @property
    def jobs(self) -> Mapping[int, Job]: ...
    @property
    def pending_jobs(self) -> Mapping[int, Job]: ...


class IncidentRules:
    """The rules, and what they remember to write less: which executors are
    known to be in trouble, and since when (sans-I/O, as ``Scheduler``)."""

    def __init__(self) -> None:
        #: executor -> when its trouble opened (as the core's ``now``); one
        #: that a daemon before this one left open the alerts task resolves
        self.troubled: dict[str, float] = {}

    def derive(self, view: SchedulerView, changes: Iterable[object], now: float) -> list[AlertChange]:
        out: list[AlertChange] = []
        for change in changes:
            if isinstance(change, Job):
                self._job(view, change, now, out)
            elif isinstance(change, Run):
                self._run(view, change, now, out)
            elif isinstance(change, LateNotice):
                job = change.kind == "job"
                what = f"job {change.id} ({change.step}[{change.index}])" if job else f"run {change.id}"
                out.append(OpenIncident(
                    LATE, now, f"{what} not succeeded by its late_after", pipeline=change.pipeline,
                    step=change.step if job else "", reference_time=change.reference_time,
                    run_id=None if job else change.id, job_id=change.id if job else None,
                ))
        return out

    def _job(self, view: SchedulerView, job: Job, now: float, out: list[AlertChange]) -> None:
        run = view.runs.get(job.run_id)
        if job.state is JobState.WAITING and job.reason.startswith(NOT_STARTED):
            if job.executor not in self.troubled:
                self.troubled[job.executor] = now
                out.append(OpenIncident(
                    EXECUTOR_DOWN, now, f"executor {job.executor} cannot start jobs: {job.reason[len(NOT_STARTED):]}",
                    subject=job.executor, job_id=job.id, run_id=job.run_id,
                ))
            return
        since = self.troubled.get(job.executor)
        if since is not None and self._started(job):
            # a start that began after the trouble did (an earlier one may
            # report late: docs/executor.md, "A failed start")
            if (job.started_at or 0.0) >= since:
                self.troubled.pop(job.executor, None)
                out.append(ResolveIncidents((EXECUTOR_DOWN,), now, f"job {job.id} started", subject=job.executor))
        if run is None:
            return
        if job.state is JobState.FAILED and job.successor is None and "by operator" not in job.reason:
            out.append(OpenIncident(
                JOB_FAILED, now, f"job {job.id} ({job.step}[{job.index}]) failed for good: {job.reason}",
                pipeline=job.pipeline, step=job.step, reference_time=run.reference_time, run_id=run.id,
                job_id=job.id,
            ))
        elif job.state in _DONE and (job.predecessor is not None or job.late) and _step_done(view, job):
            # only a job after a failure (a rerun) or a late one can end an
            # incident of its step: the others need no look at the step
            out.append(ResolveIncidents(
                STEP_KINDS, now, f"every job of {job.step} succeeded (job {job.id})", pipeline=job.pipeline,
                step=job.step, reference_time=run.reference_time,
            ))

    @staticmethod
    def _started(job: Job) -> bool:
        return job.state is JobState.RUNNING or (job.state.finished and job.started_at is not None)

    def _run(self, view: SchedulerView, run: Run, now: float, out: list[AlertChange]) -> None:
        if run.state is RunState.FAILED:
            out.append(OpenIncident(RUN_FAILED, now, f"run {run.id} failed", pipeline=run.pipeline,
                                    reference_time=run.reference_time, run_id=run.id))
        elif run.state is RunState.EXPIRED:
            out.append(OpenIncident(RUN_EXPIRED, now, f"run {run.id} expired", pipeline=run.pipeline,
                                    reference_time=run.reference_time, run_id=run.id))
        elif run.state is RunState.SUCCEEDED and (run.late or _rerun(view, run)):
            # only a late run, or one with a job after a failure, can have an
            # incident to end: the others need no write
            out.append(ResolveIncidents(RUN_KINDS, now, f"run {run.id} succeeded", pipeline=run.pipeline,
                                        step=None, reference_time=run.reference_time))


def _rerun(view: SchedulerView, run: Run) -> bool:
    """Some slot of ``run`` holds a job after another (a retry, a rerun, a
    job set by hand)."""
    for job_id in view.current.get(run.id, {}).values():
        job = view.pending_jobs.get(job_id) or view.jobs.get(job_id)
        if job is not None and job.predecessor is not None:
            return True
    return False


def _step_done(view: SchedulerView, job: Job) -> bool:
    """Every slot of ``job``'s step in its run holds a job that succeeded
    (or was bypassed), ``job`` included, proposed copies over persisted."""
    for slot, job_id in view.current.get(job.run_id, {}).items():
        if slot[0] != job.step:
            continue
        if slot == job.slot and job.id >= job_id:
            newest: Job | None = job
        else:
            newest = view.pending_jobs.get(job_id) or view.jobs.get(job_id)
        if newest is None or newest.state not in _DONE:
            return False
    return True
