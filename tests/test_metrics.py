"""/metrics and /healthz on the daemon's web listener (docs/operations.md,
"Metrics", "Health check"): real daemons, a real HTTP client, the text
parsed by prometheus_client's own parser; the health check through a real
PostgreSQL outage."""

from __future__ import annotations

import json
import socket
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from services import free_port  # tests/ is on sys.path
from waiting import wait_until_async  # tests/ is on sys.path

from muppet import daemon
from muppet.api.client import connect
from muppet.api.protocol import RpcError
from muppet.config import load_config

MUPPET = [sys.executable, "-m", "muppet.cli"]

PIPELINE = """
[stakeholders.ops]
name = "Operations"
[pipeline]
name = "wx"
owner = "ops"
[steps.fetch]
command = "echo fetched"
[steps.convert]
parents = ["fetch"]
jobs = 2
command = '[ "$MUPPET_JOB_INDEX" = 0 ] || exit 3'
retry = { tries = 2 }
"""


def write_config(folder: Path, database: str, api_port: int, web_port: int) -> Path:
    (folder / "pipelines").mkdir(parents=True, exist_ok=True)
    (folder / "pipelines" / "wx.toml").write_text(textwrap.dedent(PIPELINE))
    path = folder / "muppet.toml"
    path.write_text(textwrap.dedent(f"""
        [daemon]
        database = "{database}"
        state_dir = "{folder / 'state'}"
        output_dir = "{folder / 'output'}"
        pipelines = ["pipelines/*.toml"]
        [api]
        listen = "127.0.0.1:{api_port}"
        [web]
        listen = "127.0.0.1:{web_port}"
        """))
    return path


def get(url: str) -> tuple[int, str]:
    """One HTTP GET (blocking: run it in a worker thread)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def scrape(web: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics: name -> {sorted labels: value}."""
    status, text = await trio.to_thread.run_sync(get, f"{web}/metrics")
    assert status == 200, text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def start(nursery: trio.Nursery, folder: Path) -> tuple[str, str]:
    """An in-process daemon on SQLite: its API and web URLs."""
    web_port = free_port()
    config = load_config(write_config(folder, f"sqlite:///{folder / 'muppet.db'}", 0, web_port))
    port = await nursery.start(daemon.serve, config)
    return f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{web_port}"


async def run_to_end(api: str) -> dict:
    async with connect(api) as client:
        run_id = (await client.call("runs.trigger", {"pipeline": "wx"}))["run_id"]

        async def ended() -> dict | None:
            run = await client.call("runs.get", {"run_id": run_id})
            return run if run["state"] != "running" else None

        return await wait_until_async(ended, 60, "the run to end")


async def test_metrics_count_what_happened_and_daemons_keep_their_own(nursery, tmp_path):
    api, web = await start(nursery, tmp_path / "one")
    _api2, web2 = await start(nursery, tmp_path / "two")
    run = await run_to_end(api)
    assert run["state"] == "failed"  # convert[1] fails twice
    m = await scrape(web)
    assert m["muppet_job_starts_total"][(("pipeline", "wx"),)] == 4  # fetch, convert 0, convert 1 twice
    ends = m["muppet_job_ends_total"]
    assert ends[(("pipeline", "wx"), ("state", "succeeded"))] == 2
    assert ends[(("pipeline", "wx"), ("state", "failed"))] == 2
    assert m["muppet_job_wait_seconds_count"][(("pipeline", "wx"),)] == 4
    assert m["muppet_job_duration_seconds_count"][(("pipeline", "wx"),)] == 4
    assert m["muppet_run_duration_seconds_count"][(("pipeline", "wx"), ("state", "failed"))] == 1
    assert m["muppet_database_commit_seconds_count"][()] >= 3
    assert m["muppet_database_commit_changes_sum"][()] >= 6
    assert m["muppet_api_requests_total"][(("method", "runs.trigger"),)] == 1
    assert m["muppet_api_requests_total"][(("method", "runs.get"),)] >= 1
    assert m["muppet_database_up"][()] == 1
    assert m["muppet_database_outages_total"][()] == 0
    assert m["muppet_runs"][(("pipeline", "wx"), ("state", "failed"))] == 1
    assert m["muppet_jobs"][(("pipeline", "wx"), ("state", "running"))] == 0
    assert m["muppet_executor_slots_max"][(("executor", "local"),)] >= 1
    assert m["muppet_events_total"][()] >= 8
    assert m["muppet_index_files"][()] == 0
    assert m["muppet_uptime_seconds"][()] > 0
    # an unknown job: an error counted by method and code
    async with connect(api) as client:
        with pytest.raises(RpcError):
            await client.call("jobs.get", {"job_id": 999})
        subscription = await client.subscribe()
        m = await scrape(web)
        assert m["muppet_api_errors_total"][(("code", "-32001"), ("method", "jobs.get"))] == 1
        assert m["muppet_api_subscribers"][()] == 1
        del subscription
    # the other daemon counted nothing of it
    other = await scrape(web2)
    assert other.get("muppet_job_starts_total", {}) == {}
    assert other["muppet_runs"][(("pipeline", "wx"), ("state", "failed"))] == 0


