"""Hypothesis throws thousands of messages at a real `muppet daemon` process:
garbage, wrong JSON-RPC, unknown methods, every known method with random
params. Every message that is owed an answer gets a well-formed JSON-RPC
reply, and the daemon keeps serving (docs/api.md: bad input gets an error
reply naming what is wrong, and the connection and the daemon go on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import hypothesis.strategies as st
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from test_api import free_port  # tests/ is on sys.path
from waiting import wait_until_async

from muppet.api.protocol import ERROR_NAMES, METHODS

EXAMPLES = int(os.environ.get("MUPPET_FUZZ_EXAMPLES", "2000"))


@pytest.fixture(scope="module")
def daemon_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    (tmp / "muppet.toml").write_text(textwrap.dedent(f"""
        [daemon]
        state_dir = "{tmp}/state"
        [api]
        listen = "127.0.0.1:{port}"
        max_message_bytes = 65536
        [stakeholders.ops]
        name = "Operations"
        [products.arome]
        name = "AROME"
        contact = "ops"
        [backends.lustre-a]
        name = "Lustre A"
        url = "file:///lustre/a"
        """))
    log = tmp / "daemon.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "muppet.cli", "daemon", "--config", str(tmp / "muppet.toml")],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    url = f"ws://127.0.0.1:{port}"

    async def answers() -> bool:
        assert process.poll() is None, f"the daemon exited:\n{log.read_text()}"
        try:
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message('{"jsonrpc":"2.0","method":"daemon.status","id":1}')
                await ws.get_message()
                return True
        except (OSError, trio_websocket.HandshakeError):
            return False

    async def ready():
        await wait_until_async(answers, 60, "the daemon answering daemon.status", detail=log.read_text)

    try:
        trio.run(ready)
        yield url
    finally:
        alive = process.poll() is None
        process.terminate()
        process.wait(30)
        assert alive, log.read_text()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
param_names = sorted({p.name for spec in METHODS.values() for p in spec.params})
params = (
    json_values
    | st.dictionaries(st.sampled_from(param_names), json_values, max_size=5)
    | st.lists(json_values, max_size=5)
)
requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.sampled_from(sorted(METHODS)) | st.text(max_size=15)},
    optional={"params": params, "id": st.integers() | st.text(max_size=5) | st.none() | json_values},
)
messages = st.one_of(
    requests.map(json.dumps),
    st.lists(requests, min_size=1, max_size=6).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
    st.sampled_from(["", "[]", "{", "[1,2]", '{"jsonrpc":"2.0"}', "x" * 70_000, "[" * 5000]),
)

KNOWN_CODES = set(ERROR_NAMES)
SENTINEL = '{"jsonrpc":"2.0","method":"daemon.echo","params":{"data":"sentinel"},"id":"sentinel"}'


def check_response(entry) -> None:
    assert isinstance(entry, dict) and entry.get("jsonrpc") == "2.0", entry
    assert ("result" in entry) != ("error" in entry), entry
    if "error" in entry:
        error = entry["error"]
        assert error["code"] in KNOWN_CODES and isinstance(error["message"], str) and error["message"], entry


async def exchange(url: str, message) -> None:
    """Send the message, then a sentinel request; everything that comes back
    before the sentinel's reply must be a well-formed reply (or an events
    notification of a subscription the message made)."""
    async with trio_websocket.open_websocket_url(url, max_message_size=1 << 26) as ws:
        await ws.send_message(message)
        await ws.send_message(SENTINEL)
        with trio.fail_after(30):  # a safety net against a hang
            while True:
                data = json.loads(await ws.get_message())
                entries = data if isinstance(data, list) else [data]
                if any(isinstance(e, dict) and e.get("id") == "sentinel" for e in entries):
                    assert entries == [{"jsonrpc": "2.0", "result": "sentinel", "id": "sentinel"}]
                    return
                if isinstance(data, dict) and data.get("method") == "events":
                    continue
                assert entries, data
                for entry in entries:
                    check_response(entry)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(message=messages)
def test_every_message_gets_a_well_formed_answer(daemon_url, message):
    trio.run(exchange, daemon_url, message)


def test_the_daemon_still_serves_after_the_fuzz(daemon_url):
    async def status():
        async with trio_websocket.open_websocket_url(daemon_url) as ws:
            await ws.send_message('{"jsonrpc":"2.0","method":"daemon.status","id":7}')
            return json.loads(await ws.get_message())

    assert trio.run(status)["result"]["version"]
