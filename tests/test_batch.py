"""The Grid Engine and Slurm executors against the real batch systems.

Single-host Son of Grid Engine 8.1.9 and Slurm 22.05, brought up by
``.ci/services/start-sge.sh`` and ``start-slurm.sh``. Each test drives the
executor task (``muppet/executor/task.py``) with StartJob/KillJob messages,
as a daemon does, and checks what it reports and what the cluster saw. When a
batch system does not answer, its tests are skipped with the reason, unless
MUPPET_REQUIRE_SERVICES=1 (then they fail).

Job ids are unique per test run: the batch job name ``muppet-<id>`` is how a
restarted executor recognises its jobs, so a job of an earlier run must not
look like one of this run's.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from executor_harness import SAFETY, make_dirs, running_executor
from services import service_missing
from waiting import wait_until, wait_until_async

from muppet.executor.backend import make_backends
from muppet.executor.jobdir import JobDir
from muppet.messages import KillJob, StartJob
from muppet.model import ExecutorConfig, Job, JobState, RetryPolicy, Step

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / ".ci" / "services"
REFERENCE_TIME = datetime(2026, 11, 28, 6, tzinfo=UTC)
POLL = 0.3

KINDS = {
    "gridengine": {"probe": ["qstat"], "start": "start-sge.sh"},
    "slurm": {"probe": ["sinfo", "-h"], "start": "start-slurm.sh"},
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_ids = itertools.count(int(time.time() * 10) % 10**8 * 100)


def new_id() -> int:
    return next(_ids)


def _answers(argv: list[str]) -> str | None:
    """None when the command answers; otherwise why not."""
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not installed (run .ci/services/{KINDS_BY_PROBE[argv[0]]})"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"{' '.join(argv)} did not answer within 30 s"
    if done.returncode != 0:
        return f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()[:300]}"
    return None


KINDS_BY_PROBE = {v["probe"][0]: v["start"] for v in KINDS.values()}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request) -> str:
    """The batch system under test; skipped (or failed) when it is down."""
    name = request.param
    problem = _answers(KINDS[name]["probe"])
    if problem is not None:
        service_missing(f"{name}: {problem}")
    return name


def executors(kind: str, **options) -> dict[str, ExecutorConfig]:
    options = {"poll_interval": POLL, **options}
    return {"cluster": ExecutorConfig(name="cluster", type=kind, max_jobs=50, options=options)}


def make_spec(job_id: int, command: str, *, predecessor: int | None = None, failures: int = 0,
              **step_fields) -> StartJob:
    step = Step(name="make", command=command, executor="cluster", **step_fields)
    job = Job(
        id=job_id, run_id=7, pipeline="forecast", step="make", index=1, count=2,
        executor="cluster", state=JobState.SUBMITTED, predecessor=predecessor, failures=failures,
    )
    return StartJob(job=job, step=step, reference_time=REFERENCE_TIME)


def executor(kind: str, state_dir: Path, output_dir: Path, **options):
    """The executor task; leaving the block cancels it as a daemon's death
    would (the jobs go on running on the cluster)."""
    return running_executor(executors(kind, **options), state_dir, output_dir)


@pytest.fixture
def dirs(tmp_path):
    # /tmp is on this host: the batch jobs (root, same host) reach it
    return make_dirs(tmp_path)


def jobs_named(kind: str, name: str) -> int:
    """How many jobs of this name the batch system has seen (queued, running
    or finished): the count of submissions."""
    if kind == "slurm":
        listed = subprocess.run(
            ["squeue", "--me", "-h", "-t", "all", "-n", name, "-o", "%i"],
            capture_output=True, text=True, timeout=30,
        ).stdout
        return len(listed.split())
    # Grid Engine: queued ones in qstat, finished ones in qacct, which lags
    # the queue by a moment: look until the count holds still
    deadline = time.monotonic() + 20
    counts: list[int] = []
    while time.monotonic() < deadline:
        listed = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, timeout=30).stdout
        accounted = subprocess.run(["qacct", "-j", name], capture_output=True, text=True, timeout=30).stdout
        counts.append(
            listed.count(f"<JB_name>{name}</JB_name>") + len(re.findall(rf"^jobname\s+{name}\s*$", accounted, re.M))
        )
        if counts[-1] and counts[-3:] == [counts[-1]] * 3:
            break
        time.sleep(0.2)
    return counts[-1]


async def submissions(kind: str, name: str) -> int:
    """:func:`jobs_named`, from a Trio test (it blocks, so in a worker thread)."""
    return await trio.to_thread.run_sync(jobs_named, kind, name)


async def run(argv: list[str], check: bool = True) -> str:
    """A batch system's command line tool, run to its end; its stdout."""
    with trio.fail_after(30):  # a safety net against a hang
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=check)
    return done.stdout.decode()


