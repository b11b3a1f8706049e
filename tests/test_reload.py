"""Reloading the configuration without a restart, end to end: a real daemon on
SQLite and PostgreSQL, real jobs, the real API and the ``muppet`` command, and
SIGHUP to a real ``muppet daemon`` process (docs/operations.md, "Reload");
and cron and expiry taking a reload, on Trio's virtual clock.

Each job that must wait for the test waits on a gate file of its own run
(``open-RUN_ID``) or job (``open-job-JOB_ID``); each job that tells what it
ran writes a line to the ledger. The test waits for conditions read through
the API, with deadlines, never for a time.
"""

from __future__ import annotations

import hashlib
import json
import signal
import textwrap
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_api import free_port  # tests/ is on sys.path
from test_operators import (
    DEADLINE,
    ENV,
    MUPPET,
    muppet,
    newest,
    open_gate,
    operator_events,
    refused,
    tokens,
    wait_run,
    wait_state,
)
from waiting import wait_until_async

from muppet import cron, daemon
from muppet.api.client import DaemonUnreachable, RpcError, connect
from muppet.api.protocol import NOT_FOUND, UNAUTHORIZED
from muppet.config import default_config, load_config
from muppet.index import expiry
from muppet.messages import INVALID_CONFIGURATION, IndexWrite, IndexWritten, Trigger
from muppet.model import IndexConfig, Pipeline, Step
from muppet.running import RunningConfig

REF = "2026-11-28T06:00:00Z"
LATER = "2026-11-28T12:00:00Z"

DAEMON = """
[daemon]
database = "{database}"
state_dir = "{tmp}/state"
output_dir = "{tmp}/out"
pipelines = ["pipelines/*.toml"]
[api]
listen = "{listen}"
{api}
[web]
listen = ""
[stakeholders.ops]
name = "Operations"
[executors.local]
type = "local"
max_jobs = {max_jobs}
{more}
"""


class Setup:
    """The daemon file and the pipeline files of one test, rewritten as the
    test changes them."""

    def __init__(self, tmp: Path, database: str, listen: str = "127.0.0.1:0", api: str = "") -> None:
        self.tmp, self.database, self.listen, self.api = tmp, database, listen, api
        self.path = tmp / "muppet.toml"
        self.ledger = tmp / "ledger"
        (tmp / "pipelines").mkdir()

    def daemon(self, max_jobs: int = 8, more: str = "") -> Setup:
        self.path.write_text(DAEMON.format(database=self.database, tmp=self.tmp, listen=self.listen,
                                           api=self.api, max_jobs=max_jobs, more=textwrap.dedent(more)))
        return self

    def pipeline(self, name: str, text: str) -> Setup:
        (self.tmp / "pipelines" / f"{name}.toml").write_text(textwrap.dedent(text))
        return self

    def remove(self, name: str) -> None:
        (self.tmp / "pipelines" / f"{name}.toml").unlink()

    def convert(self, version: str, name: str = "conv") -> Setup:
        """gate (waits for its run's gate) -> convert (writes VERSION RUN_ID to the ledger)."""
        return self.pipeline(name, f"""
            [pipeline]
            name = "{name}"
            owner = "ops"
            cron = ["0 0 1 1 *"]
            [steps.gate]
            command = 'until [ -e {self.tmp}/open-$MUPPET_RUN_ID ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done'
            [steps.convert]
            parents = ["gate"]
            command = 'echo "{version} $MUPPET_RUN_ID" >> {self.ledger}'
            """)

    def ledger_lines(self) -> list[str]:
        return self.ledger.read_text().splitlines() if self.ledger.exists() else []


async def start(nursery: trio.Nursery, setup: Setup) -> str:
    port = await nursery.start(daemon.serve, load_config(setup.path))
    return f"ws://127.0.0.1:{port}"


async def trigger(client: Any, pipeline: str, reference_time: str = REF) -> int:
    run_id: int = (await client.call("runs.trigger", {"pipeline": pipeline,
                                                      "reference_time": reference_time}))["run_id"]
    return run_id


async def reloaded(url: str, *args: str, token: str | None = None) -> list[str]:
    """``muppet reload`` that succeeds: the lines it printed."""
    done = await muppet(url, "reload", *args, token=token)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# --- what a reload applies ----------------------------------------------------------------------


