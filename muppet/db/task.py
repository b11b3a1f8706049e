"""The database task: the only writer, committing the daemon's changes in batches.

A durable commit costs about one fsync (SQLite WAL with synchronous=FULL,
PostgreSQL with synchronous_commit=on: roughly 400-1,000 per second on the
developers' machines, see the shared NOTES "Databases: batch the commits").
Committing whatever has piled up while the previous commit ran makes hundreds
of changes cost one fsync, and so the load decides the batch size: one change
when idle, thousands under a burst.
"""

from __future__ import annotations

import functools
import logging
import uuid

import trio

from ..messages import Change, Persist, Persisted
from .store import DatabaseUnavailable, Store

log = logging.getLogger("muppet.db")


async def run(
    store: Store,
    receive: trio.MemoryReceiveChannel[Persist],
    send: trio.MemorySendChannel[Persisted],
    *,
    retry_initial: float = 0.1,
    retry_max: float = 5.0,
    committed: trio.MemorySendChannel[int] | None = None,
) -> None:
    """Persist what arrives on ``receive``; report each commit on ``send``.

    Receives: ``Persist``. It waits for one, then takes every Persist already
    waiting on the channel without waiting again, and writes all of their
    changes in ONE transaction (one ``trio.to_thread.run_sync`` call to
    ``store.write``).

    Sends: ONE ``Persisted`` per batch (not one per Persist): the committed
    changes of all the batch's Persists in the order they arrived, and the
    NewRuns refused as duplicates in ``rejected``. On ``committed``, if
    given, the newest event number after the commit, without waiting: it is a
    hint for the API's event hub, which reads everything new when it wakes, so
    a hint dropped while an earlier one still waits loses nothing.

    Failures: a commit that fails for a transient reason (database locked,
    PostgreSQL down or restarting, connection lost) was rolled back; it is
    logged on the "muppet.db" logger with the attempt number and tried again
    after ``retry_initial`` seconds, doubling up to ``retry_max``, reconnecting
    when the connection broke, until it succeeds. Nothing is dropped, and
    nothing is written twice: the batch is one transaction, and it carries a
    token that lets the store recognise a retry of a commit that succeeded
    although its acknowledgement was lost. Any other error (a broken constraint
    is a bug, not weather) propagates and takes the daemon down rather than
    loop for ever; nothing of the failed batch was written.

    Ends when ``receive`` is closed and drained, closing ``send``; it does not
    close the store (whoever opened it does).

    Cancellation: a write running in the worker thread is not abandoned; the
    task waits for it to finish (commit or roll back), then exits. A batch that
    committed just then is not reported; the daemon's next start reads it back
    from the database. A cancelled backoff sleep ends the task at once.
    """
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
            changes = [change for persist in batch for change in persist.changes]
            persisted = await _commit(store, changes, retry_initial, retry_max)
            if committed is not None:
                try:
                    committed.send_nowait(persisted.last_event_id)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await send.send(persisted)


async def _commit(
    store: Store, changes: list[Change], retry_initial: float, retry_max: float
) -> Persisted:
    token = uuid.uuid4().hex
    write = functools.partial(store.write, changes, token=token)
    delay = retry_initial
    attempt = 1
    while True:
        try:
            # abandon_on_cancel=False (the default): cancellation waits for the
            # thread, so a commit is never left running behind our back
            persisted = await trio.to_thread.run_sync(write)
        except DatabaseUnavailable as exc:
            log.warning(
                "commit of %d changes failed (attempt %d), retrying in %.2f s: %s",
                len(changes), attempt, delay, exc,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, retry_max)
            attempt += 1
            continue
        if attempt > 1:
            log.info("commit of %d changes succeeded at attempt %d", len(changes), attempt)
        return persisted
