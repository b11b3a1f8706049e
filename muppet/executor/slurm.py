"""The Slurm executor (``type = "slurm"``): sbatch --parsable, squeue, scontrol
show job (and the jobcomp/filetxt log when the controller has forgotten the
job), scancel.

Tested against Slurm 22.05 from Debian (``.ci/services/start-slurm.sh``). The
parsers at the top are pure functions, tested on captured real output in
``tests/data/batch``; the backend below runs the commands with
``trio.run_process`` and leaves the shared logic (batched polling, submit
retries) to ``muppet.executor.batch``; resources are parsed by
``muppet.resources``.
"""

from __future__ import annotations

import logging
import os
import re

import trio

from ..model import ExecutorConfig
from ..resources import Resources, format_hms
from .batch import BatchBackend
from .batch_poller import CommandResult
from .batch_results import (
    BatchEnd,
    Phase,
    QueueEntry,
    SubmitOutcome,
    Unparseable,
    classify_submit_error,
    clean_message,
    submit_may_have_gone_through,
    unparseable,
)
from .jobdir import JobDir

log = logging.getLogger(__name__)

# --- parsers (pure; tested on captured Slurm 22.05 output) ---------------------------

_SBATCH = re.compile(r"^(\d+(?:_\d+)?)(?:;\S*)?$")


def parse_sbatch(result: CommandResult) -> SubmitOutcome:
    """``sbatch --parsable`` prints ``ID`` or ``ID;cluster``."""
    uncertain = submit_may_have_gone_through(result.returncode, result.text, timed_out=result.timed_out)
    if result.returncode is None:
        return SubmitOutcome(error=clean_message(result.text) or "sbatch did not finish", uncertain=uncertain)
    if result.returncode == 0:
        for line in result.stdout.splitlines():
            found = _SBATCH.match(line.strip())
            if found:
                return SubmitOutcome(batch_id=found.group(1))
        return SubmitOutcome(error=f"sbatch printed no job id: {clean_message(result.text)!r}", uncertain=True)
    message = clean_message(result.text) or f"sbatch exited with {result.returncode}"
    permanent = classify_submit_error(result.text)
    return SubmitOutcome(error=message, permanent=permanent, uncertain=uncertain and not permanent)


_PENDING_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
)
_RUNNING_STATES = frozenset(
    {"RUNNING", "SUSPENDED", "COMPLETING", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
)
_DONE_STATES = frozenset(
    {
        "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
        "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
    }
)


def slurm_phase(state: str) -> Phase:
    # sacct writes "CANCELLED by 0"; squeue and scontrol the bare word
    word = state.split()[0].upper() if state.split() else ""
    word = word.rstrip("+")
    if word in _DONE_STATES:
        return Phase.DONE
    if word in _RUNNING_STATES:
        return Phase.RUNNING
    # PENDING and anything newer than 22.05 that we do not know: still queued
    return Phase.PENDING


#: the squeue format the poller asks for; the name goes last because it is the
#: only column a user can fill with "|"
SQUEUE_FORMAT = "%i|%T|%r|%j"


def parse_squeue(text: str) -> dict[str, QueueEntry] | Unparseable:
    """``squeue -h -t all -o '%i|%T|%r|%j'``: one job a line; an empty listing
    is a valid one (no jobs). Any line we cannot read spoils the listing: a
    job missing from it would be taken for a finished one."""
    jobs: dict[str, QueueEntry] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|", 3)
        if len(parts) != 4 or not re.fullmatch(r"\d+(?:_\[?[\d\-,%]+\]?)?", parts[0]) or not parts[1]:
            return unparseable("squeue line", line)
        batch_id, state, reason, name = parts
        jobs[batch_id] = QueueEntry(batch_id, name, slurm_phase(state), state, reason)
    return jobs


_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][\w/:.]*)=")


