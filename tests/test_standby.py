"""A hot standby (docs/operations.md, "Running a standby") with real daemon
processes: a standby serves reads and refuses writes naming the active
daemon; it takes over when the active one is killed with -9 (SQLite and
PostgreSQL), in the middle of a run of local and Slurm jobs, each of which
runs once; a stopped (SIGSTOP) active daemon is taken over from, starts
nothing when woken and exits; clients given both daemons, the Python
client's subscription and a muppet-sync fetcher, follow the takeover."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import trio
from services import service_missing  # tests/ is on sys.path
from waiting import daemon_answers, wait_until_async

from muppet.api.client import connect
from muppet.api.protocol import STANDBY, RpcError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import failover  # bench/failover.py: the pair of daemons and the ledger
from failover import Pair, judge_ledger, ledger_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MUPPET = [sys.executable, "-m", "muppet.cli"]


async def muppet(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process([*MUPPET, *args], capture_stdout=True, capture_stderr=True, check=False)


@pytest.fixture
async def pair(tmp_path, database_url):
    pair = Pair(tmp_path, database_url)
    try:
        yield pair
    finally:
        await pair.stop()


async def _run_state(url: str, run_id: int) -> str:
    async with connect(url) as client:
        run = await client.call("runs.get", {"run_id": run_id})
        return str(run["state"])


async def _ended(url: str, run_id: int) -> bool:
    return await _run_state(url, run_id) != "running"


async def test_a_standby_serves_reads_refuses_writes_and_takes_over_from_a_killed_daemon(pair):
    pair.write_pipeline("work", ledger_pipeline("work", pair.ledger, fan=4, chain=1))
    pair.write_pipeline(failover.PROBE, failover.PROBE_PIPELINE)
    a, b = pair.a, pair.b
    await a.start(standby=False)
    await pair.wait_role(a, "active")
    await b.start()
    await pair.wait_role(b, "standby")

    async with connect(pair.urls) as client:
        first = (await client.call("runs.trigger", {"pipeline": "work"}))["run_id"]
    await wait_until_async(partial(_ended, b.url, first), 60, "the first run to end, as the standby reads it",
                           detail=pair.logs)

    # every read, from the database
    async with connect(b.url) as standby:
        run = await standby.call("runs.get", {"run_id": first})
        assert run["state"] == "succeeded" and len(run["jobs"]) == 6
        job = run["jobs"][0]
        assert (await standby.call("jobs.get", {"job_id": job["id"]}))["state"] == "succeeded"
        assert (await standby.call("jobs.list", {"run_id": first}))
        assert (await standby.call("jobs.output", {"job_id": job["id"]}))["text"] == ""
        assert (await standby.call("events.list", {"since": 0}))
        assert (await standby.call("products.list"))["items"] == []
        status = await standby.call("daemon.status")
        assert status["role"] == "standby"
        assert status["active"]["api"] == a.url and [s["api"] for s in status["standbys"]] == [b.url]
        # writes and commands: refused, naming the active daemon
        for method, params in (("runs.trigger", {"pipeline": "work"}), ("jobs.hold", {"job_id": job["id"]}),
                               ("daemon.drain", {}), ("files.delete", {"ids": [1]})):
            with pytest.raises(RpcError) as refused:
                await standby._link.call(method, params)  # the link itself: the client would redirect
            assert refused.value.code == STANDBY, refused.value
            assert refused.value.data["active"] == a.url
            assert a.url in str(refused.value) and "standby" in str(refused.value)

    shown = await muppet("status", "--api", b.url)
    text = shown.stdout.decode()
    assert shown.returncode == 0, shown.stderr
    assert text.startswith("role        STANDBY"), text
    assert f"active      {failover.socket.gethostname()} (pid {a.process.pid}" in text and a.url in text, text
    assert f"pid {b.process.pid}, waiting since" in text, text
    shown = await muppet("status", "--api", a.url)
    assert "STANDBY" not in shown.stdout.decode() and f"API {b.url}" in shown.stdout.decode(), shown.stdout
    # the CLI sends a write given the standby first to the active daemon
    done = await muppet("pause", failover.PROBE, "--api", f"{b.url},{a.url}", "--reason", "test")
    assert done.returncode == 0, done.stderr
    done = await muppet("resume", failover.PROBE, "--api", b.url)  # the refusal names where to go
    assert done.returncode == 0, done.stderr

    # a subscriber on the active daemon, with both addresses: kill -9 of the
    # active one, and the stream goes on from the standby, nothing lost
    async with connect(pair.urls) as client:
        assert client.url == a.url
        since = (await client.call("events.list", {"since": 0, "limit": 10000}))[-1]["id"]
        events = await client.subscribe(since=since)
        await a.kill()
        # the first write after the kill: sent to the standby until it has taken over
        second = (await client.call("runs.trigger", {"pipeline": "work"}))["run_id"]
        assert client.url == b.url
        seen = []
        with trio.fail_after(60):
            async for event in events:
                seen.append(event)
                if event["kind"] == "run" and event["data"]["id"] == second and event["data"]["state"] != "running":
                    break
    assert seen[-1]["data"]["state"] == "succeeded", pair.logs()
    async with connect(b.url) as reader:
        logged = await reader.call("events.list", {"since": since, "limit": 10000})
    ids = [event["id"] for event in seen]
    assert ids == sorted(set(ids)), "an event twice or out of order"
    assert ids == [event["id"] for event in logged][:len(ids)], "an event missing"
    assert (await b.role()) == "active"
    assert "standby: took the lease" in b.log_text()
    lost, duplicated = judge_ledger(await pair.ledger_lines(), [await _run(b.url, first), await _run(b.url, second)])
    assert not lost and not duplicated, (lost, duplicated)


async def _run(url: str, run_id: int) -> dict:
    async with connect(url) as client:
        return await client.call("runs.get", {"run_id": run_id})


def _slurm_or_skip() -> None:
    if shutil.which("sinfo") is None:
        service_missing("Slurm is not installed (run .ci/services/start-slurm.sh)")
    done = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        service_missing(f"Slurm does not answer: {done.stderr.strip()[:200]}")


@pytest.mark.postgres
async def test_the_standby_finishes_a_300_job_run_of_local_and_slurm_jobs_after_kill_9(tmp_path, postgres_url):
    _slurm_or_skip()
    pair = Pair(tmp_path, postgres_url, slurm=True)
    # 150 local, 140 on Slurm, a join and a chain of 9: 300 jobs
    pair.write_pipeline("work", ledger_pipeline("work", pair.ledger, fan=150, slurm_fan=140, chain=9))
    a, b = pair.a, pair.b
    try:
        await a.start(standby=False)
        await pair.wait_role(a, "active")
        await b.start()
        await pair.wait_role(b, "standby")
        async with connect(pair.urls) as client:
            run_id = (await client.call("runs.trigger", {"pipeline": "work"}))["run_id"]

        # while the Slurm step runs: the local fan-out has written its 300
        # lines, and some Slurm jobs have started
        async def in_the_slurm_step() -> bool:
            lines = await pair.ledger_lines()
            return sum(1 for line in lines if line.step == "each" and line.what == "start") >= 20

        await wait_until_async(in_the_slurm_step, 120, "20 Slurm jobs started", detail=pair.logs)
        await a.kill()
        await pair.wait_role(b, "active", timeout=30)
        await wait_until_async(partial(_ended, b.url, run_id), 240, "the run to end on the standby",
                               detail=pair.logs)
        run = await _run(b.url, run_id)
        lines = await pair.ledger_lines()
    finally:
        await pair.stop()
    assert run["state"] == "succeeded", pair.logs()
    assert len(run["jobs"]) == 300, len(run["jobs"])
    lost, duplicated = judge_ledger(lines, [run])
    assert not lost and not duplicated, (lost, duplicated)
    by_daemon = collections.Counter((line.step == "each", line.daemon) for line in lines if line.what == "start")
    # both daemons ran local and Slurm jobs: the kill fell in the middle
    assert by_daemon[True, "a"] and by_daemon[True, "b"] and by_daemon[False, "b"], by_daemon
    assert any(job["executor"] == "slurm" and job["batch_id"] for job in run["jobs"])


@pytest.mark.postgres
async def test_a_stopped_active_daemon_is_taken_over_from_and_starts_nothing_when_woken(tmp_path, postgres_url):
    pair = Pair(tmp_path, postgres_url, max_jobs=6)
    pair.write_pipeline("work", ledger_pipeline("work", pair.ledger, fan=60, sleep=0.3, chain=1))
    a, b = pair.a, pair.b
    try:
        await a.start(standby=False)
        await pair.wait_role(a, "active")
        await b.start()
        await pair.wait_role(b, "standby")
        async with connect(pair.urls) as client:
            run_id = (await client.call("runs.trigger", {"pipeline": "work"}))["run_id"]

        async def started(count: int, daemon: str) -> bool:
            return sum(1 for line in await pair.ledger_lines()
                       if line.what == "start" and line.daemon == daemon) >= count

        await wait_until_async(partial(started, 10, "a"), 60, "10 jobs started by a", detail=pair.logs)
        a.signal(signal.SIGSTOP)
        stopped = time.time()
        # past the lease's 5 s, the standby ends a's sessions and takes over
        await pair.wait_role(b, "active", timeout=30)
        took = time.time() - stopped
        await wait_until_async(partial(started, 1, "b"), 30, "a job started by b", detail=pair.logs)
        woken = time.time()
        a.signal(signal.SIGCONT)
        assert a.process is not None
        with trio.fail_after(30):
            code = await a.process.wait()
        await wait_until_async(partial(_ended, b.url, run_id), 120, "the run to end on b", detail=pair.logs)
        run = await _run(b.url, run_id)
        lines = await pair.ledger_lines()
    finally:
        await pair.stop()
    log = a.log_text()
    assert code == 3, log[-3000:]
    assert "muppet: error: lost the lease on" in log and "took it over" in log, log[-3000:]
    # the lease ran 5 s from the start of a's last renewal, up to a second
    # before the stop
    assert 3.5 < took < 15, took
    lost, duplicated = judge_ledger(lines, [run])
    assert run["state"] == "succeeded" and not lost and not duplicated, (lost, duplicated, pair.logs())
    # a started no job after it was stopped: none of its jobs began after it woke
    late = [line for line in lines if line.daemon == "a" and line.what == "start" and line.at > woken]
    assert not late, late
    assert "lease on" in b.log_text() and "expired" in b.log_text()


class _StandbyCluster:
    """test_sync_e2e's cluster with two daemons on one PostgreSQL database:
    ``a`` active, ``b`` its standby; muppet-sync is given both."""

    @staticmethod
    def make(tmp_path: Path, database: str):
        from test_sync_e2e import Cluster

        class StandbyCluster(Cluster):
            def __init__(self) -> None:
                super().__init__(tmp_path)
                self.ports = (self.port, failover.free_port())
                self.urls = [f"ws://127.0.0.1:{port}" for port in self.ports]
                self.api = ",".join(self.urls)

            def write_daemon_config(self) -> None:
                super().write_daemon_config()
                text = (tmp_path / "muppet.toml").read_text().replace(
                    "[daemon]\n", f'[daemon]\ndatabase = "{database}"\n', 1) + '[web]\nlisten = ""\n'
                for name, port in zip("ab", self.ports, strict=True):
                    (tmp_path / f"{name}.toml").write_text(text.replace(
                        f'listen = "127.0.0.1:{self.port}"', f'listen = "127.0.0.1:{port}"'))

            async def start_daemon(self) -> None:
                await trio.to_thread.run_sync(self.write_daemon_config)
                for name, url, extra in (("a", self.urls[0], []), ("b", self.urls[1], ["--standby"])):
                    await self.start(name, [*MUPPET, "daemon", "--config", str(tmp_path / f"{name}.toml"), *extra])
                    await self.wait(partial(daemon_answers, url), f"daemon {name} answering")

        return StandbyCluster()


@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_a_muppet_sync_fetcher_given_both_daemons_follows_the_standby(tmp_path, postgres_url):
    from test_sync_e2e import REF, SECRET, _all_there, sha256

    cluster = _StandbyCluster.make(tmp_path, postgres_url)
    lustre = tmp_path / "lustre"
    lustre.mkdir()
    try:
        await cluster.start_daemon()
        await cluster.start_seed()
        await cluster.start_fetch("c1")
        data = tmp_path / "c1" / "data" / "arome" / "20261201T00"

        async def register(name: str) -> None:
            path = lustre / name
            await trio.Path(path).write_bytes(b"x" * 200_000 + name.encode())
            # both daemons: the write goes to whichever is active
            async with connect(cluster.api, token=SECRET) as client:
                await client.call("files.register", {"files": [{
                    "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
                    "url": f"file://{path}", "size": path.stat().st_size, "hash": await sha256(path),
                }]})

        await register("before.nc")
        await cluster.wait(partial(_all_there, data, ["before.nc"]), "before.nc placed")
        await cluster.stop("a", signal.SIGKILL)
        await register("after.nc")
        await cluster.wait(partial(_all_there, data, ["after.nc"]), "after.nc placed after the takeover", timeout=90)
        assert await sha256(data / "after.nc") == await sha256(lustre / "after.nc")
        async with connect(cluster.urls[1]) as client:
            assert (await client.call("daemon.status"))["role"] == "active"
            copies = await client.call("files.list", {"product": "arome", "reference_time": REF, "backend": "c1"})
        # the fetcher registered its copy of each file, the second with the new active daemon
        assert sorted(item["url"].rsplit("/", 1)[-1] for item in copies["items"]) == ["after.nc", "before.nc"]
    finally:
        await cluster.stop_all()
