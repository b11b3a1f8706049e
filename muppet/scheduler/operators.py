"""Operators' commands, as the scheduler core carries them out: on one job
(hold, release, kill, rerun, set), on a whole run (hold, release, kill,
rerun the failed, bypass a step), on a pipeline (pause, resume) and on the
daemon (drain, undrain). docs/cli.md describes each, with its refusals.

Part of the sans-I/O core: functions of a ``core.Scheduler``, working on its
state through the same rules (every move through the table of states, only
persisted copies move on). Each command
that changes something adds an ``OperatorEvent`` to the same transaction:
who (the token's name), why (the reason given) and what it touched; its
reply comes once that transaction is committed (an ``Ack``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..codec import format_time
from ..messages import (
    CONFLICT,
    DRAINING,
    NOT_FOUND,
    Ack,
    Change,
    Command,
    Control,
    DaemonCommand,
    Operator,
    OperatorEvent,
    PipelineCommand,
    Reply,
    RunCommand,
    paused_key,
)
from ..model import Job, JobState, Run, RunCause, RunState
from . import states

if TYPE_CHECKING:
    from .core import Effect, Scheduler

#: a held job's reason, with who held it and why (docs/states.md, "Why a job waits")
HELD_BY_OPERATOR = "held by operator"

#: the states of a slot that ``rerun RUN --run`` runs again
RERUN_FAILED = frozenset({JobState.FAILED, JobState.KILLED, JobState.EXPIRED, JobState.SKIPPED})


# --- one job -------------------------------------------------------------------

def job_command(core: Scheduler, event: Command, changes: list[Change], now: float) -> list[Effect]:
    job = core._latest(event.job_id)
    if job is None and event.run is not None:
        # its run has ended: bring it back for a rerun or a set; a refused
        # command leaves it out of memory again
        job = core._reopen(event.run, event.jobs, event.job_id, changes, event.definition)
        if job is not None:
            effects = _job_command_on(core, job, event, changes, now)
            if job.run_id not in core.pending_runs:
                core._forget_run(job.run_id)
            return effects
    if job is None:
        return [_error(event.request, NOT_FOUND, f"job {event.job_id} is not in an unfinished run")]
    return _job_command_on(core, job, event, changes, now)


def _job_command_on(core: Scheduler, job: Job, event: Command, changes: list[Change], now: float) -> list[Effect]:
    if job.id in core.pending_jobs and event.action != "kill":
        return [_error(event.request, CONFLICT, f"job {job.id} is changing; try again")]
    state = job.state
    touched: dict[str, Any] = {"job_id": job.id, "run_id": job.run_id}
    if event.action == "hold":
        if state is not JobState.WAITING:
            why = f"job {job.id} is {state.value}; only a waiting job can be held"
            return [_error(event.request, CONFLICT, why)]
        core._move(job, JobState.HELD, changes, reason=_by(HELD_BY_OPERATOR, event.by))
    elif event.action == "release":
        if state is not JobState.HELD:
            return [_error(event.request, CONFLICT, f"job {job.id} is {state.value}, not held")]
        core._move(job, JobState.WAITING, changes, reason="")
    elif event.action == "kill":
        return _kill(core, job, event.request, event.by, changes, now)
    elif event.action == "rerun":
        refusal = _rerun_refusal(core, job)
        if refusal is not None:
            return [_error(event.request, CONFLICT, refusal)]
        fresh = core._rerun(job, changes, now, downstream=event.downstream)
        touched = {"job_id": job.id, "run_id": job.run_id, "new_job_id": fresh.id,
                   "downstream": event.downstream}
        return _done(core, event.request, "rerun", event.by, touched, {"job_id": fresh.id}, changes)
    elif event.action == "set":
        return _set_outcome(core, job, event, changes, now)
    else:
        return [_error(event.request, NOT_FOUND, f"unknown command {event.action!r}")]
    if job.id not in core.pending_jobs:
        # the table refused the move (a Notice says why)
        return [_error(event.request, CONFLICT, f"job {job.id}: {event.action} refused, see the daemon's log")]
    result = {"job_id": job.id, "state": core.pending_jobs[job.id].state.value}
    return _done(core, event.request, event.action, event.by, touched, result, changes)


def _kill(core: Scheduler, job: Job, request: int, by: Operator, changes: list[Change], now: float) -> list[Effect]:
    state = job.state
    touched = {"job_id": job.id, "run_id": job.run_id}
    if state in (JobState.WAITING, JobState.HELD):
        core._move(job, JobState.KILLED, changes, reason=_by(states.KILLED_BY_OPERATOR, by), ended_at=now)
        core._skip_downstream(job, changes, now)
        return _done(core, request, "kill", by, touched, {"job_id": job.id, "state": "killed"}, changes)
    if state.active:
        if job.kill_requested and job.id not in core.pending_jobs:
            return [_answer(request, {"job_id": job.id, "state": "killing"})]  # asked before, committed
        if not job.kill_requested:
            # the reason now, with who asked: the job ends with it (core._job_finished)
            core._move(job, state, changes, kill_requested=True, reason=_by(states.KILLED_BY_OPERATOR, by))
        # "killing" only once the request is committed: it then holds
        # across a crash
        return _done(core, request, "kill", by, touched, {"job_id": job.id, "state": "killing"}, changes)
    return [_error(request, CONFLICT, f"job {job.id} has already ended ({state.value})")]


def _rerun_refusal(core: Scheduler, job: Job) -> str | None:
    if not job.state.finished or job.successor is not None:
        return f"job {job.id} is {job.state.value}; only the newest job of a slot that has ended can be rerun"
    blocker = core._ended_parent(job)
    if blocker is not None:
        # its rerun would wait for ever on a parent that will not
        # succeed (docs/cli.md, "muppet rerun")
        return (
            f"job {job.id} ({job.step}[{job.index}]) depends on job {blocker.id} "
            f"({blocker.step}[{blocker.index}]), which is {blocker.state.value}: rerun job "
            f"{blocker.id}, which reruns this one with it"
        )
    return None


def _set_outcome(core: Scheduler, job: Job, event: Command, changes: list[Change], now: float) -> list[Effect]:
    """Set a job's outcome by hand (docs/cli.md, "muppet set"): a waiting
    or held job ends so; a job that ended without success gets a
    successor that succeeded; a job that runs must be killed first."""
    outcome = JobState.SUCCEEDED if event.outcome == "succeeded" else JobState.FAILED
    if event.outcome not in ("succeeded", "failed"):
        return [_error(event.request, NOT_FOUND, f"unknown outcome {event.outcome!r}")]
    reason = _by(f"set {outcome.value} by operator", event.by)
    touched: dict[str, Any] = {"job_id": job.id, "run_id": job.run_id, "outcome": outcome.value}
    if job.state.active:
        why = (f"job {job.id} is {job.state.value}: kill it first (muppet kill {job.id}), "
               "then set its outcome")
        return [_error(event.request, CONFLICT, why)]
    if job.state in (JobState.WAITING, JobState.HELD):
        core._move(job, outcome, changes, reason=reason, ended_at=now, exit_code=None)
        if outcome is JobState.FAILED:
            core._skip_downstream(job, changes, now)
        return _done(core, event.request, "set", event.by, touched, {"job_id": job.id, "state": outcome.value},
                 changes)
    if job.successor is not None:
        return [_error(event.request, CONFLICT, f"job {job.id} is not the newest of its slot: set job "
                                                f"{job.successor} instead")]
    if outcome is JobState.FAILED or job.state in (JobState.SUCCEEDED, JobState.BYPASSED):
        why = (f"job {job.id} has ended ({job.state.value}); only a job that ended without success can be set "
               "succeeded, and only a waiting or held one failed")
        return [_error(event.request, CONFLICT, why)]
    # a new job in the slot, succeeded by hand; what was skipped or
    # expired because of the old one may now run
    fresh = core._successor(job, changes, now, born=JobState.SUCCEEDED, born_reason=reason)
    core._revive_downstream(job, changes, now, downstream=False)
    core._reopen_run(job.run_id, changes)
    touched["new_job_id"] = fresh.id
    return _done(core, event.request, "set", event.by, touched, {"job_id": fresh.id, "state": "succeeded"},
                 changes)


# --- a whole run -----------------------------------------------------------------

def run_command(core: Scheduler, event: RunCommand, changes: list[Change], now: float) -> list[Effect]:
    run = core.runs.get(event.run_id)
    reopened = False
    # only a rerun can act on an ended run (its other commands need jobs
    # that have not ended)
    if run is None and event.run is not None and event.action == "rerun":
        job = core._reopen(event.run, event.jobs, 0, changes, event.definition)
        del job
        run = core.runs.get(event.run_id)
        reopened = run is not None
    if run is None and event.run is not None:
        why = f"run {event.run_id} has ended ({event.run.state.value}): no job of it is left to {event.action}"
        if event.run.state is not RunState.SUCCEEDED:
            why += f"; muppet rerun {event.run_id} --run --failed runs its failed slots again"
        return [_error(event.request, CONFLICT, why)]
    if run is None:
        return [_error(event.request, NOT_FOUND, f"run {event.run_id} is not an unfinished run")]
    effects = _run_command_on(core, run, event, changes, now)
    if reopened and run.id not in core.pending_runs:
        core._forget_run(run.id)  # refused: the ended run leaves memory again
    return effects


def _run_command_on(core: Scheduler, run: Run, event: RunCommand, changes: list[Change], now: float) -> list[Effect]:
    # each slot's newest job, a successor still being committed included
    newest = [
        job for slot in sorted(core.current.get(run.id, {}))
        if (job := core._newest_in_slot(run.id, slot)) is not None
    ]
    touched: dict[str, Any] = {"run_id": run.id}
    if event.action in ("hold", "release"):
        source, target = (
            (JobState.WAITING, JobState.HELD) if event.action == "hold" else (JobState.HELD, JobState.WAITING)
        )
        chosen = [j for j in newest if j.state is source and j.id not in core.pending_jobs]
        if not chosen:
            return [_error(event.request, CONFLICT, f"run {run.id} has no {source.value} job to {event.action}")]
        for job in chosen:
            held = target is JobState.HELD
            core._move(job, target, changes, reason=_by(HELD_BY_OPERATOR, event.by) if held else "")
        touched["job_ids"] = sorted(j.id for j in chosen)
    elif event.action == "kill":
        left = [j for j in newest if not j.state.finished]
        # a job whose kill is asked already is not asked again
        chosen = [j for j in left if not core._current_copy(j.id).kill_requested]
        if not chosen:
            why = "'s jobs are being killed already" if left else " has no job left to kill"
            return [_error(event.request, CONFLICT, f"run {run.id}{why}")]
        for job in chosen:
            latest = core._current_copy(job.id)
            if latest.state in (JobState.WAITING, JobState.HELD):
                reason = _by(states.KILLED_BY_OPERATOR, event.by)
                core._move(latest, JobState.KILLED, changes, reason=reason, ended_at=now)
            elif latest.state.active and not latest.kill_requested:
                reason = _by(states.KILLED_BY_OPERATOR, event.by)
                core._move(latest, latest.state, changes, kill_requested=True, reason=reason)
        touched["job_ids"] = sorted(j.id for j in chosen)
    elif event.action == "rerun":
        # parents first (the pipeline's steps are in topological order), so
        # that a slot whose parent runs again may run again too; one whose
        # parent stays ended without success (its end still being
        # committed) would wait for ever and is left as it is
        definition = core.run_pipeline(run)
        order = {name: position for position, name in enumerate(definition.steps if definition else ())}
        chosen, fresh = [], []
        for job in sorted(newest, key=lambda j: (order.get(j.step, 0), j.index)):
            if job.state in RERUN_FAILED and job.id not in core.pending_jobs and core._ended_parent(job) is None:
                chosen.append(job)
                fresh.append(core._successor(job, changes, now).id)
        if not chosen:
            return [_error(event.request, CONFLICT, f"run {run.id} has no failed, killed, expired or skipped "
                                                    "slot that can run again now")]
        core._reopen_run(run.id, changes)
        touched["job_ids"], touched["new_job_ids"] = [j.id for j in chosen], fresh
    elif event.action == "bypass":
        return _bypass(core, run, newest, event, changes, now)
    else:
        return [_error(event.request, NOT_FOUND, f"unknown command {event.action!r}")]
    result = {"run_id": run.id, "jobs": len(chosen)}
    return _done(core, event.request, event.action, event.by, touched, result, changes)


def _bypass(
    core: Scheduler, run: Run, newest: list[Job], event: RunCommand, changes: list[Change], now: float,
) -> list[Effect]:
    """The step's jobs end without running, its children go on as if it
    had succeeded (Cylc's skip mode); ``bypassed`` registers no outputs."""
    pipeline = core.run_pipeline(run)
    if pipeline is None or event.step not in pipeline.steps:
        return [_error(event.request, NOT_FOUND, f"run {run.id}: {run.pipeline} has no step {event.step!r}")]
    slots = [j for j in newest if j.step == event.step]
    busy = [j for j in slots if j.state.active]
    if busy:
        why = (f"run {run.id}: step {event.step} has jobs running ({', '.join(str(j.id) for j in busy)}): "
               "kill them first, then bypass")
        return [_error(event.request, CONFLICT, why)]
    chosen = [j for j in slots if j.state in (JobState.WAITING, JobState.HELD) and j.id not in core.pending_jobs]
    if not chosen:
        why = f"run {run.id}: step {event.step} has ended; only a step with jobs not yet started can be bypassed"
        return [_error(event.request, CONFLICT, why)]
    reason = _by("bypassed by operator", event.by)
    for job in chosen:
        core._move(job, JobState.BYPASSED, changes, reason=reason, ended_at=now)
    touched = {"run_id": run.id, "step": event.step, "job_ids": sorted(j.id for j in chosen)}
    return _done(core, event.request, "bypass", event.by, touched, {"run_id": run.id, "jobs": len(chosen)},
                 changes)


# --- a pipeline, the daemon --------------------------------------------------------

def pipeline_command(
    core: Scheduler, event: PipelineCommand, changes: list[Change], now: float,
) -> list[Effect]:
    pipeline = core.pipelines.get(event.pipeline)
    if pipeline is None:
        return [_error(event.request, NOT_FOUND, f"unknown pipeline {event.pipeline!r}")]
    paused = core.controls.get(paused_key(pipeline.name))
    touched: dict[str, Any] = {"pipeline": pipeline.name}
    if event.action == "pause":
        if paused is not None:
            why = f"pipeline {pipeline.name} is paused already (by {paused['by']} since {paused['since']})"
            return [_error(event.request, CONFLICT, why)]
        _control(core, paused_key(pipeline.name), _order(event.by, now), changes)
    elif event.action == "resume":
        if paused is None:
            return [_error(event.request, CONFLICT, f"pipeline {pipeline.name} is not paused")]
        _control(core, paused_key(pipeline.name), None, changes)
        touched["expired_run_ids"] = _catch_up_paused(core, pipeline.name, paused, changes, now)
    else:
        return [_error(event.request, NOT_FOUND, f"unknown command {event.action!r}")]
    return _done(core, event.request, event.action, event.by, touched, {"pipeline": pipeline.name}, changes)


def _catch_up_paused(core: Scheduler, name: str, paused: dict[str, Any], changes: list[Change],
                     now: float) -> list[int]:
    """On resume, the pipeline's catch-up policy decides which of the
    cron runs made while it was paused run: "all" the newest
    ``catchup_limit``, "latest" the newest, "none" none; the others
    expire without running."""
    pipeline = core.pipelines[name]
    made = sorted(
        (r for r in core.runs.values()
         if r.pipeline == name and r.state is RunState.QUEUED and r.cause is RunCause.CRON
         and r.created_at >= paused["at"] and r.id not in core.pending_runs),
        key=lambda r: r.reference_time,
    )
    keep = {"all": pipeline.catchup_limit, "latest": 1, "none": 0}[pipeline.catchup]
    dropped = made[: max(len(made) - keep, 0)]
    for run in dropped:
        reason = f"made while {name} was paused; catchup = {pipeline.catchup!r} runs it not"
        for job_id in core.current.get(run.id, {}).values():
            job = core._current_copy(job_id)
            if job.state in (JobState.WAITING, JobState.HELD):
                core._move(job, JobState.EXPIRED, changes, reason=reason, ended_at=now)
    return [r.id for r in dropped]


def daemon_command(core: Scheduler, event: DaemonCommand, changes: list[Change], now: float) -> list[Effect]:
    draining = core.controls.get(DRAINING)
    if event.action == "drain":
        if draining is not None:
            why = f"the daemon is draining already (by {draining['by']} since {draining['since']})"
            return [_error(event.request, CONFLICT, why)]
        _control(core, DRAINING, _order(event.by, now), changes)
    elif event.action == "undrain":
        if draining is None:
            return [_error(event.request, CONFLICT, "the daemon is not draining")]
        _control(core, DRAINING, None, changes)
    else:
        return [_error(event.request, NOT_FOUND, f"unknown command {event.action!r}")]
    return _done(core, event.request, event.action, event.by, {}, {"draining": event.action == "drain"}, changes)


# --- shared ---------------------------------------------------------------------

def _control(core: Scheduler, key: str, value: Any, changes: list[Change]) -> None:
    """A standing order, in memory at once (the scheduler decides by it
    from the next pass) and in the database with this transaction."""
    if value is None:
        core.controls.pop(key, None)
    else:
        core.controls[key] = value
    changes.append(Control(key, value))


def _done(
    core: Scheduler,
    request: int,
    action: str,
    by: Operator,
    touched: dict[str, Any],
    result: Any,
    changes: list[Change],
) -> list[Effect]:
    """The operator event of an action that was carried out, and its
    reply once the transaction that holds both is committed."""
    operator_event(core, action, by, touched, changes)
    if request:
        core.owed_ack[request] = Reply(result=result)
        changes.append(Ack(request))
    return []


def operator_event(core: Scheduler, action: str, by: Operator, touched: dict[str, Any],
                   changes: list[Change]) -> None:
    changes.append(OperatorEvent(action, by, touched))


def _order(by: Operator, now: float) -> dict[str, Any]:
    """What a standing order says of itself: who, why, since when."""
    return {"by": by.name, "reason": by.reason, "since": format_time(now), "at": now}


def _by(what: str, by: Operator) -> str:
    """A job's reason naming the operator ("killed by operator ops: ...")."""
    who = what if by.name == "local" else f"{what} {by.name}"
    return f"{who}: {by.reason}" if by.reason else who


def _answer(request: int, result: Any) -> Effect:
    from .core import Answer

    return Answer(request, Reply(result=result))


def _error(request: int, code: int, message: str) -> Effect:
    from .core import Answer

    return Answer(request, Reply(error=message, code=code))
