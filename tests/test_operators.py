"""Operators steering whole runs, pipelines and the daemon, end to end: a
real daemon on SQLite and PostgreSQL, real processes, the real API and the
``muppet`` command (docs/cli.md; docs/operations.md, "During an outage").

Each job that must wait for the test waits on a gate file of its own run
(``open-RUN_ID``), so that the test decides when it ends; the test waits
for conditions read through the API, with deadlines, never for a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
from waiting import wait_until_async  # tests/ is on sys.path

from muppet import daemon
from muppet.api.client import RpcError, connect
from muppet.api.protocol import CONFLICT, NOT_FOUND, UNAUTHORIZED
from muppet.config import load_config

MUPPET = [sys.executable, "-m", "muppet.cli"]
ENV = {k: v for k, v in os.environ.items() if k not in ("MUPPET_API", "MUPPET_TOKEN")}
REF = "2026-11-28T06:00:00Z"
#: seconds a condition read through the API may take (a safety net, not a timing)
DEADLINE = 60


def gated(tmp_path: Path) -> str:
    """A shell line that waits until the test opens this run's gate."""
    return f'until [ -e {tmp_path}/open-$MUPPET_RUN_ID ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done'


def pipelines(tmp_path: Path) -> dict[str, str]:
    ledger = tmp_path / "ledger"
    return {
        # gate -> make (2 jobs, outputs of arome) -> last
        "ops": f"""
            [pipeline]
            name = "ops"
            owner = "ops"
            produces = ["arome"]
            [steps.gate]
            command = '{gated(tmp_path)}'
            [steps.make]
            parents = ["gate"]
            jobs = 2
            command = '''
            cd "$MUPPET_SCRATCH" && mkdir -p arome && echo "field $MUPPET_JOB_INDEX" > arome/f$MUPPET_JOB_INDEX.txt'''
            outputs = ["arome/f{{index}}.txt"]
            [steps.last]
            parents = ["make"]
            command = "true"
            """,
        # a -> b -> c; a fails until its run's ok file exists; each writes a ledger line
        "chain": f"""
            [pipeline]
            name = "chain"
            owner = "ops"
            [steps.a]
            command = 'echo "a $MUPPET_JOB_ID" >> {ledger}; [ -e {tmp_path}/ok-$MUPPET_RUN_ID ] || exit 3'
            [steps.b]
            parents = ["a"]
            command = 'echo "b $MUPPET_JOB_ID" >> {ledger}'
            [steps.c]
            parents = ["b"]
            command = 'echo "c $MUPPET_JOB_ID" >> {ledger}'
            """,
    }


DAEMON = """
[daemon]
database = "{database}"
state_dir = "{tmp}/state"
output_dir = "{tmp}/lustre"
pipelines = ["pipelines/*.toml"]
[api]
listen = "127.0.0.1:0"
{api}
[web]
listen = ""
[stakeholders.ops]
name = "Operations"
[products.arome]
name = "AROME"
file_count = 2
[backends.lustre-a]
name = "Lustre A"
url = "file://{tmp}/lustre"
[index]
outputs_backend = "lustre-a"
[executors.local]
type = "local"
max_jobs = 8
"""


def write_config(tmp_path: Path, database_url: str, api: str = "") -> Path:
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    for name, text in pipelines(tmp_path).items():
        (tmp_path / "pipelines" / f"{name}.toml").write_text(textwrap.dedent(text))
    path = tmp_path / "muppet.toml"
    path.write_text(DAEMON.format(database=database_url, tmp=tmp_path, api=textwrap.dedent(api)))
    return path


async def start(nursery: trio.Nursery, path: Path) -> str:
    port = await nursery.start(daemon.serve, load_config(path))
    return f"ws://127.0.0.1:{port}"


async def muppet(url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**ENV, **({"MUPPET_TOKEN": token} if token else {})}
    with trio.fail_after(DEADLINE):  # a safety net against a hang
        done = await trio.run_process([*MUPPET, *args, "--api", url], capture_stdout=True, capture_stderr=True,
                                      check=False, env=env)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def open_gate(tmp_path: Path, run_id: int) -> None:
    (tmp_path / f"open-{run_id}").touch()


