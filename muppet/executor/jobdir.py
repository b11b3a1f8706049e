"""A job's directory, its wrapper script and the status file the wrapper keeps.

Layout, under the daemon's ``state_dir``::

    jobs/<job_id>/wrapper.sh   what runs: environment, status records, the command
    jobs/<job_id>/stdout       the command's standard output
    jobs/<job_id>/stderr       the command's standard error
    jobs/<job_id>/status       the wrapper's records (see below)
    jobs/<job_id>/outputs.json the outputs about to be moved (see outputs.py)
    jobs/<job_id>/batch_id     a batch system's job id (batch backends only)
    scratch/<job_id>/          the job's working directory, made fresh

The status file is the job's own account, written by the wrapper on whatever
host runs it, so it holds even when no daemon watched. It is JSON lines, one
record per line, each written with a single ``write`` by bash's ``printf``::

    {"state":"running","pid":4711,"host":"node1","started":1795879793.356735}
    {"state":"ended","pid":4711,"host":"node1","started":...,"ended":...,"exit_code":0}

A wrapper submitted to a batch system also writes the system's id of the
batch job that runs it (``"batch_id":"8812"``, from ``SLURM_JOB_ID`` or
Grid Engine's ``JOB_ID``) in both records: when two batch jobs of one job
exist, the executor learns from it which one runs the command.

The wrapper creates the file with O_EXCL (bash ``set -C``) as it writes the start
record: that is the claim that makes the command run at most once per job
id, whatever a crashed daemon, a duplicate submission or a batch system's
requeue does. A second wrapper finds the file there and exits with
``CLAIMED_EXIT`` (75) without running anything. A wrapper that cannot set
the job up (open its output files, enter its scratch directory, create or
write its status file: a full disk, an I/O error) withdraws its claim and
exits with ``CANNOT_START_EXIT`` (74): the command did not run, and the
executor reports the job not started rather than failed (docs/executor.md).

Why not a temporary file and ``mv``: each ``mv`` is a process, and two of them
per job made the wrapper cost five times a plain spawn of ``true`` (measured on
the 2-core development box: 152 wrapper runs/s with two ``mv`` against 448/s
with appended records, 886/s for ``true``). A record is appended with one
``write``; a reader that catches it half-written, or finds garbage after a
crash, sees a line without its newline or invalid JSON and ignores it, so each
record appears whole or not at all.

The step's command is inlined in wrapper.sh (run by ``eval`` in a subshell),
not kept in a ``command.sh`` beside it: on the development box's ext4 every
file created costs about 0.25 ms of CPU (against 0.01 ms on tmpfs), and a job
needs six already (its directory, scratch, wrapper, status, stdout, stderr);
``bash command.sh`` would also cost a second bash start.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil

import attrs

from ..codec import format_time
from ..fileio import write_atomically
from ..messages import StartJob
from ..model import LOG_TAIL_BYTES

#: the wrapper's exit code when another wrapper has claimed the job already
#: (EX_TEMPFAIL from sysexits.h): this wrapper ran nothing, the other one runs
#: the command
CLAIMED_EXIT = 75
#: the wrapper's exit code when it could not set the job up: open its stdout
#: and stderr files, enter its scratch directory, create or write its status
#: file (EX_IOERR from sysexits.h). It claimed nothing (a status file it made
#: but could not write is removed again) and the command did not run.
CANNOT_START_EXIT = 74
#: the line the wrapper prints on its own stdout once it holds the claim,
#: followed by its pid; the local backend reads it from a pipe (a batch system
#: discards it)
CLAIMED_LINE = "muppet: claimed"
#: the line a wrapper run by a local executor's launcher prints as it exits,
#: followed by its pid and its exit status, on ``LAUNCHED_EXIT_FD``; and, once
#: it has written its end record, by ``QUIET`` or ``SPOKE`` (whether its
#: command left stdout and stderr empty) and that record: ``SaidEnd``
EXIT_LINE = "muppet: exit"
QUIET = "quiet"
SPOKE = "spoke"
#: the launcher's pipe, which a wrapper it runs keeps after its claim sends
#: its stdout to the job directory (closed for the step's command)
LAUNCHED_EXIT_FD = 8

#: errors of a file system or of the machine, never of a job: no space, no
#: quota left, an I/O error, a read-only file system, no file descriptors or
#: memory left. Moving a succeeded job's outputs is tried again after them
#: (the executor); any other error there (a file where a directory must go)
#: fails the job. Preparing a job directory takes every OSError for the
#: machine's, since the job gives it nothing but its id.
MACHINE_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: the status file's records as the wrapper's printf formats (see the module
#: docstring); ``%s`` after the record's fields is ``,"batch_id":"ID"`` or nothing
_START_RECORD = r'{"state":"running","pid":%d,"host":"%s","started":%s%s}\n'
_END_RECORD = r'%s{"state":"ended","pid":%d,"host":"%s","started":%s,"ended":%s,"exit_code":%d%s}\n'
#: a batch system's job id as the wrapper writes it: only characters that
#: need no escaping in JSON (ids are digits, with "." or "_" for array tasks)
_BATCH_ID = re.compile(r"[0-9A-Za-z._-]+\Z")


class AlreadyStarted(Exception):
    """``prepare`` found a status file: the wrapper has claimed the job (and
    maybe ended it) since the caller last looked. Nothing was touched."""

    def __init__(self, status: Status) -> None:
        super().__init__(f"the job has a status file already ({status.state})")
        self.status = status


@attrs.frozen
class Status:
    """What the wrapper has recorded so far.

    ``state`` is "claimed" (the file exists but holds no complete record: the
    wrapper took the job and died, or is writing its start record right now),
    "running" (start record) or "ended" (end record, with the exit code).
    """

    state: str
    pid: int | None = None
    host: str = ""
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    #: the batch job that wrote the record (batch backends; None in records
    #: of local wrappers and of wrappers older than the field)
    batch_id: str | None = None

    @property
    def has_ended(self) -> bool:
        return self.state == "ended"


def parse_status(text: str) -> Status:
    """The newest complete record of a status file's text.

    Defensive: a line without its newline, a line that is not a JSON object
    with the right fields, garbage after a crash: each counts as no record.
    An end record wins over a start record whatever the order.
    """
    best = Status("claimed")
    for line in text.split("\n")[:-1]:  # the last piece has no newline: unfinished
        try:
            record = json.loads(line)
        except ValueError:
            continue
        status = _record(record)
        if status is not None and (status.has_ended or best.state == "claimed"):
            best = status
    return best


def _record(record: object) -> Status | None:
    if not isinstance(record, dict):
        return None
    state, host = record.get("state"), record.get("host")
    pid, started = _as_int(record.get("pid")), _as_number(record.get("started"))
    if state not in ("running", "ended") or pid is None or not isinstance(host, str) or started is None:
        return None
    batch_id = record.get("batch_id")
    if not (isinstance(batch_id, str) and _BATCH_ID.match(batch_id)):
        batch_id = None
    if state == "running":
        return Status("running", pid=pid, host=host, started=started, batch_id=batch_id)
    ended, exit_code = _as_number(record.get("ended")), _as_int(record.get("exit_code"))
    if ended is None or exit_code is None:
        return None
    return Status("ended", pid, host, started, ended, exit_code, batch_id)


def _as_int(value: object) -> int | None:
    # JSON true/false are Python bools, which are ints: not a pid or an exit code
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@attrs.frozen
class SaidEnd:
    """The end of a job as its wrapper said it on exit (``EXIT_LINE``): the
    end record it had written to its status file, and whether stdout and
    stderr were left empty. With it the executor needs to read none of the
    three files (docs/executor.md, "Ends said on exit")."""

    status: Status
    quiet: bool


def parse_exit_line(words: str) -> tuple[int, int, SaidEnd | None] | None:
    """The pid, the exit status and the said end, if any, of an
    ``EXIT_LINE``'s ``words`` after the prefix; None when they are not
    that."""
    pid, _, rest = words.partition(" ")
    status, _, end = rest.partition(" ")
    if not (pid.isdigit() and status.isdigit()):
        return None
    said = None
    logs, _, record = end.partition(" ")
    if logs in (QUIET, SPOKE):
        recorded = parse_status(record + "\n")
        if recorded.has_ended and recorded.pid == int(pid) and recorded.exit_code == int(status):
            said = SaidEnd(recorded, logs == QUIET)
    return int(pid), int(status), said


def highest_job_id(state_dir: str) -> int:
    """The highest job id with a job directory under ``state_dir`` (0 if none).

    Blocking. A database that has not reached this id yet would hand the same
    ids to new jobs, and their "re-attach" would find another job's status.
    """
    try:
        names = os.listdir(os.path.join(state_dir, "jobs"))
    except FileNotFoundError:
        return 0
    return max((int(name) for name in names if name.isdigit()), default=0)


def job_ids_with_files(state_dir: str) -> list[int]:
    """The job ids that have a job directory or a scratch directory under
    ``state_dir``, in order. Blocking."""
    found: set[int] = set()
    for part in ("jobs", "scratch"):
        try:
            names = os.listdir(os.path.join(state_dir, part))
        except FileNotFoundError:
            continue
        found.update(int(name) for name in names if name.isdigit())
    return sorted(found)


def remove_job_files(state_dir: str, job_id: int) -> str | None:
    """Remove the job directory and the scratch directory of job ``job_id``
    (its whole output, its wrapper, its status file), for good: only for a
    job that has ended (the history task asks the database first,
    muppet/history.py). Blocking. Returns what went wrong, or None; a
    directory that is not there is no trouble."""
    for part in ("jobs", "scratch"):
        path = os.path.join(state_dir, part, str(job_id))
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            return f"cannot remove {path}: {error.strerror or error}"
    return None


class JobDir:
    """The paths of one job; the methods do blocking file work: call them in a
    worker thread (``trio.to_thread.run_sync``)."""

    def __init__(self, state_dir: str, job_id: int) -> None:
        self.job_id = job_id
        #: the name a batch backend gives the job
        self.name = f"muppet-{job_id}"
        self.root = os.path.join(state_dir, "jobs", str(job_id))
        self.scratch = os.path.join(state_dir, "scratch", str(job_id))
        self.wrapper = os.path.join(self.root, "wrapper.sh")
        self.stdout = os.path.join(self.root, "stdout")
        self.stderr = os.path.join(self.root, "stderr")
        self.status = os.path.join(self.root, "status")
        self.plan = os.path.join(self.root, "outputs.json")
        self.batch_id_file = os.path.join(self.root, "batch_id")

    def __repr__(self) -> str:
        return f"JobDir({self.root!r})"

    def read_status(self) -> Status | None:
        """None when there is no status file (the wrapper has not claimed the
        job); otherwise its newest complete record (see ``parse_status``)."""
        try:
            with open(self.status, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        return parse_status(data.decode("utf-8", errors="replace"))

    def prepare(
        self, spec: StartJob, batch_id_variable: str | None = None, *, interpreter_line: bool = True
    ) -> None:
        """Write the wrapper, make the scratch directory fresh.

        Only for a job without a status file: its command has never run, so
        whatever an earlier attempt left behind (a wrapper, a scratch
        directory, empty output files: a launch on a full disk, a batch
        system that did not take the job) can go, and preparing the same job
        again is always safe. ``batch_id_variable`` names the variable in
        which a batch system gives the wrapper its job id (``SLURM_JOB_ID``,
        ``JOB_ID``), for the status records (see the module docstring);
        ``interpreter_line``, whether the wrapper begins with ``#!``
        (``render_wrapper``). The wrapper is executable.

        Raises AlreadyStarted when there is a status file; ValueError when
        the job itself is wrong (an environment variable's name, a command
        that is not text), before anything is touched; OSError when the file
        system fails (full, read-only, an I/O error), naming the file, with a
        wrapper written only in part removed again.
        """
        script = render_wrapper(self, spec, batch_id_variable, interpreter_line=interpreter_line).encode("utf-8")
        status = self.read_status()
        if status is not None:
            raise AlreadyStarted(status)
        _make_directory(self.root)
        if os.path.lexists(self.scratch):
            shutil.rmtree(self.scratch)
        _make_directory(self.scratch)
        try:
            with open(_create_executable(self.wrapper), "wb") as file:
                file.write(script)
        except OSError as error:
            # a wrapper in part must not pass for a prepared job: a batch
            # backend takes a wrapper for a sign that the job may have been
            # submitted (``BatchBackend.find``)
            self.remove_wrapper()
            if error.filename is None:  # raised by write() or close(), not open()
                error.filename = self.wrapper
            raise

    def remove_wrapper(self) -> None:
        """Remove the wrapper script, if any: the job was not handed to anyone."""
        try:
            os.unlink(self.wrapper)
        except OSError:
            pass  # gone already, or the file system fails: nothing to do about it here

    def forget_batch_id(self) -> None:
        """Remove the recorded batch id: that batch job ended without running
        the command, and must not be re-attached to."""
        try:
            os.unlink(self.batch_id_file)
        except OSError:
            # gone already; or the file system fails, and the next start
            # re-attaches to that ended batch job, finds again that it ran
            # nothing, and tries this again
            pass

    def read_tails(self, limit: int = LOG_TAIL_BYTES) -> tuple[str, str]:
        """The last ``limit`` bytes of stdout and stderr, as text."""
        return _tail(self.stdout, limit), _tail(self.stderr, limit)

    def write_batch_id(self, batch_id: str) -> None:
        """Record a batch system's job id, durably and never half there
        (``fileio.write_atomically``): after a crash the id is how the next
        daemon finds the job in the batch system."""
        write_atomically(self.batch_id_file, (batch_id + "\n").encode())

    def read_batch_id(self) -> str | None:
        try:
            with open(self.batch_id_file, encoding="utf-8") as file:
                return file.read().strip() or None
        except FileNotFoundError:
            return None

    def remove_scratch(self) -> None:
        try:
            os.rmdir(self.scratch)  # the common case, and far cheaper than rmtree
        except OSError:
            shutil.rmtree(self.scratch, ignore_errors=True)


def disk_trouble(path: str) -> str:
    """What is wrong with the file system of ``path`` as statvfs(2) sees it
    (full, out of inodes, read-only), or "" when nothing shows: words for a
    reason when a wrapper on another host could not write there. Blocking."""
    try:
        stats = os.statvfs(path)
    except OSError as error:
        return str(error)
    if stats.f_flag & os.ST_RDONLY:
        return f"the file system of {path} is read-only"
    if stats.f_bavail == 0:
        return f"the file system of {path} is full"
    if stats.f_files and stats.f_favail == 0:
        return f"the file system of {path} has no free inodes"
    return ""


def _make_directory(path: str) -> None:
    # one mkdir in the common case: the parent (jobs/, scratch/) is there
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


def _tail(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - limit))
            data = file.read(limit)
    except FileNotFoundError:
        return ""
    if len(data) == limit and size > limit:
        # the cut may have split a UTF-8 character: drop its continuation bytes
        # rather than show a replacement character
        start = 0
        while start < min(3, len(data)) and data[start] & 0xC0 == 0x80:
            start += 1
        data = data[start:]
    return data.decode("utf-8", errors="replace")


def job_environment(job_dir: JobDir, spec: StartJob) -> dict[str, str]:
    """The variables the command sees besides the wrapper's own environment:
    the MUPPET_* ones, then the step's ``env`` (which may override them)."""
    job = spec.job
    environment = {
        "MUPPET_SCRATCH": job_dir.scratch,
        "MUPPET_JOB_DIR": job_dir.root,
        "MUPPET_RUN_ID": str(job.run_id),
        "MUPPET_JOB_ID": str(job.id),
        "MUPPET_JOB_INDEX": str(job.index),
        "MUPPET_JOB_COUNT": str(job.count),
        "MUPPET_REFERENCE_TIME": format_time(spec.reference_time) or "",
        "MUPPET_PIPELINE": job.pipeline,
        "MUPPET_STEP": job.step,
    }
    for name, value in spec.step.env.items():
        if not _NAME.match(name):
            raise ValueError(
                f"step {job.pipeline}.{job.step}: env: {name!r} is not a valid environment variable name"
            )
        environment[name] = str(value)
    return environment


