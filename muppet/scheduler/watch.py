"""What the operator hears of the scheduler's committed changes: one log line
for every job that fails, is killed or is retried and for every run that
fails, and the figures of job starts, waits and durations (docs/operations.md,
"Metrics").

Sans-I/O, like the core beside it: ``JobWatch.persisted(message)`` takes one
``Persisted`` and gives back what to log and what to count; the scheduler
task carries that out. It watches only committed copies (MUPPET design,
"only persisted objects move on"), so the log never tells of a change that a
crash could take back.

A change is news when the state of the job or run moves. The watch keeps
the state of each job and run it has seen until it ends; an ended job's
later copies (a rerun links it to its successor) are no news. After a
restart it starts from the unfinished work the daemon loaded.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .. import codec
from ..messages import NewRun, Persisted
from ..model import Job, JobState, Run, RunState


@attrs.frozen
class Started:
    """A job started running; ``waited``: seconds from waiting to running."""

    pipeline: str
    waited: float | None


@attrs.frozen
class Ended:
    """A job ended in ``state``; ``duration``: seconds it ran (None if it never did)."""

    pipeline: str
    state: str
    duration: float | None


@attrs.frozen
class RunEnded:
    pipeline: str
    state: str
    duration: float


Observation = Started | Ended | RunEnded


@attrs.frozen
class Heard:
    """What one Persisted gives: log lines (at warning level: each one is an
    operator's business) and observations for the metrics."""

    lines: tuple[str, ...] = ()
    observations: tuple[Observation, ...] = ()


def _name(job: Job) -> str:
    return f"job {job.id} ({job.pipeline}.{job.step}[{job.index}], run {job.run_id})"


class JobWatch:
    """The last state seen of every job and run that has not ended."""

    def __init__(self, runs: Iterable[Run] = (), jobs: Iterable[Job] = ()) -> None:
        self.jobs: dict[int, JobState] = {j.id: j.state for j in jobs if not j.state.finished}
        self.runs: dict[int, RunState] = {r.id: r.state for r in runs if r.state is RunState.RUNNING}

    def persisted(self, message: Persisted) -> Heard:
        lines: list[str] = []
        observations: list[Observation] = []
        for change in message.changes:
            if isinstance(change, NewRun):
                self.runs[change.run.id] = change.run.state
                for job in change.jobs:
                    self._job(job, lines, observations)
            elif isinstance(change, Run):
                self._run(change, lines, observations)
            elif isinstance(change, Job):
                self._job(change, lines, observations)
        return Heard(tuple(lines), tuple(observations))

    def _job(self, job: Job, lines: list[str], observations: list[Observation]) -> None:
        known = job.id in self.jobs
        before = self.jobs.get(job.id)
        if not known and job.state.finished:
            # an ended job seen again (a rerun links it to its successor): no news
            return
        if known and before is job.state:
            return
        started = job.state is JobState.RUNNING or (job.state.finished and job.started_at is not None)
        if started and before is not JobState.RUNNING:
            waited = None
            if job.started_at is not None:
                waited = job.started_at - max(job.created_at, job.not_before)
            observations.append(Started(job.pipeline, waited))
        if not job.state.finished:
            self.jobs[job.id] = job.state
            return
        del self.jobs[job.id]
        duration = None
        if job.started_at is not None and job.ended_at is not None:
            duration = job.ended_at - job.started_at
        observations.append(Ended(job.pipeline, job.state.value, duration))
        why = f": {job.reason}" if job.reason else ""
        if job.state is JobState.FAILED:
            if job.successor is not None:
                lines.append(f"{_name(job)} failed{why}; retried as job {job.successor}")
            else:
                lines.append(f"{_name(job)} failed{why}; no tries left")
        elif job.state is JobState.KILLED:
            lines.append(f"{_name(job)} killed{why}")

    def _run(self, run: Run, lines: list[str], observations: list[Observation]) -> None:
        before = self.runs.get(run.id)
        if run.state is RunState.RUNNING:
            self.runs[run.id] = run.state
            if before is None:
                # a finished run reopened by an operator's rerun
                lines.append(f"run {run.id} ({run.pipeline} {codec.format_time(run.reference_time)}) reopened")
            return
        if before is None:
            return  # its end was seen already
        self.runs.pop(run.id, None)
        if run.ended_at is not None:
            observations.append(RunEnded(run.pipeline, run.state.value, run.ended_at - run.created_at))
        if run.state is RunState.FAILED:
            lines.append(f"run {run.id} ({run.pipeline} {codec.format_time(run.reference_time)}) failed")
