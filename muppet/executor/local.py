"""The local backend: each job's wrapper is a process group of its own.

A wrapper leads its own process group, away from the daemon's session and
with no controlling terminal, so that neither a Ctrl-C nor the daemon's
death reaches it. It outlives the daemon; the next daemon finds it by the
pid in its status file (checked against ``/proc/PID/fd/7`` or
``/proc/PID/cmdline``, since pids are reused) and watches it through a
pidfd.

A wrapper runs in a fork of the launcher (``_Launcher``): a bash in a
session of its own that keeps forks of itself (readers) waiting for
wrapper paths; a reader runs the path it takes in itself, with ``exec``. A
local wrapper has no ``#!`` line, so bash runs it in that process instead
of starting a new bash: a job takes about 0.5 ms less CPU
(docs/executor.md, "The launcher"). ``set -m`` gives each
fork a process group of its own. The daemon is not its parent: the
reader says its pid on the launcher's pipe, and the wrapper, told it was
``launched``, says there how it exits (``LauncherOutput``). ``maintain``
keeps a launcher and reads that pipe; until a launcher is ready, and where
the ``state_dir`` is mounted noexec, a job starts in a spare (``_Spare``):
a bash of its own, in its own session, that reads the wrapper's path on
its stdin and runs the wrapper in itself (``.``). A launcher's wrapper and
a spare name no job on their command line: they hold the wrapper open on
file descriptor ``SPARE_FD`` (the wrapper closes it for the command), and
``/proc/PID/fd/7`` names the job.

``launch`` returns once the wrapper holds the claim: the wrapper's stdout and
stderr are a pipe until it has claimed the job, and it prints
``jobdir.CLAIMED_LINE`` there once it has. A wrapper that exits without it
could not set the job up (a full disk, an I/O error: its exit code is
``CANNOT_START_EXIT``): launch raises NotStarted with what the wrapper said,
and the job was never reported started. Reading a pipe costs no thread and
no polling (Trio waits for the file descriptor).

Options (``[executors.NAME]``): ``bash`` (the bash that the launcher and
the spares run, and with them the wrappers and the steps' commands:
``default_bash``), ``kill_grace`` (seconds between SIGTERM and SIGKILL,
default 10), ``poll_interval`` (seconds between liveness checks when
pidfds are not available, default 0.25).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import select
import signal
import subprocess
import threading
from collections.abc import Mapping

import attrs
import trio

from ..fileio import executable_file
from ..messages import StartJob
from ..model import ExecutorConfig
from .backend import NotStarted
from .jobdir import (
    CANNOT_START_EXIT,
    CLAIMED_LINE,
    EXIT_LINE,
    LAUNCHED_EXIT_FD,
    JobDir,
    SaidEnd,
    Status,
    parse_exit_line,
)

log = logging.getLogger("muppet.executor.local")

BASH = "/bin/bash"
#: Debian's bash-static: the same bash, linked statically. It starts in about
#: 0.3 ms less CPU (no dynamic loader, no shared libraries to map), which the
#: launcher pays once, and a spare once per job
#: (docs/executor.md, "Which bash runs a job")
BASH_STATIC = "/bin/bash-static"


def default_bash() -> str:
    """The bash a local executor's jobs run under when its ``bash`` option
    is not set: ``BASH_STATIC`` where it is installed, else ``BASH``."""
    return BASH_STATIC if executable_file(BASH_STATIC) else BASH


#: wrappers prepared and handed over at once, each from a worker thread: it
#: is CPU work on the daemon's own cores (the job directory's files, the
#: launcher's fork), so more threads start jobs no faster, and one per job
#: held up the threads that answer the API (the Trio thread, and the worker
#: threads of its reads): during a 10,000-job fan-out at ``max_jobs = 16``,
#: the API's p99 was 44-75 ms with a thread per spawn and 27-33 ms with two,
#: the rate of jobs within the spread of the hour (bench/scale.py,
#: bench/scheduler.py; docs/performance.md)
SPAWN_THREADS = 2

#: the name a spare runs under (its ``$0`` until it runs a wrapper, then the
#: wrapper's path: ``BASH_ARGV0``), which ``ps`` shows
SPARE_NAME = "muppet-spare"
#: the name the launcher runs under, which ``ps`` shows for it and for each
#: wrapper it started (a fork shows its parent's command line)
LAUNCHER_NAME = "muppet-launcher"
#: the descriptor on which a launcher's wrapper, or a spare, holds the
#: wrapper it runs open
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
#: what a launcher's reader says once it took a wrapper's path: its pid (the
#: wrapper's, once it runs it), and the path
PID_LINE = "muppet: pid"
#: what a launcher or its reader says of a wrapper it cannot start, then the
#: path and why
REFUSED_LINE = "muppet: cannot start"
#: the bytes of one record on a launcher's pipe of paths: a wrapper's path,
#: padded with newlines. Records of one size let its readers share the pipe:
#: bash's ``read -N`` takes a record with one ``read``, and a ``write`` of
#: one is whole (shorter than PIPE_BUF), so two readers never split one.
#: ``read -N`` counts characters, so a record is ASCII, where a character
#: is a byte in any locale (``LC_ALL=C`` on each read cost more than the
#: read). A wrapper whose path is longer, or not ASCII, starts in a spare.
LAUNCHER_RECORD = 256
#: readers a launcher keeps ready, each a fork of it waiting for a path
LAUNCHER_READERS = 2
#: how a launcher's reader takes a path: one record of the pipe of paths,
#: the wrapper held open on ``SPARE_FD`` (or refused, naming it), and its pid
#: said, which is the wrapper's from then on
_TAKE_PATH = (
    f"IFS= read -r -N {LAUNCHER_RECORD} _muppet_wrapper || exit 0\n"
    "_muppet_wrapper=${_muppet_wrapper%%$'\\n'*}\n"
    f'if ! exec {SPARE_FD}<"$_muppet_wrapper"; then\n'
    f'    echo "{REFUSED_LINE} $_muppet_wrapper: cannot open it"\n'
    "    exit 0\n"
    "fi\n"
    f'echo "{PID_LINE} $BASHPID $_muppet_wrapper"\n'
)
#: what a launcher's reader runs as a new shell: it takes a path and
#: sources the wrapper, as a spare does. Its arguments: the launcher's
#: bash, for the wrapper's ``$BASH`` (a new shell would set it to the
#: user's login shell), and the descriptor on this script, which it closes
#: so that the job does not inherit it.
_READER_SCRIPT = (
    "# MUPPET: what a local executor's launcher runs in each fork of itself that\n"
    "# waits for a job's wrapper (docs/executor.md, \"The launcher\")\n"
    "_muppet_script=$2\n"
    "exec {_muppet_script}<&-\n"
    + _TAKE_PATH
    + "exec </dev/null\n"
    "BASH_ARGV0=$_muppet_wrapper\n"
    '. "$_muppet_wrapper" launched "$1"\n'
    f"exit {CANNOT_START_EXIT}\n"
)
#: what a launcher runs: ``bash -c _LAUNCHER_SCRIPT muppet-launcher CONTROL
#: READER``, CONTROL and READER descriptors it inherits. It forks
#: ``LAUNCHER_READERS`` subshells (readers) that wait on its stdin, the pipe
#: of paths, and one more for each line on CONTROL, which the daemon writes
#: once per path. A reader runs ``_READER_SCRIPT`` (on READER, a file in
#: memory) with ``exec``: a script without ``#!``, which the kernel refuses
#: (ENOEXEC), so that bash runs it in the same process as a new shell (its
#: own ``$$``, none of the launcher's variables) without starting a bash.
#: The fork and the new shell are made before the path comes, so the job
#: waits for neither: bash starts over for a new shell (its environment
#: read again), which is most of what a wrapper's start costs after the
#: path came (docs/executor.md, "The launcher"). A launcher that cannot run
#: READER (a kernel that refuses to run files in memory) has its readers
#: take the paths themselves and run each wrapper, without ``#!`` too, with
#: ``exec`` as the new shell; it looks once, as it starts, since a reader
#: whose ``exec`` fails exits without taking a path.
#: ``set -m`` gives each reader a process group of its own; ``disown``
#: forgets it: bash would keep every job it started, and each start would
#: cost more than the last. When bash cannot fork, the launcher takes a path
#: itself and says it cannot start it, so that no launch waits for a reader
#: that never comes.
_LAUNCHER_SCRIPT = (
    "set -m\n"
    "_muppet_control=$1\n"
    "_muppet_script=$2\n"
    "_muppet_reader=/proc/self/fd/$2\n"
    '[ -x "$_muppet_reader" ] || _muppet_reader=\n'
    f"_muppet_ahead={LAUNCHER_READERS}\n"
    # a reader for each of the first LAUNCHER_READERS turns, then one a line
    'while if [ "$_muppet_ahead" -gt 0 ]; then _muppet_ahead=$((_muppet_ahead - 1)); '
    'else IFS= read -r -u "$_muppet_control" _; fi; do\n'
    "    _muppet_last=$!\n"
    # a subshell, not a function run in the background: that cost a job
    # 0.1 ms more CPU (docs/executor.md, "The launcher")
    "    (\n"
    '        [ -n "$_muppet_reader" ] &&\n'
    f'            exec "$_muppet_reader" "$BASH" "$_muppet_script" {LAUNCHED_EXIT_FD}>&1 {{_muppet_control}}<&-\n'
    + _TAKE_PATH
    + f'        exec "$_muppet_wrapper" launched "$BASH" {LAUNCHED_EXIT_FD}>&1 </dev/null {{_muppet_control}}<&- \\\n'
    "            {_muppet_script}<&-\n"
    "    ) &\n"
    # $! stays as it was when bash could not fork (EAGAIN, ENOMEM)
    '    if [ "$!" != "$_muppet_last" ]; then\n'
    "        disown\n"
    f"    elif IFS= read -r -N {LAUNCHER_RECORD} _muppet_wrapper; then\n"
    f'        echo "{REFUSED_LINE} ${{_muppet_wrapper%%$\'\\n\'*}}: cannot fork"\n'
    "    fi\n"
    "done\n"
)
#: seconds a launch waits, once its launcher has ended, for the pid of the
#: reader that took its path: a reader says it at once, unless it was
#: killed too
READER_GRACE = 1.0
#: a launcher that ends sooner than this after its start is started again
#: only this long after (a bash that cannot run: not a loop of forks)
LAUNCHER_RESTART_DELAY = 1.0

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


def _start_bash(
    bash: str, script: str, name: str, cwd: str, *, output_flags: int = 0, descriptors: tuple[int, ...] = ()
) -> tuple[subprocess.Popen[bytes], int, int, int]:
    """``bash -c script name`` in a session of its own, with a pipe for its
    stdin and one for its stdout and stderr: the process, the write end and
    the read end of the first, and the read end of the second (the caller
    closes the first's read end, or keeps it to take back what bash left
    unread). ``descriptors``: ones it inherits, whose numbers are its
    arguments (``$1`` on). Blocking (a fork). OSError when no process can
    be made (EAGAIN, ENOMEM, EMFILE: the machine's limits)."""
    stdin, to_bash = os.pipe2(os.O_CLOEXEC)
    output, write_end = os.pipe2(os.O_CLOEXEC | output_flags)
    try:
        process = subprocess.Popen(
            [bash, "-c", script, name, *map(str, descriptors)],
            start_new_session=True,
            stdin=stdin,
            stdout=write_end,
            stderr=write_end,
            cwd=cwd,
            pass_fds=descriptors,
        )
    except OSError:
        for descriptor in (stdin, to_bash, output):
            os.close(descriptor)
        raise
    finally:
        os.close(write_end)
    return process, to_bash, stdin, output


class _Spare:
    """A bash waiting on its stdin for a wrapper's path, and the read end of
    the pipe on which what it runs says whether it claimed the job: a job's
    own process, for a launch that finds no launcher ready. Blocking (a
    fork): made in a worker thread. OSError when no process can be made
    (the machine's limits)."""

    def __init__(self, bash: str, cwd: str) -> None:
        # its output is the pipe until a wrapper it runs holds the claim;
        # then the wrapper sends it to the job directory
        self.process, self._to_spare, stdin, self.said = _start_bash(bash, _SPARE_SCRIPT, SPARE_NAME, cwd)
        os.close(stdin)

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


@attrs.define
class LauncherOutput:
    """What a launcher and the wrappers it started say on its one pipe, line
    by line (sans-I/O: ``feed`` it the bytes read). Each line is one
    ``write`` of one process, shorter than PIPE_BUF, so lines never mix: the
    reader's ``PID_LINE`` (or ``REFUSED_LINE``), the wrapper's
    ``CLAIMED_LINE`` and, as it exits, ``EXIT_LINE``; and, before a claim,
    what a wrapper that cannot set its job up says (``muppet: job ID ...``,
    and bash's errors, which start with the wrapper's path): kept for the
    launches that ``expect`` it, to say why."""

    #: wrapper path -> job id, of the launches waiting on this launcher
    expected: dict[str, int] = attrs.Factory(dict)
    #: wrapper path -> the pid of the process that runs it
    pids: dict[str, int] = attrs.Factory(dict)
    #: pid -> wrapper path, the other way round
    wrappers: dict[int, str] = attrs.Factory(dict)
    #: wrapper path -> why the launcher could not start it
    refused: dict[str, str] = attrs.Factory(dict)
    #: pids whose wrapper holds its job's claim
    claimed: set[int] = attrs.Factory(set)
    #: pid -> exit status
    exits: dict[int, int] = attrs.Factory(dict)
    #: pid -> the end the wrapper said with its exit status, if it had
    #: written its end record
    ends: dict[int, SaidEnd] = attrs.Factory(dict)
    #: wrapper path -> what was said of it besides the lines above
    words: dict[str, str] = attrs.Factory(dict)
    _partial: bytes = b""
    _by_job: dict[str, str] = attrs.Factory(dict)

    def expect(self, wrapper: str, job_id: int) -> None:
        self.expected[wrapper] = job_id
        self._by_job[str(job_id)] = wrapper

    def forget(self, wrapper: str) -> None:
        """Drop what is known of ``wrapper`` and its process, but its exit
        status (``wait`` takes that)."""
        job_id = self.expected.pop(wrapper, None)
        if job_id is not None:
            self._by_job.pop(str(job_id), None)
        pid = self.pids.pop(wrapper, None)
        if pid is not None:
            self.wrappers.pop(pid, None)
            self.claimed.discard(pid)
        self.refused.pop(wrapper, None)
        self.words.pop(wrapper, None)

    def feed(self, data: bytes) -> set[str]:
        """Take ``data``; the wrappers of which something was said."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > _CLAIM_TEXT_LIMIT:
            self._partial = b""  # no line of ours is that long
        news = set()
        for line in lines:
            wrapper = self._line(line.decode("utf-8", errors="replace"))
            if wrapper is not None:
                news.add(wrapper)
        return news

    def _line(self, line: str) -> str | None:
        if line.startswith(PID_LINE + " "):
            pid, _, wrapper = line.removeprefix(PID_LINE + " ").partition(" ")
            if not pid.isdigit():
                return None
            self.pids[wrapper] = int(pid)
            self.wrappers[int(pid)] = wrapper
            return wrapper
        if line.startswith(REFUSED_LINE + " "):
            wrapper, _, why = line.removeprefix(REFUSED_LINE + " ").rpartition(": ")
            self.refused[wrapper] = why
            return wrapper
        if line.startswith(CLAIMED_LINE + " "):
            pid = line.removeprefix(CLAIMED_LINE + " ")
            if not pid.isdigit():
                return None
            self.claimed.add(int(pid))
            return self.wrappers.get(int(pid))
        if line.startswith(EXIT_LINE + " "):
            parsed = parse_exit_line(line.removeprefix(EXIT_LINE + " "))
            if parsed is None:
                return None
            exited, status, said = parsed
            self.exits[exited] = status
            if said is not None:
                self.ends[exited] = said
            return self.wrappers.get(exited)
        # before the claim: the wrapper's own words, by job, or bash's, by path
        if line.startswith("muppet: job "):
            of = self._by_job.get(line.split(" ", 3)[2].rstrip(":"))
        else:
            of = line.split(": ", 1)[0]
        if of is None or of not in self.expected:
            return None
        self.words[of] = (self.words.get(of, "") + line + "\n")[-_CLAIM_TEXT_LIMIT:]
        return of


class _Launcher:
    """A bash that starts each wrapper written to it in a fork of itself
    (``_LAUNCHER_SCRIPT``), and the pipe on which it and those wrappers
    speak (``LauncherOutput``). A fork costs about 0.5 ms less CPU than a
    bash's start, which each job paid in its spare (docs/executor.md, "The
    launcher"). Its pipes: the paths, which its readers read; the control
    lines, one a path, on each of which it forks a reader; and its output.
    Made in a worker thread (a fork); OSError when no process can be made.
    ``run`` is called from worker threads, everything else from the Trio
    thread."""

    def __init__(self, bash: str, cwd: str) -> None:
        reader = _reader_script()
        try:
            control, self._to_control = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(reader)
            raise
        try:
            # the read end of the paths kept: what no reader took when the
            # launcher ended is read back (``has_exited``)
            self.process, self._to_launcher, paths, self.output = _start_bash(
                bash, _LAUNCHER_SCRIPT, LAUNCHER_NAME, cwd, output_flags=os.O_NONBLOCK, descriptors=(control, reader)
            )
        except OSError:
            os.close(self._to_control)
            raise
        finally:
            os.close(control)
            os.close(reader)
        self._paths: int | None = paths
        self.said = LauncherOutput()
        #: wrapper path -> the event of a launch waiting for news of it
        self._waiting: dict[str, trio.Event] = {}
        #: every writer of the pipe is gone: the launcher, and each wrapper
        self.ended = False
        #: the launcher itself has exited (``maintain`` saw it)
        self.exited = False
        self._lock = threading.Lock()
        self._open = True

    def run(self, wrapper: str) -> bool:
        """Have the launcher start ``wrapper``: its path as one record for a
        reader, then a line that has the launcher fork another. False when
        the launcher and its readers are gone, or it is closed, or the path
        does not fit a record (``LAUNCHER_RECORD``: longer, or not ASCII).
        Blocking (a full pipe: a launcher that does not fork)."""
        if len(wrapper) > LAUNCHER_RECORD or not wrapper.isascii():
            return False
        path = wrapper.encode()
        with self._lock:
            if not self._open:
                return False
            try:
                os.write(self._to_launcher, path.ljust(LAUNCHER_RECORD, b"\n"))
            except OSError:  # EPIPE: no reader, and no launcher, is left
                return False
            try:
                os.write(self._to_control, b"\n")
            except OSError:
                # the launcher is gone (``maintain`` starts another): a
                # reader it left takes the path
                pass
        return True

    def close(self) -> None:
        """Close the launcher's pipes: it and its readers exit, the wrappers
        they started run on."""
        with self._lock:
            if self._open:
                self._open = False
                os.close(self._to_launcher)
                os.close(self._to_control)

    async def news(self, wrapper: str) -> None:
        """Return once something is said of ``wrapper``, the launcher has
        exited, or everyone has closed the pipe (one waiter per wrapper: its
        launch). Those last two are for the caller to look at."""
        if self.ended:
            await trio.lowlevel.checkpoint()
            return
        event = self._waiting[wrapper] = trio.Event()
        try:
            await event.wait()
        finally:
            if self._waiting.get(wrapper) is event:
                del self._waiting[wrapper]

    def _tell(self, wrappers: set[str] | None = None) -> None:
        """Wake the launches waiting for ``wrappers`` (all of them: None)."""
        for wrapper in list(self._waiting) if wrappers is None else wrappers:
            event = self._waiting.pop(wrapper, None)
            if event is not None:
                event.set()

    def drain(self) -> None:
        """Read what the pipe holds now, without waiting."""
        if self.ended:
            return
        news: set[str] = set()
        while True:
            try:
                data = os.read(self.output, 65536)
            except BlockingIOError:
                break
            if not data:
                self.ended = True
                self._tell()
                break
            news |= self.said.feed(data)
        self._tell(news)

    def has_exited(self) -> None:
        """The launcher has exited, or is left running (its executor goes):
        it is closed, and the paths that no reader took are read back and
        refused, so that no launch waits for a
        reader that will not come. A reader that took its path says its pid
        at once (``READER_GRACE``). With the pipe of paths empty and closed,
        the readers left exit."""
        self.close()
        self.exited = True
        self.drain()
        if self._paths is not None:
            news = set()
            # no ``read`` waits: nobody can write to the pipe any more
            while record := os.read(self._paths, LAUNCHER_RECORD):
                wrapper = record.split(b"\n", 1)[0].decode("utf-8", errors="replace")
                self.said.refused[wrapper] = "the launcher ended before a reader took it"
                news.add(wrapper)
            os.close(self._paths)
            self._paths = None
            self._tell(news)
        self._tell()

    async def read(self) -> None:
        """Read the pipe until every writer of it is gone, then close it."""
        try:
            while not self.ended:
                await trio.lowlevel.wait_readable(self.output)
                self.drain()
        finally:
            self.ended = True
            self._tell()
            os.close(self.output)


def _reader_script() -> int:
    """A descriptor on a file in memory that holds ``_READER_SCRIPT``, for
    a launcher to inherit: nothing on disk that could be removed or be on a
    file system mounted ``noexec``. Blocking; OSError (EMFILE, ENOMEM)."""
    descriptor = os.memfd_create("muppet-launcher-reader", os.MFD_CLOEXEC)
    try:
        data = _READER_SCRIPT.encode()
        while data:
            data = data[os.write(descriptor, data):]
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def _start_launcher(bash: str, cwd: str) -> _Launcher:
    os.makedirs(cwd, exist_ok=True)
    return _Launcher(bash, cwd)


def _pidfds_work() -> bool:
    """Whether this kernel has pidfds (Linux 5.3 and later), without which
    the end of a launcher's wrapper, not our child, could only be polled."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def _on_noexec_mount(path: str) -> bool:
    """Whether ``path`` (or, while it does not exist, its nearest ancestor
    that does) is on a file system mounted noexec, where a launcher cannot
    run a wrapper as a command (``execve`` says EACCES, not ENOEXEC)."""
    while True:
        try:
            return bool(os.statvfs(path).f_flag & os.ST_NOEXEC)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent


class _SpareChild:
    """A wrapper that runs in a spare: our child, whose exit status ``wait``
    reaps. Watched as a launcher's wrapper is (``_Forked``): ``running``,
    ``wait``, and ``close`` once no one watches it (then, still running, it
    is left to ``_sweep``, as it must outlive us)."""

    def __init__(self, process: subprocess.Popen[bytes], poll_interval: float) -> None:
        self.process = process
        self.poll_interval = poll_interval

    def running(self) -> bool:
        return self.process.poll() is None

    async def wait(self) -> int | None:
        await _wait_child(self.process, self.poll_interval)
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            _abandoned.add(self.process)


class _Forked:
    """A wrapper that a launcher started: not our child, so watched through
    a pidfd, and its exit status is what it said (``LauncherOutput.exits``).
    The pidfd is opened once its reader has said its pid, and checked then
    to be that wrapper's process (``_holds_wrapper``), so a reused pid
    cannot fool it. Without a
    pidfd (no descriptor left: EMFILE) it is looked at every
    ``poll_interval``, as a previous daemon's wrapper is."""

    def __init__(self, launcher: _Launcher, wrapper: str, pid: int, poll_interval: float) -> None:
        self.launcher = launcher
        self.wrapper = wrapper
        self.pid = pid
        self.poll_interval = poll_interval
        self.pidfd: int | None = None
        self._ended = False
        #: what it said of its end as it exited (``wait``), if anything
        self.end: SaidEnd | None = None
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._ended = True  # reaped by the launcher already
            return
        except OSError as error:
            log.warning("wrapper %d (%s): no pidfd (%s): looked at every %.2f s", pid, wrapper, error, poll_interval)
        if not _holds_wrapper(pid, wrapper):
            # ended (a zombie holds no descriptors) before we looked
            self._ended = True
            self._close_pidfd()

    def running(self) -> bool:
        if self._ended:
            return False
        if self.pidfd is None:
            return _holds_wrapper(self.pid, self.wrapper)
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    async def wait(self) -> int | None:
        """Its exit status once it has ended; None when it said none (killed
        by a signal bash cannot trap, or ended before its wrapper ran)."""
        try:
            if self.pidfd is not None:
                await trio.lowlevel.wait_readable(self.pidfd)
            else:
                while self.running():  # noqa: ASYNC110 (nothing signals the end of a process not our child)
                    await trio.sleep(self.poll_interval)
        finally:
            self.close()
        # it said how it exited before it did: in the pipe by now
        self.launcher.drain()
        self.end = self.launcher.said.ends.pop(self.pid, None)
        return self.launcher.said.exits.pop(self.pid, None)

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def close(self) -> None:
        self._ended = True
        self._close_pidfd()
        self.launcher.said.forget(self.wrapper)


class LocalBackend:
    """Runs wrappers as processes of this host. See ``backend.Backend``."""

    runs_at_launch = True
    #: ``launch`` prepares the job directory itself, in the worker thread that
    #: hands it over: one thread hop per job instead of two
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
        #: what the launcher and the spares run (``bash`` option, else
        #: ``default_bash``)
        self.bash = bash if isinstance(bash, str) else default_bash()
        if not executable_file(self.bash):
            raise ValueError(f"[executors.{config.name}] bash: {self.bash} is not an executable file here")
        log.info("executor %s: jobs run under %s", config.name, self.bash)
        #: the wrappers this backend started, by batch id (pid): in spares
        #: (our children) and in its launcher's forks
        self._children: dict[str, _SpareChild | _Forked] = {}
        #: wrapper path -> batch id of our children
        self._by_wrapper: dict[str, str] = {}
        #: batch id -> what the wrapper said of its end (``said_end``)
        self._said_ends: dict[str, SaidEnd] = {}
        #: wrapper path -> pid of every wrapper alive when first needed: the
        #: orphans of a previous daemon (built once; see ``_orphan``)
        self._orphans: dict[str, int] | None = None
        self._orphans_lock = trio.Lock()
        self._spawning = trio.CapacityLimiter(SPAWN_THREADS)
        #: the launcher that takes new jobs (``maintain`` keeps one), if any
        self._launcher: _Launcher | None = None
        self._closed = False
        #: where the launcher and the spares run (the job directories'
        #: parent: a wrapper cds into its own scratch directory at once)
        self._cwd = os.path.join(state_dir, "jobs")

    async def launch(self, job_dir: JobDir, spec: StartJob) -> str:
        """The wrapper's pid once it has claimed the job (or found it claimed
        by another wrapper: the executor's ``wait`` and the status file tell
        the rest). Raises NotStarted when the wrapper could not set the job
        up, or could not be started; OSError when the job directory cannot be
        prepared. Cancelling it leaves the wrapper running."""
        _sweep()
        launcher = self._launcher
        if launcher is not None:
            # before it can say anything of it
            launcher.said.expect(job_dir.wrapper, job_dir.job_id)
        try:
            started = await trio.to_thread.run_sync(
                self._prepare_and_start, job_dir, spec, launcher, limiter=self._spawning
            )
        except BaseException:
            if launcher is not None:
                launcher.said.forget(job_dir.wrapper)
            raise
        if isinstance(started, _Launcher):
            return await self._launched(job_dir, started)
        if launcher is not None:
            launcher.said.forget(job_dir.wrapper)
        process, said = started
        child = _SpareChild(process, self.poll_interval)
        batch_id = str(process.pid)
        self._children[batch_id] = child
        self._by_wrapper[job_dir.wrapper] = batch_id
        try:
            claimed, text = await _read_claim(said)
            if claimed:
                return batch_id
            # no claim: the wrapper exits (or has), and its exit code says why
            status = await child.wait()
        except BaseException:
            self._forget(job_dir, batch_id)
            raise
        if status == CANNOT_START_EXIT:
            self._forget(job_dir, batch_id)
            raise NotStarted(_cannot_start_words(job_dir, text))
        # CLAIMED_EXIT (another wrapper has the job), or killed before its
        # claim: ``wait`` returns at once, and the status file decides
        return batch_id

    async def _launched(self, job_dir: JobDir, launcher: _Launcher) -> str:
        """``launch`` of a wrapper handed to ``launcher``: its pid once it
        has claimed the job, or has ended without (as ``launch``)."""
        said = launcher.said
        wrapper = job_dir.wrapper
        try:
            deadline = math.inf
            while wrapper not in said.pids:
                if wrapper in said.refused:
                    raise NotStarted(
                        f"the launcher (pid {launcher.process.pid}) could not start {wrapper}: {said.refused[wrapper]}"
                    )
                if launcher.ended or trio.current_time() > deadline:
                    # a reader took the path, and was killed before it said
                    # its pid (with the launcher, say), or nobody is left
                    raise NotStarted(f"the launcher (pid {launcher.process.pid}) ended before it started {wrapper}")
                if launcher.exited and deadline == math.inf:
                    # the paths no reader took are refused already; a
                    # reader that took this one says its pid at once
                    deadline = trio.current_time() + READER_GRACE
                with trio.move_on_at(deadline):
                    await launcher.news(wrapper)
            forked = _Forked(launcher, wrapper, said.pids[wrapper], self.poll_interval)
        except BaseException:
            said.forget(wrapper)
            raise
        batch_id = str(forked.pid)
        self._children[batch_id] = forked
        self._by_wrapper[wrapper] = batch_id
        try:
            while forked.pid not in said.claimed and forked.pid not in said.exits:
                if not forked.running():
                    launcher.drain()  # what it said before it ended
                    break
                # the claim comes in a millisecond or two; a wrapper killed
                # before it by a signal bash cannot trap says nothing more,
                # which a look at its pidfd every poll_interval finds
                with trio.move_on_after(self.poll_interval):
                    await launcher.news(wrapper)
        except BaseException:
            self._forget(job_dir, batch_id)
            raise
        if forked.pid in said.claimed:
            return batch_id
        words = said.words.get(wrapper, "")
        if said.exits.get(forked.pid) == CANNOT_START_EXIT:
            said.exits.pop(forked.pid)
            self._forget(job_dir, batch_id)
            raise NotStarted(_cannot_start_words(job_dir, words))
        # CLAIMED_EXIT (another wrapper has the job), or killed before its
        # claim: ``wait`` returns at once, and the status file decides
        return batch_id

    def _forget(self, job_dir: JobDir, batch_id: str) -> None:
        child = self._children.pop(batch_id, None)
        if child is not None:
            child.close()
        if self._by_wrapper.get(job_dir.wrapper) == batch_id:
            del self._by_wrapper[job_dir.wrapper]

    def close(self) -> None:
        """No job is started through the launcher after this: it exits (its
        forks, the jobs, run on) and ``maintain`` returns once they have
        said all they will."""
        self._closed = True
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None

    async def maintain(self) -> None:
        """Keep a launcher ready (``_Launcher``) until ``close``, and read
        what its forks say; a launcher that ends (killed, or a ``bash`` gone)
        is started again, after ``LAUNCHER_RESTART_DELAY`` when it lasted
        less than that. Until one is ready, each launch starts a bash of its
        own (``_Spare``). Returns once closed and each launcher's forks have
        said all they will (the jobs they run have ended)."""
        if not _pidfds_work():
            log.info("executor %s: this kernel has no pidfds: each job starts a bash of its own", self.config.name)
            return
        if await trio.to_thread.run_sync(_on_noexec_mount, self._cwd):
            log.info(
                "executor %s: %s is on a file system mounted noexec: each job starts a bash of its own",
                self.config.name, self._cwd,
            )
            return
        async with trio.open_nursery() as nursery:
            while not self._closed:
                began = trio.current_time()
                try:
                    launcher = await trio.to_thread.run_sync(_start_launcher, self.bash, self._cwd)
                except OSError as error:
                    log.warning("executor %s: cannot start a launcher: %s", self.config.name, error)
                    await trio.sleep(LAUNCHER_RESTART_DELAY)
                    continue
                nursery.start_soon(launcher.read)
                self._launcher = launcher
                if self._closed:  # closed while it started
                    self._launcher = None
                    launcher.close()
                try:
                    # ``close`` closes its pipes: it exits then
                    await _wait_child(launcher.process, self.poll_interval)
                finally:
                    if self._launcher is launcher:
                        self._launcher = None
                    if launcher.process.poll() is None:
                        _abandoned.add(launcher.process)
                    # also when cancelled (the executor goes): what no reader
                    # took is refused, and the pipe of paths closed
                    launcher.has_exited()
                if self._closed:
                    break
                log.warning(
                    "executor %s: the launcher (pid %d) ended (exit %s); starting another",
                    self.config.name, launcher.process.pid, launcher.process.returncode,
                )
                if trio.current_time() - began < LAUNCHER_RESTART_DELAY:
                    await trio.sleep(LAUNCHER_RESTART_DELAY)

    def _prepare_and_start(
        self, job_dir: JobDir, spec: StartJob, launcher: _Launcher | None
    ) -> _Launcher | tuple[subprocess.Popen[bytes], int]:
        """Prepare the job directory and hand the wrapper over: to
        ``launcher`` (returned) when there is one and it takes it, else to
        a spare made here (its process, and the read end of the pipe on
        which it says whether it claimed the job)."""
        if "\n" in job_dir.wrapper:  # a spare reads one line; a launcher's record ends at one
            raise NotStarted(f"the path {job_dir.wrapper!r} holds a newline: a spare cannot read it")
        # raises AlreadyStarted when the status file exists; no ``#!``, so
        # that a launcher's reader runs the wrapper in itself
        job_dir.prepare(spec, interpreter_line=False)
        if launcher is not None and launcher.run(job_dir.wrapper):
            return launcher
        try:
            spare = _Spare(self.bash, self._cwd)
        except OSError as error:
            # not the job's failure: the machine's limits (EAGAIN, ENOMEM,
            # EMFILE), or a ``bash`` that is gone since the start
            raise NotStarted(f"cannot start {self.bash} for {job_dir.wrapper}: {error}") from None
        if not spare.hand(job_dir.wrapper):
            raise NotStarted(f"{self.bash} exited before it was given {job_dir.wrapper}")
        return spare.process, spare.said

    async def wait(self, job_dir: JobDir, batch_id: str) -> int | None:
        """The wrapper's exit status (None for a previous daemon's wrapper,
        which is not our child). Cancelling it leaves the process running
        (it must outlive us)."""
        child = self._children.get(batch_id)
        if child is None:
            await _wait_foreign(int(batch_id), job_dir.wrapper, self.poll_interval)
            _sweep()
            return None
        try:
            exit_status = await child.wait()
        finally:
            self._forget(job_dir, batch_id)
        if isinstance(child, _Forked) and child.end is not None:
            self._said_ends[batch_id] = child.end
        return exit_status

    def said_end(self, batch_id: str) -> SaidEnd | None:
        """The end that the wrapper ``batch_id``, which ``wait`` saw end,
        said as it exited (its end record, and whether its logs are empty),
        if it said one; asked once, right after ``wait``."""
        return self._said_ends.pop(batch_id, None)

    async def find(self, job_dir: JobDir, status: Status | None) -> str | None:
        batch_id = self._by_wrapper.get(job_dir.wrapper)
        if batch_id is not None and self._children[batch_id].running():
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
            # the wrapper is gone: signal the group only while it has members
            # (the command's processes), so a reused pid is never hit
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
    """Read a spare's pipe until its wrapper says it claimed the job (True)
    or closes it without (False); what it said, as text. Owns
    ``descriptor``."""
    said = b""
    marker = CLAIMED_LINE.encode() + b" "
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
    empty, so a zombie is not.) The wrapper leads its process group: its
    forks (the subshell that runs the command) show the same command line
    but do not."""
    return pid > 0 and _wrapper_of(pid) == wrapper and _leads_group(pid)


def _holds_wrapper(pid: int, wrapper: str) -> bool:
    """Does ``pid`` hold ``wrapper`` open on ``SPARE_FD``, and lead its
    process group? ``_is_wrapper`` without the command line: the check of a
    launcher's wrapper whose pid the launcher's pipe has just said. Reading
    a command line reads the process's memory, and waits for its memory
    map while the process forks (the wrapper forks the command's
    subshell): the full check took 6.6% of the Trio thread's samples in a
    fan-out, this one 2.8% (docs/performance.md)."""
    return pid > 0 and _held_wrapper(pid) == wrapper and _leads_group(pid)


def _held_wrapper(pid: int) -> str | None:
    """The file open on ``pid``'s ``SPARE_FD``, if any."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/{SPARE_FD}")
    except OSError:
        return None  # gone, or a spare that has not opened one yet
    return target.removesuffix(" (deleted)")


def _wrapper_of(pid: int) -> str | None:
    """The wrapper that process ``pid`` runs, if it runs one: a spare's or a
    launcher's fork's, on ``SPARE_FD``; ``bash WRAPPER``'s (a daemon before
    spares), on its command line."""
    arguments = _cmdline(pid)
    if arguments[3:4] in ([SPARE_NAME], [LAUNCHER_NAME]):
        return _held_wrapper(pid)
    return arguments[1] if len(arguments) > 1 and arguments[1].endswith("/wrapper.sh") else None


def _leads_group(pid: int) -> bool:
    """A spare leads its session, and with it its process group; a
    launcher's fork leads a process group of its own (``set -m``)."""
    try:
        return os.getpgid(pid) == pid
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
            if wrapper is not None and wrapper.startswith(prefix) and _leads_group(int(entry)):
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