def parse_key_values(text: str) -> dict[str, str]:
    """``Key=Value Key2=Value with spaces ...`` (scontrol, jobcomp): a value
    runs up to the next ``Key=``. Only ``Command=`` and ``WorkDir=``-like values
    hold spaces, and they hold no ``=`` in practice."""
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(text))
    for i, found in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        fields.setdefault(found.group(1), text[found.end():end].strip())
    return fields


def parse_scontrol_jobs(text: str) -> list[dict[str, str]] | Unparseable:
    """``scontrol show job [ID]`` (multi-line or ``-o``): one dict per job."""
    if "Invalid job id" in text:
        return []
    records = [r for r in re.split(r"(?=^JobId=)", text, flags=re.MULTILINE) if r.strip()]
    jobs = []
    for record in records:
        fields = parse_key_values(" ".join(record.split("\n")))
        if not fields.get("JobId", "").split() or "JobState" not in fields:
            return unparseable("scontrol show job record", record)
        jobs.append(fields)
    if not jobs and text.strip():
        return unparseable("scontrol show job output", text)
    return jobs


#: Slurm states in which Slurm, not the job, ended it
_KILLED_WORDS = {
    "TIMEOUT": "the wall-clock limit was reached",
    "CANCELLED": "cancelled (scancel or an administrator)",
    "OUT_OF_MEMORY": "the memory limit was exceeded",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "PREEMPTED": "preempted",
    "DEADLINE": "its deadline passed",
    "REVOKED": "revoked",
}


def _exit_code(text: str) -> tuple[int | None, int | None]:
    found = re.fullmatch(r"\s*(\d+):(\d+)\s*", text or "")
    if not found:
        return None, None
    code, signal = int(found.group(1)), int(found.group(2))
    return code, (signal or None)


def slurm_end(fields: dict[str, str], name: str = "") -> BatchEnd | None:
    """A finished job's record (scontrol or jobcomp fields) as a BatchEnd;
    None when the record is for another job name or not finished."""
    batch_id = fields.get("JobId", "").split()[0] if fields.get("JobId", "").split() else ""
    job_name = fields.get("JobName") or fields.get("Name") or ""
    if name and job_name != name:
        return None
    state = fields.get("JobState", "")
    if slurm_phase(state) is not Phase.DONE:
        return None
    word = state.split()[0].upper()
    code, signal = _exit_code(fields.get("ExitCode", ""))
    killed = ""
    if word in _KILLED_WORDS:
        reason = fields.get("Reason", "")
        killed = f"Slurm ended the job: {_KILLED_WORDS[word]} ({word}"
        killed += f", reason {reason})" if reason and reason != "None" else ")"
    host = fields.get("BatchHost") or fields.get("NodeList") or ""
    if host == "(null)":
        host = ""
    return BatchEnd(
        batch_id=batch_id,
        name=job_name,
        exit_code=None if signal else code,
        signal=signal,
        killed=killed,
        host=host,
        state=word,
    )


def parse_scontrol_end(text: str, batch_id: str, name: str = "") -> BatchEnd | Unparseable | None:
    """The end of job ``batch_id`` from ``scontrol show job ID``; None when the
    controller no longer (or never) knew it, or it has not ended."""
    jobs = parse_scontrol_jobs(text)
    if isinstance(jobs, Unparseable):
        return jobs
    for fields in reversed(jobs):
        if fields.get("JobId", "").split()[0] == batch_id:
            return slurm_end(fields, name)
    return None


def parse_jobcomp(text: str, batch_id: str, name: str = "") -> BatchEnd | None:
    """The last line for ``batch_id`` (and ``name``) in a jobcomp/filetxt log.
    Lines we cannot read are skipped: the log is only a fallback."""
    found = None
    needle = f"JobId={batch_id} "
    for line in text.splitlines():
        if not line.startswith(needle):
            continue
        end = slurm_end(parse_key_values(line), name)
        if end is not None:
            found = end
    return found