async def test_a_changed_command_applies_to_new_runs_while_a_run_in_progress_keeps_its_own(
    nursery, tmp_path, database_url,
):
    setup = Setup(tmp_path, database_url).daemon().convert("v1")
    async with trio.open_nursery() as first:
        url = await start(first, setup)
        async with connect(url) as client:
            old = await trigger(client, "conv")
            await wait_state(client, old, "gate", {"running"})
            setup.convert("v2")
            lines = await reloaded(url, "--reason", "new convert")
            assert lines == [
                f"reloaded {setup.path}",
                "pipelines changed: conv (new runs use the new definition; runs in progress finish under their own)",
            ]
            new = await trigger(client, "conv", LATER)
            open_gate(tmp_path, new)
            await wait_run(client, new, {"succeeded"})
            assert setup.ledger_lines() == [f"v2 {new}"]
            runs = {r["id"]: r for r in await client.call("runs.list")}
            assert runs[old]["definition"] != runs[new]["definition"]
            assert len(runs[old]["definition"]) == 64
            assert (await client.call("runs.get", {"run_id": old}))["definition"] == runs[old]["definition"]
            table = (await muppet(url, "runs")).stdout.splitlines()
            assert table[0].split()[-1] == "DEFINITION"
            assert [line.split()[-1] for line in table[1:]] == [runs[new]["definition"][:12],
                                                                runs[old]["definition"][:12]]
            # the command of a job of the old run is the old one
            (convert,) = (await newest(client, old))["convert"]
            assert (await client.call("jobs.command", {"job_id": convert["id"]}))["command"] == (
                f'echo "v1 $MUPPET_RUN_ID" >> {setup.ledger}')
        first.cancel_scope.cancel()

    # a restart in between: the old run still finishes as it was made
    url = await start(nursery, setup)
    async with connect(url) as client:
        open_gate(tmp_path, old)
        await wait_run(client, old, {"succeeded"})
        assert setup.ledger_lines() == [f"v2 {new}", f"v1 {old}"]


async def test_a_bad_file_is_refused_naming_every_problem_and_the_daemon_runs_on(nursery, tmp_path, database_url):
    setup = Setup(tmp_path, database_url).daemon().convert("v1")
    url = await start(nursery, setup)
    setup.daemon(max_jobs=0)
    setup.pipeline("conv", """
        [pipeline]
        name = "conv"
        owner = "ops"
        [steps.convert]
        command = "convert.sh"
        retry = { tries = "three" }
        """)
    problems = [
        f"{setup.path}: [executors.local] max_jobs: must be an integer >= 1, got 0",
        f"{tmp_path}/pipelines/conv.toml: [steps.convert] retry.tries: must be an integer >= 1, got \"three\"",
    ]
    done = await muppet(url, "reload", "--reason", "try")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        *problems,
        "muppet: error: 2 problem(s) in the configuration; nothing reloaded, the daemon runs on as before",
    ], done.stderr
    async with connect(url) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("daemon.reload", {"reason": "again"})
        assert (caught.value.code, caught.value.data) == (INVALID_CONFIGURATION, {"problems": problems})
        # the daemon runs on as before: the old pipeline, the old limits, no event
        run_id = await trigger(client, "conv")
        open_gate(tmp_path, run_id)
        await wait_run(client, run_id, {"succeeded"})
        assert setup.ledger_lines() == [f"v1 {run_id}"]
        assert [e["action"] for e in await operator_events(client)] == ["trigger"]
        status = await client.call("daemon.status")
        assert status["executors"] == [{"name": "local", "type": "local", "used": 0, "max": 8}]


async def test_a_removed_pipeline_makes_no_new_run_and_its_run_in_progress_finishes(
    nursery, tmp_path, database_url,
):
    setup = Setup(tmp_path, database_url).daemon().convert("v1")
    url = await start(nursery, setup)
    async with connect(url) as client:
        run_id = await trigger(client, "conv")
        await wait_state(client, run_id, "gate", {"running"})
        setup.remove("conv")
        assert await reloaded(url) == [
            f"reloaded {setup.path}",
            "pipelines removed: conv (no new runs; runs in progress finish under their own)",
        ]
        assert await refused(client, "runs.trigger", {"pipeline": "conv", "reference_time": LATER},
                             NOT_FOUND) == "unknown pipeline 'conv'"
        assert await refused(client, "runs.backfill", {"pipeline": "conv", "from": LATER, "to": LATER},
                             NOT_FOUND) == "unknown pipeline 'conv'"
        done = await muppet(url, "trigger", "conv")
        assert (done.returncode, done.stderr) == (1, "muppet: error: unknown pipeline 'conv'\n")
        assert [p["name"] for p in await client.call("pipelines.list")] == []
        open_gate(tmp_path, run_id)
        await wait_run(client, run_id, {"succeeded"})
        assert setup.ledger_lines() == [f"v1 {run_id}"]


