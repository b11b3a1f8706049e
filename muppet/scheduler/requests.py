"""Requests for product updates, as the scheduler core carries them out
(MUPPET design: the API "receives external requests for product updates,
which are sent to the scheduler"; docs/api.md, "products.request_update").

A request names a product and a reference time; the API has found the
pipeline that produces the product. The core writes the request, waiting
for the products that pipeline requires; the database works out, in the
same transaction, which of them have no complete instance for that time yet
(messages.UpdateRequest). A request with nothing to wait for is carried out
at once; one that waits is carried out when the last of those products
completes (a ``CompletedInstance`` of a later commit), across a restart too
(the snapshot works ``waiting_for`` out again).

Carried out: the pipeline gets a run for the reference time; when it has
one, the slots of the steps that make the product run again, with
everything downstream of them (an ended run is reopened). The reply names
the run; the request ends "done" ("refused" when it cannot be carried out: its
pipeline was configured away, or a step that makes the product waits on a
parent that failed; the requester is told why).

Part of the sans-I/O core, like operators.py: functions of a
``core.Scheduler`` working on its state through the same rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..codec import format_time
from ..messages import (
    CONFLICT,
    NOT_FOUND,
    Ack,
    Change,
    CompletedInstance,
    Reply,
    RequestUpdate,
    UpdateRequest,
)
from ..model import Job, Pipeline, Run, RunCause
from . import operators

if TYPE_CHECKING:
    from .core import Effect, Scheduler


@attrs.frozen
class Asked:
    """What the core keeps of a request until it is carried out: the API's
    request number (0 once answered, or after a restart) and the existing
    run the API found, if any (it may have ended)."""

    request: int = 0
    run: Run | None = None
    jobs: tuple[Job, ...] = ()


def request_update(core: Scheduler, event: RequestUpdate, changes: list[Change], now: float) -> list[Effect]:
    pipeline = core.pipelines.get(event.pipeline)
    if pipeline is None:
        return [operators._error(event.request, NOT_FOUND, f"unknown pipeline {event.pipeline!r}")]
    if event.product not in pipeline.produces:
        return [operators._error(event.request, NOT_FOUND,
                                 f"pipeline {pipeline.name} does not produce product {event.product!r}")]
    made = UpdateRequest(
        id=core.next_request_id,
        product=event.product,
        reference_time=event.reference_time,
        pipeline=pipeline.name,
        state="waiting",
        waiting_for=tuple(pipeline.requires),
        by=event.by,
        created_at=now,
        check=True,
    )
    core.next_request_id += 1
    core.requests_asked[made.id] = Asked(event.request, event.run, event.jobs)
    changes.append(made)
    target = {"request_id": made.id, "product": made.product, "pipeline": made.pipeline,
              "reference_time": format_time(made.reference_time)}
    operators.operator_event(core, "request", event.by, target, changes)
    return []


def persisted(core: Scheduler, written: tuple[UpdateRequest, ...], changes: list[Change],
              now: float) -> list[Effect]:
    """Requests as committed: one still waiting is kept and answered as
    waiting; one with nothing left to wait for is carried out."""
    effects: list[Effect] = []
    for request in written:
        if request.state != "waiting":
            continue
        asked = core.requests_asked.get(request.id, Asked())
        if request.waiting_for:
            core.waiting_requests[request.id] = request
            if asked.request:
                result = _result(request)
                effects.append(operators._answer(asked.request, result))
                core.requests_asked[request.id] = attrs.evolve(asked, request=0)
            continue
        effects.extend(_carry_out(core, request, changes, now))
    return effects


def completed(core: Scheduler, instance: CompletedInstance, changes: list[Change], now: float) -> list[Effect]:
    """A product became complete for a time: the requests waiting for it
    wait for one product less, and those left waiting for none are carried
    out."""
    effects: list[Effect] = []
    for request in sorted(core.waiting_requests.values(), key=lambda r: r.id):
        if request.reference_time != instance.reference_time or instance.product not in request.waiting_for:
            continue
        left = tuple(p for p in request.waiting_for if p not in instance.complete_products)
        if left:
            core.waiting_requests[request.id] = attrs.evolve(request, waiting_for=left)
            changes.append(attrs.evolve(request, waiting_for=left))
            continue
        del core.waiting_requests[request.id]
        effects.extend(_carry_out(core, attrs.evolve(request, waiting_for=()), changes, now))
    return effects


def load(core: Scheduler, waiting: tuple[UpdateRequest, ...], changes: list[Change], now: float) -> list[Effect]:
    """After a restart: the requests still waiting, as the snapshot worked
    out what they wait for; those waiting for nothing now are carried out."""
    effects: list[Effect] = []
    for request in sorted(waiting, key=lambda r: r.id):
        if request.waiting_for:
            core.waiting_requests[request.id] = request
        else:
            effects.extend(_carry_out(core, request, changes, now))
    return effects


def _carry_out(core: Scheduler, request: UpdateRequest, changes: list[Change], now: float) -> list[Effect]:
    """Make the run, or rerun what makes the product in the existing one;
    the request ends "done" in the same transaction, and its requester (if
    it still waits) gets the run once that is committed."""
    asked = core.requests_asked.pop(request.id, Asked())
    core.waiting_requests.pop(request.id, None)
    pipeline = core.pipelines.get(request.pipeline)
    if pipeline is None:
        # configured away while it waited
        changes.append(attrs.evolve(request, state="refused", done_at=now, waiting_for=()))
        return [operators._error(asked.request, NOT_FOUND, f"unknown pipeline {request.pipeline!r}")]
    run = core._run_in_memory(pipeline.name, request.reference_time)
    if run is None and asked.run is not None:
        core._reopen(asked.run, asked.jobs, 0, changes)
        run = core.runs.get(asked.run.id)
        reopened = run is not None
    else:
        reopened = False
    result: dict[str, Any] = {"request_id": request.id, "state": "done"}
    if run is None:
        run = core._new_run(pipeline, request.reference_time, RunCause.REQUEST, changes, now)
        result.update(run_id=run.id, made=True, rerun_job_ids=[])
        changes.append(attrs.evolve(request, state="done", done_at=now, waiting_for=(), run_id=run.id))
        if asked.request:
            # answered once the run is committed (or refused as existing)
            core.owed_run[run.id].append((asked.request, Reply(result=result)))
        return []
    rerun, refusal = _rerun_makers(core, pipeline, run, request.product, changes, now)
    if refusal is not None and not rerun:
        if reopened and run.id not in core.pending_runs:
            core._forget_run(run.id)
        changes.append(attrs.evolve(request, state="refused", done_at=now, waiting_for=(), run_id=run.id))
        if asked.request:
            core.owed_ack[asked.request] = Reply(error=refusal, code=CONFLICT)
            changes.append(Ack(asked.request))
        return []
    result.update(run_id=run.id, made=False, rerun_job_ids=rerun)
    changes.append(attrs.evolve(request, state="done", done_at=now, waiting_for=(), run_id=run.id))
    if asked.request:
        core.owed_ack[asked.request] = Reply(result=result)
        changes.append(Ack(asked.request))
    return []


def _rerun_makers(
    core: Scheduler, pipeline: Pipeline, run: Run, product: str, changes: list[Change], now: float,
) -> tuple[list[int], str | None]:
    """Run again the ended slots of the steps whose outputs are ``product``
    and everything downstream of them, parents first; the new jobs' ids,
    and why none could run again (slots still to run make the product
    anyway; a slot whose parent ended without success would wait for ever)."""
    makers = [
        name for name, step in pipeline.steps.items()
        if step.outputs and (step.product or (pipeline.produces[0] if len(pipeline.produces) == 1 else "")) == product
    ]
    fresh: list[int] = []
    refusal: str | None = None
    for name in makers:  # topological order: a maker after another is rerun with it
        for slot in sorted(s for s in core.current.get(run.id, {}) if s[0] == name):
            job = core._newest_in_slot(run.id, slot)
            if job is None or not job.state.finished or job.id in core.pending_jobs:
                continue  # it has yet to run, or runs now: it makes the product anyway
            why = operators._rerun_refusal(core, job)
            if why is not None:
                refusal = why
                continue
            fresh.append(core._rerun(job, changes, now, downstream=True).id)
    if not makers:
        refusal = f"no step of {pipeline.name} has outputs of product {product!r}"
    return fresh, refusal


def _result(request: UpdateRequest) -> dict[str, Any]:
    return {"request_id": request.id, "state": request.state, "waiting_for": list(request.waiting_for)}