async def wait_for_file(path: Path, what: str) -> None:
    async def written() -> bool:
        file = trio.Path(path)
        return await file.exists() and bool((await file.read_text()).strip())

    await wait_until_async(written, SAFETY, what)


# --- success, failure, outputs --------------------------------------------------------


async def test_success_with_output_moved_into_place(kind, dirs):
    state, out = dirs
    job_id = new_id()
    command = textwrap.dedent("""\
        dir="$MUPPET_SCRATCH/fc/$(date -u -d "$MUPPET_REFERENCE_TIME" +%Y%m%dT%H)"
        mkdir -p "$dir"
        echo "member $MUPPET_JOB_INDEX of $MUPPET_JOB_COUNT" > "$dir/member_$MUPPET_JOB_INDEX.txt"
        echo "ran in $PWD"
        echo "to stderr" >&2
    """)
    spec = make_spec(job_id, command, outputs=("fc/{reference_time:%Y%m%dT%H}/member_{index}.txt",),
                     resources={"walltime": "0:05:00", "memory": "256M"})
    job_dir = JobDir(str(state), job_id)
    async with executor(kind, state, out) as ex:
        started, finished = await ex.run_job(spec)
    assert finished.state == "succeeded", finished
    assert finished.exit_code == 0 and finished.reason == ""
    assert started is not None and started.batch_id.isdigit()
    assert job_dir.read_batch_id() == started.batch_id
    assert finished.stdout_tail == f"ran in {job_dir.scratch}\n"
    assert finished.stderr_tail == "to stderr\n"
    assert await trio.Path(out / "fc" / "20261128T06" / "member_1.txt").read_text() == "member 1 of 2\n"
    assert not await trio.Path(job_dir.scratch).exists()
    assert await submissions(kind, f"muppet-{job_id}") == 1


async def test_non_zero_exit_fails_with_code_and_tails(kind, dirs):
    state, out = dirs
    job_id = new_id()
    spec = make_spec(job_id, 'echo "bad input" >&2; exit 3', outputs=("never.txt",))
    async with executor(kind, state, out) as ex:
        started, finished = await ex.run_job(spec)
    assert started is not None
    assert (finished.state, finished.exit_code, finished.reason) == ("failed", 3, "exit code 3")
    assert finished.stderr_tail == "bad input\n"
    assert not await trio.Path(out / "never.txt").exists()


async def test_retry_runs_again_on_the_cluster(kind, dirs, tmp_path):
    """The scheduler's retry is a new job (successor) with the same step: it is
    submitted again and its success stands."""
    state, out = dirs
    marker = tmp_path / "tries"
    command = f'echo x >> {marker}; [ "$(wc -l < {marker})" -ge 2 ] || exit 4; echo second'
    first, second = new_id(), new_id()
    async with executor(kind, state, out) as ex:
        _, failed = await ex.run_job(make_spec(first, command, retry=RetryPolicy(tries=2)))
        assert (failed.state, failed.exit_code) == ("failed", 4)
        started, finished = await ex.run_job(
            make_spec(second, command, predecessor=first, failures=1, retry=RetryPolicy(tries=2))
        )
    assert finished.state == "succeeded" and finished.stdout_tail == "second\n"
    assert await trio.Path(marker).read_text() == "x\nx\n"
    assert started.batch_id != await trio.to_thread.run_sync(JobDir(str(state), first).read_batch_id)


async def test_unknown_queue_fails_at_once_with_the_message(kind, dirs):
    state, out = dirs
    job_id = new_id()
    spec = make_spec(job_id, "true", resources={"queue": "no-such-queue"})
    async with executor(kind, state, out) as ex:
        started, finished = await ex.run_job(spec)
    assert started is None and finished.state == "failed"
    assert "no-such-queue" in finished.reason, finished.reason
    assert finished.reason.startswith("cannot start: ")


