"""The web task: the daemon's web page, ``/metrics`` and ``/healthz``, served
by hypercorn's trio worker inside the daemon's nursery (MUPPET design, "the
web page is served by the daemon").

``bind`` opens the listening socket before the tasks start, so that an
address in use is one line at start rather than a task that dies later;
``run`` serves on it until cancelled.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from .. import messages
from ..db.health import DatabaseHealth
from ..listening import cannot_listen
from ..metrics import Metrics
from ..model import Config, WebConfig
from .app import DatabaseReader, WebState, make_app

log = logging.getLogger("muppet.web")

#: how long open connections get to finish when the daemon stops: a page's
#: requests are small; the daemon's stop must not wait on a browser
GRACEFUL_TIMEOUT = 1.0


class WebListenError(OSError):
    """The web server cannot listen on its configured address."""


def bind(web: WebConfig) -> socket.socket | None:
    """The web server's listening socket, or None when there is to be none:
    ``[web] listen = ""``, or the built-in default address is taken (a
    warning says so: a second daemon on one host, or a test, should not
    fail for a page it was never asked for). An address written in the
    configuration that cannot be had raises WebListenError, naming it."""
    if not web.listen:
        return None
    host = web.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, web.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if web.explicit:
            why = cannot_listen(exc)
            raise WebListenError(f"[web] listen: cannot listen on http://{web.listen}: {why[:-1]}, "
                                 'or listen = "" for no web page)') from exc
        log.warning("[web] listen: cannot listen on http://%s: %s; no web page, /metrics or /healthz: "
                    "set [web] listen to another address", web.listen, exc.strerror or exc)
        return None
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def run(
    config: Config,
    listener: socket.socket,
    *,
    health: DatabaseHealth,
    metrics: Metrics,
    scheduler: trio.MemorySendChannel[messages.Asked],
    running_tasks: Callable[[], frozenset[str]],
    api_port: int,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the web page, /metrics and /healthz on ``listener`` (from
    ``bind``; this task owns it from now on) until cancelled.

    Reads the daemon's database on a connection of its own (for /metrics
    and /healthz), reports its outcomes to ``health`` (the daemon's shared
    one); sends the scheduler a question with nothing to look up
    (``WhyWaiting(())``) on ``scheduler`` for each /healthz; asks
    ``running_tasks()`` for the names of the daemon's running tasks, and
    takes those running once it has started as the ones that must keep
    running. ``api_port`` tells the page where the API listens.

    Calls ``task_status.started(url)`` once it serves. On cancellation it
    stops serving (connections get ``GRACEFUL_TIMEOUT`` seconds) and closes
    its database connection.
    """
    metrics.watch_config(config)
    metrics.watch_database(health)
    reader = DatabaseReader(config.daemon.database)
    state = WebState(
        config=config, health=health, metrics=metrics, scheduler=scheduler,
        running_tasks=running_tasks, api_port=api_port, reader=reader,
    )
    hyper = HypercornConfig()
    url = address(listener)
    # hypercorn takes the socket over by its file descriptor
    hyper.bind = [f"fd://{listener.detach()}"]
    hyper.graceful_timeout = GRACEFUL_TIMEOUT
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("muppet.web")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_serve, make_app(state), hyper)
            # the daemon's tasks have all been started before this one; one
            # checkpoint later each has taken its first step, and a task
            # that ends at once (cron with no cron pipeline) is gone
            await trio.lowlevel.checkpoint()
            state.expected_tasks = running_tasks() - {_name(run)}
            log.info("web page, /metrics and /healthz on %s", url)
            task_status.started(url)
    finally:
        with trio.CancelScope(shield=True):
            await reader.aclose()


def _name(fn: Callable[..., object]) -> str:
    """The name Trio gives a task running ``fn``."""
    return f"{fn.__module__}.{fn.__qualname__}"


async def _serve(app: object, hyper: HypercornConfig, *, task_status: trio.TaskStatus[list[str]]) -> None:
    await serve(app, hyper, shutdown_trigger=trio.sleep_forever, task_status=task_status)  # type: ignore[arg-type]
