"""The messages that travel on the daemon's memory channels.

``muppet/daemon.py`` draws who sends what to whom; this module only names the
messages. All are frozen. A ``reply`` field holds the send end of a one-slot
channel on which the requester waits; only the I/O shells (the scheduler task,
the database task) touch it: the sans-I/O scheduler core sees requests by
number (``request``) and answers by number (``Answer`` in ``scheduler/core.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs
import trio

from .alerts.changes import AlertChange, AlertWrite
from .model import (
    DataFormat,
    ExecutorConfig,
    Job,
    JobLog,
    JobState,
    Pipeline,
    Product,
    Run,
    RunState,
    ServiceBackend,
    Step,
)

# --- to the database task ------------------------------------------------------


@attrs.frozen
class NewRun:
    """Create a run and all of its jobs in one transaction.

    Refused, without writing anything of it, when a run of the same pipeline
    and reference time exists already. ``needs``: the reference times of the
    earlier runs of the same pipeline its intercycle parents are in; those
    that have ended come back in ``Persisted.ended`` (read in the same
    transaction), so that the scheduler knows them without keeping every
    ended run in memory.
    """

    run: Run
    jobs: tuple[Job, ...]
    needs: tuple[datetime, ...] = ()
    #: the operator who triggered it: an operator event with the run
    by: Operator | None = None
    #: the canonical JSON of the definition ``run.definition`` names, kept
    #: in the definitions table (once per hash) with the run
    definition: str = ""


@attrs.frozen
class EndedRun:
    """An ended run as an intercycle child needs it: its state and the state
    of each slot's newest job, ``(step, index, state)``."""

    run_id: int
    pipeline: str
    reference_time: datetime
    state: RunState
    slots: tuple[tuple[str, int, JobState], ...]


@attrs.frozen
class OperatorEvent:
    """An operator's action, for the event log (kind "operator"): who,
    why, what they asked and what it touched (JSON-able)."""

    action: str
    by: Operator
    target: Any


@attrs.frozen
class Ack:
    """A marker in a Persist: request ``request`` is answered once the batch
    holding it is committed (Persisted.acks)."""

    request: int


#: the Control key of a drain, and the prefix of a pipeline's pause
DRAINING = "draining"
PAUSED_PREFIX = "paused:"


def paused_key(pipeline: str) -> str:
    return PAUSED_PREFIX + pipeline


@attrs.frozen
class Control:
    """A standing operator's order, kept in the database so that a restart
    keeps it: ``key`` "paused:PIPELINE" or "draining"; ``value`` what the
    daemon shows of it (who, since when), None to lift it."""

    key: str
    value: Any = None


@attrs.frozen
class LateNotice:
    """A job or a run became late (not succeeded by its late_after): one
    event of kind "late" in the same transaction as the flag."""

    kind: str  # "job" or "run"
    id: int
    pipeline: str
    reference_time: datetime
    step: str = ""
    index: int = 0
    #: the late_after moment that passed (seconds since the epoch)
    deadline: float = 0.0


# --- index changes (to the database task) ----------------------------------------
# The API and the expiry task send them in an ``IndexWrite``; the scheduler
# sends a ``RegisterFiles`` of a job's outputs inside its ``Persist``, so that
# the outputs commit with the job's success.


@attrs.frozen
class NewFile:
    """One file (a Productstatus DataInstance) to put in the index.

    The instance version is chosen as RegisterFiles says; ``version`` picks
    one explicitly. A file's name is its path under the backend's URL (else
    the URL's last part). The Data record is the instance's one of the same
    name, or ``data_id``'s (a copy on another backend shares its original's).
    """

    product: str
    reference_time: datetime
    backend: str
    format: str
    url: str
    size: int
    hash: str
    hash_type: str = "sha256"
    time_begin: datetime | None = None
    time_end: datetime | None = None
    variables: tuple[str, ...] = ()
    expires: datetime | None = None
    partial: bool = False
    version: int | None = None
    data_id: int | None = None
    #: BitTorrent: the copy's v1 info-hash and a peer (HOST:PORT) serving it
    info_hash: str | None = None
    peer: str | None = None


@attrs.frozen
class RegisterFiles:
    """Index these files, all or none. ``define_formats``: a format not yet
    known is declared on the way (for step outputs, whose format is found by
    content and must not fail the job's commit).

    Which instance version a file joins (docs/index.md, "Versions"): the one
    ``run_id`` made (the outputs of one run, its reruns included, make one
    version; a new run makes a new one); by hand, the newest version, or a
    new one with ``new_version``. A file registered at a URL that a live
    record on the same backend holds supersedes that record."""

    files: tuple[NewFile, ...]
    define_formats: bool = False
    #: the run whose job made the files (step outputs); None: by hand
    run_id: int | None = None
    #: by hand: make a new version of each (product, reference time)
    new_version: bool = False


