"""Faults during a run: does the daemon lose or repeat a job?

The MUPPET design promises that "a crash or `kill -9` of the daemon loses
nothing" and that "a failure of MUPPET's own machinery (disk full, database
away, ...) is never a job's failure" (docs/operations.md, "Restart, and what
happens on a crash" and "When the database is away"). This benchmark runs one
pipeline of about 500 jobs through `muppet daemon` as its own process and
does harm meanwhile:

- ``kill``: the daemon killed with SIGKILL at random moments of the run and
  started again each time (on the same configuration), on SQLite and
  PostgreSQL;
- ``pg-outage``: PostgreSQL stopped (``immediate``, as if it crashed) for a
  while mid-run, then started again;
- ``disk-full``: ``state_dir`` (a tmpfs of its own, mounted here: root only)
  filled to the last byte for a while mid-run, then emptied.

The pipeline (docs/configuration.md, "Pipeline files"): a fan-out ``split``
(``jobs = N``), ``each`` (``depends = "each"`` on it), a fan-in ``join``,
``flaky`` (``retry = { tries = 2 }``: each of its jobs fails its first try,
by a marker file its command checks and creates) and a chain ``c0``..``c3``.
Every command appends ``RUN STEP INDEX JOB start`` and, when it succeeds,
``RUN STEP INDEX JOB end`` to a ledger outside ``state_dir``: the ledger, not
the database, says what ran. Each scenario starts on a fresh database.

It prints, per scenario: the faults done (and how often the daemon's log
says they hit it: stretches of failed starts, the outage seen), lost slots (a slot with no ``end``
line from the job the database says succeeded in it, or a slot of a run that
did not succeed), duplicated starts (a job id with two ``start`` lines, or a
slot that started its command more often than its failed jobs explain), the
run's final state and the wall time; it exits 1 on any loss or duplicate.

    .venv/bin/python bench/faults.py [--jobs 500] [--kills 10] [--outage 5]
        [--scenarios kill-sqlite,kill-postgres,pg-outage,disk-full] [--quick]

tests/test_faults.py runs a short form of each scenario through
:func:`run_scenario`.
"""

from __future__ import annotations

import argparse
import collections
import errno
import functools
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pgserver import PostgresServer  # noqa: E402
from waiting import wait_until_async  # noqa: E402

from muppet.api.client import ConnectionLost, DaemonUnreachable, connect  # noqa: E402
from muppet.api.protocol import DATABASE_UNAVAILABLE, RpcError  # noqa: E402

SCENARIOS = ("kill-sqlite", "kill-postgres", "pg-outage", "disk-full")
MUPPET = [sys.executable, "-m", "muppet.cli"]
PIPELINE = "faults"
CHAIN = 4
#: the daemon's executor slots: enough that a kill finds many jobs running
MAX_JOBS = 8
#: size of the disk-full scenario's tmpfs: room for every job directory of a
#: 500-job run (script, stdout, stderr, status file: a 4 KiB page each)
TMPFS_SIZE = "64m"
#: the longest a scenario may take before it is reported as timed out
DEADLINE = 900.0


class CannotMount(RuntimeError):
    """The disk-full scenario could not mount its tmpfs (not root?)."""


