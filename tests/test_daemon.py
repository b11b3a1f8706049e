"""The whole daemon, end to end: real database (SQLite and PostgreSQL), real
processes, the real API; in-process for the flow, as a separate process for
kill -9 and SIGTERM."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
import trio
from services import free_port  # tests/ is on sys.path
from waiting import wait_until, wait_until_async  # tests/ is on sys.path

from muppet import daemon
from muppet.api.client import connect
from muppet.config import load_config

MUPPET = [sys.executable, "-m", "muppet.cli"]


def write_config(
    tmp_path: Path, database_url: str, pipelines: dict[str, str], port: int = 0, max_jobs: int = 8
) -> Path:
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    for name, text in pipelines.items():
        (tmp_path / "pipelines" / f"{name}.toml").write_text(textwrap.dedent(text))
    config = tmp_path / "muppet.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [daemon]
            database = "{database_url}"
            state_dir = "{tmp_path / 'state'}"
            output_dir = "{tmp_path / 'output'}"
            pipelines = ["pipelines/*.toml"]
            [api]
            listen = "127.0.0.1:{port}"
            [executors.local]
            type = "local"
            max_jobs = {max_jobs}
            """
        )
    )
    return config


STAKEHOLDER = """
[stakeholders.ops]
name = "Operations"
email = "ops@example.org"
"""

FAN = STAKEHOLDER + """
[pipeline]
name = "fan"
owner = "ops"
[steps.fetch]
command = "echo fetching $MUPPET_REFERENCE_TIME"
[steps.convert]
parents = ["fetch"]
jobs = 4
concurrency = 2
command = "mkdir -p out && echo part $MUPPET_JOB_INDEX $LEVEL > out/part_$MUPPET_JOB_INDEX.txt"
env = { LEVEL = "surface" }
outputs = ["out/part_{index}.txt"]
[steps.publish]
parents = ["convert"]
command = "echo published >&2"
"""


async def start(nursery: trio.Nursery, config_path: Path) -> str:
    config = load_config(config_path)
    port = await nursery.start(daemon.serve, config)
    return f"ws://127.0.0.1:{port}"


async def wait_run(client, run_id: int) -> dict:
    async def ended():
        run = await client.call("runs.get", {"run_id": run_id})
        return run if run["state"] != "running" else None

    return await wait_until_async(ended, 60, f"run {run_id} ending")


async def test_pipeline_runs_end_to_end(nursery, tmp_path, database_url):
    url = await start(nursery, write_config(tmp_path, database_url, {"fan": FAN}))
    async with connect(url) as client:
        result = await client.call("runs.trigger", {"pipeline": "fan", "reference_time": "2026-11-28T06:00:00Z"})
        run = await wait_run(client, result["run_id"])
        assert run["state"] == "succeeded"
        assert run["reference_time"] == "2026-11-28T06:00:00Z"
        jobs = run["jobs"]
        slots = [(j["step"], j["index"]) for j in jobs]
        assert slots == [("fetch", 0), *(("convert", i) for i in range(4)), ("publish", 0)]
        assert {j["state"] for j in jobs} == {"succeeded"} and {j["exit_code"] for j in jobs} == {0}
        fetch = jobs[0]
        log = await client.call("jobs.logs", {"job_id": fetch["id"]})
        assert log["text"] == "fetching 2026-11-28T06:00:00Z\n"
        publish = jobs[-1]
        log = await client.call("jobs.logs", {"job_id": publish["id"], "stream": "stderr"})
        assert log["text"] == "published\n"
        # the fan-in started after the last convert ended, the fan-out after fetch
        converts = jobs[1:5]
        assert min(j["started_at"] for j in converts) >= fetch["ended_at"]
        assert publish["started_at"] >= max(j["ended_at"] for j in converts)
        with pytest.raises(Exception, match="exists"):
            await client.call("runs.trigger", {"pipeline": "fan", "reference_time": "2026-11-28T06:00:00Z"})
    for index in range(4):
        assert (tmp_path / "output" / "out" / f"part_{index}.txt").read_text() == f"part {index} surface\n"


RETRY = STAKEHOLDER + """
[pipeline]
name = "flaky"
owner = "ops"
[steps.try]
command = "n=$(cat {marker} 2>/dev/null || echo 0); echo $((n+1)) > {marker}; [ $n -ge 2 ]"
retry = {{ tries = 3, interval = 0.2, factor = 2.0 }}
[steps.after]
parents = ["try"]
command = "true"
"""


