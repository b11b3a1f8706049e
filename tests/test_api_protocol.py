"""The sans-I/O JSON-RPC 2.0 layer: plain function calls, no Trio, no sockets.

Examples marked "spec 7" are the JSON-RPC 2.0 specification's own examples
(https://www.jsonrpc.org/specification, section 7), adapted to a method table.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muppet.api import protocol
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
    Call,
    MethodSpec,
    Param,
    Rejected,
    RpcError,
)

# A small table of the spec's example methods.
SPEC_METHODS = protocol.method_table([
    MethodSpec("subtract", (Param("minuend", "number", required=True),
                            Param("subtrahend", "number", required=True))),
    MethodSpec("update", tuple(Param(f"p{i}", "integer") for i in range(5))),
    MethodSpec("notify_hello", (Param("n", "integer"),)),
    MethodSpec("notify_sum", tuple(Param(f"p{i}", "integer") for i in range(3))),
    MethodSpec("sum", tuple(Param(f"p{i}", "integer") for i in range(3))),
    MethodSpec("get_data", ()),
])


def answer(text, methods=SPEC_METHODS, run=None):
    """What the server would send back for ``text``: the calls are run by
    ``run(call) -> result`` (default: echo the params)."""
    incoming = protocol.parse_message(text, methods)
    replies = []
    for entry in incoming.entries:
        if isinstance(entry, Rejected):
            replies.append(entry.reply)
            continue
        try:
            result = run(entry) if run else dict(entry.params)
            reply = protocol.result_reply(entry.id, result)
        except RpcError as error:
            reply = protocol.error_reply(entry.id, error)
        replies.append(None if entry.notification else reply)
    out = protocol.encode_replies(incoming, replies)
    return None if out is None else json.loads(out)


def assert_error(reply, code, id=None):
    assert reply["jsonrpc"] == "2.0"
    assert "result" not in reply
    assert reply["error"]["code"] == code, reply
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
    assert reply["id"] == id


def spec_run(call):
    if call.method == "subtract":
        return call.params["minuend"] - call.params["subtrahend"]
    if call.method == "sum":
        return sum(v for v in call.params.values() if v is not None)
    if call.method == "get_data":
        return ["hello", 5]
    return None


# --- spec 7: the examples --------------------------------------------------------


def test_positional_params():
    reply = answer('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}', run=spec_run)
    assert reply == {"jsonrpc": "2.0", "result": 19, "id": 1}
    reply = answer('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}', run=spec_run)
    assert reply == {"jsonrpc": "2.0", "result": -19, "id": 2}


def test_named_params():
    reply = answer('{"jsonrpc": "2.0", "method": "subtract", '
                   '"params": {"subtrahend": 23, "minuend": 42}, "id": 3}', run=spec_run)
    assert reply == {"jsonrpc": "2.0", "result": 19, "id": 3}


def test_notification_gets_no_reply():
    assert answer('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}') is None
    assert answer('{"jsonrpc": "2.0", "method": "get_data"}') is None


def test_notification_of_unknown_method_or_bad_params_gets_no_reply():
    # spec 4.1: the server MUST NOT reply to a notification, errors included
    assert answer('{"jsonrpc": "2.0", "method": "foobar"}') is None
    assert answer('{"jsonrpc": "2.0", "method": "update", "params": {"zz": 1}}') is None


def test_unknown_method():
    reply = answer('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert_error(reply, METHOD_NOT_FOUND, "1")
    assert "foobar" in reply["error"]["message"]


def test_invalid_json():
    reply = answer('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert_error(reply, PARSE_ERROR, None)


def test_invalid_request_object():
    assert_error(answer('{"jsonrpc": "2.0", "method": 1, "params": "bar"}'), INVALID_REQUEST, None)


def test_batch_invalid_json():
    reply = answer('[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
                   '{"jsonrpc": "2.0", "method"]')
    assert_error(reply, PARSE_ERROR, None)  # one object, not an array


def test_empty_batch_is_one_invalid_request():
    reply = answer("[]")
    assert isinstance(reply, dict)
    assert_error(reply, INVALID_REQUEST, None)


def test_batch_of_non_objects():
    replies = answer("[1]")
    assert isinstance(replies, list) and len(replies) == 1
    assert_error(replies[0], INVALID_REQUEST, None)
    replies = answer("[1,2,3]")
    assert len(replies) == 3
    for reply in replies:
        assert_error(reply, INVALID_REQUEST, None)


def test_batch_mixed():
    replies = answer("""[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]""", run=spec_run)
    assert len(replies) == 5
    assert replies[0] == {"jsonrpc": "2.0", "result": 7, "id": "1"}
    assert replies[1] == {"jsonrpc": "2.0", "result": 19, "id": "2"}
    assert_error(replies[2], INVALID_REQUEST, None)
    assert_error(replies[3], METHOD_NOT_FOUND, "5")
    assert replies[4] == {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}


def test_batch_of_notifications_gets_nothing():
    assert answer('[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
                  '{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]') is None


# --- the envelope -------------------------------------------------------------------


@pytest.mark.parametrize("envelope", [
    {"method": "get_data", "id": 1},  # no jsonrpc
    {"jsonrpc": "2", "method": "get_data", "id": 1},
    {"jsonrpc": 2.0, "method": "get_data", "id": 1},
    {"jsonrpc": "1.0", "method": "get_data", "id": 1},
    {"jsonrpc": "2.0", "id": 1},  # no method
    {"jsonrpc": "2.0", "method": None, "id": 1},
    {"jsonrpc": "2.0", "method": ["get_data"], "id": 1},
    {"jsonrpc": "2.0", "method": "get_data", "params": "x", "id": 1},
    {"jsonrpc": "2.0", "method": "get_data", "params": 3, "id": 1},
    {"jsonrpc": "2.0", "method": "get_data", "params": None, "id": 1},
    {"jsonrpc": "2.0", "method": "get_data", "params": True, "id": 1},
])
def test_invalid_envelope_echoes_a_valid_id(envelope):
    assert_error(answer(json.dumps(envelope)), INVALID_REQUEST, 1)


@pytest.mark.parametrize("bad_id", [True, False, {}, [], [1], {"a": 1}])
def test_invalid_id_gets_null(bad_id):
    reply = answer(json.dumps({"jsonrpc": "2.0", "method": "get_data", "id": bad_id}))
    assert_error(reply, INVALID_REQUEST, None)
    assert "id" in reply["error"]["message"]


@pytest.mark.parametrize("good_id", ["abc", "", 0, -5, 2**70, 1.5, None])
def test_ids_are_echoed(good_id):
    reply = answer(json.dumps({"jsonrpc": "2.0", "method": "get_data", "id": good_id}), run=spec_run)
    assert reply == {"jsonrpc": "2.0", "result": ["hello", 5], "id": good_id}


def test_null_id_is_a_request_not_a_notification():
    incoming = protocol.parse_message('{"jsonrpc": "2.0", "method": "get_data", "id": null}', SPEC_METHODS)
    (call,) = incoming.entries
    assert call == Call("get_data", {}, None, notification=False)


@pytest.mark.parametrize("text", ["NaN", "[NaN]", '{"jsonrpc": "2.0", "method": "get_data", "id": Infinity}',
                                  "-Infinity", "", "   ", "\x00", "'single'", "{'a': 1}"])
def test_not_json(text):
    assert_error(answer(text), PARSE_ERROR, None)


def test_bytes_are_decoded_and_bad_utf8_is_a_parse_error():
    assert answer(b'{"jsonrpc": "2.0", "method": "get_data", "id": 4}', run=spec_run)["result"] == ["hello", 5]
    assert_error(answer(b'\xff\xfe{"jsonrpc"'), PARSE_ERROR, None)


def test_deep_nesting_is_a_parse_error_not_a_crash():
    assert_error(answer("[" * 200_000), PARSE_ERROR, None)
    assert_error(answer("[" * 100_000 + "]" * 100_000), PARSE_ERROR, None)


def test_scalars_are_invalid_requests():
    for text in ("1", '"x"', "true", "null"):
        assert_error(answer(text), INVALID_REQUEST, None)


def test_rpc_names_are_reserved():
    with pytest.raises(ValueError, match="reserved"):
        protocol.method_table([MethodSpec("rpc.discover")])
    with pytest.raises(ValueError, match="twice"):
        protocol.method_table([MethodSpec("a"), MethodSpec("a")])


# --- params ------------------------------------------------------------------------


def call(method, params, id=1):
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id})


def bound(method, params=None):
    message = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        message["params"] = params
    (entry,) = protocol.parse_message(json.dumps(message)).entries
    assert isinstance(entry, Call), entry
    return dict(entry.params)


def bad_param(method, params):
    reply = answer(call(method, params), METHODS)
    assert_error(reply, INVALID_PARAMS, 1)
    return reply["error"]


def test_defaults_are_filled_in():
    assert bound("runs.list") == {"pipeline": None, "state": None, "limit": 100, "before_id": None}
    assert bound("jobs.list", {}) == {"run_id": None, "state": None, "limit": 1000}
    assert bound("jobs.logs", {"job_id": 3}) == {"job_id": 3, "stream": "stdout"}
    assert bound("runs.trigger", {"pipeline": "p"}) == {"pipeline": "p", "reference_time": None, "reason": ""}


def test_positional_and_named_bind_alike():
    assert bound("jobs.logs", [3, "stderr"]) == bound("jobs.logs", {"stream": "stderr", "job_id": 3})
    assert bound("runs.list", ["p", "failed", 5]) == {
        "pipeline": "p", "state": "failed", "limit": 5, "before_id": None}


def test_null_means_not_given_for_optional_filters():
    assert bound("runs.list", {"pipeline": None, "before_id": None})["pipeline"] is None


def test_unknown_param_is_named():
    error = bad_param("jobs.get", {"job_id": 1, "jobid": 2})
    assert "'jobid'" in error["message"] and error["data"] == {"param": "jobid"}


def test_missing_param_is_named():
    error = bad_param("jobs.get", {})
    assert "missing" in error["message"] and "'job_id'" in error["message"]
    assert error["data"] == {"param": "job_id"}
    bad_param("jobs.hold", [])


@pytest.mark.parametrize("method,params,name", [
    ("jobs.get", {"job_id": "3"}, "job_id"),
    ("jobs.get", {"job_id": 3.0}, "job_id"),
    ("jobs.get", {"job_id": True}, "job_id"),
    ("jobs.get", {"job_id": None}, "job_id"),
    ("jobs.get", {"job_id": 0}, "job_id"),
    ("runs.list", {"limit": 0}, "limit"),
    ("runs.list", {"limit": 1001}, "limit"),
    ("runs.list", {"limit": "10"}, "limit"),
    ("runs.list", {"state": "done"}, "state"),
    ("runs.list", {"pipeline": 5}, "pipeline"),
    ("jobs.list", {"state": "RUNNING"}, "state"),
    ("jobs.logs", {"job_id": 1, "stream": "stdin"}, "stream"),
    ("runs.trigger", {"pipeline": ["a"]}, "pipeline"),
    ("runs.trigger", {"pipeline": "a", "reference_time": 1700000000}, "reference_time"),
    ("runs.get", {"run_id": -1}, "run_id"),
])
def test_wrong_type_or_value_is_named(method, params, name):
    error = bad_param(method, params)
    assert f"'{name}'" in error["message"], error
    assert error["data"] == {"param": name}


def test_too_many_positional_params():
    error = bad_param("jobs.get", [1, 2])
    assert "at most 1" in error["message"]


def test_every_muppet_method_takes_no_or_known_params():
    for name, spec in METHODS.items():
        samples = {"integer": 1, "string": "x", "object": {}, "array": [], "boolean": True, "number": 1.5}
        required = {p.name: p.choices[0] if p.choices else samples[p.type] for p in spec.params if p.required}
        assert bound(name, required).keys() == {p.name for p in spec.params}
        assert_error(answer(call(name, {**required, "nope": 1}), METHODS), INVALID_PARAMS, 1)


def test_param_declaration_is_checked():
    with pytest.raises(ValueError, match="unknown JSON type"):
        Param("x", "int")


# --- replies --------------------------------------------------------------------------


def test_error_codes_are_the_documented_ones():
    assert (PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR) == (
        -32700, -32600, -32601, -32602, -32603)
    assert (NOT_FOUND, CONFLICT, UNAVAILABLE, protocol.UNAUTHORIZED) == (-32001, -32002, -32003, -32004)


def test_a_handler_error_keeps_its_code_and_data():
    def fail(call):
        raise RpcError(NOT_FOUND, "unknown job 9", {"job_id": 9})
    reply = answer('{"jsonrpc": "2.0", "method": "get_data", "id": 7}', run=fail)
    assert reply == {"jsonrpc": "2.0", "id": 7,
                     "error": {"code": NOT_FOUND, "message": "unknown job 9", "data": {"job_id": 9}}}


def test_a_result_that_is_not_json_becomes_an_internal_error_for_that_call_only():
    def weird(call):
        return object() if call.id == 1 else "fine"
    replies = answer('[{"jsonrpc": "2.0", "method": "get_data", "id": 1},'
                     '{"jsonrpc": "2.0", "method": "get_data", "id": 2}]', run=weird)
    assert_error(replies[0], INTERNAL_ERROR, 1)
    assert replies[1] == {"jsonrpc": "2.0", "result": "fine", "id": 2}
    assert_error(answer('{"jsonrpc": "2.0", "method": "get_data", "id": 3}',
                        run=lambda c: float("nan")), INTERNAL_ERROR, 3)


def test_client_side_round_trip():
    text = protocol.request("jobs.get", {"job_id": 4}, 17)
    (entry,) = protocol.parse_message(text).entries
    assert entry == Call("jobs.get", {"job_id": 4}, 17)
    reply = protocol.encode(protocol.result_reply(17, {"id": 4}))
    (response,) = protocol.parse_responses(reply)
    assert response.id == 17 and response.result == {"id": 4} and response.error is None
    (response,) = protocol.parse_responses(protocol.encode(
        protocol.error_reply(18, RpcError(CONFLICT, "job 4 is running, not held"))))
    assert response.error.code == CONFLICT and str(response.error) == "job 4 is running, not held"
    (entry,) = protocol.parse_message(protocol.notification("jobs.get", [4])).entries
    assert entry.notification
    with pytest.raises(ValueError):
        protocol.parse_responses('{"jsonrpc": "2.0", "id": 1}')
    with pytest.raises(ValueError):
        protocol.parse_responses("[1]")


# --- anything at all ---------------------------------------------------------------------


def check_reply_shape(reply):
    assert isinstance(reply, dict)
    assert reply["jsonrpc"] == "2.0"
    assert "id" in reply
    assert ("result" in reply) != ("error" in reply)
    if "error" in reply:
        assert isinstance(reply["error"]["code"], int)
        assert isinstance(reply["error"]["message"], str)


def check_never_raises(text):
    incoming = protocol.parse_message(text, METHODS)
    assert incoming.entries
    replies = [e.reply if isinstance(e, Rejected) else protocol.result_reply(e.id, None)
               for e in incoming.entries]
    out = protocol.encode_replies(incoming, [None if isinstance(e, Call) and e.notification else r
                                             for e, r in zip(incoming.entries, replies, strict=True)])
    if out is None:
        assert all((isinstance(e, Call) and e.notification) or e == Rejected(None)
                   for e in incoming.entries)
        return
    decoded = json.loads(out)
    if incoming.batch:
        assert isinstance(decoded, list) and decoded
        for reply in decoded:
            check_reply_shape(reply)
    else:
        check_reply_shape(decoded)
    for entry in incoming.entries:
        if isinstance(entry, Rejected) and entry.reply is not None:
            assert entry.reply["error"]["code"] in (
                PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

envelopes = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | json_values,
        "method": st.sampled_from(sorted(METHODS)) | json_values,
        "params": st.fixed_dictionaries({}, optional={
            "job_id": json_values | st.integers(), "run_id": json_values, "limit": st.integers(),
            "stream": st.sampled_from(["stdout", "stderr", "x"]), "pipeline": json_values,
            "state": json_values,
        }) | json_values,
        "id": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text):
    check_never_raises(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data):
    check_never_raises(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises(value):
    check_never_raises(json.dumps(value))


@settings(max_examples=500, deadline=None)
@given(envelopes | st.lists(envelopes, max_size=5))
def test_near_requests_never_raise(value):
    check_never_raises(json.dumps(value))
