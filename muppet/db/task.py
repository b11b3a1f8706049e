"""The database task: the only writer, committing the daemon's changes in batches.

A durable commit costs about one fsync (SQLite WAL with synchronous=FULL,
PostgreSQL with synchronous_commit=on: roughly 400-1,000 per second on the
developers' machines, see docs/database.md). Committing whatever has piled up
while the previous commit ran makes hundreds of changes cost one fsync, and so
the load decides the batch size: one change when idle, thousands under a burst.

The task owns the index writes too (MUPPET design, "the daemon"): an
``IndexWrite`` from the API or the expiry task is answered from here, and the
scheduler hears only the committed facts it acts on, in ``Persisted``.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import psycopg
import trio

from .. import metrics
from ..alerts.changes import AlertWrite
from ..executor.jobdir import highest_job_id
from ..fileio import usable_directory
from ..messages import (
    Change,
    DefineIndex,
    EventsCommitted,
    IndexWritten,
    Persist,
    Persisted,
    Pruned,
    PruneWrite,
    ToDatabase,
)
from ..model import Config
from ..scheduler import cycling
from . import reads, writes
from .dialect import describe_url
from .health import DatabaseHealth
from .lease import Lease, Mark
from .reads import Snapshot
from .store import DatabaseUnavailable, Store, open_store
from .writes import Committed

log = logging.getLogger("muppet.db")


class StateMismatch(Exception):
    """The state directory and the database do not belong together."""


async def check_directories(config: Config) -> None:
    """The directories the executor needs, before anything is touched: an
    unusable one stops the daemon here, naming its path."""
    for directory in (config.daemon.state_dir, config.daemon.output_dir):
        await trio.to_thread.run_sync(usable_directory, directory)


async def take_lease(lease: Lease) -> None:
    """Take ``lease``'s lock now (LeaseHeld, naming the holder, when
    another daemon has it; nothing is touched then)."""
    try:
        await trio.to_thread.run_sync(lease.take)
    except (OSError, psycopg.OperationalError) as exc:
        raise DatabaseUnavailable(f"{describe_url(lease.url)}: {exc}") from exc


@asynccontextmanager
async def opened(config: Config, lease: Lease) -> AsyncIterator[tuple[Store, Snapshot]]:
    """The daemon's writing Store and what the previous daemon left in it.

    ``lease``'s lock is taken (``take_lease``, or a standby's
    ``Lease.try_takeover``). Opens (and migrates) ``[daemon] database``,
    makes this daemon the lease's holder (``Lease.claim``: a new epoch, which
    fences the writes of any earlier holder, and its row in ``daemons``),
    loads the snapshot of unfinished runs, refuses a ``state_dir`` that holds
    job directories the database has not reached (StateMismatch: new jobs
    would reuse their ids), and declares the configured products, formats and
    backends in the index before anything may register files of them. The
    Store is closed on exit; the lease is the caller's to release.
    """
    store = await trio.to_thread.run_sync(open_store, config.daemon.database)
    try:
        epoch = await trio.to_thread.run_sync(lease.claim, store)
        snapshot = await trio.to_thread.run_sync(reads.load_snapshot, store)
        needed = cycling.needed_runs(config.pipelines, snapshot.runs, snapshot.definitions)
        if needed:
            ended = await trio.to_thread.run_sync(reads.load_ended_runs, store, needed)
            snapshot = attrs.evolve(snapshot, ended=ended)
        highest = await trio.to_thread.run_sync(highest_job_id, config.daemon.state_dir)
        if highest >= snapshot.next_job_id:
            raise StateMismatch(
                f"{config.daemon.state_dir} holds job directories up to job {highest}, but the "
                f"database {store.describe()} has only reached job "
                f"{snapshot.next_job_id - 1}: a new database with an old state_dir? Move "
                f"{config.daemon.state_dir}/jobs away or set another state_dir"
            )
        await trio.to_thread.run_sync(functools.partial(writes.write, store, [DefineIndex(
            products=tuple(config.products.values()),
            formats=tuple(config.formats.values()),
            backends=tuple(config.backends.values()),
        )], lease=lease.mark))
        log.info(
            "database %s: %d unfinished runs, %d of their jobs (lease epoch %d)",
            store.describe(), len(snapshot.runs), len(snapshot.jobs), epoch,
        )
        yield store, snapshot
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)


async def run(
    store: Store,
    receive: trio.MemoryReceiveChannel[ToDatabase],
    send: trio.MemorySendChannel[Persisted],
    *,
    retry_initial: float = 0.1,
    retry_max: float = 5.0,
    committed: trio.MemorySendChannel[EventsCommitted] | None = None,
    health: DatabaseHealth | None = None,
    lease: Mark | None = None,
) -> None:
    """Persist what arrives on ``receive``; report each commit.

    Receives: ``Persist`` (the scheduler's changes), ``IndexWrite`` (an
    index change from the API or the expiry task, with its reply channel),
    ``AlertWrite`` (the alerts task's and the API's incident changes, answered
    ``True`` once committed: docs/alerts.md) and ``PruneWrite`` (a chunk of
    the history task's pruning, answered with its ``Pruned``). It
    waits for one, then takes every message already waiting on the channel
    without waiting again, and writes all of their changes in ONE transaction
    (one ``trio.to_thread.run_sync`` call to ``writes.write``).

    Sends: on each IndexWrite's ``reply``, its ``IndexWritten`` (without
    waiting: the requester waits on a one-slot channel, and one that went away
    loses nothing, the write is committed all the same). On ``send``, ONE
    ``Persisted`` per batch that holds something for the scheduler: the
    committed copies of its changes in the order they arrived, the NewRuns
    refused as duplicates, and the instances any write completed; a batch of
    index writes that completed nothing is not the scheduler's business. On
    ``committed``, if given, ``EventsCommitted``: the newest event number
    after the commit and the events it appended, without waiting. The API's
    event hub delivers those when they follow the last event it delivered,
    and reads the log otherwise; while an earlier message still waits in the
    one-slot channel the newer one is dropped, which loses nothing, because
    the hub then reads up to the newest event.

    Failures: a commit that fails for a transient reason (database locked,
    full, PostgreSQL down or restarting, connection lost) was rolled back; it
    is tried again after ``retry_initial`` seconds, doubling up to
    ``retry_max``, reconnecting when the connection broke, until it succeeds.
    The outage is reported to ``health``, which logs its start and its end
    once (each attempt is logged at debug level on "muppet.db"). Nothing is dropped, and
    nothing is written twice: the batch is one transaction, and it carries a
    token that lets the store recognise a retry of a commit that succeeded
    although its acknowledgement was lost. Any other error (a broken constraint
    is a bug, not weather) propagates and takes the daemon down rather than
    loop for ever; nothing of the failed batch was written.

    Fencing: with ``lease`` (the lease's epoch and this daemon's tag,
    ``lease.py``), each transaction first checks that no other daemon has
    taken the lease since; when one has, nothing of the batch is written and
    LeaseLost takes the daemon down.

    Ends when ``receive`` is closed and drained, closing ``send``; it does not
    close the store (whoever opened it does).

    Cancellation: a write running in the worker thread is not abandoned; the
    task waits for it to finish (commit or roll back), then exits. A batch that
    committed just then is not reported; the daemon's next start reads it back
    from the database. A cancelled backoff sleep ends the task at once.
    """
    if health is None:
        health = DatabaseHealth(store.describe())
    async with send:
        while True:
            try:
                first = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            batch = [first]
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            changes: list[Change] = []
            # one per index change of the batch, in order: who waits for it
            replies: list[trio.MemorySendChannel[IndexWritten] | None] = []
            alert_replies: list[trio.MemorySendChannel[bool]] = []
            # one per Prune of the batch, in order
            prune_replies: list[trio.MemorySendChannel[Pruned] | None] = []
            for message in batch:
                if isinstance(message, AlertWrite):
                    changes.extend(message.changes)
                    if message.reply is not None:
                        alert_replies.append(message.reply)
                elif isinstance(message, PruneWrite):
                    changes.append(message.change)
                    prune_replies.append(message.reply)
                elif isinstance(message, Persist):
                    changes.extend(message.changes)
                    replies.extend(None for c in message.changes if isinstance(c, writes.INDEX_CHANGES))
                else:
                    changes.append(message.change)
                    replies.append(message.reply)
            done = await _commit(store, changes, health, retry_initial, retry_max, lease)
            if committed is not None:
                try:
                    committed.send_nowait(EventsCommitted(done.last_event_id, done.events))
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            _answer(replies, done)
            for alert_reply in alert_replies:
                try:
                    alert_reply.send_nowait(True)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the requester went away; the write is committed all the same
            for prune_reply, pruned in zip(prune_replies, done.pruned, strict=True):
                if prune_reply is None:
                    continue
                try:
                    prune_reply.send_nowait(pruned)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the history task went away; the chunk is committed all the same
            if done.changes or done.rejected or done.completed or done.acks or done.requests:
                await send.send(Persisted(
                    done.changes, done.rejected, done.completed, done.ended, done.acks,
                    last_event_id=done.last_event_id, requests=done.requests,
                ))


def _answer(replies: list[trio.MemorySendChannel[IndexWritten] | None], done: Committed) -> None:
    """Send each requester the outcome of its index change (``done.index``
    holds them in the order of ``replies``)."""
    for reply, outcome in zip(replies, done.index, strict=True):
        if reply is not None:
            _reply(reply, outcome)
        elif outcome.error is not None:
            # nobody waits (a job's outputs): the refusal is only news
            log.warning("index write refused: %s", outcome.error)


def _reply(channel: trio.MemorySendChannel[IndexWritten], outcome: IndexWritten) -> None:
    try:
        channel.send_nowait(outcome)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        # the requester went away (its connection closed); the change itself
        # is committed all the same
        log.debug("index write reply dropped: %r", outcome)


async def _commit(
    store: Store, changes: list[Change], health: DatabaseHealth, retry_initial: float, retry_max: float,
    lease: Mark | None = None,
) -> Committed:
    token = uuid.uuid4().hex
    write = functools.partial(writes.write, store, changes, token=token, lease=lease)
    delay = retry_initial
    attempt = 1
    while True:
        try:
            began = time.perf_counter()
            # abandon_on_cancel=False (the default): cancellation waits for the
            # thread, so a commit is never left running behind our back
            done = await trio.to_thread.run_sync(write)
        except DatabaseUnavailable as exc:
            health.failed(exc)
            log.debug(
                "commit of %d changes failed (attempt %d), retrying in %.2f s: %s",
                len(changes), attempt, delay, exc,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, retry_max)
            attempt += 1
            continue
        health.answered()
        # the latency of the attempt that committed, and the batch size
        # (docs/operations.md, "Metrics")
        metrics.current().committed(time.perf_counter() - began, len(changes))
        if attempt > 1:
            log.debug("commit of %d changes succeeded at attempt %d", len(changes), attempt)
        return done
