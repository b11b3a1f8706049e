"""The index through the real daemon's API: registering, querying, the event
stream with resume, tokens and roles, TLS, bad input. The daemon runs
in-process (``daemon.serve``) on SQLite and on PostgreSQL; clients are real
websocket clients."""

from __future__ import annotations

import hashlib
import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
import trio_websocket
from waiting import wait_until_async  # tests/ is on sys.path

from muppet import daemon
from muppet.api.client import DaemonUnreachable, RpcError, connect
from muppet.api.protocol import INVALID_PARAMS, INVALID_REQUEST, NOT_FOUND, UNAUTHORIZED
from muppet.config import load_config
from muppet.index import events as hub_module

REF = "2026-11-28T06:00:00Z"
HASH = "ab" * 32

DAEMON = """
[daemon]
database = "{database}"
state_dir = "{tmp}/state"
output_dir = "{tmp}/lustre"
pipelines = ["pipelines/*.toml"]
[api]
listen = "127.0.0.1:0"
{api}
[stakeholders.ops]
name = "Operations"
[products.arome]
name = "AROME"
contact = "ops"
file_count = 2
operational = true
projection = "lambert"
[products.ecmwf]
name = "ECMWF"
[formats.text]
name = "Plain text"
[backends.lustre-a]
name = "Lustre A"
url = "file://{tmp}/lustre"
[backends.thredds-1]
name = "THREDDS 1"
url = "https://thredds-1.example/fileServer"
[index]
outputs_backend = "lustre-a"
"""


def make_config(tmp_path: Path, database_url: str, api: str = "", pipelines: dict[str, str] | None = None):
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    for name, text in (pipelines or {}).items():
        (tmp_path / "pipelines" / f"{name}.toml").write_text(textwrap.dedent(text))
    path = tmp_path / "muppet.toml"
    path.write_text(DAEMON.format(database=database_url, tmp=tmp_path, api=textwrap.dedent(api)))
    return load_config(path)


def file_entry(name: str, product: str = "arome", backend: str = "lustre-a", **kw) -> dict:
    base = "file:///lustre" if backend == "lustre-a" else "https://thredds-1.example/fileServer"
    return {"product": product, "reference_time": REF, "backend": backend, "format": "netcdf",
            "url": f"{base}/{product}/{name}", "size": 10, "hash": HASH, **kw}


@pytest.fixture
async def api(nursery, tmp_path, database_url):
    config = make_config(tmp_path, database_url)
    port = await nursery.start(daemon.serve, config)
    return f"ws://127.0.0.1:{port}"


# --- registering and querying ----------------------------------------------------


async def test_register_then_query_sees_it_at_once(api):
    async with connect(api) as client:
        assert await client.call("instances.latest", {"product": "arome", "complete": True}) is None
        first = await client.call("files.register", {"files": [file_entry("a.nc")]})
        (item,) = first["files"]
        assert item["version"] == 1 and item["name"] == "a.nc"
        # answered from the cache before the second file: must not stay stale
        assert await client.call("instances.latest", {"product": "arome", "complete": True}) is None
        await client.call("files.register", {"files": [file_entry("b.nc")]})
        latest = await client.call("instances.latest", {"product": "arome", "complete": True})
        assert latest["id"] == item["instance_id"] and latest["completed_at"]
        files = await client.call("files.list", {"instance_id": latest["id"], "backend": "lustre-a"})
        assert [f["name"] for f in files["items"]] == ["a.nc", "b.nc"] and files["next"] is None
        by_time = await client.call("files.list", {"product": "arome", "reference_time": REF})
        assert by_time == files
        done = await client.call("instances.completeness", {"instance_id": latest["id"]})
        assert done["complete"] and done["pairs"] == [
            {"backend": "lustre-a", "format": "netcdf", "files": 2, "file_count": 2, "complete": True}]
        window = await client.call("instances.list", {"product": "arome", "begin": "2026-11-28", "end": "2026-11-29"})
        assert [i["id"] for i in window["items"]] == [latest["id"]]
        product = await client.call("products.get", {"product": "arome"})
        assert product["metadata"] == {"projection": "lambert"} and product["file_count"] == 2
        listed = await client.call("products.list", {"limit": 1})
        assert [p["slug"] for p in listed["items"]] == ["arome"] and listed["next"] == "arome"
        assert "text" in [f["slug"] for f in await client.call("formats.list")]
        expiring = await client.call("files.expiring", {"before": "2100-01-01T00:00:00Z"})
        assert expiring["items"] == []