def _create_executable(path: str) -> int:
    """A descriptor on ``path`` made anew, executable as the umask allows (an
    earlier attempt's file goes, whatever its mode)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o755)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, 0o755)


def render_wrapper(
    job_dir: JobDir, spec: StartJob, batch_id_variable: str | None = None, *, interpreter_line: bool = True
) -> str:
    """The bash script that runs one job, self-contained so that a batch node
    can run a copy of it: everything the job needs is inside.

    Only builtins run besides the command itself (no ``date``, ``hostname``,
    ``mv``): it is run once per job and its cost is the engine's overhead.
    Only on the paths where the file system fails does it run ``rm`` (to
    withdraw a claim it could not write) or ``sleep`` (between attempts to
    write the end record).

    ``batch_id_variable`` (``SLURM_JOB_ID``, ``JOB_ID``) is read before the
    step's ``env`` is exported, so that the step cannot change it.

    Without ``interpreter_line`` the script does not begin with ``#!``: a
    local executor's launcher runs it with ``exec`` in a fork of itself, and
    bash runs a file without one (a script ``execve`` refuses with ENOEXEC)
    in that same process instead of starting a new bash (docs/executor.md,
    "The launcher"). Run by hand, it wants ``bash wrapper.sh``.
    """
    if batch_id_variable is not None and not _NAME.match(batch_id_variable):
        raise ValueError(f"batch_id_variable: {batch_id_variable!r} is not a variable name")
    exports = "\n".join(
        f"export {name}={shlex.quote(value)}" for name, value in job_environment(job_dir, spec).items()
    )
    job_id = spec.job.id
    status = shlex.quote(job_dir.status)
    batch_id = ""
    if batch_id_variable is not None:
        batch_id = (
            f'[ -n "${{{batch_id_variable}-}}" ] && printf -v _muppet_batch_id \',"batch_id":"%s"\' '
            f'"${{{batch_id_variable}//[^0-9A-Za-z._-]/}}"\n'
        )
    first_line = "#!/bin/bash" if interpreter_line else "# bash script: run it by hand with bash wrapper.sh"
    return f"""{first_line}
