"""The batch backend: what the Grid Engine and Slurm executors share.

``BatchBackend`` submits, writes the batch id into the job directory before
``launch`` returns, waits through the shared poller, re-attaches by batch id
and job name (and to the batch job whose wrapper holds the claim, which its
status record names), kills, and turns a job the system ended into ``Lost``
with the system's reason. A submission the system did not take because it
could not be reached raises ``NotStarted`` (the job waits, not the job's
failure); one that may have gone through (a timeout) is retried here, after
looking for it in the queue. A subclass (``gridengine.py``, ``slurm.py``)
says how to build each command and read its answer.

Beside it: ``batch_results.py`` holds the parsed shapes of the commands'
output, ``batch_poller.py`` runs the commands and the batched queue listing,
and ``muppet/resources.py`` parses the resources a job asks for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable
from typing import TypeVar

import trio

from ..messages import StartJob
from ..model import ExecutorConfig
from ..resources import ResourceError, Resources, batch_setting, merge_resources
from .backend import BackendError, Ended, Lost, NotStarted
from .batch_poller import BatchPoller, CommandResult, backoff, run_command
from .batch_results import BatchEnd, Phase, QueueEntry, SubmitOutcome, Unparseable, clean_message
from .jobdir import CANNOT_START_EXIT, CLAIMED_EXIT, JobDir, Status

log = logging.getLogger(__name__)


# --- the shared backend -------------------------------------------------------------


class BatchBackend:
    """The part of the Grid Engine and Slurm backends that is the same for both
    (see ``muppet/executor/backend.py`` for the interface).

    A subclass says how to build the submit command, read its answer, list the
    queue, read a finished job's record, and kill; this class submits with
    retries, writes the batch id into the job directory before ``launch``
    returns, waits through the shared poller, re-attaches by batch id and job
    name, and turns a job the system ended into ``Lost`` with the system's
    reason.
    """

    #: batch jobs may queue: JobStarted comes from the wrapper's start record
    runs_at_launch = False
    #: the variable holding the job's id in its environment (a subclass's)
    batch_id_variable: str | None = None
    #: "Grid Engine" / "Slurm", for messages
    system = "batch system"
    #: commands may take a while when the controller is unreachable (Slurm
    #: retries for about 10 s before giving up)
    command_timeout = 60.0

    def __init__(self, config: ExecutorConfig, state_dir: str) -> None:
        where = f"[executors.{config.name}]"
        self.config = config
        self.state_dir = state_dir
        options = config.options
        self.poll_interval = batch_setting(options, "poll_interval", 5.0, where=where)
        self.submit_timeout = batch_setting(options, "submit_timeout", 60.0, where=where)
        self.max_submit_backoff = batch_setting(options, "max_submit_backoff", 300.0, where=where)
        # a bad executor-level resource is a configuration error: say so at start
        merge_resources(options, {}, where=where)
        self.poller = BatchPoller(f"{where} ({self.system})", self._list, self.poll_interval)
        # a few submit commands at a time: 100 qsub processes at once only
        # queue up at the qmaster and starve the daemon's own loop of CPU
        self._submit_limiter = trio.CapacityLimiter(4)
        #: how many submit commands ran (tests and the benchmark read it)
        self.submissions = 0

    # -- what a subclass provides ---------------------------------------------------

    def submit_argv(self, job_dir: JobDir, resources: Resources) -> list[str]:
        raise NotImplementedError

    def parse_submit(self, result: CommandResult) -> SubmitOutcome:
        raise NotImplementedError

    def list_argv(self) -> list[str]:
        raise NotImplementedError

    def parse_listing(self, text: str) -> dict[str, QueueEntry] | Unparseable:
        raise NotImplementedError

    async def ended(self, batch_id: str, name: str) -> BatchEnd | Unparseable | None:
        """The system's record of a job that has left the queue (None: none yet)."""
        raise NotImplementedError

    def kill_argv(self, batch_id: str) -> list[str]:
        raise NotImplementedError

    async def error_reason(self, batch_id: str) -> str:
        """Why the system holds the job in an error state (Phase.ERROR)."""
        return ""

    # -- commands ---------------------------------------------------------------------

    async def _run(self, argv: list[str], timeout: float | None = None) -> CommandResult:  # noqa: ASYNC109
        # the timeout becomes part of the result, as in run_command
        return await run_command(argv, timeout=timeout or self.command_timeout)

    async def _list(self) -> dict[str, QueueEntry] | Unparseable | CommandResult:
        result = await self._run(self.list_argv())
        if result.returncode != 0:
            return result
        return self.parse_listing(result.stdout)

    async def _ours(self, batch_id: str, name: str) -> QueueEntry | None:
        """The job's entry in a fresh listing, if it is ours (same name) and has
        not ended."""
        entry = (await self.poller.next_listing()).get(batch_id)
        if entry is None or entry.name != name or entry.phase is Phase.DONE:
            return None
        return entry

    async def _find_by_name(self, name: str) -> str | None:
        listing = await self.poller.next_listing()
        found = [e for e in listing.values() if e.name == name and e.phase is not Phase.DONE]
        if not found:
            return None
        # two live jobs of one name can only come from a submit that timed out
        # yet went through; the wrapper's claim runs only one of them
        return max(found, key=lambda e: _id_key(e.batch_id)).batch_id

    # -- the Backend interface ------------------------------------------------------------

    async def launch(self, job_dir: JobDir, spec: StartJob) -> str:
        where = f"pipeline {spec.job.pipeline}, step {spec.job.step} (executor {self.config.name})"
        try:
            resources = merge_resources(self.config.options, spec.step.resources, where=where)
            argv = self.submit_argv(job_dir, resources)
        except ResourceError as error:
            raise BackendError(str(error)) from None
        attempt = 0
        while True:
            async with self._submit_limiter:
                self.submissions += 1
                result = await self._run(argv, timeout=self.submit_timeout)
            outcome = self.parse_submit(result)
            if outcome.ok:
                # recorded before launch returns, so that a restarted daemon
                # finds the job by id whenever the scheduler saw it submitted
                await self._record(job_dir, outcome.batch_id)
                self.poller.poke()
                return outcome.batch_id
            if outcome.permanent:
                raise BackendError(f"{self.system} refused job {job_dir.name}: {outcome.error}")
            if not outcome.uncertain:
                # The system did not take it (the controller is down or out of
                # reach): not the job's failure, and nothing of it is queued.
                # Without its wrapper a later ``find`` knows that at once,
                # instead of waiting for a queue listing the controller cannot
                # give (MUPPET design: the job waits with the reason).
                await trio.to_thread.run_sync(job_dir.remove_wrapper)
                raise NotStarted(f"{self.system} did not take {job_dir.name}: {outcome.error}")
            # A timeout, or an answer without an id: the job may be queued.
            attempt += 1
            delay = backoff(attempt, cap=self.max_submit_backoff)
            log.warning(
                "%s: submitting %s failed (attempt %d, retrying in %.0f s): %s",
                self.config.name, job_dir.name, attempt, delay, outcome.error,
            )
            await trio.sleep(delay)
            # a submit that timed out (or printed no id) may have gone through
            # all the same: adopt that job rather than submit a second one
            # (while the queue cannot be listed either, this waits for it)
            adopted = await self._find_by_name(job_dir.name)
            if adopted:
                log.warning("%s: %s was submitted after all, as %s", self.config.name, job_dir.name, adopted)
                await self._record(job_dir, adopted)
                return adopted

    async def _record(self, job_dir: JobDir, batch_id: str) -> None:
        """``write_batch_id``, for a job that is queued: when the file cannot
        be written (a full disk), the job is not lost for that. It is watched
        by the id in memory, its wrapper's records name it, and after a
        restart ``find`` looks for it by name."""
        try:
            await trio.to_thread.run_sync(job_dir.write_batch_id, batch_id)
        except OSError as error:
            log.warning(
                "%s: %s is %s job %s, but its id cannot be recorded (%s); a restarted daemon "
                "finds it by its name", self.config.name, job_dir.name, self.system, batch_id, error,
            )

    async def wait(self, job_dir: JobDir, batch_id: str) -> int | None:
        name = job_dir.name
        last: QueueEntry | None = None
        while True:
            listing = await self.poller.next_listing()
            entry = listing.get(batch_id)
            if entry is None or entry.name != name or entry.phase is Phase.DONE:
                break
            last = entry
            if entry.phase is Phase.ERROR:
                reason = await self.error_reason(batch_id)
                await self._run(self.kill_argv(batch_id))
                raise Ended(
                    f"{self.system} put job {batch_id} in error state {entry.state}"
                    + (f": {reason}" if reason else "")
                )
        return await self._explain_end(
            job_dir, batch_id, last_seen_pending=last is not None and last.phase is Phase.PENDING
        )

    async def _explain_end(self, job_dir: JobDir, batch_id: str, *, last_seen_pending: bool = False) -> int | None:
        """The job has left the queue. Return when the wrapper's end record
        tells the story, when the status file shows another batch job holding
        the claim (the executor follows that one), or when the system says
        the wrapper exited with its claimed or cannot-start code (the
        returned exit status; the executor decides). Raise Lost with the
        system's reason when the system ended the job (a limit, qdel/scancel,
        a node failure) or the wrapper left no end record."""
        name = job_dir.name
        end: BatchEnd | Unparseable | None = None
        status = None
        # The accounting record lags behind the queue: tens of ms with
        # accounting_flush_time 0, up to flush_time (15 s by default) on a
        # stock Grid Engine; a busy shared file system may delay the status
        # file as well. A job removed while it was queued gets no record at
        # all on Grid Engine: do not wait long for one.
        patience = 3.0 if last_seen_pending else max(30.0, 3 * self.poll_interval)
        deadline = trio.current_time() + patience
        delay = 0.05
        while True:
            status = await trio.to_thread.run_sync(job_dir.read_status)
            if status is not None and status.has_ended and (status.exit_code or 0) < 128:
                # the command ended on its own: no need to ask the system
                # (qacct reads the whole accounting file on every call)
                return None
            if status is not None and status.batch_id is not None and status.batch_id != batch_id:
                # another batch job of this job holds the claim (a duplicate
                # submission): this one found it claimed and ran nothing
                return None
            end = await self.ended(batch_id, name)
            if isinstance(end, BatchEnd) or trio.current_time() > deadline:
                break
            await trio.sleep(delay)
            delay = min(1.0, delay * 2)
        if isinstance(end, BatchEnd) and end.killed:
            raise Ended(end.killed)
        if status is not None and status.has_ended:
            return None
        if isinstance(end, BatchEnd) and end.exit_code in (CLAIMED_EXIT, CANNOT_START_EXIT) and (
            status is None or status.batch_id is None
        ):
            # the wrapper's own words: it found the job claimed, or could not
            # set it up (and withdrew its claim); the command did not run here
            return end.exit_code
        if isinstance(end, BatchEnd):
            code = f"signal {end.signal}" if end.signal else f"exit status {end.exit_code}"
            raise Lost(
                f"{self.system} job {batch_id} ended ({end.state}, {code}) without the wrapper's end record"
            )
        if status is None and last_seen_pending:
            raise Lost(f"{self.system} job {batch_id} was removed from the queue before it started")
        raise Lost(f"{self.system} job {batch_id} left the queue with no end record and no accounting record")

    async def find(self, job_dir: JobDir, status: Status | None) -> str | None:
        name = job_dir.name
        recorded, prepared = await trio.to_thread.run_sync(_recorded, job_dir)
        if not prepared:
            # no wrapper yet: nothing of this job was ever submitted
            return None
        if status is None:
            status = await trio.to_thread.run_sync(job_dir.read_status)
        if status is not None and status.batch_id is not None:
            # the wrapper's record names the batch job that holds the claim:
            # it ran (or runs) under that id, whichever one we recorded (a
            # duplicate submission); wait() finds out how it ends
            if status.batch_id != recorded:
                await self._record(job_dir, status.batch_id)
            return status.batch_id
        if recorded and status is not None:
            # it ran (or runs) under this id: wait() finds out how it ends
            return recorded
        try:
            listing = await _within(self.poller.next_listing(), 3 * self.command_timeout)
        except TimeoutError:
            raise BackendError(f"cannot list the {self.system} queue to re-attach {name}") from None
        if recorded:
            entry = listing.get(recorded)
            if entry is not None and entry.name == name:
                return recorded
            if entry is None:
                # submitted, never started, no longer queued: removed by hand,
                # or ended by the system before the wrapper could run
                end = await self.ended(recorded, name)
                if isinstance(end, BatchEnd):
                    return recorded
        # the daemon died between the submit and recording the id
        found = [e for e in listing.values() if e.name == name and e.phase is not Phase.DONE]
        if found:
            adopted = max(found, key=lambda e: _id_key(e.batch_id)).batch_id
            log.warning("%s: adopting %s job %s named %s", self.config.name, self.system, adopted, name)
            await self._record(job_dir, adopted)
            return adopted
        return None

    async def kill(self, job_dir: JobDir, batch_id: str) -> None:
        # a reused id may belong to another job by now: only kill our own
        entry = await self._ours(batch_id, job_dir.name)
        if entry is None:
            return
        result = await self._run(self.kill_argv(batch_id))
        self.poller.poke()
        if result.returncode != 0 and await self._ours(batch_id, job_dir.name) is not None:
            raise BackendError(f"cannot kill {self.system} job {batch_id}: {clean_message(result.text)}")


def _recorded(job_dir: JobDir) -> tuple[str | None, bool]:
    return job_dir.read_batch_id(), os.path.exists(job_dir.wrapper)


def _id_key(batch_id: str) -> tuple[int, str]:
    head = batch_id.split("_")[0].split(".")[0]
    return (int(head) if head.isdigit() else -1, batch_id)


_T = TypeVar("_T")


async def _within(awaitable: Awaitable[_T], seconds: float) -> _T:
    with trio.fail_after(seconds):
        return await awaitable