async def test_bad_resource_names_step_and_key(kind, dirs):
    state, out = dirs
    spec = make_spec(new_id(), "true", resources={"memory": "lots"})
    async with executor(kind, state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert finished.state == "failed"
    assert "pipeline forecast, step make" in finished.reason and "'memory'" in finished.reason


# --- kill ---------------------------------------------------------------------------------


async def test_kill_a_running_job(kind, dirs, tmp_path):
    state, out = dirs
    job_id = new_id()
    spec = make_spec(job_id, "echo started; sleep 300")
    async with executor(kind, state, out) as ex:
        await ex.send.send(spec)
        started = await ex.until_started(job_id)
        await ex.send.send(KillJob(job_id))
        _, finished = await ex.until_finished(job_id)
    assert (finished.state, finished.reason) == ("killed", "killed by operator"), finished
    assert started.batch_id.isdigit()
    assert await submissions(kind, f"muppet-{job_id}") == 1


async def test_kill_a_queued_job(kind, dirs):
    state, out = dirs
    job_id = new_id()
    # held in the queue: never starts by itself
    hold = ["-h"] if kind == "gridengine" else ["--hold"]
    spec = make_spec(job_id, "echo never", resources={"submit_options": hold})
    async with executor(kind, state, out) as ex:
        await ex.send.send(spec)
        batch_file = Path(JobDir(str(state), job_id).batch_id_file)
        await wait_for_file(batch_file, "the batch id")
        await ex.send.send(KillJob(job_id))
        started, finished = await ex.until_finished(job_id)
    assert started is None
    assert finished.state == "killed" and finished.stdout_tail == ""


async def test_the_system_killing_a_job_fails_it_with_the_reason(kind, dirs):
    """qdel / scancel by someone else: the job failed, and the reason says who."""
    state, out = dirs
    job_id = new_id()
    spec = make_spec(job_id, "sleep 300")
    async with executor(kind, state, out) as ex:
        await ex.send.send(spec)
        started = await ex.until_started(job_id)
        await run(["qdel" if kind == "gridengine" else "scancel", started.batch_id])
        _, finished = await ex.until_finished(job_id)
    assert finished.state == "failed"
    words = "qdel" if kind == "gridengine" else "cancelled"
    assert words in finished.reason, finished.reason


async def test_wall_clock_limit_fails_with_the_reason(kind, dirs):
    state, out = dirs
    # Slurm counts time limits in whole minutes and enforces them on a 30 s
    # timer: this takes about 75 s there, 4 s on Grid Engine
    limit = 3 if kind == "gridengine" else 60
    spec = make_spec(new_id(), "echo begun; sleep 300", resources={"walltime": limit})
    async with executor(kind, state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert finished.state == "failed"
    words = "h_rt" if kind == "gridengine" else "wall-clock limit was reached (TIMEOUT"
    assert words in finished.reason, finished.reason
    assert finished.stdout_tail == "begun\n"


# --- the batch system failing -----------------------------------------------------------------


def _controller(kind: str, action: str) -> None:
    if kind == "slurm":
        pid_file = Path("/run/slurmctld.pid")
    else:
        pid_file = Path("/var/spool/gridengine/qmaster/qmaster.pid")
    if action == "stop":
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)

        def gone() -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
            except FileNotFoundError:
                return True

        wait_until(gone, 30, f"the {kind} controller (pid {pid}) ending after SIGTERM")
    else:
        script = SERVICES / KINDS[kind]["start"]
        done = subprocess.run([str(script)], capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]


async def test_controller_down_is_not_started_then_submits(kind, dirs, caplog):
    """sbatch/qsub cannot reach the controller: the job is not started
    (JobNotStarted with the system's words, not a failure), nothing of it is
    queued, the log says so once; once the controller is back the job is
    submitted once and runs."""
    if os.geteuid() != 0:
        service_missing("stopping and starting the batch system's controller needs root")
    state, out = dirs
    job_id = new_id()
    spec = make_spec(job_id, "echo made it")
    job_dir = JobDir(str(state), job_id)
    system = "Grid Engine" if kind == "gridengine" else "Slurm"

    def warnings(words: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "muppet.executor" and words in r.getMessage()]

    await trio.to_thread.run_sync(_controller, kind, "stop")
    try:
        async with executor(kind, state, out, submit_timeout=30.0) as ex:
            # twice, as the scheduler sends it again after its backoff
            for _ in range(2):
                await ex.send.send(spec)
                report = await ex.until_not_started(job_id)
                assert report.reason.startswith(f"{system} did not take muppet-{job_id}: "), report.reason
                assert not await trio.Path(job_dir.batch_id_file).exists()
                assert not await trio.Path(job_dir.wrapper).exists(), "nothing of it was submitted"
            assert len(warnings("cannot start jobs")) == 1, warnings("cannot start jobs")
            await trio.to_thread.run_sync(_controller, kind, "start")
            started, finished = await ex.run_job(spec)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_controller, kind, "start")
    assert started is not None
    assert finished.state == "succeeded" and finished.stdout_tail == "made it\n"
    assert await submissions(kind, f"muppet-{job_id}") == 1
    assert len(warnings("jobs start again after")) == 1


