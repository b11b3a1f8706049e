"""How fast the engine turns jobs over, beside plain process spawns.

Runs, through a real daemon (in this process: database, scheduler, executor,
API tasks as `muppet daemon` has them) on SQLite and on PostgreSQL:
- fan-out: one step with ``jobs = N``, command ``true``;
- chain: ``C`` steps in a line, command ``true``;
and in the same run N plain spawns of ``true``, and N of ``bash -c true``,
with the same parallelism as the executor's ``max_jobs`` (and N of the
executor's own bash, ``bash-static -c true``, where that is installed:
docs/executor.md, "Which bash runs a job"). Prints the fan-out's jobs per
second (from the trigger to the run's end, seen by a look every 50 ms) and
the ratio to each (``bash -c true`` is the reference of the scale targets in
docs/performance.md: a job's command runs under bash); the chain's time per
link, from one job's start record to the next one's (the wrappers' own clock,
to the microsecond: the 50 ms looks would add up to 0.5 ms a link); the
machine's load average, and where the CPU of a fan-out job goes:

- wrapper: the CPU of the job's processes (its wrapper and what that runs):
  the daemon runs in this process, so its jobs are the children of its
  launcher, a child of this process, whose ``/proc`` counts what it reaped,
  or this process's own children (spares: ``getrusage(RUSAGE_CHILDREN)``);
  beside it, a plain spawn's; and their page faults (a new process's
  copies of the pages it writes, and its program's pages mapped again: a
  quarter of that CPU on the 2-core machine of
  docs/performance.md);
- files: the job directory's work in the daemon's worker threads
  (``JobDir.prepare``, ``read_status``, ``read_tails``, ``remove_scratch``),
  their thread CPU time;
- daemon: the rest of this process's CPU (``RUSAGE_SELF``) while the run
  runs: the scheduler, the database, the executor's and the API's tasks;
- server (PostgreSQL): the CPU of the database server's processes, its
  postmaster with the backends it has reaped and those still running,
  which take their share of the same 2 cores;
- per link of the chain, the same.

A job creates six files and directories (its directory, scratch, wrapper,
status, stdout and stderr), which a plain spawn does not; the benchmark
prints what one creation costs in the CPU where the state_dir is, and
``--state-dir-under /dev/shm`` puts the job directories on tmpfs to show the
rate without that cost (the databases stay where they were). ``--bash
/bin/bash`` runs the jobs under that bash instead of the executor's default
(the local executor's ``bash`` key), to compare the two.

    .venv/bin/python bench/scheduler.py [--jobs 1000] [--chain 100] [--max-jobs 16] [--state-dir-under DIR]
        [--bash PATH]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import itertools
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pgserver import PostgresServer  # noqa: E402

from muppet import daemon  # noqa: E402
from muppet.api.client import connect  # noqa: E402
from muppet.config import load_config  # noqa: E402
from muppet.db import writes  # noqa: E402
from muppet.executor import local  # noqa: E402
from muppet.executor import task as executor_task  # noqa: E402
from muppet.executor.jobdir import JobDir  # noqa: E402
from muppet.messages import JobFinished, Persisted  # noqa: E402
from muppet.scheduler.core import Scheduler  # noqa: E402


def pipelines(jobs: int, chain: int) -> dict[str, str]:
    head = '[stakeholders.b]\nname = "bench"\n'
    fan = head + f'[pipeline]\nname = "fan"\nowner = "b"\n[steps.a]\ncommand = "true"\njobs = {jobs}\n'
    line = head + '[pipeline]\nname = "chain"\nowner = "b"\n'
    for n in range(chain):
        line += f'[steps.s{n}]\ncommand = "true"\n' + (f'parents = ["s{n - 1}"]\n' if n else "")
    return {"fan": fan, "chain": line}


def file_system(path: Path) -> str:
    """The type of the file system ``path`` is on, from /proc/mounts (the
    longest mount point that contains it); for an ext4 without a journal,
    what that costs here."""
    best, kind, device = "", "unknown", ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1]
            if (str(path.resolve()) + "/").startswith(point.rstrip("/") + "/") and len(point) > len(best):
                best, kind, device = point, fields[2], fields[0]
    # jbd2 lists each journal it runs as DEVICE-INODE (/proc/fs/jbd2)
    journals = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
    if kind == "ext4" and not any(name.rsplit("-", 1)[0] == os.path.basename(device) for name in journals):
        # Linux's ext4 without a journal passes over each free inode freed in
        # the last 60 s (360 s while its inode table block is dirty) as it
        # creates a file (fs/ext4/ialloc.c, find_inode_bit, recently_deleted)
        return (f"{kind} without a journal: a file's creation passes over every inode freed in the last "
                "1-6 minutes, such as the last round's job directories")
    return kind


def creation_cpu(directory: Path, count: int = 500) -> float:
    """CPU seconds to create one empty file in ``directory`` (in a
    subdirectory removed afterwards)."""
    where = directory / "creations"
    where.mkdir()
    begin = time.process_time()
    for i in range(count):
        os.close(os.open(where / str(i), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    spent = time.process_time() - begin
    shutil.rmtree(where)
    return spent / count


def write_config(
    root: Path, database: str, max_jobs: int, jobs: int, chain: int, state_dir: Path, bash: str | None = None,
) -> Path:
    (root / "pipelines").mkdir(parents=True)
    for name, text in pipelines(jobs, chain).items():
        (root / "pipelines" / f"{name}.toml").write_text(text)
    path = root / "muppet.toml"
    path.write_text(
        f'[daemon]\ndatabase = "{database}"\nstate_dir = "{state_dir}"\n'
        f'output_dir = "{root / "out"}"\npipelines = ["pipelines/*.toml"]\n'
        f'[api]\nlisten = "127.0.0.1:0"\n[web]\nlisten = ""\n'
        f'[executors.local]\ntype = "local"\nmax_jobs = {max_jobs}\n'
        + ("" if bash is None else f'bash = "{bash}"\n')
    )
    return path


class FileClock:
    """Thread CPU time spent in the job directory's file work, in whichever
    worker thread does it (an outer call's time only: ``prepare`` reads the
    status file itself)."""

    METHODS = ("prepare", "read_status", "read_tails", "remove_scratch")

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._depth = threading.local()

    @contextmanager
    def installed(self) -> Iterator[None]:
        originals = {name: getattr(JobDir, name) for name in self.METHODS}

        def timed(method: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(job_dir: JobDir, *args: Any, **kwargs: Any) -> Any:
                depth = getattr(self._depth, "n", 0)
                self._depth.n = depth + 1
                began = time.thread_time()
                try:
                    return method(job_dir, *args, **kwargs)
                finally:
                    self._depth.n = depth
                    if depth == 0:
                        with self._lock:
                            self.seconds += time.thread_time() - began
            return wrapper

        for name, method in originals.items():
            setattr(JobDir, name, timed(method))
        try:
            yield
        finally:
            for name, method in originals.items():
                setattr(JobDir, name, method)


class HopClock:
    """When each hop of a chain's link happens (wall clock, the clock of
    the wrapper's records): the wrapper's end seen ("reaped": its pidfd, and
    its exit status), its status file read (a worker thread), the scheduler
    given JobFinished, the database's commit (a worker thread), the
    scheduler given Persisted, the executor's launch begun, the wrapper
    handed to the launcher, or to a spare (a worker thread). With the
    wrapper's own end and start records, ``hops`` says where a link's time
    goes."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str]] = []

    def _mark(self, label: str) -> None:
        self.marks.append((time.time(), label))  # list.append is atomic: threads mark too

    @contextmanager
    def installed(self) -> Iterator[None]:
        mark = self._mark
        wait_child, status_and_files = local._wait_child, executor_task._Job._status_and_files
        write, handle = writes.write, Scheduler.handle
        launch, hand, run = executor_task._Job._launch, local._Spare.hand, local._Launcher.run
        forked_wait = local._Forked.wait

        async def timed_wait_child(*args: Any) -> None:
            await wait_child(*args)
            mark("reaped")

        async def timed_forked_wait(forked: Any) -> Any:
            result = await forked_wait(forked)
            mark("reaped")
            return result

        def timed_status_and_files(job: Any) -> Any:
            result = status_and_files(job)
            mark("status read")
            return result

        def timed_write(*args: Any, **kwargs: Any) -> Any:
            mark("commit begins")
            result = write(*args, **kwargs)
            mark("committed")
            return result

        def timed_handle(scheduler: Scheduler, events: Any, now: float) -> Any:
            events = list(events)
            for event in events:
                if isinstance(event, JobFinished | Persisted):
                    mark(type(event).__name__)
            return handle(scheduler, events, now)

        async def timed_launch(job: Any) -> str:
            mark("launch begins")
            return await launch(job)

        def timed_hand(spare: Any, *args: Any) -> Any:
            result = hand(spare, *args)
            mark("handed")
            return result

        def timed_run(launcher: Any, *args: Any) -> Any:
            result = run(launcher, *args)
            mark("handed")
            return result

        patches: list[tuple[Any, str, Any]] = [
            (local, "_wait_child", timed_wait_child),
            (executor_task._Job, "_status_and_files", timed_status_and_files),
            (writes, "write", timed_write),
            (Scheduler, "handle", timed_handle),
            (executor_task._Job, "_launch", timed_launch),
            (local._Spare, "hand", timed_hand),
            (local._Launcher, "run", timed_run),
            (local._Forked, "wait", timed_forked_wait),
        ]
        originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        try:
            yield
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)

    def hops(self, times: list[tuple[float, float]]) -> str:
        """The median time from a job's end record to each hop before the
        next job's start record, over the chain's links (``times``: each
        job's (started, ended), ``records``). The commit is the one that
        carries the job's end (a commit of the job's start may still run
        when it ends)."""
        marks = sorted(self.marks)
        stamps = [t for t, _ in marks]
        offsets: dict[str, list[float]] = {}
        for (_, ended), (started, _) in itertools.pairwise(times):
            # the marks between the two records (bisected: a fan-out has
            # thousands of links and marks)
            link = marks[bisect.bisect_left(stamps, ended):bisect.bisect_right(stamps, started)]
            seen: dict[str, float] = {}
            for t, label in link:
                seen.setdefault(label, t)
            # the commit that let the next job start: the last one before its
            # launch (one of the job's start record may still run as it ends)
            launched = seen.get("launch begins", started)
            for label in ("Persisted", "committed", "commit begins"):
                found = [t for t, name in link if name == label and t <= launched]
                if found:
                    seen[label] = launched = found[-1]
            seen["next start"] = started
            for label, t in seen.items():
                offsets.setdefault(label, []).append((t - ended) * 1e3)
        order = ["reaped", "status read", "JobFinished", "commit begins", "committed", "Persisted",
                 "launch begins", "handed", "next start"]
        return ", ".join(f"{label} {statistics.median(offsets[label]):.1f}" for label in order if label in offsets)


