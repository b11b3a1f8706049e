"""The executor with real processes: the wrapper, status file, re-attach, kill,
outputs. Timeouts here are safety nets, never what a test measures."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
import trio
from executor_harness import SAFETY, fill, free_pages, make_dirs, running_executor
from services import service_missing
from waiting import wait_until_async

from muppet.executor import local as local_module
from muppet.executor import task as executor_task
from muppet.executor.backend import BACKEND_TYPES, backend_factory, make_backends
from muppet.executor.jobdir import (
    CANNOT_START_EXIT,
    CLAIMED_EXIT,
    JobDir,
    SaidEnd,
    Status,
    parse_exit_line,
    parse_status,
    render_wrapper,
)
from muppet.executor.local import (
    _SPARE_SCRIPT,
    LAUNCHER_NAME,
    LAUNCHER_READERS,
    LAUNCHER_RECORD,
    SPARE_FD,
    SPARE_NAME,
    SPAWN_THREADS,
    LauncherOutput,
    LocalBackend,
    _cmdline,
    _is_wrapper,
    _Launcher,
    default_bash,
    group_members,
    scan_wrappers,
)
from muppet.executor.outputs import (
    MissingOutput,
    OutputError,
    copy_then_rename,
    move_into_place,
    move_outputs,
    output_paths,
)
from muppet.messages import JobFinished, JobStarted, KillJob, StartJob
from muppet.model import LOG_TAIL_BYTES, ExecutorConfig, Job, JobState, Step

REFERENCE_TIME = datetime(2026, 11, 28, 6, tzinfo=UTC)
EXECUTORS = {"local": ExecutorConfig(name="local", type="local", options={"kill_grace": 5})}


def make_spec(job_id: int, command: str, **step_fields) -> StartJob:
    step = Step(name="make", command=command, **step_fields)
    job = Job(
        id=job_id, run_id=3, pipeline="forecast", step="make", index=2, count=4,
        executor="local", state=JobState.SUBMITTED,
    )
    return StartJob(job=job, step=step, reference_time=REFERENCE_TIME)


def executor(state_dir: Path, output_dir: Path):
    return running_executor(EXECUTORS, state_dir, output_dir)


@pytest.fixture
def dirs(tmp_path):
    return make_dirs(tmp_path)


async def wait_until(predicate, what: str):
    await wait_until_async(predicate, SAFETY, what, interval=0.05)


def made_backends(monkeypatch) -> list[LocalBackend]:
    """The local backends made from now on, in the order made."""
    made = []
    init = LocalBackend.__init__

    def recorded(backend, *args):
        init(backend, *args)
        made.append(backend)

    monkeypatch.setattr(LocalBackend, "__init__", recorded)
    return made


# --- a job from start to end ------------------------------------------------------


async def test_success_sets_the_environment(dirs):
    state, out = dirs
    # the job also inherits the daemon's own environment (MUPPET_API, say):
    # look only at what the executor sets
    names = "SCRATCH|JOB_DIR|RUN_ID|JOB_ID|JOB_INDEX|JOB_COUNT|REFERENCE_TIME|PIPELINE|STEP"
    command = f'env | grep -E "^(MUPPET_({names})|FOO)=" | sort; echo "cwd=$PWD"'
    spec = make_spec(11, command, env={"FOO": "bar baz 'q'"})
    async with executor(state, out) as ex:
        started, finished = await ex.run_job(spec)
    assert started is not None and started.job_id == 11 and started.batch_id.isdigit()
    assert finished.state == "succeeded", finished
    assert finished.exit_code == 0 and finished.reason == ""
    assert finished.started_at <= finished.ended_at
    lines = dict(line.split("=", 1) for line in finished.stdout_tail.splitlines())
    job_dir = JobDir(str(state), 11)
    assert lines == {
        "FOO": "bar baz 'q'",
        "MUPPET_SCRATCH": job_dir.scratch,
        "MUPPET_JOB_DIR": job_dir.root,
        "MUPPET_RUN_ID": "3",
        "MUPPET_JOB_ID": "11",
        "MUPPET_JOB_INDEX": "2",
        "MUPPET_JOB_COUNT": "4",
        "MUPPET_REFERENCE_TIME": "2026-11-28T06:00:00Z",
        "MUPPET_PIPELINE": "forecast",
        "MUPPET_STEP": "make",
        "cwd": job_dir.scratch,
    }
    status = job_dir.read_status()
    assert status.has_ended and status.exit_code == 0 and str(status.pid) == started.batch_id
    assert not await trio.Path(job_dir.scratch).exists(), "scratch stays after a success"


async def test_a_quiet_job_is_reported_from_what_its_wrapper_said_as_it_exited(dirs, monkeypatch):
    """A launcher's wrapper says its end record as it exits, and that its
    command left stdout and stderr empty: the executor reports such a job,
    without outputs, with no file of it read (its scratch directory goes a
    moment later); a job that failed keeps its scratch."""
    state, out = dirs
    reads = []

    def counted(method):
        def read(job_dir, *args):
            reads.append((method.__name__, job_dir.job_id))
            return method(job_dir, *args)
        return read

    for name in ("read_status", "read_tails"):
        monkeypatch.setattr(JobDir, name, counted(getattr(JobDir, name)))
    backends = made_backends(monkeypatch)
    async with executor(state, out) as ex:
        await wait_until(lambda: backends and backends[0]._launcher is not None, "a launcher")
        _, succeeded = await ex.run_job(make_spec(12, "touch made-in-scratch; rm made-in-scratch"))
        _, failed = await ex.run_job(make_spec(13, "exit 3"))
        await wait_until(lambda: not os.path.exists(JobDir(str(state), 12).scratch), "the scratch removed")
    assert [r for r in reads if r[1] in (12, 13)] == [("read_status", 12), ("read_status", 13)], (
        "only prepare's look for a status file"
    )
    for job_id, finished, exit_code in ((12, succeeded, 0), (13, failed, 3)):
        recorded = JobDir(str(state), job_id).read_status()
        assert recorded.has_ended and recorded.exit_code == exit_code
        assert (finished.exit_code, finished.started_at, finished.ended_at) == (
            exit_code, recorded.started, recorded.ended,
        )
        assert finished.stdout_tail == finished.stderr_tail == ""
    assert succeeded.state == "succeeded" and succeeded.reason == ""
    assert failed.state == "failed" and failed.reason == "exit code 3"
    assert await trio.Path(JobDir(str(state), 13).scratch).is_dir(), "a failed job's scratch stays, to look into"


async def test_a_job_that_wrote_its_logs_is_reported_with_their_tails(dirs, monkeypatch):
    """Said ended but not quiet: the tails are read."""
    state, out = dirs
    backends = made_backends(monkeypatch)
    async with executor(state, out) as ex:
        await wait_until(lambda: backends and backends[0]._launcher is not None, "a launcher")
        _, finished = await ex.run_job(make_spec(14, "echo to stderr >&2"))
    assert finished.state == "succeeded" and finished.stderr_tail == "to stderr\n"
    assert not await trio.Path(JobDir(str(state), 14).scratch).exists()


async def test_what_a_launched_process_said_of_its_end_comes_with_its_exit_status(dirs, tmp_path):
    """``_Forked.wait``: the exit status and the end said on the exit line,
    taken from the pipe once the process has ended."""
    state, _ = dirs
    backend = LocalBackend(EXECUTORS["local"], str(state))
    record = '{"state":"ended","pid":%d,"host":"h","started":1.5,"ended":2.5,"exit_code":0}'
    # not a wrapper of ours: one that says only that line
    saying = tmp_path / "saying.sh"
    saying.write_text(f"echo \"muppet: exit $$ 0 quiet $(printf '{record}' $$)\" >&8\n")
    saying.chmod(0o755)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.maintain)
        await wait_until(lambda: backend._launcher is not None, "a launcher")
        launcher = backend._launcher
        launcher.said.expect(str(saying), 1)
        assert await trio.to_thread.run_sync(launcher.run, str(saying))
        with trio.fail_after(SAFETY):
            while str(saying) not in launcher.said.pids:
                await launcher.news(str(saying))
        pid = launcher.said.pids[str(saying)]
        forked = local_module._Forked(launcher, str(saying), pid, 0.25)
        with trio.fail_after(SAFETY):
            assert await forked.wait() == 0
        assert forked.end == SaidEnd(Status("ended", pid, "h", 1.5, 2.5, 0), quiet=True)
        assert not launcher.said.ends, "taken"
        backend.close()


async def test_a_local_job_reports_its_start_with_its_end_when_it_ends_at_once(dirs, monkeypatch):
    """A local job that ends within LOCAL_START_REPORT_DELAY has JobStarted
    sent right before its JobFinished (one scheduler batch, one commit), with
    its start record's time; one that runs longer has it sent while it runs.
    (The delay is set long, then short, so that the machine's speed cannot
    decide which case a job is.)"""
    state, out = dirs
    marker = state / "go"
    async with executor(state, out) as ex:
        monkeypatch.setattr(executor_task, "LOCAL_START_REPORT_DELAY", SAFETY)
        await ex.send.send(make_spec(14, "true"))
        started, finished = await ex.until_finished(14)
        assert started is not None and finished.state == "succeeded"
        assert ex.messages[-2:] == [started, finished], "the start sent just before the end"
        assert started.started_at == JobDir(str(state), 14).read_status().started
        monkeypatch.setattr(executor_task, "LOCAL_START_REPORT_DELAY", 0.0)
        try:
            await ex.send.send(make_spec(15, f"while [ ! -e {marker} ] && [ -d {state} ]; do sleep 0.01; done"))
            await ex.until_started(15)  # while it runs: until_started fails on its end
        finally:
            await trio.Path(marker).touch()
        _, finished = await ex.until_finished(15)
        assert finished.state == "succeeded"


async def test_local_starts_wait_for_room_on_a_full_report_channel(dirs, tmp_path, monkeypatch):
    """The starts of local jobs are reported by one task of the executor
    (docs/performance.md); a start that finds the report channel full is
    sent once there is room, none lost, none twice."""
    state, out = dirs
    marker = tmp_path / "go"
    monkeypatch.setattr(executor_task, "LOCAL_START_REPORT_DELAY", 0.0)
    to_executor, inbox = trio.open_memory_channel(10)
    reports, from_executor = trio.open_memory_channel(1)
    # the jobs end once let go, or once the test's directory is gone
    waiting = f"while [ ! -e {marker} ] && [ -d {tmp_path} ]; do sleep 0.01; done"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(
                executor_task.run, inbox, reports, executors=EXECUTORS, state_dir=str(state), output_dir=str(out)))
            for job_id in (60, 61, 62):
                await to_executor.send(make_spec(job_id, waiting))
            await wait_until(
                lambda: all((JobDir(str(state), j).read_status() or Status("x")).started for j in (60, 61, 62)),
                "all three running",
            )
            started = []
            with trio.fail_after(SAFETY):
                while len(started) < 3:
                    started.append(await from_executor.receive())
            assert sorted(m.job_id for m in started) == [60, 61, 62]
            assert all(isinstance(m, JobStarted) for m in started)
            marker.touch()
            with trio.fail_after(SAFETY):
                ended = [await from_executor.receive() for _ in range(3)]
            assert sorted((m.job_id, type(m).__name__) for m in ended) == [(j, "JobFinished") for j in (60, 61, 62)]
            nursery.cancel_scope.cancel()
    finally:
        marker.touch()


async def test_local_wrappers_are_spawned_from_a_few_threads_at_once(dirs, monkeypatch):
    """The local backend spawns from at most SPAWN_THREADS worker threads at
    once, so that the threads answering the API are not held up behind a
    spawn per job (docs/performance.md); the jobs beyond them wait their
    turn, and all run."""
    state, out = dirs
    inside, most = 0, 0
    changed = threading.Condition()
    spawn = LocalBackend._prepare_and_start

    def counted(backend, job_dir, spec, launcher):
        nonlocal inside, most
        with changed:
            inside += 1
            most = max(most, inside)
            changed.notify_all()
            # held until more spawns than the limit are under way at once
            # (which the limit forbids), or for a moment
            changed.wait_for(lambda: inside > SPAWN_THREADS, timeout=0.2)
        try:
            return spawn(backend, job_dir, spec, launcher)
        finally:
            with changed:
                inside -= 1

    monkeypatch.setattr(LocalBackend, "_prepare_and_start", counted)
    async with executor(state, out) as ex:
        for job_id in range(20, 28):
            await ex.send.send(make_spec(job_id, "true"))
        finished = {}
        while len(finished) < 8:
            message = await ex.next()
            if isinstance(message, JobFinished):
                finished[message.job_id] = message
    assert sorted(finished) == list(range(20, 28))
    assert all(report.state == "succeeded" for report in finished.values()), finished
    assert 1 <= most <= SPAWN_THREADS


def our_launchers() -> set[int]:
    """The pids of this process's live launchers."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _cmdline(int(entry))[3:4] == [LAUNCHER_NAME]:
            try:
                if _parent(int(entry)) == os.getpid():
                    found.add(int(entry))
            except OSError:
                continue
    return found


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as file:
        stat = file.read()
    return int(stat[stat.rfind(")") + 2:].split()[1])