# MUPPET job {job_id}: {spec.job.pipeline}.{spec.job.step}[{spec.job.index}], run {spec.job.run_id}
# Written by the daemon; the status file is its record of the run (see docs/executor.md).
# Run by a local executor's launcher (arguments "launched" and the launcher's bash),
# it says how it exits on descriptor {LAUNCHED_EXIT_FD}: the daemon is not its parent; and it
# takes the launcher's $BASH, which bash set anew for it (docs/executor.md, "The launcher").
_muppet_said_end=
if [ "${{1-}}" = launched ]; then
    BASH=$2
    trap 'echo "{EXIT_LINE} $$ $?$_muppet_said_end" >&{LAUNCHED_EXIT_FD} 2>/dev/null' EXIT
fi
set --
_muppet_batch_id=
{batch_id}{exports}
_muppet_started=${{EPOCHREALTIME/,/.}}
# Set the job up before claiming it, so that a failure here (a full disk, an I/O
# error) claims nothing: stdout and stderr opened for appending (a second wrapper
# must not truncate the first one's output), the scratch directory entered.
if ! exec 5>>{shlex.quote(job_dir.stdout)} 6>>{shlex.quote(job_dir.stderr)} || ! cd "$MUPPET_SCRATCH"; then
    echo "muppet: job {job_id}: cannot open the output files in $MUPPET_JOB_DIR" \\
        "or enter $MUPPET_SCRATCH; not started" >&2
    exit {CANNOT_START_EXIT}