async def jobs_of(client: Any, run_id: int) -> dict[str, list[dict]]:
    """A run's jobs by step, oldest first."""
    run = await client.call("runs.get", {"run_id": run_id})
    steps: dict[str, list[dict]] = {}
    for job in sorted(run["jobs"], key=lambda j: j["id"]):
        steps.setdefault(job["step"], []).append(job)
    return steps


async def newest(client: Any, run_id: int) -> dict[str, list[dict]]:
    """The newest job of each slot, by step."""
    return {step: [j for j in jobs if j["successor"] is None] for step, jobs in (await jobs_of(client, run_id)).items()}


async def wait_state(client: Any, run_id: int, step: str, states: set[str]) -> list[dict]:
    """The newest jobs of ``step`` once every one of them is in ``states``."""
    async def reached() -> list[dict] | None:
        jobs = (await newest(client, run_id))[step]
        return jobs if all(j["state"] in states for j in jobs) else None

    found: list[dict] = await wait_until_async(reached, DEADLINE, f"run {run_id} {step} {sorted(states)}")
    return found


async def wait_run(client: Any, run_id: int, states: set[str]) -> dict:
    async def reached() -> dict | None:
        run = await client.call("runs.get", {"run_id": run_id})
        return run if run["state"] in states else None

    found: dict = await wait_until_async(reached, DEADLINE, f"run {run_id} {sorted(states)}")
    return found


async def operator_events(client: Any) -> list[dict]:
    return [e["data"] for e in await client.call("events.list", {"kinds": ["operator"]})]


async def refused(client: Any, method: str, params: dict, code: int) -> str:
    with pytest.raises(RpcError) as caught:
        await client.call(method, params)
    assert caught.value.code == code, caught.value
    return caught.value.message


async def trigger(client: Any, pipeline: str, reference_time: str = REF) -> int:
    run_id: int = (await client.call("runs.trigger", {"pipeline": pipeline, "reference_time": reference_time,
                                                      "reason": "test"}))["run_id"]
    return run_id


# --- whole runs -------------------------------------------------------------------------------


async def test_hold_release_and_kill_a_whole_run(nursery, tmp_path, database_url):
    url = await start(nursery, write_config(tmp_path, database_url))
    async with connect(url) as client:
        run_id = await trigger(client, "ops")
        await wait_state(client, run_id, "gate", {"running"})

        held = await muppet(url, "hold", str(run_id), "--run", "--reason", "disk on lustre-a")
        assert (held.returncode, held.stdout) == (0, f"run {run_id}: hold of 3 job(s)\n"), held.stderr
        steps = await newest(client, run_id)
        assert [j["state"] for j in steps["make"] + steps["last"]] == ["held"] * 3
        assert {j["reason"] for j in steps["make"] + steps["last"]} == {"held by operator: disk on lustre-a"}
        assert steps["gate"][0]["state"] == "running"
        message = await refused(client, "runs.hold", {"run_id": run_id}, CONFLICT)
        assert message == f"run {run_id} has no waiting job to hold"

        released = await muppet(url, "release", str(run_id), "--run", "--json")
        assert (released.returncode, json.loads(released.stdout)) == (0, {"run_id": run_id, "jobs": 3})
        steps = await newest(client, run_id)
        assert [j["state"] for j in steps["make"] + steps["last"]] == ["waiting"] * 3
        assert all(j["reason"].startswith("parents: ") for j in steps["make"] + steps["last"]), steps

        killed = await muppet(url, "kill", str(run_id), "--run", "--reason", "bad input")
        assert (killed.returncode, killed.stdout) == (0, f"run {run_id}: kill of 4 job(s)\n"), killed.stderr
        run = await wait_run(client, run_id, {"failed"})
        assert sorted(j["state"] for j in run["jobs"]) == ["killed"] * 4
        # the running one too: who asked and why outlive the executor's kill
        assert {j["reason"] for j in run["jobs"]} == {"killed by operator: bad input"}
        assert await refused(client, "runs.kill", {"run_id": run_id}, CONFLICT) == (
            f"run {run_id} has ended (failed): no job of it is left to kill; "
            f"muppet rerun {run_id} --run --failed runs its failed slots again")

        events = await operator_events(client)
        assert [(e["action"], e["by"], e["reason"]) for e in events] == [
            ("trigger", "local", "test"), ("hold", "local", "disk on lustre-a"), ("release", "local", ""),
            ("kill", "local", "bad input"),
        ]
        assert events[1]["target"]["run_id"] == run_id and len(events[1]["target"]["job_ids"]) == 3


