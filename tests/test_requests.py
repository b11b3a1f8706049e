"""Requests for product updates end to end (docs/api.md,
"products.request_update"; docs/cli.md, "muppet request"): a real daemon on
SQLite and PostgreSQL, real jobs whose outputs are indexed, the real API and
the ``muppet`` command. Waits are for conditions read through the API, with
deadlines."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import trio
from test_operators import DEADLINE, muppet, refused, wait_run  # tests/ is on sys.path
from waiting import wait_until_async

from muppet import daemon
from muppet.api.client import connect
from muppet.api.protocol import INVALID_PARAMS, NOT_FOUND, UNAUTHORIZED
from muppet.config import load_config

REF = "2026-11-28T06:00:00Z"

MAKER = """
[pipeline]
name = "maker"
owner = "ops"
produces = ["arome"]
[steps.make]
command = 'cd "$MUPPET_SCRATCH" && mkdir -p arome && echo "made by job $MUPPET_JOB_ID" > arome/f.txt'
outputs = ["arome/f.txt"]
[steps.publish]
parents = ["make"]
command = "true"
"""
POST = """
[pipeline]
name = "post"
owner = "ops"
requires = ["ecmwf"]
produces = ["arome-pp"]
[steps.convert]
command = 'cd "$MUPPET_SCRATCH" && mkdir -p pp && echo converted > pp/f.txt'
outputs = ["pp/f.txt"]
"""
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
file_count = 1
[products.arome-pp]
name = "AROME post-processed"
file_count = 1
[products.ecmwf]
name = "ECMWF"
file_count = 1
[products.radar]
name = "Radar composite"
[backends.lustre-a]
name = "Lustre A"
url = "file://{tmp}/lustre"
[index]
outputs_backend = "lustre-a"
"""


def write_config(tmp_path: Path, database_url: str, api: str = "") -> Path:
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    (tmp_path / "pipelines" / "maker.toml").write_text(textwrap.dedent(MAKER))
    (tmp_path / "pipelines" / "post.toml").write_text(textwrap.dedent(POST))
    path = tmp_path / "muppet.toml"
    path.write_text(DAEMON.format(database=database_url, tmp=tmp_path, api=api))
    return path


async def start(nursery: trio.Nursery, path: Path) -> str:
    port = await nursery.start(daemon.serve, load_config(path))
    return f"ws://127.0.0.1:{port}"


async def request_state(client: Any, request_id: int) -> dict:
    (found,) = [r for r in await client.call("requests.list", {}) if r["id"] == request_id]
    return found


async def test_a_request_makes_a_run_then_reruns_the_steps_that_make_the_product(nursery, tmp_path, database_url):
    url = await start(nursery, write_config(tmp_path, database_url))
    async with connect(url) as client:
        done = await muppet(url, "request", "arome", "--reference-time", REF, "--reason", "THREDDS lost it")
        assert (done.returncode, done.stdout) == (0, "request 1: run 1 made\n"), done.stderr
        run = await wait_run(client, 1, {"succeeded"})
        assert (run["cause"], run["pipeline"], run["reference_time"]) == ("request", "maker", REF)
        latest = await client.call("instances.latest", {"product": "arome", "complete": True})
        assert latest is not None

        again = await muppet(url, "request", "arome", "--reference-time", REF, "--json")
        answer = json.loads(again.stdout)
        assert answer == {"request_id": 2, "state": "done", "run_id": 1, "made": False,
                          "rerun_job_ids": [answer["rerun_job_ids"][0]]}
        run = await wait_run(client, 1, {"succeeded"})
        steps = sorted((j["step"], j["id"]) for j in run["jobs"])
        assert [step for step, _ in steps] == ["make", "make", "publish", "publish"], "makers and what follows"
        (file,) = (await client.call("files.list", {"product": "arome", "reference_time": REF}))["items"]
        text = await trio.Path(file["url"].removeprefix("file://")).read_text()
        assert text == f"made by job {answer['rerun_job_ids'][0]}\n", "the rerun's output is the one indexed"

        listed = await muppet(url, "requests")
        lines = listed.stdout.splitlines()
        assert lines[0].split()[:6] == ["ID", "PRODUCT", "REFERENCE", "TIME", "PIPELINE", "STATE"]
        assert [line.split()[:5] for line in lines[1:]] == [
            ["2", "arome", REF, "maker", "done"], ["1", "arome", REF, "maker", "done"]]
        assert "ops-desk" not in listed.stdout and "local" in lines[2] and "THREDDS lost it" in lines[2]
        events = [e["data"] for e in await client.call("events.list", {"kinds": ["operator"]})]
        assert [(e["action"], e["target"]["request_id"], e["reason"]) for e in events] == [
            ("request", 1, "THREDDS lost it"), ("request", 2, "")]


