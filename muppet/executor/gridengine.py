"""The Grid Engine executor (``type = "gridengine"``): qsub, qstat, qacct, qdel.

Tested against Son of Grid Engine 8.1.9 from Debian (``.ci/services/start-sge.sh``).
The parsers at the top are pure functions, tested on captured real output in
``tests/data/batch``; the backend below runs the commands with
``trio.run_process`` and leaves the shared logic (batched polling, submit
retries) to ``muppet.executor.batch``; resources are parsed by
``muppet.resources``.
"""

from __future__ import annotations

import re
from xml.etree import ElementTree

from ..resources import ResourceError, Resources, format_hms
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

# --- parsers (pure; tested on captured Son of Grid Engine 8.1.9 output) ----------

_QSUB_TERSE = re.compile(r"^(\d+)(?:\.\d+-\d+:\d+)?$")
_QSUB_VERBOSE = re.compile(r"Your job(?:-array)? (\d+)[ .(]")


def parse_qsub(result: CommandResult) -> SubmitOutcome:
    """``qsub -terse`` prints the job id alone; without -terse "Your job N
    ("name") has been submitted". Refusals ("Unable to run job: ...") are
    permanent when they name the job's own request (queue, PE, resource)."""
    uncertain = submit_may_have_gone_through(result.returncode, result.text, timed_out=result.timed_out)
    if result.returncode is None:
        return SubmitOutcome(error=clean_message(result.text) or "qsub did not finish", uncertain=uncertain)
    if result.returncode == 0:
        for line in result.stdout.splitlines():
            line = line.strip()
            found = _QSUB_TERSE.match(line) or _QSUB_VERBOSE.search(line)
            if found:
                return SubmitOutcome(batch_id=found.group(1))
        # accepted but no id we can read: do not guess (and do not resubmit
        # blindly either: re-attach by name finds it if it exists)
        return SubmitOutcome(error=f"qsub printed no job id: {clean_message(result.text)!r}", uncertain=True)
    message = clean_message(result.text) or f"qsub exited with {result.returncode}"
    permanent = classify_submit_error(result.text)
    return SubmitOutcome(error=message, permanent=permanent, uncertain=uncertain and not permanent)


def sge_phase(state: str) -> Phase:
    """The state letters of qstat (qw, hqw, r, t, Rr, Eqw, dr, s, ...)."""
    if "E" in state:
        return Phase.ERROR
    if "q" in state:
        return Phase.PENDING
    if any(c in state for c in "rtRsSTd"):
        return Phase.RUNNING
    return Phase.PENDING


def parse_qstat_xml(text: str) -> dict[str, QueueEntry] | Unparseable:
    """``qstat -xml``: every job_list element, running (queue_info) or pending
    (job_info). A listing with any entry we cannot read is unparseable as a
    whole: a job missing from a listing would be taken for a finished one."""
    if "<job_info" not in text:
        return unparseable("qstat -xml output", text)
    try:
        root = ElementTree.fromstring(text.strip())
    except ElementTree.ParseError as exc:
        return unparseable(f"qstat -xml output ({exc})", text)
    jobs: dict[str, QueueEntry] = {}
    for element in root.iter("job_list"):
        number = (element.findtext("JB_job_number") or "").strip()
        state = (element.findtext("state") or "").strip()
        if not number.isdigit() or not state:
            return unparseable("qstat -xml job entry", ElementTree.tostring(element, "unicode"))
        name = (element.findtext("JB_name") or "").strip()
        # an array job lists one entry per task; the job stays listed while any is
        entry = QueueEntry(number, name, sge_phase(state), state)
        previous = jobs.get(number)
        if previous is None or previous.phase is Phase.PENDING:
            jobs[number] = entry
    return jobs


_QACCT_SEPARATOR = re.compile(r"^=+\s*$", re.MULTILINE)
_QACCT_LINE = re.compile(r"^(\w+)\s+(.*?)\s*$")

#: qacct's "failed" codes that need a reader's explanation (sge_status(5))
_FAILED_WORDS = {
    "37": "a limit enforced by the qmaster (h_rt, h_cpu or h_vmem)",
    "100": "killed after the job started (qdel, or a limit)",
}


