"""The database layer on real SQLite and a real PostgreSQL: schema migrations,
the store's writes and reads, and the batching, retrying database task."""

from __future__ import annotations

import functools
import logging
import socket
import sqlite3
import threading
from datetime import UTC, datetime

import attrs
import psycopg
import pytest
import trio
from waiting import wait_until_async  # tests/ is on sys.path

from muppet import codec
from muppet.db import DatabaseUnavailable, Snapshot, StoreError, open_store, reads, writes
from muppet.db import task as db_task
from muppet.db.migrations import MIGRATIONS, latest_version
from muppet.db.writes import Committed
from muppet.index import queries
from muppet.messages import (
    NOT_FOUND,
    DefineIndex,
    DeleteFiles,
    IndexWrite,
    NewFile,
    NewRun,
    Persist,
    Persisted,
    RegisterFiles,
)
from muppet.model import DataFormat, Job, JobLog, JobState, Product, Run, RunCause, RunState, ServiceBackend

T0 = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


def make_run(id: int, pipeline: str = "ecmwf", hour: int = 6, **fields) -> Run:
    return Run(
        id=id, pipeline=pipeline, reference_time=T0.replace(hour=hour),
        created_at=1_700_000_000.25 + id, **fields,
    )


def make_job(id: int, run_id: int, pipeline: str = "ecmwf", step: str = "fetch", index: int = 0, **fields) -> Job:
    return Job(
        id=id, run_id=run_id, pipeline=pipeline, step=step, index=index, count=1,
        executor="local", created_at=1_700_000_000.5 + id, **fields,
    )


def new_run(run_id: int, job_ids: list[int], pipeline: str = "ecmwf", hour: int = 6, **fields) -> NewRun:
    run = make_run(run_id, pipeline, hour, **fields)
    return NewRun(run=run, jobs=tuple(make_job(j, run_id, pipeline, index=i) for i, j in enumerate(job_ids)))


