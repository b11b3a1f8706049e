"""Pruning a big history, and expiring a big index: how long each chunk
holds the daemon's one writer.

For each database (SQLite, and PostgreSQL with --postgres), HISTORY finished
jobs (runs of 100, as bench/scale.py seeds them, with their events) are
written, then pruned as the daemon's history task prunes them
(``muppet.history.prune``: one ``Prune`` of about --chunk rows per
transaction of a real database task, a pause as long as each chunk between
two). Prints the chunks, the p50, p99 and longest chunk (from its sending to
its answer: the longest a commit of the scheduler's can wait behind one), the
wall time, and what was removed; then that the log keeps its numbering.

Then expiry (``muppet.index.expiry``): bench/index.py's index (--products x
4 instances a day x --days x 60 files; 50 x 30: 361,000 files) all past
their expiry at once, as after a long stop, expired in chunks of
``expiry.CHUNK`` files, one transaction and one event per file each: the same
figures per chunk.

    .venv/bin/python bench/prune.py [--history 100000] [--chunk 2000] [--products 50] [--days 30] [--postgres]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from index import load_index, write_config  # noqa: E402
from pgserver import PostgresServer  # noqa: E402
from scale import seed_history  # noqa: E402

from muppet import history  # noqa: E402
from muppet.config import load_config  # noqa: E402
from muppet.db import open_store, reads  # noqa: E402
from muppet.db import task as db_task  # noqa: E402
from muppet.index import expiry  # noqa: E402
from muppet.messages import Pruned  # noqa: E402

T = TypeVar("T")


async def timed_writes(url: str, work: Callable[[trio.MemorySendChannel[Any]], Awaitable[T]]
                       ) -> tuple[list[float], T, float]:
    """``work``, given the channel to the database task (a ``PruneWrite`` or
    ``IndexWrite`` on it is one chunk), against a real database task: each
    chunk's seconds from its sending to its answer, what ``work`` returned,
    the wall time."""
    seconds: list[float] = []
    with open_store(url) as store:
        to_db, inbox = trio.open_memory_channel[object](10)
        to_scheduler, _ = trio.open_memory_channel[object](math.inf)
        asked, asks = trio.open_memory_channel[Any](10)

        async def relay() -> None:
            async for message in asks:
                reply, replies = trio.open_memory_channel[object](1)
                began = time.perf_counter()
                await to_db.send(type(message)(message.change, reply))
                answer = await replies.receive()
                seconds.append(time.perf_counter() - began)
                assert message.reply is not None
                message.reply.send_nowait(answer)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(db_task.run, store, inbox, to_scheduler)
            nursery.start_soon(relay)
            began = time.perf_counter()
            result = await work(asked)
            wall = time.perf_counter() - began
            nursery.cancel_scope.cancel()
    return seconds, result, wall


async def prune_timed(url: str, before: float, chunk: int) -> tuple[list[float], Pruned, float]:
    """``history.prune``, each chunk timed (``timed_writes``)."""
    return await timed_writes(url, lambda asked: history.prune(asked, before, limit=chunk))


async def expire_timed(url: str, config_path: Path, now: datetime) -> tuple[list[float], list[int], float]:
    """One pass of ``expiry.expire_once``, each chunk timed (``timed_writes``)."""
    config = load_config(config_path)
    return await timed_writes(url, lambda asked: expiry.expire_once(config.index, asked, now))


def chunk_figures(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (f"p50 {statistics.median(ms):.1f} ms, p99 {ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.1f} ms, "
            f"longest {ms[-1]:.1f} ms")


def bench_expiry(name: str, url: str, root: Path, args: argparse.Namespace) -> None:
    root.mkdir(parents=True, exist_ok=True)
    config_path = write_config(root, url, 0, args.products)
    loaded = load_index(config_path, args.days)
    with open_store(url) as store:
        # every file past its expiry: a daemon stopped for longer than their lifetime
        store.transaction(lambda cursor: cursor.execute("UPDATE data_instances SET expires = '2000-01-01T00:00:00Z'"),
                          write=True)
        events_before = store.query("SELECT COUNT(*) FROM events")[0][0]
    print(f"{name}: {loaded['counts'][2]:,} files, every one past its expiry; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    seconds, deleted, wall = trio.run(expire_timed, url, config_path, datetime.now(UTC))
    with open_store(url) as store:
        events = store.query("SELECT COUNT(*) FROM events")[0][0] - events_before
        left = store.query("SELECT COUNT(*) FROM data_instances WHERE deleted = 0")[0][0]
    print(f"  expired {len(deleted):,} files in {len(seconds):,} chunks of {expiry.CHUNK:,}, {events:,} events, "
          f"{wall:.1f} s ({len(deleted) / wall:,.0f} files/s, writer busy {sum(seconds) / wall:.0%} of the time); "
          f"{left} left", flush=True)
    print(f"  each chunk holds the writer: {chunk_figures(seconds)}; load average {os.getloadavg()[0]:.1f}",
          flush=True)


def bench_database(name: str, url: str, args: argparse.Namespace) -> None:
    began = time.perf_counter()
    seed_history(url, args.history)
    with open_store(url) as store:
        last = reads.last_event_id(store)
        jobs = store.query("SELECT COUNT(*) FROM jobs")[0][0]
        events = store.query("SELECT COUNT(*) FROM events")[0][0]
    print(f"{name}: {jobs:,} finished jobs, {events:,} events seeded in {time.perf_counter() - began:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    # the seeded runs ended a day ago and their events were written just now:
    # an edge of a second from now takes both
    seconds, total, wall = trio.run(prune_timed, url, time.time() + 1, args.chunk)
    print(f"  pruned {total.runs:,} runs, {total.jobs:,} jobs, {total.logs:,} log tails, {total.events:,} events, "
          f"{total.definitions} definitions in {len(seconds):,} chunks of about {args.chunk:,} rows, {wall:.1f} s "
          f"({total.rows / wall:,.0f} rows/s, writer busy {sum(seconds) / wall:.0%} of the time)")
    print(f"  each chunk holds the writer: {chunk_figures(seconds)}; load average {os.getloadavg()[0]:.1f}")
    with open_store(url) as store:
        left = store.query("SELECT COUNT(*) FROM jobs")[0][0]
        assert (reads.last_event_id(store), reads.oldest_event(store)) == (last, last + 1), "the numbering"
        assert reads.load_snapshot(store).next_run_id > 1, "the run numbering"
    print(f"  left: {left} jobs; the newest event number is still {last:,}, the next one kept will be "
          f"{last + 1:,}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=100_000, help="finished jobs to prune")
    parser.add_argument("--chunk", type=int, default=history.CHUNK, help="rows per chunk")
    parser.add_argument("--products", type=int, default=50, help="products of the index to expire")
    parser.add_argument("--days", type=int, default=30, help="days of 4 instances of 60 files per product")
    parser.add_argument("--postgres", action="store_true", help="also on a PostgreSQL 15 started here")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; history {args.history:,} jobs, "
          f"chunks of {args.chunk:,} rows", flush=True)
    with tempfile.TemporaryDirectory(prefix="muppet-prune-") as tmp:
        bench_database("sqlite", f"sqlite:///{tmp}/muppet.db", args)
        bench_expiry("sqlite", f"sqlite:///{tmp}/index.db", Path(tmp) / "index", args)
        if args.postgres:
            with PostgresServer() as pg:
                bench_database("postgres", pg.create_database("prune"), args)
                bench_expiry("postgres", pg.create_database("index"), Path(tmp) / "pg-index", args)


if __name__ == "__main__":
    main()