async def test_healthz_says_ok_with_its_checks(nursery, tmp_path):
    _api, web = await start(nursery, tmp_path)
    status, text = await trio.to_thread.run_sync(get, f"{web}/healthz")
    body = json.loads(text)
    assert status == 200, body
    assert body["status"] == "ok" and body["reasons"] == []
    assert set(body["checks"]) == {"database", "scheduler", "tasks"}
    assert all(check["ok"] for check in body["checks"].values())


async def test_the_page_and_its_assets_are_served(nursery, tmp_path):
    api, web = await start(nursery, tmp_path)
    status, page = await trio.to_thread.run_sync(get, f"{web}/")
    assert status == 200 and '<script type="module" src="/static/main.js">' in page
    status, info = await trio.to_thread.run_sync(get, f"{web}/console.json")
    assert json.loads(info)["api"]["port"] == int(api.rsplit(":", 1)[1])
    for asset in ("main.js", "rpc.js", "run.js", "console.css"):
        status, _ = await trio.to_thread.run_sync(get, f"{web}/static/{asset}")
        assert status == 200, asset


async def test_an_explicit_web_address_in_use_stops_the_daemon(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f"sqlite:///{tmp_path / 'muppet.db'}", 0, port)
        done = await trio.run_process([*MUPPET, "daemon", "--config", str(config)], capture_stderr=True, check=False)
    assert done.returncode == 1
    last = done.stderr.decode().strip().splitlines()[-1]
    # one line naming the key and the address (docs/configuration.md, "[web]")
    assert last.startswith("muppet: error: "), last
    assert f"[web] listen: cannot listen on http://127.0.0.1:{port}: " in last, last


@pytest.mark.postgres
@pytest.mark.slow
async def test_healthz_is_503_while_postgres_is_down(tmp_path, postgres_server, postgres_url):
    api_port, web_port = free_port(), free_port()
    config = write_config(tmp_path, postgres_url, api_port, web_port)
    web = f"http://127.0.0.1:{web_port}"
    log = tmp_path / "daemon.log"
    with await trio.to_thread.run_sync(log.open, "wb") as stderr:
        process = await trio.lowlevel.open_process([*MUPPET, "daemon", "--config", str(config)], stderr=stderr)
    try:
        async def health() -> tuple[int, dict] | None:
            assert process.returncode is None, "the daemon exited"
            try:
                status, text = await trio.to_thread.run_sync(get, f"{web}/healthz")
            except OSError:
                return None
            return status, json.loads(text)

        await wait_until_async(lambda: _status_is(health, 200), 60, "/healthz 200", detail=log.read_text)
        await trio.to_thread.run_sync(postgres_server.ctl, "stop", "immediate")
        found = await wait_until_async(lambda: _status_is(health, 503), 60, "/healthz 503", detail=log.read_text)
        assert found["status"] == "unavailable"
        assert found["checks"]["database"]["ok"] is False
        assert any(reason.startswith("database: ") for reason in found["reasons"]), found
        m = await scrape(web)
        assert m["muppet_database_up"][()] == 0
        assert m["muppet_database_outages_total"][()] == 1
        await trio.to_thread.run_sync(postgres_server.ctl, "start")
        await wait_until_async(lambda: _status_is(health, 200), 60, "/healthz 200 again", detail=log.read_text)
        assert process.returncode is None, "the daemon outlived the outage"
    finally:
        process.terminate()
        with trio.move_on_after(30):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def _status_is(health, wanted: int) -> dict | None:
    found = await health()
    if found is not None and found[0] == wanted:
        return found[1]
    return None
