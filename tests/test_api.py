"""The API task served for real: trio-websocket on a free port, a real SQLite
store, real websocket clients (the raw library and muppet.api.client).

The scheduler runs in parallel and is tested on its own; here its place on the
other end of the ``scheduler`` channel is taken by ``stand_in_scheduler``, a
few lines that answer Trigger and Command messages the way the scheduler's
contract says (messages.Reply on the reply channel). The daemon's end-to-end
tests exercise the real one.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from functools import partial

import attrs
import pytest
import trio
import trio_websocket
from services import free_port  # tests/ is on sys.path

from muppet import codec, messages, model
from muppet.api import client as api_client
from muppet.api import server
from muppet.api.protocol import (
    CONFLICT,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    METHODS,
    NOT_FOUND,
    PARSE_ERROR,
    UNAVAILABLE,
    RpcError,
)
from muppet.db import task as db_task
from muppet.db import writes
from muppet.db.store import open_store

REF = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


def make_config(database: str = "") -> model.Config:
    ecmwf = model.Pipeline(
        name="ecmwf",
        owner="ops",
        steps={
            "fetch": model.Step("fetch", "fetch.sh"),
            "convert": model.Step("convert", "convert.sh", parents=("fetch",), jobs=2, executor="slurm"),
        },
        requires=("ecmwf-raw",),
        produces=("ecmwf-nc",),
        cron=("15 6 * * *",),
        timezone="Europe/Oslo",
    )
    arome = model.Pipeline(name="arome", owner="ops", steps={"run": model.Step("run", "true")})
    return model.Config(
        daemon=model.DaemonConfig(database=database, state_dir="/tmp", output_dir="/tmp"),
        api=model.ApiConfig(listen="127.0.0.1:0"),
        executors={"local": model.ExecutorConfig("local", "local")},
        pipelines={"ecmwf": ecmwf, "arome": arome},
        stakeholders={},
    )


def job(id, run_id, pipeline, step, index=0, count=1, **kw):
    return model.Job(id=id, run_id=run_id, pipeline=pipeline, step=step, index=index, count=count,
                     executor="local", created_at=1_700_000_000.0 + id, **kw)


RUN1 = model.Run(1, "ecmwf", REF, state=model.RunState.FAILED, cause=model.RunCause.CRON,
                 created_at=1_700_000_000.0, ended_at=1_700_000_100.0)
RUN1_JOBS = (
    job(1, 1, "ecmwf", "fetch", state=model.JobState.SUCCEEDED, exit_code=0),
    job(2, 1, "ecmwf", "convert", 0, 2, state=model.JobState.FAILED, exit_code=3, failures=1,
        successor=4, reason="exit code 3"),
    job(3, 1, "ecmwf", "convert", 1, 2, state=model.JobState.SUCCEEDED, exit_code=0),
    job(4, 1, "ecmwf", "convert", 0, 2, state=model.JobState.FAILED, exit_code=3, failures=2,
        predecessor=2, reason="exit code 3"),
)
RUN2 = model.Run(2, "arome", datetime(2026, 11, 28, 12, 0, tzinfo=UTC), created_at=1_700_000_200.0)
RUN2_JOBS = (job(5, 2, "arome", "run", state=model.JobState.RUNNING),)


def seed(url: str) -> None:
    store = open_store(url)
    try:
        writes.write(store, [
            messages.NewRun(RUN1, RUN1_JOBS),
            messages.NewRun(RUN2, RUN2_JOBS),
            model.JobLog(1, "fetched 3 files\n", "warning: slow mirror\n"),
        ])
    finally:
        store.close()


@attrs.define
class StandIn:
    """What the stand-in scheduler saw, and the switches a test flips."""

    received: list = attrs.field(factory=list)
    #: set when the first message has been received
    arrived: trio.Event = attrs.field(factory=trio.Event)
    gate: trio.Event = attrs.field(factory=trio.Event)
    runs: dict = attrs.field(factory=dict)


async def stand_in_scheduler(inbox: trio.MemoryReceiveChannel, state: StandIn) -> None:
    """Answers like the scheduler: a Trigger makes a run (or conflicts with an
    existing one), hold/release/kill/rerun follow the job's state. Pipeline
    "arome" waits for ``state.gate`` before answering (a slow scheduler);
    reference year 1999 never gets an answer; job 3's commands get a reply of
    the wrong type (a scheduler bug)."""
    async for asked in inbox:
        message, reply_to = asked.event, asked.reply
        state.received.append(message)
        state.arrived.set()
        if isinstance(message, messages.Trigger):
            if message.reference_time.year == 1999:
                continue
            if message.pipeline == "arome":
                await state.gate.wait()
            key = (message.pipeline, message.reference_time)
            if key in state.runs or key == ("ecmwf", REF):
                reply = messages.Reply(error=f"run of {message.pipeline} for "
                                       f"{codec.format_time(message.reference_time)} exists", code=CONFLICT)
            else:
                state.runs[key] = 100 + len(state.runs)
                reply = messages.Reply(result={"run_id": state.runs[key]})
            reply_to.send_nowait(reply)
        elif isinstance(message, messages.WhyWaiting):
            reply_to.send_nowait(messages.Reply(result={job_id: "parents: a[0] running" for job_id in message.job_ids}))
        elif isinstance(message, messages.Command):
            if message.job_id == 3:
                reply_to.send_nowait("not a Reply")
            elif message.action == "hold" and message.job_id == 5:
                reply_to.send_nowait(messages.Reply(error="job 5 is running, not waiting", code=CONFLICT))
            elif message.action == "rerun":
                reply_to.send_nowait(messages.Reply(result={"job_id": 77}))
            else:
                reply_to.send_nowait(messages.Reply(result={"job_id": message.job_id, "state": message.action}))


async def database(store_url: str, inbox: trio.MemoryReceiveChannel) -> None:
    store = await trio.to_thread.run_sync(open_store, store_url)
    try:
        persisted, _ = trio.open_memory_channel(math.inf)
        await db_task.run(store, inbox, persisted)
    finally:
        store.close()


@attrs.define
class Api:
    url: str
    port: int
    scheduler: StandIn
    store_url: str


async def start_api(nursery, tmp_path, *, reply_timeout=30.0, scheduler=True) -> Api:
    store_url = "sqlite:///" + str(tmp_path / "muppet.db")
    await trio.to_thread.run_sync(seed, store_url)
    send, receive = trio.open_memory_channel(100)
    state = StandIn()
    if scheduler:
        nursery.start_soon(stand_in_scheduler, receive, state)
    else:
        receive.close()  # no scheduler at all: sending to it fails at once
    # index writes go to the real database task
    to_database, database_inbox = trio.open_memory_channel(100)
    nursery.start_soon(database, store_url, database_inbox)
    port = await nursery.start(partial(
        server.run, make_config(store_url), send, to_database, reply_timeout=reply_timeout))
    return Api(f"ws://127.0.0.1:{port}", port, state, store_url)


@pytest.fixture
async def api(nursery, tmp_path):
    return await start_api(nursery, tmp_path)


async def raw(ws, payload) -> object:
    """Send one message (text as is, anything else as JSON); return the decoded reply."""
    await ws.send_message(payload if isinstance(payload, (str, bytes)) else json.dumps(payload))
    with trio.fail_after(10):  # a safety net against a hang, not a timing assertion
        return json.loads(await ws.get_message())


def rpc(method, params=None, id=1):
    message = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return message


# --- every method ----------------------------------------------------------------


async def test_daemon_status(api):
    async with api_client.connect(api.url) as client:
        status = await client.call("daemon.status")
    assert status["pipelines"] == ["arome", "ecmwf"]
    assert status["version"] == "0.1.0"
    codec.parse_time(status["started_at"])


async def test_pipelines_list(api):
    async with api_client.connect(api.url) as client:
        pipelines = await client.call("pipelines.list", {})
    assert [p["name"] for p in pipelines] == ["arome", "ecmwf"]
    assert pipelines[1] == {
        "name": "ecmwf", "owner": "ops", "cron": ["15 6 * * *"], "timezone": "Europe/Oslo",
        "requires": ["ecmwf-raw"], "produces": ["ecmwf-nc"],
        "steps": [
            {"name": "fetch", "parents": [], "jobs": 1, "executor": "local"},
            {"name": "convert", "parents": ["fetch"], "jobs": 2, "executor": "slurm"},
        ],
    }


async def test_runs_list_and_filters(api):
    async with api_client.connect(api.url) as client:
        runs = await client.call("runs.list")
        assert runs == [codec.run_to_dict(RUN2), codec.run_to_dict(RUN1)]
        assert await client.call("runs.list", {"pipeline": "ecmwf"}) == [codec.run_to_dict(RUN1)]
        assert await client.call("runs.list", {"state": "running"}) == [codec.run_to_dict(RUN2)]
        assert await client.call("runs.list", {"limit": 1}) == [codec.run_to_dict(RUN2)]
        assert await client.call("runs.list", {"before_id": 2}) == [codec.run_to_dict(RUN1)]
        assert await client.call("runs.list", {"pipeline": "nope"}) == []


async def test_runs_get(api):
    async with api_client.connect(api.url) as client:
        run = await client.call("runs.get", {"run_id": 1})
        assert run == {**codec.run_to_dict(RUN1), "jobs": [codec.job_to_dict(j) for j in RUN1_JOBS]}
        with pytest.raises(RpcError) as caught:
            await client.call("runs.get", {"run_id": 42})
    assert caught.value.code == NOT_FOUND and "42" in caught.value.message


async def test_jobs_list_get(api):
    async with api_client.connect(api.url) as client:
        every = await client.call("jobs.list")
        assert [j["id"] for j in every] == [1, 2, 3, 4, 5]
        assert every[1] == codec.job_to_dict(RUN1_JOBS[1])
        for key in ("id", "run_id", "pipeline", "step", "index", "state", "exit_code",
                    "failures", "predecessor", "successor"):
            assert key in every[0]
        assert [j["id"] for j in await client.call("jobs.list", {"run_id": 2})] == [5]
        assert [j["id"] for j in await client.call("jobs.list", {"state": "failed"})] == [2, 4]
        assert [j["id"] for j in await client.call("jobs.list", {"limit": 2})] == [4, 5]
        assert await client.call("jobs.get", {"job_id": 4}) == codec.job_to_dict(RUN1_JOBS[3])
        assert await client.call("jobs.get", [4]) == codec.job_to_dict(RUN1_JOBS[3])
        with pytest.raises(RpcError) as caught:
            await client.call("jobs.get", {"job_id": 999})
    assert caught.value.code == NOT_FOUND


async def test_jobs_logs(api):
    async with api_client.connect(api.url) as client:
        assert await client.call("jobs.logs", {"job_id": 1}) == {
            "job_id": 1, "stream": "stdout", "text": "fetched 3 files\n"}
        assert await client.call("jobs.logs", {"job_id": 1, "stream": "stderr"}) == {
            "job_id": 1, "stream": "stderr", "text": "warning: slow mirror\n"}
        # still running: nothing kept yet
        assert await client.call("jobs.logs", {"job_id": 5}) == {"job_id": 5, "stream": "stdout", "text": ""}
        with pytest.raises(RpcError) as caught:
            await client.call("jobs.logs", {"job_id": 6})
    assert caught.value.code == NOT_FOUND


async def test_runs_trigger(api):
    async with api_client.connect(api.url) as client:
        result = await client.call("runs.trigger", {"pipeline": "ecmwf", "reference_time": "2026-11-29T06:00:00+01:00"})
        assert result == {"run_id": 100}
        (trigger,) = api.scheduler.received
        assert trigger.pipeline == "ecmwf"
        assert trigger.reference_time == datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
        assert trigger.cause == "manual"

        # default reference time: now, whole seconds, UTC
        before = datetime.now(UTC).replace(microsecond=0)
        assert await client.call("runs.trigger", {"pipeline": "ecmwf"}) == {"run_id": 101}
        moment = api.scheduler.received[-1].reference_time
        assert moment.microsecond == 0 and moment.utcoffset().total_seconds() == 0
        assert before <= moment <= datetime.now(UTC)

        with pytest.raises(RpcError) as caught:  # the scheduler's error, relayed with its code
            await client.call("runs.trigger", {"pipeline": "ecmwf", "reference_time": "2026-11-28T06:00:00Z"})
        assert caught.value.code == CONFLICT and "exists" in caught.value.message

        with pytest.raises(RpcError) as caught:
            await client.call("runs.trigger", {"pipeline": "gfs"})
        assert caught.value.code == NOT_FOUND and "'gfs'" in caught.value.message

        with pytest.raises(RpcError) as caught:
            await client.call("runs.trigger", {"pipeline": "ecmwf", "reference_time": "tomorrow"})
        assert caught.value.code == INVALID_PARAMS and "reference_time" in caught.value.message
    assert len(api.scheduler.received) == 3  # nothing sent for the refused ones


async def test_job_commands(api):
    async with api_client.connect(api.url) as client:
        for action in ("hold", "release", "kill"):
            assert await client.call(f"jobs.{action}", {"job_id": 4}) == {"job_id": 4, "state": action}
        with pytest.raises(RpcError) as caught:
            await client.call("jobs.hold", {"job_id": 5})
        assert caught.value.code == CONFLICT and caught.value.message == "job 5 is running, not waiting"
        with pytest.raises(RpcError) as caught:
            await client.call("jobs.kill", {"job_id": 404})
        assert caught.value.code == NOT_FOUND
        assert await client.call("jobs.rerun", {"job_id": 4}) == {"job_id": 77}
    commands = api.scheduler.received
    assert [(c.action, c.job_id) for c in commands] == [
        ("hold", 4), ("release", 4), ("kill", 4), ("hold", 5), ("rerun", 4)]
    assert commands[0].run is None and commands[0].jobs == ()
    # a rerun carries its run and all the run's jobs, read from the database
    assert commands[-1].run == RUN1 and commands[-1].jobs == RUN1_JOBS


async def test_a_bad_scheduler_reply_is_an_internal_error_and_the_connection_goes_on(api):
    async with api_client.connect(api.url) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("jobs.hold", {"job_id": 3})
        assert caught.value.code == INTERNAL_ERROR
        assert (await client.call("jobs.get", {"job_id": 3}))["id"] == 3


async def test_scheduler_silent_is_unavailable(nursery, tmp_path):
    api = await start_api(nursery, tmp_path, reply_timeout=0.5)
    async with api_client.connect(api.url) as client:
        with pytest.raises(RpcError) as caught:
            await client.call("runs.trigger", {"pipeline": "ecmwf", "reference_time": "1999-01-01"})
        assert caught.value.code == UNAVAILABLE and "0.5 s" in caught.value.message
        later = {"pipeline": "ecmwf", "reference_time": "2030-01-01"}
        assert await client.call("runs.trigger", later) == {"run_id": 100}


async def test_scheduler_gone_is_unavailable(nursery, tmp_path):
    api = await start_api(nursery, tmp_path, scheduler=False)
    async with api_client.connect(api.url) as client:
        for method, params in (("runs.trigger", {"pipeline": "ecmwf"}), ("jobs.kill", {"job_id": 1})):
            with pytest.raises(RpcError) as caught:
                await client.call(method, params)
            assert caught.value.code == UNAVAILABLE
        assert (await client.call("runs.get", {"run_id": 1}))["id"] == 1


# --- bad input: error replies, and the connection goes on ---------------------------


async def test_bad_input_on_one_connection(api):
    async with trio_websocket.open_websocket_url(api.url) as ws:
        ok = rpc("jobs.get", {"job_id": 1}, id="ok")

        reply = await raw(ws, '{"jsonrpc": "2.0", "method": ')
        assert reply["error"]["code"] == PARSE_ERROR and reply["id"] is None
        assert (await raw(ws, ok))["result"]["id"] == 1

        reply = await raw(ws, b"\xff\xfe not utf-8")
        assert reply["error"]["code"] == PARSE_ERROR
        assert (await raw(ws, ok))["id"] == "ok"

        reply = await raw(ws, rpc("jobs.frobnicate", {"job_id": 1}, id=7))
        assert reply == {"jsonrpc": "2.0", "id": 7, "error": {
            "code": METHOD_NOT_FOUND, "message": "method not found: 'jobs.frobnicate'",
            "data": {"method": "jobs.frobnicate"}}}
        assert (await raw(ws, ok))["id"] == "ok"

        reply = await raw(ws, rpc("runs.list", {"limit": "many"}, id=8))
        assert reply["error"]["code"] == INVALID_PARAMS and reply["error"]["data"] == {"param": "limit"}
        reply = await raw(ws, rpc("jobs.get", {"jobid": 1}, id=9))
        assert reply["error"]["code"] == INVALID_PARAMS and "'jobid'" in reply["error"]["message"]

        reply = await raw(ws, {"jsonrpc": "1.0", "method": "jobs.get", "id": 10})
        assert reply["error"]["code"] == INVALID_REQUEST and reply["id"] == 10
        reply = await raw(ws, "[]")
        assert reply["error"]["code"] == INVALID_REQUEST
        reply = await raw(ws, "[" * 50_000)
        assert reply["error"]["code"] == PARSE_ERROR
        assert (await raw(ws, ok))["result"]["id"] == 1


async def test_batch_and_notifications(api):
    async with trio_websocket.open_websocket_url(api.url) as ws:
        replies = await raw(ws, [
            rpc("jobs.get", {"job_id": 1}, id=1),
            {"jsonrpc": "2.0", "method": "jobs.get", "params": {"job_id": 2}},  # notification
            rpc("jobs.get", {"job_id": 999}, id=2),
            rpc("nope", id=3),
            42,
            rpc("runs.trigger", {"pipeline": "ecmwf", "reference_time": "2031-01-01T00:00Z"}, id=4),
            rpc("daemon.status", id=5),
        ])
        assert [r["id"] for r in replies] == [1, 2, 3, None, 4, 5]
        assert replies[0]["result"]["id"] == 1
        assert replies[1]["error"]["code"] == NOT_FOUND
        assert replies[2]["error"]["code"] == METHOD_NOT_FOUND
        assert replies[3]["error"]["code"] == INVALID_REQUEST
        assert replies[4]["result"] == {"run_id": 100}
        assert "version" in replies[5]["result"]

        # Notifications get nothing back, not even for errors, and a batch of
        # them gets no message at all: the next message read is the answer to
        # the request sent after them.
        await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "nope"}))
        await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "jobs.get", "params": {"job_id": "x"}}))
        await ws.send_message(json.dumps([{"jsonrpc": "2.0", "method": "daemon.status"},
                                          {"jsonrpc": "2.0", "method": "runs.list"}]))
        assert (await raw(ws, rpc("jobs.get", {"job_id": 2}, id="after")))["id"] == "after"

    # only the batch's one trigger reached the scheduler
    notified = [m for m in api.scheduler.received if isinstance(m, messages.Trigger)]
    assert len(notified) == 1


async def test_a_slow_command_does_not_block_the_connection(api):
    """Pipeline "arome" makes the stand-in wait for the gate: the other calls on
    the same connection are answered meanwhile, their replies overtaking the
    trigger's (and the client routes each to its caller by id)."""
    results = {}
    async with api_client.connect(api.url) as client:
        async with trio.open_nursery() as nursery:
            async def trigger():
                results["trigger"] = await client.call("runs.trigger", {"pipeline": "arome"})
            nursery.start_soon(trigger)
            with trio.fail_after(10):  # a safety net against a hang
                await api.scheduler.arrived.wait()  # the trigger has reached the scheduler
            for job_id in (1, 2, 3):
                assert (await client.call("jobs.get", {"job_id": job_id}))["id"] == job_id
            assert "trigger" not in results
            api.scheduler.gate.set()
    assert results["trigger"] == {"run_id": 100}


