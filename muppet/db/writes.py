"""The database task's batches, written in one transaction each.

``write`` is the only writer of runs, jobs, log tails and events; index changes
in the same batch go to ``muppet/index/write.py`` on the same cursor, so a
job's success and the registration of its outputs commit together, and every
change appends its events to the same numbered log (the transactional outbox
of the MUPPET design).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from .. import codec
from ..alerts import records as alert_records
from ..alerts.changes import ALERT_CHANGES
from ..index import write as index_write
from ..messages import (
    Ack,
    Change,
    CompletedInstance,
    Control,
    DefineIndex,
    DeleteFiles,
    EndedRun,
    EventLogRow,
    IndexWritten,
    LateNotice,
    NewRun,
    OperatorEvent,
    Prune,
    Pruned,
    RegisterFiles,
    SetTorrent,
    UpdateRequest,
)
from ..model import Job, JobLog, Run
from . import prune as history
from .lease import Mark, check_epoch
from .reads import ended_runs, missing_products
from .rows import JOB_COLUMNS, REQUEST_COLUMNS, RUN_COLUMNS, event_payload, job_row, request_row, run_row
from .store import Store

log = logging.getLogger("muppet.db")


@attrs.frozen
class Committed:
    """What one transaction wrote: the committed copies of the run, job and
    log changes in the order given, the NewRuns refused as duplicates, and the
    outcome of each index change (in the order given)."""

    changes: tuple[NewRun | Run | Job | JobLog, ...] = ()
    rejected: tuple[NewRun, ...] = ()
    index: tuple[IndexWritten, ...] = ()
    #: the ended runs the committed NewRuns' ``needs`` named
    ended: tuple[EndedRun, ...] = ()
    #: the requests whose Ack the batch held
    acks: tuple[int, ...] = ()
    #: the update requests of the batch as committed
    requests: tuple[UpdateRequest, ...] = ()
    #: what each Prune of the batch removed, in the order given
    pruned: tuple[Pruned, ...] = ()
    #: the number of the newest event once the batch committed (not part of
    #: equality: two writes of the same changes are the same commit)
    last_event_id: int = attrs.field(default=0, eq=False)
    #: the events the batch appended, as the log's rows, when it can tell
    #: (``_appended``); None otherwise
    events: tuple[EventLogRow, ...] | None = attrs.field(default=None, eq=False)

    @property
    def completed(self) -> tuple[CompletedInstance, ...]:
        """Every instance an index change of the batch completed."""
        return tuple(c for written in self.index for c in written.completed)


def _operator_payload(change: OperatorEvent) -> str:
    """An operator event as the log keeps it (docs/api.md, "Operator events")."""
    payload = {"action": change.action, "by": change.by.name, "reason": change.by.reason, "target": change.target}
    return codec.compact_json(payload)


def _upsert(table: str, columns: str, key: str) -> str:
    names = [c.strip() for c in columns.split(",")]
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != key)
    marks = ", ".join("?" for _ in names)
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks})"
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


_INSERT_NEW_RUN = (
    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (pipeline, reference_time) DO NOTHING"
)
_UPSERT_RUN = _upsert("runs", RUN_COLUMNS, "id")
_UPSERT_JOB = _upsert("jobs", JOB_COLUMNS, "id")
_UPSERT_LOG = _upsert("job_logs", "job_id, stdout, stderr", "job_id")
#: a run's pipeline definition, kept once per hash (docs/operations.md, "Reload")
_INSERT_DEFINITION = (
    "INSERT INTO definitions (hash, pipeline, definition, created_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (hash) DO NOTHING"
)
_INSERT_EVENT = "INSERT INTO events (at, kind, subject_id, payload, product) VALUES (?, ?, ?, ?, ?)"
#: the changes that ``muppet/index/write.py`` applies
INDEX_CHANGES = (RegisterFiles, DefineIndex, DeleteFiles, SetTorrent)


def write(store: Store, changes: Sequence[Change], *, token: str | None = None, lease: Mark | None = None) -> Committed:
    """Write ``changes`` in ONE transaction and commit; return what was committed.

    NewRun inserts its run unless one of the same pipeline and reference
    time exists; then nothing of it is written and it goes to ``rejected``.
    Run, Job and JobLog are upserted by id. Every Run and Job written (those
    of a NewRun too) appends one event, in the same transaction. An index
    change that is refused writes nothing of itself and does not fail the rest.

    ``token`` names the batch: if the last committed write carried the same
    token, the batch is not written again and the result of that commit is
    returned. The database task passes one per batch, so that retrying a
    commit whose outcome was lost with the connection writes nothing twice.

    ``lease``: the lease this daemon holds (its epoch and tag); the
    transaction writes nothing and raises LeaseLost when another daemon has
    taken the lease since (``lease.check_epoch``; docs/operations.md,
    "Running a standby").

    Raises DatabaseUnavailable (rolled back; retry later) for locks, lost
    connections and the like; other errors (a constraint broken by a bug)
    come out as they are, also rolled back.
    """
    batch = tuple(changes)

    def work(cursor: Any) -> Committed:
        if lease is not None:
            check_epoch(store, cursor, lease)
        if token is not None:
            cursor.execute(store.sql("SELECT token, rejected, written FROM last_write WHERE id = 1"))
            row = cursor.fetchone()
            if row is not None and row[0] == token:
                log.info("batch %s was committed already; not writing it again", token)
                cursor.execute("SELECT MAX(id) FROM events")
                last_event_id = cursor.fetchone()[0] or 0
                rejected = set(json.loads(row[1]))
                committed = _committed(batch, rejected, _written_from_json(row[2]), last_event_id)
                # what a Prune removed is not kept: the next chunk finds what is left
                unknown = tuple(Pruned(after_run=c.after_run, more=True) for c in batch if isinstance(c, Prune))
                return attrs.evolve(committed, ended=_ended_needed(store, cursor, batch, rejected),
                                    requests=_requests_written(store, cursor, batch), pruned=unknown)
        return _write(store, cursor, batch, token)

    return store.transaction(work, write=True)


def _write(store: Store, cursor: Any, changes: tuple[Change, ...], token: str | None) -> Committed:
    rejected: set[int] = set()
    written: dict[int, IndexWritten] = {}
    runs: list[tuple[Any, ...]] = []
    jobs: list[tuple[Any, ...]] = []
    logs: list[tuple[Any, ...]] = []
    events: list[index_write.EventRow] = []
    definitions: dict[str, tuple[Any, ...]] = {}
    prunes: list[Prune] = []
    now = time.time()
    insert_new_run = store.sql(_INSERT_NEW_RUN)
    # Rows of one table keep their order (a later state of a job wins); the
    # tables go runs, jobs, logs, which is the order the foreign keys need.
    for position, change in enumerate(changes):
        if isinstance(change, NewRun):
            # one statement per NewRun: its row count says whether it was a
            # duplicate, which executemany cannot tell row by row
            cursor.execute(insert_new_run, run_row(change.run))
            if cursor.rowcount != 1:
                rejected.add(position)
                continue
            events.append((now, "run", change.run.id, event_payload(change.run), None))
            if change.definition and change.run.definition not in definitions:
                definitions[change.run.definition] = (change.run.definition, change.run.pipeline, change.definition,
                                                      now)
            for job in change.jobs:
                jobs.append(job_row(job))
                events.append((now, "job", job.id, event_payload(job), None))
            if change.by is not None:
                # a trigger's operator event exists only with the run it made
                target = {"pipeline": change.run.pipeline, "run_id": change.run.id,
                          "reference_time": codec.format_time(change.run.reference_time)}
                events.append((now, "operator", 0, _operator_payload(OperatorEvent("trigger", change.by, target)),
                               None))
        elif isinstance(change, Run):
            runs.append(run_row(change))
            events.append((now, "run", change.id, event_payload(change), None))
        elif isinstance(change, Job):
            jobs.append(job_row(change))
            events.append((now, "job", change.id, event_payload(change), None))
        elif isinstance(change, JobLog):
            logs.append((change.job_id, change.stdout, change.stderr))
        elif isinstance(change, LateNotice):
            events.append((now, "late", change.id, _late_payload(change), None))
        elif isinstance(change, OperatorEvent):
            events.append((now, "operator", 0, _operator_payload(change), None))
        elif isinstance(change, Ack):
            pass  # a marker: Committed.acks
        elif isinstance(change, UpdateRequest):
            _write_request(store, cursor, change)
        elif isinstance(change, Control):
            if change.value is None:
                cursor.execute(store.sql("DELETE FROM controls WHERE key = ?"), (change.key,))
            else:
                cursor.execute(store.sql(
                    "INSERT INTO controls (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ), (change.key, codec.compact_json(change.value)))
        elif isinstance(change, INDEX_CHANGES):
            written[position] = index_write.apply(cursor, store.sql, change, now, events)
        elif isinstance(change, ALERT_CHANGES):
            # an incident commits with its cause (docs/alerts.md, "Incidents")
            alert_records.apply(cursor, store.sql, change, now, events)
        elif isinstance(change, Prune):
            prunes.append(change)  # after the batch's own rows (below)
        else:
            raise TypeError(f"change {position}: cannot persist a {type(change).__name__}")
    if definitions:
        cursor.executemany(store.sql(_INSERT_DEFINITION), list(definitions.values()))
    before: int | None = None
    if events and not prunes:
        cursor.execute("SELECT MAX(id) FROM events")
        before = cursor.fetchone()[0] or 0
    for sql, rows in (
        (_UPSERT_RUN, runs), (_UPSERT_JOB, jobs), (_UPSERT_LOG, logs), (_INSERT_EVENT, events),
    ):
        if rows:
            cursor.executemany(store.sql(sql), rows)
    # a late product that arrived resolves its incident in the same commit
    alert_records.resolve_completed(cursor, store.sql, (
        (c.product, c.reference_time) for w in written.values() for c in w.completed), now)
    cursor.execute("SELECT MAX(id) FROM events")
    newest = cursor.fetchone()[0] or 0
    # pruning sees the batch's own rows: a run that this batch brought back
    # (a rerun) is running again, not old
    pruned = tuple(history.prune(store, cursor, change, now) for change in prunes)
    if token is not None:
        cursor.execute(
            store.sql(
                "INSERT INTO last_write (id, token, rejected, written) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET token = excluded.token,"
                " rejected = excluded.rejected, written = excluded.written"
            ),
            (token, json.dumps(sorted(rejected)), _written_to_json(written)),
        )
    # the newest event as it was before pruning: a prune may leave none
    last_event_id = newest
    committed = _committed(changes, rejected, written, last_event_id)
    return attrs.evolve(committed, ended=_ended_needed(store, cursor, changes, rejected),
                        requests=_requests_written(store, cursor, changes), pruned=pruned,
                        events=() if not events and not prunes else _appended(events, before, newest))


def _appended(events: list[index_write.EventRow], before: int | None, newest: int) -> tuple[EventLogRow, ...] | None:
    """The log's rows of ``events``, inserted in this order after event
    ``before``, now that ``newest`` is the newest: numbered ``before + 1``
    on when exactly their count was added, as the one writer's inserts are
    (SQLite's rowids; PostgreSQL's identity, drawn in order); None when the
    numbers say otherwise (a log emptied by pruning restarts at no lower
    number), so that nobody is told a wrong one."""
    if before is None or newest - before != len(events):
        return None
    return tuple(
        (before + offset, at, kind, product, subject_id, payload)
        for offset, (at, kind, subject_id, payload, product) in enumerate(events, start=1)
    )


def _write_request(store: Store, cursor: Any, change: UpdateRequest) -> None:
    """Upsert an update request; with ``check``, its ``waiting_for`` keeps
    only the products with no complete instance for its time, as this
    transaction sees them (messages.UpdateRequest)."""
    waiting_for = change.waiting_for
    if change.check:
        waiting_for = missing_products(store, cursor, waiting_for, change.reference_time)
    marks = ", ".join("?" for _ in REQUEST_COLUMNS.split(","))
    cursor.execute(store.sql(
        f"INSERT INTO update_requests ({REQUEST_COLUMNS}) VALUES ({marks})"
        " ON CONFLICT (id) DO UPDATE SET state = excluded.state, waiting_for = excluded.waiting_for,"
        " done_at = excluded.done_at, run_id = excluded.run_id"
    ), request_row(attrs.evolve(change, waiting_for=waiting_for)))


def _requests_written(store: Store, cursor: Any, changes: tuple[Change, ...]) -> tuple[UpdateRequest, ...]:
    """The batch's update requests as the table holds them now."""
    wanted = [change for change in changes if isinstance(change, UpdateRequest)]
    written = []
    for change in wanted:
        cursor.execute(store.sql("SELECT state, waiting_for FROM update_requests WHERE id = ?"), (change.id,))
        state, waiting_for = cursor.fetchone()
        written.append(attrs.evolve(change, state=state, waiting_for=tuple(json.loads(waiting_for)), check=False))
    return tuple(written)


