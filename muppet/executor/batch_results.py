"""What the batch systems answer, parsed: the shapes that the Grid Engine and
Slurm parsers (``gridengine.py``, ``slurm.py``) return and the backend
(``batch.py``) acts on.

A queue listing is a dict of :class:`QueueEntry` by batch id; a submit command
gives a :class:`SubmitOutcome`; a finished job's record (qacct, scontrol,
jobcomp) a :class:`BatchEnd`. Parsers never raise on surprising output: they
return :class:`Unparseable` (or leave a field None), and the caller treats that
like a transient failure of the batch system (wait, poll again), never as a
job's result. Pure: no I/O, no Trio.
"""

from __future__ import annotations

import enum
import re

import attrs

__all__ = [
    "JOB_NAME_PREFIX",
    "BatchEnd",
    "Phase",
    "QueueEntry",
    "SubmitOutcome",
    "Unparseable",
    "classify_submit_error",
    "clean_message",
    "job_id_of",
    "job_name",
    "submit_may_have_gone_through",
    "unparseable",
]


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
    transient failure worth retrying, where ``uncertain`` says whether the
    job may have been submitted all the same (the command timed out, or
    exited 0 without an id we can read) or surely was not (the command said
    it could not reach the controller: the controller is down or out of
    reach).
    """

    batch_id: str = ""
    error: str = ""
    permanent: bool = False
    uncertain: bool = False

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


#: words of a command that reached the controller but got no answer: the
#: request may have been carried out (Slurm: "Socket timed out on send/recv
#: operation"; Grid Engine: "got syncron message receive timeout error")
_NO_ANSWER = re.compile(r"timed? ?out", re.IGNORECASE)


def submit_may_have_gone_through(returncode: int | None, text: str, *, timed_out: bool) -> bool:
    """Whether a submit command that gave no job id may have submitted the
    job nonetheless: it was stopped after its timeout, it exited 0 (accepted)
    without an id we can read, or it says it waited in vain for the
    controller's answer. A command that could not be run, or that exited
    non-zero saying it could not reach the controller, submitted nothing."""
    if timed_out or returncode == 0:
        return True
    if returncode is None:
        return False  # it could not be run at all
    return bool(_NO_ANSWER.search(text))


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
