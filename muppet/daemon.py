"""`muppet daemon`: one nursery, the tasks, and the channels between them.

This is the whole flow-based network, drawn once::

    cron ─────Trigger──────────────────┐
    api ──────Asked (Trigger, Command)─┤
    reload ───Asked (Reconfigure)──────┤
    executor ─JobStarted, JobFinished──┼──> inbox ──> scheduler ──StartJob, KillJob,──> executor
    database ─Persisted────────────────┘                 │          ExecutorSettings
                                                         Persist
                                                         v
    api ──────IndexWrite──────────────────────────────> database ──EventsCommitted──> api
    expiry ───IndexWrite──────────────────────────────>    │         (its event hub takes
                                                            │          the new events)
    api: its own read connections to the database <─────────┘
    api, SIGHUP ──Reload──> reload ──replaces──> RunningConfig <──reads── api, cron, expiry

No task imports another; each gets only the channel ends it uses. The
expiry task is a small sixth one: a timer that asks for an index write;
the reload task a seventh: it reads the configuration again when asked
(docs/architecture.md, "Reloading the configuration"); the history task
prunes what is older than ``[daemon] keep_history`` through the database
task, a chunk per transaction, and old job directories.
Index writes do not pass through the scheduler: the database task answers
them, and tells the scheduler only the facts it acts on (an instance became
complete) in its ``Persisted``.

The lease (``db/lease.py``) holds it all together: the daemon takes it
before any task starts, a small task renews it every second and moves the
``Fence`` the executor waits on before it starts or kills a job, and the
database task checks its epoch in each transaction. A standby
(docs/operations.md, "Running a standby") runs only the API, whose
``Role`` says it refuses writes, until it takes the lease over; then the
other tasks start on the channels the API was given from the start.

The scheduler's inbox is unbounded on purpose: scheduler -> database ->
scheduler and scheduler -> executor -> scheduler are cycles, and two bounded
channels in a cycle can deadlock (each side blocked sending to the other).
What fills the inbox is bounded anyway: the database only reports what was
sent to it, the executor only reports jobs the scheduler started. The
channels out of the scheduler are bounded, so a slow database slows the
scheduler (and the index writers) down instead of piling up memory.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import socket
import sqlite3
import time
from functools import partial

import attrs
import psycopg
import trio

from . import cron, history, metrics, reloader
from .alerts import task as alerts_task
from .api import server as api_task
from .db import task as database_task
from .db.dialect import describe_url
from .db.health import DatabaseHealth
from .db.lease import STANDBY_POLL, Fence, Holder, Lease, LeaseHeld, Standing
from .db.lease import keep as lease_keep
from .db.reads import Snapshot
from .db.store import CONNECTION_TAG, DatabaseUnavailable, Store
from .executor import task as executor_task
from .index import expiry
from .messages import EventsCommitted, Operator, Persisted, Reload, ToDatabase, ToExecutor, ToScheduler
from .model import Config
from .running import Role, RunningConfig
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


@attrs.define
class _Wiring:
    """What the API shares with the other tasks: made before the API starts,
    which on a standby is long before the others do."""

    config: Config
    health: DatabaseHealth
    figures: metrics.Metrics
    running: RunningConfig
    role: Role
    to_reloader: trio.MemorySendChannel[Reload]
    reload_inbox: trio.MemoryReceiveChannel[Reload]
    to_scheduler: trio.MemorySendChannel[ToScheduler]
    scheduler_inbox: trio.MemoryReceiveChannel[ToScheduler]
    to_database: trio.MemorySendChannel[ToDatabase]
    database_inbox: trio.MemoryReceiveChannel[ToDatabase]
    to_api: trio.MemorySendChannel[EventsCommitted]
    committed: trio.MemoryReceiveChannel[EventsCommitted]

    @classmethod
    def make(cls, config: Config, role: Role) -> _Wiring:
        to_reloader, reload_inbox = trio.open_memory_channel[Reload](RELOADS)
        to_scheduler, scheduler_inbox = trio.open_memory_channel[ToScheduler](math.inf)
        to_database, database_inbox = trio.open_memory_channel[ToDatabase](QUEUE)
        # one slot: while a commit's events wait, a newer commit's are
        # dropped; the hub then reads the log up to the newest event
        to_api, committed = trio.open_memory_channel[EventsCommitted](1)
        return cls(
            config, DatabaseHealth(describe_url(config.daemon.database)), metrics.Metrics(),
            # the configuration as the daemon runs it now: the reload task
            # replaces it, the API, cron and expiry read it (docs/architecture.md)
            RunningConfig(config), role,
            to_reloader, reload_inbox, to_scheduler, scheduler_inbox, to_database, database_inbox, to_api, committed,
        )

    async def api(self, listeners: api_task.Listeners, task_status: trio.TaskStatus[int]) -> None:
        await api_task.run(
            self.config, self.to_scheduler.clone(), self.to_database.clone(),
            committed=self.committed, health=self.health, listeners=listeners, running=self.running,
            reloads=self.to_reloader.clone(), role=self.role, task_status=task_status,
        )


async def serve(
    config: Config,
    *,
    standby: bool | None = None,
    reloads: trio.MemoryReceiveChannel[Reload] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until cancelled. ``task_status.started`` gets the API's
    port once every task runs and the API listens (a standby's: once its
    API serves reads, while it waits). ``reloads``: Reloads from outside
    the API (SIGHUP), for the reload task.

    ``standby`` (default: ``[daemon] standby``): when another daemon holds
    the database's lease, serve reads and wait to take it over
    (docs/operations.md, "Running a standby") instead of raising LeaseHeld.
    Raises LeaseLost when another daemon takes the lease over from this
    one: by then this one has stopped starting and killing jobs and
    committing anything (``muppet/db/lease.py``)."""
    strict = os.environ.get(STRICT_STATES) == "1"
    standby = config.daemon.standby if standby is None else standby
    # the API's address first: one in use stops the daemon before it
    # touches the database
    listeners = await api_task.listen(config.api)
    lease = Lease(config.daemon.database, api_task.address(config.api, listeners))
    # every database session of this daemon carries its tag, so that a
    # standby that takes its expired lease over can end them all
    tagged = CONNECTION_TAG.set(lease.tag)
    try:
        await database_task.check_directories(config)
        waiting = False
        try:
            await database_task.take_lease(lease)
        except LeaseHeld as held:
            if not standby:
                raise
            waiting = True
            lease.standing = Standing(held.holder, ())
        wiring = _Wiring.make(config, Role(not waiting, standing=lambda: lease.standing))
        # the daemon's metrics, found by every task started below (muppet/metrics.py)
        metrics.CURRENT.set(wiring.figures)
        async with trio.open_nursery() as nursery:
            api_port: int | None = None
            if waiting:
                api_port = await nursery.start(wiring.api, listeners)
                log.info("standby: API listening on %s://%s:%s, serving reads; waiting for the lease on %s",
                         config.api.scheme, config.api.host, api_port, lease.database)
                task_status.started(api_port)
                task_status = trio.TASK_STATUS_IGNORED
                await _wait_for_lease(lease)
            began = time.monotonic()
            async with database_task.opened(config, lease) as (store, snapshot):
                fence = Fence(lease.lease_time)
                fence.renewed(began)
                await _serve(config, store, snapshot, listeners, strict, task_status, reloads,
                             wiring=wiring, lease=lease, fence=fence, api_port=api_port)
    finally:
        with trio.CancelScope(shield=True):
            CONNECTION_TAG.reset(tagged)
            await trio.to_thread.run_sync(lease.release)
            for listener in listeners:
                await listener.aclose()


