"""The API task: a websocket server speaking JSON-RPC 2.0 (see protocol.py).

Reads (runs, jobs, logs, the index) go to the server's own read Stores;
commands (trigger, hold, release, kill, rerun) go to the scheduler and index
writes to the database task, as messages, and wait for the reply. The event hub follows the event
log for subscriptions and keeps the cache of hot answers current. The method
names, their params, their roles and their errors are documented in
docs/api.md; the index methods live in index.py.
"""

from __future__ import annotations

import importlib.metadata
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import attrs
import trio
import trio_websocket

from .. import codec, cron, messages, metrics, model
from ..db import reads
from ..db.health import DatabaseHealth, until_available
from ..db.store import DatabaseUnavailable, Store, open_store
from ..index import queries
from ..index.events import EventHub
from ..listening import cannot_listen
from ..messages import CONFLICT, NOT_FOUND
from ..running import Role, RunningConfig
from . import alerts as alert_methods
from . import console, protocol
from . import index as index_methods
from . import reload as reload_methods
from .context import Connection, Context, ReadPool
from .protocol import DATABASE_UNAVAILABLE, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, RpcError

log = logging.getLogger("muppet.api")

#: how long a command waits for the scheduler's Reply before answering -32003
REPLY_TIMEOUT = 30.0
#: messages of one connection handled at once; beyond it the server stops
#: reading from that client until one finishes (back-pressure, not a queue)
IN_FLIGHT_PER_CONNECTION = 64


