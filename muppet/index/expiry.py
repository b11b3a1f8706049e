"""The expiry task: data instances past their ``expires`` are marked deleted.

Productstatus kept operational data about three days; each data instance
carries its own expiry (given at registration, or the product's
``lifetime_hours`` after it). Every ``[index] expiry_interval`` seconds this
task asks the database task to commit ``DeleteFiles(expired_at=now)``: one
transaction that marks every expired instance deleted and appends an event
for each. With ``[index] delete_expired_files`` it then removes the files of
those on a ``file://`` backend, in a worker thread: the index says deleted
before the file goes, so no consumer is ever pointed at a missing file; a
crash in between leaves a file the index no longer lists, which is harmless.
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


async def expire_once(config: IndexConfig, database: trio.MemorySendChannel[IndexWrite], now: datetime) -> list[int]:
    """One pass; returns the ids marked deleted."""
    send, receive = trio.open_memory_channel[IndexWritten](1)
    await database.send(IndexWrite(DeleteFiles(expired_at=now, reason="expired"), reply=send))
    written = await receive.receive()
    if written.error is not None:
        log.warning("expiry: %s", written.error)
        return []
    deleted: list[int] = written.result["deleted"]
    if deleted:
        log.info("expiry: %d data instances expired", len(deleted))
    if config.delete_expired_files and written.deleted_paths:
        await trio.to_thread.run_sync(_remove, written.deleted_paths)
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