@attrs.frozen
class DefineIndex:
    """Declare (or update) products, formats and service backends."""

    products: tuple[Product, ...] = ()
    formats: tuple[DataFormat, ...] = ()
    backends: tuple[ServiceBackend, ...] = ()


@attrs.frozen
class DeleteFiles:
    """Mark data instances deleted: these ids, or every one whose ``expires``
    is at or before ``expired_at`` (with ``limit``: at most that many, the
    soonest expired first; expiry goes in chunks, one transaction each)."""

    ids: tuple[int, ...] = ()
    expired_at: datetime | None = None
    reason: str = ""
    limit: int | None = None


@attrs.frozen
class SetTorrent:
    """Keep a file's BitTorrent info-hash and torrent (base64) beside it."""

    data_instance_id: int
    info_hash: str
    torrent: str
    #: HOST:PORT of the peer that seeds it; None keeps the one known
    peer: str | None = None


IndexChange = RegisterFiles | DefineIndex | DeleteFiles | SetTorrent


# --- pruning the history (to the database task) -----------------------------------
# The history task sends one ``Prune`` per chunk in a ``PruneWrite``: each is
# a transaction of the only writer, as small as ``limit`` says, so that the
# scheduler's commits never wait long behind it (docs/database.md, "Pruning").


@attrs.frozen
class Prune:
    """Remove at most about ``limit`` rows of history older than ``before``
    (seconds since the epoch): finished runs that ended before it (those
    after run ``after_run``), with their jobs and log tails; the events
    before it, oldest first; the definitions no run uses any more."""

    before: float
    limit: int
    after_run: int = 0


@attrs.frozen
class Pruned:
    """What one ``Prune`` removed, and where the next chunk goes on."""

    runs: int = 0
    jobs: int = 0
    logs: int = 0
    events: int = 0
    definitions: int = 0
    #: the next chunk looks at the runs after this one
    after_run: int = 0
    #: the chunk was full: more may be left to remove
    more: bool = False

    @property
    def rows(self) -> int:
        return self.runs + self.jobs + self.logs + self.events + self.definitions


@attrs.frozen
class CompletedInstance:
    """An instance that became complete in a write: the first (backend,
    format) pair reached the product's file_count."""

    instance_id: int
    product: str
    reference_time: datetime
    version: int
    #: every product with a complete instance for this reference time
    #: (this one included), for data-driven triggers
    complete_products: frozenset[str]


@attrs.frozen
class IndexWritten:
    """What an IndexChange did once committed: ``result`` is what the API
    answers (JSON-able), or ``error`` with a JSON-RPC ``code`` when the change
    was refused and nothing of it written."""

    result: Any = None
    error: str | None = None
    code: int = 0
    completed: tuple[CompletedInstance, ...] = ()
    #: the file paths of data instances deleted on a file:// backend, for
    #: [index] delete_expired_files
    deleted_paths: tuple[str, ...] = ()
    #: the newest event number once the write committed (its own events are
    #: at or below it)
    event_id: int = 0


#: what one Persist may carry: a new run (with its jobs), or the new state of an
#: existing run or job, or a finished job's log tail, or the index registration
#: of a job's outputs, or a lateness event
@attrs.frozen
class UpdateRequest:
    """A request for a product update (products.request_update), as kept:
    "waiting" while ``waiting_for`` (products the pipeline requires that
    have no complete instance for ``reference_time``) is not empty, "done"
    once carried out (``run_id``: the run made or rerun for it), "refused"
    when it could not be (scheduler/requests.py says when).

    Written with ``check``, the database works ``waiting_for`` out again in
    the same transaction, from the instances it holds: an instance that
    completes before that commit is counted, one after it comes to the
    scheduler as a ``CompletedInstance`` after this request's ``Persisted``.
    """

    id: int
    product: str
    reference_time: datetime
    pipeline: str
    state: str
    waiting_for: tuple[str, ...]
    by: Operator
    created_at: float
    done_at: float | None = None
    run_id: int | None = None
    check: bool = attrs.field(default=False, eq=False)


#: ... and incidents, beside the changes that caused them (docs/alerts.md, "Incidents")
Change = (
    NewRun | Run | Job | JobLog | IndexChange | LateNotice | OperatorEvent | Control | Ack | UpdateRequest | AlertChange
    | Prune
)


@attrs.frozen
class Persist:
    """From the scheduler: commit these changes in one transaction, then send
    back ``Persisted``.

    Every Run and Job written (NewRun included) also appends one row to the
    numbered event table in the same transaction.
    """

    changes: tuple[Change, ...]


@attrs.frozen
class IndexWrite:
    """From the API or the expiry task: commit ``change`` (with whatever else
    the database task's batch holds) and send its ``IndexWritten`` on
    ``reply``. The scheduler is not asked: it hears of the write only if it
    completed an instance (``Persisted.completed``)."""

    change: IndexChange
    reply: trio.MemorySendChannel[IndexWritten] | None = None