def _ended_needed(
    store: Store, cursor: Any, changes: tuple[Change, ...], rejected: set[int]
) -> tuple[EndedRun, ...]:
    """The ended runs that the committed NewRuns' intercycle parents are in."""
    wanted = {
        (change.run.pipeline, moment)
        for position, change in enumerate(changes)
        if isinstance(change, NewRun) and position not in rejected
        for moment in change.needs
    }
    return ended_runs(store, cursor, wanted)


def _late_payload(notice: LateNotice) -> str:
    return codec.compact_json({
        "kind": notice.kind, "id": notice.id, "pipeline": notice.pipeline,
        "reference_time": codec.format_time(notice.reference_time), "step": notice.step,
        "index": notice.index, "late_after": codec.format_time(datetime.fromtimestamp(notice.deadline, UTC)),
    })


def _written_to_json(written: dict[int, IndexWritten]) -> str:
    """The index changes' outcomes, kept with the batch token so that a
    retried batch answers exactly as the commit it repeats."""
    return json.dumps({
        str(position): {
            "result": w.result, "error": w.error, "code": w.code,
            "deleted_paths": list(w.deleted_paths),
            "completed": [
                [c.instance_id, c.product, codec.format_time(c.reference_time), c.version,
                 sorted(c.complete_products)]
                for c in w.completed
            ],
        }
        for position, w in written.items()
    })