def _took_over(lease: Lease) -> str:
    """A standby's takeover in words, for its ``takeover`` incident
    (docs/alerts.md, "Kinds")."""
    active = lease.standing.active
    return (f"the standby on {socket.gethostname()} took over the lease on {lease.database}"
            + (f" from {active.describe()}" if active is not None else ""))


async def _wait_for_lease(lease: Lease) -> None:
    """A standby's wait: look at the lease every ``STANDBY_POLL`` seconds
    until its lock is this daemon's (``Lease.try_takeover``: free, or its
    holder's sessions ended once it expired)."""
    said: Holder | bool | None = False
    trouble: str | None = None
    while True:
        try:
            if await trio.to_thread.run_sync(lease.try_takeover):
                active = lease.standing.active
                log.warning("standby: took the lease on %s%s: taking over", lease.database,
                            f" from {active.describe()}" if active is not None else "")
                return
        except (DatabaseUnavailable, OSError, sqlite3.Error, psycopg.Error) as exc:
            if trouble is None:
                log.warning("standby: cannot look at the lease on %s: %s; trying again", lease.database, exc)
            trouble = str(exc)
        else:
            if trouble is not None:
                log.info("standby: the lease on %s can be read again", lease.database)
                trouble = None
            active = lease.standing.active
            if active != said:
                who = active.describe() if active is not None else "no daemon (it has not said who yet)"
                log.info("standby: the lease on %s is held by %s", lease.database, who)
                said = active
        await trio.sleep(STANDBY_POLL)