async def test_delete_and_torrent_and_copies(api):
    async with connect(api) as client:
        (item,) = (await client.call("files.register", {"files": [file_entry("a.nc")]}))["files"]
        copy = (await client.call("files.register", {"files": [
            file_entry("a.nc", backend="thredds-1", data_id=item["data_id"])]}))["files"][0]
        copies = await client.call("files.copies", {"data_id": item["data_id"]})
        assert [c["id"] for c in copies] == [item["id"], copy["id"]]
        done = await client.call("files.set_torrent", {"file_id": item["id"], "info_hash": "cd" * 20,
                                                       "torrent": "dG9ycmVudA==", "peer": "127.0.0.1:6881"})
        assert done["info_hash"] == "cd" * 20 and done["peer"] == "127.0.0.1:6881"
        got = await client.call("files.get", {"file_id": item["id"], "torrent": True})
        assert got["torrent"] == "dG9ycmVudA=="
        deleted = await client.call("files.delete", {"ids": [copy["id"]], "reason": "disk full"})
        assert deleted == {"deleted": [copy["id"]]}
        assert [c["id"] for c in await client.call("files.copies", {"data_id": item["data_id"]})] == [item["id"]]


async def test_a_compact_files_list_holds_only_the_fields_asked_for(api):
    async with connect(api) as client:
        files = (await client.call("files.register", {"files": [
            file_entry(f"{n}.nc") for n in range(3)]}))["files"]
        instance_id = files[0]["instance_id"]
        fields = ["url", "id", "size"]
        first = await client.call("files.list", {"instance_id": instance_id, "limit": 2, "fields": fields})
        # in a file's own order, whatever order they were asked in
        assert [list(item) for item in first["items"]] == [["id", "url", "size"]] * 2
        assert first["items"] == [{"id": f["id"], "url": f["url"], "size": 10} for f in files[:2]]
        rest = await client.call("files.list", {"instance_id": instance_id, "limit": 2, "fields": fields,
                                                "cursor": first["next"]})
        assert rest == {"items": [{"id": files[2]["id"], "url": files[2]["url"], "size": 10}], "next": None}
        # asked again, from the cache; and the whole files are another answer
        assert await client.call("files.list", {"instance_id": instance_id, "limit": 2, "fields": fields}) == first
        whole = await client.call("files.list", {"instance_id": instance_id})
        assert [item["hash"] for item in whole["items"]] == [HASH] * 3
        by_time = await client.call("files.list", {"product": "arome", "reference_time": REF, "fields": ["name"]})
        assert by_time["items"] == [{"name": f"{n}.nc"} for n in range(3)]
        # a file registered since is in the next compact answer: the cache is kept current
        await client.call("files.register", {"files": [file_entry("3.nc")]})
        assert len((await client.call("files.list", {"instance_id": instance_id, "fields": ["id"]}))["items"]) == 4


