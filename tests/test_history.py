"""What the daemon keeps of the past ([daemon] keep_history, keep_job_dirs;
docs/operations.md, "What is kept"), on SQLite and PostgreSQL: pruning in
chunks through the database task removes exactly what is older and keeps
the rest and the event numbering; a reader of pruned events is told where
the kept ones start (the API and `muppet events`); job directories go after
keep_job_dirs, never an unfinished job's; a real daemon does it all by
itself."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
import trio
import trio_websocket
from test_db import T0, make_job, make_run, raw  # tests/ is on sys.path
from waiting import wait_until_async

from muppet import codec, daemon, history
from muppet.api.client import RpcError, connect
from muppet.config import load_config
from muppet.db import open_store, reads, writes
from muppet.db import task as db_task
from muppet.db.health import DatabaseHealth
from muppet.executor.jobdir import JobDir
from muppet.index import queries
from muppet.messages import NOT_FOUND, NewRun, Pruned, PruneWrite
from muppet.model import IntercycleParent, JobLog, JobState, Pipeline, RunCause, RunState, Step

DEADLINE = 60


def _pipeline(name: str, command: str = "true", **step: object) -> Pipeline:
    return Pipeline(name, "ops", {"a": Step("a", command, **step)})  # type: ignore[arg-type]


def _made(pipeline: Pipeline) -> tuple[str, str]:
    text = codec.definition_text(pipeline)
    return codec.definition_hash(text), text


class History:
    """Runs written as the daemon's writer writes them, each with its jobs
    (ended as the run), log tails and definition."""

    def __init__(self, store) -> None:
        self.store = store
        self.next_job = 1
        self.jobs: dict[int, list[int]] = {}

    def run(self, run_id: int, pipeline: Pipeline, hours_before: int = 0, *, state: RunState = RunState.SUCCEEDED,
            ended: float | None = None, cause: RunCause = RunCause.MANUAL, jobs: int = 2) -> None:
        key, text = _made(pipeline)
        run = attrs.evolve(make_run(run_id, pipeline.name), reference_time=T0 - timedelta(hours=hours_before),
                           state=state, cause=cause, ended_at=ended, definition=key)
        finished = state.finished
        made = tuple(
            make_job(self.next_job + i, run_id, pipeline.name, step="a", index=i,
                     state=JobState.SUCCEEDED if finished else JobState.RUNNING, ended_at=ended)
            for i in range(jobs)
        )
        self.next_job += jobs
        self.jobs[run_id] = [job.id for job in made]
        logs = [JobLog(job.id, f"out {job.id}", "") for job in made if finished]
        writes.write(self.store, [NewRun(run, made, definition=text), *logs])


async def prune_through_the_task(store, before: float, limit: int) -> list[Pruned]:
    """``history.prune`` against a real database task; every chunk's answer."""
    chunks: list[Pruned] = []
    to_db, inbox = trio.open_memory_channel(10)
    to_scheduler, _ = trio.open_memory_channel(math.inf)
    asked, asks = trio.open_memory_channel(10)

    async def watch() -> None:
        # between history.prune and the database task: each chunk is seen
        async for message in asks:
            reply, replies = trio.open_memory_channel(1)
            await to_db.send(PruneWrite(message.change, reply))
            chunk = await replies.receive()
            chunks.append(chunk)
            message.reply.send_nowait(chunk)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db_task.run, store, inbox, to_scheduler)
            nursery.start_soon(watch)
            await history.prune(asked, before, limit=limit)
            nursery.cancel_scope.cancel()
    return chunks


def _ids(url: str, table: str, column: str = "id") -> set[int]:
    return {row[0] for row in raw(url, f"SELECT {column} FROM {table}")}


CYCLING = Pipeline("cy", "ops", {"a": Step("a", "true", intercycle=(IntercycleParent("a", "-PT6H"),))})