def raw(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """A query on a connection of its own, behind the store's back."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url[len("sqlite://"):], isolation_level=None)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def store(database_url):
    with open_store(database_url) as store:
        yield store


# --- migrations ------------------------------------------------------------------


def test_migrations_apply_once_and_reopen_is_idempotent(database_url):
    with open_store(database_url) as store:
        assert store.schema_version() == latest_version()
    rows = raw(database_url, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]
    with open_store(database_url) as store:
        assert store.migrate() == []
        assert reads.last_event_id(store) == 0
    assert len(raw(database_url, "SELECT version FROM schema_migrations")) == len(MIGRATIONS)


def test_concurrent_openers_apply_each_migration_once(database_url):
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def opener() -> None:
        try:
            start.wait()
            open_store(database_url, busy_timeout=30).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    rows = raw(database_url, "SELECT version FROM schema_migrations")
    assert sorted(r[0] for r in rows) == [v for v, _ in MIGRATIONS]


def test_a_newer_schema_is_refused(database_url):
    open_store(database_url).close()
    raw(database_url, "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (999, 0.0))
    with pytest.raises(StoreError, match="schema version 999"):
        open_store(database_url)


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite://relative.db", "sqlite:///", "/tmp/x.db"])
def test_unusable_urls_are_named(url):
    with pytest.raises(StoreError, match="database URL"):
        open_store(url)


def test_sqlalchemy_spelling_of_an_absolute_path_is_accepted(tmp_path):
    with open_store(f"sqlite:///{tmp_path}/a.db") as store:
        writes.write(store, [new_run(1, [1])])
    with open_store(f"sqlite:////{str(tmp_path).lstrip('/')}/a.db") as store:
        assert reads.get_run(store, 1) is not None


def test_an_unreachable_database_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")  # a directory that cannot be made
    missing = tmp_path / "a-file" / "dir" / "muppet.db"
    with pytest.raises(DatabaseUnavailable, match=str(missing)):
        open_store(f"sqlite:///{missing}")
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DatabaseUnavailable, match=f"postgresql://someone@127.0.0.1:{port}/muppet: ") as failure:
        open_store(f"postgresql://someone:secret@127.0.0.1:{port}/muppet")
    assert "secret" not in str(failure.value)


# --- writes and reads ------------------------------------------------------------


def test_every_field_round_trips(store):
    run = make_run(7, state=RunState.FAILED, cause=RunCause.DATA, ended_at=1_700_000_123.125)
    job = Job(
        id=42, run_id=7, pipeline="ecmwf", step="post process", index=3, count=5,
        executor="slurm", state=JobState.KILLED, failures=2, predecessor=41,
        successor=43, not_before=1_700_000_050.75, exit_code=-9,
        reason="killed by operator 'øyvind'", batch_id="123456", host="node-7",
        created_at=1_700_000_001.5, submitted_at=1_700_000_002.0,
        started_at=1_700_000_003.25, ended_at=1_700_000_004.125,
    )
    bare = make_job(43, 7, predecessor=42)  # None timestamps, no exit code
    log_tail = JobLog(job_id=42, stdout="line 1\nlinje 2 ✓\n", stderr="")
    committed = writes.write(store, [NewRun(run=run, jobs=(job, bare)), log_tail])
    assert committed == Committed(changes=(NewRun(run=run, jobs=(job, bare)), log_tail))

    assert reads.get_run(store, 7) == run
    assert reads.get_run(store, 7).reference_time.tzinfo is not None
    assert reads.get_job(store, 42) == job
    assert reads.get_job(store, 43) == bare
    assert reads.get_job_log(store, 42) == log_tail
    assert reads.run_with_jobs(store, 7) == (run, (job, bare))
    assert reads.get_run(store, 8) is None and reads.get_job(store, 1) is None
    assert reads.get_job_log(store, 43) is None and reads.run_with_jobs(store, 8) is None

    # updates replace whole rows, a log tail too
    finished = attrs.evolve(bare, state=JobState.SUCCEEDED, exit_code=0, ended_at=1_700_000_009.0)
    done = attrs.evolve(run, state=RunState.SUCCEEDED)
    newer_tail = JobLog(job_id=42, stdout="", stderr="oops")
    writes.write(store, [finished, done, newer_tail])
    assert reads.run_with_jobs(store, 7) == (done, (job, finished))
    assert reads.get_job_log(store, 42) == newer_tail


def test_later_changes_in_one_batch_win(store):
    created = new_run(1, [1])
    job = created.jobs[0]
    states = [JobState.SUBMITTED, JobState.RUNNING, JobState.SUCCEEDED]
    writes.write(store, [created, *(attrs.evolve(job, state=s) for s in states)])
    assert reads.get_job(store, 1).state is JobState.SUCCEEDED


def test_list_runs_and_jobs(store):
    writes.write(store, [new_run(r, [10 * r, 10 * r + 1], pipeline="ecmwf" if r % 2 else "arome", hour=r)
                 for r in range(1, 7)])
    writes.write(store, [attrs.evolve(reads.get_run(store, 3), state=RunState.SUCCEEDED),
                 attrs.evolve(reads.get_job(store, 21), state=JobState.FAILED)])

    assert [r.id for r in reads.list_runs(store)] == [6, 5, 4, 3, 2, 1]
    assert [r.id for r in reads.list_runs(store, pipeline="ecmwf")] == [5, 3, 1]
    assert [r.id for r in reads.list_runs(store, state=RunState.SUCCEEDED)] == [3]
    assert [r.id for r in reads.list_runs(store, state="running", pipeline="arome")] == [6, 4, 2]
    assert [r.id for r in reads.list_runs(store, limit=2)] == [6, 5]
    assert [r.id for r in reads.list_runs(store, limit=2, before_id=5)] == [4, 3]
    with pytest.raises(ValueError, match="not a RunState: 'sleeping'"):
        reads.list_runs(store, state="sleeping")

    assert [j.id for j in reads.list_jobs(store, run_id=2)] == [20, 21]
    assert [j.id for j in reads.list_jobs(store, state=JobState.FAILED)] == [21]
    assert [j.id for j in reads.list_jobs(store, run_id=2, state="waiting")] == [20]
    # without a run, the newest jobs, still in id order
    assert [j.id for j in reads.list_jobs(store, limit=3)] == [51, 60, 61]
    assert len(reads.list_jobs(store)) == 12


def test_a_runs_first_jobs_come_in_the_order_of_an_index(store):
    """jobs.list of a run (reads.list_jobs) reads its first jobs in the
    order of the index jobs_run_id (run_id, id), schema migration 10, rather
    than reading and sorting every job of the run: on PostgreSQL that was
    2.4-3.7 ms for a run of 10,000 (docs/database.md)."""
    writes.write(store, [new_run(r, list(range(100 * r, 100 * r + 60)), hour=r) for r in range(1, 4)])
    assert [j.id for j in reads.list_jobs(store, run_id=2, limit=10)] == list(range(200, 210))
    sql = store.sql("SELECT id FROM jobs WHERE run_id = ? ORDER BY id LIMIT ?")
    if store.kind == "sqlite":
        plan = " ".join(str(row) for row in store.query("EXPLAIN QUERY PLAN " + sql, (2, 10)))
        assert "jobs_run_id" in plan and "TEMP B-TREE" not in plan, plan
        return

    def explain(cursor):
        # A table this small makes reading all of it the cheapest plan;
        # without whole-table and bitmap scans the planner shows whether an
        # index gives the run's jobs in id order
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("EXPLAIN " + sql, (2, 10))
        return " ".join(row[0] for row in cursor.fetchall())

    plan = store.transaction(explain, write=False)
    assert "jobs_run_id" in plan and "Sort" not in plan, plan


def test_a_duplicate_new_run_is_rejected_and_nothing_of_it_written(store):
    first = new_run(1, [1, 2])
    writes.write(store, [first])
    events_before = reads.last_event_id(store)

    duplicate = new_run(2, [3, 4])  # same pipeline and reference time
    other = new_run(3, [5], hour=12)
    again = new_run(4, [6], hour=12)  # a duplicate of one in the same batch
    update = attrs.evolve(first.jobs[0], state=JobState.SUBMITTED)
    committed = writes.write(store, [duplicate, other, update, again])

    assert committed == Committed(changes=(other, update), rejected=(duplicate, again))
    assert reads.get_run(store, 2) is None and reads.get_run(store, 4) is None
    assert reads.get_job(store, 3) is None and reads.get_job(store, 4) is None and reads.get_job(store, 6) is None
    assert reads.get_run(store, 1) == first.run and reads.get_job(store, 1) == update
    subjects = [(kind, subject) for _, _, kind, subject, _ in reads.events_since(store, events_before)]
    assert subjects == [("run", 3), ("job", 5), ("job", 1)]


def test_events_are_appended_in_order_in_the_same_transaction(store, database_url):
    created = new_run(1, [1, 2, 3])
    running = attrs.evolve(created.jobs[1], state=JobState.RUNNING)
    writes.write(store, [created, running, JobLog(job_id=1, stdout="x", stderr="")])
    writes.write(store, [attrs.evolve(created.run, state=RunState.FAILED)])

    events = reads.events_since(store, 0)
    assert [e[0] for e in events] == list(range(events[0][0], events[0][0] + 6))
    assert reads.last_event_id(store) == events[-1][0]
    assert [(kind, subject) for _, _, kind, subject, _ in events] == [
        ("run", 1), ("job", 1), ("job", 2), ("job", 3), ("job", 2), ("run", 1),
    ]
    assert events[0][4] == codec.run_to_dict(created.run)
    assert events[4][4] == codec.job_to_dict(running)
    assert codec.run_from_dict(events[5][4]).state is RunState.FAILED
    assert all(isinstance(at, float) and at > 1.7e9 for _, at, _, _, _ in events)
    assert reads.events_since(store, events[1][0], limit=2) == events[2:4]
    assert reads.events_since(store, events[-1][0]) == []

    # a batch that fails leaves no trace, its events included: a job of a run
    # that does not exist breaks the foreign key
    last = reads.last_event_id(store)
    with pytest.raises(Exception) as failure:
        writes.write(store, [attrs.evolve(running, state=JobState.SUCCEEDED), make_job(9, run_id=99)])
    assert not isinstance(failure.value, DatabaseUnavailable)
    assert reads.last_event_id(store) == last
    assert reads.get_job(store, 2) == running
    assert raw(database_url, "SELECT COUNT(*) FROM jobs")[0][0] == 3
    # and the store goes on working
    writes.write(store, [attrs.evolve(running, state=JobState.SUCCEEDED)])
    assert reads.get_job(store, 2).state is JobState.SUCCEEDED


def test_a_commit_tells_the_events_it_appended_as_the_log_holds_them(store):
    """``Committed.events`` is what the API's event hub delivers without
    reading the log back (muppet/index/events.py): the same rows, the same
    numbers, the product of an index event included."""
    index = DefineIndex(
        products=(Product("arome", "AROME", file_count=2),),
        formats=(DataFormat("netcdf", "NetCDF"),),
        backends=(ServiceBackend("lustre-a", "Lustre A", "file:///lustre/a"),),
    )
    writes.write(store, [new_run(1, [1]), index])
    before = reads.last_event_id(store)
    batch = [new_run(2, [2, 3], hour=12), attrs.evolve(make_job(1, 1), state=JobState.RUNNING),
             RegisterFiles((_new_file("1.nc"),))]
    done = writes.write(store, batch, token="batch-a")
    logged = queries.events_since(store, before, pruned=False)
    assert len(logged) == 6 and {e["kind"] for e in logged} == {"run", "job", "file", "instance"}
    assert done.events is not None and [queries.event_from_row(row) for row in done.events] == logged
    assert done.events[-1][0] == done.last_event_id == reads.last_event_id(store)
    assert [row[3] for row in done.events if row[2] == "file"] == ["arome"]
    # a batch that appended nothing says so; a retry of a committed batch
    # cannot tell what that commit appended
    assert writes.write(store, [JobLog(job_id=1, stdout="x", stderr="")]).events == ()
    assert writes.write(store, batch, token="batch-a").events is None


def test_a_batch_token_makes_a_retry_write_nothing_twice(store):
    writes.write(store, [new_run(1, [1])])
    batch = [new_run(2, [2], hour=12), new_run(3, [3])]  # the second is a duplicate of run 1
    first = writes.write(store, batch, token="batch-a")
    events = reads.last_event_id(store)
    again = writes.write(store, batch, token="batch-a")
    assert again == first == Committed(changes=(batch[0],), rejected=(batch[1],))
    assert reads.last_event_id(store) == events
    # another token is another batch
    writes.write(store, [attrs.evolve(batch[0].run, state=RunState.SUCCEEDED)], token="batch-b")
    assert reads.last_event_id(store) == events + 1


def test_load_snapshot(store):
    assert reads.load_snapshot(store) == Snapshot((), (), 1, 1, {})
    writes.write(store, [
        new_run(1, [1, 2], cause=RunCause.CRON, hour=0),
        new_run(2, [3], cause=RunCause.CRON, hour=6),
        new_run(3, [4], cause=RunCause.MANUAL, hour=18),
        new_run(4, [5, 6], pipeline="arome", cause=RunCause.CRON, hour=3),
        new_run(5, [7], pipeline="wave", cause=RunCause.DATA, hour=3),
    ])
    writes.write(store, [attrs.evolve(reads.get_run(store, 2), state=RunState.SUCCEEDED),
                 attrs.evolve(reads.get_job(store, 3), state=JobState.SUCCEEDED)])

    snapshot = reads.load_snapshot(store)
    assert [r.id for r in snapshot.runs] == [1, 3, 4, 5]
    assert all(r.state is RunState.RUNNING for r in snapshot.runs)
    assert [j.id for j in snapshot.jobs] == [1, 2, 4, 5, 6, 7]
    assert snapshot.jobs[0] == reads.get_job(store, 1)
    assert (snapshot.next_run_id, snapshot.next_job_id) == (6, 8)
    # the latest cron run counts even when finished; manual and data runs do not
    assert snapshot.last_cron == {"ecmwf": T0.replace(hour=6), "arome": T0.replace(hour=3)}
    assert snapshot.last_cron["ecmwf"].tzinfo is not None


# --- the database task ----------------------------------------------------------------


class CountingStore:
    """The store, counting the write transactions the task asks for."""

    def __init__(self, store) -> None:
        self.store = store
        self.writes = 0
        self.writing = threading.Event()
        self.written = threading.Event()

    def sql(self, sql: str) -> str:
        return self.store.sql(sql)

    def describe(self) -> str:
        return self.store.describe()

    def transaction(self, work, *, write):
        if not write:
            return self.store.transaction(work, write=write)
        self.writes += 1
        self.writing.set()
        try:
            return self.store.transaction(work, write=write)
        finally:
            self.written.set()


async def collect(receive, into: list) -> None:
    async for persisted in receive:
        into.append(persisted)


async def test_task_batches_many_persists_into_few_commits(store):
    counting = CountingStore(store)
    to_db, db_inbox = trio.open_memory_channel(1000)
    to_scheduler, inbox = trio.open_memory_channel(1000)
    received: list[Persisted] = []
    sent = [Persist(changes=(new_run(n, [n], pipeline=f"p{n}"),)) for n in range(1, 501)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db_task.run, counting, db_inbox, to_scheduler)
            nursery.start_soon(collect, inbox, received)
            async with to_db:
                for persist in sent:
                    await to_db.send(persist)
            # closing to_db ends the task once drained; it closes to_scheduler
    assert [c for p in received for c in p.changes] == [p.changes[0] for p in sent]
    assert all(not p.rejected for p in received)
    assert len(received) == counting.writes
    assert counting.writes <= 50, f"{counting.writes} transactions for 500 Persists"
    assert len(reads.list_runs(store, limit=1000)) == 500
    assert reads.last_event_id(store) - reads.events_since(store, 0, limit=1)[0][0] + 1 == 1000


async def test_task_reports_rejected_new_runs(store):
    to_db, db_inbox = trio.open_memory_channel(10)
    to_scheduler, inbox = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(db_task.run, store, db_inbox, to_scheduler)
        await to_db.send(Persist(changes=(new_run(1, [1]),)))
        first = await inbox.receive()
        duplicate = new_run(2, [2])
        await to_db.send(Persist(changes=(duplicate,)))
        second = await inbox.receive()
        await to_db.aclose()
    assert first.changes == (new_run(1, [1]),)
    assert second == Persisted(changes=(), rejected=(duplicate,))


def _new_file(name: str) -> NewFile:
    return NewFile(
        product="arome", reference_time=T0, backend="lustre-a", format="netcdf",
        url=f"file:///lustre/a/arome/{name}", size=1, hash="ab" * 32,
    )


async def test_task_answers_index_writes_and_tells_the_scheduler_only_what_completed(store):
    writes.write(store, [DefineIndex(
        products=(Product("arome", "AROME", file_count=2),),
        formats=(DataFormat("netcdf", "NetCDF"),),
        backends=(ServiceBackend("lustre-a", "Lustre A", "file:///lustre/a"),),
    )])
    to_db, db_inbox = trio.open_memory_channel(10)
    to_scheduler, inbox = trio.open_memory_channel(10)
    reply, replies = trio.open_memory_channel(10)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db_task.run, store, db_inbox, to_scheduler)
            await to_db.send(IndexWrite(RegisterFiles((_new_file("1.nc"),)), reply))
            first = await replies.receive()
            assert first.error is None and first.completed == () and first.event_id > 0
            await to_db.send(IndexWrite(DeleteFiles(ids=(999,)), reply))
            refused = await replies.receive()
            assert refused.code == NOT_FOUND and "999" in refused.error
            await to_db.send(IndexWrite(RegisterFiles((_new_file("2.nc"),)), reply))
            second = await replies.receive()
            # the scheduler hears nothing of the first two writes: the first
            # message it gets is the completion the third one made
            told = await inbox.receive()
            await to_db.aclose()
    assert [c.product for c in second.completed] == ["arome"]
    assert told == Persisted((), completed=second.completed)


async def test_task_commits_index_writes_and_the_schedulers_changes_together(store):
    writes.write(store, [DefineIndex(
        products=(Product("arome", "AROME", file_count=1),),
        formats=(DataFormat("netcdf", "NetCDF"),),
        backends=(ServiceBackend("lustre-a", "Lustre A", "file:///lustre/a"),),
    )])
    counting = CountingStore(store)
    to_db, db_inbox = trio.open_memory_channel(10)
    to_scheduler, inbox = trio.open_memory_channel(10)
    reply, replies = trio.open_memory_channel(10)
    # both wait on the channel before the task starts: one batch
    await to_db.send(Persist(changes=(new_run(1, [1]),)))
    await to_db.send(IndexWrite(RegisterFiles((_new_file("1.nc"),)), reply))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db_task.run, counting, db_inbox, to_scheduler)
            written = await replies.receive()
            told = await inbox.receive()
            await to_db.aclose()
    assert counting.writes == 1
    assert told.changes == (new_run(1, [1]),) and told.completed == written.completed
    assert [c.product for c in told.completed] == ["arome"]


def _failures(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "muppet.db" and "failed (attempt" in r.getMessage()]


async def _wait_for_failures(caplog, count: int) -> None:
    await wait_until_async(lambda: len(_failures(caplog)) >= count, 30, f"{count} failed commits logged")


async def test_task_retries_while_sqlite_is_locked(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="muppet.db")
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    store = open_store(url, busy_timeout=0.05)
    blocker = sqlite3.connect(str(tmp_path / "locked.db"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    to_db, db_inbox = trio.open_memory_channel(100)
    to_scheduler, inbox = trio.open_memory_channel(100)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(db_task.run, store, db_inbox, to_scheduler,
                                      retry_initial=0.01, retry_max=0.1))
                for n in range(1, 4):
                    await to_db.send(Persist(changes=(new_run(n, [n], hour=n),)))
                await _wait_for_failures(caplog, 3)
                assert raw(url, "SELECT COUNT(*) FROM runs")[0][0] == 0
                blocker.execute("ROLLBACK")
                received = []
                while sum(len(p.changes) for p in received) < 3:
                    received.append(await inbox.receive())
                await to_db.aclose()
    finally:
        blocker.close()
    assert [c.run.id for p in received for c in p.changes] == [1, 2, 3]
    assert len(reads.list_runs(store)) == 3
    assert reads.last_event_id(store) == 6
    failures = _failures(caplog)
    assert "database is locked" in failures[0].getMessage()
    assert "attempt 1" in failures[0].getMessage() and "attempt 2" in failures[1].getMessage()
    assert str(tmp_path / "locked.db") in failures[0].getMessage()
    # the outage is told once when it begins and once when it ends
    warnings = [r.getMessage() for r in caplog.records if r.name == "muppet.db" and r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("database unavailable: ") and "database is locked" in warnings[0]
    assert "available again after" in warnings[1]
    store.close()


@pytest.mark.postgres
async def test_task_reconnects_after_postgres_drops_the_connection(postgres_server, postgres_url, caplog):
    caplog.set_level(logging.DEBUG, logger="muppet.db")
    store = open_store(postgres_url)
    writes.write(store, [new_run(1, [1])])
    dbname = postgres_url.rsplit("/", 1)[1]
    admin = psycopg.connect(postgres_server.url(), autocommit=True)
    to_db, db_inbox = trio.open_memory_channel(100)
    to_scheduler, inbox = trio.open_memory_channel(100)
    try:
        # the server goes away under the store's connection, and for a while
        # takes no new ones, as during a restart
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(db_task.run, store, db_inbox, to_scheduler,
                                      retry_initial=0.01, retry_max=0.1))
                update = attrs.evolve(make_job(1, 1), state=JobState.RUNNING)
                await to_db.send(Persist(changes=(update, new_run(2, [2], hour=12))))
                await _wait_for_failures(caplog, 3)
                admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
                persisted = await inbox.receive()
                await to_db.aclose()
    finally:
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        admin.close()
    assert persisted.changes == (update, new_run(2, [2], hour=12))
    assert reads.get_job(store, 1) == update
    assert reads.get_run(store, 2) is not None
    assert [(e[2], e[3]) for e in reads.events_since(store, 0)] == [
        ("run", 1), ("job", 1), ("job", 1), ("run", 2), ("job", 2)]
    store.close()


@pytest.mark.postgres
async def test_task_survives_a_postgres_restart(postgres_server, postgres_url, caplog):
    caplog.set_level(logging.DEBUG, logger="muppet.db")
    store = open_store(postgres_url)
    writes.write(store, [new_run(1, [1])])
    to_db, db_inbox = trio.open_memory_channel(100)
    to_scheduler, inbox = trio.open_memory_channel(100)
    postgres_server.ctl("stop")
    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(db_task.run, store, db_inbox, to_scheduler,
                                      retry_initial=0.01, retry_max=0.2))
                await to_db.send(Persist(changes=(new_run(2, [2], hour=12),)))
                await _wait_for_failures(caplog, 2)
                await trio.to_thread.run_sync(postgres_server.ctl, "start")
                persisted = await inbox.receive()
                await to_db.aclose()
    finally:
        if not (postgres_server.data / "postmaster.pid").exists():
            postgres_server.ctl("start")
    assert persisted.changes == (new_run(2, [2], hour=12),)
    assert reads.get_run(store, 2) == new_run(2, [2], hour=12).run
    store.close()


async def test_task_stops_on_an_error_that_is_a_bug_not_weather(tmp_path, caplog):
    """Only busy, locked, full and I/O errors are retried; "no such table"
    (here: a schema broken under the daemon) stops the task at once."""
    caplog.set_level(logging.DEBUG, logger="muppet.db")
    url = f"sqlite:///{tmp_path / 'broken.db'}"
    store = open_store(url)
    writes.write(store, [new_run(1, [1])])
    raw(url, "DROP TABLE job_logs")
    to_db, db_inbox = trio.open_memory_channel(10)
    to_scheduler, _inbox = trio.open_memory_channel(10)
    await to_db.send(Persist(changes=(JobLog(job_id=1, stdout="x", stderr=""),)))
    with trio.fail_after(30), pytest.raises(sqlite3.OperationalError, match="no such table: job_logs"):
        await db_task.run(store, db_inbox, to_scheduler, retry_initial=0.01)
    assert _failures(caplog) == []
    store.close()


def test_sqlite_errors_are_told_apart(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        for code, transient in [
            (sqlite3.SQLITE_BUSY, True), (sqlite3.SQLITE_LOCKED, True), (sqlite3.SQLITE_FULL, True),
            (sqlite3.SQLITE_IOERR, True), (sqlite3.SQLITE_IOERR | (3 << 8), True),  # SQLITE_IOERR_WRITE
            (sqlite3.SQLITE_ERROR, False), (sqlite3.SQLITE_CONSTRAINT, False), (sqlite3.SQLITE_CORRUPT, False),
        ]:
            error = sqlite3.OperationalError("x")
            error.sqlite_errorcode = code
            assert store.is_transient(error) is transient, code
        assert not store.is_transient(sqlite3.IntegrityError("UNIQUE constraint failed"))
        assert store.is_transient(OSError(28, "No space left on device"))
    finally:
        store.close()


async def test_cancellation_waits_for_the_write_in_progress(tmp_path):
    path = tmp_path / "slow.db"
    store = open_store(f"sqlite:///{path}", busy_timeout=30)
    counting = CountingStore(store)
    blocker = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    # the lock is let go only after the cancellation, from another thread: a
    # task that abandoned its write would be gone before the write is done
    release = threading.Timer(0.3, blocker.execute, ("ROLLBACK",))
    to_db, db_inbox = trio.open_memory_channel(10)
    to_scheduler, _inbox = trio.open_memory_channel(10)
    try:
        with trio.fail_after(60):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(db_task.run, counting, db_inbox, to_scheduler)
                    await to_db.send(Persist(changes=(new_run(1, [1]),)))
                    await trio.to_thread.run_sync(counting.writing.wait)
                    scope.cancel()
                    release.start()
            assert scope.cancelled_caught
            assert counting.written.is_set()
    finally:
        release.cancel()
        if release.ident is not None:
            release.join()
        blocker.close()
    assert reads.get_run(store, 1) == new_run(1, [1]).run
    assert counting.writes == 1
    store.close()


def test_sqlite_parent_directory_is_made(tmp_path):
    """The embedded default lives under a state directory a fresh machine lacks."""
    path = tmp_path / "not" / "yet" / "muppet.db"
    store = open_store(f"sqlite:///{path}")
    try:
        assert path.exists() and reads.last_event_id(store) == 0
    finally:
        store.close()