async def test_a_new_pipeline_can_be_triggered_right_after_the_reload(nursery, tmp_path, database_url):
    setup = Setup(tmp_path, database_url).daemon()
    url = await start(nursery, setup)
    setup.convert("new", name="fresh")
    assert await reloaded(url) == [f"reloaded {setup.path}", "pipelines added: fresh"]
    done = await muppet(url, "trigger", "fresh", "--reference-time", REF)
    assert done.returncode == 0, done.stderr
    async with connect(url) as client:
        run_id = int(done.stdout)
        open_gate(tmp_path, run_id)
        await wait_run(client, run_id, {"succeeded"})
    assert setup.ledger_lines() == [f"new {run_id}"]


async def test_executor_max_jobs_raised_and_lowered_applies_at_once(nursery, tmp_path, database_url):
    setup = Setup(tmp_path, database_url).daemon(max_jobs=1).pipeline("fan", f"""
        [pipeline]
        name = "fan"
        owner = "ops"
        [steps.work]
        jobs = 4
        command = 'until [ -e {tmp_path}/open-job-$MUPPET_JOB_ID ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done'
        """)
    url = await start(nursery, setup)
    async with connect(url) as client:
        run_id = await trigger(client, "fan")

        async def states(want: list[str]) -> list[dict] | None:
            jobs = (await newest(client, run_id))["work"]
            return jobs if [j["state"] for j in jobs] == want else None

        jobs = await wait_until_async(lambda: states(["running", "waiting", "waiting", "waiting"]), DEADLINE,
                                      "one job running")
        assert jobs[1]["reason"] == "executor local: 1 of 1 slots busy"
        setup.daemon(max_jobs=3)
        assert await reloaded(url) == [f"reloaded {setup.path}", "executors changed: local"]
        await wait_until_async(lambda: states(["running", "running", "running", "waiting"]), DEADLINE,
                               "three jobs running")
        status = await client.call("daemon.status")
        assert status["executors"] == [{"name": "local", "type": "local", "used": 3, "max": 3}]
        setup.daemon(max_jobs=2)
        await reloaded(url)
        (tmp_path / f"open-job-{jobs[0]['id']}").touch()
        jobs = await wait_until_async(lambda: states(["succeeded", "running", "running", "waiting"]), DEADLINE,
                                      "the first job ending, the last still waiting")
        assert jobs[3]["reason"] == "executor local: 2 of 2 slots busy"
        (tmp_path / f"open-job-{jobs[1]['id']}").touch()
        await wait_until_async(lambda: states(["succeeded", "succeeded", "running", "running"]), DEADLINE,
                               "the last job running")
        for job in jobs[2:]:
            (tmp_path / f"open-job-{job['id']}").touch()
        await wait_run(client, run_id, {"succeeded"})


async def test_index_declarations_apply_at_once(nursery, tmp_path, database_url):
    setup = Setup(tmp_path, database_url).daemon()
    url = await start(nursery, setup)
    async with connect(url) as client:
        before = [p["slug"] for p in (await client.call("products.list"))["items"]]
        assert before == []
        setup.daemon(more="""
            [products.arome-pp]
            name = "AROME post-processed"
            contact = "ops"
            file_count = 3
            [formats.geotiff]
            name = "GeoTIFF"
            [backends.thredds]
            name = "THREDDS"
            url = "https://thredds.example/thredds/fileServer"
            """)
        result = await client.call("daemon.reload", {"reason": "arome-pp"})
        assert (result["products"], result["formats"], result["backends"]) == (["arome-pp"], ["geotiff"],
                                                                                ["thredds"])
        [product] = (await client.call("products.list"))["items"]
        assert (product["slug"], product["file_count"], product["contact"]) == ("arome-pp", 3, "ops")
        assert "geotiff" in [f["slug"] for f in await client.call("formats.list")]
        assert "thredds" in [b["slug"] for b in await client.call("backends.list")]
        # the same file again: nothing changed, no event
        again = await client.call("daemon.reload", {})
        assert again["changed"] is False and again["products"] == []
        assert [e["data"]["action"] for e in await client.call("events.list", {"kinds": ["operator"]})] == [
            "reload"]
        kinds = [e["kind"] for e in await client.call("events.list", {"kinds": ["product", "format", "backend"]})]
        assert kinds.count("product") == 1, kinds


# --- who did it, and what the operator is told --------------------------------------------------