async def test_retries_are_linked_jobs(nursery, tmp_path, database_url):
    marker = tmp_path / "tries"
    url = await start(nursery, write_config(tmp_path, database_url, {"flaky": RETRY.format(marker=marker)}))
    async with connect(url) as client:
        result = await client.call("runs.trigger", {"pipeline": "flaky"})
        run = await wait_run(client, result["run_id"])
        assert run["state"] == "succeeded"
        tries = [j for j in run["jobs"] if j["step"] == "try"]
        assert [(j["state"], j["failures"], j["exit_code"]) for j in tries] == [
            ("failed", 0, 1),
            ("failed", 1, 1),
            ("succeeded", 2, 0),
        ]
        assert tries[0]["successor"] == tries[1]["id"] and tries[1]["predecessor"] == tries[0]["id"]
        assert tries[1]["successor"] == tries[2]["id"] and tries[2]["predecessor"] == tries[1]["id"]
    assert marker.read_text() == "3\n"


def cli(*args: str, api: str) -> str:
    out = subprocess.run(
        [*MUPPET, *args], env={**os.environ, "MUPPET_API": api}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


class Daemon:
    """`muppet daemon` as a separate process."""

    def __init__(self, config: Path, port: int, log: Path):
        self.config, self.port, self.log = config, port, log
        self.api = f"ws://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([*MUPPET, "daemon", "--config", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
                time.sleep(0.1)
        raise AssertionError("the daemon did not start listening:\n" + self.log.read_text())

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def jobs(self, run_id: int) -> list[dict]:
        return json.loads(cli("jobs", str(run_id), "--json", api=self.api))

    def wait(self, run_id: int, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = {r["id"]: r for r in json.loads(cli("runs", "--json", api=self.api))}
            if runs[run_id]["state"] != "running":
                return runs[run_id]
            time.sleep(0.3)
        raise AssertionError(f"run {run_id} did not end:\n" + self.log.read_text())


# The jobs of "first" run until the test opens their gate, {gates}/0 for the
# even indexes and {gates}/1 for the odd ones: the test decides which end while
# no daemon runs and which still run when a daemon starts again. (After 5
# minutes they stop waiting, so that a failed test leaves no job behind.)
SLOW = STAKEHOLDER + """
[pipeline]
name = "slow"
owner = "ops"
[steps.first]
jobs = 4
command = '''
echo $MUPPET_JOB_ID >> {ledger}
until [ -e {gates}/$((MUPPET_JOB_INDEX % 2)) ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done
exit $((MUPPET_JOB_INDEX == 3 ? 5 : 0))'''
[steps.second]
parents = ["first"]
jobs = 4
depends = "each"
command = "echo $MUPPET_JOB_ID >> {ledger}; mkdir -p o; echo $MUPPET_JOB_INDEX > o/f$MUPPET_JOB_INDEX"
outputs = ["o/f{{index}}"]
"""


def end_record(tmp_path: Path, job_id: int) -> dict | None:
    """The end record in a job's status file (docs/executor.md), once written."""
    try:
        lines = (tmp_path / "state" / "jobs" / str(job_id) / "status").read_text().splitlines()
    except FileNotFoundError:
        return None
    ended = [record for record in map(json.loads, lines) if record["state"] == "ended"]
    return ended[0] if ended else None


def first_jobs(d: Daemon, run_id: int) -> dict[int, dict]:
    """The jobs of step "first" of a run of SLOW, by index."""
    return {j["index"]: j for j in d.jobs(run_id) if j["step"] == "first"}


@pytest.mark.slow
def test_kill_9_loses_nothing_and_starts_nothing_twice(tmp_path, database_url):
    """kill -9 the daemon while jobs run; some end while no daemon watches; a
    new daemon records their real exit codes, re-attaches to the others and
    finishes the run."""
    ledger, gates = tmp_path / "ledger", tmp_path / "gates"
    gates.mkdir()
    port = free_port()
    config = write_config(tmp_path, database_url, {"slow": SLOW.format(ledger=ledger, gates=gates)}, port=port)
    d = Daemon(config, port, tmp_path / "daemon.log")
    d.start()
    run_id = int(cli("trigger", "slow", api=d.api).strip())
    wait_until(lambda: sum(j["state"] == "running" for j in d.jobs(run_id)) == 4, 30, "4 jobs running",
               detail=lambda: json.dumps(d.jobs(run_id)))
    first = first_jobs(d, run_id)
    d.stop(signal.SIGKILL)
    # The even jobs end while no daemon runs; the odd ones still run when the
    # new daemon starts.
    (gates / "0").touch()
    wait_until(lambda: end_record(tmp_path, first[0]["id"]) and end_record(tmp_path, first[2]["id"]), 30,
               "jobs 0 and 2 of step first ending while no daemon runs")
    d.start()
    wait_until(lambda: {i: j["state"] for i, j in first_jobs(d, run_id).items()} == {
        0: "succeeded", 1: "running", 2: "succeeded", 3: "running"}, 30,
        "the new daemon recording the two jobs that ended without it, the two others still running",
        detail=lambda: json.dumps(d.jobs(run_id)) + "\n" + d.log.read_text())
    (gates / "1").touch()
    run = d.wait(run_id)
    jobs = d.jobs(run_id)
    by_slot = {(j["step"], j["index"]): j for j in jobs}
    assert [by_slot[("first", i)]["exit_code"] for i in range(4)] == [0, 0, 0, 5]
    assert [by_slot[("first", i)]["state"] for i in range(4)] == ["succeeded"] * 3 + ["failed"]
    assert [by_slot[("second", i)]["state"] for i in range(4)] == ["succeeded"] * 3 + ["skipped"]
    assert run["state"] == "failed"
    assert len(jobs) == 8  # nothing was made twice
    ran = ledger.read_text().split()
    # each command ran exactly once (the skipped one never)
    assert sorted(ran) == sorted(str(j["id"]) for j in jobs if j["state"] != "skipped")
    assert (tmp_path / "output" / "o" / "f1").read_text() == "1\n"
    d.stop(signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_jobs_go_on(tmp_path, database_url):
    ledger, gates = tmp_path / "ledger", tmp_path / "gates"
    gates.mkdir()
    port = free_port()
    config = write_config(tmp_path, database_url, {"slow": SLOW.format(ledger=ledger, gates=gates)}, port=port)
    d = Daemon(config, port, tmp_path / "daemon.log")
    d.start()
    run_id = int(cli("trigger", "slow", "--reference-time", "2026-11-28T00:00:00Z", api=d.api).strip())
    wait_until(lambda: sum(j["state"] == "running" for j in d.jobs(run_id)) == 4, 30, "4 jobs running",
               detail=lambda: json.dumps(d.jobs(run_id)))
    first = first_jobs(d, run_id)
    assert d.stop(signal.SIGTERM) == 0
    assert "stopped" in d.log.read_text()
    # the jobs were not stopped with the daemon: none has an end record
    assert [end_record(tmp_path, first[i]["id"]) for i in range(4)] == [None] * 4
    (gates / "0").touch()
    (gates / "1").touch()
    d.start()
    assert d.wait(run_id)["state"] == "failed"  # index 3 exits 5, as designed
    assert len(ledger.read_text().split()) == 7
    d.stop(signal.SIGTERM)


@pytest.mark.slow
def test_readme_daemon_on_embedded_defaults_runs_the_examples(tmp_path):
    """The README's first command on a fresh home directory: conf/muppet.toml
    (embedded defaults, example pipelines), then a run of "example", whose
    outputs complete an instance of example-product in the index, which
    triggers "archive"."""
    repo = Path(__file__).resolve().parent.parent
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_STATE_HOME", "MUPPET_API")}
    env["HOME"] = str(home)
    port = free_port()
    config = tmp_path / "muppet.toml"
    # the README's file, with only the port moved off 8765 so tests can run
    # beside a real daemon
    config.write_text(
        (repo / "conf" / "muppet.toml").read_text().replace("[api]", f'[api]\nlisten = "127.0.0.1:{port}"', 1)
    )
    (tmp_path / "pipelines").symlink_to(repo / "conf" / "pipelines")
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([*MUPPET, "daemon", "--config", str(config)], stdout=out, stderr=out, env=env)
    try:
        d = Daemon(config, port, log)
        d.process = process
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        run_id = int(cli("trigger", "example", "--reference-time", "2026-11-28T06:15:00Z", api=d.api).strip())
        assert d.wait(run_id)["state"] == "succeeded", d.jobs(run_id)
        # example also fires every five minutes (its cron): a firing during
        # the test makes a newer instance, so ask for the triggered one
        reference_time = "2026-11-28T06:15:00Z"
        files = json.loads(cli("files", "example-product", "--reference-time", reference_time, "--json", api=d.api))
        assert sorted(f["name"] for f in files) == [
            f"example/20261128T0615/{name}" for name in ("manifest.txt", "part_0.txt", "part_1.txt", "part_2.txt")]
        deadline = time.monotonic() + 30
        while not (archive := [
            run for run in json.loads(cli("runs", "--pipeline", "archive", "--json", api=d.api))
            if run["reference_time"] == reference_time
        ]):
            assert time.monotonic() < deadline, "no archive run"
            time.sleep(0.1)
        assert archive[0]["cause"] == "data"
        assert d.wait(archive[0]["id"])["state"] == "succeeded"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    state = home / ".local" / "state" / "muppet"
    assert (state / "muppet.db").exists()
    outputs = sorted(p.relative_to(state / "output").as_posix() for p in (state / "output").rglob("*.txt"))
    assert "example/20261128T0615/manifest.txt" in outputs
    assert "example/20261128T0615/part_2.txt" in outputs


def test_refuses_an_old_state_dir_with_a_new_database(tmp_path):
    """Job ids restart at 1 in a new database: an old job directory would be
    taken for the new job's and "re-attached". The daemon refuses to start."""
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'new.db'}", {"fan": FAN})
    (tmp_path / "state" / "jobs" / "7").mkdir(parents=True)
    out = subprocess.run([*MUPPET, "daemon", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "holds job directories up to job 7" in out.stderr and "has only reached job 0" in out.stderr


GATED = STAKEHOLDER + """
[pipeline]
name = "gated"
owner = "ops"
[steps.a]
command = "until [ -e $GATE ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done"
env = {{ GATE = "{gate}" }}
[steps.b]
parents = ["a"]
command = "true"
[steps.c]
command = "true"
"""


async def test_a_waiting_job_says_why(nursery, tmp_path, database_url):
    """docs/states.md, "Why a job waits": the API shows the scheduler's
    reason for a waiting job, current as the run goes on."""
    gate = tmp_path / "gate"
    config = write_config(tmp_path, database_url, {"gated": GATED.format(gate=gate)}, max_jobs=1)
    url = await start(nursery, config)
    async with connect(url) as client:
        run_id = (await client.call("runs.trigger", {"pipeline": "gated"}))["run_id"]

        async def reasons() -> dict[str, str] | None:
            jobs = (await client.call("runs.get", {"run_id": run_id}))["jobs"]
            by_step = {j["step"]: j for j in jobs}
            if by_step["a"]["state"] != "running":
                return None
            return {step: job["reason"] for step, job in by_step.items() if job["state"] == "waiting"}

        waiting = await wait_until_async(reasons, 60, "a running, b and c waiting")
        assert waiting == {"b": "parents: a[0] running", "c": "executor local: 1 of 1 slots busy"}
        (b,) = [j for j in await client.call("jobs.list", {"run_id": run_id}) if j["step"] == "b"]
        assert b["reason"] == "parents: a[0] running"
        gate.touch()
        run = await wait_run(client, run_id)
        assert run["state"] == "succeeded" and {j["reason"] for j in run["jobs"]} == {""}


async def test_what_the_daemon_holds_once_started_is_frozen(nursery, tmp_path, database_url):
    """docs/performance.md, "Runs of 1,000-50,000 jobs": once `muppet
    daemon` has started, what it holds (its configuration among it) is in
    the garbage collector's permanent generation, which its full passes
    skip; what it makes after is not."""
    gc.unfreeze()
    port = free_port()
    config = load_config(write_config(tmp_path, database_url, {"fan": FAN}, port=port))
    try:
        nursery.start_soon(partial(daemon.serve_until_signal, config))
        await wait_until_async(gc.get_freeze_count, 30, "the daemon's objects frozen once it has started")
        # a frozen object is in no generation that a collection looks at
        assert not any(o is config for o in gc.get_objects())
        async with connect(f"ws://127.0.0.1:{port}") as client:
            run_id = (await client.call("runs.trigger", {"pipeline": "fan"}))["run_id"]
            assert (await wait_run(client, run_id))["state"] == "succeeded"
        made_since = load_config(tmp_path / "muppet.toml")
        assert any(o is made_since for o in gc.get_objects())
    finally:
        nursery.cancel_scope.cancel()
        # the rest of the test session is not the daemon's
        gc.unfreeze()
