"""`muppet daemon`: one nursery, five tasks, and the channels between them.

This is the whole flow-based network, drawn once::

    cron ──Trigger──────────────┐
    api ───Trigger, Command,────┤
           IndexWrite           │
    expiry ─IndexWrite──────────┤
    executor ─JobStarted/Finished┤──> inbox ──> scheduler ──Persist──> database
    database ─Persisted─────────┘                   └──StartJob, KillJob──> executor
    database ─newest event number──> api (its event hub reads the new events)
    api ──reads──> its own read connections to the database

No task imports another; each gets only the channel ends it uses. The
expiry task is a small sixth one: a timer that asks for an index write.

The scheduler's inbox is unbounded on purpose: scheduler -> database ->
scheduler and scheduler -> executor -> scheduler are cycles, and two bounded
channels in a cycle can deadlock (each side blocked sending to the other).
What fills the inbox is bounded anyway: the database only answers what the
scheduler asked, the executor only reports jobs the scheduler started. The
channels out of the scheduler are bounded, so a slow database slows the
scheduler down instead of piling up memory.
"""

from __future__ import annotations

import logging
import math
import signal
import sys

import trio

from . import cron
from .api import server as api_task
from .db import task as database_task
from .db.store import open_store
from .executor import task as executor_task
from .executor.jobdir import highest_job_id
from .index import expiry
from .messages import DefineIndex
from .model import Config
from .scheduler import task as scheduler_task
from .scheduler.core import Scheduler

log = logging.getLogger("muppet.daemon")

class StateMismatch(Exception):
    """The state directory and the database do not belong together."""


#: Persist and StartJob messages queued towards the database and the executor
#: before the scheduler waits (back-pressure)
QUEUE = 1000


async def serve(config: Config, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until cancelled. ``task_status.started`` gets the API's
    port once every task runs and the API listens."""
    store = await trio.to_thread.run_sync(open_store, config.daemon.database)
    snapshot = await trio.to_thread.run_sync(store.load_snapshot)
    highest = await trio.to_thread.run_sync(highest_job_id, config.daemon.state_dir)
    if highest >= snapshot.next_job_id:
        await trio.to_thread.run_sync(store.close)
        raise StateMismatch(
            f"{config.daemon.state_dir} holds job directories up to job {highest}, but the "
            f"database {_safe_url(config.daemon.database)} has only reached job "
            f"{snapshot.next_job_id - 1}: a new database with an old state_dir? Move "
            f"{config.daemon.state_dir}/jobs away or set another state_dir"
        )
    # the products, formats and backends of the configuration go into the
    # index before anything may register files of them
    await trio.to_thread.run_sync(store.write, [DefineIndex(
        products=tuple(config.products.values()),
        formats=tuple(config.formats.values()),
        backends=tuple(config.backends.values()),
    )])
    log.info(
        "database %s: %d unfinished runs, %d of their jobs",
        _safe_url(config.daemon.database),
        len(snapshot.runs),
        len(snapshot.jobs),
    )
    core = Scheduler(
        config.pipelines,
        config.executors,
        next_run_id=snapshot.next_run_id,
        next_job_id=snapshot.next_job_id,
        outputs_backend=config.backends.get(config.index.outputs_backend),
    )
    to_inbox, inbox = trio.open_memory_channel(math.inf)
    to_database, database_inbox = trio.open_memory_channel(QUEUE)
    to_executor, executor_inbox = trio.open_memory_channel(QUEUE)
    # one slot: a newer number supersedes a waiting one (see db/task.py)
    to_api, committed = trio.open_memory_channel(1)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_database, store, database_inbox, to_inbox.clone(), to_api)
            nursery.start_soon(
                _executor,
                executor_inbox,
                to_inbox.clone(),
                config,
            )
            nursery.start_soon(
                _scheduler, core, inbox, to_database, to_executor, (snapshot.runs, snapshot.jobs)
            )
            nursery.start_soon(_cron, config, to_inbox.clone(), snapshot.last_cron)
            nursery.start_soon(expiry.run, config.index, to_inbox.clone())
            port = await nursery.start(_api, config, to_inbox.clone(), committed)
            log.info("API listening on %s://%s:%s", config.api.scheme, config.api.host, port)
            task_status.started(port)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)


# Keyword arguments do not pass through nursery.start_soon; these say which
# channel end goes where.
async def _database(store, receive, send, committed) -> None:
    await database_task.run(store, receive, send, committed=committed)


async def _api(config: Config, send, committed, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    await api_task.run(config, send, config.daemon.database, committed=committed, task_status=task_status)


async def _executor(receive, send, config: Config) -> None:
    await executor_task.run(
        receive,
        send,
        executors=config.executors,
        state_dir=config.daemon.state_dir,
        output_dir=config.daemon.output_dir,
    )


async def _scheduler(core, inbox, to_database, to_executor, loaded) -> None:
    await scheduler_task.run(core, inbox, to_database, to_executor, loaded=loaded)


async def _cron(config: Config, send, last_fired) -> None:
    await cron.run(config.pipelines, send, last_fired=last_fired)


async def _until_signal(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly: local jobs go on
    running and are re-attached at the next start."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, config)
            async for signum in signals:
                log.info("%s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def run_daemon(config_path: str | None) -> None:
    """The body of `muppet daemon`: load and check the configuration, then
    serve until a signal. Raises config.ConfigError on a bad configuration."""
    from .config import default_config, load_config

    config = load_config(config_path) if config_path else default_config()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.info(
        "starting: %d pipelines, state in %s",
        len(config.pipelines),
        config.daemon.state_dir,
    )
    trio.run(_until_signal, config)
    log.info("stopped")


def _safe_url(url: str) -> str:
    """A database URL without its password, for the log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return url
