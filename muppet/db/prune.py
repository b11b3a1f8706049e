"""Pruning the history: what is older than ``[daemon] keep_history`` goes,
a chunk per transaction (docs/database.md, "Pruning").

``prune`` runs inside a transaction of the database task (``writes.write``),
as every write does: the daemon's one writer stays the only one, the
lease's epoch is checked first (a daemon taken over from prunes nothing),
and a chunk shares its commit with whatever else waited for the writer. A
chunk removes at most about ``Prune.limit`` rows, so a commit of the
scheduler's that comes meanwhile waits for one chunk at most; the history
task (``muppet/history.py``) sends the next one only after a pause as long
as the last one took.

What goes, oldest first:

- finished runs (succeeded, failed, expired) that ended before
  ``Prune.before``, with their jobs and the jobs' log tails. A run of many
  jobs goes over several chunks: its jobs first, the run itself last (the
  foreign keys' order), so that for a moment a reader may see a run that has
  lost some of its jobs. Kept whatever their age: each pipeline's newest
  run made by cron (cron's catch-up after a restart counts from it,
  ``muppet/cron.py``), the ended runs that an unfinished run waits on through
  an intercycle parent (a restart reads them back, ``reads.load_snapshot``),
  and a run that still has an unfinished job (none should: a run ends when
  its every slot has);
- events before ``Prune.before``, as a prefix of the log: from the oldest up
  to the first one that is not older, so that "every event up to N is gone"
  holds and a reader asking for one of them is told where the kept ones start
  (``index/queries.events_since``);
- the pipeline definitions no run uses any more.

The ``pruned`` row (schema migration 8) keeps the highest event, run and job
numbers removed: ids go on above them (``reads.load_snapshot``,
``reads.last_event_id``) even once everything was pruned.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .. import codec
from ..messages import Prune, Pruned
from ..model import JobState, Pipeline, RunCause, RunState
from ..scheduler import cycling
from .store import Store

FINISHED_RUNS = tuple(state.value for state in RunState if state.finished)
UNFINISHED_RUNS = tuple(state.value for state in RunState if not state.finished)
UNFINISHED_JOBS = tuple(state.value for state in JobState if not state.finished)
#: finished runs looked at per chunk (a chunk goes on at the next run)
RUNS_PER_CHUNK = 200

#: parsed definitions by hash: a definition never changes once written
_DEFINITIONS: dict[str, Pipeline] = {}
_DEFINITIONS_KEPT = 256


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def prune(store: Store, cursor: Any, change: Prune, now: float) -> Pruned:
    """Remove at most about ``change.limit`` rows of history older than
    ``change.before``, on ``cursor`` inside the caller's transaction; what
    was removed, and where the next chunk goes on (``Pruned.more``: the
    chunk was full)."""

    def rows(text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor.execute(store.sql(text), tuple(params))
        return list(cursor.fetchall())

    def delete(text: str, params: Sequence[Any]) -> int:
        cursor.execute(store.sql(text), tuple(params))
        count: int = cursor.rowcount
        return count

    budget = change.limit
    runs = jobs = logs = events = definitions = 0
    after = change.after_run
    top_run = top_job = top_event = 0
    more = False
    candidates = rows(
        f"SELECT id, pipeline, reference_time FROM runs WHERE id > ? AND state IN ({_marks(FINISHED_RUNS)})"
        " AND COALESCE(ended_at, created_at) < ? ORDER BY id LIMIT ?",
        (after, *FINISHED_RUNS, change.before, RUNS_PER_CHUNK),
    )
    if candidates:
        kept, whole = _kept_runs(store, cursor, {pipeline for _, pipeline, _ in candidates})
        busy = {row[0] for row in rows(
            f"SELECT DISTINCT run_id FROM jobs WHERE state IN ({_marks(UNFINISHED_JOBS)})", UNFINISHED_JOBS)}
        more = len(candidates) == RUNS_PER_CHUNK
        for run_id, pipeline, reference_time in candidates:
            if budget <= 0:
                more = True
                break
            if (pipeline, reference_time) in kept or pipeline in whole or run_id in busy:
                after = run_id
                continue
            asked = max(1, budget // 2)  # a job and its log tail are two rows
            found = rows("SELECT id FROM jobs WHERE run_id = ? ORDER BY id LIMIT ?", (run_id, asked))
            if found:
                last = found[-1][0]
                logs += delete("DELETE FROM job_logs WHERE job_id IN"
                               " (SELECT id FROM jobs WHERE run_id = ? AND id <= ?)", (run_id, last))
                jobs += delete("DELETE FROM jobs WHERE run_id = ? AND id <= ?", (run_id, last))
                top_job = max(top_job, last)
                budget -= 2 * len(found)
            if len(found) == asked:
                # the run may have more jobs: the next chunk goes on with it
                more = True
                break
            runs += delete("DELETE FROM runs WHERE id = ?", (run_id,))
            budget -= 1
            top_run = max(top_run, run_id)
            after = run_id
    if budget > 0:
        oldest = rows("SELECT id, at FROM events ORDER BY id LIMIT ?", (budget,))
        for event_id, at in oldest:
            if at >= change.before:
                break
            top_event = event_id
        else:
            more = more or len(oldest) == budget
        if top_event:
            events = delete("DELETE FROM events WHERE id <= ?", (top_event,))
            budget -= events
    if runs:
        definitions = delete(
            "DELETE FROM definitions WHERE NOT EXISTS (SELECT 1 FROM runs WHERE runs.definition = definitions.hash)",
            (),
        )
    if top_run or top_job or top_event:
        row = rows("SELECT events, runs, jobs, at FROM pruned WHERE id = 1")[0]
        cursor.execute(store.sql("UPDATE pruned SET events = ?, runs = ?, jobs = ?, at = ? WHERE id = 1"), (
            max(row[0], top_event), max(row[1], top_run), max(row[2], top_job), now if top_event else row[3],
        ))
    return Pruned(runs=runs, jobs=jobs, logs=logs, events=events, definitions=definitions, after_run=after,
                  more=more)


def _kept_runs(store: Store, cursor: Any, pipelines: Iterable[str]) -> tuple[set[tuple[str, str]], set[str]]:
    """The finished runs of ``pipelines`` that are kept whatever their age,
    as ``(pipeline, reference time)``, and the pipelines whose every run is
    kept for now (an unfinished run of theirs has no definition to say what
    it waits on)."""
    kept: set[tuple[str, str]] = set()
    whole: set[str] = set()
    names = sorted(pipelines)
    for name in names:
        # cron's catch-up after a restart starts from the newest cron run
        cursor.execute(store.sql(
            "SELECT reference_time FROM runs WHERE pipeline = ? AND cause = ? ORDER BY reference_time DESC LIMIT 1"
        ), (name, RunCause.CRON.value))
        newest = cursor.fetchone()
        if newest is not None:
            kept.add((name, newest[0]))
    cursor.execute(store.sql(
        f"SELECT pipeline, reference_time, definition FROM runs WHERE state IN ({_marks(UNFINISHED_RUNS)})"
        f" AND pipeline IN ({_marks(names)})"
    ), (*UNFINISHED_RUNS, *names))
    for name, reference_time, key in cursor.fetchall():
        definition = _definition(store, cursor, key) if key else None
        if definition is None:
            whole.add(name)
            continue
        for moment in cycling.parent_references(definition, codec.parse_time(reference_time)):
            kept.add((name, codec.format_time(moment)))
    return kept, whole


def _definition(store: Store, cursor: Any, key: str) -> Pipeline | None:
    found = _DEFINITIONS.get(key)
    if found is not None:
        return found
    cursor.execute(store.sql("SELECT definition FROM definitions WHERE hash = ?"), (key,))
    row = cursor.fetchone()
    if row is None:
        return None
    if len(_DEFINITIONS) >= _DEFINITIONS_KEPT:
        _DEFINITIONS.clear()
    found = _DEFINITIONS[key] = codec.pipeline_from_json(json.loads(row[0]))
    return found