async def test_a_duplicate_that_finds_the_job_claimed_follows_the_claimant(kind, dirs, tmp_path):
    """Two batch jobs of one job (the daemon died between submitting and
    recording the id, and the queue did not list the first at restart, so
    it was submitted again): the copy that starts second exits 75 (claimed),
    and the executor follows the first, which the status record names,
    instead of calling the job lost. The command runs once and its end is
    reported."""
    state, out = dirs
    job_id = new_id()
    runs, release = tmp_path / "runs", tmp_path / "release"
    command = f"echo run >> {runs}; until [ -e {release} ] || [ $SECONDS -ge 300 ]; do sleep 0.1; done; echo finished"
    hold = ["-h"] if kind == "gridengine" else ["--hold"]
    # the executor's copy is submitted held, so that the other one claims first
    spec = make_spec(job_id, command, resources={"submit_options": hold})
    job_dir = JobDir(str(state), job_id)
    release_tool = ["qrls"] if kind == "gridengine" else ["scontrol", "release"]
    async with executor(kind, state, out) as ex:
        await ex.send.send(spec)
        await wait_for_file(Path(job_dir.batch_id_file), "the executor's batch id")
        ours = await trio.to_thread.run_sync(job_dir.read_batch_id)
        # the first submission, as the dead daemon made it: same script, same name
        backend = make_backends(executors(kind), str(state))["cluster"]
        from muppet.executor.batch import merge_resources

        first = (await run(backend.submit_argv(job_dir, merge_resources({}, {}, where="test")))).strip().split(";")[0]

        async def claimed_by_first() -> bool:
            status = await trio.to_thread.run_sync(job_dir.read_status)
            return status is not None and status.batch_id == first

        await wait_until_async(claimed_by_first, SAFETY, f"batch job {first} to claim the job")
        await run([*release_tool, ours])

        async def following_first() -> bool:
            return await trio.to_thread.run_sync(job_dir.read_batch_id) == first

        await wait_until_async(following_first, SAFETY, f"the executor to follow {first} after {ours} ended")
        assert await trio.Path(runs).read_text() == "run\n"
        await trio.Path(release).write_text("go")
        started, finished = await ex.until_finished(job_id)
    assert started is not None and started.batch_id == first
    assert finished.state == "succeeded", finished
    assert finished.stdout_tail == "finished\n"
    assert await trio.Path(runs).read_text() == "run\n", "the command ran once"
    assert await submissions(kind, f"muppet-{job_id}") == 2


# --- restarts -------------------------------------------------------------------------------------

CHILD = """
import sys, trio
from datetime import datetime, timezone
from muppet.executor import task
from muppet.messages import StartJob
from muppet.model import ExecutorConfig, Job, JobState, Step

kind, state, out, job_id, command, hold = sys.argv[1:7]

async def main():
    executors = {"cluster": ExecutorConfig("cluster", kind, options={"poll_interval": 0.3})}
    to_executor, inbox = trio.open_memory_channel(10)
    reports, from_executor = trio.open_memory_channel(10)
    resources = {"submit_options": [hold]} if hold else {}
    step = Step(name="make", command=command, executor="cluster", resources=resources)
    job = Job(id=int(job_id), run_id=7, pipeline="forecast", step="make", index=1, count=2,
              executor="cluster", state=JobState.SUBMITTED)
    await to_executor.send(StartJob(job, step, datetime(2026, 11, 28, 6, tzinfo=timezone.utc)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: task.run(inbox, reports, executors=executors, state_dir=state, output_dir=out))
        async for message in from_executor:
            print(type(message).__name__, flush=True)

trio.run(main)
"""


