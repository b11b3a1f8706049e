"""The executor task: runs the jobs the scheduler hands it, reports how they went.

It is the common part of every executor type: it prepares the job directory
(``jobdir.py``), lets the job's backend (``local.py``, ``gridengine.py``,
``slurm.py``) start and watch the wrapper, then reads the wrapper's status
file, the log tails and moves the outputs (``outputs.py``). The status file,
not the backend, says how a job ended; so a job that ended while no daemon
watched is reported with its real exit code.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import attrs
import trio

from ..messages import JobFinished, JobStarted, KillJob, MovedOutput, StartJob
from ..model import ExecutorConfig, JobState
from .backend import Backend, BackendError, Ended, Lost, make_backends
from .jobdir import AlreadyStarted, JobDir, Status
from .outputs import OutputError, describe_output, move_outputs

log = logging.getLogger("muppet.executor")

#: seconds between attempts when a backend cannot tell (controller down, ...)
RETRY_INTERVAL = 5.0
#: seconds between looks at a queued batch job's status file for its start record
START_POLL_INTERVAL = 1.0

KILLED_REASON = "killed by operator"

_T = TypeVar("_T")


async def run(
    receive: trio.MemoryReceiveChannel[StartJob | KillJob],
    send: trio.MemorySendChannel[JobStarted | JobFinished],
    *,
    executors: Mapping[str, ExecutorConfig],
    state_dir: str,
    output_dir: str,
) -> None:
    """Run jobs until cancelled.

    Receives ``StartJob`` and ``KillJob``. ``StartJob`` is idempotent and
    doubles as re-attach: a job whose directory shows it started already (by
    a previous daemon) is watched, not started again; one that finished while
    no daemon ran is reported at once. A ``StartJob`` for a job already being
    handled is ignored. ``KillJob`` kills a job being started or running and
    has it reported "killed"; for a job not in hand it does nothing.

    Sends ``JobStarted`` once a job runs (again after a re-attach) and
    ``JobFinished`` once it ended, with its exit code, reason and log tails.

    On cancellation (the daemon stops) it stops watching and returns without
    reporting anything more: the jobs go on running and the next daemon's
    StartJob re-attaches to them. When ``receive`` is closed it does the same.

    Raises ValueError at once when an executor's type is unknown.
    """
    backends = make_backends(executors, state_dir)
    executor = _Executor(backends, send, state_dir, output_dir)
    async with trio.open_nursery() as nursery:
        executor.nursery = nursery
        async for message in receive:
            if isinstance(message, StartJob):
                executor.start(message)
            elif isinstance(message, KillJob):
                executor.kill(message.job_id)
            else:
                log.error("executor: unexpected message %r", message)
        nursery.cancel_scope.cancel()


class _Executor:
    def __init__(
        self,
        backends: dict[str, Backend],
        send: trio.MemorySendChannel[JobStarted | JobFinished],
        state_dir: str,
        output_dir: str,
    ) -> None:
        self.backends = backends
        self.send = send
        self.state_dir = state_dir
        self.output_dir = output_dir
        self.host = socket.gethostname()
        self.jobs: dict[int, _Job] = {}
        self.nursery: trio.Nursery

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
        try:
            await self.backend.kill(self.job_dir, batch_id)
        except Exception:
            log.exception("job %d: kill %s failed", self.id, batch_id)

    async def run(self) -> None:
        try:
            try:
                finished = await self._drive()
            except Exception as error:
                log.exception("job %d: executor error", self.id)
                finished = self._finished(
                    None, "failed", f"executor error: {type(error).__name__}: {error}", ("", "")
                )
            await self.executor.send.send(finished)
        finally:
            self.executor.jobs.pop(self.id, None)

    async def _drive(self) -> JobFinished:
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
            return self._finished(None, "failed", f"cannot start: {error}", ("", ""))
        except (OSError, ValueError) as error:
            return self._finished(None, "failed", f"cannot prepare {self.job_dir.root}: {error}", ("", ""))
        else:
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
        if not getattr(self.backend, "launch_prepares", False):
            await trio.to_thread.run_sync(self.job_dir.prepare, self.spec)
        return await self.backend.launch(self.job_dir, self.spec)

    async def _watch(self, batch_id: str, status: Status | None) -> JobFinished:
        """Follow a launched or re-attached job to its end."""
        assert self.backend is not None
        self.batch_id = batch_id
        if self.kill_requested:
            self.executor.nursery.start_soon(self._kill, batch_id)
        if status is not None and status.started is not None:
            await self._report_start(batch_id, status.host, status.started)
        elif self.reported_start is None and self.backend.runs_at_launch:
            await self._report_start(batch_id, self.executor.host, time.time())
        lost = None
        async with trio.open_nursery() as nursery:
            if self.reported_start is None:
                nursery.start_soon(self._watch_for_start, batch_id)
            try:
                await self._retrying("wait", self.backend.wait, self.job_dir, batch_id)
            except Lost as error:
                lost = str(error) if isinstance(error, Ended) else f"lost: {error}"
            nursery.cancel_scope.cancel()
        return await self._conclude(lost=lost, batch_id=batch_id)

    async def _watch_for_start(self, batch_id: str) -> None:
        """A queued batch job: report JobStarted when its start record shows."""
        while True:
            await trio.sleep(START_POLL_INTERVAL)
            status = await trio.to_thread.run_sync(self.job_dir.read_status)
            if status is not None and status.started is not None:
                await self._report_start(batch_id, status.host, status.started)
                return

    async def _report_start(self, batch_id: str, host: str, started: float) -> None:
        if self.reported_start == batch_id:
            return
        self.reported_start = batch_id
        await self.executor.send.send(JobStarted(self.id, batch_id, host, started))

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
        return f"lost: wrapper pid {status.pid} on {status.host} ended without writing an end record"

    async def _conclude(self, lost: str | None = None, batch_id: str | None = None) -> JobFinished:
        """Read the status and the tails, move the outputs of a success, build
        the report (all the file work in one worker thread)."""
        status, tails, problem = await trio.to_thread.run_sync(self._finish_files, lost is None)
        if status is not None and status.started is not None and self.reported_start is None:
            # a job that ran while no daemon watched: let its host and start be known
            batch_id = batch_id or self.spec.job.batch_id or str(status.pid)
            if self.spec.job.state is not JobState.RUNNING or self.spec.job.batch_id != batch_id:
                await self._report_start(batch_id, status.host, status.started)
        if self.kill_requested:
            return self._finished(status, "killed", KILLED_REASON, tails)
        if lost is not None or status is None or not status.has_ended:
            return self._finished(status, "failed", lost or self._lost_words(status, batch_id), tails)
        if status.exit_code != 0:
            return self._finished(status, "failed", f"exit code {status.exit_code}", tails)
        if problem is not None:
            return self._finished(status, "failed", problem, tails)
        return attrs.evolve(self._finished(status, "succeeded", "", tails), outputs=self.moved)

    def _finish_files(self, may_move: bool) -> tuple[Status | None, tuple[str, str], str | None]:
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

