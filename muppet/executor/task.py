"""The executor task: runs the jobs the scheduler hands it, reports how they went.

It is the common part of every executor type: it prepares the job directory
(``jobdir.py``), lets the job's backend (``local.py``, ``gridengine.py``,
``slurm.py``) start and watch the wrapper, then reads the wrapper's status
file, the log tails and moves the outputs (``outputs.py``). The status file,
not the backend, says how a job ended; so a job that ended while no daemon
watched is reported with its real exit code.

A failure of MUPPET's own machinery before the command ran is not the job's
failure (MUPPET design): a job directory that cannot be prepared (any
OSError: a full disk, a quota, an I/O error, a read-only file system, no
file descriptors left), a wrapper that cannot be spawned or cannot write its
claim, a batch system that cannot be reached. The job is reported
``JobNotStarted`` with the reason, and the scheduler tries it again later.
What is the job's own fault (an environment variable's name, an executor
that is not configured, a queue or resource the batch system refuses) fails
it. The log says once when jobs of an executor cannot start, and once when
they start again (docs/operations.md, "When the disk is full").
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs
import trio

from ..db.lease import LeaseLost
from ..messages import ExecutorSettings, JobFinished, JobNotStarted, JobStarted, KillJob, MovedOutput, StartJob
from ..model import ExecutorConfig, JobState
from .backend import Backend, BackendError, Ended, Lost, NotStarted, backend_factory, make_backends
from .jobdir import (
    CANNOT_START_EXIT,
    CLAIMED_EXIT,
    MACHINE_ERRORS,
    AlreadyStarted,
    JobDir,
    SaidEnd,
    Status,
    disk_trouble,
)
from .outputs import OutputError, describe_output, move_outputs

log = logging.getLogger("muppet.executor")

#: seconds between attempts when a backend cannot tell (controller down, ...)
RETRY_INTERVAL = 5.0
#: seconds between looks at a queued batch job's status file for its start record
START_POLL_INTERVAL = 1.0
#: seconds a local job's start waits before it is reported: a job that ends
#: sooner has its start reported with its end, in one scheduler batch and so
#: one commit, instead of a commit of its start that the commit of its end
#: would wait behind (a chain of short steps; docs/performance.md)
LOCAL_START_REPORT_DELAY = 0.02
#: seconds before a start that found the report channel full is sent again
START_RETRY_INTERVAL = 0.05
#: seconds the scratch directories of succeeded jobs whose end their wrapper
#: said (``SaidEnd``) wait to be removed, together, in one worker thread:
#: after the job is reported, off the way from one job to the next
SCRATCH_REMOVAL_DELAY = 0.05
#: seconds before the first and the longest between two attempts of file work
#: that the machinery failed (moving a succeeded job's outputs; starting a
#: job that was reported started already): as the scheduler's backoff for a
#: failed start (docs/states.md)
TROUBLE_RETRY_FIRST = 1.0
TROUBLE_RETRY_MAX = 60.0

KILLED_REASON = "killed by operator"

_T = TypeVar("_T")


#: what the executor reports to the scheduler
Report = JobStarted | JobFinished | JobNotStarted


async def run(
    receive: trio.MemoryReceiveChannel[StartJob | KillJob | ExecutorSettings],
    send: trio.MemorySendChannel[Report],
    *,
    executors: Mapping[str, ExecutorConfig],
    state_dir: str,
    output_dir: str,
    fence: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run jobs until cancelled.

    Receives ``StartJob``, ``KillJob`` and ``ExecutorSettings``.
    ``StartJob`` is idempotent and doubles as re-attach: a job whose
    directory shows it started already (by a previous daemon) is watched,
    not started again; one that finished while no daemon ran is reported
    at once. A ``StartJob`` for a job already being handled is ignored.
    ``KillJob`` kills a job being started or running and has it reported
    "killed"; for a job not in hand it does nothing.
    ``ExecutorSettings`` (a reload) makes a new backend for each executor
    that is new or whose type or options changed, for the jobs started
    from then on; the jobs in hand keep theirs, and the backend of an
    executor no longer configured stays for the jobs that still name it
    (docs/operations.md, "Reload").

    Sends ``JobStarted`` once a job runs (again after a re-attach) and
    ``JobFinished`` once it ended, with its exit code, reason and log tails;
    or, instead of both, ``JobNotStarted`` with the reason when the machinery
    failed before the command could run (see the module docstring): the job
    then is no longer in hand, and the next StartJob tries it afresh.

    On cancellation (the daemon stops) it stops watching and returns without
    reporting anything more: the jobs go on running and the next daemon's
    StartJob re-attaches to them. When ``receive`` is closed it does the same.

    Fencing: ``fence`` (the daemon's lease, ``Fence.wait_valid`` in
    ``muppet/db/lease.py``) is awaited right before each launch and each
    kill: it returns at once while the lease is fresh, waits while it is
    not, and raises LeaseLost, which ends the daemon, once another daemon
    took it over. So a daemon woken after a pause, or cut off from its
    database, starts and kills nothing before it has renewed its lease.

    Raises ValueError at once when an executor's type is unknown.
    """
    backends = make_backends(executors, state_dir)
    executor = _Executor(backends, send, state_dir, output_dir, fence or _unfenced)
    try:
        async with trio.open_nursery() as nursery:
            executor.nursery = nursery
            nursery.start_soon(executor.report_starts)
            nursery.start_soon(executor.remove_scratch)
            for backend in executor.backends.values():
                executor.maintain(backend)
            async for message in receive:
                if isinstance(message, StartJob):
                    executor.start(message)
                elif isinstance(message, KillJob):
                    executor.kill(message.job_id)
                elif isinstance(message, ExecutorSettings):
                    executor.reconfigure(message.executors)
                else:
                    log.error("executor: unexpected message %r", message)
            nursery.cancel_scope.cancel()
    finally:
        for backend in executor.backends.values():
            _close(backend)