def records(state_dir: Path, job_ids: list[int]) -> list[tuple[float, float]]:
    """(started, ended) of each job, from its wrapper's status records."""
    found = []
    for job_id in job_ids:
        status = JobDir(str(state_dir), job_id).read_status()
        assert status is not None and status.started is not None and status.ended is not None, (job_id, status)
        found.append((status.started, status.ended))
    return found


def processes() -> Iterator[tuple[int, list[str]]]:
    """Each live process's pid and the fields of its ``/proc/PID/stat``
    after the command: state, ppid, pgrp, session, tty_nr, tpgid, flags,
    minflt, cminflt, majflt, cmajflt, utime, stime, cutime, cstime, ...
    (proc(5)). One that ends meanwhile is left out: its parent has its
    CPU and its page faults now."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                yield int(entry), file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue


def server_usage(pid: int) -> float:
    """The CPU of process ``pid`` with its children, those it has reaped
    and those still running: PostgreSQL's postmaster and its backends (one
    per connection, ended when the connection is closed)."""
    ticks = 0
    for process, fields in processes():
        if process == pid:
            ticks += sum(int(field) for field in fields[11:15])
        elif int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def children_usage() -> tuple[float, int]:
    """The CPU and the page faults of this process's children that it has
    reaped."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt + usage.ru_majflt