def _version() -> str:
    try:
        return importlib.metadata.version("muppet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


Handler = Callable[[Context, Mapping[str, Any], Connection], Awaitable[Any]]


# --- handlers: one per method of protocol.METHODS --------------------------------


async def _daemon_status(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    return await console.daemon_status(ctx, _version())


async def _daemon_echo(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    return params["data"]


def _pipeline_to_dict(pipeline: model.Pipeline) -> dict[str, Any]:
    return {
        "name": pipeline.name,
        "owner": pipeline.owner,
        "cron": list(pipeline.cron),
        "timezone": pipeline.timezone,
        "requires": list(pipeline.requires),
        "produces": list(pipeline.produces),
        "steps": [
            {"name": s.name, "parents": list(s.parents), "jobs": s.jobs, "executor": s.executor}
            for s in pipeline.steps.values()
        ],
    }


async def _pipelines_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    return [_pipeline_to_dict(ctx.config.pipelines[name]) for name in sorted(ctx.config.pipelines)]


async def _runs_trigger(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    name = params["pipeline"]
    if name not in ctx.config.pipelines:
        raise RpcError(NOT_FOUND, f"unknown pipeline {name!r}", {"pipeline": name})
    text = params["reference_time"]
    if text is None:
        reference_time = datetime.now(UTC).replace(microsecond=0)
    else:
        try:
            reference_time = codec.parse_time(text)
        except ValueError as exc:
            raise RpcError(
                INVALID_PARAMS, f"invalid params: 'reference_time' {exc}", {"param": "reference_time"}
            ) from None
    return await ctx.ask(messages.Trigger(
        name, reference_time, cause=model.RunCause.MANUAL.value, by=_operator(conn, params)))


#: more runs than this in one backfill need ``yes``
BACKFILL_CONFIRM = 1000
#: and more than this are refused whatever: a backfill is one request, one reply
BACKFILL_MAX = 100_000


async def _runs_backfill(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    name = params["pipeline"]
    pipeline = ctx.config.pipelines.get(name)
    if pipeline is None:
        raise RpcError(NOT_FOUND, f"unknown pipeline {name!r}", {"pipeline": name})
    if not pipeline.cron:
        raise RpcError(INVALID_PARAMS, f"invalid params: pipeline {name!r} has no cron to backfill; "
                       "make each run with runs.trigger and its reference_time", {"param": "pipeline"})
    bounds = []
    for key in ("from", "to"):
        try:
            bounds.append(codec.parse_time(params[key]))
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params: {key!r} {exc}", {"param": key}) from None
    first, last = bounds
    if last < first:
        raise RpcError(INVALID_PARAMS, "invalid params: 'to' is before 'from'", {"param": "to"})
    cap = BACKFILL_MAX if params["yes"] else BACKFILL_CONFIRM
    times = cron.firings_between(pipeline, first - timedelta(microseconds=1), last, cap + 1)
    if len(times) > cap:
        # firings_between keeps the newest; count how many there are at most
        if params["yes"]:
            raise RpcError(INVALID_PARAMS, f"invalid params: more than {BACKFILL_MAX} runs in one backfill; "
                           "split the range", {"param": "to"})
        raise RpcError(INVALID_PARAMS, f"invalid params: more than {BACKFILL_CONFIRM} runs: give yes = true "
                       "(muppet trigger --yes) to make them all", {"param": "yes"})
    return await ctx.ask(messages.Backfill(name, tuple(times), by=_operator(conn, params)))


async def _runs_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    runs = await ctx.query(
        reads.list_runs,
        pipeline=params["pipeline"],
        state=params["state"],
        limit=params["limit"],
        before_id=params["before_id"],
    )
    return [codec.run_to_dict(r) for r in runs]


async def _runs_get(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    found = await ctx.query(reads.run_with_jobs, params["run_id"])
    if found is None:
        raise RpcError(NOT_FOUND, f"unknown run {params['run_id']}", {"run_id": params["run_id"]})
    run, jobs = found
    return {**codec.run_to_dict(run), "jobs": await _jobs_with_reasons(ctx, list(jobs))}


async def _jobs_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    jobs = await ctx.query(reads.list_jobs, run_id=params["run_id"], state=params["state"], limit=params["limit"])
    return await _jobs_with_reasons(ctx, jobs)


async def _jobs_with_reasons(ctx: Context, jobs: list[model.Job]) -> list[dict[str, Any]]:
    """The jobs as the API shows them: a waiting or held job's ``reason`` is
    why it waits now, as the scheduler sees it (docs/states.md, "Why a job
    waits")."""
    reasons = await ctx.why_waiting(jobs)
    return [codec.job_to_dict(attrs.evolve(j, reason=reasons[j.id]) if reasons.get(j.id) else j) for j in jobs]


async def _load_job(ctx: Context, job_id: int) -> model.Job:
    job = await ctx.query(reads.get_job, job_id)
    if job is None:
        raise RpcError(NOT_FOUND, f"unknown job {job_id}", {"job_id": job_id})
    return job


async def _jobs_get(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    (job,) = await _jobs_with_reasons(ctx, [await _load_job(ctx, params["job_id"])])
    return job


async def _jobs_logs(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    job = await _load_job(ctx, params["job_id"])
    job_log = await ctx.query(reads.get_job_log, job.id)
    stream = params["stream"]
    # A job still running has no tail in the database yet: empty, not an error.
    text = "" if job_log is None else getattr(job_log, stream)
    return {"job_id": job.id, "stream": stream, "text": text}


def _operator(conn: Connection, params: Mapping[str, Any]) -> messages.Operator:
    """Who asks, for the operator event: the token's name, "local" where the
    API is open (docs/operations.md, "Who did what"), and the reason given."""
    return messages.Operator(conn.token_name or "local", params.get("reason") or "")


async def _run_and_jobs(ctx: Context, run_id: int) -> tuple[model.Run, tuple[model.Job, ...]]:
    found = await ctx.query(reads.run_with_jobs, run_id)
    if found is None:
        raise RpcError(NOT_FOUND, f"unknown run {run_id}", {"run_id": run_id})
    run, jobs = found
    return run, tuple(jobs)


async def _definition(ctx: Context, run: model.Run | None) -> model.Pipeline | None:
    """The definition ``run`` was made with, for a command that may bring
    the ended run back (docs/operations.md, "Reload")."""
    if run is None or not run.definition:
        return None
    return await ctx.query(reads.get_definition, run.definition)


def _job_command(action: str) -> Handler:
    async def handle(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
        job = await _load_job(ctx, params["job_id"])
        run: model.Run | None = None
        jobs: tuple[model.Job, ...] = ()
        if action in ("rerun", "set"):
            # The scheduler forgets a run once it has ended; a rerun or a set
            # brings it back, so it gets the run and all of its jobs.
            try:
                run, jobs = await _run_and_jobs(ctx, job.run_id)
            except RpcError:
                raise RpcError(CONFLICT, f"job {job.id}: its run {job.run_id} is missing") from None
        return await ctx.ask(messages.Command(
            action, job.id, run=run, jobs=jobs, by=_operator(conn, params),
            downstream=bool(params.get("downstream")), outcome=params.get("outcome") or "",
            definition=await _definition(ctx, run),
        ))

    handle.__name__ = f"_jobs_{action}"
    return handle


def _run_command(action: str) -> Handler:
    async def handle(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
        run, jobs = await _run_and_jobs(ctx, params["run_id"])
        if action not in ("rerun", "bypass"):
            jobs = ()  # only these bring an ended run back
        return await ctx.ask(messages.RunCommand(
            action, run.id, run=run, jobs=jobs, by=_operator(conn, params), step=params.get("step") or "",
            definition=await _definition(ctx, run) if jobs else None,
        ))

    handle.__name__ = f"_runs_{action}"
    return handle


def _pipeline_command(action: str) -> Handler:
    async def handle(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
        return await ctx.ask(messages.PipelineCommand(action, params["pipeline"], by=_operator(conn, params)))

    handle.__name__ = f"_pipelines_{action}"
    return handle


def _daemon_command(action: str) -> Handler:
    async def handle(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
        return await ctx.ask(messages.DaemonCommand(action, by=_operator(conn, params)))

    handle.__name__ = f"_daemon_{action}"
    return handle


async def _products_request_update(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    """Find the pipeline that produces the product and hand the request to
    the scheduler (docs/api.md, "products.request_update")."""
    slug = params["product"]
    if await ctx.query(queries.get_product, slug) is None:
        raise RpcError(NOT_FOUND, f"unknown product {slug!r}", {"product": slug})
    producers = sorted(name for name, p in ctx.config.pipelines.items() if slug in p.produces)
    chosen = params["pipeline"]
    if chosen is not None and chosen not in producers:
        raise RpcError(NOT_FOUND, f"pipeline {chosen!r} does not produce product {slug!r}"
                       + (f" ({', '.join(producers)} does)" if producers else ""), {"pipeline": chosen})
    if chosen is None and not producers:
        raise RpcError(NOT_FOUND, f"no pipeline produces product {slug!r}: a pipeline lists the products it "
                       "makes in produces (docs/configuration.md)", {"product": slug})
    if chosen is None and len(producers) > 1:
        raise RpcError(INVALID_PARAMS, f"invalid params: product {slug!r} is produced by {', '.join(producers)}: "
                       "give 'pipeline'", {"param": "pipeline"})
    pipeline = chosen or producers[0]
    try:
        reference_time = codec.parse_time(params["reference_time"])
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: 'reference_time' {exc}", {"param": "reference_time"}) from None
    found = await ctx.query(reads.find_run, pipeline, reference_time)
    run, jobs = found if found is not None else (None, ())
    return await ctx.ask(messages.RequestUpdate(
        slug, reference_time, pipeline, by=_operator(conn, params), run=run, jobs=tuple(jobs),
    ))


async def _requests_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    found = await ctx.query(reads.list_requests, state=params["state"], limit=params["limit"])
    return [codec.request_to_dict(r) for r in found]


#: method name -> handler; the params each gets are declared in protocol.METHODS
HANDLERS: dict[str, Handler] = {
    "daemon.status": _daemon_status,
    "pipelines.list": _pipelines_list,
    "runs.trigger": _runs_trigger,
    "runs.backfill": _runs_backfill,
    "runs.list": _runs_list,
    "runs.get": _runs_get,
    "jobs.list": _jobs_list,
    "jobs.get": _jobs_get,
    "jobs.logs": _jobs_logs,
    "jobs.hold": _job_command("hold"),
    "jobs.release": _job_command("release"),
    "jobs.kill": _job_command("kill"),
    "jobs.rerun": _job_command("rerun"),
    "jobs.set": _job_command("set"),
    "runs.hold": _run_command("hold"),
    "runs.release": _run_command("release"),
    "runs.kill": _run_command("kill"),
    "runs.rerun": _run_command("rerun"),
    "runs.bypass": _run_command("bypass"),
    "pipelines.pause": _pipeline_command("pause"),
    "pipelines.resume": _pipeline_command("resume"),
    "products.request_update": _products_request_update,
    "requests.list": _requests_list,
    "daemon.drain": _daemon_command("drain"),
    "daemon.undrain": _daemon_command("undrain"),
    "daemon.echo": _daemon_echo,
    **index_methods.HANDLERS,
    **console.HANDLERS,
    **alert_methods.HANDLERS,
    **reload_methods.HANDLERS,
}

if HANDLERS.keys() != protocol.METHODS.keys():  # a method declared without handler, or the reverse
    raise ImportError(
        f"muppet.api: methods and handlers differ: {sorted(HANDLERS.keys() ^ protocol.METHODS.keys())}"
    )


# --- the connection loop ------------------------------------------------------------


async def _answer(ctx: Context, conn: Connection, call: protocol.Call) -> dict[str, Any] | None:
    began = time.perf_counter()
    try:
        spec = protocol.METHODS[call.method]
        ctx.authorize(conn, spec)
        ctx.refuse_on_standby(spec)
        result = await HANDLERS[call.method](ctx, call.params, conn)
        reply = protocol.result_reply(call.id, result)
    except RpcError as error:
        reply = protocol.error_reply(call.id, error)
    except DatabaseUnavailable as exc:
        # a read that did not go through ctx.query: the same answer
        ctx.health.failed(exc)
        reply = protocol.error_reply(call.id, RpcError(DATABASE_UNAVAILABLE, f"database unavailable, retry: {exc}"))
    except Exception as exc:
        # A bug or a database failure answers this call; the connection and the
        # other calls go on.
        log.exception("API method %s failed", call.method)
        reply = protocol.error_reply(call.id, RpcError(
            INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}"))
    # requests and errors by method (docs/operations.md, "Metrics")
    failed = reply.get("error")
    metrics.current().api_call(call.method, time.perf_counter() - began, None if failed is None else failed["code"])
    return None if call.notification else reply


def _fast(ctx: Context, conn: Connection, call: protocol.Call) -> dict[str, Any] | None:
    """The reply of a call answered from the cache without a task, or None."""
    text = index_methods.cached_answer(ctx, call.method, call.params)
    if text is None:
        return None
    try:
        ctx.authorize(conn, protocol.METHODS[call.method])
    except RpcError:
        return None  # the slow path answers with the error
    metrics.current().api_call(call.method, 0.0, None)
    return protocol.result_reply(call.id, protocol.Raw(text))


def _too_big(ctx: Context, message: str | bytes) -> str | None:
    limit = ctx.config.api.max_message_bytes
    size = len(message.encode() if isinstance(message, str) and len(message) * 4 > limit else message)
    if size <= limit:
        return None
    return protocol.encode(protocol.error_reply(None, RpcError(
        INVALID_REQUEST,
        f"invalid request: the message has {size} bytes, more than [api] max_message_bytes = {limit}",
    )))


async def _handle_message(
    ctx: Context, conn: Connection, message: str | bytes, slot: trio.Semaphore,
) -> None:
    ws = conn.ws
    try:
        refusal = _too_big(ctx, message)
        if refusal is not None:
            await ws.send_message(refusal)
            return
        incoming = protocol.parse_message(message, protocol.METHODS)
        replies: list[dict[str, Any] | None] = [
            None if isinstance(e, protocol.Call) else e.reply for e in incoming.entries
        ]

        async def run_one(i: int, call: protocol.Call) -> None:
            replies[i] = await _answer(ctx, conn, call)

        calls = []
        for i, entry in enumerate(incoming.entries):
            if isinstance(entry, protocol.Call):
                fast = None if entry.notification else _fast(ctx, conn, entry)
                if fast is not None:
                    replies[i] = fast
                else:
                    calls.append((i, entry))
        if len(calls) == 1:
            await run_one(*calls[0])
        elif calls:
            # The calls of a batch run side by side (spec, "6 Batch": "in any
            # order and with any width of parallelism").
            async with trio.open_nursery() as nursery:
                for i, call in calls:
                    nursery.start_soon(run_one, i, call)
        text = protocol.encode_replies(incoming, replies)
        if text is not None:
            await ws.send_message(text)
    except trio_websocket.ConnectionClosed:
        pass  # the client went away; nothing to answer to
    except Exception:
        log.exception("API: answering a message failed")
    finally:
        for replied in conn.replied:
            replied.set()
        conn.replied.clear()
        slot.release()


async def _serve_connection(ctx: Context, request: trio_websocket.WebSocketRequest) -> None:
    # trio-websocket 0.12: a handler that raises takes the whole
    # serve_websocket down (and its clients see only a normal close), so this
    # is the error boundary of one connection.
    try:
        ws = await request.accept()
        slot = trio.Semaphore(IN_FLIGHT_PER_CONNECTION)
        async with trio.open_nursery() as nursery:
            conn = Connection.authenticate(ws, nursery, request.headers, ctx.config)
            try:
                while True:
                    message = await ws.get_message()
                    await slot.acquire()
                    # Each message gets its own task, so a command waiting for
                    # the scheduler does not hold up the reads behind it.
                    nursery.start_soon(_handle_message, ctx, conn, message, slot)
            except trio_websocket.ConnectionClosed:
                pass
            # Closed: nobody is left to read the answers still being worked on.
            nursery.cancel_scope.cancel()
    except trio_websocket.ConnectionClosed:
        pass
    except Exception:
        log.exception("API: connection handler failed")


class ListenError(OSError):
    """The API cannot listen on its address (in use, not this host's)."""


#: read Stores the index queries share
READERS = 4
#: seconds between a standby's looks at the event log
STANDBY_POLL = 0.25


Listeners = list[trio.SSLListener[trio.SocketStream]] | list[trio.SocketListener]


async def listen(api: model.ApiConfig) -> Listeners:
    """The API's listening sockets (TLS over them with ``tls_cert``), as
    trio_websocket.serve_websocket would open them. The daemon opens them
    before anything else, so that an address in use stops it before it
    touches its database. Raises ListenError naming the address."""
    context = None
    if api.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(api.tls_cert, api.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ListenError(
                f"[api] tls_cert: cannot load the certificate {api.tls_cert} with the key {api.tls_key}: "
                f"{exc.strerror or exc} (both PEM, the key matching the certificate)"
            ) from exc
    try:
        if context is None:
            return await trio.open_tcp_listeners(api.port, host=api.host)
        return await trio.open_ssl_over_tcp_listeners(api.port, context, host=api.host, https_compatible=True)
    except OSError as exc:
        raise ListenError(
            f"[api] listen: cannot listen on {api.scheme}://{api.listen}: {cannot_listen(exc)}"
        ) from exc


def address(api: model.ApiConfig, listeners: Listeners) -> str:
    """Where clients reach the API (``ws://HOST:PORT``), with the port the
    kernel chose when the configured one is 0."""
    first = listeners[0]
    socket_listener = first.transport_listener if isinstance(first, trio.SSLListener) else first
    assert isinstance(socket_listener, trio.SocketListener)
    port = socket_listener.socket.getsockname()[1]
    return f"{api.scheme}://{api.listen.rsplit(':', 1)[0]}:{port}"


async def run(
    config: model.Config,
    scheduler: trio.MemorySendChannel[messages.Asked],
    database: trio.MemorySendChannel[messages.ToDatabase],
    *,
    committed: trio.MemoryReceiveChannel[messages.EventsCommitted] | None = None,
    health: DatabaseHealth | None = None,
    listeners: Listeners | None = None,
    reply_timeout: float = REPLY_TIMEOUT,
    running: RunningConfig | None = None,
    reloads: trio.MemorySendChannel[messages.Reload] | None = None,
    role: Role | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The API task: serve JSON-RPC 2.0 over websocket on ``config.api.listen``
    (wss:// with ``tls_cert`` and ``tls_key``).

    Receives: on ``committed``, the newest event number and the events
    appended after each commit of the database task (without it, the event
    hub looks every second);
    requests from websocket clients. Answers from ``running``, the
    configuration the daemon runs now (a reload replaces it; without it,
    ``config`` for good), and sends ``daemon.reload`` to ``reloads``.
    Sends: ``messages.Asked`` (a Trigger or Command) to ``scheduler`` and
    ``messages.IndexWrite`` to ``database``, each with the send end of a
    fresh one-slot channel on which it waits (at most ``reply_timeout``
    seconds, then -32003) for the reply. Reads through its own Stores opened
    on ``[daemon] database``; ``events`` notifications to subscribers.

    Calls ``task_status.started(port)`` once listening, with the bound port
    (the one the kernel chose when the configured port is 0). Serves on
    ``listeners`` when given (``listen``), else opens them itself.

    ``role``: whether this daemon is the active one (the default) or a
    standby; a standby answers reads from the database and refuses writes
    and commands with -32007 naming the active daemon (``Context.
    refuse_on_standby``); its event hub looks at the log every
    ``STANDBY_POLL`` seconds, since no database task tells it of commits.

    Database outages: every read reports to ``health`` (the daemon's shared
    one). A call that cannot read gets -32005; a command or write while the
    database is known to be away is refused with -32005 at once. The event
    hub retries until the database answers again and then delivers every
    event after the last one it delivered, so a subscriber sees no gap and
    no duplicate.

    On cancellation: open connections and the calls in them are cancelled
    (a call waiting for a reply stops waiting; what was already sent still
    happens), the listener closes, the Stores are closed.
    Runs until cancelled; raises only when it cannot open the Stores or bind.
    """
    stores: list[Store] = []
    try:
        for _ in range(READERS + 1):
            stores.append(await trio.to_thread.run_sync(open_store, config.daemon.database))
        # the event hub reads on a store of its own (it reads after every
        # commit, and must not wait behind the handlers' queries)
        hub_store = stores[-1]
        if health is None:
            health = DatabaseHealth(hub_store.describe())
        readers = ReadPool(stores[:-1], health)

        async def read_events(after: int, limit: int) -> list[dict[str, Any]]:
            # the hub reads only what is new: never a pruned event
            read = partial(queries.events_since, hub_store, after, limit=limit, pruned=False)
            return await until_available(health, partial(trio.to_thread.run_sync, read))

        start = await trio.to_thread.run_sync(reads.last_event_id, hub_store)
        hub = EventHub(read_events, start)
        metrics.current().watch_events(lambda: len(hub.subscriptions), lambda: hub.position - start)
        ctx = Context(
            running=running or RunningConfig(config),
            reloads=reloads,
            scheduler=scheduler,
            database=database,
            readers=readers,
            hub=hub,
            started_at=time.time(),
            reply_timeout=reply_timeout,
            role=role or Role(True),
        )
        if committed is None:
            _never, committed = trio.open_memory_channel[messages.EventsCommitted](0)
            poll = 1.0
        else:
            poll = 5.0
        if not ctx.role.active:
            # a standby: another daemon commits, and nothing tells this one
            # (once active, its database task does, and the look is cheap)
            poll = STANDBY_POLL
        # trio-websocket closes a connection whose message exceeds its own
        # limit (1009, message too big); up to twice the configured limit, the
        # client gets a JSON-RPC error naming the limit instead
        ws_limit = 2 * config.api.max_message_bytes + 65536
        if listeners is None:
            listeners = await listen(config.api)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(hub.run, committed, poll=poll))
            server = trio_websocket.WebSocketServer(
                partial(_serve_connection, ctx), listeners, handler_nursery=nursery, max_message_size=ws_limit,
            )
            await nursery.start(server.run)
            port = server.port
            log.debug("API listening on %s", ", ".join(
                f"{config.api.scheme}://{listener.address}:{listener.port}"
                if isinstance(listener, trio_websocket.Endpoint) else str(listener)
                for listener in server.listeners))
            task_status.started(port)
    finally:
        with trio.CancelScope(shield=True):
            for store in stores:
                await trio.to_thread.run_sync(store.close)