@pytest.mark.parametrize("when", ["queued", "running"])
async def test_kill_9_of_the_daemon_then_reattach(kind, dirs, tmp_path, when):
    """A daemon killed with -9 while its job is queued or running on the
    cluster: the next one re-attaches by batch id and name, the job finishes
    normally, and it was submitted once."""
    state, out = dirs
    job_id = new_id()
    release = tmp_path / "release"
    runs = tmp_path / "runs"
    # the job waits for the test to let it end (so that it is still running
    # when the daemon dies), and counts its runs outside its scratch
    command = f"echo run >> {runs}; until [ -e {release} ] || [ $SECONDS -ge 300 ]; do sleep 0.1; done; echo finished"
    # queued: submitted held, so that it is surely still queued at the kill
    hold = "" if when == "running" else ("-h" if kind == "gridengine" else "--hold")
    # its stderr goes where pytest captures the test's
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, kind, str(state), str(out), str(job_id), command, hold],
        stdout=subprocess.DEVNULL,
    )
    job_dir = JobDir(str(state), job_id)
    try:
        await wait_for_file(Path(job_dir.batch_id_file), "the batch id")
        batch_id = await trio.to_thread.run_sync(job_dir.read_batch_id)
        if when == "running":
            await wait_for_file(runs, "the job to run")
    finally:
        child.kill()
        with trio.CancelScope(shield=True), trio.fail_after(30):
            await child.wait()
    assert await submissions(kind, f"muppet-{job_id}") == 1
    if when == "queued":
        assert not await trio.Path(runs).exists()
        await run(["qrls", batch_id] if kind == "gridengine" else ["scontrol", "release", batch_id])
    async with executor(kind, state, out) as ex:
        await ex.send.send(make_spec(job_id, command))
        started = await ex.until_started(job_id)
        assert started.batch_id == batch_id
        await trio.Path(release).write_text("go")
        _, finished = await ex.until_finished(job_id)
    assert finished.state == "succeeded", finished
    assert finished.stdout_tail == "finished\n"
    assert await trio.Path(runs).read_text() == "run\n"
    assert await submissions(kind, f"muppet-{job_id}") == 1


async def test_daemon_died_between_submit_and_recording_the_id(kind, dirs, tmp_path):
    """qsub/sbatch went through but no batch id was written: the job is found
    by its name, not submitted again."""
    state, out = dirs
    job_id = new_id()
    runs = tmp_path / "runs"
    spec = make_spec(job_id, f"echo run >> {runs}; echo done")
    job_dir = JobDir(str(state), job_id)
    await trio.to_thread.run_sync(job_dir.prepare, spec)
    # what the dead daemon did: submit, and die before write_batch_id
    backend = make_backends(executors(kind), str(state))["cluster"]
    from muppet.executor.batch import merge_resources

    argv = backend.submit_argv(job_dir, merge_resources({}, {}, where="test"))
    if kind == "gridengine":
        argv.insert(1, "-h")
    else:
        argv.insert(1, "--hold")
    batch_id = (await run(argv)).strip().split(";")[0]
    tool = ["qrls", batch_id] if kind == "gridengine" else ["scontrol", "release", batch_id]
    async with executor(kind, state, out) as ex:
        await ex.send.send(spec)
        await wait_for_file(Path(job_dir.batch_id_file), "the adopted batch id")
        await run(tool)
        started, finished = await ex.until_finished(job_id)
    assert finished.state == "succeeded", finished
    assert started.batch_id == batch_id
    assert await trio.to_thread.run_sync(job_dir.read_batch_id) == batch_id
    assert await trio.Path(runs).read_text() == "run\n"
    assert await submissions(kind, f"muppet-{job_id}") == 1


async def test_a_reused_batch_id_is_not_taken_for_ours(kind, dirs, tmp_path):
    """After a controller restart the recorded id may belong to another job:
    the name tells them apart, and ours (not started, not queued) is submitted."""
    state, out = dirs
    job_id = new_id()
    spec = make_spec(job_id, "echo mine")
    job_dir = JobDir(str(state), job_id)
    await trio.to_thread.run_sync(job_dir.prepare, spec)
    # someone else's job under the id we recorded
    script = tmp_path / "other.sh"
    await trio.Path(script).write_text("#!/bin/bash\nsleep 300\n")
    if kind == "gridengine":
        argv = ["qsub", "-terse", "-N", "someone-else", "-o", "/dev/null", "-e", "/dev/null", str(script)]
    else:
        argv = ["sbatch", "--parsable", "-J", "someone-else", "-o", "/dev/null", str(script)]
    other = (await run(argv)).strip().split(";")[0]
    await trio.to_thread.run_sync(job_dir.write_batch_id, other)
    try:
        async with executor(kind, state, out) as ex:
            started, finished = await ex.run_job(spec)
        assert finished.state == "succeeded" and finished.stdout_tail == "mine\n"
        assert started.batch_id != other
        assert await submissions(kind, "someone-else") >= 1  # left alone
        assert await submissions(kind, f"muppet-{job_id}") == 1
    finally:
        with trio.CancelScope(shield=True):
            await run(["qdel" if kind == "gridengine" else "scancel", other], check=False)


