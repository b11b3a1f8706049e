"""JSON-RPC 2.0 for MUPPET's API, sans I/O: text in, calls out; results in, text out.

Nothing here awaits, reads a clock or touches a socket: the websocket server
(``muppet/api/server.py``) feeds each incoming message to ``parse_message``,
runs the ``Call`` objects it gets back, and hands the replies to
``encode_replies``. The tests drive this module with plain function calls.

The rules cited as "spec" come from the JSON-RPC 2.0 specification,
https://www.jsonrpc.org/specification (2013-01-04); the section names below
are that document's.

The method table (``METHODS``) declares each method's params: name, JSON type,
required or default, allowed values, range. A later issue adds index queries
and event subscriptions; adding a method is one ``MethodSpec`` here and one
handler in the server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..codec import compact_json_text
from ..messages import CONFLICT, INVALID_CONFIGURATION, NOT_FOUND
from ..model import JobState, RunState

# --- error codes ---------------------------------------------------------------

# spec, "5.1 Error object": the codes -32768..-32000 are reserved; these five are
# defined there.
PARSE_ERROR = -32700  # invalid JSON was received
INVALID_REQUEST = -32600  # the JSON sent is not a valid Request object
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# spec: -32000 to -32099 are "reserved for implementation-defined server-errors";
# MUPPET's own take the top of that range.
# NOT_FOUND and CONFLICT come from the scheduler's replies (messages.py)
UNAVAILABLE = -32003  # the scheduler did not answer in time, or is gone
UNAUTHORIZED = -32004  # no token, a wrong one, or one whose role is too low
DATABASE_UNAVAILABLE = -32005  # the database does not answer now; nothing was done, retry
STANDBY = -32007  # this daemon is a standby: it serves reads; writes and commands go to the active one

ERROR_NAMES = {
    PARSE_ERROR: "parse error",
    INVALID_REQUEST: "invalid request",
    METHOD_NOT_FOUND: "method not found",
    INVALID_PARAMS: "invalid params",
    INTERNAL_ERROR: "internal error",
    NOT_FOUND: "not found",
    CONFLICT: "conflict",
    UNAVAILABLE: "unavailable",
    UNAUTHORIZED: "unauthorized",
    DATABASE_UNAVAILABLE: "database unavailable",
    INVALID_CONFIGURATION: "invalid configuration",
    STANDBY: "standby",
}


class RpcError(Exception):
    """A JSON-RPC error: raised by a method handler to answer with an error, and
    by the client when the server answered with one.

    ``data`` is optional extra detail (spec, "5.1 Error object"); MUPPET puts
    ``{"param": NAME}`` there for -32602 so a program can tell which param.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


# --- params schemas --------------------------------------------------------------

#: JSON type names -> a test on the decoded Python value. bool is excluded from
#: the numbers on purpose: Python's True is an int, JSON's true is not a number.
_TYPE_TESTS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}

_ARTICLES = {"integer": "an integer", "object": "an object", "array": "an array"}

_MISSING = object()