async def test_pruning_removes_exactly_what_is_older_and_keeps_the_numbering(database_url):
    plain, older_plain, cron = _pipeline("p"), _pipeline("p", "false"), _pipeline("c")
    with open_store(database_url) as store:
        h = History(store)
        long_ago = time.time() - 1000
        # old: finished runs that go, and those kept whatever their age
        h.run(1, plain, ended=long_ago)
        h.run(2, plain, 1, state=RunState.FAILED, ended=long_ago, jobs=1300)  # over several chunks
        h.run(3, plain, 2, state=RunState.RUNNING)  # unfinished: kept
        h.run(4, cron, 1, ended=long_ago, cause=RunCause.CRON)  # an older cron run: goes
        h.run(5, cron, 0, ended=long_ago, cause=RunCause.CRON)  # c's newest cron run: kept
        h.run(6, CYCLING, 6, ended=long_ago)  # the parent of run 7: kept
        h.run(7, CYCLING, 0, state=RunState.RUNNING)
        h.run(8, CYCLING, 12, ended=long_ago)  # nobody's parent: goes
        h.run(9, older_plain, 3, state=RunState.EXPIRED, ended=long_ago)  # the last run of its definition
        old_events = {e[0] for e in reads.events_since(store, 0, limit=100_000)}
        edge = time.time()
        # new: ended after the edge
        h.run(10, plain, 4, ended=time.time())
        new_events = {e[0] for e in reads.events_since(store, max(old_events), limit=100_000)}
        kept_runs = {3, 5, 6, 7, 10}
        kept_jobs = {job for run in kept_runs for job in h.jobs[run]}
        gone_jobs = {job for run, jobs in h.jobs.items() if run not in kept_runs for job in jobs}
        last_event = reads.last_event_id(store)

        chunks = await prune_through_the_task(store, edge, limit=500)

        assert _ids(database_url, "runs") == kept_runs
        assert _ids(database_url, "jobs") == kept_jobs
        assert _ids(database_url, "job_logs", "job_id") == {j for j in kept_jobs if j not in h.jobs[3] + h.jobs[7]}
        assert _ids(database_url, "events") == new_events, "every event before the edge goes, none after it"
        hashes = {row[0] for row in raw(database_url, "SELECT hash FROM definitions")}
        assert hashes == {_made(plain)[0], _made(cron)[0], _made(CYCLING)[0]}, "run 9's definition goes with it"
        # several transactions, none much bigger than asked
        assert len(chunks) >= 4, chunks
        assert all(c.runs + c.jobs + c.logs + c.events <= 501 for c in chunks), chunks
        assert sum(c.jobs for c in chunks) == len(gone_jobs) and sum(c.runs for c in chunks) == 5
        assert sum(c.events for c in chunks) == len(old_events)
        # the numbering goes on: the next event, run and job come after every one ever written
        assert reads.oldest_event(store) == min(new_events) == max(old_events) + 1
        assert reads.last_event_id(store) == last_event
        snapshot = reads.load_snapshot(store)
        assert (snapshot.next_run_id, snapshot.next_job_id) == (11, h.next_job)
        writes.write(store, [attrs.evolve(make_run(10, "p"), state=RunState.FAILED, ended_at=time.time())])
        assert reads.last_event_id(store) == last_event + 1
        # a pass over what is left finds nothing more
        again = await prune_through_the_task(store, edge, limit=500)
        assert [c.rows for c in again] == [0]


async def test_a_reader_of_pruned_events_is_told_where_the_kept_ones_start(database_url):
    """Everything old goes (no cron run, nothing unfinished): the log holds
    no event; the numbers go on, and a reader asking from before the edge
    gets the marker first, whatever its filters, unless its kinds leave it
    out."""
    with open_store(database_url) as store:
        h = History(store)
        h.run(1, _pipeline("p"), ended=time.time() - 1000)
        h.run(2, _pipeline("p"), 1, ended=time.time() - 1000)
        last = reads.last_event_id(store)
        await prune_through_the_task(store, time.time(), limit=1000)
        assert _ids(database_url, "runs") == set() and _ids(database_url, "events") == set()
        assert (reads.last_event_id(store), reads.oldest_event(store)) == (last, last + 1)
        snapshot = reads.load_snapshot(store)
        assert (snapshot.next_run_id, snapshot.next_job_id) == (3, 5)
        marker = queries.events_since(store, 0)
        assert [(e["id"], e["kind"], e["data"]) for e in marker] == [(last, "pruned", {"oldest": last + 1})]
        h.run(3, _pipeline("p"), 2, ended=time.time())
        assert [e["id"] for e in queries.events_since(store, 0)] == [last, last + 1, last + 2, last + 3]
        assert queries.events_since(store, last - 5, products=["arome"])[0]["kind"] == "pruned"
        assert queries.events_since(store, 0, kinds=["run"])[0]["id"] == last + 1
        assert queries.events_since(store, 0, kinds=["run", "pruned"])[0]["kind"] == "pruned"
        assert queries.events_since(store, last)[0]["id"] == last + 1, "nothing asked for was pruned"


# --- through the daemon's API and `muppet events` ------------------------------------------------

DAEMON = """
[daemon]
database = "{database}"
state_dir = "{tmp}/state"
output_dir = "{tmp}/out"
pipelines = ["pipelines/*.toml"]
keep_history = "{keep_history}"
keep_job_dirs = "{keep_job_dirs}"
[api]
listen = "127.0.0.1:0"
[web]
listen = ""
[stakeholders.ops]
name = "Operations"
"""

