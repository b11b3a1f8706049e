"""`muppet daemon`: one nursery, the tasks, and the channels between them.

This is the whole flow-based network, drawn once::

    cron ─────Trigger──────────────────┐
    api ──────Asked (Trigger, Command)─┤
    reload ───Asked (Reconfigure)──────┤
    executor ─JobStarted, JobFinished──┼──> inbox ──> scheduler ──StartJob, KillJob,──> executor
    database ─Persisted────────────────┘                 │          ExecutorSettings
                                                         Persist
                                                         v
    api ──────IndexWrite──────────────────────────────> database ──newest event number──> api
    expiry ───IndexWrite──────────────────────────────>    │         (its event hub reads
                                                            │          the new events)
    api: its own read connections to the database <─────────┘
    api, SIGHUP ──Reload──> reload ──replaces──> RunningConfig <──reads── api, cron, expiry

No task imports another; each gets only the channel ends it uses. The
expiry task is a small sixth one: a timer that asks for an index write;
the reload task a seventh: it reads the configuration again when asked
(docs/architecture.md, "Reloading the configuration").
Index writes do not pass through the scheduler: the database task answers
them, and tells the scheduler only the facts it acts on (an instance became
complete) in its ``Persisted``.

The scheduler's inbox is unbounded on purpose: scheduler -> database ->
scheduler and scheduler -> executor -> scheduler are cycles, and two bounded
channels in a cycle can deadlock (each side blocked sending to the other).
What fills the inbox is bounded anyway: the database only reports what was
sent to it, the executor only reports jobs the scheduler started. The
channels out of the scheduler are bounded, so a slow database slows the
scheduler (and the index writers) down instead of piling up memory.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from functools import partial

import trio

from . import cron, metrics, reloader
from .alerts import task as alerts_task
from .api import server as api_task
from .db import task as database_task
from .db.health import DatabaseHealth
from .db.reads import Snapshot
from .db.store import Store
from .executor import task as executor_task
from .index import expiry
from .messages import Operator, Persisted, Reload, ToDatabase, ToExecutor, ToScheduler
from .model import Config
from .running import RunningConfig
from .scheduler import task as scheduler_task
from .scheduler.core import Scheduler
from .web import task as web_task

log = logging.getLogger("muppet.daemon")

#: messages queued towards the database and the executor before their
#: senders wait (back-pressure)
QUEUE = 1000


#: set to 1, an illegal state move stops the daemon instead of being refused
#: and logged (docs/states.md); the test suite sets it
STRICT_STATES = "MUPPET_STRICT_STATES"


async def serve(
    config: Config,
    *,
    reloads: trio.MemoryReceiveChannel[Reload] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until cancelled. ``task_status.started`` gets the API's
    port once every task runs and the API listens. ``reloads``: Reloads
    from outside the API (SIGHUP), for the reload task."""
    strict = os.environ.get(STRICT_STATES) == "1"
    # the API's address first: one in use stops the daemon before it
    # touches the database
    listeners = await api_task.listen(config.api)
    try:
        async with database_task.opened(config, api_task.address(config.api, listeners)) as (store, snapshot):
            await _serve(config, store, snapshot, listeners, strict, task_status, reloads)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()


