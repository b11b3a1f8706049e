"""Takeovers: how fast does a standby take over from an active daemon killed with -9?

Two `muppet daemon --standby` processes on one PostgreSQL database (the same
configuration, ``state_dir`` and ``output_dir``, each its own API port) run a
pipeline of short local jobs (docs/operations.md, "Running a standby"). At
random moments of the run the active daemon is killed with SIGKILL, the
standby takes over, and the killed one is started again as the new standby;
``--takeovers`` times. For each takeover it measures, from the kill:

- the first job start by the new active daemon: the first ``start`` line its
  jobs write to a ledger outside ``state_dir`` (each line names the daemon
  whose job it is, by an environment variable the jobs inherit);
- the first answered write: ``pipelines.pause`` of an idle pipeline, sent
  every 20 ms to the standby's API until it is answered by its scheduler
  (not refused as a standby's, -32007).

It prints each takeover and the median and worst of both, and checks the
ledger: no job started twice, every slot of every run ended with a success
(exit 1 otherwise).

    .venv/bin/python bench/failover.py [--takeovers 10] [--jobs 400] [--seed N] [--stop]

``--stop`` stops the active daemon (SIGSTOP) instead: a host that is lost
or frozen, which the standby takes over from once the lease has run out
(5 s after the last renewal), then kills it.

tests/test_standby.py uses its pieces (``Pair``, ``ledger_pipeline``,
``judge_ledger``) with real daemons on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pgserver import PostgresServer  # noqa: E402
from waiting import wait_until_async  # noqa: E402

from muppet.api.client import ConnectionLost, DaemonUnreachable, connect  # noqa: E402
from muppet.api.protocol import STANDBY, RpcError  # noqa: E402

MUPPET = [sys.executable, "-m", "muppet.cli"]
#: the environment variable that names, in each job, the daemon whose job it is
DAEMON_VARIABLE = "FAILOVER_DAEMON"
PROBE = "probe"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ledger_pipeline(name: str, ledger: Path, *, fan: int, slurm_fan: int = 0, sleep: float = 0.05,
                    chain: int = 2) -> str:
    """A pipeline whose every command appends ``RUN STEP INDEX JOB start
    DAEMON TIME`` and, at its end, ``... end DAEMON TIME`` to ``ledger``:
    a fan-out ``split`` of ``fan`` local jobs, ``each`` of ``slurm_fan``
    Slurm jobs (none: skipped), a fan-in ``join`` and a chain ``c0``...
    The ledger, not the database, says what ran and who started it."""
    def record(what: str) -> str:
        return (f'echo "$MUPPET_RUN_ID $MUPPET_STEP $MUPPET_JOB_INDEX $MUPPET_JOB_ID {what} '
                f'${{{DAEMON_VARIABLE}:-?}} $EPOCHREALTIME" >> {ledger}')

    work = f"{record('start')}; sleep {sleep}; {record('end')}"
    text = f"""
        [stakeholders.ops]
        name = "Operations"
        [pipeline]
        name = "{name}"
        owner = "ops"
        [steps.split]
        jobs = {fan}
        command = '{work}'
        """
    parent = "split"
    if slurm_fan:
        text += f"""
        [steps.each]
        parents = ["split"]
        jobs = {slurm_fan}
        executor = "slurm"
        command = '{work}'
        """
        parent = "each"
    text += f"""
        [steps.join]
        parents = ["{parent}"]
        command = '{work}'
        """
    parent = "join"
    for n in range(chain):
        text += f"""
        [steps.c{n}]
        parents = ["{parent}"]
        command = '{work}'
        """
        parent = f"c{n}"
    return textwrap.dedent(text)


PROBE_PIPELINE = textwrap.dedent(f"""
    [pipeline]
    name = "{PROBE}"
    owner = "ops"
    [steps.idle]
    command = "true"
    """)


@dataclass(frozen=True)
class Line:
    run: int
    step: str
    index: int
    job: int
    what: str
    daemon: str
    at: float


def read_ledger(text: str) -> list[Line]:
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) != 7:
            continue  # a line cut by a kill of the job itself: none here
        run, step, index, job, what, daemon, at = parts
        lines.append(Line(int(run), step, int(index), int(job), what, daemon, float(at)))
    return lines


def judge_ledger(lines: list[Line], runs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(lost, duplicated): a slot whose newest job did not succeed or left no
    ``end`` line; a job id started twice, or a slot started more often than
    its failed jobs explain."""
    starts: collections.Counter[int] = collections.Counter()
    slot_starts: collections.Counter[tuple[int, str, int]] = collections.Counter()
    ended = set()
    for line in lines:
        if line.what == "start":
            starts[line.job] += 1
            slot_starts[line.run, line.step, line.index] += 1
        else:
            ended.add(line.job)
    duplicated = [f"job {job} started {count} times" for job, count in sorted(starts.items()) if count > 1]
    lost = []
    for run in runs:
        by_slot: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
        for job in run["jobs"]:
            by_slot[job["step"], job["index"]].append(job)
        for (step, index), jobs in sorted(by_slot.items()):
            jobs.sort(key=lambda job: job["id"])
            newest = jobs[-1]
            failures = sum(1 for job in jobs if job["state"] == "failed")
            name = f"run {run['id']} {step}[{index}]"
            if slot_starts[run["id"], step, index] > 1 + failures:
                duplicated.append(f"{name} started {slot_starts[run['id'], step, index]} times, "
                                  f"{failures} failed tries")
            if newest["state"] != "succeeded":
                lost.append(f"{name}: job {newest['id']} {newest['state']} ({newest.get('reason')})")
            elif newest["id"] not in ended:
                lost.append(f"{name}: job {newest['id']} succeeded in the database, no end in the ledger")
    return lost, duplicated