PIPELINES = {
    "quick": '[pipeline]\nname = "quick"\nowner = "ops"\n[steps.a]\ncommand = "true"\n',
    # runs until the test makes the gate file
    "gated": ('[pipeline]\nname = "gated"\nowner = "ops"\n[steps.a]\n'
              'command = "until [ -e {tmp}/gate ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done"\n'),
}


def make_config(tmp_path: Path, database_url: str, keep_history: str = "P30D", keep_job_dirs: str = "P7D"):
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    for name, text in PIPELINES.items():
        (tmp_path / "pipelines" / f"{name}.toml").write_text(text.format(tmp=tmp_path))
    path = tmp_path / "muppet.toml"
    path.write_text(textwrap.dedent(DAEMON.format(
        database=database_url, tmp=tmp_path, keep_history=keep_history, keep_job_dirs=keep_job_dirs)))
    return load_config(path)


async def _ended(client, run_id: int) -> dict | None:
    run = await client.call("runs.get", {"run_id": run_id})
    return run if run["state"] not in ("running", "queued") else None


async def _gone(client, run_id: int) -> bool:
    try:
        await client.call("runs.get", {"run_id": run_id})
    except RpcError as error:
        return error.code == NOT_FOUND
    return False


async def _muppet(*args: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "muppet.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _read_until(stream, wanted: str, into: bytearray) -> str:
    while wanted.encode() not in into:
        piece = await stream.receive_some(65536)
        if not piece:
            raise AssertionError(f"the stream ended without {wanted!r}: {into.decode()!r}")
        into += piece
    return into.decode()


async def test_subscribers_and_muppet_events_are_told_of_pruned_events(nursery, tmp_path, database_url):
    config = make_config(tmp_path, database_url)
    async with trio.open_nursery() as first:
        port = await first.start(daemon.serve, config)
        async with connect(f"ws://127.0.0.1:{port}") as client:
            run_id = (await client.call("runs.trigger", {"pipeline": "quick"}))["run_id"]
            await wait_until_async(lambda: _ended(client, run_id), DEADLINE, "the quick run's end")
        first.cancel_scope.cancel()
    # pruned while no daemon runs: every event so far, and the run
    with open_store(config.daemon.database) as store:
        last = reads.last_event_id(store)
        await prune_through_the_task(store, time.time() + 1, limit=1000)
    port = await nursery.start(daemon.serve, config)
    api = f"ws://127.0.0.1:{port}"
    async with connect(api) as client:
        assert await _gone(client, run_id)
        listed = await client.call("events.list", {"since": 0})
        assert listed[0] == {"id": last, "at": listed[0]["at"], "kind": "pruned", "product": None, "subject_id": 0,
                             "data": {"oldest": last + 1}}
        assert all(e["id"] > last for e in listed[1:])
        assert (await client.call("events.list", {"since": last}))[:1] != [listed[0]]
        events = await client.subscribe(since=3)
        assert (await events.__anext__())["kind"] == "pruned"
        # a filter that leaves the marker out: the reply says where the kept events start
        async with trio_websocket.open_websocket_url(api) as ws:
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "events.subscribe",
                                              "params": {"since": 3, "kinds": ["run"]}, "id": 1}))
            reply = json.loads(await ws.get_message())
        assert reply["result"]["oldest"] == last + 1
        run_id = (await client.call("runs.trigger", {"pipeline": "quick"}))["run_id"]
        await wait_until_async(lambda: _ended(client, run_id), DEADLINE, "the second run's end")

    done = await trio.run_process([sys.executable, "-m", "muppet.cli", "events", "--api", api, "--kind", "run"],
                                  capture_stdout=True, capture_stderr=True)
    assert done.stderr.decode() == (f"muppet: events 1 to {last:,} were pruned ([daemon] keep_history); "
                                    f"the oldest kept is {last + 1:,}\n")
    assert f" run {run_id} quick " in done.stdout.decode()
    follow = await _muppet("events", "--api", api, "--follow", "--since", "2")
    try:
        seen, said = bytearray(), bytearray()
        with trio.fail_after(DEADLINE):
            await _read_until(follow.stderr, "the oldest kept is", said)
            await _read_until(follow.stdout, f" run {run_id} quick ", seen)
        assert said.decode().startswith(f"muppet: events 3 to {last:,} were pruned")
    finally:
        follow.kill()
        await follow.wait()