@pytest.mark.parametrize("reader", ["reader script", "none"])
async def test_a_local_job_runs_in_a_fork_of_the_launcher(dirs, tmp_path, monkeypatch, reader):
    """A local executor keeps a launcher, a bash that runs each wrapper in a
    fork of itself (docs/executor.md, "The launcher"): the wrapper is the
    launcher's child, leads a process group of its own, and is a new shell
    to the job (its own ``$$``, ``$0`` the wrapper's path, neither the
    descriptor that holds the wrapper, nor the launcher's pipe, nor its
    reader script open for the command), so that two jobs have two ``$$``.
    So too where the launcher cannot run its reader script (a kernel that
    refuses to run a file in memory; here a file it may not run): its
    readers then run each wrapper themselves. The launcher goes once the
    executor stops."""
    state, out = dirs
    if reader == "none":
        refused = tmp_path / "not-executable"
        refused.write_text(local_module._READER_SCRIPT)
        refused.chmod(0o644)
        monkeypatch.setattr(local_module, "_reader_script", lambda: os.open(refused, os.O_RDONLY | os.O_CLOEXEC))
    command = (
        'echo "$$ $PPID $0 $(ps -o pgid= -p $$)"; '
        "for fd in 7 8; do [ -e /dev/fd/$fd ] && echo $fd-open || echo $fd-closed; done; "
        "for fd in /proc/self/fd/*; do readlink $fd; done | grep -c -e launcher-reader -e not-executable || :"
    )
    async with executor(state, out) as ex:
        await until_the_launcher_runs_jobs(ex, 100)
        (launcher,) = our_launchers()
        for job_id in (17, 18):
            await ex.send.send(make_spec(job_id, command))
        finished = {}
        started = {}
        while len(finished) < 2:
            message = await ex.next()
            if isinstance(message, JobStarted):
                started[message.job_id] = message
            elif isinstance(message, JobFinished):
                finished[message.job_id] = message
        for job_id in (17, 18):
            assert finished[job_id].state == "succeeded", finished[job_id]
            first, *fds = finished[job_id].stdout_tail.splitlines()
            pid, parent, zero, group = first.split()
            assert pid == started[job_id].batch_id == group and parent == str(launcher), first
            assert zero == JobDir(str(state), job_id).wrapper
            assert fds == ["7-closed", "8-closed", "0"]
        assert started[17].batch_id != started[18].batch_id
        assert our_launchers() == {launcher}
        await wait_until(lambda: len(readers_of(launcher)) == LAUNCHER_READERS, "the launcher's readers")
        readers = readers_of(launcher)
    await wait_until(lambda: not our_launchers(), "the launcher to exit once the executor stopped")
    await wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in readers), "its readers to exit")