@pytest.mark.parametrize("method, params, code, words", [
    ("files.list", {"instance_id": 1, "fields": ["id", "colour"]}, INVALID_PARAMS, "fields holds 'colour'"),
    ("files.list", {"instance_id": 1, "fields": []}, INVALID_PARAMS, "'fields' must name at least one field"),
    ("files.list", {"instance_id": 1, "fields": "id"}, INVALID_PARAMS, "'fields' must be an array"),
    ("instances.latest", {"product": "nope"}, NOT_FOUND, "unknown product 'nope'"),
    ("instances.list", {"product": "nope"}, NOT_FOUND, "unknown product 'nope'"),
    ("products.get", {"product": "nope"}, NOT_FOUND, "unknown product 'nope'"),
    ("files.list", {"instance_id": 999}, NOT_FOUND, "unknown instance 999"),
    ("files.list", {}, INVALID_PARAMS, "give instance_id, or product and reference_time"),
    ("files.list", {"product": "arome", "reference_time": REF}, NOT_FOUND, "no instance of 'arome'"),
    ("instances.list", {"product": "arome", "begin": "yesterday"}, INVALID_PARAMS, "'yesterday'"),
    ("instances.list", {"product": "arome", "cursor": "x"}, INVALID_PARAMS, "cursor"),
    ("files.register", {"files": [file_entry("a.nc", size=-1)]}, INVALID_PARAMS, "files[0].size"),
    ("files.register", {"files": [file_entry("a.nc", hash="xyz")]}, INVALID_PARAMS, "files[0].hash"),
    ("files.register", {"files": [file_entry("a.nc", colour="red")]}, INVALID_PARAMS, "files[0].colour"),
    ("files.register", {"files": [file_entry("a.nc", product="nope")]}, NOT_FOUND, "unknown product 'nope'"),
    ("files.register", {"files": []}, INVALID_PARAMS, "files must hold at least one file"),
    ("files.register", {"files": "a.nc"}, INVALID_PARAMS, "'files' must be an array"),
    ("files.delete", {"ids": [12345]}, NOT_FOUND, "unknown data instance 12345"),
    ("files.set_torrent", {"file_id": 1, "info_hash": "zz", "torrent": ""}, INVALID_PARAMS, "info_hash"),
    ("files.set_torrent", {"file_id": 1, "info_hash": "cd" * 20, "torrent": "", "peer": "x"}, INVALID_PARAMS, "peer"),
    ("files.register", {"files": [file_entry("a.nc", peer="nowhere")]}, INVALID_PARAMS, "files[0].peer"),
    ("events.subscribe", {"kinds": ["weather"]}, INVALID_PARAMS, "kinds"),
    ("products.define", {"product": {"slug": "x"}}, INVALID_PARAMS, "product.name is required"),
    ("products.define", {"product": {"slug": "x", "name": "X", "contact": "nobody"}}, INVALID_PARAMS, "nobody"),
    ("products.define", {"product": {"slug": "x", "name": "X", "parents": ["nope"]}}, NOT_FOUND, "nope"),
])
async def test_bad_input_is_named(api, method, params, code, words):
    async with connect(api) as client:
        with pytest.raises(RpcError) as caught:
            await client.call(method, params)
        assert caught.value.code == code and words in caught.value.message, caught.value.message
        assert (await client.call("daemon.status"))["version"]


async def test_definitions_through_the_api(api):
    async with connect(api) as client:
        made = await client.call("products.define", {"product": {
            "slug": "arome-pp", "name": "AROME pp", "parents": ["arome"], "file_count": 3,
            "metadata": {"grid_resolution": 2.5}}})
        assert made["changed"] and made["parents"] == ["arome"]
        assert (await client.call("products.get", {"product": "arome-pp"}))["file_count"] == 3
        again = await client.call("products.define", {"product": {
            "slug": "arome-pp", "name": "AROME pp", "parents": ["arome"], "file_count": 3,
            "metadata": {"grid_resolution": 2.5}}})
        assert not again["changed"]
        await client.call("formats.define", {"format": {"slug": "zarr", "name": "Zarr"}})
        await client.call("backends.define", {"backend": {"slug": "s3", "name": "S3", "url": "s3://bucket/"}})
        assert "zarr" in [f["slug"] for f in await client.call("formats.list")]
        assert {"slug": "s3", "name": "S3", "url": "s3://bucket"} in await client.call("backends.list")