@dataclass(frozen=True)
class Shape:
    """How many jobs each step of the pipeline makes."""

    fan: int
    flaky: int
    chain: int = CHAIN

    @classmethod
    def for_jobs(cls, jobs: int) -> Shape:
        flaky = max(2, jobs // 20)
        fan = max(1, (jobs - 1 - flaky - CHAIN) // 2)
        return cls(fan=fan, flaky=flaky)

    @property
    def jobs(self) -> int:
        return 2 * self.fan + 1 + self.flaky + self.chain

    def slots(self) -> list[tuple[str, int]]:
        steps = [("split", self.fan), ("each", self.fan), ("join", 1), ("flaky", self.flaky)]
        steps += [(f"c{n}", 1) for n in range(self.chain)]
        return [(step, index) for step, count in steps for index in range(count)]

    @property
    def ledger_lines(self) -> int:
        """Lines a run without faults writes: a start and an end per slot, and
        the start of each flaky job's failed first try."""
        return 2 * self.jobs + self.flaky


def pipeline_toml(shape: Shape, ledger: Path, markers: Path) -> str:
    record = f'echo "$MUPPET_RUN_ID $MUPPET_STEP $MUPPET_JOB_INDEX $MUPPET_JOB_ID {{}}" >> {ledger}'
    work = f"{record.format('start')}; sleep 0.05; {record.format('end')}"
    # the first try of each flaky slot finds no marker, makes it and fails
    marker = f"{markers}/$MUPPET_RUN_ID.$MUPPET_STEP.$MUPPET_JOB_INDEX"
    flaky = (f"{record.format('start')}; if [ ! -e {marker} ]; then : > {marker}; exit 1; fi; "
             f"sleep 0.05; {record.format('end')}")
    text = f"""
        [stakeholders.ops]
        name = "Operations"
        [pipeline]
        name = "{PIPELINE}"
        owner = "ops"
        [steps.split]
        jobs = {shape.fan}
        command = '{work}'
        [steps.each]
        parents = ["split"]
        jobs = {shape.fan}
        depends = "each"
        command = '{work}'
        [steps.join]
        parents = ["each"]
        command = '{work}'
        [steps.flaky]
        parents = ["join"]
        jobs = {shape.flaky}
        retry = {{ tries = 2 }}
        command = '{flaky}'
        """
    parent = "flaky"
    for n in range(shape.chain):
        text += f"""
        [steps.c{n}]
        parents = ["{parent}"]
        command = '{work}'
        """
        parent = f"c{n}"
    return textwrap.dedent(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Result:
    """What one scenario did and what came of it."""

    scenario: str
    database: str
    #: the faults done, in words ("10 kills", "outage 5.0 s")
    faults: str = ""
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    state: str = "unknown"
    wall: float = 0.0
    jobs: int = 0
    failed_jobs: int = 0
    #: the daemon's exits that the benchmark did not cause
    daemon_deaths: list[str] = field(default_factory=list)
    #: how often the daemon's log says the fault hit it (disk-full, pg-outage)
    fault_hits: int | None = None
    log_tracebacks: int = 0
    log_refusals: int = 0
    workdir: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicates and self.state == "succeeded" and not self.daemon_deaths

    def line(self) -> str:
        return (f"{self.scenario:<14} {self.database:<9} {self.faults:<36} {len(self.lost):>5} "
                f"{len(self.duplicates):>5}  {self.state:<10} {self.wall:7.1f} s  {self.jobs:>4} jobs, "
                f"{self.failed_jobs} failed tries, {len(self.daemon_deaths)} daemon deaths, "
                f"{self.log_tracebacks} tracebacks in its log")

    def details(self) -> str:
        parts = []
        if self.lost:
            tally = collections.Counter(item.rpartition("ledger: ")[2] for item in self.lost if "ledger: " in item)
            parts.append("  the lost slots' newest jobs, by the ledger: "
                         + ", ".join(f"{count} {what}" for what, count in tally.most_common()))
        for title, items in (("lost", self.lost), ("duplicated", self.duplicates),
                             ("daemon exited by itself", self.daemon_deaths)):
            if items:
                shown = "; ".join(items[:10]) + (f" (and {len(items) - 10} more)" if len(items) > 10 else "")
                parts.append(f"  {title}: {shown}")
        if self.workdir is not None:
            parts.append(f"  kept for inspection: {self.workdir} (ledger, daemon.log, state/ or state.kept/)")
        return "\n".join(parts)


HEADER = f"{'scenario':<14} {'database':<9} {'faults':<36} {'lost':>5} {'dup':>5}  {'run':<10} {'wall':>9}"


class Daemon:
    """``muppet daemon --config X`` as a child process, restarted on demand."""

    def __init__(self, config: Path, log: Path, lease_free: Callable[[], bool]) -> None:
        self.config = config
        self.log = log
        self.lease_free = lease_free
        self.process: trio.Process | None = None
        #: exits the benchmark did not cause
        self.deaths: list[str] = []
        #: the processes the benchmark killed or stopped
        self._ended_by_us: list[trio.Process] = []
        #: set (and replaced) when a new process starts
        self._started = trio.Event()

    async def start(self) -> None:
        # A SIGKILLed daemon's lease goes with its process (SQLite) or with
        # its PostgreSQL session, which the server ends once it sees the
        # socket closed; a daemon started on a held lease exits 2
        # (docs/operations.md, "Start"): wait until it is free.
        await wait_until_async(lambda: trio.to_thread.run_sync(self.lease_free), 60,
                               "the killed daemon's lease to be free", interval=0.05)
        log = await trio.to_thread.run_sync(self.log.open, "ab")
        try:
            self.process = await trio.lowlevel.open_process(
                [*MUPPET, "daemon", "--config", str(self.config)], stdout=log, stderr=log
            )
        finally:
            await trio.to_thread.run_sync(log.close)
        started, self._started = self._started, trio.Event()
        started.set()

    async def kill(self) -> None:
        """SIGKILL, and wait until the process is gone."""
        assert self.process is not None
        self._ended_by_us.append(self.process)
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def watch(self) -> None:
        """Restart the daemon whenever it exits by itself, noting each exit:
        the run can still be finished and its ledger judged."""
        while True:
            assert self.process is not None
            process, started = self.process, self._started
            code = await process.wait()
            if process in self._ended_by_us:
                await started.wait()  # until the killer has started the next one
                continue
            self.deaths.append(f"exit status {code}")
            if len(self.deaths) > 5:
                return
            await self.start()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self._ended_by_us.append(self.process)
        self.process.terminate()
        with trio.move_on_after(30):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _ledger_lines(ledger: Path) -> int:
    try:
        text = await trio.Path(ledger).read_text()
    except FileNotFoundError:
        return 0
    return text.count("\n")


async def _run_once(url: str, run_id: int) -> dict[str, Any] | None:
    """The run as the daemon has it, or None when the daemon does not answer
    now (killed, starting, its database away)."""
    try:
        async with connect(url) as client:
            run: dict[str, Any] = await client.call("runs.get", {"run_id": run_id})
            return run
    except (DaemonUnreachable, ConnectionLost, OSError):
        return None
    except RpcError as exc:
        if exc.code == DATABASE_UNAVAILABLE:
            return None
        raise


async def _trigger(url: str) -> int:
    with trio.fail_after(120):
        while True:
            try:
                async with connect(url) as client:
                    answer = await client.call("runs.trigger", {"pipeline": PIPELINE})
                    run_id: int = answer["run_id"]
                    return run_id
            except (DaemonUnreachable, ConnectionLost, OSError):
                await trio.sleep(0.1)


async def _wait_end(url: str, run_id: int) -> dict[str, Any]:
    while True:
        run = await _run_once(url, run_id)
        if run is not None and run["state"] != "running":
            return run
        await trio.sleep(0.2)


async def _at_progress(ledger: Path, lines: int) -> None:
    async def reached() -> bool:
        return await _ledger_lines(ledger) >= lines

    await wait_until_async(reached, DEADLINE, f"{lines} ledger lines", interval=0.02)


def judge(shape: Shape, ledger_text: str, run: dict[str, Any] | None, result: Result) -> None:
    """Fill in ``result``'s lost slots and duplicated starts from the ledger
    and the run's jobs (runs.get)."""
    starts: collections.Counter[int] = collections.Counter()
    slot_starts: collections.Counter[tuple[str, int]] = collections.Counter()
    ended: set[int] = set()
    for line in ledger_text.splitlines():
        _run, step, index, job, what = line.split()
        if what == "start":
            starts[int(job)] += 1
            slot_starts[step, int(index)] += 1
        else:
            ended.add(int(job))
    for job, count in sorted(starts.items()):
        if count > 1:
            result.duplicates.append(f"job {job} started {count} times")
    jobs = run["jobs"] if run is not None else []
    by_slot: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for job in jobs:
        by_slot[job["step"], job["index"]].append(job)
    result.jobs = len(jobs)
    result.failed_jobs = sum(1 for job in jobs if job["state"] == "failed")
    for slot in shape.slots():
        name = f"{slot[0]}[{slot[1]}]"
        mine = sorted(by_slot.get(slot, []), key=lambda job: job["id"])
        newest = mine[-1] if mine else None
        failures = sum(1 for job in mine if job["state"] == "failed")
        if slot_starts[slot] > 1 + failures:
            result.duplicates.append(f"{name} started {slot_starts[slot]} times, {failures} failed tries")
        # what the ledger says of the slot's newest job: the evidence
        ran = ("ran to its end" if newest is not None and newest["id"] in ended
               else "started, no end" if newest is not None and starts[newest["id"]]
               else "never started")
        if newest is None:
            result.lost.append(f"{name}: no job in the database")
        elif newest["state"] != "succeeded":
            result.lost.append(f"{name}: job {newest['id']} {newest['state']} ({newest.get('reason')}); "
                               f"ledger: {ran}")
        elif newest["id"] not in ended:
            result.lost.append(f"{name}: job {newest['id']} succeeded in the database; ledger: {ran}")


async def run_scenario(
    scenario: str,
    *,
    jobs: int,
    kills: int = 10,
    outage: float = 5.0,
    postgres: PostgresServer | None = None,
    seed: int | None = None,
    keep: str = "failed",
    say: Callable[[str], None] = lambda text: None,
) -> Result:
    """Run one scenario on a fresh database in a new temporary directory and
    judge it. ``postgres`` is a started server (needed by kill-postgres and
    pg-outage); ``keep`` is "failed" (keep the directory when the scenario
    fails), "always" or "never"."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    on_postgres = scenario in ("kill-postgres", "pg-outage")
    if on_postgres and postgres is None:
        raise ValueError(f"{scenario} needs a PostgreSQL server")
    shape = Shape.for_jobs(jobs)
    rng = random.Random(seed)
    work = Path(await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix=f"muppet-faults-{scenario}-")))
    result = Result(scenario, "postgres" if on_postgres else "sqlite")
    mounted = False
    try:
        state_dir = work / "state"
        await trio.Path(state_dir).mkdir()
        if scenario == "disk-full":
            done = await trio.run_process(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                                           str(state_dir)], capture_stderr=True, check=False)
            if done.returncode != 0:
                raise CannotMount(f"cannot mount a tmpfs on {state_dir}: {done.stderr.decode().strip()}")
            mounted = True
        ledger, markers = work / "ledger", work / "markers"
        await trio.Path(markers).mkdir()
        await trio.Path(work / "pipelines").mkdir()
        await trio.Path(work / "pipelines" / f"{PIPELINE}.toml").write_text(pipeline_toml(shape, ledger, markers))
        if on_postgres:
            assert postgres is not None
            name = f"faults_{os.getpid()}_{time.monotonic_ns()}"
            database = await trio.to_thread.run_sync(postgres.create_database, name)
        else:
            # outside state_dir: the disk-full scenario fills state_dir, not the database
            database = f"sqlite:///{work / 'muppet.db'}"
        port = free_port()
        config = work / "muppet.toml"
        await trio.Path(config).write_text(textwrap.dedent(f"""
            [daemon]
            database = "{database}"
            state_dir = "{state_dir}"
            output_dir = "{work / 'output'}"
            pipelines = ["pipelines/*.toml"]
            [api]
            listen = "127.0.0.1:{port}"
            [executors.local]
            type = "local"
            max_jobs = {MAX_JOBS}
            """))
        url = f"ws://127.0.0.1:{port}"
        daemon = Daemon(config, work / "daemon.log", _lease_free(database))
        started = time.monotonic()
        run: dict[str, Any] | None = None
        await daemon.start()
        try:
            with trio.move_on_after(DEADLINE) as deadline:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(daemon.watch)
                    run_id = await _trigger(url)
                    say(f"{scenario}: run {run_id}, {shape.jobs} jobs, in {work}")
                    if scenario.startswith("kill"):
                        result.faults = await _kills(daemon, ledger, shape, kills, rng, say)
                    elif scenario == "pg-outage":
                        assert postgres is not None
                        result.faults = await _pg_outage(postgres, ledger, shape, outage, say)
                    else:
                        result.faults = await _disk_full(state_dir, ledger, shape, outage, say)
                    run = await _wait_end(url, run_id)
                    nursery.cancel_scope.cancel()
            if deadline.cancelled_caught:
                result.state = f"timeout ({DEADLINE:g} s)"
                run = await _run_once(url, run_id) if daemon.process is not None else None
        finally:
            result.wall = time.monotonic() - started
            await daemon.stop()
        if run is not None and not deadline.cancelled_caught:
            result.state = run["state"]
        result.daemon_deaths = daemon.deaths
        text = await trio.Path(ledger).read_text() if await trio.Path(ledger).exists() else ""
        judge(shape, text, run, result)
        log = await trio.Path(work / "daemon.log").read_text(errors="replace")
        result.log_tracebacks = log.count("Traceback")
        result.log_refusals = log.count("refused: job")
        # how often the fault bit, as the daemon saw it
        if scenario == "disk-full":
            # the executor's warning, once per stretch of failed starts (it
            # stops starting jobs until its state directory takes them again)
            result.fault_hits = log.count("cannot start jobs:")
            result.faults += f", starts paused {result.fault_hits}x"
        elif scenario == "pg-outage":
            result.fault_hits = log.count("database unavailable:")
            result.faults += f", {result.fault_hits} outage seen"
        if keep == "always" or (keep == "failed" and not result.ok):
            result.workdir = work
        return result
    finally:
        if mounted:
            if result.workdir is not None:  # the job directories, for inspection, before they go
                await trio.to_thread.run_sync(functools.partial(
                    shutil.copytree, state_dir, work / "state.kept", ignore=shutil.ignore_patterns("filler"),
                    symlinks=True, dirs_exist_ok=True))
            await trio.run_process(["umount", "--lazy", str(work / "state")], check=False)
        if result.workdir is None:
            await trio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))


def _lease_free(database: str) -> Callable[[], bool]:
    """Whether no daemon holds the database's lease (blocking)."""
    if database.startswith("sqlite"):
        # the flock goes with the process, which the caller has waited for
        return lambda: True

    def free() -> bool:
        import psycopg

        from muppet.db.lease import LEASE_KEY

        try:
            with psycopg.connect(database, autocommit=True, connect_timeout=5) as conn:
                # a bigint advisory key is held as (classid, objid): high and low 32 bits
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    (LEASE_KEY >> 32, LEASE_KEY & 0xFFFFFFFF),
                ).fetchone()
                return row is not None and row[0] == 0
        except psycopg.OperationalError:
            return False

    return free


async def _kills(daemon: Daemon, ledger: Path, shape: Shape, kills: int, rng: random.Random,
                 say: Callable[[str], None]) -> str:
    """SIGKILL the daemon at ``kills`` random moments, restarting it each
    time. A moment is a random point of the run's progress (a number of
    ledger lines, between 3% and 80% of a whole run's) reached at least a
    random 0-1 s after the last start, so that some kills land while the
    daemon starts and re-attaches and most while it runs."""
    total = shape.ledger_lines
    points = sorted(rng.randint(max(1, total * 3 // 100), max(2, total * 80 // 100)) for _ in range(kills))
    done = 0
    last_start = time.monotonic()
    for point in points:
        await _at_progress(ledger, point)
        await trio.sleep(max(0.0, last_start + rng.uniform(0.0, 1.0) - time.monotonic()))
        assert daemon.process is not None
        if daemon.process.returncode is not None:
            continue  # it died by itself: the watcher restarts it and counts it
        await daemon.kill()
        done += 1
        lines = await _ledger_lines(ledger)
        say(f"  kill {done} at {lines} of ~{total} ledger lines")
        await daemon.start()
        last_start = time.monotonic()
    return f"{done} kills"


async def _pg_outage(postgres: PostgresServer, ledger: Path, shape: Shape, outage: float,
                     say: Callable[[str], None]) -> str:
    await _at_progress(ledger, shape.ledger_lines // 3)
    await trio.to_thread.run_sync(postgres.ctl, "stop", "immediate")
    stopped = time.monotonic()
    say(f"  PostgreSQL stopped at {await _ledger_lines(ledger)} ledger lines")
    await trio.sleep(outage)  # the outage itself: its length is the scenario
    await trio.to_thread.run_sync(postgres.ctl, "start")
    length = time.monotonic() - stopped
    # pg_ctl start returns once the server has recovered and takes connections
    say(f"  PostgreSQL taking connections again {length:.1f} s after the stop")
    return f"down {length:.1f} s"


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until its file system is full; the bytes written."""
    chunk = b"\0" * (1 << 20)
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # the last pages: smaller writes until not even one byte fits
        for size in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    written += f.write(chunk[:size]) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


async def _disk_full(state_dir: Path, ledger: Path, shape: Shape, outage: float,
                     say: Callable[[str], None]) -> str:
    await _at_progress(ledger, shape.ledger_lines // 3)
    filler = state_dir / "filler"
    written = await trio.to_thread.run_sync(_fill, filler)
    full = time.monotonic()
    say(f"  state_dir full ({written >> 20} MiB written) at {await _ledger_lines(ledger)} ledger lines")
    await trio.sleep(outage)  # how long the disk stays full: its length is the scenario
    await trio.Path(filler).unlink()
    length = time.monotonic() - full
    say(f"  state_dir emptied after {length:.1f} s")
    return f"full {length:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs in the run (default 500; --quick: 60)")
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs of the daemon (default 10; --quick: 3)")
    parser.add_argument("--outage", type=float, default=None,
                        help="seconds PostgreSQL is down and state_dir full (default 5; --quick: 1)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="60 jobs, 3 kills, a 1 s outage")
    parser.add_argument("--seed", type=int, default=None, help="of the kills' random moments (default: random)")
    args = parser.parse_args()
    jobs = args.jobs if args.jobs is not None else (60 if args.quick else 500)
    kills = args.kills if args.kills is not None else (3 if args.quick else 10)
    outage = args.outage if args.outage is not None else (1.0 if args.quick else 5.0)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for scenario in scenarios:
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    print(f"faults benchmark: {Shape.for_jobs(jobs).jobs} jobs per run, seed {seed}, {os.cpu_count()} CPUs")
    server: PostgresServer | None = None
    if any(s in ("kill-postgres", "pg-outage") for s in scenarios):
        server = PostgresServer()
        server.start()
    results = []
    try:
        for n, scenario in enumerate(scenarios):
            try:
                result = trio.run(functools.partial(
                    run_scenario, scenario, jobs=jobs, kills=kills, outage=outage, postgres=server,
                    seed=seed + n, say=lambda text: print(text, flush=True)))
            except CannotMount as exc:
                print(f"{scenario}: not run: {exc}")
                continue
            results.append(result)
    finally:
        if server is not None:
            server.stop()
    print()
    print(HEADER)
    for result in results:
        print(result.line())
        if not result.ok:
            print(result.details())
    if not all(result.ok for result in results) or not results:
        sys.exit(1)


if __name__ == "__main__":
    main()