fi
# Claim the job: O_EXCL creation of the status file, so the command runs at most once.
set -C
if ! exec 3>{status}; then
    if [ -e {status} ]; then
        echo "muppet: job {job_id} was started already (status file exists); not running it again" >&2
        exit {CLAIMED_EXIT}
    fi
    echo "muppet: job {job_id}: cannot create the status file "{status}"; not started" >&2
    exit {CANNOT_START_EXIT}
fi
set +C
if ! printf '{_START_RECORD}' $$ "$HOSTNAME" "$_muppet_started" "$_muppet_batch_id" >&3; then
    # The claim holds no record (a full disk, an I/O error): withdraw it. The
    # file is this wrapper's own (O_EXCL), so no other wrapper's claim goes.
    exec 3>&-
    /bin/rm -f {status}
    echo "muppet: job {job_id}: cannot write the status file "{status}"; not started" >&2
    exit {CANNOT_START_EXIT}
fi
exec 3>&-
# Tell a local executor reading our stdout that the job is claimed (by this
# process: a launcher's wrappers share one pipe); SIGPIPE is ignored meanwhile,
# so that a daemon that has died since cannot kill the job.
trap '' PIPE
echo "{CLAIMED_LINE} $$" 2>/dev/null
trap - PIPE
# A signal to the wrapper waits for the command to end (bash runs a trap only
# then), so the end record is still written; the command gets the default action.
_muppet_exit=
trap '_muppet_exit=${{_muppet_exit:-143}}' TERM
trap '_muppet_exit=${{_muppet_exit:-130}}' INT
trap '_muppet_exit=${{_muppet_exit:-129}}' HUP
exec </dev/null >&5 2>&6 5>&- 6>&-
if [ -z "$_muppet_exit" ]; then
    # a subshell, so that the command's own exit, exec or traps leave the wrapper
    # alone; without the descriptors on which a local executor holds this file
    # and hears how it exits (docs/executor.md)
    ( eval {shlex.quote(spec.step.command)} ) 7<&- {LAUNCHED_EXIT_FD}>&-
    _muppet_exit=$?
