"""The ``muppet`` command run as a real subprocess (``python -m muppet.cli``)
against the API task served in the test, on a real SQLite store.

The server, the seeded runs and jobs and the stand-in for the scheduler task
are test_api.py's (see there why a stand-in).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trio
from test_api import RUN1, RUN1_JOBS, RUN2, RUN2_JOBS, free_port, start_api  # tests/ is on sys.path

from muppet import codec

ENV = {k: v for k, v in os.environ.items() if k != "MUPPET_API"}


async def muppet(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    with trio.fail_after(60):  # a safety net against a hang, not a timing assertion
        return await trio.run_process(
            [sys.executable, "-m", "muppet.cli", *args],
            capture_stdout=True, capture_stderr=True, check=False, env=env or ENV,
        )


def out(result) -> str:
    return result.stdout.decode()


def err(result) -> str:
    return result.stderr.decode()


@pytest.fixture
async def api(nursery, tmp_path):
    return await start_api(nursery, tmp_path)


async def test_runs_json_and_table(api):
    result = await muppet("runs", "--json", "--api", api.url)
    assert result.returncode == 0, err(result)
    runs = json.loads(out(result))
    assert runs == [codec.run_to_dict(RUN2), codec.run_to_dict(RUN1)]
    for run in runs:
        assert {"id", "pipeline", "reference_time", "state"} <= run.keys()

    result = await muppet("runs", "--pipeline", "ecmwf", "--json", "--api", api.url)
    assert [r["id"] for r in json.loads(out(result))] == [1]

    result = await muppet("runs", "--api", api.url)
    assert result.returncode == 0, err(result)
    lines = out(result).splitlines()
    assert lines[0].split() == ["ID", "PIPELINE", "REFERENCE", "TIME", "STATE", "LATE", "CAUSE", "CREATED", "ENDED",
                                "DEFINITION"]
    assert lines[1].split()[:6] == ["2", "arome", "2026-11-28T12:00:00Z", "running", "-", "manual"]
    assert lines[2].split()[:6] == ["1", "ecmwf", "2026-11-28T06:00:00Z", "failed", "-", "cron"]
    # aligned: every column starts at the same offset on every line
    assert lines[1].index("arome") == lines[2].index("ecmwf") == lines[0].index("PIPELINE")


async def test_jobs_json_and_table(api):
    result = await muppet("jobs", "1", "--json", "--api", api.url)
    assert result.returncode == 0, err(result)
    jobs = json.loads(out(result))
    assert jobs == [codec.job_to_dict(j) for j in RUN1_JOBS]
    for job in jobs:
        assert {"id", "run_id", "pipeline", "step", "index", "state", "exit_code",
                "failures", "predecessor", "successor"} <= job.keys()

    result = await muppet("jobs", "--json", "--api", api.url)
    assert [j["id"] for j in json.loads(out(result))] == [1, 2, 3, 4, 5]
    result = await muppet("jobs", "--state", "running", "--json", "--api", api.url)
    assert json.loads(out(result)) == [codec.job_to_dict(RUN2_JOBS[0])]

    result = await muppet("jobs", "1", "--api", api.url)
    lines = out(result).splitlines()
    assert lines[0].split() == ["ID", "RUN", "PIPELINE", "STEP", "INDEX", "STATE", "EXIT",
                                "FAILURES", "PRED", "SUCC", "REASON"]
    assert lines[2].split() == ["2", "1", "ecmwf", "convert", "0", "failed", "3", "1", "-", "4",
                                "exit", "code", "3"]
    assert len(lines) == 5

    result = await muppet("jobs", "99", "--api", api.url)
    assert result.returncode == 1
    assert err(result) == "muppet: error: unknown run 99\n"


async def test_logs(api):
    result = await muppet("logs", "1", "--api", api.url)
    assert (result.returncode, out(result)) == (0, "fetched 3 files\n")
    result = await muppet("logs", "1", "--stderr", "--api", api.url)
    assert (result.returncode, out(result)) == (0, "warning: slow mirror\n")
    result = await muppet("logs", "5", "--api", api.url)
    assert (result.returncode, out(result)) == (0, "")
    result = await muppet("logs", "77", "--api", api.url)
    assert result.returncode == 1 and err(result) == "muppet: error: unknown job 77\n"


async def test_trigger_prints_the_run_id_alone(api):
    result = await muppet("trigger", "ecmwf", "--reference-time", "2026-12-01T00:00:00Z", "--api", api.url)
    assert (result.returncode, out(result), err(result)) == (0, "100\n", "")
    assert codec.format_time(api.scheduler.received[0].reference_time) == "2026-12-01T00:00:00Z"

    result = await muppet("trigger", "ecmwf", "--reference-time", "2026-11-28T06:00:00Z", "--api", api.url)
    assert result.returncode == 1 and out(result) == ""
    assert err(result) == "muppet: error: run of ecmwf for 2026-11-28T06:00:00Z exists\n"

    result = await muppet("trigger", "nope", "--api", api.url)
    assert result.returncode == 1 and err(result) == "muppet: error: unknown pipeline 'nope'\n"

    result = await muppet("trigger", "ecmwf", "--reference-time", "soon", "--api", api.url)
    assert result.returncode == 1 and err(result).startswith("muppet: error: invalid params: 'reference_time'")


async def test_job_commands(api):
    for action, line in (("hold", "job 4: held (now hold)"), ("release", "job 4: released (now release)"),
                         ("kill", "job 4: kill requested (now kill)"), ("rerun", "job 4: rerun as job 77")):
        result = await muppet(action, "4", "--api", api.url)
        assert (result.returncode, out(result)) == (0, line + "\n"), err(result)
    result = await muppet("hold", "5", "--api", api.url)
    assert result.returncode == 1 and err(result) == "muppet: error: job 5 is running, not waiting\n"
    assert [(c.action, c.job_id) for c in api.scheduler.received] == [
        ("hold", 4), ("release", 4), ("kill", 4), ("rerun", 4), ("hold", 5)]


async def test_status_and_api_from_the_environment(api):
    result = await muppet("status", "--json", env={**ENV, "MUPPET_API": api.url})
    assert result.returncode == 0, err(result)
    assert json.loads(out(result))["pipelines"] == ["arome", "ecmwf"]
    result = await muppet("status", env={**ENV, "MUPPET_API": api.url})
    assert "pipelines   arome, ecmwf" in out(result)


async def test_daemon_unreachable():
    url = f"ws://127.0.0.1:{free_port()}"
    for args in (["runs"], ["jobs", "--json"], ["logs", "1"], ["trigger", "x"], ["kill", "3"]):
        result = await muppet(*args, "--api", url)
        assert result.returncode == 1
        assert out(result) == ""
        assert err(result) == f"muppet: error: cannot reach the MUPPET daemon at {url}: connection refused\n"
    result = await muppet("runs", "--api", "localhost:8765")
    assert result.returncode == 1 and "ws://" in err(result)


async def test_usage_errors_exit_2():
    for args in (["jobs", "x"], ["logs"], ["hold", "-3"], ["runs", "--limit", "0"], ["frobnicate"], ["validate"]):
        result = await muppet(*args)
        assert result.returncode == 2, args


async def test_help_explains_every_command():
    result = await muppet("--help")
    assert result.returncode == 0
    for command in ("daemon", "validate", "status", "trigger", "runs", "jobs", "logs",
                    "hold", "release", "kill", "rerun"):
        assert command in out(result)
        sub = await muppet(command, "--help")
        assert sub.returncode == 0 and "Usage: muppet " + command in out(sub)
    assert "--reference-time" in out(await muppet("trigger", "--help"))
    assert "MUPPET_API" in out(await muppet("runs", "--help"))


GOOD_PIPELINE = """\
[stakeholders.ops]
name = "Operations"