#: the range of a 64-bit signed integer, every integer param's outer bounds
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _bound(limit: float) -> str:
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def _describe_value(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


@attrs.frozen
class Param:
    """One declared param of a method.

    ``type`` is a JSON type name: string, integer, number, boolean, object,
    array. ``nullable`` lets ``null`` through (as "not given"). ``choices``
    limits the value to a set; ``minimum``/``maximum`` bound numbers.
    """

    name: str
    type: str
    required: bool = False
    default: Any = None
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""

    def __attrs_post_init__(self) -> None:
        if self.type not in _TYPE_TESTS:
            raise ValueError(f"param {self.name!r}: unknown JSON type {self.type!r}")

    def check(self, value: Any) -> Any:
        """The value, or RpcError(-32602) naming the param and what it must be."""
        if value is None and self.nullable and not self.required:
            return self.default
        if not _TYPE_TESTS[self.type](value):
            raise self._invalid(f"must be {_ARTICLES.get(self.type, 'a ' + self.type)}", value)
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(json.dumps(c) for c in self.choices)
            raise self._invalid(f"must be one of {allowed}", value)
        if self.type in ("integer", "number"):
            if isinstance(value, float) and not math.isfinite(value):
                raise self._invalid("must be a finite number", value)
            low, high = self.minimum, self.maximum
            if self.type == "integer":
                # what the database's integers hold (SQLite's and
                # PostgreSQL's BIGINT): beyond, a query cannot even be asked
                low = _INT64_MIN if low is None else max(low, _INT64_MIN)
                high = _INT64_MAX if high is None else min(high, _INT64_MAX)
            if (low is not None and value < low) or (high is not None and value > high):
                if low is not None and high is not None:
                    bounds = f"from {_bound(low)} to {_bound(high)}"
                elif low is not None:
                    bounds = f">= {_bound(low)}"
                else:
                    assert high is not None
                    bounds = f"<= {_bound(high)}"
                raise self._invalid(f"must be {bounds}", value)
        return value

    def _invalid(self, what: str, value: Any) -> RpcError:
        return RpcError(
            INVALID_PARAMS,
            f"invalid params: {self.name!r} {what}, got {_describe_value(value)}",
            {"param": self.name},
        )


@attrs.frozen
class MethodSpec:
    """A method's name and its declared params, in positional order.

    ``role`` is the least token role that may call it (model.ROLES), once
    ``[api] tokens_file`` is set; ``ANYONE``: no token needed at all.
    """

    name: str
    params: tuple[Param, ...] = ()
    doc: str = ""
    role: str = "read"
    #: the declared names, made once: ``bind`` runs for every call of a
    #: batch (bench/index.py)
    declared: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "declared", frozenset(p.name for p in self.params))

    def bind(self, params: Any) -> dict[str, Any]:
        """The params as a dict with every declared name (defaults filled in).

        spec, "4.2 Parameter Structures": params are by-position (an array, in
        the declared order) or by-name (an object whose member names match the
        declared names exactly, case-sensitively); absent means none.
        Raises RpcError(-32602) naming the offending param.
        """
        by_name: dict[str, Any]
        if params is None:
            by_name = {}
        elif isinstance(params, list):
            if len(params) > len(self.params):
                raise RpcError(
                    INVALID_PARAMS,
                    f"invalid params: {self.name} takes at most {len(self.params)} "
                    f"positional params, got {len(params)}",
                )
            # fewer positional params than declared: the rest take defaults
            by_name = {p.name: v for p, v in zip(self.params, params, strict=False)}
        else:
            by_name = params
        declared = self.declared
        for name in by_name:
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise RpcError(
                    INVALID_PARAMS,
                    f"invalid params: unknown param {name!r} for {self.name} (known: {known})",
                    {"param": name},
                )
        bound: dict[str, Any] = {}
        for param in self.params:
            value = by_name.get(param.name, _MISSING)
            if value is _MISSING:
                if param.required:
                    raise RpcError(
                        INVALID_PARAMS,
                        f"invalid params: missing param {param.name!r} for {self.name}",
                        {"param": param.name},
                    )
                bound[param.name] = param.default
            else:
                bound[param.name] = param.check(value)
        return bound


#: the role of a method that needs no token even with a tokens file: the
#: one that presents a token (a browser's websocket cannot send headers)
ANYONE = "anyone"


def method_table(specs: Iterable[MethodSpec]) -> dict[str, MethodSpec]:
    table: dict[str, MethodSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f"method {spec.name!r} declared twice")
        # spec, "4. Request object": names beginning with "rpc." are reserved
        # for rpc-internal methods.
        if spec.name.startswith("rpc."):
            raise ValueError(f"method {spec.name!r}: names starting with 'rpc.' are reserved")
        table[spec.name] = spec
    return table