def jobs_usage() -> tuple[float, int]:
    """The CPU and the page faults of this process's jobs so far: of its
    children that it has reaped (the spares), and of its live launchers
    with the wrappers they reaped (docs/executor.md, "The launcher": the
    wrappers they start are theirs, not ours); docs/performance.md,
    "Fan-out of 1,000 `true` jobs", says what the page faults are."""
    seconds, faults = children_usage()
    for pid, fields in processes():
        if int(fields[1]) == os.getpid() and local._cmdline(pid)[3:4] == [local.LAUNCHER_NAME]:
            seconds += sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            faults += sum(int(field) for field in fields[7:11])
    return seconds, faults


class Figures:
    def __init__(self, count: int) -> None:
        self.count = count
        self.rate = 0.0
        self.wrapper = self.files = self.daemon = 0.0  # CPU seconds per job
        #: the database server's CPU seconds per job (None: SQLite, no server)
        self.server: float | None = None
        #: page faults of the job's processes per job
        self.wrapper_faults = 0.0
        #: seconds from each job's end (its wrapper's end record) to the
        #: next one's start (its start record), in id order
        self.gaps: list[float] = []
        #: seconds from each job's start record to the next one's, in id
        #: order: a chain's links (the records' microseconds, where the
        #: run's end is seen only at the next look, every 50 ms)
        self.links: list[float] = []
        #: where a link's time goes (HopClock.hops)
        self.hops = ""

    def breakdown(self) -> str:
        server = "" if self.server is None else f", database server {self.server * 1e3:5.2f} ms"
        return (f"CPU per job: wrapper {self.wrapper * 1e3:5.2f} ms ({self.wrapper_faults:.0f} page faults), "
                f"files {self.files * 1e3:5.2f} ms, daemon {self.daemon * 1e3:5.2f} ms{server}")