def readers_of(launcher: int) -> set[int]:
    """The launcher's forks that wait for a path: its live children (a
    zombie has no descriptors) that hold no wrapper open (``SPARE_FD``)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if (
                entry.isdigit()
                and _parent(int(entry)) == launcher
                and os.path.exists(f"/proc/{entry}/fd/0")
                and not os.path.exists(f"/proc/{entry}/fd/{SPARE_FD}")
            ):
                found.add(int(entry))
        except OSError:
            continue
    return found


async def until_the_launcher_runs_jobs(ex, first_job_id: int) -> None:
    """Run jobs from ``first_job_id`` on until one runs in a fork of the
    launcher (before it is ready, a job starts in a spare): the next one
    will too."""
    with trio.fail_after(SAFETY):
        for job_id in itertools.count(first_job_id):
            _, finished = await ex.run_job(make_spec(job_id, 'echo "$PPID"'))
            if int(finished.stdout_tail) in our_launchers():
                return


async def test_a_launcher_that_died_is_replaced(dirs, caplog):
    """A launcher killed is started again (its end logged), and jobs run all
    the while: without a launcher, in a bash of their own."""
    state, out = dirs
    async with executor(state, out) as ex:
        await ex.run_job(make_spec(18, "true"))
        await wait_until(lambda: len(our_launchers()) == 1, "a launcher")
        (first,) = our_launchers()
        os.kill(first, signal.SIGKILL)
        _, finished = await ex.run_job(make_spec(19, "echo ran"))
        assert (finished.state, finished.stdout_tail) == ("succeeded", "ran\n")
        await wait_until(lambda: len(our_launchers()) == 1 and first not in our_launchers(), "another launcher")
        _, finished = await ex.run_job(make_spec(20, "echo again"))
        assert (finished.state, finished.stdout_tail) == ("succeeded", "again\n")
    assert any(f"the launcher (pid {first}) ended" in record.getMessage() for record in caplog.records)


async def test_a_job_whose_state_dir_is_mounted_noexec_runs_in_a_bash_of_its_own(small_tmpfs, tmp_path, caplog):
    """A launcher runs each wrapper as a command, which a file system mounted
    noexec refuses: there, the executor starts no launcher, says so, and
    each job runs in a bash of its own."""
    caplog.set_level(logging.INFO, logger="muppet.executor.local")
    await trio.run_process(["mount", "-o", "remount,noexec", str(small_tmpfs)])
    out = tmp_path / "out"
    out.mkdir()
    async with executor(small_tmpfs, out) as ex:
        _, finished = await ex.run_job(make_spec(21, "echo ran"))
        assert (finished.state, finished.stdout_tail) == ("succeeded", "ran\n")
        assert not our_launchers()
    assert any("mounted noexec: each job starts a bash of its own" in record.getMessage() for record in caplog.records)


async def test_a_local_job_runs_under_the_bash_its_executor_names(dirs):
    """The ``bash`` option chooses what the spares run, and with it the
    wrapper and the command (docs/executor.md, "Which bash runs a job")."""
    state, out = dirs
    executors = {"local": attrs.evolve(EXECUTORS["local"], options={"kill_grace": 5, "bash": "/bin/bash"})}
    async with running_executor(executors, state, out) as ex:
        await until_the_launcher_runs_jobs(ex, 120)
        _, finished = await ex.run_job(make_spec(24, 'echo "$BASH"; [ /proc/$$/exe -ef /bin/bash ] && echo it-is'))
    assert (finished.state, finished.stdout_tail) == ("succeeded", "/bin/bash\nit-is\n")


async def test_a_local_job_runs_under_bash_static_where_it_is_installed(dirs):
    """Without the option, a local job runs under Debian's bash-static,
    which starts in less CPU than /bin/bash (docs/executor.md, "Which bash
    runs a job")."""
    if not os.access("/bin/bash-static", os.X_OK):
        service_missing("bash-static is not installed (apt-get install bash-static)")
    assert default_bash() == "/bin/bash-static"
    state, out = dirs
    async with executor(state, out) as ex:
        # a launcher's wrapper, as every job once the launcher is ready
        await until_the_launcher_runs_jobs(ex, 110)
        command = 'echo "$BASH ${BASH_VERSINFO[0]} $#"; [ /proc/$$/exe -ef /bin/bash-static ] && echo it-is'
        _, finished = await ex.run_job(make_spec(25, command))
    assert (finished.state, finished.stdout_tail) == ("succeeded", "/bin/bash-static 5 0\nit-is\n")


def test_a_local_executor_refuses_a_bash_it_cannot_run(tmp_path):
    config = ExecutorConfig(name="quick", type="local", options={"bash": str(tmp_path / "bash")})
    with pytest.raises(ValueError, match=rf"\[executors.quick\] bash: {tmp_path}/bash is not an executable file"):
        LocalBackend(config, str(tmp_path))


async def test_failure_reports_exit_code_and_tails(dirs):
    state, out = dirs
    spec = make_spec(12, "echo to-out; echo to-err >&2; exit 3")
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert (finished.state, finished.exit_code, finished.reason) == ("failed", 3, "exit code 3")
    assert finished.stdout_tail == "to-out\n" and finished.stderr_tail == "to-err\n"
    assert await trio.Path(JobDir(str(state), 12).scratch).is_dir(), "a failed job's scratch stays for a look"


async def test_tails_keep_the_last_64_kib(dirs):
    state, out = dirs
    spec = make_spec(13, "head -c 100000 /dev/zero | tr '\\0' a; printf END; printf é >&2")
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert finished.state == "succeeded"
    assert len(finished.stdout_tail) == LOG_TAIL_BYTES
    assert finished.stdout_tail.endswith("aaaEND")
    assert finished.stderr_tail == "é"


async def test_command_syntax_error_fails_the_job(dirs):
    state, out = dirs
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(make_spec(14, "if then fi ("))
    assert finished.state == "failed" and finished.exit_code == 2
    assert "syntax error" in finished.stderr_tail


async def test_unknown_executor_fails_the_job(dirs):
    state, out = dirs
    async with executor(state, out) as ex:
        started, finished = await ex.run_job(make_spec(15, "true", executor="cluster"))
    assert started is None
    assert finished.state == "failed" and "'cluster' is not configured" in finished.reason


async def test_bad_env_name_names_the_key(dirs):
    state, out = dirs
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(make_spec(16, "true", env={"BAD-NAME": "x"}))
    assert finished.state == "failed" and "'BAD-NAME'" in finished.reason


# --- outputs ----------------------------------------------------------------


async def test_outputs_are_moved_after_success(dirs):
    state, out = dirs
    command = 'mkdir -p d && echo one > d/a-$MUPPET_JOB_INDEX.txt && echo two > b.txt'
    spec = make_spec(20, command, outputs=("d/a-{index}.txt", "{reference_time:%Y%m%dT%H}/../b.txt"))
    with pytest.raises(OutputError, match=r"\.\."):
        output_paths(spec.step.outputs, REFERENCE_TIME, 2)
    spec = make_spec(20, command + " && mkdir -p 20261128T06 && mv b.txt 20261128T06/",
                     outputs=("d/a-{index}.txt", "{reference_time:%Y%m%dT%H}/b.txt"))
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert finished.state == "succeeded", finished
    assert (out / "d" / "a-2.txt").read_text() == "one\n"
    assert (out / "20261128T06" / "b.txt").read_text() == "two\n"
    assert not await trio.Path(JobDir(str(state), 20).scratch).exists()


async def test_missing_output_fails_and_moves_nothing(dirs):
    state, out = dirs
    spec = make_spec(21, "echo x > a.txt", outputs=("a.txt", "b.txt"))
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert finished.state == "failed" and finished.exit_code == 0
    assert finished.reason == "missing output: b.txt"
    assert list(out.iterdir()) == []
    assert await (trio.Path(JobDir(str(state), 21).scratch) / "a.txt").exists()


async def test_failed_job_moves_nothing(dirs):
    state, out = dirs
    spec = make_spec(22, "echo x > a.txt; exit 1", outputs=("a.txt",))
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert finished.state == "failed" and finished.reason == "exit code 1"
    assert list(out.iterdir()) == []


def test_output_paths_refuse_escapes():
    for bad in ("/etc/passwd", "../x", "a/../../x", "", ".", "{nope}", "{index:%Y}"):
        with pytest.raises(OutputError):
            output_paths([bad], REFERENCE_TIME, 0)
    assert output_paths(["x/{index:03d}.nc"], REFERENCE_TIME, 7) == ["x/007.nc"]


def test_move_outputs_resumes_after_a_crash(tmp_path):
    scratch, out, plan = tmp_path / "scratch", tmp_path / "out", str(tmp_path / "plan.json")
    scratch.mkdir()
    (scratch / "a").write_text("A")
    (scratch / "b").write_text("B")
    # a crash after the plan was written and "a" moved, before "b"
    (out).mkdir()
    Path(plan).write_text('["a", "b"]')
    os.rename(scratch / "a", out / "a")
    moved = move_outputs(["a", "b"], str(scratch), str(out), REFERENCE_TIME, 0, plan=plan)
    assert moved == [str(out / "a"), str(out / "b")]
    assert (out / "a").read_text() == "A" and (out / "b").read_text() == "B"
    # and once more (the report was lost): everything counts as moved
    assert move_outputs(["a", "b"], str(scratch), str(out), REFERENCE_TIME, 0, plan=plan) == moved
    # without a plan a missing source is missing, even if the destination exists
    with pytest.raises(MissingOutput, match="missing output: a"):
        move_outputs(["a"], str(scratch), str(out), REFERENCE_TIME, 0)


def _other_device_dir(tmp_path: Path) -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        return Path(os.path.join(shm, f"muppet-test-{os.getpid()}-{tmp_path.name}"))
    return None


def test_move_across_file_systems(tmp_path):
    other = _other_device_dir(tmp_path)
    source_root = other if other is not None else tmp_path / "src"
    source_root.mkdir()
    try:
        (source_root / "f.nc").write_bytes(b"x" * 3_000_000)
        (source_root / "tree").mkdir()
        (source_root / "tree" / "inner.txt").write_text("inner")
        destination = tmp_path / "dest"
        destination.mkdir()
        (destination / "f.nc").write_text("old")  # replaced whole
        if other is not None:
            move_into_place(str(source_root / "f.nc"), str(destination / "f.nc"))  # real EXDEV
        else:
            copy_then_rename(str(source_root / "f.nc"), str(destination / "f.nc"))
        copy_then_rename(str(source_root / "tree"), str(destination / "tree"))
        assert (destination / "f.nc").read_bytes() == b"x" * 3_000_000
        assert (destination / "tree" / "inner.txt").read_text() == "inner"
        assert sorted(os.listdir(source_root)) == []
        assert sorted(os.listdir(destination)) == ["f.nc", "tree"], "no temporary left beside it"
    finally:
        if other is not None:
            subprocess.run(["rm", "-rf", str(other)], check=True)


# --- kill, sessions -------------------------------------------------------------


async def test_kill_a_running_job(dirs):
    state, out = dirs
    spec = make_spec(30, "sleep 60 & sleep 60; wait", outputs=("x",))
    async with executor(state, out) as ex:
        await ex.send.send(KillJob(999))  # unknown: nothing happens
        await ex.send.send(spec)
        started = await ex.next(JobStarted)
        pid = int(started.batch_id)
        await wait_until(lambda: len(group_members(pid)) >= 3, "the job's processes")
        begin = time.monotonic()
        await ex.send.send(KillJob(30))
        finished = await ex.next(JobFinished)
        took = time.monotonic() - begin
    assert (finished.state, finished.reason) == ("killed", "killed by operator")
    assert finished.exit_code == 143, "the wrapper's trap still wrote the end record"
    assert took < 4.5, f"killed by SIGTERM, not by the SIGKILL after the grace period ({took:.1f} s)"
    await wait_until(lambda: not group_members(pid), "the process group to be gone")


async def test_kill_escalates_to_sigkill(dirs):
    state, out = dirs
    spec = make_spec(31, "trap '' TERM; sleep 60")
    async with executor(state, out) as ex:
        await ex.send.send(spec)
        pid = int((await ex.next(JobStarted)).batch_id)
        await wait_until(lambda: len(group_members(pid)) >= 2, "the job's processes")
        await ex.send.send(KillJob(31))
        finished = await ex.next(JobFinished)
    assert finished.state == "killed"
    await wait_until(lambda: not group_members(pid), "the process group to be gone")


async def test_job_runs_away_from_the_daemons_session(dirs):
    """A local job leads its process group, in a session that is not the
    daemon's: its own (a spare's) or its launcher's, whichever started it
    (docs/operations.md)."""
    state, out = dirs
    async with executor(state, out) as ex:
        await ex.send.send(make_spec(32, "sleep 60"))
        pid = int((await ex.next(JobStarted)).batch_id)
        assert os.getsid(pid) != os.getsid(0)
        assert os.getsid(pid) == pid or os.getsid(pid) == _parent(pid) in our_launchers()
        assert os.getpgid(pid) == pid
        await ex.send.send(KillJob(32))
        assert (await ex.next(JobFinished)).state == "killed"


# --- restart: re-attach, never twice, never lost ------------------------------------


async def test_reattach_to_a_running_job(dirs, tmp_path):
    state, out = dirs
    counter = tmp_path / "ran"
    spec = make_spec(40, f"echo once >> {counter}; sleep 2; exit 7")
    async with executor(state, out) as ex:
        await ex.send.send(spec)
        first = await ex.next(JobStarted)
        await ex.send.send(spec)  # idempotent while in hand
        # the daemon dies here
    pid = int(first.batch_id)
    wrapper = JobDir(str(state), 40).wrapper
    assert _is_wrapper(pid, wrapper), "the job outlives the executor"
    # what the scheduler sends after a restart for a job it saw running
    running = attrs.evolve(spec, job=attrs.evolve(spec.job, state=JobState.RUNNING, batch_id=first.batch_id))
    async with executor(state, out) as ex:
        started, finished = await ex.run_job(running)
    assert started is not None and started.batch_id == first.batch_id
    assert started.started_at == pytest.approx(first.started_at, abs=1.0)
    assert (finished.state, finished.exit_code) == ("failed", 7)
    assert counter.read_text() == "once\n"


async def test_reattach_to_a_job_that_ended_while_no_executor_ran(dirs, tmp_path):
    state, out = dirs
    counter = tmp_path / "ran"
    spec = make_spec(41, f"echo once >> {counter}; echo done; sleep 0.5; exit 5")
    async with executor(state, out) as ex:
        await ex.send.send(spec)
        first = await ex.next(JobStarted)
    job_dir = JobDir(str(state), 41)
    await wait_until(lambda: (job_dir.read_status() or Status("x")).has_ended, "the job to end")
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert (finished.state, finished.exit_code, finished.stdout_tail) == ("failed", 5, "done\n")
    assert finished.started_at == pytest.approx(first.started_at, abs=1.0)
    assert counter.read_text() == "once\n"


async def test_reattach_moves_outputs_of_a_success(dirs):
    state, out = dirs
    spec = make_spec(42, "sleep 0.5; echo r > r.txt", outputs=("r.txt",))
    async with executor(state, out) as ex:
        await ex.send.send(spec)
        await ex.next(JobStarted)
    job_dir = JobDir(str(state), 42)
    await wait_until(lambda: (job_dir.read_status() or Status("x")).has_ended, "the job to end")
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(spec)
        assert finished.state == "succeeded"
        # the report got lost (daemon died before persisting it): same answer again
        _, again = await ex.run_job(spec)
    assert again.state == "succeeded" and again.exit_code == 0
    assert (out / "r.txt").read_text() == "r\n"


async def test_started_but_dead_without_end_record_is_lost(dirs, tmp_path):
    state, out = dirs
    marker = tmp_path / "ran"
    spec = make_spec(43, f"touch {marker}")
    job_dir = JobDir(str(state), 43)
    job_dir.prepare(spec)
    dead = await trio.lowlevel.open_process(["true"])
    await dead.wait()
    await trio.Path(job_dir.status).write_text(
        f'{{"state":"running","pid":{dead.pid},"host":"elsewhere","started":1795870000.5}}\n'
    )
    async with executor(state, out) as ex:
        started, finished = await ex.run_job(spec)
    assert started is not None and started.host == "elsewhere"
    assert finished.state == "failed" and finished.exit_code is None
    assert finished.reason.startswith("lost: ") and f"pid {dead.pid}" in finished.reason
    assert finished.started_at == 1795870000.5
    assert not marker.exists(), "a lost job is not run again"


async def test_claimed_without_start_record_is_lost(dirs, tmp_path):
    state, out = dirs
    marker = tmp_path / "ran"
    spec = make_spec(44, f"touch {marker}")
    job_dir = JobDir(str(state), 44)
    job_dir.prepare(spec)
    await trio.Path(job_dir.status).write_text('{"state":"runn')  # the wrapper died mid-write
    async with executor(state, out) as ex:
        _, finished = await ex.run_job(spec)
    assert finished.state == "failed" and finished.reason.startswith("lost: ")
    assert not marker.exists()


@pytest.mark.parametrize("runner", ["launcher", "spare", "bash"])
async def test_a_wrapper_without_status_is_found(dirs, tmp_path, runner):
    """The window between the hand-over and the wrapper's first write: a
    previous daemon's wrapper that has not written its status yet is found
    and watched, not started again. A launcher's wrapper and a spare's show
    no job on their command line: the wrapper they hold open does; a wrapper
    a daemon before spares started shows its path on its command line."""
    state, out = dirs
    counter = tmp_path / "ran"
    gate = tmp_path / "gate"
    job_id = {"launcher": 44, "spare": 45, "bash": 46}[runner]
    spec = make_spec(job_id, f"echo once >> {counter}; exit 4")
    job_dir = JobDir(str(state), job_id)
    job_dir.prepare(spec, interpreter_line=runner != "launcher")
    # hold the wrapper before its first command, as if caught right after the hand-over
    wrapper = trio.Path(job_dir.wrapper)
    first_line, rest = (await wrapper.read_text()).split("\n", 1)
    hold = f"until [ -e {gate} ] || [ $SECONDS -ge 300 ]; do read -t 0.05 <> <(:) || :; done\n"
    await wrapper.write_text(first_line + "\n" + hold + rest)
    launcher = None
    if runner == "launcher":
        launcher = await trio.to_thread.run_sync(_Launcher, "/bin/bash", str(state / "jobs"))
        starter = launcher.process
        assert await trio.to_thread.run_sync(launcher.run, job_dir.wrapper)
    elif runner == "spare":
        starter = await trio.lowlevel.open_process(
            ["/bin/bash", "-c", _SPARE_SCRIPT, SPARE_NAME], start_new_session=True, stdin=subprocess.PIPE
        )
    else:
        starter = await trio.lowlevel.open_process(
            ["/bin/bash", job_dir.wrapper], start_new_session=True, stdin=subprocess.DEVNULL
        )
    if isinstance(starter, trio.Process) and starter.stdin is not None:
        await starter.stdin.send_all(job_dir.wrapper.encode() + b"\n")
    try:
        # A process's command line is in /proc only once the kernel has set up
        # its new image, a moment after the exec that open_process waits for
        # (and a spare or a launcher opens the wrapper a moment after it reads
        # its path): a daemon restarted seconds after a hand-over never sees
        # that moment.
        await wait_until(lambda: job_dir.wrapper in scan_wrappers(str(state)), "the wrapper to show")
        orphan = scan_wrappers(str(state))[job_dir.wrapper]
        assert (orphan == starter.pid) == (runner != "launcher")
        # the previous daemon is gone
        if launcher is not None:
            launcher.close()
            await trio.to_thread.run_sync(launcher.process.wait)
            launcher.has_exited()
            os.close(launcher.output)
        elif starter.stdin is not None:
            await starter.stdin.aclose()
        async with executor(state, out) as ex:
            await ex.send.send(spec)
            started = await ex.next(JobStarted)
            assert started.batch_id == str(orphan)
            gate.touch()
            finished = await ex.next(JobFinished)
        assert (finished.state, finished.exit_code) == ("failed", 4)
        assert counter.read_text() == "once\n"
    finally:
        gate.touch()
        with trio.fail_after(SAFETY):
            if isinstance(starter, trio.Process):
                await starter.wait()
            else:
                await trio.to_thread.run_sync(starter.wait)


def test_wrapper_claims_the_job_once(dirs, tmp_path):
    state, _ = dirs
    counter = tmp_path / "ran"
    spec = make_spec(46, f"echo once >> {counter}")
    job_dir = JobDir(str(state), 46)
    job_dir.prepare(spec)
    first = subprocess.run(["/bin/bash", job_dir.wrapper], stdin=subprocess.DEVNULL)
    second = subprocess.run(["/bin/bash", job_dir.wrapper], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert first.returncode == 0 and second.returncode == CLAIMED_EXIT
    assert "started already" in second.stderr
    assert counter.read_text() == "once\n"
    assert job_dir.read_status().exit_code == 0


def test_wrapper_that_cannot_write_its_claim_exits_74_and_claims_nothing(small_tmpfs, tmp_path):
    """A full disk between preparing and the claim: the wrapper exits with
    CANNOT_START_EXIT (not CLAIMED_EXIT), says why, runs nothing and leaves
    no status file, so that the job can be prepared and started again."""
    marker = tmp_path / "ran"
    spec = make_spec(47, f"echo once >> {marker}")
    job_dir = JobDir(str(small_tmpfs), 47)
    job_dir.prepare(spec)
    fill(small_tmpfs / "fill")
    full = subprocess.run(["/bin/bash", job_dir.wrapper], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert full.returncode == CANNOT_START_EXIT != CLAIMED_EXIT
    assert "No space left on device" in full.stderr and f"cannot write the status file {job_dir.status}" in full.stderr
    assert job_dir.read_status() is None, "the claim it could not write is withdrawn"
    assert not marker.exists()
    (small_tmpfs / "fill").unlink()
    job_dir.prepare(spec)  # again: nothing was claimed
    again = subprocess.run(["/bin/bash", job_dir.wrapper], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == f"muppet: claimed {job_dir.read_status().pid}\n"
    assert marker.read_text() == "once\n"
    assert job_dir.read_status().exit_code == 0


def test_a_wrapper_whose_job_directory_is_gone_ends(dirs):
    """No one is left to read an end record when the job directory has been
    removed (state_dir wiped under a running job): the wrapper gives up after
    its first failed write and exits with the command's code, instead of
    trying again for ever."""
    state, _ = dirs
    spec = make_spec(48, 'rm -rf "$MUPPET_JOB_DIR"; exit 5')
    job_dir = JobDir(str(state), 48)
    job_dir.prepare(spec)
    done = subprocess.run(["/bin/bash", job_dir.wrapper], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 5, done.stderr
    assert not os.path.exists(job_dir.root)


async def test_a_command_exiting_74_or_75_is_its_own_failure(dirs):
    """The wrapper's codes mean something only without an end record: a
    command that exits with them has run, and failed."""
    state, out = dirs
    async with executor(state, out) as ex:
        for job_id, code in ((48, CANNOT_START_EXIT), (49, CLAIMED_EXIT)):
            started, finished = await ex.run_job(make_spec(job_id, f"exit {code}"))
            assert started is not None
            assert (finished.state, finished.exit_code, finished.reason) == ("failed", code, f"exit code {code}")


# --- the machinery failing: a full disk is not the job's failure ---------------------------


def _warnings(caplog, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "muppet.executor" and words in r.getMessage()]


async def test_full_disk_at_prepare_is_not_started_and_starts_once_emptied(small_tmpfs, tmp_path, caplog):
    """state_dir full: each StartJob is answered JobNotStarted naming the job
    directory and the error (no JobStarted, no failure), the log says so once
    for all the jobs, and once the disk is emptied the same jobs start and
    succeed, with one line saying that jobs start again."""
    out = tmp_path / "out"
    out.mkdir()
    await trio.to_thread.run_sync(fill, small_tmpfs / "fill")
    specs = [make_spec(job_id, "echo ran") for job_id in (50, 51, 52)]
    async with executor(small_tmpfs, out) as ex:
        for spec in specs:
            await ex.send.send(spec)
            report = await ex.until_not_started(spec.job.id)
            job_dir = JobDir(str(small_tmpfs), spec.job.id)
            assert report.reason.startswith(f"cannot prepare {job_dir.root}: ")
            assert "No space left on device" in report.reason and job_dir.wrapper in report.reason
            assert not await trio.Path(job_dir.wrapper).exists(), "no wrapper written in part"
        assert len(_warnings(caplog, "cannot start jobs")) == 1
        assert _warnings(caplog, "cannot start jobs")[0].startswith("executor local: cannot start jobs: cannot prepare")
        await trio.Path(small_tmpfs / "fill").unlink()
        # what the scheduler does after its backoff: the same StartJob again
        for spec in specs:
            started, finished = await ex.run_job(spec)
            assert started is not None and finished.state == "succeeded", finished
            assert finished.stdout_tail == "ran\n"
    assert len(_warnings(caplog, "cannot start jobs")) == 1
    assert len(_warnings(caplog, "jobs start again after")) == 1


@pytest.mark.parametrize("runner", ["launcher", "spare"])
async def test_a_claim_the_wrapper_cannot_write_is_not_started(small_tmpfs, tmp_path, caplog, monkeypatch, runner):
    """Room for the wrapper but not for its status file: the wrapper exits
    74 and the executor reports JobNotStarted with what the wrapper said, never
    JobStarted; the next StartJob runs the command once. The same whether
    the wrapper ran in a launcher's fork, which says it on the launcher's
    pipe among the others', or in a spare."""
    if runner == "spare":
        async def no_launcher(backend):
            pass

        monkeypatch.setattr(LocalBackend, "maintain", no_launcher)
    out, marker = tmp_path / "out", tmp_path / "ran"
    out.mkdir()
    for directory in ("jobs", "scratch"):
        await trio.Path(small_tmpfs / directory).mkdir()
    spec = make_spec(53, f"echo once >> {marker}")
    job_dir = JobDir(str(small_tmpfs), 53)
    wrapper_pages = -(-len(render_wrapper(job_dir, spec).encode()) // 4096)
    async with executor(small_tmpfs, out) as ex:
        if runner == "launcher":
            await until_the_launcher_runs_jobs(ex, 60)
            spares = []
            monkeypatch.setattr(local_module._Spare, "__init__", lambda *args: spares.append(args) or None)
        await trio.to_thread.run_sync(fill, small_tmpfs / "fill")
        await trio.to_thread.run_sync(free_pages, small_tmpfs / "fill", wrapper_pages)  # room for the wrapper only
        await ex.send.send(spec)
        report = await ex.until_not_started(53)
        if runner == "launcher":
            assert not spares, "the launcher ran it"
        assert report.reason.startswith(f"cannot write the status file {job_dir.status}: ")
        assert "No space left on device" in report.reason and f"(exit {CANNOT_START_EXIT})" in report.reason
        assert not any(isinstance(m, JobStarted) and m.job_id == 53 for m in ex.messages)
        assert job_dir.read_status() is None and not marker.exists()
        await trio.Path(small_tmpfs / "fill").unlink()
        started, finished = await ex.run_job(spec)
    assert started is not None and finished.state == "succeeded", finished
    assert marker.read_text() == "once\n"
    assert len(_warnings(caplog, "cannot start jobs")) == 1
    assert len(_warnings(caplog, "jobs start again after")) == 1


async def test_an_end_record_that_cannot_be_written_waits_for_space(small_tmpfs, tmp_path):
    """The command has run when the disk fills: its exit code is not lost.
    The wrapper writes the end record again until it fits, on a line of its
    own; the job ends with its real exit code, not lost."""
    out = tmp_path / "out"
    out.mkdir()
    filled = small_tmpfs / "fill"
    # the command pads the status file to the end of its page (a line of
    # spaces: no record), so that the end record needs a page of its own,
    # then fills the disk
    command = (
        'n=$(( 4096 - $(wc -c < "$MUPPET_JOB_DIR/status") - 1 )); printf "%${n}s\\n" "" >> "$MUPPET_JOB_DIR/status"; '
        f"head -c 2M /dev/zero > {filled} 2>/dev/null; exit 3"
    )
    job_dir = JobDir(str(small_tmpfs), 54)
    async with executor(small_tmpfs, out) as ex:
        await ex.send.send(make_spec(54, command))
        await ex.next(JobStarted)

        def retrying() -> bool:
            # the wrapper sleeps between attempts, in its process group
            members = group_members(int(ex.messages[0].batch_id))
            return any(_cmdline(pid)[:1] == ["/bin/sleep"] for pid in members)

        async def retried() -> bool:
            return await trio.to_thread.run_sync(retrying)

        await wait_until(retried, "the wrapper to try the end record again")
        assert not (job_dir.read_status() or Status("x")).has_ended
        await trio.Path(filled).unlink()
        finished = await ex.next(JobFinished)
    assert (finished.state, finished.exit_code, finished.reason) == ("failed", 3, "exit code 3")
    text = await trio.Path(job_dir.status).read_text()
    assert '\n\n{"state":"ended"' in text, "the retried record starts a line of its own"


async def test_outputs_that_cannot_be_moved_wait_for_space(small_tmpfs, dirs, caplog):
    """output_dir full once the command succeeded: the outputs wait in the
    scratch directory and are moved once there is room; the job succeeds."""
    state, _ = dirs
    out = small_tmpfs
    await trio.to_thread.run_sync(fill, out / "fill")
    spec = make_spec(55, "head -c 20000 /dev/urandom > big.bin", outputs=("big.bin",))
    async with executor(state, out) as ex:
        await ex.send.send(spec)
        await ex.next(JobStarted)
        await wait_until(lambda: _warnings(caplog, "job 55: cannot finish"), "the move to fail")
        assert not [m for m in ex.messages if isinstance(m, JobFinished)]
        await trio.Path(out / "fill").unlink()
        finished = await ex.next(JobFinished)
    assert finished.state == "succeeded", finished
    assert (out / "big.bin").stat().st_size == 20000
    assert [o.path for o in finished.outputs] == ["big.bin"]
    assert sorted(p.name for p in out.iterdir()) == ["big.bin"], "no temporary copy left beside it"


# --- status parsing, registry ---------------------------------------------------


def test_parse_status_is_defensive():
    start = '{"state":"running","pid":7,"host":"h","started":1.5}\n'
    end = '{"state":"ended","pid":7,"host":"h","started":1.5,"ended":2.5,"exit_code":3}\n'
    assert parse_status("") == Status("claimed")
    assert parse_status(start[:-1]) == Status("claimed"), "no newline: unfinished"
    assert parse_status(start) == Status("running", 7, "h", 1.5)
    assert parse_status(start + end) == Status("ended", 7, "h", 1.5, 2.5, 3)
    assert parse_status(start + end[:30]).state == "running"
    assert parse_status(start + "\0\0garbage\n").state == "running"
    assert parse_status('{"state":"ended","pid":"7"}\n[1]\n"x"\n').state == "claimed"
    assert parse_status('{"state":"running","pid":true,"host":"h","started":1}\n').state == "claimed"
    # the batch job that wrote the record, when the wrapper knows it; records
    # without the field (local wrappers, older ones) still count
    batch_start = start[:-2] + ',"batch_id":"8812"}\n'
    assert parse_status(batch_start) == Status("running", 7, "h", 1.5, batch_id="8812")
    assert parse_status(batch_start + end[:-2] + ',"batch_id":"8812"}\n').batch_id == "8812"
    assert parse_status(start[:-2] + ',"batch_id":"x\\"y"}\n') == Status("running", 7, "h", 1.5)
    assert parse_status(start[:-2] + ',"batch_id":12}\n') == Status("running", 7, "h", 1.5)
    assert parse_status("\n" + start + "   \n\n" + end) == Status("ended", 7, "h", 1.5, 2.5, 3)


def test_backend_registry():
    assert set(BACKEND_TYPES) >= {"local", "gridengine", "slurm"}
    assert backend_factory("local").__name__ == "LocalBackend"
    with pytest.raises(ValueError, match="unknown executor type 'pbs'"):
        backend_factory("pbs")
    with pytest.raises(ValueError, match=r"\[executors.big\] type"):
        make_backends({"big": ExecutorConfig(name="big", type="pbs")}, "/tmp")


def test_what_a_launcher_and_its_wrappers_say_is_told_apart():
    """``LauncherOutput``: the lines on a launcher's one pipe, in pieces as
    a pipe gives them, each to the wrapper or the pid it is of; what a
    wrapper says before its claim is kept only for the launches that
    expect it, and forgotten with them."""
    said = LauncherOutput()
    said.expect("/s/jobs/7/wrapper.sh", 7)
    said.expect("/s/jobs/8/wrapper.sh", 8)
    stream = (
        b"muppet: pid 101 /s/jobs/7/wrapper.sh\n"
        b"muppet: pid 102 /s/jobs/8/wrapper.sh\n"
        b"/s/jobs/8/wrapper.sh: line 9: /s/jobs/8/stdout: No space left on device\n"
        b"muppet: claimed 101\n"
        b"muppet: job 8: cannot open the output files in /s/jobs/8 or enter /s/scratch/8; not started\n"
        b"muppet: exit 102 74\n"
        b"muppet: cannot start /s/jobs/9/wrapper.sh: cannot open it\n"
        b"/s/jobs/3/wrapper.sh: line 1: a job nobody waits for\n"
        b"muppet: job 3: not expected either\n"
        b"muppet: exit 101 0\n"
    )
    news = set()
    for start in range(0, len(stream), 7):  # a line cut anywhere
        news |= said.feed(stream[start:start + 7])
    assert news == {"/s/jobs/7/wrapper.sh", "/s/jobs/8/wrapper.sh", "/s/jobs/9/wrapper.sh"}
    assert said.pids == {"/s/jobs/7/wrapper.sh": 101, "/s/jobs/8/wrapper.sh": 102}
    assert said.claimed == {101} and said.exits == {102: 74, 101: 0}
    assert said.refused == {"/s/jobs/9/wrapper.sh": "cannot open it"}
    assert said.words == {"/s/jobs/8/wrapper.sh": (
        "/s/jobs/8/wrapper.sh: line 9: /s/jobs/8/stdout: No space left on device\n"
        "muppet: job 8: cannot open the output files in /s/jobs/8 or enter /s/scratch/8; not started\n"
    )}
    said.forget("/s/jobs/8/wrapper.sh")
    said.forget("/s/jobs/7/wrapper.sh")
    assert not (said.pids or said.claimed or said.words or said.expected)
    assert said.exits == {102: 74, 101: 0}, "the exit statuses are ``wait``'s to take"
    said.feed(b"x" * 10000)
    assert not said.feed(b"\nmuppet: claimed 103\n"), "of no wrapper it knows"
    assert said.claimed == {103}, "an endless line is dropped, the next one heard"


def test_an_exit_line_says_the_end_record_only_when_it_is_whole():
    """``parse_exit_line``: the end a wrapper said, kept only when the
    record is an end record of that pid with that exit status."""
    record = '{"state":"ended","pid":7,"host":"h","started":1.5,"ended":2.5,"exit_code":%d}'
    ended = Status("ended", 7, "h", 1.5, 2.5, 0)
    assert parse_exit_line("7 74") == (7, 74, None), "an exit before any record"
    assert parse_exit_line("7 0 quiet " + record % 0) == (7, 0, SaidEnd(ended, quiet=True))
    assert parse_exit_line("7 1 spoke " + record % 1) == (
        7, 1, SaidEnd(attrs.evolve(ended, exit_code=1), quiet=False),
    )
    assert parse_exit_line("7 1 quiet " + record % 0) == (7, 1, None), "another exit status"
    assert parse_exit_line("8 0 quiet " + record % 0) == (8, 0, None), "another pid"
    assert parse_exit_line("7 0 quiet " + record[:-5]) == (7, 0, None), "a record cut short"
    assert parse_exit_line("7 0 loud " + record % 0) == (7, 0, None)
    assert parse_exit_line("7 x") is None and parse_exit_line("seven 0") is None
    said = LauncherOutput()
    said.feed(b"muppet: exit 7 0 quiet " + (record % 0).encode() + b"\n")
    assert said.exits == {7: 0} and said.ends == {7: SaidEnd(ended, quiet=True)}


def test_a_local_wrapper_is_an_executable_script_without_an_interpreter_line(dirs):
    """The local executor's wrappers begin without ``#!`` (a launcher runs
    them in a fork of itself), a batch system's with it; both are
    executable, whatever an earlier attempt left."""
    state, _ = dirs
    spec = make_spec(49, "true")
    job_dir = JobDir(str(state), 49)
    Path(job_dir.root).mkdir(parents=True)
    Path(job_dir.wrapper).write_text("an earlier attempt's, not executable\n")
    job_dir.prepare(spec, interpreter_line=False)
    assert not Path(job_dir.wrapper).read_text().startswith("#!")
    assert os.access(job_dir.wrapper, os.X_OK)
    job_dir.prepare(spec, "SLURM_JOB_ID")
    assert Path(job_dir.wrapper).read_text().startswith("#!/bin/bash\n")
    assert os.access(job_dir.wrapper, os.X_OK)


async def test_a_launcher_says_which_wrapper_it_cannot_open(tmp_path):
    """The launcher's own refusal, heard by the path it was given, and the
    wrapper after it started as usual."""
    launcher = await trio.to_thread.run_sync(_Launcher, default_bash(), str(tmp_path))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(launcher.read)
        missing = str(tmp_path / "gone" / "wrapper.sh")
        assert await trio.to_thread.run_sync(launcher.run, missing)
        with trio.fail_after(SAFETY):
            while missing not in launcher.said.refused:
                await launcher.news(missing)
        assert launcher.said.refused[missing] == "cannot open it"
        launcher.close()
        with trio.fail_after(SAFETY):
            await trio.to_thread.run_sync(launcher.process.wait)
            launcher.has_exited()
            while not launcher.ended:
                await launcher.news(missing)
    assert not launcher.run(missing), "a closed launcher takes nothing"


async def test_a_path_no_reader_took_is_refused_once_the_launcher_ended(tmp_path):
    """A launcher killed with its readers leaves the paths handed to it in
    its pipe: they are read back and refused, so that no launch waits for a
    reader that will not come."""
    launcher = await trio.to_thread.run_sync(_Launcher, default_bash(), str(tmp_path))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(launcher.read)
        pid = launcher.process.pid
        await wait_until(lambda: len(readers_of(pid)) == LAUNCHER_READERS, "the launcher's readers")
        for process in readers_of(pid) | {pid}:
            os.kill(process, signal.SIGKILL)
        with trio.fail_after(SAFETY):
            await trio.to_thread.run_sync(launcher.process.wait)
        orphan = str(tmp_path / "1" / "wrapper.sh")
        assert await trio.to_thread.run_sync(launcher.run, orphan), "the pipe of paths is still open"
        launcher.close()
        launcher.has_exited()
        assert launcher.said.refused == {orphan: "the launcher ended before a reader took it"}
        with trio.fail_after(SAFETY):
            while not launcher.ended:
                await launcher.news(orphan)


async def test_a_launched_wrapper_says_its_exit_status(dirs):
    """The daemon is not the parent of a launcher's wrapper, so ``wait``
    has its exit status from what the wrapper said as it exited."""
    state, _ = dirs
    backend = LocalBackend(EXECUTORS["local"], str(state))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.maintain)
        await wait_until(lambda: backend._launcher is not None, "a launcher")
        job_dir = JobDir(str(state), 70)
        gate = state / "gate"
        batch_id = await backend.launch(job_dir, make_spec(70, f"until [ -e {gate} ]; do sleep 0.01; done; exit 3"))
        assert _parent(int(batch_id)) in our_launchers()
        await trio.Path(gate).touch()
        with trio.fail_after(SAFETY):
            assert await backend.wait(job_dir, batch_id) == 3
        backend.close()
    assert not our_launchers()


@pytest.mark.parametrize("path", ["long", "not ASCII"])
async def test_a_wrapper_whose_path_does_not_fit_a_launcher_record_starts_in_a_spare(tmp_path, path):
    """A launcher's readers take paths in ASCII records of
    ``LAUNCHER_RECORD`` bytes: a longer path is not cut, nor one that is
    not ASCII split; its job starts in a bash of its own."""
    state = tmp_path / ("état" if path == "not ASCII" else "state")
    while path == "long" and len(str(state)) < LAUNCHER_RECORD:
        state = state / ("d" * 200)
    backend = LocalBackend(EXECUTORS["local"], str(state))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.maintain)
        await wait_until(lambda: backend._launcher is not None, "a launcher")
        job_dir = JobDir(str(state), 71)
        batch_id = await backend.launch(job_dir, make_spec(71, "true"))
        assert _parent(int(batch_id)) == os.getpid(), "a spare, this process's child"
        with trio.fail_after(SAFETY):
            assert await backend.wait(job_dir, batch_id) == 0
        assert (await trio.to_thread.run_sync(job_dir.read_status)).exit_code == 0
        backend.close()
