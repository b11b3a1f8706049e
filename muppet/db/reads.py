"""Reading runs, jobs, log tails and events: functions of a Store, each one
statement or one read transaction. Like every Store call they block; Trio code
runs them in a worker thread (the API's read pool, the database task)."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs

from .. import codec
from ..messages import EndedRun, UpdateRequest
from ..model import Job, JobLog, JobState, Pipeline, Run, RunCause, RunState
from .rows import JOB_COLUMNS, REQUEST_COLUMNS, RUN_COLUMNS, job_from_row, request_from_row, run_from_row
from .store import Store

E = TypeVar("E", bound=enum.Enum)

#: one event as the log holds it: (id, at, kind, subject_id, payload)
EventRecord = tuple[int, float, str, int, dict[str, Any]]


@attrs.frozen
class Snapshot:
    """What the scheduler needs to pick up after a (re)start."""

    #: every unfinished run (running or queued)
    runs: tuple[Run, ...]
    #: every job of those runs, by id
    jobs: tuple[Job, ...]
    #: one more than the largest id ever stored, or 1
    next_run_id: int
    next_job_id: int
    #: per pipeline, the latest reference time of its cron-made runs
    last_cron: dict[str, datetime]
    #: the ended runs the unfinished ones wait on through intercycle parents
    ended: tuple[EndedRun, ...] = ()
    #: the pipeline definitions the unfinished runs were made with, by hash
    definitions: dict[str, Pipeline] = attrs.field(factory=dict)
    #: operators' standing orders (messages.Control), by key
    controls: dict[str, Any] = attrs.field(factory=dict)
    #: the requests for product updates still waiting, with what they wait
    #: for worked out again from the instances now
    update_requests: tuple[UpdateRequest, ...] = ()
    next_request_id: int = 1


def load_snapshot(store: Store) -> Snapshot:
    """Every running run with its jobs, the next ids and the last cron times,
    read in one transaction."""

    def work(cursor: Any) -> Snapshot:
        def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            cursor.execute(store.sql(sql), tuple(params))
            return list(cursor.fetchall())

        unfinished = (RunState.RUNNING.value, RunState.QUEUED.value)
        runs = rows(f"SELECT {RUN_COLUMNS} FROM runs WHERE state IN (?, ?) ORDER BY id", unfinished)
        jobs = rows(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE run_id IN"
            " (SELECT id FROM runs WHERE state IN (?, ?)) ORDER BY id",
            unfinished,
        )
        # ids go on above those pruned, even when none is left (db/prune.py)
        _, pruned_runs, pruned_jobs = rows("SELECT events, runs, jobs FROM pruned WHERE id = 1")[0]
        max_run = max(rows("SELECT MAX(id) FROM runs")[0][0] or 0, pruned_runs)
        max_job = max(rows("SELECT MAX(id) FROM jobs")[0][0] or 0, pruned_jobs)
        cron = rows(
            "SELECT pipeline, MAX(reference_time) FROM runs WHERE cause = ? GROUP BY pipeline",
            (RunCause.CRON.value,),
        )
        definitions = rows(
            "SELECT hash, definition FROM definitions WHERE hash IN"
            " (SELECT definition FROM runs WHERE state IN (?, ?))",
            unfinished,
        )
        controls = {key: json.loads(value) for key, value in rows("SELECT key, value FROM controls")}
        waiting = [
            request_from_row(row) for row in rows(f"SELECT {REQUEST_COLUMNS} FROM update_requests WHERE state = ?",
                                                  ("waiting",))
        ]
        # a completion committed just before a crash was never heard by the
        # scheduler: what each request waits for is read again
        waiting = [
            attrs.evolve(r, waiting_for=missing_products(store, cursor, r.waiting_for, r.reference_time))
            for r in waiting
        ]
        max_request = rows("SELECT MAX(id) FROM update_requests")[0][0]
        return Snapshot(
            runs=tuple(run_from_row(r) for r in runs),
            jobs=tuple(job_from_row(r) for r in jobs),
            next_run_id=(max_run or 0) + 1,
            next_job_id=(max_job or 0) + 1,
            last_cron={name: codec.parse_time(text) for name, text in cron},
            definitions={key: codec.pipeline_from_json(json.loads(text)) for key, text in definitions},
            controls=controls,
            update_requests=tuple(waiting),
            next_request_id=(max_request or 0) + 1,
        )

    return store.transaction(work, write=False)


def ended_runs(store: Store, cursor: Any, wanted: set[tuple[str, datetime]]) -> tuple[EndedRun, ...]:
    """The runs at (pipeline, reference time) in ``wanted`` that have ended,
    each with its slots' newest jobs' states, read on ``cursor`` (inside the
    caller's transaction)."""
    found = []
    for pipeline, moment in sorted(wanted):
        cursor.execute(
            store.sql("SELECT id, state FROM runs WHERE pipeline = ? AND reference_time = ?"),
            (pipeline, codec.format_time(moment)),
        )
        row = cursor.fetchone()
        if row is None or not RunState(row[1]).finished:
            continue  # not there, or unfinished: the scheduler holds those itself
        cursor.execute(
            store.sql("SELECT step, job_index, state FROM jobs WHERE run_id = ? AND successor IS NULL"),
            (row[0],),
        )
        slots = tuple(sorted((step, index, JobState(state)) for step, index, state in cursor.fetchall()))
        found.append(EndedRun(row[0], pipeline, moment, RunState(row[1]), slots))
    return tuple(found)


def load_ended_runs(store: Store, wanted: set[tuple[str, datetime]]) -> tuple[EndedRun, ...]:
    """:func:`ended_runs` in a read transaction of its own."""
    return store.transaction(lambda cursor: ended_runs(store, cursor, wanted), write=False)


def list_runs(
    store: Store,
    pipeline: str | None = None,
    state: RunState | str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[Run]:
    """Runs, newest (highest id) first; ``before_id`` pages back."""
    where, params = _where(
        ("pipeline = ?", pipeline),
        ("state = ?", None if state is None else _value(RunState, state)),
        ("id < ?", before_id),
    )
    rows = store.query(
        f"SELECT {RUN_COLUMNS} FROM runs{where} ORDER BY id DESC LIMIT ?",
        [*params, int(limit)],
    )
    return [run_from_row(r) for r in rows]


def get_run(store: Store, run_id: int) -> Run | None:
    rows = store.query(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
    return run_from_row(rows[0]) if rows else None


def list_jobs(
    store: Store, run_id: int | None = None, state: JobState | str | None = None, limit: int = 1000
) -> list[Job]:
    """Jobs by id; without ``run_id``, the newest ``limit`` of them."""
    where, params = _where(
        ("run_id = ?", run_id),
        ("state = ?", None if state is None else _value(JobState, state)),
    )
    if run_id is not None:
        # a run's first jobs straight from the index jobs_run_id (run_id, id),
        # in its order (schema migration 10)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs{where} ORDER BY id LIMIT ?"
    else:
        sql = (
            f"SELECT * FROM (SELECT {JOB_COLUMNS} FROM jobs{where}"
            " ORDER BY id DESC LIMIT ?) AS newest ORDER BY id"
        )
    return [job_from_row(r) for r in store.query(sql, [*params, int(limit)])]


def get_job(store: Store, job_id: int) -> Job | None:
    rows = store.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
    return job_from_row(rows[0]) if rows else None


def get_job_log(store: Store, job_id: int) -> JobLog | None:
    rows = store.query("SELECT job_id, stdout, stderr FROM job_logs WHERE job_id = ?", (job_id,))
    return JobLog(job_id=rows[0][0], stdout=rows[0][1], stderr=rows[0][2]) if rows else None


def run_with_jobs(store: Store, run_id: int) -> tuple[Run, tuple[Job, ...]] | None:
    """A run and its jobs (by id), read in one transaction."""

    def work(cursor: Any) -> tuple[Run, tuple[Job, ...]] | None:
        cursor.execute(store.sql(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"), (run_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(store.sql(f"SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = ? ORDER BY id"), (run_id,))
        return run_from_row(row), tuple(job_from_row(r) for r in cursor.fetchall())

    return store.transaction(work, write=False)


def events_since(store: Store, after_id: int, limit: int = 1000) -> list[EventRecord]:
    """Events numbered above ``after_id``, oldest first:
    ``(id, at, kind, subject_id, payload)`` where payload is the event's
    JSON data (for runs and jobs, ``codec.run_to_dict`` / ``codec.job_to_dict``)."""
    rows = store.query(
        "SELECT id, at, kind, subject_id, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, int(limit)),
    )
    return [(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


def controls(store: Store) -> dict[str, Any]:
    """The operators' standing orders (messages.Control), by key."""
    return {key: json.loads(value) for key, value in store.query("SELECT key, value FROM controls")}


def missing_products(store: Store, cursor: Any, products: Sequence[str], reference_time: datetime) -> tuple[str, ...]:
    """Those of ``products`` with no complete instance (any version) for
    ``reference_time``, as ``cursor``'s transaction sees them."""
    missing = []
    for product in products:
        cursor.execute(store.sql(
            "SELECT 1 FROM instances WHERE product = ? AND reference_time = ? AND completed_at IS NOT NULL LIMIT 1"
        ), (product, codec.format_time(reference_time)))
        if cursor.fetchone() is None:
            missing.append(product)
    return tuple(missing)


def list_requests(store: Store, *, state: str | None = None, limit: int = 100) -> list[UpdateRequest]:
    """Requests for product updates, newest first."""
    where, params = _where(("state = ?", state))
    rows = store.query(f"SELECT {REQUEST_COLUMNS} FROM update_requests{where} ORDER BY id DESC LIMIT ?",
                       [*params, int(limit)])
    return [request_from_row(row) for row in rows]


def find_run(store: Store, pipeline: str, reference_time: datetime) -> tuple[Run, tuple[Job, ...]] | None:
    """The run of ``pipeline`` for ``reference_time`` with its jobs, if there is one."""
    found = store.query("SELECT id FROM runs WHERE pipeline = ? AND reference_time = ?",
                        (pipeline, codec.format_time(reference_time)))
    return run_with_jobs(store, found[0][0]) if found else None


def get_definition(store: Store, key: str) -> Pipeline | None:
    """The pipeline definition named ``key`` (a run's ``definition``), or
    None (a run made before definitions were kept has "")."""
    rows = store.query("SELECT definition FROM definitions WHERE hash = ?", (key,))
    return codec.pipeline_from_json(json.loads(rows[0][0])) if rows else None


def last_event_id(store: Store) -> int:
    """The number of the newest event, 0 when there has been none; when
    every event was pruned, the last one pruned (the numbering goes on)."""
    newest: int | None = store.query(
        "SELECT MAX(id) FROM (SELECT MAX(id) AS id FROM events UNION ALL SELECT events FROM pruned WHERE id = 1)"
        " AS newest"
    )[0][0]
    return newest or 0


def ended_jobs(store: Store, ids: Sequence[int], before: float) -> list[int]:
    """Those of the jobs ``ids`` that are finished and ended before
    ``before`` (seconds since the epoch), or that were pruned: their files
    may go ([daemon] keep_job_dirs). A job the database holds unfinished, or
    does not know and has not pruned, is never among them. One read
    transaction."""

    def work(cursor: Any) -> list[int]:
        cursor.execute("SELECT jobs FROM pruned WHERE id = 1")
        pruned: int = cursor.fetchone()[0]
        cursor.execute(store.sql(
            f"SELECT id, state, COALESCE(ended_at, created_at) FROM jobs WHERE id IN ({', '.join('?' for _ in ids)})"
        ), tuple(ids))
        known = {row[0]: (JobState(row[1]), row[2]) for row in cursor.fetchall()}
        old = []
        for job_id in ids:
            found = known.get(job_id)
            if found is None:
                if job_id <= pruned:
                    old.append(job_id)
            elif found[0].finished and found[1] < before:
                old.append(job_id)
        return old

    if not ids:
        return []
    return store.transaction(work, write=False)


def oldest_event(store: Store) -> int:
    """The number of the oldest event the log keeps: one above the last one
    pruned ([daemon] keep_history), 1 when none was; when the log holds
    none, the number the next one will have."""
    pruned: int = store.query("SELECT events FROM pruned WHERE id = 1")[0][0]
    return pruned + 1


def _value(enum_type: type[E], value: Any) -> str:
    """An enum member or its string, as the stored string; names the bad value."""
    try:
        member: Any = enum_type(value)
    except ValueError:
        raise ValueError(f"not a {enum_type.__name__}: {value!r}") from None
    return str(member.value)


def _where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    used = [(sql, value) for sql, value in conditions if value is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(sql for sql, _ in used), [value for _, value in used]