def parse_qacct(text: str, batch_id: str, name: str = "") -> BatchEnd | Unparseable | None:
    """``qacct -j ID``: None when there is no record (yet). With ``name``,
    only records of that job name count: ids are reused after the qmaster is
    killed, and then qacct shows several records; the last one wins."""
    if re.search(r"job id \S+ not found", text) or not text.strip():
        return None
    chunks = [c for c in _QACCT_SEPARATOR.split(text) if c.strip()]
    records: list[dict[str, str]] = []
    for chunk in chunks:
        fields: dict[str, str] = {}
        for line in chunk.splitlines():
            found = _QACCT_LINE.match(line)
            if found:
                fields[found.group(1)] = found.group(2)
        if "jobnumber" in fields or "exit_status" in fields:
            records.append(fields)
    if not records:
        return unparseable("qacct output", text)
    matching = [
        r for r in records
        if r.get("jobnumber", batch_id) == batch_id and (not name or r.get("jobname") == name)
    ]
    if not matching:
        return None
    record = matching[-1]
    status_text = record.get("exit_status", "").split()
    failed_text = record.get("failed", "").strip()
    if not status_text or not status_text[0].lstrip("-").isdigit():
        return unparseable("qacct exit_status", text)
    exit_status = int(status_text[0])
    failed_code, _, failed_message = failed_text.partition(":")
    failed_code = failed_code.strip() or "0"
    signal = exit_status - 128 if exit_status > 128 else None
    killed = ""
    if failed_code != "0":
        explained = _FAILED_WORDS.get(failed_code) or failed_message.strip() or "no reason given"
        killed = f"Grid Engine ended the job: failed {failed_code} ({failed_message.strip() or explained})"
        if failed_code in _FAILED_WORDS:
            killed = f"Grid Engine ended the job: {explained} [failed {failed_code}: {failed_message.strip()}]"
        if exit_status:
            killed += f", exit_status {exit_status}"
    return BatchEnd(
        batch_id=batch_id,
        name=record.get("jobname", ""),
        exit_code=None if signal else exit_status,
        signal=signal,
        killed=killed,
        host=record.get("hostname", ""),
        state=f"failed {failed_code}",
    )


def parse_error_reason(text: str) -> str:
    """The "error reason" lines of ``qstat -j ID`` for a job in state E."""
    reasons = []
    for line in text.splitlines():
        found = re.match(r"^error reason\s+\d+:\s*(.*?)\s*$", line)
        if found and found.group(1):
            reasons.append(found.group(1))
    return "; ".join(reasons)[:1000]


# --- the backend ------------------------------------------------------------------------


class GridEngineBackend(BatchBackend):
    """``[executors.NAME] type = "gridengine"``.

    Resources: ``queue`` (``-q``), ``slots``/``cpus`` (``-pe
    <parallel_environment> N``; more than one slot needs a parallel
    environment), ``memory`` for the whole job (``-l h_vmem``, which Grid
    Engine counts per slot: MUPPET divides), ``walltime`` (``-l h_rt``),
    ``account`` (``-A``), ``submit_options`` (added last, so they win).
    """

    system = "Grid Engine"
    #: set by Grid Engine in the job's environment (qsub(1), "ENVIRONMENTAL VARIABLES")
    batch_id_variable = "JOB_ID"

    def submit_argv(self, job_dir: JobDir, resources: Resources) -> list[str]:
        argv = [
            "qsub", "-terse", "-N", job_dir.name,
            # the wrapper writes stdout, stderr and status itself
            "-o", "/dev/null", "-e", "/dev/null",
            "-S", "/bin/bash", "-wd", job_dir.root,
            # the job sees the daemon's environment, as a local job does
            "-V",
            # a rerun would find the job claimed (the wrapper's status file) and
            # do nothing: let a failed node end the job instead, with a reason
            "-r", "n",
        ]
        if resources.queue:
            argv += ["-q", resources.queue]
        slots = resources.cpus or 1
        if resources.cpus and resources.cpus > 1:
            if not resources.parallel_environment:
                raise ResourceError(
                    f"executor {self.config.name}: slots = {resources.cpus} needs parallel_environment"
                    " (a Grid Engine PE such as 'smp') in the executor or the step's resources"
                )
            argv += ["-pe", resources.parallel_environment, str(resources.cpus)]
        elif resources.parallel_environment:
            argv += ["-pe", resources.parallel_environment, "1"]
        if resources.memory:
            per_slot = -(-resources.memory // (slots * 1024**2))
            argv += ["-l", f"h_vmem={per_slot}M"]
        if resources.walltime:
            argv += ["-l", f"h_rt={format_hms(resources.walltime)}"]
        if resources.account:
            argv += ["-A", resources.account]
        argv += list(resources.submit_options)
        argv.append(job_dir.wrapper)
        return argv

    def parse_submit(self, result: CommandResult) -> SubmitOutcome:
        return parse_qsub(result)

    def list_argv(self) -> list[str]:
        return ["qstat", "-xml"]

    def parse_listing(self, text: str) -> dict[str, QueueEntry] | Unparseable:
        return parse_qstat_xml(text)

    async def ended(self, batch_id: str, name: str) -> BatchEnd | Unparseable | None:
        result = await self._run(["qacct", "-j", batch_id])
        if result.returncode is None:
            return unparseable("qacct (did not finish)", result.text)
        return parse_qacct(result.stdout + "\n" + result.stderr, batch_id, name)

    def kill_argv(self, batch_id: str) -> list[str]:
        return ["qdel", batch_id]

    async def error_reason(self, batch_id: str) -> str:
        result = await self._run(["qstat", "-j", batch_id])
        return parse_error_reason(result.stdout)