class Member:
    """One ``muppet daemon --standby`` process of a pair, started on demand."""

    def __init__(self, name: str, work: Path, config: Path, port: int) -> None:
        self.name = name
        self.work = work
        self.config = config
        self.port = port
        self.process: trio.Process | None = None
        self.log = work / f"{name}.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self, standby: bool = True) -> None:
        log = await trio.to_thread.run_sync(self.log.open, "ab")
        try:
            argv = [*MUPPET, "daemon", "--config", str(self.config)] + (["--standby"] if standby else [])
            self.process = await trio.lowlevel.open_process(
                argv, stdout=log, stderr=log, env=dict(os.environ, **{DAEMON_VARIABLE: self.name}))
        finally:
            await trio.to_thread.run_sync(log.close)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGCONT)
            process.terminate()
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()

    async def role(self) -> str | None:
        """"active" or "standby" as its API says, None when it does not answer."""
        try:
            with trio.move_on_after(5):
                async with connect(self.url, connect_timeout=2) as client:
                    status = await client.call("daemon.status")
                    role: str = status["role"]
                    return role
        except (DaemonUnreachable, ConnectionLost, OSError, RpcError):
            pass
        return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Pair:
    """Two daemons (``a``, ``b``) on one database, one configuration each but
    the same state, outputs and pipelines; a ledger of what the jobs ran."""

    def __init__(self, work: Path, database: str, *, max_jobs: int = 8, slurm: bool = False) -> None:
        self.work = work
        self.database = database
        self.ledger = work / "ledger"
        self.members = {name: self._member(name, max_jobs, slurm) for name in ("a", "b")}

    def _member(self, name: str, max_jobs: int, slurm: bool) -> Member:
        port = free_port()
        config = self.work / f"{name}.toml"
        executors = f"""
            [executors.local]
            type = "local"
            max_jobs = {max_jobs}
            """
        if slurm:
            executors += """
            [executors.slurm]
            type = "slurm"
            max_jobs = 40
            poll_interval = 0.3
            """
        config.write_text(textwrap.dedent(f"""
            [daemon]
            database = "{self.database}"
            state_dir = "{self.work / 'state'}"
            output_dir = "{self.work / 'output'}"
            pipelines = ["pipelines/*.toml"]
            [api]
            listen = "127.0.0.1:{port}"
            [web]
            listen = ""
            """) + textwrap.dedent(executors))
        return Member(name, self.work, config, port)

    @property
    def a(self) -> Member:
        return self.members["a"]

    @property
    def b(self) -> Member:
        return self.members["b"]

    @property
    def urls(self) -> str:
        """Both APIs, comma-separated, as MUPPET_API takes them."""
        return ",".join(member.url for member in self.members.values())

    def write_pipeline(self, name: str, text: str) -> None:
        (self.work / "pipelines").mkdir(exist_ok=True)
        (self.work / "pipelines" / f"{name}.toml").write_text(text)

    def other(self, member: Member) -> Member:
        return self.b if member is self.a else self.a

    async def wait_role(self, member: Member, role: str, timeout: float = 60) -> None:  # noqa: ASYNC109
        async def there() -> bool:
            if member.process is not None and member.process.returncode is not None:
                raise AssertionError(f"daemon {member.name} exited {member.process.returncode}:\n"
                                     f"{member.log_text()[-4000:]}")
            return await member.role() == role

        await wait_until_async(there, timeout, f"daemon {member.name} {role}", interval=0.05,
                               detail=self.logs)

    def logs(self) -> str:
        return "\n".join(f"--- {m.name}.log\n{m.log_text()[-4000:]}" for m in self.members.values())

    async def ledger_lines(self) -> list[Line]:
        try:
            text = await trio.Path(self.ledger).read_text()
        except FileNotFoundError:
            return []
        return read_ledger(text)

    async def stop(self) -> None:
        for member in self.members.values():
            await member.stop()


