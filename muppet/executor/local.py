"""The local backend: each job's wrapper is a process of its own session.

The wrapper runs under ``setsid`` (``start_new_session``): its own session and
process group, no controlling terminal, so that neither a Ctrl-C nor the
daemon's death reaches it. It outlives the daemon; the next daemon finds it by
the pid in its status file (checked against ``/proc/PID/fd/7`` or
``/proc/PID/cmdline``, since pids are reused) and watches it through a pidfd.

A wrapper runs in a spare: a bash started ahead of need, in its own session,
that waits on its stdin for a wrapper's path and then runs that wrapper in
itself (``.``), so that a job starts without waiting for a process to be
made and for bash to start (its start record 0.13 ms after the hand-over
instead of 1.24; docs/executor.md, "Spares"). The backend keeps ``SPARES``
ready, and makes one on the spot when none is. A spare's command line names no job: it opens
the wrapper on file descriptor ``SPARE_FD`` before it runs it and keeps it
open (the wrapper closes it for the command), and ``/proc/PID/fd/7`` names the
job. A spare whose stdin closes (the daemon stopped or died) exits.

``launch`` returns once the wrapper holds the claim: the wrapper's stdout and
stderr are a pipe until it has claimed the job, and it prints
``jobdir.CLAIMED_LINE`` there once it has. A wrapper that exits without it
could not set the job up (a full disk, an I/O error: its exit code is
``CANNOT_START_EXIT``): launch raises NotStarted with what the wrapper said,
and the job was never reported started. Reading a pipe costs no thread and
no polling (Trio waits for the file descriptor).

Options (``[executors.NAME]``): ``bash`` (the bash that spares run, and with
it the wrappers and the steps' commands: ``default_bash``), ``kill_grace``
(seconds between SIGTERM and SIGKILL, default 10), ``poll_interval``
(seconds between liveness checks when pidfds are not available, default
0.25).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping

import trio

from ..fileio import executable_file
from ..messages import StartJob
from ..model import ExecutorConfig
from .backend import NotStarted
from .jobdir import CANNOT_START_EXIT, CLAIMED_LINE, JobDir, Status

log = logging.getLogger("muppet.executor.local")

BASH = "/bin/bash"
#: Debian's bash-static: the same bash, linked statically. It starts in about
#: 0.3 ms less CPU (no dynamic loader, no shared libraries to map), which a
#: spare pays once per job (docs/executor.md, "Which bash runs a job")
BASH_STATIC = "/bin/bash-static"


def default_bash() -> str:
    """The bash a local executor's jobs run under when its ``bash`` option
    is not set: ``BASH_STATIC`` where it is installed, else ``BASH``."""
    return BASH_STATIC if executable_file(BASH_STATIC) else BASH


#: wrappers prepared and spawned at once, each from a worker thread: a
#: spawn is CPU work on the daemon's own cores (the job directory's files,
#: the fork), so more threads spawn no faster, and one per job held up the
#: threads that answer the API (the Trio thread, and the worker threads of
#: its reads): during a 10,000-job fan-out at ``max_jobs = 16``, the API's
#: p99 was 44-75 ms with a thread per spawn and 27-33 ms with two, the rate
#: of jobs within the spread of the hour (bench/scale.py,
#: bench/scheduler.py; docs/performance.md)
SPAWN_THREADS = 2

#: spares kept ready: one for each spawning thread
SPARES = SPAWN_THREADS
#: the name a spare runs under (its ``$0`` until it runs a wrapper, then the
#: wrapper's path: ``BASH_ARGV0``), which ``ps`` shows
SPARE_NAME = "muppet-spare"
#: the descriptor on which a spare holds the wrapper it runs open
SPARE_FD = 7
#: what a spare runs: ``bash -c _SPARE_SCRIPT muppet-spare``. A path that
#: cannot be opened claims nothing (CANNOT_START_EXIT)
_SPARE_SCRIPT = (
    "IFS= read -r _muppet_wrapper || exit 0\n"
    f'exec {SPARE_FD}<"$_muppet_wrapper" || exit {CANNOT_START_EXIT}\n'
    'BASH_ARGV0=$_muppet_wrapper\n'
    '. "$_muppet_wrapper"\n'
    f"exit {CANNOT_START_EXIT}\n"
)

#: children whose watcher was cancelled (the executor stopped, the daemon goes
#: on, as in tests or an in-process restart): they must outlive the backend,
#: and dropping the Popen would warn "still running". They are reaped here, by
#: ``_sweep``, once they ended.
_abandoned: set[subprocess.Popen[bytes]] = set()


def _seconds(options: Mapping[str, object], key: str, default: float) -> float:
    """``options[key]`` as float() reads it (a number or a numeric string), or
    ``default``; TypeError or ValueError naming the key otherwise."""
    value = options.get(key, default)
    if not isinstance(value, (int, float, str)):
        raise TypeError(f"{key}: must be a number of seconds, got {value!r}")
    return float(value)


def _sweep() -> None:
    for process in list(_abandoned):
        if process.poll() is not None:  # reaps it
            _abandoned.discard(process)


class _Spare:
    """A spare bash waiting on its stdin for a wrapper's path, and the read
    end of the pipe on which what it runs says whether it claimed the job.
    Blocking (a fork): made in a worker thread. OSError when no process can
    be made (the machine's limits)."""

    def __init__(self, bash: str, cwd: str) -> None:
        stdin, self._to_spare = os.pipe2(os.O_CLOEXEC)
        said, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            self.process = subprocess.Popen(
                [bash, "-c", _SPARE_SCRIPT, SPARE_NAME],
                start_new_session=True,
                stdin=stdin,
                # until a wrapper it runs holds the claim; then it redirects
                # to the job directory
                stdout=write_end,
                stderr=write_end,
                cwd=cwd,
            )
        except OSError:
            # no process (EAGAIN, ENOMEM, EMFILE: the machine's limits)
            for descriptor in (self._to_spare, said):
                os.close(descriptor)
            raise
        finally:
            os.close(stdin)
            os.close(write_end)
        self.said = said

    def hand(self, wrapper: str) -> bool:
        """Give the spare ``wrapper`` to run (one ``write``, whole: a path is
        shorter than PIPE_BUF). False, and the spare discarded, when it is
        gone (it died while it waited)."""
        try:
            os.write(self._to_spare, wrapper.encode() + b"\n")
        except OSError:  # EPIPE: nobody reads
            self.discard()
            return False
        os.close(self._to_spare)
        return True

    def discard(self) -> None:
        """Close its stdin (it exits), and leave it to ``_sweep``."""
        os.close(self._to_spare)
        os.close(self.said)
        _abandoned.add(self.process)


class LocalBackend:
    """Runs wrappers as processes of this host. See ``backend.Backend``."""

    runs_at_launch = True
    #: ``launch`` prepares the job directory itself, in the worker thread that
    #: spawns the wrapper: one thread hop per job instead of two
    launch_prepares = True
    #: a local wrapper's id is its pid, which its records hold already
    batch_id_variable = None

    def __init__(self, config: ExecutorConfig, state_dir: str) -> None:
        self.config = config
        self.state_dir = state_dir
        try:
            self.kill_grace = _seconds(config.options, "kill_grace", 10.0)
            self.poll_interval = _seconds(config.options, "poll_interval", 0.25)
        except (TypeError, ValueError) as error:
            raise ValueError(f"[executors.{config.name}] options: {error}") from None
        bash = config.options.get("bash")
        #: what the spares run (``bash`` option, else ``default_bash``)
        self.bash = bash if isinstance(bash, str) else default_bash()
        if not executable_file(self.bash):
            raise ValueError(f"[executors.{config.name}] bash: {self.bash} is not an executable file here")
        log.info("executor %s: jobs run under %s", config.name, self.bash)
        #: wrappers this backend spawned, by pid: our children, reaped by ``wait``
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        #: wrapper path -> batch id of our children
        self._by_wrapper: dict[str, str] = {}
        #: wrapper path -> pid of every wrapper alive when first needed: the
        #: orphans of a previous daemon (built once; see ``_orphan``)
        self._orphans: dict[str, int] | None = None
        self._orphans_lock = trio.Lock()
        self._spawning = trio.CapacityLimiter(SPAWN_THREADS)
        #: spares ready: taken in the spawning threads, made in
        #: ``maintain``'s, dropped by ``close`` in the Trio thread
        self._spares: list[_Spare] = []
        self._spares_lock = threading.Lock()
        self._closed = False
        #: set when spares are to be made (``maintain``)
        self._spares_wanted = trio.Event()
        #: where spares wait (the job directories' parent: a wrapper cds
        #: into its own scratch directory at once)
        self._spares_cwd = os.path.join(state_dir, "jobs")

    async def launch(self, job_dir: JobDir, spec: StartJob) -> str:
        """The wrapper's pid once it has claimed the job (or found it claimed
        by another wrapper: the executor's ``wait`` and the status file tell
        the rest). Raises NotStarted when the wrapper could not set the job
        up, or could not be spawned; OSError when the job directory cannot be
        prepared. Cancelling it leaves the wrapper running."""
        _sweep()
        process, said = await trio.to_thread.run_sync(
            self._prepare_and_spawn, job_dir, spec, limiter=self._spawning
        )
        if not self._spares:
            self._spares_wanted.set()  # the first launch, or spares that died
        batch_id = str(process.pid)
        self._children[batch_id] = process
        self._by_wrapper[job_dir.wrapper] = batch_id
        try:
            claimed, text = await _read_claim(said)
            if claimed:
                return batch_id
            # no claim: the wrapper exits (or has), and its exit code says why
            await _wait_child(process, self.poll_interval)
        except BaseException:
            if process.poll() is None:
                _abandoned.add(process)
            self._forget(job_dir, batch_id)
            raise
        if process.returncode == CANNOT_START_EXIT:
            self._forget(job_dir, batch_id)
            raise NotStarted(_cannot_start_words(job_dir, text))
        # CLAIMED_EXIT (another wrapper has the job), or killed before its
        # claim: ``wait`` returns at once, and the status file decides
        return batch_id

    def _forget(self, job_dir: JobDir, batch_id: str) -> None:
        self._children.pop(batch_id, None)
        if self._by_wrapper.get(job_dir.wrapper) == batch_id:
            del self._by_wrapper[job_dir.wrapper]

    def close(self) -> None:
        """Let the spares go (they exit once their stdin closes); none is
        made after this, and ``maintain`` returns. The jobs running are left
        alone."""
        with self._spares_lock:
            self._closed = True
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.discard()
        self._spares_wanted.set()

    def job_reported(self) -> None:
        """A job of this backend has been reported ended: spares up to
        ``SPARES`` (``maintain``), made while the database commits that end
        rather than beside a job that starts."""
        if len(self._spares) < SPARES:
            self._spares_wanted.set()

    async def maintain(self) -> None:
        """Make spares up to ``SPARES`` each time they are wanted: after a
        launch that found none ready, and once a job has been reported ended
        (``job_reported``). Made right after each launch instead, a spare's
        bash started beside the job on the same two cores, and a chain of
        short steps took 0.28 ms a link more (docs/executor.md, "Spares").
        Runs until ``close``; without it, each launch makes its own spare."""
        while True:
            await self._spares_wanted.wait()
            if self._closed:
                return
            self._spares_wanted = trio.Event()
            await trio.to_thread.run_sync(self._make_spares)

    def _prepare_and_spawn(self, job_dir: JobDir, spec: StartJob) -> tuple[subprocess.Popen[bytes], int]:
        """The process that runs the wrapper (a spare, made here when none
        is ready: ``maintain`` makes them ahead), and the read end of the
        pipe on which it says whether it claimed the job."""
        if "\n" in job_dir.wrapper:  # a spare reads one line
            raise NotStarted(f"the path {job_dir.wrapper!r} holds a newline: a spare cannot read it")
        job_dir.prepare(spec)  # raises AlreadyStarted when the status file exists
        with self._spares_lock:
            spare = self._spares.pop() if self._spares else None
        if spare is None or not spare.hand(job_dir.wrapper):
            try:
                spare = _Spare(self.bash, self._spares_cwd)
            except OSError as error:
                # not the job's failure: the machine's limits (EAGAIN, ENOMEM,
                # EMFILE), or a ``bash`` that is gone since the start
                raise NotStarted(f"cannot start {self.bash} for {job_dir.wrapper}: {error}") from None
            if not spare.hand(job_dir.wrapper):
                raise NotStarted(f"{self.bash} exited before it was given {job_dir.wrapper}")
        return spare.process, spare.said

    def _make_spares(self) -> None:
        """Spares up to ``SPARES`` (``maintain`` alone makes them, one call
        at a time); a failure to make one (the machine's limits) is the next
        launch's, which makes its own."""
        while True:
            with self._spares_lock:
                if self._closed or len(self._spares) >= SPARES:
                    return
            try:
                spare = _Spare(self.bash, self._spares_cwd)
            except OSError as error:
                log.debug("executor %s: no spare made: %s", self.config.name, error)
                return
            with self._spares_lock:
                if not self._closed:
                    self._spares.append(spare)
                    continue
            spare.discard()
            return

    async def wait(self, job_dir: JobDir, batch_id: str) -> int | None:
        """The wrapper's exit status (None for a previous daemon's wrapper,
        which is not our child). Cancelling it leaves the process running
        (it must outlive us)."""
        process = self._children.get(batch_id)
        if process is None:
            await _wait_foreign(int(batch_id), job_dir.wrapper, self.poll_interval)
            _sweep()
            return None
        try:
            await _wait_child(process, self.poll_interval)
        except BaseException:
            if process.poll() is None:
                _abandoned.add(process)
            raise
        finally:
            self._forget(job_dir, batch_id)
        return process.returncode

    async def find(self, job_dir: JobDir, status: Status | None) -> str | None:
        batch_id = self._by_wrapper.get(job_dir.wrapper)
        if batch_id is not None and self._children[batch_id].poll() is None:
            return batch_id
        if status is not None and status.pid is not None:
            return str(status.pid) if _is_wrapper(status.pid, job_dir.wrapper) else None
        # No pid recorded: the wrapper may be between spawn and its first write.
        pid = await self._orphan(job_dir.wrapper)
        return str(pid) if pid is not None else None

    async def kill(self, job_dir: JobDir, batch_id: str) -> None:
        """SIGTERM to the wrapper's process group, SIGKILL after ``kill_grace``
        seconds to what is left of it."""
        pgid = int(batch_id)
        if not (batch_id in self._children or _is_wrapper(pgid, job_dir.wrapper)):
            # the wrapper is gone: signal the group only while it has members of
            # the wrapper's session, so a reused pid is never hit
            if not await trio.to_thread.run_sync(group_members, pgid):
                return
        if not _signal_group(pgid, signal.SIGTERM):
            return
        with trio.move_on_after(self.kill_grace):
            # Polled: nothing signals that a process group has emptied.
            while await trio.to_thread.run_sync(group_members, pgid):  # noqa: ASYNC110
                await trio.sleep(0.1)
            return
        log.info(
            "job %s: process group %d still there %.0f s after SIGTERM: SIGKILL", job_dir.job_id, pgid, self.kill_grace
        )
        _signal_group(pgid, signal.SIGKILL)

    async def _orphan(self, wrapper: str) -> int | None:
        if self._orphans is None:
            async with self._orphans_lock:
                if self._orphans is None:
                    # One scan serves every job re-attached after a restart: a
                    # wrapper that is not in it was started by nobody but us,
                    # and ours are in ``_children``.
                    self._orphans = await trio.to_thread.run_sync(scan_wrappers, self.state_dir)
        # once scanned, a look-up without a checkpoint: every new job asks
        pid = self._orphans.get(wrapper)
        if pid is not None and _is_wrapper(pid, wrapper):
            return pid
        return None


#: what the wrapper says on the pipe at most, before its claim (bash's error
#: messages and its own line)
_CLAIM_TEXT_LIMIT = 8192


async def _read_claim(descriptor: int) -> tuple[bool, str]:
    """Read the wrapper's pipe until it says it claimed the job (True) or
    closes it without (False); what it said, as text. Owns ``descriptor``."""
    said = b""
    marker = CLAIMED_LINE.encode() + b"\n"
    async with trio.lowlevel.FdStream(descriptor) as stream:
        while True:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return False, said.decode("utf-8", errors="replace")
            said = (said + chunk)[-_CLAIM_TEXT_LIMIT:]
            if said.startswith(marker) or b"\n" + marker in said:
                return True, ""


_BASH_PREFIX = re.compile(r"^\S*wrapper\.sh: line \d+: ")
_JOB_PREFIX = re.compile(r"^job \d+: ")


def _cannot_start_words(job_dir: JobDir, text: str) -> str:
    """The reason of a wrapper that exited CANNOT_START_EXIT, from what it
    said: its own line ("muppet: job N: cannot write its status file; not
    started") and bash's error before it ("printf: write error: No space
    left on device")."""
    ours, details = "", []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("muppet: "):
            ours = _JOB_PREFIX.sub("", line.removeprefix("muppet: ")).removesuffix("; not started")
        elif line:
            details.append(_BASH_PREFIX.sub("", line))
    words = ours or f"the wrapper {job_dir.wrapper} could not set the job up"
    if details:
        words += ": " + "; ".join(details)
    return f"{words} (exit {CANNOT_START_EXIT})"


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


# Reading a few bytes of /proc is a memory copy in the kernel, never a wait on
# a disk: these single-pid checks run on the Trio loop. Scans of all of /proc
# go to a worker thread.


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            data = file.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").split("\0")


def _is_wrapper(pid: int, wrapper: str) -> bool:
    """Is ``pid`` alive and running this wrapper? (A zombie's cmdline is
    empty, so a zombie is not.) The wrapper leads its session: its forks (the
    subshell that runs the command) show the same command line but are not."""
    return pid > 0 and _wrapper_of(pid) == wrapper and _leads_session(pid)


def _wrapper_of(pid: int) -> str | None:
    """The wrapper that process ``pid`` runs, if it runs one: a spare's, on
    ``SPARE_FD``; ``bash WRAPPER``'s (a daemon before spares), on its
    command line."""
    arguments = _cmdline(pid)
    if arguments[3:4] == [SPARE_NAME]:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{SPARE_FD}")
        except OSError:
            return None  # gone, or a spare that has not opened one yet
        return target.removesuffix(" (deleted)")
    return arguments[1] if len(arguments) > 1 and arguments[1].endswith("/wrapper.sh") else None


def _leads_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def scan_wrappers(state_dir: str) -> dict[str, int]:
    """wrapper path -> pid of every live process that runs a wrapper under
    ``state_dir``. Blocking: a walk over /proc."""
    prefix = os.path.join(state_dir, "jobs") + os.sep
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            wrapper = _wrapper_of(int(entry))
            if wrapper is not None and wrapper.startswith(prefix) and _leads_session(int(entry)):
                found[wrapper] = int(entry)
    return found


def group_members(pgid: int) -> list[int]:
    """The pids of live (not zombie) processes in process group ``pgid``.
    Blocking: a walk over /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        # the command name (2nd field) may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


async def _wait_child(process: subprocess.Popen[bytes], poll_interval: float) -> None:
    """Wait for our child and reap it, without a thread: a pidfd becomes
    readable when the process exits."""
    try:
        descriptor = os.pidfd_open(process.pid)
    except OSError:
        descriptor = None  # no pidfds (old kernel), or it is gone already
    try:
        while process.poll() is None:
            if descriptor is not None:
                await trio.lowlevel.wait_readable(descriptor)
            else:
                await trio.sleep(poll_interval)
    finally:
        if descriptor is not None:
            os.close(descriptor)


async def _wait_foreign(pid: int, wrapper: str, poll_interval: float) -> None:
    """Wait for a process that is not our child (a previous daemon's)."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError) as error:
        if getattr(error, "errno", None) == errno.ESRCH:
            return
        # no pidfds (old kernel): poll, since nothing else signals the end of
        # a process that is not our child
        while _is_wrapper(pid, wrapper):  # noqa: ASYNC110
            await trio.sleep(poll_interval)
        return
    try:
        # checked after opening: the pidfd now pins this very process, so a
        # pid reused in between cannot fool us
        if _is_wrapper(pid, wrapper):
            await trio.lowlevel.wait_readable(descriptor)
    finally:
        os.close(descriptor)