def _written_from_json(text: str | None) -> dict[int, IndexWritten]:
    if not text:
        return {}
    return {
        int(position): IndexWritten(
            result=w["result"], error=w["error"], code=w["code"],
            deleted_paths=tuple(w["deleted_paths"]),
            completed=tuple(
                CompletedInstance(i, p, codec.parse_time(t), v, frozenset(ps))
                for i, p, t, v, ps in w["completed"]
            ),
        )
        for position, w in json.loads(text).items()
    }


def _committed(
    changes: tuple[Change, ...], rejected: set[int], written: dict[int, IndexWritten], last_event_id: int,
) -> Committed:
    engine: list[NewRun | Run | Job | JobLog] = []
    refused: list[NewRun] = []
    index: list[IndexWritten] = []
    for position, change in enumerate(changes):
        if isinstance(change, INDEX_CHANGES):
            index.append(attrs.evolve(written[position], event_id=last_event_id))
        elif position in rejected:
            assert isinstance(change, NewRun)
            refused.append(change)
        elif not isinstance(change, (LateNotice, OperatorEvent, Control, Ack, UpdateRequest, Prune, *ALERT_CHANGES)):
            engine.append(change)  # not events, orders, marks or requests (Committed.requests)
    acks = tuple(change.request for change in changes if isinstance(change, Ack))
    return Committed(tuple(engine), tuple(refused), tuple(index), acks=acks, last_event_id=last_event_id)