_JOB_ID = Param("job_id", "integer", required=True, minimum=1, doc="the job's id")
_PRODUCT = Param("product", "string", required=True, doc="a product's slug")
_CURSOR = Param("cursor", "string", nullable=True, doc="from the previous page's next")
_LIMIT = Param("limit", "integer", default=100, minimum=1, maximum=1000)
_INSTANCE_ID = Param("instance_id", "integer", required=True, minimum=1)
_RUN_ID = Param("run_id", "integer", required=True, minimum=1)
_REASON = Param("reason", "string", default="", doc="why, for the operator event (muppet events --kind operator)")
_INCIDENT_ID = Param("incident_id", "integer", required=True, minimum=1, doc="the incident's id")
#: kinds of events in the log, and "pruned": the marker that stands for
#: pruned events (docs/api.md, "Subscribing to events")
EVENT_KINDS = ("run", "job", "late", "operator", "product", "format", "backend", "instance", "file", "pruned")
_RUN_STATES = tuple(state.value for state in RunState)
_JOB_STATES = tuple(state.value for state in JobState)

#: MUPPET's methods. docs/api.md documents each with an example.
METHODS: dict[str, MethodSpec] = method_table([
    MethodSpec("daemon.status", (), "version, pipeline names, start time"),
    MethodSpec("pipelines.list", (), "every configured pipeline and its steps"),
    MethodSpec("runs.trigger", (
        Param("pipeline", "string", required=True),
        Param("reference_time", "string", nullable=True,
              doc="ISO 8601; default now, whole seconds, UTC"),
        _REASON,
    ), "make a run of a pipeline now; replies with its id once persisted", "write"),
    MethodSpec("runs.backfill", (
        Param("pipeline", "string", required=True),
        Param("from", "string", required=True, doc="ISO 8601: the first reference time, included"),
        Param("to", "string", required=True, doc="ISO 8601: the last reference time, included"),
        Param("yes", "boolean", default=False, doc="allow more than 1000 runs"),
        _REASON,
    ), "make a run for every cron firing in [from, to], oldest first, under runahead", "write"),
    MethodSpec("runs.list", (
        Param("pipeline", "string", nullable=True),
        Param("state", "string", nullable=True, choices=_RUN_STATES),
        Param("limit", "integer", default=100, minimum=1, maximum=1000),
        Param("before_id", "integer", nullable=True, minimum=1),
    ), "runs, newest first"),
    MethodSpec("runs.get", (
        Param("run_id", "integer", required=True, minimum=1),
    ), "one run with its jobs"),
    MethodSpec("jobs.list", (
        Param("run_id", "integer", nullable=True, minimum=1),
        Param("state", "string", nullable=True, choices=_JOB_STATES),
        Param("limit", "integer", default=1000, minimum=1, maximum=1000),
    ), "jobs by id; without run_id the newest ones"),
    MethodSpec("jobs.get", (_JOB_ID,), "one job"),
    MethodSpec("jobs.logs", (
        _JOB_ID,
        Param("stream", "string", default="stdout", choices=("stdout", "stderr")),
    ), "the kept tail of a job's stdout or stderr"),
    MethodSpec("jobs.hold", (_JOB_ID, _REASON), "keep a waiting job from starting", "write"),
    MethodSpec("jobs.release", (_JOB_ID, _REASON), "let a held job start again", "write"),
    MethodSpec("jobs.kill", (_JOB_ID, _REASON), "kill a running job, or cancel a waiting one", "write"),
    MethodSpec("jobs.rerun", (
        _JOB_ID,
        Param("downstream", "boolean", default=False, doc="rerun every job after it in the run too"),
        _REASON,
    ), "run an ended job's slot again, as a new job", "write"),
    MethodSpec("jobs.set", (
        _JOB_ID,
        Param("outcome", "string", required=True, choices=("succeeded", "failed")),
        _REASON,
    ), "end a job as succeeded or failed by hand; its downstream acts on it", "write"),
    MethodSpec("runs.hold", (_RUN_ID, _REASON), "hold every waiting job of a run", "write"),
    MethodSpec("runs.release", (_RUN_ID, _REASON), "release every held job of a run", "write"),
    MethodSpec("runs.kill", (_RUN_ID, _REASON), "kill every running job of a run, cancel the others", "write"),
    MethodSpec("runs.rerun", (_RUN_ID, _REASON),
               "rerun every failed, killed, expired or skipped slot of a run", "write"),
    MethodSpec("runs.bypass", (_RUN_ID, Param("step", "string", required=True), _REASON),
               "end a step's jobs in a run without running them; its children go on", "write"),
    MethodSpec("pipelines.pause", (Param("pipeline", "string", required=True), _REASON),
               "start no new job of a pipeline; its cron runs wait", "write"),
    MethodSpec("pipelines.resume", (Param("pipeline", "string", required=True), _REASON),
               "start a paused pipeline's jobs again; its catch-up policy picks the runs made meanwhile", "write"),
    MethodSpec("products.request_update", (
        _PRODUCT,
        Param("reference_time", "string", required=True, doc="ISO 8601: the instance wanted"),
        Param("pipeline", "string", nullable=True, doc="the producing pipeline, when several produce it"),
        _REASON,
    ), "make or rerun the run that produces a product for a reference time, once its inputs are complete",
        "write"),
    MethodSpec("requests.list", (
        Param("state", "string", nullable=True, choices=("waiting", "done", "refused")),
        Param("limit", "integer", default=100, minimum=1, maximum=1000),
    ), "requests for product updates, newest first"),
    # --- incidents (muppet/api/alerts.py; docs/alerts.md)
    MethodSpec("alerts.list", (
        Param("open", "boolean", default=False, doc="only the incidents not resolved"),
        Param("limit", "integer", default=100, minimum=1, maximum=1000),
    ), "incidents, newest first"),
    MethodSpec("alerts.get", (_INCIDENT_ID,), "one incident, with its notices and whom each reached"),
    MethodSpec("alerts.ack", (
        _INCIDENT_ID,
        Param("reason", "string", required=True, doc="why, kept with your name"),
    ), "acknowledge an open incident: no more reminders", "write"),
    MethodSpec("daemon.drain", (_REASON,), "start no new job at all; running ones finish", "admin"),
    MethodSpec("daemon.undrain", (_REASON,), "start jobs again after a drain", "admin"),
    MethodSpec("daemon.reload", (_REASON,),
               "read the configuration again and run on it; answers what changed once committed", "admin"),
    MethodSpec("daemon.echo", (Param("data", "string", default=""),),
               "answers its data: the API's ceiling, for benchmarks"),
    # --- the operator's console (muppet/api/console.py)
    MethodSpec("pipelines.get", (Param("pipeline", "string", required=True),),
               "one pipeline's whole configuration and its next cron firings"),
    MethodSpec("pipelines.status", (),
               "every pipeline's runs and jobs by state, next firing, lateness; those needing attention first"),
    MethodSpec("runs.search", (
        Param("pipeline", "string", nullable=True),
        Param("state", "string", nullable=True, choices=_RUN_STATES),
        Param("begin", "string", nullable=True, doc="reference times from (ISO 8601)"),
        Param("end", "string", nullable=True, doc="reference times before (ISO 8601)"),
        Param("before_id", "integer", nullable=True, minimum=1),
        Param("limit", "integer", default=100, minimum=1, maximum=1000),
    ), "runs, newest first, by pipeline, state and a window of reference times"),
    MethodSpec("jobs.output", (
        _JOB_ID,
        Param("stream", "string", default="stdout", choices=("stdout", "stderr")),
        Param("offset", "integer", nullable=True, minimum=0, doc="the byte to read from; default: the tail"),
        Param("limit", "integer", default=65536, minimum=1, maximum=1048576, doc="bytes at most"),
        Param("wait", "number", default=0, minimum=0, maximum=30,
              doc="seconds to wait for more output when there is none yet"),
    ), "a job's output from its file, from an offset, as it grows"),
    MethodSpec("jobs.command", (_JOB_ID,), "what a job runs: its command and environment"),
    MethodSpec("session.authenticate", (Param("token", "string", required=True),),
               "present a token's secret on this connection", ANYONE),
    # --- the index
    MethodSpec("products.list", (_CURSOR, _LIMIT), "products by slug, a page"),
    MethodSpec("products.get", (_PRODUCT,), "one product"),
    MethodSpec("products.define", (Param("product", "object", required=True),),
               "declare or change a product", "admin"),
    MethodSpec("formats.list", (), "every data format"),
    MethodSpec("formats.define", (Param("format", "object", required=True),),
               "declare or rename a data format", "admin"),
    MethodSpec("backends.list", (), "every service backend"),
    MethodSpec("backends.define", (Param("backend", "object", required=True),),
               "declare or change a service backend", "admin"),
    MethodSpec("instances.latest", (
        _PRODUCT,
        Param("complete", "boolean", default=False),
        Param("backend", "string", nullable=True),
        Param("format", "string", nullable=True),
    ), "the newest instance of a product, optionally the newest complete one"),
    MethodSpec("instances.list", (
        _PRODUCT,
        Param("begin", "string", nullable=True, doc="reference times from (ISO 8601)"),
        Param("end", "string", nullable=True, doc="reference times before (ISO 8601)"),
        _CURSOR, _LIMIT,
    ), "instances of a product in a window of reference times, newest first"),
    MethodSpec("instances.get", (_INSTANCE_ID,), "one instance"),
    MethodSpec("instances.completeness", (_INSTANCE_ID,),
               "files present per backend and format against the product's file_count"),
    MethodSpec("files.list", (
        Param("instance_id", "integer", nullable=True, minimum=1),
        Param("product", "string", nullable=True),
        Param("reference_time", "string", nullable=True),
        Param("version", "integer", nullable=True, minimum=1),
        Param("backend", "string", nullable=True),
        Param("format", "string", nullable=True),
        Param("include_deleted", "boolean", default=False),
        _CURSOR, _LIMIT,
        Param("fields", "array", nullable=True, doc="only these fields of each file: a compact answer"),
    ), "the files (data instances) of an instance, by backend and format"),
    MethodSpec("files.get", (
        Param("file_id", "integer", required=True, minimum=1),
        Param("torrent", "boolean", default=False),
    ), "one file, optionally with its torrent"),
    MethodSpec("files.copies", (Param("data_id", "integer", required=True, minimum=1),),
               "every present copy of one file, on every backend"),
    MethodSpec("files.expiring", (
        Param("before", "string", required=True), _CURSOR, _LIMIT,
    ), "present files that expire before a time"),
    MethodSpec("files.register", (
        Param("files", "array", required=True),
        Param("new_version", "boolean", default=False, doc="make a new version of each instance"),
    ), "index files (all or none), making instances and data as needed", "write"),
    MethodSpec("files.delete", (
        Param("ids", "array", required=True), Param("reason", "string", default=""),
    ), "mark files deleted", "write"),
    MethodSpec("files.set_torrent", (
        Param("file_id", "integer", required=True, minimum=1),
        Param("info_hash", "string", required=True),
        Param("torrent", "string", required=True, doc="base64 of the bencoded torrent"),
        Param("peer", "string", nullable=True, doc="HOST:PORT of the peer seeding it"),
    ), "keep a file's torrent (and who seeds it) beside it", "write"),
    MethodSpec("events.list", (
        Param("since", "integer", default=0, minimum=0),
        Param("kinds", "array", nullable=True),
        Param("products", "array", nullable=True),
        Param("limit", "integer", default=1000, minimum=1, maximum=10000),
    ), "events numbered above since, oldest first"),
    MethodSpec("events.subscribe", (
        Param("since", "integer", nullable=True, minimum=0,
              doc="replay from above this number; default: only new events"),
        Param("kinds", "array", nullable=True),
        Param("products", "array", nullable=True),
    ), "stream events as 'events' notifications, from since on, in order"),
    MethodSpec("events.unsubscribe", (Param("subscription", "integer", required=True, minimum=1),),
               "stop a subscription"),
])


