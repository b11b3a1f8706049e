"""The messages that travel on the daemon's memory channels.

``muppet/daemon.py`` draws who sends what to whom; this module only names the
messages. All are frozen. A ``reply`` field holds a Trio send channel (or None);
it is opaque to the sans-I/O scheduler core, which only hands it back in a
``Reply`` effect.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from .model import Job, JobLog, Run, Step


# --- to the database task ------------------------------------------------------


@attrs.frozen
class NewRun:
    """Create a run and all of its jobs in one transaction.

    Refused, without writing anything of it, when a run of the same pipeline
    and reference time exists already.
    """

    run: Run
    jobs: tuple[Job, ...]


#: what one Persist may carry: a new run (with its jobs), or the new state of an
#: existing run or job, or a finished job's log tail
Change = NewRun | Run | Job | JobLog


@attrs.frozen
class Persist:
    """Commit these changes in one transaction, then send back ``Persisted``.

    Every Run and Job written (NewRun included) also appends one row to the
    numbered event table in the same transaction.
    """

    changes: tuple[Change, ...]


# --- to the scheduler ------------------------------------------------------------
# The scheduler's inbox receives from the database task, cron, the executor and
# the API.


@attrs.frozen
class Persisted:
    """The committed copies, in the order they were sent; ``rejected`` holds the
    NewRuns refused as duplicates (nothing of them was written)."""

    changes: tuple[Change, ...]
    rejected: tuple[NewRun, ...] = ()


@attrs.frozen
class Trigger:
    """Make a run of ``pipeline`` for ``reference_time`` (UTC, aware)."""

    pipeline: str
    reference_time: datetime
    cause: str  # a RunCause value
    reply: Any = None  # replies {"run_id": N} once persisted, or an error


@attrs.frozen
class JobStarted:
    """The executor saw the job start (or re-attached to it)."""

    job_id: int
    batch_id: str
    host: str
    started_at: float


@attrs.frozen
class JobFinished:
    """The job ended. ``state`` is "succeeded", "failed" or "killed"; ``reason``
    says why it failed (exit code, missing output, lost process, killed by ...)."""

    job_id: int
    state: str
    exit_code: int | None
    reason: str
    started_at: float | None
    ended_at: float
    stdout_tail: str = ""
    stderr_tail: str = ""


@attrs.frozen
class Command:
    """An operator's command on one job: "hold", "release", "kill" or "rerun".

    For "rerun" of a job whose run is no longer in the scheduler's memory (it
    finished), the API loads the run and its jobs and passes them along.
    """

    action: str
    job_id: int
    reply: Any = None
    run: Run | None = None
    jobs: tuple[Job, ...] = ()


# --- to the executor ------------------------------------------------------------


@attrs.frozen
class StartJob:
    """Run this job, or re-attach to it if its job directory shows that it was
    started already (after a daemon restart). Idempotent per job id."""

    job: Job
    step: Step
    reference_time: datetime


@attrs.frozen
class KillJob:
    job_id: int


# --- replies -------------------------------------------------------------------


#: the JSON-RPC error codes a Reply may carry (MUPPET's own range, relayed
#: by the API as they are)
NOT_FOUND = -32001  # unknown pipeline, run or job
CONFLICT = -32002  # run exists already, job not in a state that allows the command


@attrs.frozen
class Reply:
    """What an API command gets back on its reply channel."""

    result: Any = None
    error: str | None = None
    #: a JSON-RPC error code for errors (see muppet/api/protocol.py)
    code: int = 0