# --- polling ------------------------------------------------------------------------------------


async def test_one_listing_serves_many_jobs(kind, dirs):
    """20 jobs in flight cost about one queue listing per interval, not one
    per job per interval."""
    state, _ = dirs
    backend = make_backends(executors(kind, poll_interval=0.5), str(state))["cluster"]
    ids = [new_id() for _ in range(20)]

    async def one(job_id):
        spec = make_spec(job_id, "sleep 2")
        job_dir = JobDir(str(state), job_id)
        await trio.to_thread.run_sync(job_dir.prepare, spec)
        batch_id = await backend.launch(job_dir, spec)
        await backend.wait(job_dir, batch_id)
        assert job_dir.read_status().exit_code == 0

    start = trio.current_time()
    with trio.fail_after(SAFETY):
        async with trio.open_nursery() as nursery:
            for job_id in ids:
                nursery.start_soon(one, job_id)
    elapsed = trio.current_time() - start
    # listings start at least an interval apart unless a submit pokes the
    # poller, and each poke brings at most one listing forward; one listing
    # per job per interval would be about 20 * elapsed / 0.5
    assert backend.poller.polls <= elapsed / 0.5 + backend.submissions + 1, (backend.poller.polls, elapsed)
    assert backend.submissions == 20


# --- the whole daemon -----------------------------------------------------------------------------

# The jobs of step a run until the test creates {gate} (or 5 minutes pass, so
# that a failed test leaves no job behind on the cluster).
CLUSTER_PIPELINE = """
[stakeholders.ops]
name = "Operations"
[pipeline]
name = "cluster"
owner = "ops"
[steps.a]
jobs = 2
executor = "cluster"
command = '''
echo $MUPPET_JOB_ID >> {ledger}
until [ -e {gate} ] || [ $SECONDS -ge 300 ]; do sleep 0.1; done
mkdir -p o; echo $MUPPET_JOB_INDEX > o/f$MUPPET_JOB_INDEX'''
outputs = ["o/f{{index}}"]
[steps.b]
parents = ["a"]
executor = "cluster"
command = "echo $MUPPET_JOB_ID >> {ledger}"
"""


def test_kill_9_of_the_whole_daemon_while_cluster_jobs_run(kind, tmp_path):
    """`muppet daemon` killed with -9 while its jobs run on the cluster: the
    next daemon re-attaches by batch id and name, and nothing is submitted
    twice."""
    from test_daemon import Daemon, cli, free_port

    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "cluster.toml").write_text(CLUSTER_PIPELINE.format(ledger=ledger, gate=gate))
    port = free_port()
    config = tmp_path / "muppet.toml"
    config.write_text(
        f'[daemon]\ndatabase = "sqlite:///{tmp_path / "m.db"}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'output_dir = "{tmp_path / "out"}"\npipelines = ["pipelines/*.toml"]\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\n'
        f'[executors.cluster]\ntype = "{kind}"\npoll_interval = {POLL}\n'
    )
    # a fresh database numbers its jobs 1, 2, 3; the cluster's accounting may
    # know those names from earlier runs already
    before = {n: jobs_named(kind, f"muppet-{n}") for n in (1, 2, 3)}
    d = Daemon(config, port, tmp_path / "daemon.log")
    d.start()
    try:
        run_id = int(cli("trigger", "cluster", api=d.api).strip())
        wait_until(lambda: sum(j["state"] == "running" for j in d.jobs(run_id)) == 2, SAFETY,
                   "both jobs of step a running on the cluster", detail=lambda: str(d.jobs(run_id)))
        d.stop(signal.SIGKILL)
        # the jobs are still running (the gate is closed) when the next daemon starts
        d.start()
        gate.touch()
        run = d.wait(run_id, timeout=SAFETY)
        jobs = d.jobs(run_id)
    finally:
        if d.process.poll() is None:
            d.stop(signal.SIGTERM)
    assert run["state"] == "succeeded", jobs
    assert len(jobs) == 3 and {j["exit_code"] for j in jobs} == {0}
    assert sorted(ledger.read_text().split()) == sorted(str(j["id"]) for j in jobs)
    assert sorted(j["id"] for j in jobs) == [1, 2, 3]
    for job in jobs:
        assert jobs_named(kind, f"muppet-{job['id']}") == before[job["id"]] + 1
    assert (tmp_path / "out" / "o" / "f1").read_text() == "1\n"