async def test_messages_over_the_limit_get_an_error_and_the_connection_goes_on(api):
    async with trio_websocket.open_websocket_url(api, max_message_size=64 * 1024 * 1024) as ws:
        big = json.dumps({"jsonrpc": "2.0", "method": "daemon.echo", "params": {"data": "x" * 1_100_000}, "id": 1})
        await ws.send_message(big)
        reply = json.loads(await ws.get_message())
        assert reply["error"]["code"] == INVALID_REQUEST
        assert "max_message_bytes = 1048576" in reply["error"]["message"]
        echo = {"jsonrpc": "2.0", "method": "daemon.echo", "params": {"data": "hi"}, "id": 2}
        await ws.send_message(json.dumps(echo))
        assert json.loads(await ws.get_message())["result"] == "hi"
    # far over: trio-websocket closes that connection (1009); the daemon serves on
    async with trio_websocket.open_websocket_url(api) as ws:
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.send_message("[" + "1," * 2_000_000 + "1]")
            await ws.get_message()
        assert closed.value.reason.code == 1009
    async with connect(api) as client:
        assert await client.call("daemon.echo", {"data": "still here"}) == "still here"


# --- the event stream ------------------------------------------------------------


async def collect(stream, count: int) -> list[dict]:
    got = []
    with trio.fail_after(20):  # a safety net against a hang, not a timing assertion
        async for event in stream:
            got.append(event)
            if len(got) == count:
                return got
    return got


async def test_subscribe_replays_then_streams_live_without_gap_or_duplicate(api):
    async with connect(api) as writer, connect(api) as reader:
        for name in ("a.nc", "b.nc"):
            await writer.call("files.register", {"files": [file_entry(name)]})
        past = await reader.call("events.list", {"since": 0})
        stream = await reader.subscribe(since=0)
        replayed = await collect(stream, len(past))
        assert replayed == past
        for name in ("c.nc", "d.nc"):
            await writer.call("files.register", {"files": [file_entry(name, product="ecmwf")]})
        live = await collect(stream, 4)  # an instance, a file, the instance complete, a file
        numbers = [e["id"] for e in replayed + live]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert [e["kind"] for e in live] == ["instance", "file", "instance", "file"]


async def test_subscription_filters(api):
    async with connect(api) as writer, connect(api) as reader:
        stream = await reader.subscribe(kinds=["file"], products=["ecmwf"])
        await writer.call("files.register", {"files": [file_entry("a.nc")]})
        await writer.call("files.register", {"files": [file_entry("e.grb", product="ecmwf")]})
        (event,) = await collect(stream, 1)
        assert (event["kind"], event["product"], event["data"]["name"]) == ("file", "ecmwf", "e.grb")


async def test_a_slow_subscriber_is_let_go_with_its_resume_number(nursery, tmp_path, monkeypatch):
    # the hub is the same over either database: SQLite makes the volume quick
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    api = f"ws://127.0.0.1:{await nursery.start(daemon.serve, config)}"
    monkeypatch.setattr(hub_module, "SUBSCRIBER_QUEUE", 50)
    # a client that subscribes and then reads nothing: its socket buffers fill
    async with trio_websocket.open_websocket_url(api, message_queue_size=0, max_message_size=1 << 30) as slow:
        await slow.send_message(json.dumps({"jsonrpc": "2.0", "method": "events.subscribe", "params": {}, "id": 1}))
        async with connect(api) as writer:
            for batch in range(40):
                await writer.call("files.register", {"files": [
                    file_entry(f"{batch}-{i}-{'x' * 200}.nc") for i in range(300)]})
                # the daemon goes on serving everyone else meanwhile
                assert (await writer.call("daemon.status"))["version"]
        received = []
        with trio.fail_after(30):
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    received.append(json.loads(await slow.get_message()))
    reason = closed.value.reason
    assert reason.code == 1008 and "subscriber too slow: resume with events.subscribe since=" in reason.reason
    resume = int(reason.reason.rsplit("=", 1)[1])
    delivered = [e["id"] for m in received if m.get("method") == "events" for e in m["params"]["events"]]
    assert resume == (delivered[-1] if delivered else resume)
    # resuming from the number given reads the rest: nothing lost, nothing twice
    ids, after = list(delivered), resume
    async with connect(api) as client:
        while page := await client.call("events.list", {"since": after, "limit": 10000}):
            ids += [e["id"] for e in page]
            after = page[-1]["id"]
    assert ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 12000