fi
_muppet_ended=${{EPOCHREALTIME/,/.}}
# The command has run: its exit code must reach the status file. A write that
# fails (a full disk, an I/O error) is tried again until it succeeds, each
# retry on a new line so that a record written in part stays apart. A job
# directory that is gone has no reader left (state_dir removed), so it stops.
printf -v _muppet_record '{_END_RECORD}' "" $$ "$HOSTNAME" "$_muppet_started" "$_muppet_ended" "$_muppet_exit" \\
    "$_muppet_batch_id"
_muppet_line= _muppet_delay=1
until printf '%s%s' "$_muppet_line" "$_muppet_record" >>{status} 2>/dev/null; do
    [ -d {shlex.quote(job_dir.root)} ] || exit $_muppet_exit
    _muppet_line=$'\\n'
    /bin/sleep $_muppet_delay
    _muppet_delay=$(( _muppet_delay < 30 ? _muppet_delay * 2 : 60 ))
done
# Recorded: a launcher's wrapper says the record as it exits, and whether the
# command left its logs empty, so that the daemon need read no file of it.
_muppet_logs={QUIET}
[ -s {shlex.quote(job_dir.stdout)} ] || [ -s {shlex.quote(job_dir.stderr)} ] && _muppet_logs={SPOKE}
_muppet_said_end=" $_muppet_logs ${{_muppet_record%$'\\n'}}"
exit $_muppet_exit
"""