# --- set an outcome, bypass a step ------------------------------------------------------------


async def test_set_outcomes_by_hand(nursery, tmp_path, database_url):
    url = await start(nursery, write_config(tmp_path, database_url))
    async with connect(url) as client:
        run_id = await trigger(client, "ops")
        (gate,) = await wait_state(client, run_id, "gate", {"running"})
        message = await refused(client, "jobs.set", {"job_id": gate["id"], "outcome": "succeeded"}, CONFLICT)
        assert message == (f"job {gate['id']} is running: kill it first (muppet kill {gate['id']}), "
                           "then set its outcome")
        # a waiting job ends as set; its sibling and the step after still wait for the gate
        make0 = (await newest(client, run_id))["make"][0]
        done = await muppet(url, "set", str(make0["id"]), "--succeeded", "--reason", "made by hand")
        assert (done.returncode, done.stdout) == (0, f"job {make0['id']}: set (now succeeded)\n"), done.stderr
        make0 = await client.call("jobs.get", {"job_id": make0["id"]})
        assert (make0["state"], make0["exit_code"], make0["reason"]) == (
            "succeeded", None, "set succeeded by operator: made by hand")
        open_gate(tmp_path, run_id)
        run = await wait_run(client, run_id, {"succeeded"})
        assert [j["state"] for j in run["jobs"]] == ["succeeded"] * 4
        message = await refused(client, "jobs.set", {"job_id": make0["id"], "outcome": "succeeded"}, CONFLICT)
        assert "only a job that ended without success can be set succeeded" in message

        # a job that failed, set succeeded: a new job of its slot, and what was skipped runs
        chain = await trigger(client, "chain")
        await wait_run(client, chain, {"failed"})
        steps = await newest(client, chain)
        assert [steps[s][0]["state"] for s in "abc"] == ["failed", "skipped", "skipped"]
        failed = steps["a"][0]
        answer = json.loads((await muppet(url, "set", str(failed["id"]), "--succeeded", "--json")).stdout)
        assert answer["state"] == "succeeded" and answer["job_id"] != failed["id"]
        run = await wait_run(client, chain, {"succeeded"})
        steps = await newest(client, chain)
        assert [steps[s][0]["state"] for s in "abc"] == ["succeeded"] * 3
        assert steps["a"][0]["id"] == answer["job_id"] and steps["a"][0]["predecessor"] == failed["id"]

        neither = await muppet(url, "set", str(failed["id"]))
        assert (neither.returncode, neither.stderr) == (1, "muppet: error: give --succeeded or --failed\n")
        actions = [(e["action"], e["target"].get("outcome")) for e in await operator_events(client)]
        assert actions.count(("set", "succeeded")) == 2


async def test_bypass_a_step_registers_nothing(nursery, tmp_path, database_url):
    url = await start(nursery, write_config(tmp_path, database_url))
    async with connect(url) as client:
        run_id = await trigger(client, "ops")
        await wait_state(client, run_id, "gate", {"running"})
        message = await refused(client, "runs.bypass", {"run_id": run_id, "step": "gate"}, CONFLICT)
        assert message.startswith(f"run {run_id}: step gate has jobs running (") and "kill them first" in message
        assert await refused(client, "runs.bypass", {"run_id": run_id, "step": "nosuch"}, NOT_FOUND) == (
            f"run {run_id}: ops has no step 'nosuch'")

        done = await muppet(url, "bypass", str(run_id), "make", "--reason", "model down")
        assert (done.returncode, done.stdout) == (0, f"run {run_id}: make bypassed (2 job(s))\n"), done.stderr
        open_gate(tmp_path, run_id)
        run = await wait_run(client, run_id, {"succeeded"})
        states = {(j["step"], j["state"]) for j in run["jobs"]}
        assert states == {("gate", "succeeded"), ("make", "bypassed"), ("last", "succeeded")}
        # a bypassed step is no success of the product: nothing in the index
        assert await client.call("instances.latest", {"product": "arome"}) is None
        message = await refused(client, "runs.bypass", {"run_id": run_id, "step": "make"}, CONFLICT)
        assert message == f"run {run_id} has ended (succeeded): no job of it is left to bypass"
        listed = await muppet(url, "jobs", str(run_id))
        assert "bypassed" in listed.stdout


