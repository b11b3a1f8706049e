"""The history task: what the daemon keeps of the past, and for how long
(docs/operations.md, "What is kept"; ``[daemon] keep_history`` and
``keep_job_dirs``).

Each pass (the first ``FIRST`` seconds after the start, then every ``PASS``
seconds):

1. The database: finished runs that ended more than ``keep_history`` ago,
   with their jobs and log tails, the events older than that and the
   definitions no run uses any more are pruned ``CHUNK`` rows at a time, each
   chunk one ``PruneWrite`` to the database task and so one transaction of
   the daemon's only writer (``muppet/db/prune.py`` says what is kept
   whatever its age). After each chunk the task waits as long as the chunk
   took, from its sending to its answer: pruning takes at most about half of
   the writer's time, and a commit of the scheduler's waits behind one chunk
   at most (docs/architecture.md, "The rules they keep").
2. The files: the job directories and scratch directories
   (``muppet/executor/jobdir.py``) of the jobs that ended more than
   ``keep_job_dirs`` ago, or were pruned from the database, are removed in a
   worker thread. The database decides, read on the task's own connection: a
   job that is not finished there keeps its directory, and so does one it
   does not know and has not pruned.

A pass cut short by the daemon's death loses nothing: each chunk commits
alone, a directory goes only after its job is known to be old, and the next
pass (of this daemon or the next) finds what is left. The settings are read
from the running configuration at each pass: a reload applies at the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import attrs
import trio

from . import durations
from .db import reads
from .db.health import DatabaseHealth, until_available
from .db.store import Store, open_store
from .executor.jobdir import job_ids_with_files, remove_job_files
from .messages import Prune, Pruned, PruneWrite
from .running import RunningConfig

log = logging.getLogger("muppet.history")

#: seconds between two passes: keep_history and keep_job_dirs count in days,
#: and a pass over a quiet database costs a few small reads
PASS = 600.0
#: seconds from the start to the first pass, so that a restart's own work
#: (re-attaching jobs, catching up cron) goes first
FIRST = 60.0
#: rows per chunk, each its own transaction: at the median 18-43 ms on
#: SQLite and 62 ms on PostgreSQL on a machine at load 15-24 (bench/prune.py,
#: docs/performance.md)
CHUNK = 2000
#: job ids whose files are looked up in the database at once
LOOKUP = 500


def cutoff(now: float, keep: str) -> float:
    """The moment (seconds since the epoch) before which history is old,
    for the ISO 8601 duration ``keep`` counted back from ``now``."""
    return durations.before(datetime.fromtimestamp(now, UTC), keep).timestamp()


async def run(
    database: trio.MemorySendChannel[PruneWrite],
    *,
    running: RunningConfig,
    health: DatabaseHealth,
    clock: Callable[[], float] = time.time,
    first: float | None = None,
    every: float | None = None,
) -> None:
    """Receives nothing; each pass sends ``PruneWrite`` chunks to the
    database task, then removes old job files, as the module docstring
    says. Runs until cancelled; a cancelled pass leaves what it had not done
    to the next one (a chunk in flight commits or not, whole). Reads the
    database on a connection of its own, opened at the first pass and
    waited for while the database is away (``health`` hears of it).
    ``first`` and ``every``: the seconds before the first pass and between
    two (default ``FIRST`` and ``PASS``)."""
    store: Store | None = None

    async def opened() -> Store:
        return await trio.to_thread.run_sync(open_store, running.config.daemon.database)

    try:
        await trio.sleep(FIRST if first is None else first)
        while True:
            daemon = running.config.daemon
            began = trio.current_time()
            history_edge = cutoff(clock(), daemon.keep_history)
            pruned = await prune(database, history_edge)
            if store is None:
                store = await until_available(health, opened)
            files_edge = cutoff(clock(), daemon.keep_job_dirs)
            removed = await remove_old_job_files(store, daemon.state_dir, files_edge, health)
            # one line per pass, whatever it found (docs/operations.md, "What is kept")
            log.info("history: pruned what ended before %s (keep_history %s): %d runs, %d jobs, %d log tails, "
                     "%d events, %d definitions; removed the job directories of %d jobs ended before %s "
                     "(keep_job_dirs %s); %.1f s",
                     _moment(history_edge), daemon.keep_history, pruned.runs, pruned.jobs, pruned.logs,
                     pruned.events, pruned.definitions, len(removed), _moment(files_edge), daemon.keep_job_dirs,
                     trio.current_time() - began)
            await trio.sleep(PASS if every is None else every)
    finally:
        if store is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(store.close)


async def prune(database: trio.MemorySendChannel[PruneWrite], before: float, *, limit: int = CHUNK) -> Pruned:
    """Prune what is older than ``before``, a chunk of at most about
    ``limit`` rows per transaction, until a chunk finds no more; what was
    removed, in all."""
    total = Pruned()
    after = 0
    while True:
        send, receive = trio.open_memory_channel[Pruned](1)
        began = trio.current_time()
        await database.send(PruneWrite(Prune(before, limit, after), send))
        chunk = await receive.receive()
        took = trio.current_time() - began
        total = attrs.evolve(
            total, runs=total.runs + chunk.runs, jobs=total.jobs + chunk.jobs, logs=total.logs + chunk.logs,
            events=total.events + chunk.events, definitions=total.definitions + chunk.definitions,
        )
        if not chunk.more:
            break
        after = chunk.after_run
        # as long again: the writer is free for others at least half the time
        await trio.sleep(took)
    return total


async def remove_old_job_files(store: Store, state_dir: str, before: float, health: DatabaseHealth) -> list[int]:
    """Remove the job and scratch directories under ``state_dir`` of the
    jobs that ended before ``before`` or were pruned; the ids whose files
    went."""
    ids = await trio.to_thread.run_sync(job_ids_with_files, state_dir)
    removed: list[int] = []
    for start in range(0, len(ids), LOOKUP):
        part = ids[start:start + LOOKUP]
        old = await until_available(health, partial(trio.to_thread.run_sync, reads.ended_jobs, store, part, before))
        if old:
            removed += await trio.to_thread.run_sync(_remove, state_dir, old)
    return removed


def _moment(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _remove(state_dir: str, ids: list[int]) -> list[int]:
    done = []
    for job_id in ids:
        trouble = remove_job_files(state_dir, job_id)
        if trouble is None:
            done.append(job_id)
        else:
            log.warning("history: %s", trouble)
    return done