@attrs.frozen
class PruneWrite:
    """From the history task: commit ``change`` (with whatever else the
    database task's batch holds) and send its ``Pruned`` on ``reply``."""

    change: Prune
    reply: trio.MemorySendChannel[Pruned] | None = None


#: what the database task receives
ToDatabase = Persist | IndexWrite | AlertWrite | PruneWrite


# --- to the scheduler ------------------------------------------------------------
# The scheduler's inbox receives from the database task, cron, the executor and
# the API.


@attrs.frozen
class Persisted:
    """The committed facts the scheduler acts on, one per transaction that
    held any: the copies of its own changes in the order it sent them
    (index changes left out), the NewRuns refused as duplicates (nothing of
    them was written), and the instances that any write of the transaction
    completed (for data-driven runs)."""

    changes: tuple[NewRun | Run | Job | JobLog, ...]
    rejected: tuple[NewRun, ...] = ()
    completed: tuple[CompletedInstance, ...] = ()
    #: the ended runs the committed NewRuns' ``needs`` named
    ended: tuple[EndedRun, ...] = ()
    #: the requests whose Ack this batch committed
    acks: tuple[int, ...] = ()
    #: the number of the newest event once this batch committed (not part of
    #: equality: two writes of the same changes are the same commit)
    last_event_id: int = attrs.field(default=0, eq=False)
    #: the update requests of the batch as committed (``waiting_for`` as
    #: the database worked it out)
    requests: tuple[UpdateRequest, ...] = ()


#: one row of the event log as the database holds it: (id, at, kind,
#: product, subject_id, payload)
EventLogRow = tuple[int, float, str, "str | None", int, str]


@attrs.frozen
class EventsCommitted:
    """From the database task to the API's event hub after each commit: the
    newest event number, and the events that commit appended, in order, as
    the log's rows; None when the commit cannot tell them (a retried batch,
    one that pruned, numbers not the ones its inserts would draw), and the
    hub reads the log instead."""

    newest: int
    rows: tuple[EventLogRow, ...] | None = None


@attrs.frozen
class Trigger:
    """Make a run of ``pipeline`` for ``reference_time`` (UTC, aware)."""

    pipeline: str
    reference_time: datetime
    cause: str  # a RunCause value
    #: the number of the request it answers ({"run_id": N} once persisted, or
    #: an error); 0 when nobody waits (cron, a data-driven run)
    request: int = 0
    #: the operator who asked (None: cron, data, a catch-up)
    by: Operator | None = None


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
    #: outputs moved into place, for the index
    outputs: tuple[MovedOutput, ...] = ()


@attrs.frozen
class JobNotStarted:
    """The executor could not start the job for a failure of MUPPET's own
    machinery (the state directory full or failing, the batch system out of
    reach): the command did not run. Not the job's failure: the scheduler
    puts it back to waiting, to be tried again after a backoff, without
    using up its tries. ``reason`` says what went wrong, for the operator."""

    job_id: int
    reason: str


@attrs.frozen
class MovedOutput:
    """A declared output now at its destination."""

    #: the destination, relative to [daemon] output_dir
    path: str
    size: int
    sha256: str
    format: str


@attrs.frozen
class Operator:
    """Who asked for an operator's action, and why: the API token's name
    ("local" where the API is open) and the reason given (docs/operations.md,
    "Who did what")."""

    name: str = "local"
    reason: str = ""


@attrs.frozen
class Command:
    """An operator's command on one job: "hold", "release", "kill", "rerun"
    (with ``downstream``: every job after it in the run too) or "set" (to
    ``outcome``, "succeeded" or "failed").

    For a command on a job whose run is no longer in the scheduler's memory
    (it ended), the API loads the run, its jobs and its definition and
    passes them along.
    """

    action: str
    job_id: int
    #: the number of the request it answers (see Trigger.request)
    request: int = 0
    run: Run | None = None
    jobs: tuple[Job, ...] = ()
    by: Operator = Operator()
    downstream: bool = False
    outcome: str = ""
    #: the definition ``run`` was made with, from the database (a rerun
    #: brings an ended run back under its own: docs/operations.md, "Reload")
    definition: Pipeline | None = None


@attrs.frozen
class RunCommand:
    """An operator's command on a whole run: "hold", "release", "kill"
    (every job of the run), "rerun" (every slot that ended failed, killed,
    expired or skipped) or "bypass" (``step``'s jobs end without running,
    their children go on as if they had succeeded). ``run`` and ``jobs`` as
    in Command."""

    action: str
    run_id: int
    request: int = 0
    run: Run | None = None
    jobs: tuple[Job, ...] = ()
    by: Operator = Operator()
    step: str = ""
    #: as in Command
    definition: Pipeline | None = None