async def _serve(
    config: Config,
    store: Store,
    snapshot: Snapshot,
    listeners: api_task.Listeners,
    strict: bool,
    task_status: trio.TaskStatus[int],
    reloads: trio.MemoryReceiveChannel[Reload] | None = None,
) -> None:
    """The tasks and their channels, over an open database and the API's
    listening sockets."""
    # one view of the database's outages for every task that talks to it
    health = DatabaseHealth(store.describe())
    # the daemon's metrics, found by every task started below (muppet/metrics.py)
    figures = metrics.Metrics()
    metrics.CURRENT.set(figures)
    # the web page's address: one written in the configuration and in use
    # stops the daemon here, before any task starts
    web_listener = web_task.bind(config.web)
    core = Scheduler(
        config.pipelines,
        config.executors,
        next_run_id=snapshot.next_run_id,
        next_job_id=snapshot.next_job_id,
        next_request_id=snapshot.next_request_id,
        outputs_backend=config.backends.get(config.index.outputs_backend),
        strict=strict,
        definitions=snapshot.definitions,
    )
    # the configuration as the daemon runs it now: the reload task replaces
    # it, the API, cron and expiry read it (docs/architecture.md)
    running = RunningConfig(config)
    to_reloader, reload_inbox = trio.open_memory_channel[Reload](RELOADS)
    to_scheduler, scheduler_inbox = trio.open_memory_channel[ToScheduler](math.inf)
    to_database, database_inbox = trio.open_memory_channel[ToDatabase](QUEUE)
    to_executor, executor_inbox = trio.open_memory_channel[ToExecutor](QUEUE)
    # one slot: while a number waits, a newer one is dropped; the hub
    # reads up to the newest event whatever number woke it
    to_api, committed = trio.open_memory_channel[int](1)
    persisted: trio.MemorySendChannel[Persisted] = to_scheduler.clone()
    async with trio.open_nursery() as nursery:
        # the API first, so that clients are answered from the start
        # (requests wait in the channels until the other tasks run)
        port = await nursery.start(partial(
            api_task.run, config, to_scheduler.clone(), to_database.clone(),
            committed=committed, health=health, listeners=listeners, running=running, reloads=to_reloader.clone(),
        ))
        nursery.start_soon(partial(
            database_task.run, store, database_inbox, persisted, committed=to_api, health=health,
        ))
        nursery.start_soon(partial(
            executor_task.run, executor_inbox, to_scheduler.clone(),
            executors=config.executors,
            state_dir=config.daemon.state_dir,
            output_dir=config.daemon.output_dir,
        ))
        nursery.start_soon(partial(
            scheduler_task.run, core, scheduler_inbox, to_database.clone(), to_executor,
            loaded=(snapshot.runs, snapshot.jobs), ended=snapshot.ended, controls=snapshot.controls,
            update_requests=snapshot.update_requests,
        ))
        nursery.start_soon(partial(
            cron.run, config.pipelines, to_scheduler.clone(), last_fired=snapshot.last_cron, running=running,
        ))
        nursery.start_soon(partial(expiry.run, config.index, to_database.clone(), running=running))
        nursery.start_soon(reloader.run, reload_inbox, to_scheduler.clone(), running)
        # incidents to stakeholders by mail and webhook, beside the scheduler:
        # a dead mail server slows nothing else (docs/alerts.md)
        nursery.start_soon(partial(
            alerts_task.run, config.daemon.database, to_database.clone(), current=lambda: running.config,
            health=health,
        ))
        if reloads is not None:
            nursery.start_soon(_forward, reloads, to_reloader.clone())
        if web_listener is not None:
            # last: it takes the tasks running now as those that must keep running
            nursery.start_soon(partial(
                web_task.run, config, web_listener, health=health, metrics=figures,
                scheduler=to_scheduler.clone(), api_port=port,
                running_tasks=lambda: frozenset(task.name for task in nursery.child_tasks),
            ))
        log.info("API listening on %s://%s:%s", config.api.scheme, config.api.host, port)
        task_status.started(port)


async def _forward(receive: trio.MemoryReceiveChannel[Reload], send: trio.MemorySendChannel[Reload]) -> None:
    """Reloads from outside (SIGHUP) into the reload task's inbox."""
    async for message in receive:
        await send.send(message)


#: Reloads that may wait for the reload task (one runs at a time)
RELOADS = 16


async def serve_until_signal(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly: local jobs go on
    running and are re-attached at the next start. SIGHUP reloads the
    configuration (docs/operations.md, "Reload")."""
    send, receive = trio.open_memory_channel[Reload](RELOADS)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(serve, config, reloads=receive))
            async for signum in signals:
                if signum == signal.SIGHUP:
                    try:
                        send.send_nowait(Reload(Operator("SIGHUP")))
                    except trio.WouldBlock:
                        log.warning("SIGHUP: %d reloads wait already; this one is not needed", RELOADS)
                    continue
                log.info("%s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
