"""What the Grid Engine and Slurm executors share.

The parsed shapes of the batch systems' command output (``QueueEntry``,
``SubmitOutcome``, ``BatchEnd``, ``Unparseable``), the resource options and
their merging (executor-level, then the step's overrides), the job name that
encodes a MUPPET job id, running a batch command without blocking the loop,
the batched poller (one ``qstat``/``squeue`` call per poll interval for all
waiting jobs), and ``BatchBackend``: submission with retries and backoff,
waiting, re-attaching by batch id and job name, killing.

Parsers never raise on surprising output: they return ``Unparseable`` (or
leave a field None), and the caller treats that like a transient failure of
the batch system (wait, poll again), never as a job's result.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import re
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping

import attrs
import trio

from ..messages import StartJob
from ..model import ExecutorConfig
from .backend import BackendError, Ended, Lost
from .jobdir import JobDir, Status

log = logging.getLogger(__name__)


# --- parsed command output -------------------------------------------------------


class Phase(str, enum.Enum):
    """Where a job stands in the batch system's queue listing."""

    PENDING = "pending"  # queued, held, waiting for resources
    RUNNING = "running"  # started (also suspended, transferring, completing)
    #: the system ended it; Slurm lists finished jobs for MinJobAge seconds
    DONE = "done"
    #: the system will never run it as it stands (Grid Engine "Eqw")
    ERROR = "error"


@attrs.frozen
class QueueEntry:
    batch_id: str
    name: str
    phase: Phase
    #: the system's own state word ("qw", "r", "PENDING", "TIMEOUT", ...)
    state: str
    #: Slurm's reason column; empty for Grid Engine
    reason: str = ""


@attrs.frozen
class Unparseable:
    """Output the parser could not make sense of; ``text`` is kept (shortened)
    for the log."""

    what: str
    text: str

    def __str__(self) -> str:
        return f"unparseable {self.what}: {self.text[:300]!r}"


def unparseable(what: str, text: str) -> Unparseable:
    return Unparseable(what, text[:2000])


@attrs.frozen
class SubmitOutcome:
    """The result of one qsub/sbatch call.

    Exactly one of: ``batch_id`` set (submitted); ``permanent`` (the system
    refused the job as configured: it would refuse it again); otherwise a
    transient failure (controller down, timeout, garbage) worth retrying.
    """

    batch_id: str = ""
    error: str = ""
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.batch_id)


@attrs.frozen
class BatchEnd:
    """How the batch system says a job ended (qacct, scontrol, jobcomp).

    ``killed`` is non-empty when the system (not the job itself) ended it:
    a wall-clock or memory limit, qdel/scancel, a node failure.
    """

    batch_id: str
    name: str = ""
    exit_code: int | None = None
    signal: int | None = None
    killed: str = ""
    host: str = ""
    state: str = ""


# --- submission errors -------------------------------------------------------------

#: words in qsub/sbatch's complaint that mean the job as written can never be
#: accepted; anything else (controller down, timeouts, socket errors, garbage)
#: is retried with backoff
_PERMANENT_PATTERNS = (
    # Grid Engine (Son of Grid Engine 8.1.9 wording, captured in tests/data/batch)
    r"unknown queue",
    r"parallel environment .* does not exist",
    r"unknown resource",
    r"invalid option argument",
    r"unknown option",
    r"job rejected",
    r"no suitable queues",
    r"denied: .* (is not allowed|has no permission)",
    r"can't resolve hostname",
    # Slurm 22.05
    r"invalid partition",
    r"invalid account",
    r"invalid qos",
    r"unrecognized option",
    r"invalid option",
    r"requested node configuration is not available",
    r"memory specification can not be satisfied",
    r"invalid time limit",
    r"time limit .* exceeds",
    r"more processors requested than permitted",
    r"invalid (generic resource|gres|feature|constraint|job|node)",
    r"batch job submission failed: invalid",
    r"access/permission denied",
    r"job violates accounting/qos policy",
)
_PERMANENT = re.compile("|".join(f"(?:{p})" for p in _PERMANENT_PATTERNS), re.IGNORECASE)
#: but these mean the controller was not reached, whatever else the text says
_TRANSIENT = re.compile(
    r"unable to contact|connect failure|unable to send message|commlib error|"
    r"timed? ?out|connection refused|temporarily unavailable|try again|"
    r"socket|communication connection failure|slurm_load|can't contact",
    re.IGNORECASE,
)