async def test_resume_across_a_daemon_restart(nursery, tmp_path, database_url):
    config = make_config(tmp_path, database_url)
    seen: list[int] = []
    for round in range(2):
        async with trio.open_nursery() as inner:
            port = await inner.start(daemon.serve, config)
            url = f"ws://127.0.0.1:{port}"
            async with connect(url) as writer, connect(url) as reader:
                stream = await reader.subscribe(since=seen[-1] if seen else 0)
                await writer.call("files.register", {"files": [file_entry(f"r{round}.nc", product="ecmwf")]})
                want = (await writer.call("events.list", {"since": seen[-1] if seen else 0, "limit": 10000}))
                seen += [e["id"] for e in await collect(stream, len(want))]
            inner.cancel_scope.cancel()
    assert seen == list(range(1, len(seen) + 1))


# --- tokens, roles, TLS -----------------------------------------------------------

SECRETS = {"reader": "r-secret", "writer": "w-secret", "boss": "a-secret"}


def tokens_file(tmp_path: Path) -> Path:
    roles = {"reader": "read", "writer": "write", "boss": "admin"}
    path = tmp_path / "tokens.toml"
    path.write_text("".join(
        f'[tokens.{name}]\nrole = "{roles[name]}"\nsha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
        for name, secret in SECRETS.items()))
    return path


@pytest.mark.parametrize("open_reads", [False, True])
async def test_tokens_and_roles(nursery, tmp_path, open_reads):
    path = tokens_file(tmp_path)
    api = f'tokens_file = "{path}"\nopen_reads = {"true" if open_reads else "false"}\n'
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", api)
    port = await nursery.start(daemon.serve, config)
    url = f"ws://127.0.0.1:{port}"
    register = {"files": [file_entry("a.nc")]}
    async with connect(url) as anonymous:
        with pytest.raises(RpcError) as caught:
            await anonymous.call("files.register", register)
        assert caught.value.code == UNAUTHORIZED and "needs a write token; no token was sent" in caught.value.message
        if open_reads:
            assert await anonymous.call("instances.latest", {"product": "arome"}) is None
        else:
            with pytest.raises(RpcError) as caught:
                await anonymous.call("instances.latest", {"product": "arome"})
            assert caught.value.code == UNAUTHORIZED
    async with connect(url, token="wrong") as stranger:
        with pytest.raises(RpcError) as caught:
            await stranger.call("files.register", register)
        assert "not in the tokens file" in caught.value.message
    async with connect(url, token=SECRETS["reader"]) as reader:
        assert await reader.call("instances.latest", {"product": "arome"}) is None
        with pytest.raises(RpcError) as caught:
            await reader.call("files.register", register)
        assert "token 'reader' has role 'read'" in caught.value.message
        assert await reader.call("instances.latest", {"product": "arome"}) is None  # nothing changed
    async with connect(url, token=SECRETS["writer"]) as writer:
        await writer.call("files.register", register)
        with pytest.raises(RpcError) as caught:
            await writer.call("formats.define", {"format": {"slug": "zarr", "name": "Zarr"}})
        assert "needs a admin token" in caught.value.message or "needs an admin token" in caught.value.message
    async with connect(url, token=SECRETS["boss"]) as boss:
        await boss.call("formats.define", {"format": {"slug": "zarr", "name": "Zarr"}})
        assert (await boss.call("instances.latest", {"product": "arome"}))["version"] == 1