# --- reruns -----------------------------------------------------------------------------------


async def test_rerun_downstream_and_a_runs_failed_slots(nursery, tmp_path, database_url):
    url = await start(nursery, write_config(tmp_path, database_url))
    ledger = tmp_path / "ledger"
    async with connect(url) as client:
        chain = await trigger(client, "chain")
        run = await wait_run(client, chain, {"failed"})
        message = await refused(client, "runs.rerun", {"run_id": chain + 1000}, NOT_FOUND)
        assert message == f"unknown run {chain + 1000}"
        (tmp_path / f"ok-{chain}").touch()
        done = await muppet(url, "rerun", str(chain), "--run", "--failed", "--reason", "input fixed")
        assert (done.returncode, done.stdout) == (0, f"run {chain}: 3 slot(s) run again\n"), done.stderr
        await wait_run(client, chain, {"succeeded"})
        assert [line.split()[0] for line in ledger.read_text().splitlines()] == ["a", "a", "b", "c"]
        message = await refused(client, "runs.rerun", {"run_id": chain}, CONFLICT)
        assert message == f"run {chain} has no failed, killed, expired or skipped slot that can run again now"

        # a succeeded job and everything after it, in order
        first_a = (await newest(client, chain))["a"][0]
        done = await muppet(url, "rerun", str(first_a["id"]), "--downstream")
        assert done.returncode == 0 and done.stdout.startswith(f"job {first_a['id']}: rerun as job "), done.stderr
        await wait_until_async(lambda: _lines(ledger, 7), DEADLINE, "a, b and c run again")
        await wait_run(client, chain, {"succeeded"})
        assert [line.split()[0] for line in ledger.read_text().splitlines()][4:] == ["a", "b", "c"]
        steps = await jobs_of(client, chain)
        assert [len(steps[s]) for s in "abc"] == [3, 3, 3]

        wrong = await muppet(url, "rerun", str(chain), "--run")
        assert (wrong.returncode, wrong.stderr) == (1, "muppet: error: say which slots of the run: --failed "
                                                      "(every failed, killed, expired or skipped slot)\n")
        events = [e for e in await operator_events(client) if e["action"] == "rerun"]
        assert [e["target"].get("downstream") for e in events] == [None, True]
        assert events[0]["target"]["run_id"] == chain and events[0]["reason"] == "input fixed"
        assert run["state"] == "failed"


async def _lines(path: Path, count: int) -> bool:
    return await trio.Path(path).exists() and len((await trio.Path(path).read_text()).splitlines()) >= count


# --- pause and resume, drain and undrain ----------------------------------------------------------


