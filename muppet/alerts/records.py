"""Incidents and their notices in the database: what the database task's
transaction writes of an alert change (``apply``, ``resolve_completed``),
and what the alerts task and the API read back.

Written on the database task's cursor, in the batch of the change that
caused them (docs/alerts.md, "Incidents"): the single writer decides
"opened once, resolved once" against what the database holds, so a restart
of the daemon, which forgets everything in memory, opens nothing twice.
Blocking, like all of ``muppet/db``: called from worker threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs

from .. import codec
from ..db.store import Store
from .changes import AckIncident, AlertChange, Delivered, OpenIncident, Remind, ResolveIncidents
from .kinds import PRODUCT_LATE, TAKEOVER

#: an events row: (at, kind, subject_id, payload, product), as muppet/db/writes.py appends them
EventRow = tuple[float, str, int, str, str | None]
Sql = Callable[[str], str]

INCIDENT_COLUMNS = (
    "id, kind, pipeline, step, subject, reference_time, run_id, job_id, summary, opened_at, resolved_at,"
    " resolution, acked_at, acked_by, ack_reason, reminded_at"
)


def _time(moment: datetime | None) -> str:
    return "" if moment is None else codec.format_time(moment)


# --- writing (inside the database task's transaction) --------------------------------


def apply(cursor: Any, sql: Sql, change: AlertChange, now: float, events: list[EventRow]) -> None:
    """Write one alert change on ``cursor`` (the batch's transaction)."""
    if isinstance(change, OpenIncident):
        _open(cursor, sql, change)
    elif isinstance(change, ResolveIncidents):
        _resolve(cursor, sql, change)
    elif isinstance(change, AckIncident):
        cursor.execute(sql(
            "UPDATE incidents SET acked_at = ?, acked_by = ?, ack_reason = ?"
            " WHERE id = ? AND resolved_at IS NULL AND acked_at IS NULL"
        ), (change.at, change.by, change.reason, change.incident_id))
        if cursor.rowcount == 1:
            payload = {"action": "ack", "by": change.by, "reason": change.reason,
                       "target": {"incident_id": change.incident_id}}
            events.append((now, "operator", 0, codec.compact_json(payload), None))
            # a takeover has no end of its own: an operator who has looked
            # at it ends it (docs/alerts.md, "Kinds")
            cursor.execute(sql("UPDATE incidents SET resolved_at = ?, resolution = ? WHERE id = ? AND kind = ?"),
                           (change.at, f"acknowledged by {change.by}", change.incident_id, TAKEOVER))
            if cursor.rowcount == 1:
                _notice(cursor, sql, change.incident_id, "resolve", change.at)
    elif isinstance(change, Delivered):
        insert = sql("INSERT INTO alert_sends (notice_id, destination, sent_at) VALUES (?, ?, ?)"
                     " ON CONFLICT (notice_id, destination) DO NOTHING")
        cursor.executemany(insert, [(notice, change.destination, change.at) for notice in change.notice_ids])
        if change.done:
            cursor.executemany(sql("UPDATE alert_notices SET done = 1 WHERE id = ?"), [(n,) for n in change.done])
    elif isinstance(change, Remind):
        for incident in change.incident_ids:
            cursor.execute(sql(
                "UPDATE incidents SET reminded_at = ? WHERE id = ? AND resolved_at IS NULL AND acked_at IS NULL"
                " AND reminded_at < ?"
            ), (change.at, incident, change.before))
            if cursor.rowcount == 1:
                _notice(cursor, sql, incident, "remind", change.at)


def _notice(cursor: Any, sql: Sql, incident_id: int, action: str, at: float) -> int:
    cursor.execute(sql("INSERT INTO alert_notices (incident_id, action, at) VALUES (?, ?, ?) RETURNING id"),
                   (incident_id, action, at))
    notice: int = cursor.fetchone()[0]
    return notice


def _open(cursor: Any, sql: Sql, change: OpenIncident) -> None:
    key = change.key
    cursor.execute(sql("SELECT 1 FROM incidents WHERE key = ? AND resolved_at IS NULL"), (key,))
    if cursor.fetchone() is not None:
        return  # open already: an incident opens once
    if change.once:
        cursor.execute(sql("SELECT 1 FROM incidents WHERE key = ? LIMIT 1"), (key,))
        if cursor.fetchone() is not None:
            return
    if change.unless_complete:
        cursor.execute(sql(
            "SELECT 1 FROM instances WHERE product = ? AND reference_time = ? AND completed_at IS NOT NULL LIMIT 1"
        ), (change.subject, _time(change.reference_time)))
        if cursor.fetchone() is not None:
            return
    cursor.execute(sql(
        "INSERT INTO incidents (key, kind, pipeline, step, subject, reference_time, run_id, job_id, summary,"
        " opened_at, reminded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
    ), (key, change.kind, change.pipeline, change.step, change.subject, _time(change.reference_time),
        change.run_id, change.job_id, change.summary, change.at, change.at))
    incident = cursor.fetchone()[0]
    notice = _notice(cursor, sql, incident, "trigger", change.at)
    if change.delivered_to:
        cursor.executemany(sql("INSERT INTO alert_sends (notice_id, destination, sent_at) VALUES (?, ?, ?)"),
                           [(notice, destination, change.at) for destination in change.delivered_to])


def _resolve(cursor: Any, sql: Sql, change: ResolveIncidents) -> None:
    marks = ", ".join("?" for _ in change.kinds)
    where = f"resolved_at IS NULL AND kind IN ({marks}) AND reference_time = ? AND subject = ?"
    params: list[Any] = [*change.kinds, _time(change.reference_time), change.subject]
    if change.pipeline is not None:
        where += " AND pipeline = ?"
        params.append(change.pipeline)
    if change.step is not None:
        where += " AND step = ?"
        params.append(change.step)
    cursor.execute(sql(f"SELECT id FROM incidents WHERE {where}"), params)
    for (incident,) in cursor.fetchall():
        cursor.execute(sql("UPDATE incidents SET resolved_at = ?, resolution = ? WHERE id = ?"),
                       (change.at, change.reason, incident))
        _notice(cursor, sql, incident, "resolve", change.at)


def resolve_completed(cursor: Any, sql: Sql, completed: Iterable[tuple[str, datetime]], now: float) -> None:
    """A product's instance that became complete in this transaction
    resolves its product_late incident: the late product arrived."""
    for product, reference_time in completed:
        _resolve(cursor, sql, ResolveIncidents(
            (PRODUCT_LATE,), now, "the instance is complete", pipeline=None, step=None, subject=product,
            reference_time=reference_time,
        ))


# --- reading (the alerts task's and the API's own read connections) -------------------


@attrs.frozen
class Incident:
    id: int
    kind: str
    pipeline: str
    step: str
    subject: str
    reference_time: str  # '' for the daemon's own troubles
    run_id: int | None
    job_id: int | None
    summary: str
    opened_at: float
    resolved_at: float | None
    resolution: str
    acked_at: float | None
    acked_by: str
    ack_reason: str
    reminded_at: float

    @property
    def dedup_key(self) -> str:
        """The incident's stable id in webhooks (PagerDuty's dedup_key): of
        its key and the moment it opened, so that an incident told while the
        database was away keeps it once written (docs/alerts.md, "Webhooks")."""
        return dedup_key(self.kind, self.pipeline, self.step, self.subject, self.reference_time, self.opened_at)

    def to_dict(self) -> dict[str, Any]:
        """The API's shape (docs/api.md, "alerts.list")."""
        return {
            "id": self.id, "dedup_key": self.dedup_key, "kind": self.kind, "state": self.state,
            "pipeline": self.pipeline, "step": self.step, "subject": self.subject,
            "reference_time": self.reference_time or None, "run_id": self.run_id, "job_id": self.job_id,
            "summary": self.summary, "opened_at": codec.format_time(self.opened_at),
            "resolved_at": _stamp(self.resolved_at), "resolution": self.resolution,
            "acked_at": _stamp(self.acked_at), "acked_by": self.acked_by or None,
            "ack_reason": self.ack_reason or None,
        }

    @property
    def state(self) -> str:
        if self.resolved_at is not None:
            return "resolved"
        return "acknowledged" if self.acked_at is not None else "open"


def dedup_key(kind: str, pipeline: str, step: str, subject: str, reference_time: str, opened_at: float) -> str:
    text = f"{'|'.join((kind, pipeline, step, subject, reference_time))}@{opened_at!r}"
    return f"muppet-{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _stamp(moment: float | None) -> str | None:
    return codec.format_time(moment)


def _incident(row: Sequence[Any]) -> Incident:
    return Incident(*row)


@attrs.frozen
class Notice:
    """A notice still pending, with its incident and the destinations that
    have it already."""

    id: int
    action: str
    at: float
    incident: Incident
    sent_to: frozenset[str] = frozenset()


#: notices read per pass: a bigger backlog is taken in the passes after
PENDING_LIMIT = 5000


def pending_notices(store: Store, limit: int = PENDING_LIMIT) -> list[Notice]:
    """The notices not yet delivered everywhere, oldest first."""
    columns = ", ".join(f"i.{c.strip()}" for c in INCIDENT_COLUMNS.split(","))

    def work(cursor: Any) -> list[Notice]:
        cursor.execute(store.sql(
            f"SELECT n.id, n.action, n.at, {columns} FROM alert_notices n JOIN incidents i ON i.id = n.incident_id"
            " WHERE n.done = 0 ORDER BY n.id LIMIT ?"
        ), (limit,))
        rows = cursor.fetchall()
        if not rows:
            return []
        sent: dict[int, set[str]] = {}
        cursor.execute(store.sql(
            "SELECT s.notice_id, s.destination FROM alert_sends s JOIN alert_notices n ON n.id = s.notice_id"
            " WHERE n.done = 0"
        ))
        for notice, destination in cursor.fetchall():
            sent.setdefault(notice, set()).add(destination)
        return [Notice(row[0], row[1], row[2], _incident(row[3:]), frozenset(sent.get(row[0], ())))
                for row in rows]

    return store.transaction(work, write=False)


def last_sent(store: Store) -> dict[str, float]:
    """When each destination was last sent a message: the digest's clock
    across a restart."""
    return {d: at for d, at in store.query("SELECT destination, MAX(sent_at) FROM alert_sends GROUP BY destination")}


def stderr_tail(store: Store, job_id: int) -> str:
    rows = store.query("SELECT stderr FROM job_logs WHERE job_id = ?", (job_id,))
    return str(rows[0][0] or "") if rows else ""


def due_reminders(store: Store, before: float) -> list[int]:
    """Open incidents nobody acknowledged, last told of before ``before``."""
    rows = store.query(
        "SELECT id FROM incidents WHERE resolved_at IS NULL AND acked_at IS NULL AND reminded_at < ? ORDER BY id",
        (before,),
    )
    return [row[0] for row in rows]


def list_incidents(store: Store, *, open_only: bool = False, limit: int = 100) -> list[Incident]:
    """Incidents, newest first; ``open_only``: those not resolved."""
    where = " WHERE resolved_at IS NULL" if open_only else ""
    rows = store.query(f"SELECT {INCIDENT_COLUMNS} FROM incidents{where} ORDER BY id DESC LIMIT ?", (int(limit),))
    return [_incident(row) for row in rows]


def get_incident(store: Store, incident_id: int) -> tuple[Incident, list[dict[str, Any]]] | None:
    """One incident and its notices, each with the destinations that have it."""
    rows = store.query(f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident_id,))
    if not rows:
        return None
    notices = store.query("SELECT id, action, at, done FROM alert_notices WHERE incident_id = ? ORDER BY id",
                          (incident_id,))
    sends = store.query(
        "SELECT s.notice_id, s.destination, s.sent_at FROM alert_sends s JOIN alert_notices n ON n.id = s.notice_id"
        " WHERE n.incident_id = ? ORDER BY s.sent_at", (incident_id,))
    return _incident(rows[0]), [
        {"id": n, "action": action, "at": codec.format_time(at), "pending": not done,
         "sent": [{"destination": d, "at": codec.format_time(t)} for notice, d, t in sends if notice == n]}
        for n, action, at, done in notices
    ]


