"""The daemon through a database outage: a real PostgreSQL stopped while jobs
run, a client queries and a subscriber follows (docs/operations.md, "When the
database is away"). The daemon is its own process: it must outlive the outage
with the same pid, lose no job and start none twice, and the subscriber must
get every event, none twice."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import trio
from services import free_port  # tests/ is on sys.path
from waiting import daemon_answers, wait_until_async  # tests/ is on sys.path

from muppet.api.client import connect
from muppet.api.protocol import DATABASE_UNAVAILABLE, RpcError

MUPPET = [sys.executable, "-m", "muppet.cli"]
JOBS = 40


def write_config(tmp_path: Path, database_url: str, port: int) -> Path:
    (tmp_path / "pipelines").mkdir()
    # each job appends its index to a ledger outside the state directory:
    # the ledger, not the database, says what ran
    (tmp_path / "pipelines" / "fan.toml").write_text(textwrap.dedent(f"""
        [stakeholders.ops]
        name = "Operations"
        [pipeline]
        name = "fan"
        owner = "ops"
        [steps.work]
        jobs = {JOBS}
        command = "sleep 0.2; echo $MUPPET_JOB_INDEX >> {tmp_path / 'ledger'}"
        """))
    config = tmp_path / "muppet.toml"
    config.write_text(textwrap.dedent(f"""
        [daemon]
        database = "{database_url}"
        state_dir = "{tmp_path / 'state'}"
        output_dir = "{tmp_path / 'output'}"
        pipelines = ["pipelines/*.toml"]
        [api]
        listen = "127.0.0.1:{port}"
        [executors.local]
        type = "local"
        max_jobs = 4
        """))
    return config


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("outage", [1.0, 30.0], ids=["1s", "30s"])
async def test_a_postgres_outage_loses_nothing(tmp_path, postgres_server, postgres_url, outage):
    port = free_port()
    config = write_config(tmp_path, postgres_url, port)
    url = f"ws://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    with await trio.to_thread.run_sync(log.open, "wb") as stderr:
        process = await trio.lowlevel.open_process([*MUPPET, "daemon", "--config", str(config)], stderr=stderr)
    ledger = tmp_path / "ledger"
    answers: list[str] = []
    try:
        await wait_until_async(lambda: daemon_answers(url), 60, "the daemon to answer")
        async with connect(url) as client, connect(url) as subscriber_client, connect(url) as querier:
            events = await subscriber_client.subscribe(kinds=["run", "job"])
            seen: list[int] = []

            async def follow() -> None:
                async for event in events:
                    seen.append(event["id"])

            async def query() -> None:
                while True:
                    try:
                        await querier.call("runs.list", {"pipeline": "fan"})
                        answers.append("ok")
                    except RpcError as exc:
                        answers.append(str(exc.code))
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                nursery.start_soon(query)
                run_id = (await client.call("runs.trigger", {"pipeline": "fan"}))["run_id"]
                # the outage begins while jobs run
                await wait_until_async(lambda: _lines(ledger) >= 4, 60, "four jobs to finish")
                await trio.to_thread.run_sync(postgres_server.ctl, "stop", "immediate")
                await trio.sleep(outage)  # the outage itself: its length is the scenario
                await trio.to_thread.run_sync(postgres_server.ctl, "start")
                with trio.fail_after(120):
                    run = await _wait_run(client, run_id)
                after = await client.call("events.list", {"since": 0, "kinds": ["run", "job"], "limit": 1000})
                last = after[-1]["id"]
                await wait_until_async(lambda: _has(seen, last), 30, "the subscriber to see the last event")
                nursery.cancel_scope.cancel()
        assert process.returncode is None, "the daemon exited"
    finally:
        process.terminate()
        with trio.move_on_after(30):
            await process.wait()
        if process.returncode is None:
            process.kill()
    text = log.read_text()
    assert run["state"] == "succeeded", text[-3000:]
    indexes = ledger.read_text().split()
    assert sorted(indexes, key=int) == [str(i) for i in range(JOBS)], "a job lost or run twice"
    assert seen == sorted(set(seen)), "an event twice, or out of order"
    assert seen == [e["id"] for e in after if e["id"] >= seen[0]], "a gap in the subscription"
    assert "Traceback" not in text
    assert text.count("database unavailable:") == 1, text[-3000:]
    assert text.count("available again after") == 1, text[-3000:]
    assert "-32603" not in answers
    if outage >= 30:
        assert str(DATABASE_UNAVAILABLE) in answers
    assert answers[-1] == "ok"


def _lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


async def _has(seen: list[int], event_id: int) -> bool:
    return bool(seen) and seen[-1] >= event_id


async def _wait_run(client, run_id: int) -> dict:
    """The run once it has ended (the caller bounds the wait)."""
    while True:
        try:
            run = await client.call("runs.get", {"run_id": run_id})
        except RpcError as exc:
            if exc.code != DATABASE_UNAVAILABLE:
                raise
        else:
            if run["state"] != "running":
                return run
        await trio.sleep(0.1)