async def _serve(
    config: Config,
    store: Store,
    snapshot: Snapshot,
    listeners: api_task.Listeners,
    strict: bool,
    task_status: trio.TaskStatus[int],
    reloads: trio.MemoryReceiveChannel[Reload] | None = None,
    *,
    wiring: _Wiring,
    lease: Lease,
    fence: Fence,
    api_port: int | None = None,
) -> None:
    """The tasks and their channels, over an open database whose lease this
    daemon holds, and the API's listening sockets (``api_port``: the API
    runs already, a standby's)."""
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
    health, running = wiring.health, wiring.running
    to_scheduler, to_database, to_reloader = wiring.to_scheduler, wiring.to_database, wiring.to_reloader
    to_executor, executor_inbox = trio.open_memory_channel[ToExecutor](QUEUE)
    persisted: trio.MemorySendChannel[Persisted] = to_scheduler.clone()
    async with trio.open_nursery() as nursery:
        # the lease first: renewed from now on, and its loss ends the daemon
        # (muppet/db/lease.py)
        nursery.start_soon(lease_keep, lease, fence)
        if api_port is None:
            # the API first, so that clients are answered from the start
            # (requests wait in the channels until the other tasks run)
            port = await nursery.start(wiring.api, listeners)
        else:
            port = api_port
        nursery.start_soon(partial(
            database_task.run, store, wiring.database_inbox, persisted, committed=wiring.to_api, health=health,
            lease=lease.mark,
        ))
        nursery.start_soon(partial(
            executor_task.run, executor_inbox, to_scheduler.clone(),
            executors=config.executors,
            state_dir=config.daemon.state_dir,
            output_dir=config.daemon.output_dir,
            fence=fence.wait_valid,
        ))
        nursery.start_soon(partial(
            scheduler_task.run, core, wiring.scheduler_inbox, to_database.clone(), to_executor,
            loaded=(snapshot.runs, snapshot.jobs), ended=snapshot.ended, controls=snapshot.controls,
            update_requests=snapshot.update_requests,
        ))
        nursery.start_soon(partial(
            cron.run, config.pipelines, to_scheduler.clone(), last_fired=snapshot.last_cron, running=running,
        ))
        nursery.start_soon(partial(expiry.run, config.index, to_database.clone(), running=running))
        # what is kept of the past, pruned in small chunks through the
        # database task like every write (muppet/history.py)
        nursery.start_soon(partial(history.run, to_database.clone(), running=running, health=health))
        nursery.start_soon(reloader.run, wiring.reload_inbox, to_scheduler.clone(), running)
        # incidents to stakeholders by mail and webhook, beside the scheduler:
        # a dead mail server slows nothing else (docs/alerts.md)
        nursery.start_soon(partial(
            alerts_task.run, config.daemon.database, to_database.clone(), current=lambda: running.config,
            health=health, took_over="" if api_port is None else _took_over(lease),
        ))
        if reloads is not None:
            nursery.start_soon(_forward, reloads, to_reloader.clone())
        if web_listener is not None:
            # last: it takes the tasks running now as those that must keep running
            nursery.start_soon(partial(
                web_task.run, config, web_listener, health=health, metrics=wiring.figures,
                scheduler=to_scheduler.clone(), api_port=port,
                running_tasks=lambda: frozenset(task.name for task in nursery.child_tasks),
            ))
        # writes and commands go to the scheduler and the database task from now on
        wiring.role.activate()
        log.info("API listening on %s://%s:%s", config.api.scheme, config.api.host, port)
        task_status.started(port)


async def _forward(receive: trio.MemoryReceiveChannel[Reload], send: trio.MemorySendChannel[Reload]) -> None:
    """Reloads from outside (SIGHUP) into the reload task's inbox."""
    async for message in receive:
        await send.send(message)


#: Reloads that may wait for the reload task (one runs at a time)
RELOADS = 16


def freeze_what_started() -> None:
    """Collect the garbage there is, then move every object the daemon holds
    now (its modules, its configuration, the unfinished work it loaded, its
    tasks) into the garbage collector's permanent generation (``gc.freeze``),
    so that each full pass of the cyclic collector looks only at what was
    made since. A full pass holds the Trio thread; at 50,000 active jobs
    this shortens the longest (docs/performance.md, "Runs of 1,000-50,000
    jobs", has the figures). A frozen object that is dropped later is still
    freed by reference counting; only garbage in a cycle of frozen objects
    would stay, and a configuration, dropped at a reload, holds none."""
    gc.collect()
    gc.freeze()


async def _serve_and_freeze(
    config: Config, *, reloads: trio.MemoryReceiveChannel[Reload], standby: bool | None
) -> None:
    """``serve``, with ``freeze_what_started`` once it has started (a
    standby: once its API listens, before it has loaded any work)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, config, reloads=reloads, standby=standby))
        freeze_what_started()


async def serve_until_signal(config: Config, *, standby: bool | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly: local jobs go on
    running and are re-attached at the next start. SIGHUP reloads the
    configuration (docs/operations.md, "Reload"). ``standby``: as ``serve``'s.
    Once it has started, what it holds is frozen (``freeze_what_started``)."""
    send, receive = trio.open_memory_channel[Reload](RELOADS)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            # started in a task of its own, so that a signal is heard while it starts
            nursery.start_soon(partial(_serve_and_freeze, config, reloads=receive, standby=standby))
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
