"""The API's methods for the operator's console and the on-call commands:
``daemon.status`` (the whole daemon at a glance), ``pipelines.get`` and
``pipelines.status``, ``runs.search``, ``jobs.output`` (a job's output as it
grows), ``jobs.command`` and ``session.authenticate``. docs/api.md documents
each with a request and its reply; docs/console.md shows the page that
calls them.

Reads go through the read pool (``ctx.query``) and ``muppet/summary.py``.
A job's output is read from its files under ``[daemon] state_dir``
(``muppet/executor/jobdir.py`` names them; a batch job writes the same files
on the shared file system), in a worker thread: reading a file blocks.
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from .. import codec, model, summary
from ..db import reads
from ..db.lease import read_standing
from ..executor.jobdir import JobDir, job_environment
from ..messages import DRAINING, NOT_FOUND, PAUSED_PREFIX, StartJob
from .context import Connection, Context
from .protocol import DATABASE_UNAVAILABLE, INVALID_PARAMS, UNAUTHORIZED, RpcError

T = TypeVar("T")
U = TypeVar("U")

#: the longest list of running jobs daemon.status gives
RUNNING_SHOWN = 100
#: the next cron firings pipelines.get gives
FIRINGS_SHOWN = 5
#: how often jobs.output looks at a growing file while it waits
OUTPUT_POLL = 0.2


async def _best_effort(ctx: Context, fn: Any, *args: Any) -> Any:
    """``ctx.query(fn, *args)``, or None while the database is away: the
    status of a daemon whose database is down is still worth telling."""
    try:
        return await ctx.query(fn, *args)
    except RpcError as error:
        if error.code == DATABASE_UNAVAILABLE:
            return None
        raise


async def daemon_status(ctx: Context, version: str) -> dict[str, Any]:
    """The answer of ``daemon.status`` (docs/api.md, "daemon.status")."""
    now = time.time()
    health = ctx.health
    jobs, others = await _side_by_side(
        partial(_best_effort, ctx, summary.jobs_by_pipeline_and_state), partial(_best_effort, ctx, _status_reads),
    )
    active, running, orders, standing = (None, None, None, None) if others is None else others
    by_state: dict[str, int] | None = None
    if jobs is not None:
        by_state = {}
        for (_, state), count in sorted(jobs.items()):
            by_state[state] = by_state.get(state, 0) + count
    moment = summary.utc_now(now)
    firings = {}
    for name in sorted(ctx.config.pipelines):
        found = summary.next_firings(ctx.config.pipelines[name], moment)
        firings[name] = codec.format_time(found[0]) if found else None
    return {
        "version": version,
        # this daemon's role, the active one and the standbys
        # (docs/operations.md, "Running a standby")
        "role": "active" if ctx.role.active else "standby",
        "active": None if standing is None or standing.active is None else standing.active.to_dict(),
        "standbys": None if standing is None else [holder.to_dict() for holder in standing.standbys],
        "pipelines": sorted(ctx.config.pipelines),
        "started_at": codec.format_time(ctx.started_at),
        "uptime_seconds": round(now - ctx.started_at, 3),
        "database": {
            "name": health.name,
            "available": health.available,
            "outages": health.outages,
            "outage_seconds": round(health.outage_seconds(), 3),
            "cause": None if health.available else health.cause,
        },
        "executors": [
            {"name": e.name, "type": e.type, "used": None if active is None else active.get(e.name, 0),
             "max": e.max_jobs}
            for e in ctx.config.executors.values()
        ],
        "jobs": by_state,
        "running": None if running is None else [codec.job_to_dict(j) for j in running],
        "next_firings": firings,
        # operators' standing orders (docs/cli.md, "muppet drain", "muppet pause")
        "draining": None if orders is None else _order(orders.get(DRAINING)),
        "paused": None if orders is None else {
            key.removeprefix(PAUSED_PREFIX): _order(value)
            for key, value in sorted(orders.items()) if key.startswith(PAUSED_PREFIX)
        },
    }


async def _side_by_side(first: Callable[[], Awaitable[T]], second: Callable[[], Awaitable[U]]) -> tuple[T, U]:
    """``first()`` and ``second()`` at once: daemon.status counts the
    running runs' jobs on one read connection while the other reads go on
    another, since the count alone takes as long as they do together
    (PostgreSQL, a run of 10,000 jobs being written: 3-4 ms quiet, p50 10 ms
    under bench/scale.py's fan-out). An error of either is raised as it is,
    not in an exception group: the handler answers it like any other."""
    results: list[Any] = [None, None]
    errors: list[Exception] = []

    async def run(index: int, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[index] = await fn()
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, first)
        nursery.start_soon(run, 1, second)
    if errors:
        raise errors[0]
    return results[0], results[1]


def _status_reads(store: Any) -> tuple[Any, ...]:
    """Four reads of daemon.status, in one worker thread: one hop, not
    four, each of which waits its turn on a busy daemon (the console's
    overview asks for it on every first paint, bench/console.py)."""
    return (
        summary.active_by_executor(store),
        summary.running_jobs(store, RUNNING_SHOWN),
        reads.controls(store),
        read_standing(store),
    )


def _order(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A standing order as the API shows it: who, why, since when."""
    return None if value is None else {"by": value["by"], "reason": value["reason"], "since": value["since"]}


def _jsonable(inst: Any, field: Any, value: Any) -> Any:
    """attrs.asdict's value_serializer: enums by value, times as the API
    writes them."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return codec.format_time(value)
    return value


def _pipeline(ctx: Context, name: str) -> model.Pipeline:
    pipeline = ctx.config.pipelines.get(name)
    if pipeline is None:
        raise RpcError(NOT_FOUND, f"unknown pipeline {name!r}", {"pipeline": name})
    return pipeline


async def pipelines_get(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    pipeline = _pipeline(ctx, params["pipeline"])
    described = attrs.asdict(pipeline, value_serializer=_jsonable)
    steps = []
    for step in pipeline.steps.values():
        fields = attrs.asdict(step, value_serializer=_jsonable)
        fields["children"] = list(pipeline.children(step.name))
        steps.append(fields)
    described["steps"] = steps
    firings = summary.next_firings(pipeline, summary.utc_now(time.time()), FIRINGS_SHOWN)
    described["next_firings"] = [codec.format_time(f) for f in firings]
    return described


async def pipelines_status(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    pipelines = ctx.config.pipelines
    found = await ctx.query(_overview_reads, list(pipelines))
    runs, jobs, newest, latest, unfinished = found
    return summary.pipeline_status(
        pipelines, runs=runs, jobs=jobs, newest=newest, latest_reference=latest,
        unfinished=unfinished, now=summary.utc_now(time.time()),
    )


def _overview_reads(store: Any, pipelines: list[str]) -> tuple[Any, ...]:
    """The five reads of pipelines.status, in one worker thread."""
    return (
        summary.runs_by_pipeline_and_state(store),
        summary.jobs_by_pipeline_and_state(store),
        summary.newest_runs(store, pipelines),
        summary.latest_reference_times(store, pipelines),
        summary.unfinished_runs(store),
    )


def _time(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return codec.parse_time(value)
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: {name!r} {exc}", {"param": name}) from None


async def runs_search(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    runs = await ctx.query(
        summary.list_runs,
        pipeline=params["pipeline"], state=params["state"],
        begin=_time("begin", params["begin"]), end=_time("end", params["end"]),
        limit=params["limit"], before_id=params["before_id"],
    )
    return [codec.run_to_dict(r) for r in runs]


async def _job(ctx: Context, job_id: int) -> model.Job:
    job = await ctx.query(reads.get_job, job_id)
    if job is None:
        raise RpcError(NOT_FOUND, f"unknown job {job_id}", {"job_id": job_id})
    return job


async def jobs_command(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    job = await _job(ctx, params["job_id"])
    job_dir = JobDir(ctx.config.daemon.state_dir, job.id)
    answer: dict[str, Any] = {
        "job_id": job.id, "command": None, "environment": {},
        "job_dir": job_dir.root, "scratch": job_dir.scratch,
    }
    run = await ctx.query(reads.get_run, job.run_id)
    # the definition its run was made with, which it runs under whatever a
    # reload changed since (docs/operations.md, "Reload"); a run made before
    # definitions were kept runs under its pipeline's current one
    pipeline = None if run is None or not run.definition else await ctx.query(reads.get_definition, run.definition)
    pipeline = pipeline or ctx.config.pipelines.get(job.pipeline)
    step = None if pipeline is None else pipeline.steps.get(job.step)
    if step is None or run is None:
        return answer
    try:
        environment = job_environment(job_dir, StartJob(job, step, run.reference_time))
    except ValueError:
        environment = {}  # a bad variable name: the job could not start either
    return {**answer, "command": step.command, "environment": environment}


@attrs.frozen
class Output:
    """A piece of a job's output file, as ``read_output`` found it."""

    #: the byte offset of ``text`` in the file
    offset: int
    #: the offset just after the bytes ``text`` holds
    next: int
    #: the file's size when it was read
    size: int
    text: str


def _continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def read_output(path: str, offset: int | None, limit: int, whole: bool) -> Output | None:
    """Up to ``limit`` bytes of the file at ``path`` from ``offset`` (None:
    its last ``limit`` bytes), as text; None when there is no such file.

    UTF-8 characters are never cut: a piece that starts in the middle of
    one begins after it (a tail) and one that ends in the middle of one
    stops before it (``next`` points there), unless ``whole`` (the file
    will not grow: its end is its end). Blocks: call it in a worker thread.
    """
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            start = max(0, size - limit) if offset is None else min(offset, size)
            file.seek(start)
            data = file.read(limit)
    except FileNotFoundError:
        return None
    if offset is None and start > 0:
        cut = 0
        while cut < min(3, len(data)) and _continuation(data[cut]):
            cut += 1
        data, start = data[cut:], start + cut
    end = len(data)
    if not (whole and start + end >= size):
        # drop an incomplete last character: its other bytes come next time
        back = 0
        while back < min(3, end) and _continuation(data[end - 1 - back]):
            back += 1
        if back < end and data[end - 1 - back] >= 0xC0:
            lead = data[end - 1 - back]
            needed = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            if back + 1 < needed:
                end -= back + 1
    return Output(offset=start, next=start + end, size=size,
                  text=data[:end].decode("utf-8", errors="replace"))


async def jobs_output(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    job = await _job(ctx, params["job_id"])
    stream: str = params["stream"]
    offset: int | None = params["offset"]
    limit: int = params["limit"]
    job_dir = JobDir(ctx.config.daemon.state_dir, job.id)
    path = job_dir.stdout if stream == "stdout" else job_dir.stderr
    deadline = trio.current_time() + params["wait"]
    seen = ctx.hub.position
    while True:
        ended = job.state.finished
        piece = await trio.to_thread.run_sync(read_output, path, offset, limit, ended)
        if piece is None and ended:
            return await _kept_tail(ctx, job, stream)
        if piece is None:
            piece = Output(offset=0, next=0, size=0, text="")
        more = not ended or piece.next < piece.size
        if piece.text or not more or trio.current_time() >= deadline:
            return {
                "job_id": job.id, "stream": stream, "text": piece.text, "offset": piece.offset,
                "next": piece.next, "size": piece.size, "ended": ended, "more": more, "kept": "file",
            }
        # nothing new yet: wait for the file to grow or the job to end
        await trio.sleep(OUTPUT_POLL)
        if ctx.hub.position != seen:
            seen = ctx.hub.position
            job = await _job(ctx, job.id)
        if offset is None:
            offset = piece.next


async def _kept_tail(ctx: Context, job: model.Job, stream: str) -> dict[str, Any]:
    """An ended job whose file is gone: the tail the database kept."""
    kept = await ctx.query(reads.get_job_log, job.id)
    text = "" if kept is None else getattr(kept, stream)
    return {
        "job_id": job.id, "stream": stream, "text": text, "offset": None, "next": None, "size": None,
        "ended": True, "more": False, "kept": "database",
    }


async def session_authenticate(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    api = ctx.config.api
    if not api.tokens_file:
        return {"name": None, "role": model.ROLES[-1]}
    digest = hashlib.sha256(params["token"].encode()).hexdigest()
    token = api.tokens.get(digest)
    if token is None:
        raise RpcError(UNAUTHORIZED, "unauthorized: the token sent is not in the tokens file")
    conn.role, conn.token_name, conn.token_problem, conn.token_digest = token.role, token.name, "", digest
    return {"name": token.name, "role": token.role}


HANDLERS = {
    "pipelines.get": pipelines_get,
    "pipelines.status": pipelines_status,
    "runs.search": runs_search,
    "jobs.output": jobs_output,
    "jobs.command": jobs_command,
    "session.authenticate": session_authenticate,
}
