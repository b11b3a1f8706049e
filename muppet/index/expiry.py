"""The expiry task: data instances past their ``expires`` are marked deleted.

Productstatus kept operational data about three days; each data instance
carries its own expiry (given at registration, or the product's
``lifetime_hours`` after it). Every ``[index] expiry_interval`` seconds this
task asks the database task to commit ``DeleteFiles(expired_at=now,
limit=CHUNK)`` until a chunk is not full: each chunk is one transaction that
marks at most ``CHUNK`` expired instances deleted, the soonest expired
first, and appends an event for each. A backlog (a day of a busy index, or
an index whose daemon was stopped: 361,000 due at once in bench/index.py's
index) so never holds the one writer for long, and between two chunks the
task waits as long as the last one took, so that the scheduler's commits
get the writer at least half the time. A daemon that dies between two
chunks leaves the rest to the next pass, of this daemon or the next: every
chunk is whole or not there.

With ``[index] delete_expired_files`` it then removes the files of those on
a ``file://`` backend, after each chunk, in a worker thread: the index says
deleted before the file goes, so no consumer is ever pointed at a missing
file; a crash in between leaves a file the index no longer lists, which is
harmless.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

import trio

from ..messages import DeleteFiles, IndexWrite, IndexWritten
from ..model import IndexConfig
from ..running import RunningConfig

log = logging.getLogger("muppet.index")

#: expired instances per transaction: each is an UPDATE and an event of
#: the whole file, so a chunk costs the writer far more per row than
#: pruning's; on a machine at load 20, chunks of 2,000 held it 355 ms at
#: the median, of 500 130 ms (bench/prune.py, docs/performance.md)
CHUNK = 500


async def run(
    config: IndexConfig,
    database: trio.MemorySendChannel[IndexWrite],
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    running: RunningConfig | None = None,
) -> None:
    """Receives nothing; sends ``IndexWrite(DeleteFiles(expired_at=now))`` to
    the database task every ``config.expiry_interval`` seconds and waits for
    its outcome. Cancellation while waiting leaves the write to complete or
    not; the next pass (or the next daemon) finds what is still expired.

    With ``running``, its ``[index]`` settings are the ones the daemon runs
    now: a reload's new interval counts from the last pass
    (docs/operations.md, "Reload")."""
    while True:
        began = trio.current_time()
        while running is not None and trio.current_time() < began + running.config.index.expiry_interval:
            version = running.version
            with trio.move_on_at(began + running.config.index.expiry_interval):
                await running.changed(version)
        if running is None:
            await trio.sleep(config.expiry_interval)
        else:
            config = running.config.index
        await expire_once(config, database, clock())


async def expire_once(
    config: IndexConfig, database: trio.MemorySendChannel[IndexWrite], now: datetime, *, chunk: int | None = None,
) -> list[int]:
    """One pass, a chunk of at most ``chunk`` (default ``CHUNK``) instances
    per transaction until none is left; returns the ids marked deleted."""
    limit = CHUNK if chunk is None else chunk
    deleted: list[int] = []
    while True:
        send, receive = trio.open_memory_channel[IndexWritten](1)
        began = trio.current_time()
        await database.send(IndexWrite(DeleteFiles(expired_at=now, reason="expired", limit=limit), reply=send))
        written = await receive.receive()
        took = trio.current_time() - began
        if written.error is not None:
            log.warning("expiry: %s", written.error)
            break
        done: list[int] = written.result["deleted"]
        deleted += done
        if config.delete_expired_files and written.deleted_paths:
            await trio.to_thread.run_sync(_remove, written.deleted_paths)
        if len(done) < limit:
            break
        # as long again: the writer is free for others at least half the time
        await trio.sleep(took)
    if deleted:
        log.info("expiry: %d data instances expired", len(deleted))
    return deleted


def _remove(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            os.remove(path)
            log.info("expiry: removed %s", path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("expiry: cannot remove %s: %s", path, exc)