async def test_tls(nursery, tmp_path, monkeypatch):
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    await trio.run_process(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        capture_stdout=True, capture_stderr=True,
    )
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    port = await nursery.start(daemon.serve, config)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    async with connect(f"wss://127.0.0.1:{port}") as client:
        assert await client.call("daemon.echo", {"data": "secret"}) == "secret"
    # a client that does not trust the certificate gets no connection
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
    with pytest.raises(DaemonUnreachable):
        async with connect(f"wss://127.0.0.1:{port}", connect_timeout=2):
            pass


# --- the daemon's own outputs, data triggers, expiry ------------------------------------

MAKER = """
[pipeline]
name = "maker"
owner = "ops"
produces = ["arome"]
[steps.make]
jobs = 2
command = '''
mkdir -p "$MUPPET_SCRATCH/arome" &&
printf "field %s" "$MUPPET_JOB_INDEX" > "$MUPPET_SCRATCH/arome/f$MUPPET_JOB_INDEX.txt"'''
outputs = ["arome/f{index}.txt"]
"""
USER = """
[pipeline]
name = "user"
owner = "ops"
requires = ["arome", "ecmwf"]
[steps.use]
command = "true"
"""


async def test_outputs_are_indexed_and_complete_instances_trigger_pipelines(nursery, tmp_path, database_url):
    config = make_config(tmp_path, database_url, pipelines={"maker": MAKER, "user": USER})
    port = await nursery.start(daemon.serve, config)
    async with connect(f"ws://127.0.0.1:{port}") as client:
        await client.call("runs.trigger", {"pipeline": "maker", "reference_time": REF})
        latest = await wait_until_async(
            lambda: client.call("instances.latest", {"product": "arome", "complete": True}), 30, "arome complete")
        files = (await client.call("files.list", {"instance_id": latest["id"]}))["items"]
        assert sorted(f["name"] for f in files) == ["arome/f0.txt", "arome/f1.txt"]
        for f in files:
            path = f["url"][len("file://"):]
            assert f["backend"] == "lustre-a" and path == str(tmp_path / "lustre" / f["name"])
            data = await trio.Path(path).read_bytes()
            assert f["hash"] == hashlib.sha256(data).hexdigest() and f["size"] == len(data)
            assert f["format"] == "txt"
        # the success and the registration are one commit: the file events come
        # in the same transaction as the job's success
        runs = await client.call("runs.list", {"pipeline": "user"})
        assert runs == []  # ecmwf is not there yet
        await client.call("files.register", {"files": [file_entry("e.grb", product="ecmwf")]})
        runs = await wait_until_async(lambda: client.call("runs.list", {"pipeline": "user"}), 30, "a run of user")
        assert runs[0]["cause"] == "data" and runs[0]["reference_time"] == REF


async def test_expiry_marks_deleted_and_removes_local_files(nursery, tmp_path):
    lustre = trio.Path(tmp_path / "lustre")
    await lustre.mkdir()
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    config = attrs.evolve(config, index=attrs.evolve(config.index, expiry_interval=0.2, delete_expired_files=True))
    port = await nursery.start(daemon.serve, config)
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    await (lustre / "old.nc").write_text("old")
    await (lustre / "new.nc").write_text("new")
    async with connect(f"ws://127.0.0.1:{port}") as client:
        stream = await client.subscribe(kinds=["file"])
        old, new = (await client.call("files.register", {"files": [
            {**file_entry("old.nc", expires=past), "url": f"file://{lustre}/old.nc"},
            {**file_entry("new.nc", expires=future), "url": f"file://{lustre}/new.nc"},
        ]}))["files"]
        events = await collect(stream, 3)
        assert events[-1]["data"]["id"] == old["id"] and events[-1]["data"]["deleted"]
        assert events[-1]["data"]["reason"] == "expired"
        await wait_until_async(lambda: _gone(lustre / "old.nc"), 30, "old.nc removed")
        assert await (lustre / "new.nc").exists()
        assert (await client.call("files.get", {"file_id": new["id"]}))["deleted"] is False


async def _gone(path: Path) -> bool:
    return not await trio.Path(path).exists()
