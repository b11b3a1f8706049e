"""The on-call view of a running daemon: a job's output followed as it grows
(jobs.output, `muppet logs --follow`), the tail that says it is a tail,
`muppet status`, `pipelines`, `show` and `jobs --long`, the log lines for
failures and operators' actions, the page's token (session.authenticate),
and the judgements of muppet/summary.py. A real daemon in-process, real
jobs, the real command as a subprocess."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from waiting import wait_until_async  # tests/ is on sys.path

from muppet import daemon, model, summary
from muppet.api.client import connect
from muppet.api.console import read_output
from muppet.api.protocol import UNAUTHORIZED, RpcError
from muppet.config import load_config

MUPPET = [sys.executable, "-m", "muppet.cli"]

PIPELINES = {
    "slow": """
        [stakeholders.ops]
        name = "Operations"
        [pipeline]
        name = "slow"
        owner = "ops"
        cron = ["0 6 * * *"]
        [steps.count]
        command = 'for i in $(seq 1 30); do echo "line $i é"; sleep 0.05; done'
        [steps.report]
        parents = ["count"]
        command = "echo report"
        """,
    "big": """
        [pipeline]
        name = "big"
        owner = "ops"
        [steps.write]
        command = "head -c 200000 /dev/zero | tr '\\\\0' x; echo; echo the end"
        """,
    "flaky": """
        [pipeline]
        name = "flaky"
        owner = "ops"
        [steps.try]
        command = "exit 3"
        retry = { tries = 2 }
        [steps.wait]
        parents = ["try"]
        command = "true"
        """,
}


def write(folder: Path, extra: str = "") -> Path:
    (folder / "pipelines").mkdir(parents=True, exist_ok=True)
    for name, text in PIPELINES.items():
        (folder / "pipelines" / f"{name}.toml").write_text(textwrap.dedent(text))
    path = folder / "muppet.toml"
    path.write_text(textwrap.dedent(f"""
        [daemon]
        state_dir = "{folder / 'state'}"
        pipelines = ["pipelines/*.toml"]
        [api]
        listen = "127.0.0.1:0"
        [web]
        listen = ""
        """) + textwrap.dedent(extra))
    return path


@pytest.fixture
async def api(nursery, tmp_path):
    config = await trio.to_thread.run_sync(load_config, write(tmp_path))
    port = await nursery.start(daemon.serve, config)
    return f"ws://127.0.0.1:{port}"


async def muppet(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        done = await trio.run_process([*MUPPET, *args], capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def trigger(api: str, pipeline: str) -> dict:
    async with connect(api) as client:
        run_id = (await client.call("runs.trigger", {"pipeline": pipeline}))["run_id"]
        return await client.call("runs.get", {"run_id": run_id})


async def wait_run(api: str, run_id: int) -> dict:
    async with connect(api) as client:
        async def ended() -> dict | None:
            run = await client.call("runs.get", {"run_id": run_id})
            return run if run["state"] != "running" else None

        return await wait_until_async(ended, 60, f"run {run_id} to end")


EXPECTED = "".join(f"line {i} é\n" for i in range(1, 31))


async def test_jobs_output_follows_a_running_job_piece_by_piece(api):
    run = await trigger(api, "slow")
    job_id = run["jobs"][0]["id"]
    pieces = []
    offset = None
    async with connect(api) as client:
        with trio.fail_after(60):
            while True:
                piece = await client.call("jobs.output", {"job_id": job_id, "offset": offset, "wait": 5})
                pieces.append(piece)
                if not piece["more"]:
                    break
                offset = piece["next"]
    text = "".join(p["text"] for p in pieces)
    assert text == EXPECTED
    assert len([p for p in pieces if p["text"]]) > 2, "the output came as it grew, not all at the end"
    assert pieces[-1]["ended"] and pieces[-1]["next"] == pieces[-1]["size"] == len(EXPECTED.encode())


async def test_muppet_logs_follow_prints_the_whole_output_and_stops_at_the_end(api):
    run = await trigger(api, "slow")
    status, out, err = await muppet("logs", str(run["jobs"][0]["id"]), "--follow", "--api", api)
    assert (status, out, err) == (0, EXPECTED, "")


async def test_a_tail_says_how_much_came_before(api):
    run = await wait_run(api, (await trigger(api, "big"))["id"])
    job_id = run["jobs"][0]["id"]
    status, out, _ = await muppet("logs", str(job_id), "--api", api)
    size = 200000 + len("\nthe end\n")
    first, rest = out.split("\n", 1)
    assert status == 0
    assert first == f"[... {size - 65536:,} bytes before]"
    assert rest.endswith("x\nthe end\n") and len(rest) == 65536


def test_read_output_never_cuts_a_character(tmp_path):
    path = tmp_path / "out"
    path.write_bytes("aé€😀b".encode())  # 1, 2, 3, 4 and 1 bytes
    # a piece that would end inside € stops before it, and the next begins there
    piece = read_output(str(path), 0, 4, whole=False)
    assert (piece.text, piece.next) == ("aé", 3)
    piece = read_output(str(path), 3, 100, whole=False)
    assert piece.text == "€😀b"
    # a tail that would start inside 😀 starts after it
    piece = read_output(str(path), None, 3, whole=True)
    assert (piece.text, piece.offset) == ("b", 10)
    assert read_output(str(tmp_path / "none"), None, 10, whole=True) is None


async def test_status_pipelines_show_and_jobs_long(api):
    run = await wait_run(api, (await trigger(api, "slow"))["id"])
    status, out, _ = await muppet("status", "--api", api)
    lines = out.splitlines()
    assert status == 0
    assert [line[:12] for line in lines] == [
        "version     ", "started at  ", "pipelines   ", "uptime      ", "database    ", "executors   ",
        "jobs        ", "next cron   "]
    assert lines[2] == "pipelines   big, flaky, slow"
    assert lines[4].endswith(": available")
    assert lines[5].startswith("executors   local 0 of ")
    assert "slow 20" in lines[7] and "big -" in lines[7]
    as_json = json.loads((await muppet("status", "--json", "--api", api))[1])
    assert as_json["database"]["available"] is True and as_json["next_firings"]["big"] is None

    status, out, _ = await muppet("pipelines", "--api", api)
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["NAME", "OWNER", "STEPS"]
    assert [row.split()[0] for row in rows] == ["big", "flaky", "slow"]

    status, out, _ = await muppet("show", "slow", "--api", api)
    assert status == 0
    assert "triggers    cron 0 6 * * * (UTC); manual (muppet trigger)" in out
    assert out.splitlines()[-3:] == ["graph", "  count", "  └── report"]
    status, _, err = await muppet("show", "nope", "--api", api)
    assert (status, err) == (1, "muppet: error: unknown pipeline 'nope'\n")

    status, out, _ = await muppet("jobs", str(run["id"]), "--long", "--api", api)
    header, first, _report = out.splitlines()
    for column in ("STARTED", "ENDED", "DURATION", "HOST", "BATCH ID", "REASON"):
        assert column in header
    assert first.split()[5] == "succeeded" and " s " in first


async def test_failures_retries_and_operators_actions_are_logged(api, caplog):
    caplog.set_level(logging.INFO, logger="muppet.scheduler")
    run = await wait_run(api, (await trigger(api, "flaky"))["id"])
    first, retry = sorted(j["id"] for j in run["jobs"] if j["step"] == "try")
    status, out, _ = await muppet("rerun", str(retry), "--api", api)
    assert status == 0, out
    status, _, _ = await muppet("hold", str(first), "--api", api)
    assert status == 1
    text = caplog.text
    assert f"job {first} (flaky.try[0], run {run['id']}) failed: exit code 3; retried as job {retry}" in text
    assert f"job {retry} (flaky.try[0], run {run['id']}) failed: exit code 3; no tries left" in text
    assert f"run {run['id']} (flaky " in text and ") failed" in text
    assert f"operator: local: trigger flaky for {run['reference_time']}: run_id {run['id']}" in text
    assert f"operator: local: rerun job {retry}: job_id " in text
    assert f"operator: local: hold job {first}: refused: " in text


async def test_a_browser_presents_its_token_on_the_connection(nursery, tmp_path):
    secret = "s3cret-for-the-page"
    (tmp_path / "tokens.toml").write_text(textwrap.dedent(f"""
        [tokens.oncall]
        role = "write"
        sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"
        """))
    path = write(tmp_path)
    path.write_text(path.read_text().replace('[api]\n', '[api]\ntokens_file = "tokens.toml"\n'))
    config = await trio.to_thread.run_sync(load_config, path)
    port = await nursery.start(daemon.serve, config)
    async with connect(f"ws://127.0.0.1:{port}") as client:
        with pytest.raises(RpcError) as refused:
            await client.call("runs.list")
        assert refused.value.code == UNAUTHORIZED
        with pytest.raises(RpcError) as wrong:
            await client.call("session.authenticate", {"token": "not-it"})
        assert wrong.value.code == UNAUTHORIZED
        assert await client.call("session.authenticate", {"token": secret}) == {"name": "oncall", "role": "write"}
        assert await client.call("runs.list") == []
        assert (await client.call("runs.trigger", {"pipeline": "slow"}))["run_id"] == 1


async def test_runs_search_by_reference_time(api):
    async with connect(api) as client:
        for when in ("2026-11-28T00:00:00Z", "2026-11-28T06:00:00Z", "2026-11-29T00:00:00Z"):
            await client.call("runs.trigger", {"pipeline": "big", "reference_time": when})
        day = await client.call("runs.search", {"begin": "2026-11-28T00:00:00Z", "end": "2026-11-29T00:00:00Z"})
        assert [r["reference_time"] for r in day] == ["2026-11-28T06:00:00Z", "2026-11-28T00:00:00Z"]
        one = await client.call("runs.search", {"pipeline": "big", "begin": "2026-11-29T00:00:00Z", "limit": 1})
        assert [r["reference_time"] for r in one] == ["2026-11-29T00:00:00Z"]
        with pytest.raises(RpcError) as bad:
            await client.call("runs.search", {"begin": "yesterday"})
        assert bad.value.data == {"param": "begin"}


def test_a_cron_pipeline_is_late_without_its_run_or_when_a_run_overruns():
    pipeline = model.Pipeline("p", "ops", {"s": model.Step("s", "true")}, cron=("0 6 * * *",))
    now = datetime(2026, 11, 28, 6, 5, tzinfo=UTC)
    yesterday = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    assert summary.late(pipeline, yesterday, [], now) == ["no run for the firing at 2026-11-28T06:00:00Z"]
    today = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    assert summary.late(pipeline, today, [], now) == []
    # within the grace minute nothing is late yet
    assert summary.late(pipeline, yesterday, [], datetime(2026, 11, 28, 6, 0, 30, tzinfo=UTC)) == []
    overrun = model.Run(7, "p", yesterday)
    assert summary.late(pipeline, today, [overrun], now) == [
        "run 7 (2026-11-27T06:00:00Z) still running at the next firing, 2026-11-28T06:00:00Z"]
    by_hand = model.Pipeline("q", "ops", {"s": model.Step("s", "true")})
    assert summary.late(by_hand, None, [], now) == []


def test_the_overview_reads_each_pipelines_newest_run_by_the_indexes(database_url):
    """pipelines.status's reads (muppet/summary.py) on SQLite and PostgreSQL:
    each named pipeline's newest run and latest reference time, none for a
    pipeline without runs, and the runs by state; on SQLite the plan uses
    the indexes of schema migration 7 rather than reading every run."""
    from muppet.db import writes
    from muppet.db.store import open_store
    from muppet.messages import NewRun

    store = open_store(database_url)
    try:
        made = []
        for run_id, (pipeline, hour, state) in enumerate(
            [("a", 6, "succeeded"), ("b", 12, "failed"), ("a", 0, "failed"), ("b", 18, "running")], start=1
        ):
            # a's newest run (the highest id) is not its latest reference time
            run = model.Run(run_id, pipeline, datetime(2026, 11, 28, hour, tzinfo=UTC), state=model.RunState(state),
                            cause=model.RunCause.CRON, created_at=1.7e9 + run_id)
            made.append(NewRun(run, ()))
        writes.write(store, made)
        newest = summary.newest_runs(store, ["a", "b", "never"])
        assert {name: run.id for name, run in newest.items()} == {"a": 3, "b": 4}
        latest = summary.latest_reference_times(store, ["a", "b", "never"])
        assert latest == {"a": datetime(2026, 11, 28, 6, tzinfo=UTC), "b": datetime(2026, 11, 28, 18, tzinfo=UTC)}
        assert summary.newest_runs(store, []) == {} and summary.latest_reference_times(store, []) == {}
        assert summary.runs_by_pipeline_and_state(store) == {
            ("a", "succeeded"): 1, ("a", "failed"): 1, ("b", "failed"): 1, ("b", "running"): 1}
        if database_url.startswith("sqlite"):
            plan = " ".join(str(row) for row in store.query(
                "EXPLAIN QUERY PLAN SELECT pipeline, state, COUNT(*) FROM runs GROUP BY pipeline, state"))
            assert "COVERING INDEX runs_pipeline_state" in plan, plan
            plan = " ".join(str(row) for row in store.query(
                "EXPLAIN QUERY PLAN SELECT MAX(r.id) FROM runs AS r WHERE r.pipeline = ?", ["a"]))
            assert "runs_pipeline_id" in plan, plan
    finally:
        store.close()


def test_daemon_status_counts_the_running_runs_jobs_from_the_index(database_url):
    """daemon.status's job counts (summary.jobs_by_pipeline_and_state) on
    SQLite and PostgreSQL: the jobs of running runs only, added up by
    pipeline over its runs; on SQLite from the index of schema migration 9
    alone, without a temporary b-tree."""
    from muppet.db import writes
    from muppet.db.store import open_store
    from muppet.messages import NewRun

    store = open_store(database_url)
    try:
        made, job_id = [], 1
        for run_id, (pipeline, state, job_states) in enumerate([
            ("a", "running", ["waiting", "running", "succeeded"]),
            ("a", "running", ["succeeded", "succeeded"]),
            ("b", "running", ["failed"]),
            ("b", "succeeded", ["succeeded", "succeeded"]),
        ], start=1):
            run = model.Run(run_id, pipeline, datetime(2026, 11, 28, run_id, tzinfo=UTC),
                            state=model.RunState(state), cause=model.RunCause.CRON, created_at=1.7e9)
            jobs = []
            for index, job_state in enumerate(job_states):
                jobs.append(model.Job(id=job_id, run_id=run_id, pipeline=pipeline, step="s", index=index,
                                      count=len(job_states), executor="local", state=model.JobState(job_state),
                                      created_at=1.7e9))
                job_id += 1
            made.append(NewRun(run, tuple(jobs)))
        writes.write(store, made)
        assert summary.jobs_by_pipeline_and_state(store) == {
            ("a", "waiting"): 1, ("a", "running"): 1, ("a", "succeeded"): 3, ("b", "failed"): 1}
        if database_url.startswith("sqlite"):
            plan = " ".join(str(row) for row in store.query(
                "EXPLAIN QUERY PLAN SELECT runs.pipeline, jobs.state, COUNT(*) FROM runs JOIN jobs"
                " ON jobs.run_id = runs.id WHERE runs.state = ? GROUP BY runs.id, jobs.state", ["running"]))
            assert "COVERING INDEX jobs_run_state" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()


async def test_daemon_status_reads_the_count_beside_the_other_reads():
    """daemon.status counts the running runs' jobs while its other reads go
    on (console._side_by_side): each side here waits for the other to have
    begun, which only reads at once get past; and an error of either comes
    out as itself, for the handler to answer, not in an exception group."""
    from muppet.api.console import _side_by_side

    began = [trio.Event(), trio.Event()]

    def side(mine: int, value: str):
        async def read():
            began[mine].set()
            await began[1 - mine].wait()
            return value
        return read

    with trio.fail_after(5):
        assert await _side_by_side(side(0, "counts"), side(1, "others")) == ("counts", "others")

    async def refused():
        raise RpcError(UNAUTHORIZED, "no")

    async def fine():
        return 1

    with pytest.raises(RpcError, match="no"):
        await _side_by_side(fine, refused)
