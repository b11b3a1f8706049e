"""Rows <-> model objects for the engine's tables (runs, jobs, job logs,
events, update requests): the one place that knows their column order. The index's rows are
in ``muppet/index/queries.py``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .. import codec
from ..messages import Operator, UpdateRequest
from ..model import Job, JobState, Run, RunCause, RunState

RUN_COLUMNS = "id, pipeline, reference_time, state, cause, created_at, ended_at, late, definition"
JOB_COLUMNS = (
    "id, run_id, pipeline, step, job_index, count, executor, state, failures,"
    " predecessor, successor, not_before, exit_code, reason, batch_id, host,"
    " created_at, submitted_at, started_at, ended_at, kill_requested, late"
)

REQUEST_COLUMNS = (
    "id, product, reference_time, pipeline, state, waiting_for, by_name, reason, created_at, done_at, run_id"
)

#: a row as the database driver takes it (ints, floats, strings, None)
Row = tuple[Any, ...]


def request_row(request: UpdateRequest) -> Row:
    return (
        request.id, request.product, codec.format_time(request.reference_time), request.pipeline, request.state,
        json.dumps(list(request.waiting_for)), request.by.name, request.by.reason, request.created_at,
        request.done_at, request.run_id,
    )


def request_from_row(row: Sequence[Any]) -> UpdateRequest:
    return UpdateRequest(
        id=row[0], product=row[1], reference_time=codec.parse_time(row[2]), pipeline=row[3], state=row[4],
        waiting_for=tuple(json.loads(row[5])), by=Operator(row[6], row[7]), created_at=row[8], done_at=row[9],
        run_id=row[10],
    )


def run_row(run: Run) -> Row:
    return (
        run.id, run.pipeline, codec.format_time(run.reference_time), run.state.value,
        run.cause.value, run.created_at, run.ended_at, int(run.late), run.definition,
    )


def run_from_row(row: Sequence[Any]) -> Run:
    return Run(
        id=row[0], pipeline=row[1], reference_time=codec.parse_time(row[2]),
        state=RunState(row[3]), cause=RunCause(row[4]), created_at=row[5], ended_at=row[6],
        late=bool(row[7]), definition=row[8],
    )


def job_row(job: Job) -> Row:
    return (
        job.id, job.run_id, job.pipeline, job.step, job.index, job.count, job.executor,
        job.state.value, job.failures, job.predecessor, job.successor, job.not_before,
        job.exit_code, job.reason, job.batch_id, job.host, job.created_at,
        job.submitted_at, job.started_at, job.ended_at, int(job.kill_requested), int(job.late),
    )


def job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0], run_id=row[1], pipeline=row[2], step=row[3], index=row[4], count=row[5],
        executor=row[6], state=JobState(row[7]), failures=row[8], predecessor=row[9],
        successor=row[10], not_before=row[11], exit_code=row[12], reason=row[13],
        batch_id=row[14], host=row[15], created_at=row[16], submitted_at=row[17],
        started_at=row[18], ended_at=row[19], kill_requested=bool(row[20]), late=bool(row[21]),
    )


def event_payload(thing: Run | Job) -> str:
    """The JSON of a run or job event: what ``codec`` makes of it."""
    data = codec.run_to_dict(thing) if isinstance(thing, Run) else codec.job_to_dict(thing)
    return codec.compact_json(data)