async def _unfenced() -> None:
    """No lease to check (an executor outside a daemon: the tests)."""


def _optional(backend: Backend | None, name: str) -> Callable[[], Any] | None:
    """A backend's optional method ``name`` (``close``, ``maintain``: for
    those that keep something ready between jobs, local its launcher;
    backend.py), or None: not part of the protocol."""
    method: Callable[[], Any] | None = getattr(backend, name, None)
    return method


def _close(backend: Backend) -> None:
    close = _optional(backend, "close")
    if close is not None:
        close()


class _Executor:
    def __init__(
        self,
        backends: dict[str, Backend],
        send: trio.MemorySendChannel[Report],
        state_dir: str,
        output_dir: str,
        fence: Callable[[], Awaitable[None]],
    ) -> None:
        self.fence = fence
        self.backends = backends
        self.send = send
        self.state_dir = state_dir
        self.output_dir = output_dir
        self.host = socket.gethostname()
        self.jobs: dict[int, _Job] = {}
        #: local jobs whose start is to be reported, in the order they were
        #: launched: job id -> (job, batch id, start time, when it is due
        #: by the trio clock); and what wakes ``report_starts`` once one is
        #: added to none
        self.starts_due: dict[int, tuple[_Job, str, float, float]] = {}
        self.starts_added = trio.Event()
        self.nursery: trio.Nursery
        #: executor name -> when (trio clock) its jobs began failing to start
        self.start_trouble: dict[str, float] = {}
        #: the job directories whose scratch ``remove_scratch`` is to remove,
        #: and what wakes it once one is added to none
        self.scratch_due: list[JobDir] = []
        self.scratch_added = trio.Event()

    def start_failed(self, executor: str, reason: str) -> None:
        """A job of ``executor`` could not start: log it if this begins an
        incident (once per incident, not once per job)."""
        if executor not in self.start_trouble:
            self.start_trouble[executor] = trio.current_time()
            log.warning("executor %s: cannot start jobs: %s", executor, reason)

    def start_worked(self, executor: str, attempt_began: float) -> None:
        """A job of ``executor`` started, in an attempt that began at
        ``attempt_began``. Ends the incident only if the attempt began after
        it did: an attempt that was under way when the disk filled may still
        succeed, and must not make the log say that jobs start again."""
        began = self.start_trouble.get(executor)
        if began is not None and attempt_began > began:
            del self.start_trouble[executor]
            log.warning("executor %s: jobs start again after %.0f s", executor, trio.current_time() - began)

    def reconfigure(self, executors: Mapping[str, ExecutorConfig]) -> None:
        """New backends for the executors that are new or changed; ``max_jobs``
        is the scheduler's to keep, so a change of it alone keeps the backend
        (and what it knows of the jobs it runs)."""
        for name, config in executors.items():
            old = self.backends.get(name)
            old_config = getattr(old, "config", None)
            if isinstance(old_config, ExecutorConfig) and (old_config.type, old_config.options) == (
                config.type, config.options,
            ):
                continue
            try:
                self.backends[name] = backend_factory(config.type)(config, self.state_dir)
            except ValueError as error:
                # muppet validate checks the same: not expected after a reload
                log.error("executor %s: kept as it was: %s", name, error)
                continue
            self.maintain(self.backends[name])
            if old is not None:
                # its jobs in hand keep it; what it keeps for new jobs goes
                _close(old)
            log.info("executor %s: %s", name, "changed" if old is not None else "added")

    def maintain(self, backend: Backend) -> None:
        """Run a backend's ``maintain`` task, if it has one; it returns once
        the backend is closed."""
        maintain = _optional(backend, "maintain")
        if maintain is not None:
            self.nursery.start_soon(maintain)

    def report_start_later(self, job: _Job, batch_id: str, started: float) -> None:
        """Have ``report_starts`` report the start of the local job ``job``
        LOCAL_START_REPORT_DELAY from now, unless its end comes first: its
        task takes it out of ``starts_due`` once the wrapper has ended, and
        ``_conclude`` reports the start just before the end."""
        if not self.starts_due:
            self.starts_added.set()  # the task waits without a deadline
        self.starts_due[job.id] = (job, batch_id, started, trio.current_time() + LOCAL_START_REPORT_DELAY)

    async def report_starts(self) -> None:
        """Report the starts of ``starts_due`` as they fall due: one task
        for every local job, where a task and a timer for each cost the
        daemon about 80 us of CPU per job (docs/performance.md)."""
        while True:
            self.starts_added = trio.Event()
            now = trio.current_time()
            wake = math.inf
            for job, batch_id, started, due in list(self.starts_due.values()):
                if due > now:
                    wake = due  # the rest fall due later: added in order
                    break
                if job.report_start_now(batch_id, started):
                    del self.starts_due[job.id]
                else:
                    # the channel is full (the daemon's is not: the tests'
                    # may be): a moment later
                    wake = now + START_RETRY_INTERVAL
                    break
            with trio.move_on_at(wake):
                await self.starts_added.wait()

    def remove_scratch_soon(self, job_dir: JobDir) -> None:
        """Have ``remove_scratch`` remove the scratch directory of the
        reported success ``job_dir``."""
        if not self.scratch_due:
            self.scratch_added.set()
        self.scratch_due.append(job_dir)

    async def remove_scratch(self) -> None:
        """Remove the scratch directories of ``remove_scratch_soon``, those
        that came within SCRATCH_REMOVAL_DELAY in one worker thread. One
        left when the daemon stops goes with its job directory
        (``keep_job_dirs``, docs/operations.md)."""
        while True:
            await self.scratch_added.wait()
            await trio.sleep(SCRATCH_REMOVAL_DELAY)
            due, self.scratch_due = self.scratch_due, []
            self.scratch_added = trio.Event()
            await trio.to_thread.run_sync(_remove_scratch, due)

    def start(self, spec: StartJob) -> None:
        if spec.job.id in self.jobs:
            return
        job = _Job(self, spec)
        self.jobs[spec.job.id] = job
        self.nursery.start_soon(job.run, name=f"job {spec.job.id}")

    def kill(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.request_kill()


class _Job:
    """One job in hand, from StartJob to JobFinished."""

    def __init__(self, executor: _Executor, spec: StartJob) -> None:
        self.executor = executor
        self.spec = spec
        self.job_dir = JobDir(executor.state_dir, spec.job.id)
        self.backend: Backend | None = executor.backends.get(spec.step.executor)
        self.batch_id: str | None = None
        self.kill_requested = False
        #: JobStarted was sent for this batch id
        self.reported_start: str | None = None
        #: the outputs moved into place, once the job succeeded
        self.moved: tuple[MovedOutput, ...] = ()

    @property
    def id(self) -> int:
        return self.spec.job.id

    def request_kill(self) -> None:
        if self.kill_requested:
            return
        self.kill_requested = True
        if self.batch_id is not None:
            self.executor.nursery.start_soon(self._kill, self.batch_id)
        # else: not launched yet; ``_drive`` looks at the flag before and
        # after launching

    async def _kill(self, batch_id: str) -> None:
        assert self.backend is not None
        await self.executor.fence()
        try:
            await self.backend.kill(self.job_dir, batch_id)
        except Exception:
            log.exception("job %d: kill %s failed", self.id, batch_id)

    async def run(self) -> None:
        try:
            await self.executor.send.send(await self._report())
        finally:
            self.executor.jobs.pop(self.id, None)

    async def _report(self) -> JobFinished | JobNotStarted:
        """What to tell the scheduler at the end: JobFinished, or
        JobNotStarted when the job could not start and was never reported
        started."""
        attempts = 0
        while True:
            began = trio.current_time()
            try:
                return await self._drive(began)
            except NotStarted as error:
                reason = str(error)
            except LeaseLost:
                raise  # not the job's: the daemon ends (its fence)
            except Exception as error:
                log.exception("job %d: executor error", self.id)
                return self._finished(None, "failed", f"executor error: {type(error).__name__}: {error}", ("", ""))
            self.executor.start_failed(self.spec.step.executor, reason)
            if self.reported_start is None:
                return JobNotStarted(self.id, reason)
            # JobStarted went out already: a local wrapper is reported once it
            # has run, and this one found the job claimed by another wrapper
            # that withdrew its claim since. The scheduler holds the job
            # running, where JobNotStarted does not apply: try again here.
            attempts += 1
            delay = min(TROUBLE_RETRY_FIRST * 2 ** (attempts - 1), TROUBLE_RETRY_MAX)
            log.info("job %d: not started: %s; trying again in %.0f s", self.id, reason, delay)
            await trio.sleep(delay)

    async def _drive(self, began: float) -> JobFinished:
        """Start or re-attach the job and follow it to its end. Raises
        NotStarted when the machinery failed before the command ran."""
        if self.backend is None:
            return self._finished(
                None, "failed", f"step {self.spec.job.pipeline}.{self.spec.step.name}: "
                f"executor {self.spec.step.executor!r} is not configured", ("", "")
            )
        # A live wrapper first: for a fresh job this is a look-up in memory
        # (local) and saves reading the status file separately.
        batch_id = await self._retrying("find", self.backend.find, self.job_dir, None)
        if batch_id is not None:
            status = await trio.to_thread.run_sync(self.job_dir.read_status)
            return await self._watch(batch_id, status)
        if self.kill_requested:
            return self._finished(None, "killed", KILLED_REASON, ("", ""))
        try:
            batch_id = await self._launch()
        except AlreadyStarted as error:
            status = error.status
        except BackendError as error:
            # the job's own request refused (a queue, a resource)
            return self._finished(None, "failed", f"cannot start: {error}", ("", ""))
        except ValueError as error:
            # the job's own definition (an environment variable's name)
            return self._finished(None, "failed", f"cannot prepare {self.job_dir.root}: {error}", ("", ""))
        except OSError as error:
            # Every OSError of preparing is the machine's: the job gives the
            # directory only its id and the wrapper's text (ENOSPC, EDQUOT,
            # EIO, EROFS, EMFILE, ENFILE, EACCES on a mis-set state_dir, ...).
            raise NotStarted(f"cannot prepare {self.job_dir.root}: {error}") from None
        else:
            self.executor.start_worked(self.spec.step.executor, began)
            return await self._watch(batch_id, None)
        if not status.has_ended:
            batch_id = await self._retrying("find", self.backend.find, self.job_dir, status)
            if batch_id is not None:
                return await self._watch(batch_id, status)
        # Ended, or started and gone. _conclude reads the status again: a
        # wrapper that wrote its end record since is not taken for lost.
        return await self._conclude()

    async def _launch(self) -> str:
        """Prepare the job directory and launch; the batch id. Raises
        AlreadyStarted (nothing done) when the job has a status file after all."""
        assert self.backend is not None
        # the lease is fresh, by the monotonic clock, right before the job
        # is handed over (docs/operations.md, "Running a standby")
        await self.executor.fence()
        if not getattr(self.backend, "launch_prepares", False):
            await trio.to_thread.run_sync(self.job_dir.prepare, self.spec, self.backend.batch_id_variable)
        return await self.backend.launch(self.job_dir, self.spec)

    async def _watch(self, batch_id: str, status: Status | None) -> JobFinished:
        """Follow a launched or re-attached job to its end; on to the batch
        job that holds the claim when ours found the job claimed."""
        assert self.backend is not None
        while True:
            self.batch_id = batch_id
            if self.kill_requested:
                self.executor.nursery.start_soon(self._kill, batch_id)
            if status is not None and status.started is not None:
                await self._report_start(status.batch_id or batch_id, status.host, status.started)
            if self.reported_start is not None:
                exit_status, lost, said = await self._wait(batch_id)
            elif self.backend.runs_at_launch:
                # reported soon by the executor's one task for all of them,
                # unless its end comes first (``report_starts``)
                self.executor.report_start_later(self, batch_id, time.time())
                try:
                    exit_status, lost, said = await self._wait(batch_id)
                finally:
                    self.executor.starts_due.pop(self.id, None)
            else:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_for_start, batch_id)
                    exit_status, lost, said = await self._wait(batch_id)
                    nursery.cancel_scope.cancel()
            if lost is not None:
                return await self._conclude(lost=lost, batch_id=batch_id)
            if said is not None and said.quiet and not self.spec.step.outputs and not self.kill_requested:
                # its end record, as the wrapper said it, and no log to read
                # or output to move: nothing to read in a worker thread
                if said.status.exit_code == 0:
                    self.executor.remove_scratch_soon(self.job_dir)
                return await self._conclude(batch_id=batch_id, finished=(said.status, ("", ""), None))
            # the status and, for a job that has ended (the common case), its
            # tails and outputs in the same worker thread: one hop, not two
            status, finished = await trio.to_thread.run_sync(self._status_and_files)
            if finished is not None:
                return await self._conclude(batch_id=batch_id, finished=finished)
            if _claimed_by_another(batch_id, status, exit_status):
                assert status is not None
                claimant = await self._retrying("find", self.backend.find, self.job_dir, status)
                if claimant is not None and claimant != batch_id:
                    log.info("job %d: %s found the job claimed by %s; following that one", self.id, batch_id, claimant)
                    batch_id = claimant
                    continue
            if _never_ran(status, exit_status):
                await trio.to_thread.run_sync(self.job_dir.forget_batch_id)
                raise NotStarted(await self._never_ran_words(batch_id, exit_status))
            return await self._conclude(batch_id=batch_id, known=status)

    async def _never_ran_words(self, batch_id: str, exit_status: int | None) -> str:
        if exit_status == CLAIMED_EXIT:
            return (
                f"{batch_id} found the job claimed (exit {CLAIMED_EXIT}), and the claim has been withdrawn "
                "since: its wrapper could not write its status file"
            )
        trouble = await trio.to_thread.run_sync(disk_trouble, self.job_dir.root)
        return (
            f"the wrapper ({batch_id}) could not open the output files, enter the scratch directory or write "
            f"the status file in {self.job_dir.root} (exit {CANNOT_START_EXIT})" + (f": {trouble}" if trouble else "")
        )

    async def _wait(self, batch_id: str) -> tuple[int | None, str | None, SaidEnd | None]:
        """The backend's ``wait``: the wrapper's exit status if known, the
        reason when the job was lost, and what the wrapper said of its end
        as it exited, if anything (local jobs: ``LocalBackend.said_end``)."""
        assert self.backend is not None
        try:
            exit_status = await self._retrying("wait", self.backend.wait, self.job_dir, batch_id)
        except Lost as error:
            return None, str(error) if isinstance(error, Ended) else f"lost: {error}", None
        said_end = getattr(self.backend, "said_end", None)
        return exit_status, None, said_end(batch_id) if said_end is not None else None

    def report_start_now(self, batch_id: str, started: float) -> bool:
        """Send the start of a local job that runs still (``report_starts``),
        without a checkpoint, so that its end cannot come in between. False
        when the channel is full (tried again later)."""
        if self.reported_start is not None:
            return True
        try:
            self.executor.send.send_nowait(JobStarted(self.id, batch_id, self.executor.host, started))
        except trio.WouldBlock:
            return False
        self.reported_start = batch_id
        return True

    async def _watch_for_start(self, batch_id: str) -> None:
        """A queued batch job: report JobStarted when its start record shows."""
        while True:
            await trio.sleep(START_POLL_INTERVAL)
            status = await trio.to_thread.run_sync(self.job_dir.read_status)
            if status is not None and status.started is not None:
                # the record names the batch job that holds the claim, which
                # need not be the one we submitted (a duplicate submission)
                await self._report_start(status.batch_id or batch_id, status.host, status.started)
                return

    async def _report_start(self, batch_id: str, host: str, started: float, *, with_end: bool = False) -> None:
        if self.reported_start == batch_id:
            return
        message = JobStarted(self.id, batch_id, host, started)
        # noted once sent: a send cancelled (the job's end came first) sent
        # nothing, and _conclude must still report the start
        if with_end:
            # no checkpoint between this and the JobFinished that follows, so
            # that the scheduler finds both in one batch (one commit)
            try:
                self.executor.send.send_nowait(message)
            except trio.WouldBlock:
                await self.executor.send.send(message)
        else:
            await self.executor.send.send(message)
        self.reported_start = batch_id

    async def _retrying(self, what: str, method: Callable[..., Awaitable[_T]], *args: object) -> _T:
        """A backend call, again every RETRY_INTERVAL while it cannot tell."""
        while True:
            try:
                return await method(*args)
            except Lost:
                raise
            except BackendError as error:
                log.warning("job %d: %s: %s; trying again in %.0f s", self.id, what, error, RETRY_INTERVAL)
            except Exception:
                log.exception("job %d: %s failed; trying again in %.0f s", self.id, what, RETRY_INTERVAL)
            await trio.sleep(RETRY_INTERVAL)

    def _lost_words(self, status: Status | None, batch_id: str | None = None) -> str:
        if status is None:
            return f"lost: {batch_id or 'the job'} ended without running the wrapper (no status file)"
        if status.state == "claimed":
            return "lost: the wrapper claimed the job but died before writing its start record"
        if self.backend is not None and self.backend.runs_at_launch and status.host and status.host not in (
            self.executor.host, socket.gethostname(),
        ):
            # a local job of a daemon on another host (a standby took over
            # from it): its process cannot be looked for from here
            # (docs/operations.md, "Running a standby")
            return (f"lost: wrapper pid {status.pid} ran on {status.host}, not on this host "
                    f"({self.executor.host}): a local job cannot be re-attached from another host")
        return f"lost: wrapper pid {status.pid} on {status.host} ended without writing an end record"

    async def _conclude(
        self,
        lost: str | None = None,
        batch_id: str | None = None,
        finished: tuple[Status | None, tuple[str, str], str | None] | None = None,
        known: Status | None = None,
    ) -> JobFinished:
        """Read the status and the tails, move the outputs of a success, build
        the report (all the file work in one worker thread; done already when
        ``finished`` is given, ``_status_and_files``). ``known``: the status
        as last read, if any."""
        if finished is None:
            # the start first: the file work may wait long for space
            # (_finish_files_retrying), and the job has run
            await self._report_recorded_start(known, batch_id)
            finished = await self._finish_files_retrying(lost is None)
        status, tails, problem = finished
        await self._report_recorded_start(status, batch_id)
        if self.kill_requested:
            return self._finished(status, "killed", KILLED_REASON, tails)
        if lost is not None or status is None or not status.has_ended:
            return self._finished(status, "failed", lost or self._lost_words(status, batch_id), tails)
        if status.exit_code != 0:
            return self._finished(status, "failed", f"exit code {status.exit_code}", tails)
        if problem is not None:
            return self._finished(status, "failed", problem, tails)
        return attrs.evolve(self._finished(status, "succeeded", "", tails), outputs=self.moved)

    async def _report_recorded_start(self, status: Status | None, batch_id: str | None) -> None:
        """Report the start the status file records, if not reported yet: a
        job that ran while no daemon watched, or a local one that ended
        before its start was reported (LOCAL_START_REPORT_DELAY)."""
        if status is None or status.started is None or self.reported_start is not None:
            return
        batch_id = status.batch_id or batch_id or self.spec.job.batch_id or str(status.pid)
        if self.spec.job.state is not JobState.RUNNING or self.spec.job.batch_id != batch_id:
            await self._report_start(batch_id, status.host, status.started, with_end=status.has_ended)

    async def _finish_files_retrying(self, may_move: bool) -> tuple[Status | None, tuple[str, str], str | None]:
        """``_finish_files`` in a worker thread, again after a backoff while
        the file systems fail (``MACHINE_ERRORS``: a full output_dir, an I/O
        error): the command has run, and its outputs wait in the scratch
        directory; a full disk fails no job (MUPPET design)."""
        attempts = 0
        while True:
            try:
                return await trio.to_thread.run_sync(self._finish_files, may_move)
            except OSError as error:
                if error.errno not in MACHINE_ERRORS:
                    raise
                attempts += 1
                delay = min(TROUBLE_RETRY_FIRST * 2 ** (attempts - 1), TROUBLE_RETRY_MAX)
                if attempts == 1:
                    log.warning("job %d: cannot finish (its status, log tails or outputs): %s; trying again "
                                "until it works", self.id, error)
                await trio.sleep(delay)

    def _status_and_files(self) -> tuple[Status | None, tuple[Status | None, tuple[str, str], str | None] | None]:
        """The status file; and when it has an end record, ``_finish_files``
        done with it, or None when the file systems failed there
        (``MACHINE_ERRORS``: ``_finish_files_retrying`` tries again)."""
        status = self.job_dir.read_status()
        if status is None or not status.has_ended:
            return status, None
        try:
            return status, self._finish_files(True, status)
        except OSError as error:
            if error.errno not in MACHINE_ERRORS:
                raise
            return status, None

    def _finish_files(
        self, may_move: bool, status: Status | None = None
    ) -> tuple[Status | None, tuple[str, str], str | None]:
        if status is None or not status.has_ended:
            status = self.job_dir.read_status()
        tails = self.job_dir.read_tails()
        succeeded = status is not None and status.has_ended and status.exit_code == 0
        if not (may_move and succeeded) or self.kill_requested:
            return status, tails, None
        try:
            destinations = move_outputs(
                self.spec.step.outputs,
                self.job_dir.scratch,
                self.executor.output_dir,
                self.spec.reference_time,
                self.spec.job.index,
                plan=self.job_dir.plan,
            )
            # hashed here, in the worker thread, so that the index gets each
            # output with its checksum in the job's own commit
            self.moved = tuple(describe_output(d, self.executor.output_dir) for d in destinations)
        except OutputError as error:
            return status, tails, str(error)
        self.job_dir.remove_scratch()
        return status, tails, None

    def _finished(self, status: Status | None, state: str, reason: str, tails: tuple[str, str]) -> JobFinished:
        ended = status.ended if status is not None and status.ended is not None else time.time()
        return JobFinished(
            job_id=self.id,
            state=state,
            exit_code=status.exit_code if status is not None else None,
            reason=reason,
            started_at=status.started if status is not None else None,
            ended_at=ended,
            stdout_tail=tails[0],
            stderr_tail=tails[1],
        )



def _remove_scratch(job_dirs: list[JobDir]) -> None:
    for job_dir in job_dirs:
        job_dir.remove_scratch()


def _claimed_by_another(batch_id: str, status: Status | None, exit_status: int | None) -> bool:
    """Did the wrapper we watched find the job claimed by another one that
    has not ended? Its record names the batch job that holds the claim; a
    record without that field (local wrappers, older ones) only the claimed
    exit code tells."""
    if status is None or status.has_ended:
        return False
    if status.batch_id is not None:
        return status.batch_id != batch_id
    return exit_status == CLAIMED_EXIT


def _never_ran(status: Status | None, exit_status: int | None) -> bool:
    """The command did not run and nobody holds the claim: the wrapper could
    not set the job up (it withdrew its claim), or found it claimed by one
    that has withdrawn since."""
    return status is None and exit_status in (CANNOT_START_EXIT, CLAIMED_EXIT)