def parse_jobcomp_location(text: str) -> str | None:
    """The completion log's path from ``scontrol show config``, when the
    cluster keeps one (JobCompType=jobcomp/filetxt)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    if fields.get("JobCompType") != "jobcomp/filetxt":
        return None
    location = fields.get("JobCompLoc", "")
    return location if location.startswith("/") else None


#: the completion log can be long: read only its end
JOBCOMP_TAIL_BYTES = 4 * 1024 * 1024


def _read_tail(path: str, limit: int = JOBCOMP_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - limit))
            return file.read().decode("utf-8", "replace")
    except OSError:
        return ""


# --- the backend ------------------------------------------------------------------------


class SlurmBackend(BatchBackend):
    """``[executors.NAME] type = "slurm"``.

    Resources: ``partition``/``queue`` (``-p``), ``cpus``/``slots`` (``-c``),
    ``memory`` for the whole job (``--mem``), ``walltime`` (``-t``),
    ``account`` (``-A``), ``submit_options`` (added last, so they win).
    ``parallel_environment`` is a Grid Engine notion and ignored here.

    A finished job's exit code and state come from ``scontrol show job``
    (kept for MinJobAge seconds), then from the jobcomp/filetxt log if the
    cluster keeps one.
    """

    system = "Slurm"
    #: set by Slurm in the job's environment (sbatch(1), "OUTPUT ENVIRONMENT VARIABLES")
    batch_id_variable = "SLURM_JOB_ID"

    def __init__(self, config: ExecutorConfig, state_dir: str) -> None:
        super().__init__(config, state_dir)
        #: the jobcomp/filetxt log's path (None: the cluster keeps none), once asked
        self._jobcomp: str | None = None
        self._jobcomp_asked = False

    def submit_argv(self, job_dir: JobDir, resources: Resources) -> list[str]:
        argv = [
            "sbatch", "--parsable", "-J", job_dir.name,
            # the wrapper writes stdout, stderr and status itself
            "-o", "/dev/null", "-e", "/dev/null",
            "-D", job_dir.root,
            # a requeued job would find itself claimed (the wrapper's status
            # file) and do nothing: let a failed node end it, with a reason
            "--no-requeue",
        ]
        if resources.queue:
            argv += ["-p", resources.queue]
        if resources.cpus:
            argv += ["-c", str(resources.cpus)]
        if resources.memory:
            argv += [f"--mem={-(-resources.memory // 1024**2)}M"]
        if resources.walltime:
            argv += ["-t", format_hms(resources.walltime)]
        if resources.account:
            argv += ["-A", resources.account]
        argv += list(resources.submit_options)
        argv.append(job_dir.wrapper)
        return argv

    def parse_submit(self, result: CommandResult) -> SubmitOutcome:
        return parse_sbatch(result)

    def list_argv(self) -> list[str]:
        # -t all: finished jobs stay listed (MinJobAge), with their final state
        return ["squeue", "--me", "-h", "-t", "all", "-o", SQUEUE_FORMAT]

    def parse_listing(self, text: str) -> dict[str, QueueEntry] | Unparseable:
        return parse_squeue(text)

    async def ended(self, batch_id: str, name: str) -> BatchEnd | Unparseable | None:
        result = await self._run(["scontrol", "show", "job", batch_id])
        if result.returncode == 0:
            end = parse_scontrol_end(result.stdout, batch_id, name)
            if end is not None:
                return end
        elif result.returncode is None or "Invalid job id" not in result.text:
            return unparseable("scontrol show job", result.text)
        # forgotten by the controller (MinJobAge passed, or it restarted)
        location = await self._jobcomp_location()
        if location:
            text = await trio.to_thread.run_sync(_read_tail, location)
            return parse_jobcomp(text, batch_id, name)
        return None

    async def _jobcomp_location(self) -> str | None:
        if not self._jobcomp_asked:
            result = await self._run(["scontrol", "show", "config"])
            if result.returncode != 0:
                return None  # ask again next time
            self._jobcomp = parse_jobcomp_location(result.stdout)
            self._jobcomp_asked = True
        return self._jobcomp

    def kill_argv(self, batch_id: str) -> list[str]:
        return ["scancel", batch_id]
