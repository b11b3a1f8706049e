"""A full state directory fails no job: the daemon as its own process, its
``state_dir`` a 1 MiB tmpfs that the test fills to the last byte while a run
of 30 jobs is under way, and empties again (docs/operations.md, "When the
disk is full"; the MUPPET design: a failure of MUPPET's own machinery is
never a job's failure).

While the disk is full every job the scheduler hands over comes back not
started and waits with the reason; once there is room again they start by
themselves. The run succeeds with every job succeeded at its first try,
each command ran once (a ledger outside ``state_dir`` says so), and the log
says once that jobs cannot start and once that they start again.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import trio
from executor_harness import fill  # tests/ is on sys.path
from test_outages import free_port
from waiting import daemon_answers, wait_until_async

from muppet.api.client import connect

MUPPET = [sys.executable, "-m", "muppet.cli"]
JOBS = 30

# the run's end is waited for up to 180 s (the longest backoff after a
# failed start is 60 s): a failure should say what it waited for
pytestmark = pytest.mark.timeout(300)


def write_config(tmp_path: Path, state_dir: Path, port: int) -> Path:
    (tmp_path / "pipelines").mkdir()
    # each job appends its index to a ledger outside the state directory:
    # the ledger, not the database, says what ran; it takes a moment, so that
    # most jobs are still to start when the disk fills
    (tmp_path / "pipelines" / "many.toml").write_text(textwrap.dedent(f"""
        [stakeholders.ops]
        name = "Operations"
        [pipeline]
        name = "many"
        owner = "ops"
        [steps.work]
        jobs = {JOBS}
        command = "sleep 0.1; echo $MUPPET_JOB_INDEX >> {tmp_path / 'ledger'}"
        """))
    config = tmp_path / "muppet.toml"
    config.write_text(textwrap.dedent(f"""
        [daemon]
        database = "sqlite:///{tmp_path / 'muppet.db'}"
        state_dir = "{state_dir}"
        output_dir = "{tmp_path / 'output'}"
        pipelines = ["pipelines/*.toml"]
        [api]
        listen = "127.0.0.1:{port}"
        [executors.local]
        type = "local"
        max_jobs = 2
        """))
    return config


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_a_full_state_dir_fails_no_job(tmp_path, small_tmpfs):
    port = free_port()
    config = write_config(tmp_path, small_tmpfs, port)
    url = f"ws://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    ledger = tmp_path / "ledger"
    filler = small_tmpfs / "filler"
    with await trio.to_thread.run_sync(log.open, "wb") as stderr:
        process = await trio.lowlevel.open_process([*MUPPET, "daemon", "--config", str(config)], stderr=stderr)

    def log_text() -> str:
        return log.read_text(errors="replace")[-4000:]

    async def log_has(words: str) -> bool:
        return words in await trio.Path(log).read_text(errors="replace")

    try:
        await wait_until_async(lambda: daemon_answers(url), 60, "the daemon to answer", detail=log_text)
        async with connect(url) as client:
            run_id = (await client.call("runs.trigger", {"pipeline": "many"}))["run_id"]

            async def jobs() -> list[dict]:
                return list((await client.call("runs.get", {"run_id": run_id}))["jobs"])

            # the disk fills once the first jobs ran, while the others wait for a slot
            await wait_until_async(lambda: len(_lines(ledger)) >= 2, 60, "two jobs to run", detail=log_text)
            await trio.to_thread.run_sync(fill, filler)

            # many jobs are handed over, and come back, while the disk is full
            seen: list[dict] = []

            async def not_started() -> list[dict] | None:
                seen[:] = await jobs()
                found = [j for j in seen if j["state"] == "waiting" and "not started:" in (j["reason"] or "")]
                return found if len(found) >= 20 else None

            waiting = await wait_until_async(
                not_started, 60, "twenty jobs waiting, not started",
                detail=lambda: "\n".join(f"{j['id']} {j['state']} {j['reason']}" for j in seen),
            )
            await wait_until_async(lambda: log_has("cannot start jobs"), 30, "the warning", detail=log_text)
            assert all("No space left on device" in j["reason"] for j in waiting), waiting
            await trio.Path(filler).unlink()

            async def ended() -> dict | None:
                run = await client.call("runs.get", {"run_id": run_id})
                seen[:] = run["jobs"]
                return run if run["state"] != "running" else None

            def unfinished() -> str:
                return "\n".join(f"{j['id']} {j['state']} {j['reason']}" for j in seen if j["state"] != "succeeded")

            # the longest a job waits after a failed start is 60 s (docs/states.md)
            run = await wait_until_async(ended, 180, "the run to end", detail=unfinished)
        assert process.returncode is None, "the daemon exited"
    finally:
        process.terminate()
        with trio.move_on_after(30):
            await process.wait()
        if process.returncode is None:
            process.kill()
    text = await trio.Path(log).read_text(errors="replace")
    assert run["state"] == "succeeded", text[-3000:]
    assert len(run["jobs"]) == JOBS, "a job failed and was retried"
    assert {j["state"] for j in run["jobs"]} == {"succeeded"}
    assert {j["failures"] for j in run["jobs"]} == {0}, "a try was used up"
    assert sorted(_lines(ledger), key=int) == [str(i) for i in range(JOBS)], "a job lost or run twice"
    assert "Traceback" not in text
    assert text.count("cannot start jobs") == 1, text[-3000:]
    assert text.count("jobs start again after") == 1, text[-3000:]