async def test_the_reload_event_says_what_changed_and_a_reload_that_changes_nothing_writes_none(
    nursery, tmp_path, database_url,
):
    setup = Setup(tmp_path, database_url).daemon().convert("v1").convert("v1", name="other")
    url = await start(nursery, setup)
    setup.convert("v2")
    setup.remove("other")
    setup.convert("v1", name="fresh")
    setup.listen = "127.0.0.1:1"  # only a restart moves the API
    setup.daemon(max_jobs=3)
    lines = await reloaded(url, "--reason", "new convert")
    assert lines == [
        f"reloaded {setup.path}",
        "pipelines added: fresh",
        "pipelines changed: conv (new runs use the new definition; runs in progress finish under their own)",
        "pipelines removed: other (no new runs; runs in progress finish under their own)",
        "executors changed: local",
        "waiting for a restart: [api] listen (the daemon runs on the old values until it restarts)",
    ]
    unchanged = await muppet(url, "reload")
    assert unchanged.stdout.splitlines() == [
        f"nothing changed in {setup.path}",
        "waiting for a restart: [api] listen (the daemon runs on the old values until it restarts)",
    ]
    as_json = json.loads((await muppet(url, "reload", "--json")).stdout)
    assert as_json == {
        "source": str(setup.path), "changed": False, "pipelines_added": [], "pipelines_changed": [],
        "pipelines_removed": [], "executors_added": [], "executors_changed": [], "executors_removed": [],
        "products": [], "formats": [], "backends": [], "settings": [], "restart": ["[api] listen"],
        "warnings": [],
    }
    async with connect(url) as client:
        [event] = await operator_events(client)
    assert event == {"action": "reload", "by": "local", "reason": "new convert", "target": {
        "pipelines_added": ["fresh"], "pipelines_changed": ["conv"], "pipelines_removed": ["other"],
        "executors_added": [], "executors_changed": ["local"], "executors_removed": [], "products": [],
        "formats": [], "backends": [], "settings": [], "restart": ["[api] listen"]}}
    events = await muppet(url, "events", "--kind", "operator")
    [line] = events.stdout.splitlines()
    assert line.endswith("operator local reload pipelines_added=fresh pipelines_changed=conv "
                         "pipelines_removed=other executors_changed=local restart=[api] listen: new convert"), line


def write_tokens(path: Path, names: dict[str, tuple[str, str]]) -> None:
    """A tokens file: name -> (role, secret)."""
    lines = []
    for name, (role, secret) in names.items():
        lines += [f"[tokens.{name}]", f'role = "{role}"', f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"']
    path.write_text("\n".join(lines) + "\n")


async def test_reload_needs_an_admin_token_and_the_tokens_apply_at_once(nursery, tmp_path, database_url):
    secrets = tokens(tmp_path)
    setup = Setup(tmp_path, database_url, api=f'tokens_file = "{tmp_path}/tokens.toml"').daemon()
    url = await start(nursery, setup)
    async with connect(url, token=secrets["write"]) as writer, connect(url, token=secrets["read"]) as reader:
        message = await refused(writer, "daemon.reload", {}, UNAUTHORIZED)
        assert message == "unauthorized: daemon.reload needs an admin token; token 'write-desk' has role 'write'"
        done = await muppet(url, "reload", token=secrets["write"])
        assert (done.returncode, done.stderr) == (1, f"muppet: error: {message}\n")
        assert await reader.call("runs.list") == []
        # the write token's secret becomes the night desk's admin token; the read token goes
        write_tokens(tmp_path / "tokens.toml", {"admin-desk": ("admin", secrets["admin"]),
                                                "night-desk": ("admin", secrets["write"])})
        lines = await reloaded(url, "--reason", "night shift", token=secrets["admin"])
        assert lines == [f"reloaded {setup.path}", "settings applied: [api] tokens_file"]
        # at once, on the connections opened before
        assert (await writer.call("daemon.reload", {}))["changed"] is False
        message = await refused(reader, "runs.list", {}, UNAUTHORIZED)
        assert message == "unauthorized: runs.list needs a read token; the token sent is not in the tokens file"
    async with connect(url, token=secrets["write"]) as night:
        events = await operator_events(night)
    assert [(e["action"], e["by"], e["reason"], e["target"]["settings"]) for e in events] == [
        ("reload", "admin-desk", "night shift", ["[api] tokens_file"])]


# --- cron ----------------------------------------------------------------------------------------


async def test_cron_fires_what_the_reload_gives_it(autojump_clock):
    start = datetime(2026, 11, 28, 13, 0, tzinfo=UTC).timestamp()

    def timed(name: str, expr: str) -> Pipeline:
        return Pipeline(name, "ops", {"s": Step("s", "true")}, cron=(expr,))

    config = attrs.evolve(default_config(), pipelines={"a": timed("a", "0 * * * *"), "b": timed("b", "30 */6 * * *")})
    running = RunningConfig(config)
    send, receive = trio.open_memory_channel[Trigger](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(cron.run, config.pipelines, send, last_fired={},
                                   clock=lambda: start + trio.current_time(), running=running))
        first = await receive.receive()
        assert (first.pipeline, first.reference_time) == ("a", datetime(2026, 11, 28, 14, tzinfo=UTC))
        # a goes, c comes, b fires hourly at :10 now
        running.replace(attrs.evolve(config, pipelines={"b": timed("b", "10 * * * *"), "c": timed("c", "45 * * * *")}))
        fired = [await receive.receive() for _ in range(4)]
        nursery.cancel_scope.cancel()
    assert [(t.pipeline, t.reference_time.strftime("%H:%M")) for t in fired] == [
        ("b", "14:10"), ("c", "14:45"), ("b", "15:10"), ("c", "15:45")]


async def test_expiry_takes_a_new_interval_from_its_last_pass(autojump_clock):
    config = attrs.evolve(default_config(), index=IndexConfig(expiry_interval=60.0))
    running = RunningConfig(config)
    send, receive = trio.open_memory_channel[IndexWrite](10)
    passes: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(expiry.run, config.index, send, running=running))
        for _ in range(2):
            write = await receive.receive()
            passes.append(trio.current_time())
            assert write.reply is not None
            write.reply.send_nowait(IndexWritten(result={"deleted": []}))
        await trio.sleep(5)
        running.replace(attrs.evolve(config, index=IndexConfig(expiry_interval=10.0)))
        await receive.receive()
        passes.append(trio.current_time())
        nursery.cancel_scope.cancel()
    assert passes == [60.0, 120.0, 130.0]