async def test_a_request_waits_for_required_products_across_a_restart(nursery, tmp_path, database_url):
    config = write_config(tmp_path, database_url)
    async with trio.open_nursery() as first:
        url = await start(first, config)
        waiting = await muppet(url, "request", "arome-pp", "--reference-time", REF)
        assert (waiting.returncode, waiting.stdout) == (0, "request 1: waiting for ecmwf\n"), waiting.stderr
        first.cancel_scope.cancel()

    url = await start(nursery, config)
    async with connect(url) as client:
        listed = json.loads((await muppet(url, "requests", "--state", "waiting", "--json")).stdout)
        assert [(r["id"], r["state"], r["waiting_for"]) for r in listed] == [(1, "waiting", ["ecmwf"])]
        assert await client.call("runs.list", {"pipeline": "post"}) == []
        await client.call("files.register", {"files": [{
            "product": "ecmwf", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
            "url": f"file://{tmp_path}/lustre/ecmwf.nc", "size": 1, "hash": "ab" * 32,
        }]})

        async def carried_out() -> dict | None:
            found = await request_state(client, 1)
            return found if found["state"] == "done" else None

        found = await wait_until_async(carried_out, DEADLINE, "request 1 carried out")
        (run,) = await client.call("runs.list", {"pipeline": "post"})
        assert found["run_id"] == run["id"] and found["waiting_for"] == []
        await wait_run(client, run["id"], {"succeeded"})
        assert await client.call("instances.latest", {"product": "arome-pp", "complete": True}) is not None


async def test_refusals(nursery, tmp_path, database_url):
    secret = "w-secret"
    reader = "r-secret"
    (tmp_path / "tokens.toml").write_text(
        f'[tokens.desk]\nrole = "write"\nsha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
        f'[tokens.thredds]\nrole = "read"\nsha256 = "{hashlib.sha256(reader.encode()).hexdigest()}"\n')
    url = await start(nursery, write_config(tmp_path, database_url, f'tokens_file = "{tmp_path}/tokens.toml"'))
    nobody = await muppet(url, "request", "radar", "--reference-time", REF, token=secret)
    assert (nobody.returncode, nobody.stderr) == (1, "muppet: error: no pipeline produces product 'radar': a "
                                                     "pipeline lists the products it makes in produces "
                                                     "(docs/configuration.md)\n")
    unknown = await muppet(url, "request", "nosuch", "--reference-time", REF, token=secret)
    assert (unknown.returncode, unknown.stderr) == (1, "muppet: error: unknown product 'nosuch'\n")
    wrong = await muppet(url, "request", "arome", "--reference-time", REF, "--pipeline", "post", token=secret)
    assert wrong.stderr == "muppet: error: pipeline 'post' does not produce product 'arome' (maker does)\n"
    async with connect(url, token=secret) as client:
        await refused(client, "products.request_update", {"product": "arome", "reference_time": "soon"},
                      INVALID_PARAMS)
        assert await refused(client, "products.request_update", {"product": "nosuch", "reference_time": REF},
                             NOT_FOUND) == "unknown product 'nosuch'"
        assert await client.call("requests.list", {}) == []
    async with connect(url, token=reader) as client:
        message = await refused(client, "products.request_update", {"product": "arome", "reference_time": REF},
                                UNAUTHORIZED)
        assert message == ("unauthorized: products.request_update needs a write token; "
                           "token 'thredds' has role 'read'")