# --- incoming messages --------------------------------------------------------------


@attrs.frozen
class Call:
    """A valid request to run: the method exists and its params are bound.

    ``notification``: spec, "4.1 Notification": a Request object without an
    "id" member; the server MUST NOT reply to it, not even with an error.
    """

    method: str
    params: Mapping[str, Any]
    id: Any = None
    notification: bool = False


@attrs.frozen
class Rejected:
    """An entry answered without running anything; ``reply`` is None when the
    entry was a notification (no reply, spec 4.1)."""

    reply: dict[str, Any] | None


@attrs.frozen
class Incoming:
    """One websocket message, parsed. ``batch``: it was an array (spec, "6
    Batch"), so the answer is an array too."""

    batch: bool
    entries: tuple[Call | Rejected, ...]

    @property
    def calls(self) -> tuple[Call, ...]:
        return tuple(e for e in self.entries if isinstance(e, Call))


def _valid_id(value: Any) -> bool:
    # spec, "4. Request object": id is a String, Number, or Null. (Numbers
    # SHOULD NOT have fractional parts, but may: accepted and echoed.)
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int))


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON (RFC 8259 section
    # 6): an id of NaN could not even be echoed back as valid JSON.
    raise ValueError(f"{name} is not valid JSON")


def error_reply(id: Any, error: RpcError) -> dict[str, Any]:
    # spec, "5 Response object": exactly one of result and error; id is the
    # request's, or null when it could not be determined.
    return {"jsonrpc": "2.0", "error": error.to_dict(), "id": id}


def result_reply(id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": result, "id": id}


def _parse_entry(entry: Any, methods: Mapping[str, MethodSpec]) -> Call | Rejected:
    if not isinstance(entry, dict):
        return Rejected(error_reply(None, RpcError(
            INVALID_REQUEST, "invalid request: a request must be a JSON object")))
    has_id = "id" in entry
    request_id = entry.get("id")
    if has_id and not _valid_id(request_id):
        return Rejected(error_reply(None, RpcError(
            INVALID_REQUEST, "invalid request: 'id' must be a string, a number or null")))
    # An entry that is not a valid Request is answered even without an id:
    # spec, "7 Examples", "rpc call with invalid Batch" answers [1,2,3] with
    # three errors. Its id is echoed when it was a valid one, null otherwise.
    if entry.get("jsonrpc") != "2.0":
        return Rejected(error_reply(request_id, RpcError(
            INVALID_REQUEST, "invalid request: 'jsonrpc' must be exactly \"2.0\"")))
    method = entry.get("method")
    if not isinstance(method, str):
        return Rejected(error_reply(request_id, RpcError(
            INVALID_REQUEST, "invalid request: 'method' must be a string")))
    params = entry.get("params")
    # spec, "4.2 Parameter Structures": params, if present, MUST be an
    # Array or an Object.
    if "params" in entry and not isinstance(params, (dict, list)):
        return Rejected(error_reply(request_id, RpcError(
            INVALID_REQUEST, "invalid request: 'params' must be an object or an array")))
    notification = not has_id
    spec = methods.get(method)
    try:
        if spec is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method!r}", {"method": method})
        bound = spec.bind(params)
    except RpcError as error:
        return Rejected(None if notification else error_reply(request_id, error))
    return Call(method, bound, request_id, notification)


def parse_message(
    message: str | bytes, methods: Mapping[str, MethodSpec] = METHODS
) -> Incoming:
    """Parse one websocket message into calls to run and replies already known.

    Never raises: anything that is not JSON gets a -32700 reply; anything that
    is JSON but not a request gets -32600; an unknown method -32601; bad params
    -32602 naming the param (spec, "5.1 Error object").
    """
    try:
        if isinstance(message, (bytes, bytearray, memoryview)):
            message = bytes(message).decode("utf-8")
        data = json.loads(message, parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError) as exc:
        # RecursionError: a few thousand nested brackets exhaust the decoder's
        # stack; that is bad input, not a server fault.
        detail = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        return Incoming(False, (Rejected(error_reply(None, RpcError(
            PARSE_ERROR, f"parse error: {detail}"))),))
    if isinstance(data, list):
        # spec, "6 Batch": an empty array is an invalid Request, answered with
        # one error object, not an array.
        if not data:
            return Incoming(False, (Rejected(error_reply(None, RpcError(
                INVALID_REQUEST, "invalid request: empty batch"))),))
        return Incoming(True, tuple(_parse_entry(e, methods) for e in data))
    return Incoming(False, (_parse_entry(data, methods),))


# --- outgoing ------------------------------------------------------------------------


class Raw(str):
    """A result that is JSON text already (a cached answer): spliced into the
    reply as it is, not encoded again."""


def encode(reply: dict[str, Any]) -> str:
    """One reply as JSON text; a result that is not JSON-able becomes a -32603
    for the same id rather than an exception out of the server."""
    return "".join(_parts(reply))


#: a reply's JSON: NaN and infinities refused (not JSON), built once
#: (``codec.compact_json``)
_reply_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _parts(reply: dict[str, Any]) -> list[str]:
    """One reply's text in pieces: a cached answer (``Raw``) is one of them,
    not copied into a new string, so that a batch of answers of tens of kB
    each is joined once (``encode_replies``)."""
    result = reply.get("result")
    if isinstance(result, Raw):
        # an integer id (the usual one) is written as it is, without json.dumps
        request_id = reply["id"]
        text_id = str(request_id) if type(request_id) is int else json.dumps(request_id)
        return ['{"jsonrpc":"2.0","result":', result, ',"id":', text_id, "}"]
    try:
        return [_reply_json(reply)]
    except (TypeError, ValueError, RecursionError) as exc:
        return [json.dumps(error_reply(reply.get("id"), RpcError(
            INTERNAL_ERROR, f"internal error: result is not JSON: {exc}")))]


def encode_replies(incoming: Incoming, replies: Sequence[dict[str, Any] | None]) -> str | None:
    """The text to send back for one message, or None when nothing is owed.

    ``replies`` holds one entry per ``incoming.entries`` (None for
    notifications). spec, "6 Batch": the answer to a batch is an array of the
    replies (in any order; MUPPET keeps the request order), and when every
    entry was a notification nothing at all is sent back, not an empty array.
    """
    parts: list[str] = []
    for reply in replies:
        if reply is not None:
            parts.append(",")
            parts += _parts(reply)
    if not parts:
        return None
    if incoming.batch:
        parts[0] = "["  # the first comma
        parts.append("]")
    else:
        del parts[0]
    return "".join(parts)


def request(method: str, params: Mapping[str, Any] | Sequence[Any] | None, id: Any) -> str:
    """A request's text, for the client; ``id=None`` is sent as an id of null
    (use ``notification`` for a request without reply)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    message["id"] = id
    return compact_json_text(message)


def notification(method: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return compact_json_text(message)


@attrs.frozen
class Response:
    """A reply as the client reads it: ``error`` is None for a success."""

    id: Any
    result: Any = None
    error: RpcError | None = None


def parse_responses(message: str | bytes) -> list[Response]:
    """The replies in one message from a server (single or batch).

    Raises ValueError when the message is not a JSON-RPC 2.0 response.
    """
    if isinstance(message, (bytes, bytearray)):
        message = bytes(message).decode("utf-8")
    data = json.loads(message)
    entries = data if isinstance(data, list) else [data]
    responses = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("jsonrpc") != "2.0" or "id" not in entry:
            raise ValueError(f"not a JSON-RPC 2.0 response: {message[:200]!r}")
        if "error" in entry:
            err = entry["error"]
            if not isinstance(err, dict):
                raise ValueError(f"malformed error object: {err!r}")
            responses.append(Response(entry["id"], error=RpcError(
                int(err.get("code", INTERNAL_ERROR)), str(err.get("message", "")), err.get("data"))))
        elif "result" in entry:
            responses.append(Response(entry["id"], result=entry["result"]))
        else:
            raise ValueError(f"response has neither result nor error: {message[:200]!r}")
    return responses