def classify_submit_error(text: str) -> bool:
    """True when ``text`` (the command's stderr and stdout) names an error that
    retrying cannot fix."""
    if _TRANSIENT.search(text):
        return False
    return bool(_PERMANENT.search(text))


def clean_message(text: str) -> str:
    """The command's complaint on one line, without its "Exiting." chatter."""
    lines = [ln.strip() for ln in text.splitlines()]
    kept = [ln for ln in lines if ln and ln not in ("Exiting.",) and not ln.startswith("Try \"")]
    return " / ".join(kept)[:1000]


# --- job names -------------------------------------------------------------------

JOB_NAME_PREFIX = "muppet-"
_NAME = re.compile(r"^muppet-(\d+)$")


def job_name(job_id: int) -> str:
    """The batch job name of MUPPET job ``job_id`` (``JobDir.name``): on
    re-attach, a batch id counts as ours only with this name (ids are reused
    after a controller restart)."""
    return f"{JOB_NAME_PREFIX}{job_id}"


def job_id_of(name: str) -> int | None:
    found = _NAME.match(name.strip())
    return int(found.group(1)) if found else None


# --- resources -------------------------------------------------------------------

#: keys the batch executors accept, in [executors.NAME] and in a step's resources
RESOURCE_KEYS = frozenset(
    {
        "queue", "partition", "slots", "cpus", "memory", "walltime",
        "submit_options", "parallel_environment", "account",
    }
)
#: executor-only keys (how MUPPET talks to the system, not what a job needs)
EXECUTOR_KEYS = frozenset({"poll_interval", "submit_timeout", "max_submit_backoff"})


@attrs.frozen
class Resources:
    """What one job asks of the batch system, after merging."""

    queue: str = ""
    cpus: int | None = None
    #: bytes
    memory: int | None = None
    #: seconds
    walltime: int | None = None
    parallel_environment: str = ""
    account: str = ""
    submit_options: tuple[str, ...] = ()