async def through_daemon(
    config_path: Path, pipeline: str, count: int, *, links: bool = False, server: int | None = None
) -> Figures:
    """The run of ``pipeline`` through a daemon; with ``links`` (a chain),
    also each link's time and where it goes, from the wrappers' records and
    ``HopClock``, whose marks are then taken during the run; with ``server``
    (the pid of PostgreSQL's postmaster), that server's CPU
    (``server_usage``)."""
    config = load_config(config_path)
    figures = Figures(count)
    files, hops = FileClock(), HopClock()
    # the launchers of the daemons before this one: reaped now, so that the
    # CPU of all they ran is not counted in this run (``jobs_usage``)
    with trio.fail_after(10):
        while local._abandoned:
            local._sweep()
            await trio.sleep(0.01)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.serve, config)
        async with connect(f"ws://127.0.0.1:{port}") as client:
            children, own = jobs_usage(), cpu(resource.RUSAGE_SELF)
            served = server_usage(server) if server is not None else 0.0
            begin = time.perf_counter()
            with files.installed(), hops.installed() if links else contextlib.nullcontext():
                run_id = (await client.call("runs.trigger", {"pipeline": pipeline}))["run_id"]
                while True:
                    run = await client.call("runs.list", {"limit": 1})
                    if run and run[0]["id"] == run_id and run[0]["state"] != "running":
                        break
                    await trio.sleep(0.05)
            elapsed = time.perf_counter() - begin
            after = jobs_usage()
            figures.wrapper = (after[0] - children[0]) / count
            figures.wrapper_faults = (after[1] - children[1]) / count
            figures.files = files.seconds / count
            figures.daemon = (cpu(resource.RUSAGE_SELF) - own) / count - figures.files
            if server is not None:
                figures.server = (server_usage(server) - served) / count
            assert run[0]["state"] == "succeeded", run
            if links:
                # runs.get: every job of the run (jobs.list stops at 1,000)
                job_ids = sorted(job["id"] for job in (await client.call("runs.get", {"run_id": run_id}))["jobs"])
                state_dir = Path(config.daemon.state_dir)
                times = await trio.to_thread.run_sync(records, state_dir, job_ids)
                figures.gaps = sorted(after[0] - before[1] for before, after in itertools.pairwise(times))
                figures.links = [after[0] - before[0] for before, after in itertools.pairwise(times)]
                figures.hops = await trio.to_thread.run_sync(hops.hops, times)
        nursery.cancel_scope.cancel()
    figures.rate = count / elapsed
    return figures


