"""Every integer param of every method, given a value out of range (beyond
what the database's 64-bit integers hold, or below its declared minimum),
is answered -32602 naming the param: never an internal error. A real daemon
on SQLite, called over the websocket (docs/api.md, "Errors")."""

from __future__ import annotations

import pytest
import trio
from test_api import free_port  # tests/ is on sys.path
from test_daemon import write_config

from muppet import daemon
from muppet.api.client import connect
from muppet.api.protocol import INVALID_PARAMS, METHODS, RpcError
from muppet.config import load_config

OUT_OF_RANGE = [2**63, 2**64, 10**20, -(2**63) - 1, 99999999999999999999999]

#: (method, param) for every integer param
INTEGER_PARAMS = [
    (spec.name, param.name)
    for spec in METHODS.values()
    for param in spec.params
    if param.type == "integer"
]


def test_every_method_is_covered():
    assert len(INTEGER_PARAMS) > 10
    assert {"jobs.logs", "runs.get", "files.get"} <= {method for method, _ in INTEGER_PARAMS}


@pytest.mark.parametrize(("method", "param"), INTEGER_PARAMS, ids=[f"{m}.{p}" for m, p in INTEGER_PARAMS])
async def test_an_out_of_range_integer_is_an_invalid_param(nursery, tmp_path, method, param):
    config = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'muppet.db'}", {}, port=free_port()))
    port = await nursery.start(daemon.serve, config)
    spec = METHODS[method]
    async with connect(f"ws://127.0.0.1:{port}") as client:
        for value in OUT_OF_RANGE:
            # every other required param gets a value of its type
            params = {p.name: _filler(p.type) for p in spec.params if p.required and p.name != param}
            params[param] = value
            with trio.fail_after(10), pytest.raises(RpcError) as caught:
                await client.call(method, params)
            assert caught.value.code == INVALID_PARAMS, (method, param, value, caught.value)
            assert caught.value.data == {"param": param}, (method, param, value, caught.value)


def _filler(json_type: str) -> object:
    return {"integer": 1, "number": 1, "string": "x", "boolean": True, "object": {}, "array": []}[json_type]