async def test_pause_and_drain_hold_new_jobs_and_survive_a_restart(nursery, tmp_path, database_url):
    config = write_config(tmp_path, database_url)
    async with trio.open_nursery() as first:
        url = await start(first, config)
        async with connect(url) as client:
            paused = await muppet(url, "pause", "chain", "--reason", "upstream late")
            assert (paused.returncode, paused.stdout) == (0, "pipeline chain: paused\n"), paused.stderr
            assert (await refused(client, "pipelines.pause", {"pipeline": "chain"}, CONFLICT)).startswith(
                "pipeline chain is paused already (by local since ")
            assert await refused(client, "pipelines.pause", {"pipeline": "nosuch"}, NOT_FOUND) == (
                "unknown pipeline 'nosuch'")
            chain = await trigger(client, "chain")
            (tmp_path / f"ok-{chain}").touch()
            (a,) = (await newest(client, chain))["a"]
            assert a["state"] == "waiting" and "paused" in a["reason"], a
            drained = await muppet(url, "drain", "--reason", "cluster maintenance")
            assert (drained.returncode, drained.stdout) == (0, "the daemon is draining: no new job starts\n")
            ops = await trigger(client, "ops")
            (gate,) = (await newest(client, ops))["gate"]
            assert gate["state"] == "waiting" and "drain" in gate["reason"], gate
            status = await muppet(url, "status")
            assert "draining    no new job starts: by local since " in status.stdout, status.stdout
            assert "paused      chain: by local since " in status.stdout
            assert ": upstream late (muppet resume chain)" in status.stdout
        first.cancel_scope.cancel()

    # a restart keeps both orders
    url = await start(nursery, config)
    async with connect(url) as client:
        status = await client.call("daemon.status")
        assert status["draining"]["reason"] == "cluster maintenance"
        assert list(status["paused"]) == ["chain"] and status["paused"]["chain"]["by"] == "local"
        assert (await newest(client, ops))["gate"][0]["state"] == "waiting"
        assert await refused(client, "daemon.drain", {}, CONFLICT) == (
            f"the daemon is draining already (by local since {status['draining']['since']})")
        undrained = await muppet(url, "undrain")
        assert (undrained.returncode, undrained.stdout) == (0, "the daemon starts jobs again\n")
        await wait_state(client, ops, "gate", {"running"})
        assert (await newest(client, chain))["a"][0]["state"] == "waiting", "chain is still paused"
        resumed = await muppet(url, "resume", "chain")
        assert (resumed.returncode, resumed.stdout) == (0, "pipeline chain: resumed\n"), resumed.stderr
        await wait_run(client, chain, {"succeeded"})
        assert await refused(client, "pipelines.resume", {"pipeline": "chain"}, CONFLICT) == (
            "pipeline chain is not paused")
        assert await refused(client, "daemon.undrain", {}, CONFLICT) == "the daemon is not draining"
        status = await client.call("daemon.status")
        assert (status["draining"], status["paused"]) == (None, {})
        events = await muppet(url, "events", "--kind", "operator")
        lines = events.stdout.splitlines()
        assert [line.split()[4].rstrip(":") for line in lines] == [
            "pause", "trigger", "drain", "trigger", "undrain", "resume"], lines
        assert lines[0].endswith("operator local pause pipeline=chain: upstream late"), lines[0]
        open_gate(tmp_path, ops)


# --- roles ------------------------------------------------------------------------------------


def tokens(tmp_path: Path) -> dict[str, str]:
    """Three tokens, one per role; their secrets by role."""
    secrets = {role: f"secret-{role}" for role in ("read", "write", "admin")}
    lines = []
    for role, secret in secrets.items():
        lines += [f"[tokens.{role}-desk]", f'role = "{role}"',
                  f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"']
    (tmp_path / "tokens.toml").write_text("\n".join(lines) + "\n")
    return secrets


async def test_roles_and_who_did_what(nursery, tmp_path, database_url):
    secrets = tokens(tmp_path)
    url = await start(nursery, write_config(tmp_path, database_url, f'tokens_file = "{tmp_path}/tokens.toml"'))
    async with connect(url, token=secrets["read"]) as reader:
        message = await refused(reader, "runs.trigger", {"pipeline": "chain"}, UNAUTHORIZED)
        assert message == "unauthorized: runs.trigger needs a write token; token 'read-desk' has role 'read'"
    async with connect(url, token=secrets["write"]) as writer:
        message = await refused(writer, "daemon.drain", {}, UNAUTHORIZED)
        assert message == "unauthorized: daemon.drain needs an admin token; token 'write-desk' has role 'write'"
        await writer.call("pipelines.pause", {"pipeline": "chain", "reason": "why not"})
    done = await muppet(url, "drain", token=secrets["admin"])
    assert done.returncode == 0, done.stderr
    async with connect(url, token=secrets["admin"]) as admin:
        events = await operator_events(admin)
    assert [(e["action"], e["by"], e["reason"]) for e in events] == [
        ("pause", "write-desk", "why not"), ("drain", "admin-desk", "")]
