"""``/metrics`` and ``/healthz`` of ``muppet-sync seed`` and ``fetch``, on
``[metrics] listen`` (docs/sync.md, "Metrics and health check").

Served as the daemon serves its own (muppet/web/): an ASGI app (starlette)
on hypercorn's trio worker, a task in the command's nursery, so that it
lives and ends with the command. :func:`bind` opens the listening socket at
start, so that an address that cannot be had is one line then, not a task
that dies later; :func:`serve` serves on it until cancelled.

``/healthz`` answers 200 when all of these hold, else 503, each with the
daemon's JSON body (muppet/web/health.py, ``judge``):

* ``index``: a new connection to the index's API answers a read
  (``backends.list``) within ``PROBE_TIMEOUT`` seconds: the daemon is up,
  reachable from here, and takes this command's token;
* ``events``: the index's event stream is subscribed, so files registered
  now reach this command (it is not while the daemon is away, and for a
  while after it is back: the stream is subscribed again with backoff);
* ``tasks``: every long-lived task of the command is running.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from muppet.api.client import ConnectionLost, DaemonUnreachable, connect
from muppet.api.protocol import RpcError
from muppet.listening import cannot_listen
from muppet.web.health import PROBE_TIMEOUT, Check, judge, tasks_check

from .errors import StartupError
from .metrics import Sample, SyncMetrics

__all__ = ["GRACEFUL_TIMEOUT", "WebState", "address", "bind", "running_task_names", "serve"]

log = logging.getLogger("muppet.sync.web")

#: how long open connections get to finish when the command stops: a scrape
#: is one small request; stopping must not wait on a prober
GRACEFUL_TIMEOUT = 1.0


def bind(source: str, listen: str) -> socket.socket | None:
    """The listening socket for ``[metrics] listen`` of the file ``source``
    (None: ``""``, none wanted). Raises :class:`StartupError`, one line
    naming the file, the key and the cause, when the address cannot be had.
    Blocks (a host name is looked up): call it in a worker thread."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = cannot_listen(exc)  # the daemon's words for it (docs/operations.md, "Start-up errors")
        raise StartupError([f"{source}: [metrics] listen: cannot listen on http://{listen}: {why[:-1]}, "
                            'or listen = "" for no /metrics and /healthz)']) from None
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def running_task_names(root: trio.lowlevel.Task) -> frozenset[str]:
    """The names of ``root`` and of every task below it, as Trio names them
    (``module.function``)."""
    names = set()
    waiting = [root]
    while waiting:
        task = waiting.pop()
        names.add(task.name)
        for nursery in task.child_nurseries:
            waiting.extend(nursery.child_tasks)
    return frozenset(names)


@attrs.frozen
class WebState:
    """What the two routes need of the running command."""

    metrics: SyncMetrics
    #: the figures of this moment (sync.run.SyncRun.sample)
    sample: Callable[[], Awaitable[Sample]]
    #: the index's API, and the token this command uses (for the probe)
    api: str
    token: str | None
    #: whether the event stream is subscribed, and in words (SyncRun.index_state)
    events: Callable[[], tuple[bool, str]]
    #: the names of the command's tasks running now, and those that must be
    running_tasks: Callable[[], frozenset[str]]
    expected_tasks: frozenset[str]


async def _metrics(state: WebState, request: Request) -> Response:
    state.metrics.set_sample(await state.sample())
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _index_check(state: WebState) -> Check:
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            async with connect(state.api, token=state.token, connect_timeout=PROBE_TIMEOUT) as client:
                await client.call("backends.list")
        except RpcError as e:
            return Check("index", False, f"{state.api} refused: {e}")
        except (DaemonUnreachable, ConnectionLost, OSError) as e:
            return Check("index", False, str(e))
        return Check("index", True, f"{state.api} answers")
    return Check("index", False, f"{state.api} did not answer within {PROBE_TIMEOUT:g} s")


async def _healthz(state: WebState, request: Request) -> Response:
    subscribed, detail = state.events()
    checks = [
        await _index_check(state),
        Check("events", subscribed, detail),
        tasks_check(state.expected_tasks, state.running_tasks()),
    ]
    status, body = judge(checks)
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def make_app(state: WebState) -> Any:
    """The ASGI app: ``/metrics`` and ``/healthz``, nothing else (404)."""
    return Starlette(routes=[
        Route("/metrics", partial(_metrics, state)),
        Route("/healthz", partial(_healthz, state)),
    ])


async def serve(
    listener: socket.socket, state: WebState, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``/metrics`` and ``/healthz`` on ``listener`` (from :func:`bind`;
    this task owns it from now on) until cancelled. Calls
    ``task_status.started(url)`` once it serves. On cancellation open
    connections get ``GRACEFUL_TIMEOUT`` seconds."""
    hyper = HypercornConfig()
    url = address(listener)
    # hypercorn takes the socket over by its file descriptor
    hyper.bind = [f"fd://{listener.detach()}"]
    hyper.graceful_timeout = GRACEFUL_TIMEOUT
    hyper.accesslog = None
    hyper.errorlog = log
    async with trio.open_nursery() as nursery:
        await nursery.start(_serve, make_app(state), hyper)
        log.info("/metrics and /healthz on %s", url)
        task_status.started(url)


async def _serve(app: Any, hyper: HypercornConfig, *, task_status: trio.TaskStatus[list[str]]) -> None:
    await hypercorn_serve(app, hyper, shutdown_trigger=trio.sleep_forever, task_status=task_status)