# --- SIGHUP to a real daemon --------------------------------------------------------------------


async def test_sighup_reloads_a_real_daemon_and_a_bad_file_leaves_it_running(tmp_path, database_url):
    port = free_port()
    setup = Setup(tmp_path, database_url, listen=f"127.0.0.1:{port}").daemon().convert("v1")
    url = f"ws://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    with await trio.to_thread.run_sync(log.open, "wb") as stderr:
        process = await trio.lowlevel.open_process([*MUPPET, "daemon", "--config", str(setup.path)], stderr=stderr,
                                                   env=ENV)

    def log_text() -> str:
        return log.read_text(errors="replace")[-4000:]

    async def log_has(words: str) -> bool:
        return words in await trio.Path(log).read_text(errors="replace")

    async def pipelines() -> list[str] | None:
        try:
            async with connect(url) as client:
                return [p["name"] for p in await client.call("pipelines.list")]
        except DaemonUnreachable:
            return None

    try:
        await wait_until_async(pipelines, DEADLINE, "the daemon to answer", detail=log_text)
        setup.convert("v1", name="fresh")
        process.send_signal(signal.SIGHUP)
        await wait_until_async(lambda: log_has("reload by SIGHUP: pipelines added: fresh"), DEADLINE,
                               "the reload's log line", detail=log_text)
        assert await pipelines() == ["conv", "fresh"]
        async with connect(url) as client:
            [event] = await operator_events(client)
            assert (event["by"], event["target"]["pipelines_added"]) == ("SIGHUP", ["fresh"])

        setup.pipeline("fresh", "[pipeline]\nname = 'fresh'\n")
        process.send_signal(signal.SIGHUP)
        await wait_until_async(lambda: log_has("reload by SIGHUP: refused: "), DEADLINE, "the refusal",
                               detail=log_text)
        text = log.read_text()
        fresh = tmp_path / "pipelines" / "fresh.toml"
        assert f"reload by SIGHUP: {fresh}: [pipeline] owner: missing required key" in text, log_text()
        assert f"reload by SIGHUP: {fresh}: [steps] a pipeline needs at least one [steps.NAME] table" in text
        assert ("reload by SIGHUP: refused: 2 problem(s) in the configuration; nothing reloaded, the daemon runs "
                "on as before") in text, log_text()
        assert process.poll() is None
        assert await pipelines() == ["conv", "fresh"]
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(DEADLINE):
            assert await process.wait() == 0, log_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
