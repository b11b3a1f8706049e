"""Runs and jobs as plain JSON-able dicts: one shape for the API, the CLI's
``--json`` and the event table's payloads; and pipeline definitions as the
canonical JSON that names them by hash.

Times go out as ISO 8601 strings in UTC with a ``Z`` (``2026-11-28T06:15:00Z``);
a reference time keeps whole seconds, other timestamps keep milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, overload

from .model import Depends, IntercycleParent, Job, JobState, Pipeline, RetryPolicy, Run, RunCause, RunState, Step

if TYPE_CHECKING:
    from .messages import UpdateRequest


@overload
def format_time(moment: datetime | float) -> str: ...
@overload
def format_time(moment: None) -> None: ...
@overload
def format_time(moment: datetime | float | None) -> str | None: ...


def format_time(moment: datetime | float | None) -> str | None:
    """A reference time as whole seconds, any other timestamp (seconds since
    the epoch) with milliseconds, both in UTC with a ``Z``; None stays None."""
    if moment is None:
        return None
    if isinstance(moment, (int, float)):
        return _format_timestamp(moment)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=8192)
def _format_timestamp(moment: float) -> str:
    # remembered: a job's event carries its creation, submission, start and
    # end times, and each next event of it the same ones again
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: compact JSON text, as the event log and the API write it: ``json.dumps``
#: given any option builds an encoder on each call, these are built once
compact_json = json.JSONEncoder(separators=(",", ":")).encode
#: the same with characters beyond ASCII as they are
compact_json_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; a time without zone is UTC.

    Raises ValueError naming the text when it is not a time.
    """
    moment = _from_iso(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_zoned_time(text: str, source: str) -> datetime:
    """An ISO 8601 time that states its zone (``Z`` or an offset such as
    ``+01:00``), as an aware UTC datetime.

    For times another program or file hands over (muppet-sync reading the
    index's file records), where a time without a zone is a mistake to
    report, not UTC to assume: read as local time or as UTC, it would move a
    file's expiry or reference time by hours without a word.

    Raises ValueError starting with ``source`` (where the text came from: a
    configuration key, an index field) when the text is not a time or has no
    zone.
    """
    try:
        moment = _from_iso(text)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    if moment.tzinfo is None:
        raise ValueError(
            f"{source}: {text!r} has no time zone; give it in UTC with a Z (2026-12-01T06:00:00Z) or with an offset"
        )
    return moment.astimezone(UTC)


def _from_iso(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None


def request_to_dict(request: UpdateRequest) -> dict[str, Any]:
    """A request for a product update as the API shows it (docs/api.md,
    "products.request_update")."""
    return {
        "id": request.id,
        "product": request.product,
        "reference_time": format_time(request.reference_time),
        "pipeline": request.pipeline,
        "state": request.state,
        "waiting_for": list(request.waiting_for),
        "by": request.by.name,
        "reason": request.by.reason,
        "created_at": format_time(request.created_at),
        "done_at": format_time(request.done_at),
        "run_id": request.run_id,
    }


def run_to_dict(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "pipeline": run.pipeline,
        "reference_time": format_time(run.reference_time),
        "state": run.state.value,
        "cause": run.cause.value,
        "created_at": format_time(run.created_at),
        "ended_at": format_time(run.ended_at),
        "late": run.late,
        "definition": run.definition,
    }


def job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "run_id": job.run_id,
        "pipeline": job.pipeline,
        "step": job.step,
        "index": job.index,
        "count": job.count,
        "executor": job.executor,
        "state": job.state.value,
        "exit_code": job.exit_code,
        "failures": job.failures,
        "predecessor": job.predecessor,
        "successor": job.successor,
        "not_before": format_time(job.not_before) if job.not_before else None,
        "reason": job.reason,
        "batch_id": job.batch_id,
        "host": job.host,
        "created_at": format_time(job.created_at),
        "submitted_at": format_time(job.submitted_at),
        "started_at": format_time(job.started_at),
        "ended_at": format_time(job.ended_at),
        "kill_requested": job.kill_requested,
        "late": job.late,
    }


def _timestamp(text: str | None) -> float | None:
    return None if text is None else parse_time(text).timestamp()


def run_from_dict(data: dict[str, Any]) -> Run:
    return Run(
        id=data["id"],
        pipeline=data["pipeline"],
        reference_time=parse_time(data["reference_time"]),
        state=RunState(data["state"]),
        cause=RunCause(data["cause"]),
        created_at=_timestamp(data["created_at"]) or 0.0,
        ended_at=_timestamp(data["ended_at"]),
        late=data.get("late", False),
        definition=data.get("definition", ""),
    )


def job_from_dict(data: dict[str, Any]) -> Job:
    return Job(
        id=data["id"],
        run_id=data["run_id"],
        pipeline=data["pipeline"],
        step=data["step"],
        index=data["index"],
        count=data["count"],
        executor=data["executor"],
        state=JobState(data["state"]),
        exit_code=data["exit_code"],
        failures=data["failures"],
        predecessor=data["predecessor"],
        successor=data["successor"],
        not_before=_timestamp(data["not_before"]) or 0.0,
        reason=data["reason"],
        batch_id=data["batch_id"],
        host=data["host"],
        created_at=_timestamp(data["created_at"]) or 0.0,
        submitted_at=_timestamp(data["submitted_at"]),
        started_at=_timestamp(data["started_at"]),
        ended_at=_timestamp(data["ended_at"]),
        kill_requested=data.get("kill_requested", False),
        late=data.get("late", False),
    )


# --- pipeline definitions ----------------------------------------------------------
# A run finishes under the definition of its pipeline it was made with, whatever
# a reload changes (docs/operations.md, "Reload"): the definitions table keeps
# each one as JSON, by the SHA-256 of that JSON. Canonical: keys sorted, no
# spaces, steps as a list in their (topological) order, so that one definition
# always gives one hash. The round trip gives back an equal Pipeline; a field
# added to Pipeline or Step must be added here (tests/test_reload_core.py
# checks that every field is).


def pipeline_to_json(pipeline: Pipeline) -> dict[str, Any]:
    """Every field of ``pipeline`` as JSON-able values."""
    return {
        "name": pipeline.name,
        "owner": pipeline.owner,
        "steps": [_step_to_json(step) for step in pipeline.steps.values()],
        "requires": list(pipeline.requires),
        "produces": list(pipeline.produces),
        "cron": list(pipeline.cron),
        "timezone": pipeline.timezone,
        "source": pipeline.source,
        "initial": format_time(pipeline.initial),
        "runahead": pipeline.runahead,
        "catchup": pipeline.catchup,
        "catchup_limit": pipeline.catchup_limit,
        "expire_after": pipeline.expire_after,
        "late_after": pipeline.late_after,
    }


def _step_to_json(step: Step) -> dict[str, Any]:
    return {
        "name": step.name,
        "command": step.command,
        "parents": list(step.parents),
        "jobs": step.jobs,
        "depends": step.depends.value,
        "concurrency": step.concurrency,
        "conflicts": list(step.conflicts),
        "env": dict(step.env),
        "executor": step.executor,
        "outputs": list(step.outputs),
        "retry": {"tries": step.retry.tries, "interval": step.retry.interval, "factor": step.retry.factor},
        "resources": dict(step.resources),
        "product": step.product,
        "intercycle": [{"step": parent.step, "offset": parent.offset} for parent in step.intercycle],
        "not_before": step.not_before,
        "expire_after": step.expire_after,
        "late_after": step.late_after,
    }


def pipeline_from_json(data: Mapping[str, Any]) -> Pipeline:
    """The Pipeline that :func:`pipeline_to_json` gave ``data`` for."""
    initial = data["initial"]
    return Pipeline(
        name=data["name"],
        owner=data["owner"],
        steps={step["name"]: _step_from_json(step) for step in data["steps"]},
        requires=tuple(data["requires"]),
        produces=tuple(data["produces"]),
        cron=tuple(data["cron"]),
        timezone=data["timezone"],
        source=data["source"],
        initial=None if initial is None else parse_time(initial),
        runahead=data["runahead"],
        catchup=data["catchup"],
        catchup_limit=data["catchup_limit"],
        expire_after=data["expire_after"],
        late_after=data["late_after"],
    )


def _step_from_json(data: Mapping[str, Any]) -> Step:
    retry = data["retry"]
    return Step(
        name=data["name"],
        command=data["command"],
        parents=tuple(data["parents"]),
        jobs=data["jobs"],
        depends=Depends(data["depends"]),
        concurrency=data["concurrency"],
        conflicts=tuple(data["conflicts"]),
        env=data["env"],
        executor=data["executor"],
        outputs=tuple(data["outputs"]),
        retry=RetryPolicy(tries=retry["tries"], interval=float(retry["interval"]), factor=float(retry["factor"])),
        resources=data["resources"],
        product=data["product"],
        intercycle=tuple(IntercycleParent(p["step"], p["offset"]) for p in data["intercycle"]),
        not_before=data["not_before"],
        expire_after=data["expire_after"],
        late_after=data["late_after"],
    )


def definition_text(pipeline: Pipeline) -> str:
    """The canonical JSON of a pipeline's definition, as the definitions
    table keeps it."""
    return json.dumps(pipeline_to_json(pipeline), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def definition_hash(text: str) -> str:
    """The hash that names a definition: the SHA-256 of its canonical JSON,
    in hex."""
    return hashlib.sha256(text.encode()).hexdigest()