async def plain_spawns(count: int, parallel: int, command: list[str]) -> tuple[float, float, float]:
    """Spawns of ``command`` per second, and the CPU and the page faults of
    each spawned process."""
    limiter = trio.CapacityLimiter(parallel)

    async def one() -> None:
        async with limiter:
            await trio.run_process(command)

    children = children_usage()
    begin = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    rate = count / (time.perf_counter() - begin)
    after = children_usage()
    return rate, (after[0] - children[0]) / count, (after[1] - children[1]) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs of the fan-out step (default 1000)")
    parser.add_argument("--chain", type=int, default=100, help="steps of the chain (default 100)")
    parser.add_argument("--max-jobs", type=int, default=16, help="the local executor's max_jobs (default 16)")
    parser.add_argument(
        "--state-dir-under", type=Path, metavar="DIR",
        help="put the daemon's state_dir (job directories and scratch) under DIR, for example /dev/shm, to "
             "see what the file system's file creations cost; the databases stay in the temporary directory",
    )
    parser.add_argument(
        "--bash", metavar="PATH",
        help="run the jobs under this bash (the local executor's bash key; default: the executor's default, "
             "/bin/bash-static where it is installed)",
    )
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; fan-out N={args.jobs}, "
          f"chain C={args.chain}, max_jobs={args.max_jobs}")
    plain, spawn_cpu, spawn_faults = trio.run(plain_spawns, args.jobs, args.max_jobs, ["true"])
    print(f"plain spawns of true ({args.max_jobs} at a time): {plain:8.1f} /s, {spawn_cpu * 1e3:.2f} ms CPU "
          f"and {spawn_faults:.0f} page faults each")
    plain_bash, bash_cpu, bash_faults = trio.run(plain_spawns, args.jobs, args.max_jobs, ["bash", "-c", "true"])
    print(f"plain spawns of bash -c true ({args.max_jobs} at a time): {plain_bash:8.1f} /s, "
          f"{bash_cpu * 1e3:.2f} ms CPU and {bash_faults:.0f} page faults each")
    jobs_bash = args.bash or local.default_bash()
    plain_jobs_bash = None  # when the jobs run under another bash than bash -c true's
    if jobs_bash != local.BASH:
        plain_jobs_bash, jobs_bash_cpu, jobs_bash_faults = trio.run(
            plain_spawns, args.jobs, args.max_jobs, [jobs_bash, "-c", "true"]
        )
        print(f"plain spawns of {jobs_bash} -c true, the bash the jobs run under ({args.max_jobs} at a time): "
              f"{plain_jobs_bash:8.1f} /s, {jobs_bash_cpu * 1e3:.2f} ms CPU and {jobs_bash_faults:.0f} page faults "
              "each")
    with (
        tempfile.TemporaryDirectory(prefix="muppet-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="muppet-bench-state-", dir=args.state_dir_under) as states,
        PostgresServer() as pg,
    ):
        print(f"state_dir under {states} ({file_system(Path(states))}): a file's creation costs "
              f"{creation_cpu(Path(states)) * 1e3:.2f} ms CPU")
        databases = {
            "sqlite": f"sqlite:///{tmp}/sqlite/muppet.db",
            "postgres": pg.create_database("bench"),
        }
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        for name, url in databases.items():
            server = postmaster if name == "postgres" else None
            root = Path(tmp) / name
            root.mkdir(exist_ok=True)
            config = write_config(root, url, args.max_jobs, args.jobs, args.chain, Path(states) / name, args.bash)
            fan = trio.run(functools.partial(through_daemon, config, "fan", args.jobs, server=server))
            chain = trio.run(functools.partial(through_daemon, config, "chain", args.chain, links=True, server=server))
            of_jobs_bash = "" if plain_jobs_bash is None else (
                f", {fan.rate / plain_jobs_bash:5.1%} of plain {jobs_bash} -c true"
            )
            print(
                f"{name:9s} fan-out: {fan.rate:8.1f} jobs/s ({fan.rate / plain:5.1%} of plain true, "
                f"{fan.rate / plain_bash:5.1%} of plain bash -c true{of_jobs_bash})   "
                f"chain: {statistics.fmean(chain.links) * 1e3:4.2f} ms per link (median "
                f"{statistics.median(chain.links) * 1e3:4.2f})   "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            print(f"          fan-out {fan.breakdown()}")
            print(f"          chain   {chain.breakdown()}")
            gaps = chain.gaps
            print(f"          chain   from a job's end to the next one's start: median "
                  f"{statistics.median(gaps) * 1e3:5.2f} ms, 90th percentile {gaps[len(gaps) * 9 // 10] * 1e3:5.2f} ms")
            print(f"          chain   where a link goes, median ms after a job's end record: {chain.hops}")


if __name__ == "__main__":
    main()