@attrs.frozen
class PipelineCommand:
    """"pause" (no new job of the pipeline starts; its cron runs wait) or
    "resume" (its catch-up policy decides which of those run)."""

    action: str
    pipeline: str
    request: int = 0
    by: Operator = Operator()


@attrs.frozen
class DaemonCommand:
    """"drain" (the daemon starts no new job at all; running ones finish) or
    "undrain"."""

    action: str
    request: int = 0
    by: Operator = Operator()


@attrs.frozen
class Backfill:
    """Make a run of ``pipeline`` for each of ``reference_times`` (oldest
    first, under the pipeline's runahead), skipping those that have one; the
    Reply's result is ``{"run_ids": [...], "skipped": [times...]}``."""

    pipeline: str
    reference_times: tuple[datetime, ...]
    request: int = 0
    by: Operator | None = None


@attrs.frozen
class WhyWaiting:
    """A question for the scheduler: why each of these jobs waits (its
    Reply's result maps each job id to the scheduler's reason, "" for one
    that does not wait there). Read-only: answered at once, without a
    scheduling pass."""

    job_ids: tuple[int, ...]


@attrs.frozen
class RequestUpdate:
    """products.request_update: make the run of ``pipeline`` (which
    produces ``product``) for ``reference_time``, or rerun the steps of the
    existing one that make the product and what is downstream of them; once
    the products it requires are complete for that time. ``run`` and
    ``jobs``: the existing run, from the database, when there is one (it
    may have ended). The reply is ``{"request_id", "state", ...}``."""

    product: str
    reference_time: datetime
    pipeline: str
    request: int = 0
    by: Operator = Operator()
    run: Run | None = None
    jobs: tuple[Job, ...] = ()


#: what an operator or a client asks of the scheduler, answered by a Reply
Request = Trigger | Command | RunCommand | PipelineCommand | DaemonCommand | Backfill | RequestUpdate


@attrs.frozen
class Asked:
    """From the API: a Trigger or Command, and the channel on which the API
    waits for its Reply. The scheduler task numbers it (``request``) before
    the core sees it, and sends the core's Answer of that number here. A
    WhyWaiting the task answers itself."""

    event: Request | WhyWaiting | Reconfigure
    reply: trio.MemorySendChannel[Reply]


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
INVALID_CONFIGURATION = -32006  # a reload's file does not load: nothing was reloaded


@attrs.frozen
class Reply:
    """What an API command gets back on its reply channel."""

    result: Any = None
    error: str | None = None
    #: a JSON-RPC error code for errors (see muppet/api/protocol.py)
    code: int = 0


# --- reloading the configuration (docs/operations.md, "Reload") -------------------


@attrs.frozen
class Reload:
    """To the reload task (``muppet reload``, ``daemon.reload``, SIGHUP):
    read the daemon's configuration file again and run on it from now on.
    ``by`` says who asked and why; ``reply`` gets the outcome (None: nobody
    waits, as for SIGHUP)."""

    by: Operator
    reply: trio.MemorySendChannel[Reloaded] | None = None


@attrs.frozen
class Reloaded:
    """What a Reload came to: ``result``, what changed (docs/api.md,
    "daemon.reload"), once committed; or ``error`` with a JSON-RPC ``code``
    and, for a configuration that does not load, every ``problem`` (each
    naming its file, table and key). A refused reload changed nothing."""

    result: Any = None
    error: str | None = None
    code: int = 0
    problems: tuple[str, ...] = ()


@attrs.frozen
class Reconfigure:
    """From the reload task to the scheduler: make runs from ``pipelines``
    from now on, and start jobs under ``executors``' limits. Runs in
    progress keep the definition they were made with. ``index`` (the
    declarations that changed, if any) and the operator event of ``by``
    (its target ``summary``, what changed) are written in one transaction;
    the Reply comes once it is committed."""

    pipelines: Mapping[str, Pipeline]
    executors: Mapping[str, ExecutorConfig]
    #: where step outputs are registered from now on (Scheduler.outputs_backend)
    outputs_backend: ServiceBackend | None
    summary: Any
    index: DefineIndex | None = None
    request: int = 0
    by: Operator = Operator()


@attrs.frozen
class ExecutorSettings:
    """To the executor, from the scheduler as it takes a Reconfigure: the
    executors from now on. It comes before any StartJob made under them."""

    executors: Mapping[str, ExecutorConfig]


# --- what each task's inbox carries (the channel types in daemon.py) --------------

#: the scheduler's inbox: committed facts, triggers, job reports, requests
ToScheduler = Persisted | Trigger | Asked | JobStarted | JobFinished | JobNotStarted
#: the executor's inbox
ToExecutor = StartJob | KillJob | ExecutorSettings