def unfinished_references(store: Store, pipelines: Sequence[str], products: Sequence[str], since: str,
                          until: str) -> list[tuple[str, str, str]]:
    """(pipeline or '', product, reference time) of the runs of ``pipelines``
    and the incomplete instances of ``products`` with reference times in
    [since, until]: the instances that may be late."""
    found: list[tuple[str, str, str]] = []
    if pipelines:
        marks = ", ".join("?" for _ in pipelines)
        # those with a complete instance of a product of ``products`` are not late
        products_marks = ", ".join("?" for _ in products) or "''"
        for pipeline, moment in store.query(
            f"SELECT r.pipeline, r.reference_time FROM runs r WHERE r.pipeline IN ({marks})"
            " AND r.reference_time >= ? AND r.reference_time <= ? AND NOT EXISTS (SELECT 1 FROM instances i"
            f" WHERE i.product IN ({products_marks}) AND i.reference_time = r.reference_time"
            " AND i.completed_at IS NOT NULL)", (*pipelines, since, until, *products),
        ):
            found.append((pipeline, "", moment))
    if products:
        marks = ", ".join("?" for _ in products)
        for product, moment in store.query(
            f"SELECT product, reference_time FROM instances WHERE product IN ({marks})"
            " AND reference_time >= ? AND reference_time <= ?"
            " GROUP BY product, reference_time HAVING MAX(completed_at) IS NULL",
            (*products, since, until),
        ):
            found.append(("", product, moment))
    return found


def stale_troubles(store: Store, before: float) -> list[tuple[int, str]]:
    """(id, executor) of the open executor_down incidents opened before
    ``before`` (by a daemon before this one), whose executor has started
    a job since ``before``: over."""
    return [(row[0], row[1]) for row in store.query(
        "SELECT i.id, i.subject FROM incidents i WHERE i.kind = 'executor_down' AND i.resolved_at IS NULL"
        " AND i.opened_at < ? AND EXISTS (SELECT 1 FROM jobs j WHERE j.executor = i.subject AND j.started_at >= ?)",
        (before, before),
    )]


def complete(store: Store, product: str, reference_time: str) -> bool:
    rows = store.query("SELECT 1 FROM instances WHERE product = ? AND reference_time = ? AND completed_at IS NOT NULL"
                       " LIMIT 1", (product, reference_time))
    return bool(rows)


def ever_opened(store: Store, key: str) -> bool:
    return bool(store.query("SELECT 1 FROM incidents WHERE key = ? LIMIT 1", (key,)))