async def test_closing_with_a_call_in_flight_leaves_the_server_running(api):
    async with trio_websocket.open_websocket_url(api.url) as ws:
        await ws.send_message(json.dumps(rpc("runs.trigger", {"pipeline": "arome"})))
        with trio.fail_after(10):  # a safety net against a hang
            await api.scheduler.arrived.wait()
    api.scheduler.gate.set()
    async with api_client.connect(api.url) as client:
        assert (await client.call("jobs.get", {"job_id": 5}))["state"] == "running"


async def test_abrupt_disconnects_leave_the_server_running(api):
    for _ in range(3):
        stream = await trio.open_tcp_stream("127.0.0.1", api.port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        await stream.aclose()
        stream = await trio.open_tcp_stream("127.0.0.1", api.port)
        await stream.send_all(b"garbage that is not HTTP\r\n\r\n")
        await stream.aclose()
    async with api_client.connect(api.url) as client:
        assert (await client.call("daemon.status"))["pipelines"] == ["arome", "ecmwf"]


async def test_concurrent_clients(api):
    seen = []

    async def one_client(n):
        async with api_client.connect(api.url) as client:
            for i in range(10):
                job_id = 1 + (n + i) % 5
                seen.append((await client.call("jobs.get", {"job_id": job_id}))["id"] == job_id)
                if i % 3 == 0:
                    with pytest.raises(RpcError):
                        await client.call("no.such.method")

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(one_client, n)
    assert len(seen) == 200 and all(seen)


# --- the client ------------------------------------------------------------------------


async def test_client_many_calls_at_once_on_one_connection(api):
    async with api_client.connect(api.url) as client:
        got = {}

        async def get(job_id):
            got[job_id] = (await client.call("jobs.get", {"job_id": job_id}))["id"]

        async with trio.open_nursery() as nursery:
            for job_id in [1, 2, 3, 4, 5] * 10:
                nursery.start_soon(get, job_id)
    assert got == {i: i for i in range(1, 6)}


async def test_client_errors_come_out_bare(api):
    with pytest.raises(RpcError):
        async with api_client.connect(api.url) as client:
            await client.call("jobs.get", {"job_id": 999})
    with pytest.raises(KeyError):
        async with api_client.connect(api.url) as client:
            raise KeyError("mine")


async def test_client_daemon_unreachable():
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(api_client.DaemonUnreachable) as caught:
        async with api_client.connect(url):
            pass
    assert str(caught.value) == f"cannot reach the MUPPET daemon at {url}: connection refused"
    with pytest.raises(ValueError, match="ws://"):
        async with api_client.connect("http://127.0.0.1:1"):
            pass


async def test_client_connection_lost(nursery, tmp_path):
    # A server that accepts, reads one message and hangs up.
    async def hang_up(request):
        ws = await request.accept()
        await ws.get_message()
        await ws.aclose()

    listener = await nursery.start(trio_websocket.serve_websocket, hang_up, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{listener.port}"
    async with api_client.connect(url) as client:
        with pytest.raises(api_client.ConnectionLost):
            await client.call("daemon.status")
        with pytest.raises(api_client.ConnectionLost):
            await client.call("daemon.status")


def test_methods_and_handlers_agree():
    assert server.HANDLERS.keys() == METHODS.keys()