async def test_a_daemon_prunes_and_removes_old_job_directories_by_itself(nursery, tmp_path, database_url,
                                                                       monkeypatch, caplog):
    """keep_history and keep_job_dirs of a few seconds, a pass every 0.2 s:
    an ended run goes with its job's directory, while a job still running
    keeps its own, which goes once that job has ended and aged; each pass
    says in one log line what it removed."""
    caplog.set_level(logging.INFO, logger="muppet.history")
    monkeypatch.setattr(history, "FIRST", 0.0)
    monkeypatch.setattr(history, "PASS", 0.2)
    config = make_config(tmp_path, database_url, keep_history="PT3S", keep_job_dirs="PT1S")
    port = await nursery.start(daemon.serve, config)
    state_dir = config.daemon.state_dir
    async with connect(f"ws://127.0.0.1:{port}") as client:
        gated = (await client.call("runs.trigger", {"pipeline": "gated"}))["run_id"]
        (held,) = await wait_until_async(
            lambda: client.call("jobs.list", {"run_id": gated, "state": "running"}), DEADLINE, "the gated job running")
        quick = (await client.call("runs.trigger", {"pipeline": "quick"}))["run_id"]
        (job,) = (await wait_until_async(lambda: _ended(client, quick), DEADLINE, "the quick run's end"))["jobs"]
        quick_dir, held_status = JobDir(state_dir, job["id"]).root, JobDir(state_dir, held["id"]).status
        assert await trio.Path(quick_dir).is_dir()
        await wait_until_async(lambda: not os.path.exists(quick_dir), DEADLINE, "the quick job's directory removed")
        # the quick job's directory went by a pass after the gated job started: that one stays
        assert await trio.Path(held_status).exists()
        await wait_until_async(lambda: _gone(client, quick), DEADLINE, "the quick run pruned")
        assert await trio.Path(held_status).exists()
        assert (await client.call("runs.get", {"run_id": gated}))["state"] == "running"
        await trio.Path(tmp_path / "gate").touch()
        await wait_until_async(lambda: _ended(client, gated), DEADLINE, "the gated run's end")
        await wait_until_async(lambda: not os.path.exists(held_status), DEADLINE, "the gated job's directory removed")
        await wait_until_async(lambda: _gone(client, gated), DEADLINE, "the gated run pruned")
        listed = await client.call("events.list", {"since": 0})
        assert listed[0]["kind"] == "pruned"
    passes = [r.getMessage() for r in caplog.records if r.name == "muppet.history"]
    assert all(line.startswith("history: pruned what ended before ") for line in passes), passes
    assert any(re.search(r": 1 runs, 1 jobs, \d+ log tails, [1-9]\d* events, \d+ definitions; ", line)
               for line in passes), passes
    assert any(re.search(r"removed the job directories of 1 jobs ended before .* \(keep_job_dirs PT1S\)", line)
               for line in passes), passes


# --- job directories ------------------------------------------------------------------------------


async def test_only_the_directories_of_jobs_ended_long_enough_ago_go(tmp_path, database_url):
    state_dir = str(tmp_path / "state")
    with open_store(database_url) as store:
        h = History(store)
        long_ago = time.time() - 1000
        h.run(1, _pipeline("p"), ended=long_ago)  # jobs 1, 2: old
        h.run(2, _pipeline("p"), 1, ended=time.time())  # jobs 3, 4: ended just now
        h.run(3, _pipeline("p"), 2, state=RunState.RUNNING)  # jobs 5, 6: running
        h.run(4, _pipeline("p"), 3, ended=long_ago)  # jobs 7, 8: old, pruned below
        await prune_through_the_task(store, time.time() - 500, limit=1000)
        assert 4 not in _ids(database_url, "runs")
        # 9 and 10: directories of jobs the database has not heard of (nor pruned)
        _job_files(state_dir, range(1, 11))
        before = time.time() - 500
        removed = await history.remove_old_job_files(store, state_dir, before, DatabaseHealth("test"))
        assert sorted(removed) == [1, 2, 7, 8]
        left = sorted(int(name) for name in os.listdir(os.path.join(state_dir, "jobs")))
        assert left == [3, 4, 5, 6, 9, 10]
        assert sorted(int(name) for name in os.listdir(os.path.join(state_dir, "scratch"))) == left


def _job_files(state_dir: str, ids: range) -> None:
    for job_id in ids:
        for part in ("jobs", "scratch"):
            Path(state_dir, part, str(job_id)).mkdir(parents=True)
            Path(state_dir, part, str(job_id), "stdout").write_text("x")


@pytest.mark.parametrize("keep", ["P30D", "PT36H", "P1M"])
def test_the_edge_of_history(keep):
    now = time.time()
    edge = history.cutoff(now, keep)
    assert 0 < now - edge <= 31 * 86400 and (keep != "PT36H" or now - edge == pytest.approx(36 * 3600))