async def first_answered_write(url: str, deadline: float) -> float | None:
    """Send ``pipelines.pause`` of the idle probe pipeline to ``url`` every
    20 ms until it is answered by a scheduler (not refused as a standby's);
    when (time.time()), or None at ``deadline`` (trio's clock)."""
    while trio.current_time() < deadline:
        try:
            # this daemon's own answer: not sent on to the one a refusal names
            async with connect(url, connect_timeout=1, follow_active=False) as client:
                while trio.current_time() < deadline:
                    try:
                        with trio.fail_after(30):  # a safety net: the daemon answers or goes away
                            await client.call("pipelines.pause", {"pipeline": PROBE, "reason": "failover bench"})
                    except RpcError as error:
                        if error.code == STANDBY:
                            await trio.sleep(0.02)
                            continue
                        # any other answer (it was paused already) is the scheduler's
                    answered = time.time()
                    await client.call("pipelines.resume", {"pipeline": PROBE})
                    return answered
        except (DaemonUnreachable, ConnectionLost, OSError):
            pass
        await trio.sleep(0.02)
    return None


@dataclass
class Takeover:
    #: the daemon killed (or stopped)
    killed: str
    at_lines: int
    to_start: float | None
    to_write: float | None

    def line(self) -> str:
        def show(seconds: float | None) -> str:
            return "-" if seconds is None else f"{seconds:6.2f} s"

        return (f"  daemon {self.killed} ended at {self.at_lines:4d} ledger lines: first job start "
                f"{show(self.to_start)}, first answered write {show(self.to_write)}")


@dataclass
class Outcome:
    takeovers: list[Takeover] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    runs: int = 0
    jobs: int = 0


async def _first_start(pair: Pair, daemon: str, after: float) -> float | None:
    """When the first job of ``daemon`` started after ``after`` (the ledger)."""
    mine = [line.at for line in await pair.ledger_lines()
            if line.daemon == daemon and line.what == "start" and line.at > after]
    return min(mine) if mine else None


async def _runs(url: str) -> list[dict[str, Any]]:
    async with connect(url) as client:
        listed = await client.call("runs.list", {"pipeline": "work", "limit": 1000})
        return [await client.call("runs.get", {"run_id": run["id"]}) for run in listed]