class ResourceError(ValueError):
    """A resource value that cannot be used; the message names the key."""


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_memory(value: object, where: str) -> int:
    """Bytes from ``4G``, ``512M``, ``1.5GiB`` or a whole number of megabytes
    (Slurm's default unit, and what the configuration reference promises)."""
    if isinstance(value, bool):
        raise ResourceError(f"{where}: memory must be a size like '4G', not {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ResourceError(f"{where}: memory must be positive, got {value!r}")
        return value * 1024**2
    if isinstance(value, str):
        found = _MEMORY.match(value)
        if found:
            unit = found.group(2).lower() or "m"
            amount = float(found.group(1)) * _UNITS[unit]
            if amount >= 1:
                return int(amount)
    raise ResourceError(f"{where}: memory must be a size like '4G' or '512M', got {value!r}")


def parse_walltime(value: object, where: str) -> int:
    """Seconds from ``H:MM:SS``, ``MM:SS``, ``D-HH[:MM[:SS]]`` or a whole number
    of seconds. A bare number in a string is refused: Slurm reads it as
    minutes and Grid Engine as seconds."""
    if isinstance(value, bool):
        raise ResourceError(f"{where}: walltime must be 'H:MM:SS' or seconds, not {value!r}")
    if isinstance(value, (int, float)) and value > 0 and math.isfinite(value):
        return int(math.ceil(value))
    if isinstance(value, str):
        text = value.strip()
        days = None
        if "-" in text:
            head, _, text = text.partition("-")
            days = int(head) if head.isdigit() else -1
        parts = text.split(":")
        if days != -1 and all(p.isdigit() for p in parts) and (
            (days is None and len(parts) in (2, 3)) or (days is not None and 1 <= len(parts) <= 3)
        ):
            if days is not None:
                parts = parts + ["0"] * (3 - len(parts))  # D-HH, D-HH:MM
            seconds = 0
            for p in parts:
                seconds = seconds * 60 + int(p)
            seconds += (days or 0) * 86400
            if seconds > 0:
                return seconds
    raise ResourceError(
        f"{where}: walltime must be 'H:MM:SS', 'D-HH:MM:SS' or a whole number of seconds, got {value!r}"
    )


def format_hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ResourceError(f"{where}: must be a whole number >= 1, got {value!r}")
    return value


def merge_resources(
    executor_options: Mapping[str, object], step_resources: Mapping[str, object], *, where: str
) -> Resources:
    """Executor-level settings overridden by the step's, checked.

    ``queue``/``partition`` and ``slots``/``cpus`` are synonyms (one word for
    each system, both accepted by both). ``submit_options`` from the executor
    come first, then the step's: a later option wins on both systems.
    ``where`` names the step for messages.
    """
    out: dict[str, object] = {}
    extra: list[str] = []
    for origin, table in (("executor", executor_options), ("step", step_resources)):
        for key, value in table.items():
            here = f"{where}: {origin} resource {key!r}"
            if key in EXECUTOR_KEYS:
                if origin == "step":
                    raise ResourceError(f"{here} can only be set on the executor")
                continue
            if key not in RESOURCE_KEYS:
                if origin == "step":
                    raise ResourceError(
                        f"{here} is unknown (known: {', '.join(sorted(RESOURCE_KEYS))})"
                    )
                continue  # the executor table holds other settings too (max_jobs, ...)
            if key in ("queue", "partition"):
                if not isinstance(value, str):
                    raise ResourceError(f"{here} must be a string, got {value!r}")
                out["queue"] = value
            elif key in ("slots", "cpus"):
                out["cpus"] = _positive_int(value, here)
            elif key == "memory":
                out["memory"] = parse_memory(value, here)
            elif key == "walltime":
                out["walltime"] = parse_walltime(value, here)
            elif key in ("parallel_environment", "account"):
                if not isinstance(value, str):
                    raise ResourceError(f"{here} must be a string, got {value!r}")
                out[key] = value
            elif key == "submit_options":
                if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise ResourceError(f"{here} must be a list of strings, got {value!r}")
                extra.extend(value)
    return Resources(submit_options=tuple(extra), **out)  # type: ignore[arg-type]


def executor_float(options: Mapping[str, object], key: str, default: float, *, where: str) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ResourceError(f"{where}: {key!r} must be a positive number of seconds, got {value!r}")
    return float(value)


# --- running commands ---------------------------------------------------------------


@attrs.frozen
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: timed out or could not start
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return (self.stderr + "\n" + self.stdout).strip()


async def run_command(argv: Iterable[str], *, timeout: float) -> CommandResult:
    """Run a batch command without blocking the loop; never raises for the
    command's own failure (missing program, non-zero exit, timeout): that is
    in the result."""
    argv = tuple(argv)
    try:
        with trio.move_on_after(timeout) as scope:
            done = await trio.run_process(
                argv,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
    except OSError as exc:
        return CommandResult(argv, None, "", f"cannot run {argv[0]}: {exc}")
    if scope.cancelled_caught:
        return CommandResult(argv, None, "", f"{argv[0]} timed out after {timeout:g} s")
    return CommandResult(
        argv,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


# --- the batched poller ------------------------------------------------------------

PollFn = Callable[[], Awaitable["dict[str, QueueEntry] | Unparseable | CommandResult"]]


class BatchPoller:
    """One queue listing per interval, shared by every job that waits.

    A waiter calls ``next_listing()`` and gets the first successful listing
    that started after its call. Whoever waits first runs the command (no
    background task: a backend has no nursery of its own, and nothing polls
    while nobody waits); the others wait for its result. If that waiter is
    cancelled mid-poll, another takes over. A failed or unparseable listing
    is logged (once per outage) and retried next interval; waiters keep
    waiting, since the jobs are wherever they were.
    """

    def __init__(self, name: str, poll: PollFn, interval: float) -> None:
        self.name = name
        self._poll = poll
        self.interval = interval
        self._listing: dict[str, QueueEntry] = {}
        #: number of successful listings so far, and when the last one started
        self.generation = 0
        self._listed_at = -math.inf
        #: when the last attempt started, successful or not (for the interval)
        self._started_at = -math.inf
        self._polling = False
        self._done = trio.Event()
        self._poke = trio.Event()
        self.polls = 0
        self.failures = 0
        self._outage = False

    def poke(self) -> None:
        """List now rather than at the end of the interval (after a submit or a
        kill, so that fast jobs are seen fast)."""
        self._poke.set()

    async def next_listing(self) -> dict[str, QueueEntry]:
        asked_at = trio.current_time()
        while True:
            if self._listed_at >= asked_at:
                return self._listing
            if self._polling:
                done = self._done
                await done.wait()
                continue
            self._polling = True
            try:
                await self._poll_once()
            finally:
                self._polling = False
                done, self._done = self._done, trio.Event()
                done.set()

    async def _poll_once(self) -> None:
        # keep one interval between the starts of two listings, unless poked
        wait = self._started_at + self.interval - trio.current_time()
        if wait > 0 and not self._poke.is_set():
            with trio.move_on_after(wait):
                await self._poke.wait()
        self._poke = trio.Event()
        started = trio.current_time()
        listing = await self._poll()
        self.polls += 1
        self._started_at = started
        if isinstance(listing, dict):
            if self._outage:
                log.warning("%s: the queue listing works again", self.name)
                self._outage = False
            self._listing = listing
            self._listed_at = started
            self.generation += 1
        else:
            self.failures += 1
            if not self._outage:
                log.warning("%s: cannot list the queue (will retry): %s", self.name, _describe(listing))
                self._outage = True


def _describe(listing: object) -> str:
    if isinstance(listing, CommandResult):
        return f"{' '.join(listing.argv[:2])} -> {listing.returncode}: {clean_message(listing.text)}"
    return str(listing)


# --- retry timing -------------------------------------------------------------------


def backoff(attempt: int, *, first: float = 1.0, factor: float = 2.0, cap: float = 60.0) -> float:
    """Seconds to wait before submit attempt ``attempt + 1`` (``attempt`` >= 1)."""
    return min(cap, first * factor ** (attempt - 1))


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
        self.poll_interval = executor_float(options, "poll_interval", 5.0, where=where)
        self.submit_timeout = executor_float(options, "submit_timeout", 60.0, where=where)
        self.max_submit_backoff = executor_float(options, "max_submit_backoff", 300.0, where=where)
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

    async def _run(self, argv: list[str], timeout: float | None = None) -> CommandResult:
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
                await trio.to_thread.run_sync(job_dir.write_batch_id, outcome.batch_id)
                self.poller.poke()
                return outcome.batch_id
            if outcome.permanent:
                raise BackendError(f"{self.system} refused job {job_dir.name}: {outcome.error}")
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
                await trio.to_thread.run_sync(job_dir.write_batch_id, adopted)
                return adopted

    async def wait(self, job_dir: JobDir, batch_id: str) -> None:
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
        await self._explain_end(job_dir, batch_id, last_seen_pending=last is not None and last.phase is Phase.PENDING)

    async def _explain_end(self, job_dir: JobDir, batch_id: str, *, last_seen_pending: bool = False) -> None:
        """The job has left the queue. Return when the wrapper's end record
        tells the story; raise Lost with the system's reason when the system
        ended the job (a limit, qdel/scancel, a node failure) or the wrapper
        left no end record."""
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
                return
            end = await self.ended(batch_id, name)
            if isinstance(end, BatchEnd) or trio.current_time() > deadline:
                break
            await trio.sleep(delay)
            delay = min(1.0, delay * 2)
        if isinstance(end, BatchEnd) and end.killed:
            raise Ended(end.killed)
        if status is not None and status.has_ended:
            return
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
            await trio.to_thread.run_sync(job_dir.write_batch_id, adopted)
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


async def _within(awaitable, seconds: float):
    with trio.fail_after(seconds):
        return await awaitable
