"""MUPPET at scale: big runs over a database with history, through a real daemon.

For each database (SQLite, and PostgreSQL with --postgres), a database is
seeded with HISTORY finished jobs (runs of 100 succeeded jobs, written by the
daemon's own writer) and the daemon loads 200 cron pipelines (that do not
fire during the benchmark) besides the measured ones. Then, in a daemon in
this process (its tasks as `muppet daemon` has them):

- runs of N jobs for each N of --sizes: a fan-out (one step, ``jobs = N``)
  and ``each`` chains of 5 steps (N/5 jobs per step), command ``true``;
  for each it prints the wall time, jobs/s, the scheduler core's CPU per
  job event (time in ``Scheduler.handle`` and ``load``, on the Trio thread;
  a job has three events: submitted, running, ended), the daemon
  process's peak RSS, and the full passes of Python's cyclic garbage
  collector meanwhile (each holds the Trio thread: ``CollectorWatch``);
- while the largest fan-out runs, a client in a process of its own
  (``--probe-here``: in the daemon's Trio loop) asks ``daemon.status``,
  ``runs.list`` and ``jobs.list`` (100 jobs of the run) in a loop: p50 and
  p99 of each, in ms; and what the daemon's Trio thread did meanwhile
  (``LoopWatch``);
- the start-up time with the largest run's jobs all unfinished (waiting):
  from ``daemon.serve`` to the API answering ``daemon.status``, with the
  run drained first so that the load is the daemon's alone.

Each daemon, once started, freezes what it holds as `muppet daemon` does
(``daemon.freeze_what_started``), and unfreezes it when it stops, as the
end of a `muppet daemon` process would (``started_daemon``).

With several --history levels (``--history 100000,1000000``) all of this
is measured at each level in turn in the same run, the history grown
between them, and the API latencies of the levels are printed side by
side: a million jobs of history should leave them as they were
(docs/operations.md, "What is kept"). The start-up is measured once, at
the end.

Targets (docs/performance.md): core CPU per event within 2x between the
smallest and largest size; RSS under 300 MB at 50k active jobs; API p99
under 50 ms; start-up under 5 s with 50k unfinished jobs.

    .venv/bin/python bench/scale.py [--sizes 1000,10000,50000] [--history 100000[,1000000]] [--postgres]
        [--max-jobs 16] [--probe-here]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
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
from muppet.db.store import open_store  # noqa: E402
from muppet.messages import NewRun  # noqa: E402
from muppet.model import Config, Job, JobState, Run, RunCause, RunState  # noqa: E402
from muppet.scheduler.core import Scheduler  # noqa: E402

CRON_PIPELINES = 200
#: the first history run's id (the measured runs' ids stay below it)
HISTORY_RUNS = 1_000_000
HEAD = '[stakeholders.b]\nname = "bench"\n'


# --- the configuration ----------------------------------------------------------------


def write_config(root: Path, database: str, max_jobs: int, sizes: list[int]) -> Path:
    pipelines = root / "pipelines"
    pipelines.mkdir(parents=True)
    for n in range(CRON_PIPELINES):
        # loaded, never fired here: once a year, at a minute the benchmark does not meet
        (pipelines / f"cron{n:03d}.toml").write_text(
            HEAD + f'[pipeline]\nname = "cron{n:03d}"\nowner = "b"\ncron = ["{n % 60} 3 1 1 *"]\n'
            '[steps.a]\ncommand = "true"\n[steps.b]\ncommand = "true"\nparents = ["a"]\n'
        )
    for size in sizes:
        (pipelines / f"fan{size}.toml").write_text(
            HEAD + f'[pipeline]\nname = "fan{size}"\nowner = "b"\n[steps.a]\ncommand = "true"\njobs = {size}\n'
        )
        each = max(size // 5, 1)
        text = HEAD + f'[pipeline]\nname = "each{size}"\nowner = "b"\n'
        for step in range(5):
            text += f'[steps.s{step}]\ncommand = "true"\njobs = {each}\n'
            if step:
                text += f'parents = ["s{step - 1}"]\ndepends = "each"\n'
        (pipelines / f"each{size}.toml").write_text(text)
    path = root / "muppet.toml"
    path.write_text(
        f'[daemon]\ndatabase = "{database}"\nstate_dir = "{root / "state"}"\n'
        f'output_dir = "{root / "out"}"\npipelines = ["pipelines/*.toml"]\n'
        f'[api]\nlisten = "127.0.0.1:0"\n[web]\nlisten = ""\n'
        f'[executors.local]\ntype = "local"\nmax_jobs = {max_jobs}\n'
    )
    return path


def seed_history(url: str, jobs: int) -> None:
    """``jobs`` more finished jobs in runs of 100, with the daemon's own
    writer, numbered above every run and job already there (run ``r`` has
    the reference time ``r - HISTORY_RUNS`` hours after 2025-01-01)."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    store = open_store(url)
    try:
        run_id = max(store.query("SELECT MAX(id) FROM runs")[0][0] or 0, HISTORY_RUNS - 1) + 1
        job_id = (store.query("SELECT MAX(id) FROM jobs")[0][0] or 0) + 1
        batch: list[NewRun] = []
        for _ in range(max(jobs // 100, 0)):
            now = time.time() - 86400
            run = Run(id=run_id, pipeline="history", reference_time=start + timedelta(hours=run_id - HISTORY_RUNS),
                      state=RunState.SUCCEEDED, cause=RunCause.CRON, created_at=now, ended_at=now + 60)
            made = tuple(
                Job(id=job_id + i, run_id=run_id, pipeline="history", step="a", index=i, count=100,
                    executor="local", state=JobState.SUCCEEDED, exit_code=0, created_at=now,
                    submitted_at=now, started_at=now, ended_at=now + 1)
                for i in range(100)
            )
            batch.append(NewRun(run, made))
            run_id += 1
            job_id += 100
            if len(batch) == 50:
                writes.write(store, batch)
                batch = []
        if batch:
            writes.write(store, batch)
    finally:
        store.close()


# --- measuring ------------------------------------------------------------------------


class CoreClock:
    """CPU time the scheduler core spends in ``handle`` and ``load``, on the
    thread that calls them (the Trio thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def installed(self) -> Iterator[None]:
        originals = Scheduler.handle, Scheduler.load

        def timed(method: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(core: Scheduler, *args: Any, **kwargs: Any) -> Any:
                began = time.thread_time()
                try:
                    return method(core, *args, **kwargs)
                finally:
                    self.seconds += time.thread_time() - began
            return wrapper

        Scheduler.handle = timed(originals[0])  # type: ignore[method-assign]
        Scheduler.load = timed(originals[1])  # type: ignore[method-assign]
        try:
            yield
        finally:
            Scheduler.handle, Scheduler.load = originals  # type: ignore[method-assign]


class CollectorWatch:
    """The full passes (generation 2) of Python's cyclic garbage collector
    while installed, and how long each took: a pass holds the GIL, so the
    Trio thread, and a call to the API waits for it."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._began)

    @contextmanager
    def installed(self) -> Iterator[None]:
        gc.callbacks.append(self._callback)
        try:
            yield
        finally:
            gc.callbacks.remove(self._callback)

    def report(self) -> str:
        if not self.pauses:
            return "no full garbage collection"
        return (f"{len(self.pauses)} full garbage collections, longest {max(self.pauses) * 1e3:.0f} ms, "
                f"{sum(self.pauses) * 1e3:.0f} ms in all")


@asynccontextmanager
async def started_daemon(config: Config) -> AsyncIterator[tuple[trio.Nursery, int]]:
    """``daemon.serve`` in a nursery, started as `muppet daemon` starts it:
    what it holds frozen once it has started (``daemon.freeze_what_started``);
    yields the nursery and the API's port, and cancels the daemon at the
    end. Then it unfreezes, so that the next daemon of this process starts
    as a new process would, with the last one's leftovers collectable
    instead of kept in the permanent generation."""
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.serve, config)
            daemon.freeze_what_started()
            yield nursery, port
            nursery.cancel_scope.cancel()
    finally:
        gc.unfreeze()


class LoopWatch(trio.abc.Instrument):
    """The Trio thread while the API is probed: its passes over the
    runnable tasks (from one wait for I/O to the next), how much of the time
    it spent in them and how much CPU it got meanwhile, and the task steps
    longer than ``threshold`` seconds. A call answered over the API waits
    for the passes before its own: a loop busy far longer than its CPU says
    the thread was waiting for a core or for the GIL, not working."""

    def __init__(self, threshold: float = 0.010) -> None:
        self.threshold = threshold
        self.steps: list[tuple[float, str]] = []
        self._began: float | None = None
        #: the loop's time between two waits for I/O: its passes over the
        #: runnable tasks, and the thread CPU they took
        self.passes: list[float] = []
        self._woke: float | None = None
        self._woke_cpu = 0.0
        self.busy_cpu = 0.0
        self.installed = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        self._woke = time.perf_counter()
        self._woke_cpu = time.thread_time()

    def before_io_wait(self, timeout: float) -> None:
        if self._woke is not None:
            self.passes.append(time.perf_counter() - self._woke)
            self.busy_cpu += time.thread_time() - self._woke_cpu

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._began is None:  # the step that installed this instrument
            return
        took = time.perf_counter() - self._began
        if took > self.threshold:
            self.steps.append((took, task.name))

    def report(self) -> str:
        wall = time.perf_counter() - self.installed
        passes = (f"{len(self.passes)} passes of the run loop, p50 {statistics.median(self.passes) * 1000:.2f} ms, "
                  f"p99 {percentile(self.passes, 0.99) * 1000:.1f} ms, busy {sum(self.passes) / wall:.0%} of the "
                  f"time, its CPU {self.busy_cpu / wall:.0%}; ") if self.passes else ""
        if not self.steps:
            return passes + f"no task step over {self.threshold * 1000:.0f} ms"
        by_task: dict[str, list[float]] = {}
        for took, name in self.steps:
            by_task.setdefault(name.removeprefix("muppet."), []).append(took)
        worst = sorted(by_task.items(), key=lambda item: -sum(item[1]))[:5]
        return passes + (f"{len(self.steps)} task steps over {self.threshold * 1000:.0f} ms, longest "
                f"{max(self.steps)[0] * 1000:.0f} ms; by task: " + ", ".join(
                    f"{name} {len(times)} (max {max(times) * 1000:.0f} ms)" for name, times in worst))


def rss_mb() -> float:
    """The process's peak resident set so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def wait_ended(client: Any, run_id: int) -> dict[str, Any]:
    while True:
        run: dict[str, Any] = (await client.call("runs.list", {"limit": 1}))[0]
        if run["id"] == run_id and run["state"] not in ("running", "queued"):
            return run
        await trio.sleep(0.2)


async def one_run(config_path: Path, pipeline: str, jobs: int, clock: CoreClock,
                  probe: bool, probe_here: bool = False) -> dict[str, Any]:
    """Trigger ``pipeline`` and wait for its end; the figures. With
    ``probe``, the API is probed meanwhile from a process of its own, as an
    operator's client is (``probe_here``: from this one, in the daemon's
    own Trio loop)."""
    config = load_config(config_path)
    latencies: dict[str, list[float]] = {}
    collector = CollectorWatch()
    async with started_daemon(config) as (nursery, port):
        url = f"ws://127.0.0.1:{port}"
        async with connect(url) as client:
            with collector.installed():
                core_before = clock.seconds
                began = time.perf_counter()
                run_id = (await client.call("runs.trigger", {"pipeline": pipeline}))["run_id"]
                loop_watch, prober = None, None
                if probe:
                    if probe_here:
                        nursery.start_soon(_probe, url, run_id, latencies)
                    else:
                        prober = await trio.lowlevel.open_process(
                            [sys.executable, __file__, "--probe", url, str(run_id)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                    loop_watch = LoopWatch()
                    trio.lowlevel.add_instrument(loop_watch)
                run = await wait_ended(client, run_id)
                if loop_watch is not None:
                    trio.lowlevel.remove_instrument(loop_watch)
                if prober is not None:
                    latencies.update(await _probe_results(prober))
                elapsed = time.perf_counter() - began
                core = clock.seconds - core_before
    assert run["state"] == "succeeded", run
    return {"elapsed": elapsed, "rate": jobs / elapsed, "core_per_event": core / (3 * jobs),
            "rss": rss_mb(), "latencies": latencies, "loop": loop_watch.report() if loop_watch else "",
            "collector": collector.report()}


async def _probe(url: str, run_id: int, latencies: dict[str, list[float]]) -> None:
    calls = {
        "daemon.status": {},
        "runs.list": {"limit": 100},
        "jobs.list": {"run_id": run_id, "limit": 100},
    }
    async with connect(url) as client:
        while True:
            for method, params in calls.items():
                began = time.perf_counter()
                await client.call(method, params)
                latencies.setdefault(method, []).append((time.perf_counter() - began) * 1000)
            await trio.sleep(0.05)


async def _probe_results(prober: trio.Process) -> dict[str, list[float]]:
    """Tell the probe process to stop (its stdin closes); its latencies."""
    assert prober.stdin is not None and prober.stdout is not None
    await prober.stdin.aclose()
    said = b""
    async for chunk in prober.stdout:
        said += chunk
    if await prober.wait() != 0:
        raise RuntimeError(f"the probe process exited with {prober.returncode}")
    results: dict[str, list[float]] = json.loads(said)
    return results


async def probe_until_stdin_closes(url: str, run_id: int) -> None:
    """The probe process (``--probe URL RUN_ID``): ``_probe`` until its
    stdin closes, then the latencies as JSON on stdout."""
    latencies: dict[str, list[float]] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_probe, url, run_id, latencies)
        async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
            while await stdin.receive_some():
                pass
        nursery.cancel_scope.cancel()
    print(json.dumps(latencies))


async def start_up(config_path: Path, url: str, pipeline: str, jobs: int) -> float:
    """Seconds from ``daemon.serve`` to an answered ``daemon.status``, with a
    run of ``jobs`` waiting jobs in the database, the daemon draining (so
    that it starts nothing and the figure is the load alone)."""
    now = time.time()
    store = open_store(url)
    try:
        run_id = store.query("SELECT MAX(id) FROM runs")[0][0] + 1
        first_job = store.query("SELECT MAX(id) FROM jobs")[0][0] + 1
        run = Run(id=run_id, pipeline=pipeline, reference_time=datetime(2026, 6, 1, tzinfo=UTC),
                  state=RunState.RUNNING, cause=RunCause.MANUAL, created_at=now)
        waiting = tuple(
            Job(id=first_job + i, run_id=run.id, pipeline=pipeline, step="a", index=i, count=jobs,
                executor="local", created_at=now)
            for i in range(jobs)
        )
        writes.write(store, [NewRun(run, waiting)])
        store.transaction(lambda cursor: cursor.execute(store.sql(
            "INSERT INTO controls (key, value) VALUES ('draining', ?)"),
            ('{"by": "bench", "reason": "start-up figure", "since": "", "at": 0}',)), write=True)
    finally:
        store.close()
    config = load_config(config_path)
    began = time.perf_counter()
    async with started_daemon(config) as (_, port):
        async with connect(f"ws://127.0.0.1:{port}") as client:
            await client.call("daemon.status")
        elapsed = time.perf_counter() - began
    return elapsed


# --- the report -------------------------------------------------------------------------


def bench_database(name: str, url: str, root: Path, args: argparse.Namespace, sizes: list[int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root, url, args.max_jobs, sizes)
    clock = CoreClock()
    seeded = 0
    # (history, method) -> (p50, p99, calls): the levels side by side at the end
    probed: dict[tuple[int, str], tuple[float, float, int]] = {}
    for history in args.history:
        began = time.perf_counter()
        seed_history(url, history - seeded)
        seeded = history
        print(f"{name}: {history:,} finished jobs of history (seeded in {time.perf_counter() - began:.1f} s); "
              f"{CRON_PIPELINES} cron pipelines loaded; load average {os.getloadavg()[0]:.1f}", flush=True)
        per_event = {}
        with clock.installed():
            for size in sizes:
                for shape in ("fan", "each"):
                    probe = shape == "fan" and size == max(sizes)
                    figures = trio.run(one_run, config, f"{shape}{size}", size, clock, probe, args.probe_here)
                    per_event[(shape, size)] = figures["core_per_event"]
                    print(f"  {shape:4s} {size:>6,} jobs: {figures['elapsed']:7.1f} s  {figures['rate']:6.1f} jobs/s  "
                          f"core {figures['core_per_event'] * 1e6:6.1f} us/event  peak RSS {figures['rss']:6.1f} MB  "
                          f"{figures['collector']}", flush=True)
                    if probe:
                        for method, values in figures["latencies"].items():
                            if values:
                                p50, p99 = statistics.median(values), percentile(values, 0.99)
                                probed[(history, method)] = (p50, p99, len(values))
                                print(f"    {method:14s} while it ran: p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
                                      f"({len(values)} calls)", flush=True)
                        print(f"    on the Trio thread meanwhile: {figures['loop']}", flush=True)
            for shape in ("fan", "each"):
                low, high = per_event[(shape, min(sizes))], per_event[(shape, max(sizes))]
                print(f"  {shape}: core CPU per event at {max(sizes):,} jobs is {high / low:.2f}x that at "
                      f"{min(sizes):,} (target: within 2x)")
    if len(args.history) > 1:
        # the same run, the history growing between the levels: does it
        # move the API's latencies? (docs/performance.md)
        first = args.history[0]
        print(f"  API latency while the {max(sizes):,}-job fan-out ran, by jobs of history "
              f"(p50 / p99 ms; ratio to {first:,}):")
        for method in ("daemon.status", "runs.list", "jobs.list"):
            cells = []
            for history in args.history:
                if (history, method) in probed and (first, method) in probed:
                    p50, p99, _ = probed[(history, method)]
                    base50, base99, _ = probed[(first, method)]
                    cells.append(f"{history:,}: {p50:.1f} / {p99:.1f} ({p50 / base50:.2f}x / {p99 / base99:.2f}x)")
            print(f"    {method:14s} " + "   ".join(cells))
    seconds = trio.run(start_up, config, url, f"fan{max(sizes)}", max(sizes))
    print(f"  start-up with {max(sizes):,} unfinished jobs and {seeded:,} of history: {seconds:.2f} s "
          f"(target: under 5 s); peak RSS {rss_mb():.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000", help="jobs per run, comma-separated")
    parser.add_argument("--history", default="100000",
                        help="finished jobs in the database first; several, comma-separated (100000,1000000),"
                             " are measured in turn in the same run, the history grown between them")
    parser.add_argument("--max-jobs", type=int, default=16, help="the local executor's max_jobs")
    parser.add_argument("--postgres", action="store_true", help="also on a PostgreSQL 15 started here")
    parser.add_argument("--probe-here", action="store_true",
                        help="probe the API from the daemon's own process and Trio loop, not from a process of its own")
    parser.add_argument("--probe", nargs=2, metavar=("URL", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        trio.run(probe_until_stdin_closes, args.probe[0], int(args.probe[1]))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.history = sorted(int(h) for h in args.history.split(","))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; sizes {sizes}, "
          f"history {', '.join(f'{h:,}' for h in args.history)} jobs, max_jobs {args.max_jobs}")
    with tempfile.TemporaryDirectory(prefix="muppet-scale-") as tmp:
        bench_database("sqlite", f"sqlite:///{tmp}/sqlite/muppet.db", Path(tmp) / "sqlite", args, sizes)
        if args.postgres:
            with PostgresServer() as pg:
                bench_database("postgres", pg.create_database("scale"), Path(tmp) / "postgres", args, sizes)


if __name__ == "__main__":
    main()