async def run_bench(postgres: PostgresServer, *, takeovers: int, jobs: int, seed: int, stop: bool = False,
                    say: Callable[[str], None]) -> Outcome:
    """``takeovers`` takeovers on a fresh database; ``stop``: the active
    daemon is stopped (SIGSTOP, as a host that is lost or frozen: the
    standby takes over once its lease has run out) instead of killed, and
    killed once the standby has taken over."""
    rng = random.Random(seed)
    work = Path(await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="muppet-failover-")))
    name = f"failover_{os.getpid()}_{time.monotonic_ns()}"
    database = await trio.to_thread.run_sync(postgres.create_database, name)
    pair = Pair(work, database)
    pair.write_pipeline("work", ledger_pipeline("work", pair.ledger, fan=jobs - 3, sleep=0.2))
    pair.write_pipeline(PROBE, PROBE_PIPELINE)
    outcome = Outcome()
    lines_per_run = 2 * jobs
    try:
        await pair.a.start()
        await pair.wait_role(pair.a, "active")
        await pair.b.start()
        await pair.wait_role(pair.b, "standby")
        active = pair.a
        run_id = 0
        for number in range(1, takeovers + 1):
            # a random moment of a run, between a tenth and two thirds of
            # the way, so that jobs are left for the new active daemon to start
            done = sum(1 for line in await pair.ledger_lines() if line.run == run_id)
            if run_id == 0 or done > lines_per_run // 3:
                async with connect(pair.urls) as client:
                    reference = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=number)
                    run_id = (await client.call("runs.trigger", {
                        "pipeline": "work", "reference_time": reference.isoformat()}))["run_id"]
                done = 0
            point = rng.randint(max(done, lines_per_run // 10), lines_per_run * 2 // 3)

            async def reached(run: int = run_id, point: int = point) -> bool:
                return sum(1 for line in await pair.ledger_lines() if line.run == run) >= point

            await wait_until_async(reached, 300, f"{point} ledger lines of run {run_id}", interval=0.02,
                                   detail=pair.logs)
            standby = pair.other(active)
            lines = len(await pair.ledger_lines())
            killed_at = time.time()
            if stop:
                active.signal(signal.SIGSTOP)
            else:
                await active.kill()
            deadline = trio.current_time() + 60
            answered = await first_answered_write(standby.url, deadline)
            try:
                first = await wait_until_async(
                    functools.partial(_first_start, pair, standby.name, killed_at), 60,
                    "a job started by the new active daemon", interval=0.05, detail=pair.logs)
            except AssertionError:
                first = None
            if stop:
                await active.kill()
            takeover = Takeover(active.name, lines, None if first is None else first - killed_at,
                                None if answered is None else answered - killed_at)
            outcome.takeovers.append(takeover)
            say(f"{number:2d}{takeover.line()}")
            await active.start()
            await pair.wait_role(active, "standby")
            active = standby
        async with connect(pair.urls) as client:
            async def ended() -> bool:
                return not await client.call("runs.list", {"pipeline": "work", "state": "running"})

            await wait_until_async(ended, 600, "the runs to end", detail=pair.logs)
        runs = await _runs(pair.urls)
        outcome.runs = len(runs)
        outcome.jobs = sum(len(run["jobs"]) for run in runs)
        outcome.lost, outcome.duplicated = judge_ledger(await pair.ledger_lines(), runs)
        return outcome
    finally:
        await pair.stop()
        if not outcome.lost and not outcome.duplicated:
            await trio.to_thread.run_sync(functools.partial(shutil.rmtree, work, ignore_errors=True))
        else:
            say(f"kept for inspection: {work}")


def _figures(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "none measured"
    missing = len(values) - len(known)
    return (f"median {statistics.median(known):.2f} s, worst {max(known):.2f} s"
            + (f" ({missing} not measured)" if missing else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--takeovers", type=int, default=10, help="kill -9 of the active daemon (default 10)")
    parser.add_argument("--jobs", type=int, default=400, help="jobs in each run (default 400; 0.2 s each, 8 at once)")
    parser.add_argument("--seed", type=int, default=None, help="of the kills' random moments")
    parser.add_argument("--stop", action="store_true",
                        help="SIGSTOP the active daemon (a lost or frozen host) instead of SIGKILL")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    how = "SIGSTOP" if args.stop else "kill -9"
    print(f"failover benchmark: {args.takeovers} takeovers after {how}, runs of {args.jobs} local jobs, "
          f"PostgreSQL 15, seed {seed}, {os.cpu_count()} CPUs", flush=True)
    server = PostgresServer()
    server.start()
    try:
        outcome = trio.run(functools.partial(
            run_bench, server, takeovers=args.takeovers, jobs=args.jobs, seed=seed, stop=args.stop,
            say=lambda text: print(text, flush=True)))
    finally:
        server.stop()
    print()
    print(f"{how} to the new active daemon's first job start: "
          f"{_figures([t.to_start for t in outcome.takeovers])}")
    print(f"{how} to its first answered write:{' ' * 16}{_figures([t.to_write for t in outcome.takeovers])}")
    print(f"{outcome.runs} runs, {outcome.jobs} jobs: {len(outcome.lost)} slots lost, "
          f"{len(outcome.duplicated)} duplicated starts")
    for item in (outcome.lost + outcome.duplicated)[:20]:
        print(f"  {item}")
    if outcome.lost or outcome.duplicated or any(t.to_start is None for t in outcome.takeovers):
        sys.exit(1)


if __name__ == "__main__":
    main()