[pipeline]
name = "good"
owner = "ops"
cron = ["0 6 * * *"]

[steps.only]
command = "true"
"""

BAD_PIPELINE = """\
[stakeholders.ops]
name = "Operations"

[pipeline]
name = "bad"
owner = "ops"

[steps.convert]
command = "true"
retry = { tries = "three" }
"""


async def test_validate(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD_PIPELINE)
    result = await muppet("validate", str(good))
    assert (result.returncode, out(result)) == (0, "1 file OK\n"), err(result)

    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_PIPELINE)
    result = await muppet("validate", str(good), str(bad))
    assert result.returncode == 1 and out(result) == ""
    lines = err(result).splitlines()
    assert lines and all(str(bad) in line for line in lines)
    assert any("[steps.convert]" in line and "retry.tries" in line for line in lines)

    broken = tmp_path / "broken.toml"
    broken.write_text("[pipeline\nname = 1\n")
    result = await muppet("validate", str(broken))
    assert result.returncode == 1 and str(broken) in err(result)


def test_muppet_sync_has_help():
    result = subprocess.run([sys.executable, "-m", "sync.cli", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("seed", "fetch", "status", "torrent", "torrent-file", "version"):
        assert f"  {command} " in result.stdout, command
    result = subprocess.run([sys.executable, "-m", "sync.cli", "fetch", "--config", "/nonexistent/fetch.toml"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "/nonexistent/fetch.toml" in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-m", "sync.cli", "version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("muppet-sync ")
