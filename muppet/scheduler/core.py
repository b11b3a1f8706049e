"""The scheduler's decisions, sans-I/O: events in, effects out.

`Scheduler` is to the scheduler task what h11's `Connection` is to a socket
loop: it holds the state, it never awaits, never reads a clock (``now`` comes in
with every call) and never touches the database. The task feeds it events and
carries out the effects it returns.

The rule it is built on (MUPPET design, "the daemon"): *only persisted objects
move on*. A decision produces a new copy of a job or run and a `Persist`
effect; the scheduler keeps acting on the old copy until the database task sends
the committed one back in `Persisted`. While a job has a write in flight it is
*busy*: no other decision is taken on it, but it already counts against
concurrency, conflicts and executor slots if either copy is active, so a
submission in flight is never doubled.

Slots: the jobs of a run are made all at once, one per ``(step, index)`` slot.
A retry or a rerun is a new job in the same slot, linked both ways
(predecessor/successor); the slot's *current* job is its newest one, and only
current jobs count for dependencies and for the run's outcome.

Every change of a job's or run's state goes through ``states.move_job`` /
``states.move_run``, the one table of legal moves (docs/states.md). A move the
table refuses is a bug in these rules: with ``strict`` (the tests) it raises;
otherwise the move is not made and a ``Notice`` says so in the daemon's log.

Requests (an operator's trigger or command) arrive with a number; the core
answers by that number once what the request made is persisted (``Answer``).
It holds no channels: the scheduler task keeps who waits for which number.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from .. import codec
from ..alerts.rules import IncidentRules
from ..codec import format_time
from ..messages import (
    CONFLICT,
    DRAINING,
    NOT_FOUND,
    Backfill,
    Change,
    Command,
    CompletedInstance,
    DaemonCommand,
    EndedRun,
    ExecutorSettings,
    JobFinished,
    JobNotStarted,
    JobStarted,
    KillJob,
    LateNotice,
    NewFile,
    NewRun,
    Operator,
    Persist,
    Persisted,
    PipelineCommand,
    Reconfigure,
    RegisterFiles,
    Reply,
    RequestUpdate,
    RunCommand,
    StartJob,
    Trigger,
    UpdateRequest,
    paused_key,
)
from ..model import (
    Depends,
    ExecutorConfig,
    Job,
    JobLog,
    JobState,
    Pipeline,
    Run,
    RunCause,
    RunState,
    ServiceBackend,
)
from . import cycling, operators, reconfigure, requests, states
from .cycling import Deadlines
from .states import IllegalTransition

#: the backoff after a failed start (the executor's trouble, not the job's):
#: doubling from the first to the longest, in seconds
START_RETRY_FIRST = 1.0
START_RETRY_MAX = 60.0


@attrs.frozen
class Answer:
    """Effect: ``reply`` answers request number ``request``; 0 is nobody's
    (cron, a data-driven run), whose refusal is only news for the log."""

    request: int
    reply: Reply


@attrs.frozen
class Notice:
    """Effect: something the daemon's log should say (a refused move)."""

    text: str


@attrs.frozen
class WakeAt:
    """Effect: feed the scheduler again at ``time`` (a backoff ends then)."""

    time: float


Effect = Persist | StartJob | KillJob | Answer | WakeAt | Notice | ExecutorSettings
Event = (
    Trigger | Persisted | JobStarted | JobFinished | JobNotStarted | Backfill
    | Command | RunCommand | PipelineCommand | DaemonCommand | RequestUpdate
    | Reconfigure
)


class Scheduler:
    """The state of every unfinished run and its jobs, and the rules that move
    them. Call `load` once, then `handle` for each batch of events. The
    operators' commands are in ``operators.py``."""

    def __init__(
        self,
        pipelines: Mapping[str, Pipeline],
        executors: Mapping[str, ExecutorConfig],
        *,
        next_run_id: int = 1,
        next_job_id: int = 1,
        next_request_id: int = 1,
        outputs_backend: ServiceBackend | None = None,
        strict: bool = True,
        definitions: Mapping[str, Pipeline] | None = None,
    ) -> None:
        """``definitions``: the pipeline definitions, by hash, that the runs
        ``load`` takes over were made with (read from the database)."""
        # every pipeline definition by hash: the current ones and those of
        # runs in memory, each of which finishes under its own
        # (docs/operations.md, "Reload"); and each pipeline's current one
        self.definitions: dict[str, Pipeline] = dict(definitions or {})
        self.current_definition: dict[str, str] = {}
        # the JSON of the current definitions, written with each NewRun
        self.definition_texts: dict[str, str] = {}
        # each definition's conflicting steps, made symmetric, by step; by
        # the definition's id (the scheduling pass asks for every waiting
        # job), holding the definition so that its id is not reused
        self.conflict_sets: dict[int, tuple[Pipeline, dict[str, frozenset[str]]]] = {}
        self.pipelines: dict[str, Pipeline] = {}
        #: where step outputs are registered in the index; None: not at all
        self.outputs_backend = outputs_backend
        #: an illegal state move raises (tests) instead of being refused and
        #: reported in a Notice (the daemon)
        self.strict = strict
        self.notices: list[str] = []
        #: which changes open or resolve incidents (docs/alerts.md, "Incidents")
        self.incident_rules = IncidentRules()
        # pipelines a product's completion may trigger (MUPPET design: "a
        # pipeline that requires a product is triggered when an instance of
        # that product becomes complete")
        self.required_by: dict[str, list[Pipeline]] = defaultdict(list)
        self.executors: dict[str, ExecutorConfig] = {}
        self.next_run_id = next_run_id
        self.next_job_id = next_job_id
        # persisted copies of unfinished runs and all of their jobs
        self.runs: dict[int, Run] = {}
        # the runs in memory by (pipeline, reference time)
        self.run_at: dict[tuple[str, datetime], int] = {}
        # ended runs that intercycle children wait on (docs/configuration.md,
        # "Cycling"), by (pipeline, reference time)
        self.ended: dict[tuple[str, datetime], EndedRun] = {}
        # when each step's jobs of a run may start, expire, are late
        self.deadlines: dict[tuple[int, str], Deadlines] = {}
        # (time, sequence, what, id): the moments something is due, for
        # WakeAt; "wake" a job's backoff or clock, "expire" and "late" a
        # job's deadlines, "late-run" a run's (stale entries are skipped).
        # A heap, taken from its top: a batch looks at the entries due, not
        # at every one (a fan-out whose step has deadlines holds a few per
        # job: scanned on each batch, 10,000 jobs cost 4 ms per event)
        self.timers: list[tuple[float, int, str, int]] = []
        # the (time, what, id) in ``timers``: each store of a job asks for its
        # deadlines again, and one entry each is enough
        self.timer_keys: set[tuple[float, str, int]] = set()
        self.timer_sequence = itertools.count()
        # backfills answered once each of their runs is committed or refused
        self.backfills: dict[int, _Backfill] = {}
        # operators' standing orders (paused pipelines, draining), as committed
        self.controls: dict[str, Any] = {}
        # replies owed once the transaction with the request's Ack commits
        self.owed_ack: dict[int, Reply] = {}
        # requests for product updates (requests.py): the next id, the
        # committed ones that wait for products, and what the API gave with
        # each until it is carried out
        self.next_request_id = next_request_id
        self.waiting_requests: dict[int, UpdateRequest] = {}
        self.requests_asked: dict[int, requests.Asked] = {}
        self.jobs: dict[int, Job] = {}
        # the ids of ``jobs`` by run, so that forgetting an ended run looks
        # at its own jobs, not at every job in memory (a one-job run beside
        # a run of 50,000 cost 2 ms to forget, bench/core.py)
        self.run_jobs: dict[int, set[int]] = {}
        # per run, the newest job of each (step, index) slot
        self.current: dict[int, dict[tuple[str, int], int]] = {}
        # per run, its current jobs (``current``) that keep it from ending:
        # not finished, or with a copy not yet back from the database. Kept
        # by ``_settle`` wherever a job, a slot or a pending copy changes, so
        # that deciding whether a run ends costs nothing per job: scanning
        # every slot on every batch made a fan-out of N jobs cost N**2
        # (bench/scale.py)
        self.unsettled: dict[int, set[int]] = {}
        # proposed copies not yet back from the database
        self.pending_jobs: dict[int, Job] = {}
        self.pending_runs: dict[int, Run] = {}
        self.pending_new: dict[int, NewRun] = {}
        # jobs given to the executor (StartJob) in this daemon's life
        self.handed: set[int] = set()
        # failed starts so far, per job, for the backoff of the next try
        self.start_failures: dict[int, int] = {}
        # persisted WAITING jobs: the candidates of every scheduling pass
        self.waiting: set[int] = set()
        # the same ids by group (``_group``), each group's in order
        # (``_wait``, ``_unwait``). The pass takes the oldest first, merging the groups,
        # and stops once every executor is full: sorting the whole set on
        # each batch made a fan-out of N cost N**2 log N. Whatever holds
        # back one job of a group, but for its own backoff or its own parent
        # of an ``each`` step, holds back them all (``_consider``), so the
        # pass leaves the group there: a step of 50,000 jobs waiting for its
        # parent cost each pass a look at every one of them (0.9 s of CPU
        # per one-job run beside it, bench/core.py)
        self.waiting_groups: dict[WaitingGroup, list[int]] = {}
        # waiting jobs of ``each`` steps whose own parent in the run has not
        # succeeded, kept out of their groups until it does
        # (``_wake_children``): else the pass looked at each of them again on
        # every batch while their parents ran (an ``each`` step behind a
        # step on a full executor: 776 us per event at 1,000 jobs, 5.2 ms
        # at 10,000, bench/core.py)
        self.parked: set[int] = set()
        # waiting groups of ``all`` steps held back by a parent slot of their
        # run that has not succeeded, kept out of the pass until that slot's
        # job does (``_wake_children``): else the pass looked at every later
        # step of a chain on every batch, and a step gathering the jobs of a
        # step on another executor scanned its parents' slots again on every
        # batch (a chain of 400 steps: 866 us per event against 241 at 100;
        # a gather of 4,000 jobs 1.3 ms against 0.35 at 1,000; bench/core.py)
        self.parked_groups: dict[WaitingGroup, list[int]] = {}
        # (run id, parent step, index) -> the groups parked on that slot, and
        # each parked group's slot
        self.parked_on: dict[tuple[int, str, int], set[WaitingGroup]] = {}
        self.parked_group_slot: dict[WaitingGroup, tuple[int, str, int]] = {}
        # per group (parked or not), where in its parent slots the pass last
        # found one not done: the next look starts there, so that a step
        # gathering N parents that end one by one costs N looks, not N**2
        self.unmet_from: dict[WaitingGroup, int] = {}
        # jobs holding a slot (submitted or running in either copy)
        self.active: set[int] = set()
        # the same jobs counted by (pipeline, step) and by executor, kept with
        # ``active`` (``_activate``, ``_deactivate``) for the scheduling pass,
        # which counted them on each batch: at 16 slots, 800,000 look-ups in
        # a fan-out of 10,000, and a batch system's 1,000 slots cost 1,000
        # on every batch
        self.active_by_step: dict[tuple[str, str], int] = {}
        self.active_by_executor: dict[str, int] = {}
        # replies owed (by request number) once a run / job write comes back
        self.owed_run: dict[int, list[tuple[int, Reply]]] = defaultdict(list)
        self.owed_job: dict[int, list[tuple[int, Reply]]] = defaultdict(list)
        self.configure(pipelines, executors)

    # --- entry points ---------------------------------------------------------

    def load(
        self,
        runs: Iterable[Run],
        jobs: Iterable[Job],
        now: float,
        ended: Iterable[EndedRun] = (),
        controls: Mapping[str, Any] | None = None,
        update_requests: Iterable[UpdateRequest] = (),
    ) -> list[Effect]:
        """Take over the unfinished runs a previous daemon left in the database
        (and the ended runs their intercycle parents are in).

        Jobs it had submitted or running are handed to the executor again: a
        StartJob re-attaches to a job that is still running (or finished while
        no daemon watched) and starts one that never began. Every timer
        (backoff, clock, expiry, lateness) is derived again from the runs.
        """
        for earlier in ended:
            self.ended[(earlier.pipeline, earlier.reference_time)] = earlier
        self.controls.update(controls or {})
        for run in runs:
            self._store_run(run)
            if run.definition and run.definition not in self.definitions:
                self.notices.append(f"run {run.id} ({run.pipeline}): its definition {run.definition} is not in the "
                                    "database; it runs under its pipeline's current one")
        for job in sorted(jobs, key=lambda j: j.id):
            self._store_job(job)
        effects: list[Effect] = []
        changes: list[Change] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.state.active:
                start = self._start_job(job, now, changes)
                if start is not None:
                    self.handed.add(job.id)
                    effects.append(start)
                    if job.kill_requested:
                        # the kill outlives the restart; the executor takes a
                        # KillJob right after the StartJob before launching
                        effects.append(KillJob(job.id))
        # a crash between a run's last job and the run's own end leaves it open
        touched = set(self.runs)
        self._timers_due(changes, touched, now)
        for run_id in touched:
            self._maybe_finish_run(run_id, changes, now)
        effects.extend(requests.load(self, tuple(update_requests), changes, now))
        self._promote_queued(changes)
        self._schedule(changes, now)
        return self._finish(now, changes, effects)

    def handle(self, events: Iterable[Event], now: float) -> list[Effect]:
        """Apply a batch of events, then take one scheduling pass.

        Returns the effects in the order they must be carried out; all writes
        are merged into one Persist (one transaction), placed first.
        """
        changes: list[Change] = []
        effects: list[Effect] = []
        touched: set[int] = set()
        for event in events:
            if isinstance(event, Persisted):
                effects.extend(self._persisted(event, changes, touched, now))
            elif isinstance(event, Trigger):
                effects.extend(self._trigger(event, changes, now))
            elif isinstance(event, JobStarted):
                self._job_started(event, changes)
            elif isinstance(event, JobFinished):
                self._job_finished(event, changes, now)
            elif isinstance(event, JobNotStarted):
                self._job_not_started(event, changes, now)
            elif isinstance(event, Command):
                effects.extend(operators.job_command(self, event, changes, now))
            elif isinstance(event, RunCommand):
                effects.extend(operators.run_command(self, event, changes, now))
            elif isinstance(event, PipelineCommand):
                effects.extend(operators.pipeline_command(self, event, changes, now))
            elif isinstance(event, DaemonCommand):
                effects.extend(operators.daemon_command(self, event, changes, now))
            elif isinstance(event, Backfill):
                effects.extend(self._backfill(event, changes, now))
            elif isinstance(event, RequestUpdate):
                effects.extend(requests.request_update(self, event, changes, now))
            elif isinstance(event, Reconfigure):
                effects.extend(reconfigure.apply(self, event, changes, now))
            else:
                raise TypeError(f"the scheduler does not handle {event!r}")
        self._timers_due(changes, touched, now)
        for run_id in touched:
            self._maybe_finish_run(run_id, changes, now)
        self._promote_queued(changes)
        self._schedule(changes, now)
        return self._finish(now, changes, effects)

    # --- events ---------------------------------------------------------------

    def _trigger(self, event: Trigger, changes: list[Change], now: float) -> list[Effect]:
        pipeline = self.pipelines.get(event.pipeline)
        if pipeline is None:
            return [_error(event.request, NOT_FOUND, f"unknown pipeline {event.pipeline!r}")]
        existing = self._run_in_memory(pipeline.name, event.reference_time)
        if existing is not None:
            return [_error(event.request, CONFLICT, _exists(existing))]
        run = self._new_run(pipeline, event.reference_time, RunCause(event.cause), changes, now, by=event.by)
        if event.request:
            self.owed_run[run.id].append((event.request, Reply(result={"run_id": run.id})))
        return []

    def _new_run(
        self, pipeline: Pipeline, reference_time: datetime, cause: RunCause, changes: list[Change], now: float,
        by: Operator | None = None,
    ) -> Run:
        """A new run with all of its jobs, queued when the pipeline's
        runahead is full (it runs when an earlier one ends, oldest first)."""
        # beyond the runahead, and a paused pipeline's cron runs, wait queued
        queued = (pipeline.runahead is not None and self._unfinished(pipeline.name) >= pipeline.runahead) or (
            cause is RunCause.CRON and paused_key(pipeline.name) in self.controls
        )
        run = Run(
            id=self._new_run_id(),
            pipeline=pipeline.name,
            reference_time=reference_time,
            state=RunState.QUEUED if queued else RunState.RUNNING,
            cause=cause,
            created_at=now,
            definition=self.current_definition[pipeline.name],
        )
        jobs = []
        for step in pipeline.steps.values():
            for index in range(step.jobs):
                jobs.append(
                    Job(
                        id=self._new_job_id(),
                        run_id=run.id,
                        pipeline=pipeline.name,
                        step=step.name,
                        index=index,
                        count=step.jobs,
                        executor=step.executor,
                        created_at=now,
                    )
                )
        needs = tuple(sorted(cycling.parent_references(pipeline, reference_time))) if pipeline.cycling else ()
        new = NewRun(run, tuple(jobs), needs, by=by, definition=self.definition_texts[run.definition])
        self.pending_new[run.id] = new
        changes.append(new)
        return run

    def _backfill(self, event: Backfill, changes: list[Change], now: float) -> list[Effect]:
        pipeline = self.pipelines.get(event.pipeline)
        if pipeline is None:
            return [_error(event.request, NOT_FOUND, f"unknown pipeline {event.pipeline!r}")]
        made = _Backfill(event.request)
        if not event.reference_times:  # a range without a cron firing: nothing to make, nobody did anything
            return [_answer(event.request, made.result())]
        for moment in sorted(set(event.reference_times)):
            if self._run_in_memory(pipeline.name, moment) is not None:
                made.skipped.append(moment)
                continue
            run = self._new_run(pipeline, moment, RunCause.MANUAL, changes, now)
            made.waiting.add(run.id)
            made.order.append(run.id)
        if event.by is not None and made.order:
            target = {"pipeline": pipeline.name, "from": format_time(min(event.reference_times)),
                      "to": format_time(max(event.reference_times)), "runs": len(made.order)}
            operators.operator_event(self, "backfill", event.by, target, changes)
        if not made.waiting:
            return [_answer(event.request, made.result())]
        for run_id in made.waiting:
            self.backfills[run_id] = made
        return []

    def _persisted(
        self, event: Persisted, changes: list[Change], touched: set[int], now: float
    ) -> list[Effect]:
        effects: list[Effect] = []
        for earlier in event.ended:
            self.ended[(earlier.pipeline, earlier.reference_time)] = earlier
        for request in event.acks:
            reply = self.owed_ack.pop(request, None)
            if reply is not None:
                effects.append(Answer(request, reply))
        for new in event.rejected:
            self.pending_new.pop(new.run.id, None)
            for request, _ in self.owed_run.pop(new.run.id, []):
                effects.append(_error(request, CONFLICT, _exists(new.run, duplicate=True)))
            effects.extend(self._backfilled(new.run, made=False))
        for change in event.changes:
            if isinstance(change, NewRun):
                self.pending_new.pop(change.run.id, None)
                self._store_run(change.run)
                for job in change.jobs:
                    self._store_job(job)
                touched.add(change.run.id)
                effects.extend(self._pay(self.owed_run, change.run.id))
                effects.extend(self._backfilled(change.run, made=True))
            elif isinstance(change, Run):
                if self.pending_runs.get(change.id) == change:
                    del self.pending_runs[change.id]
                if change.id not in self.pending_runs:  # the newest copy: what was asked is done
                    effects.extend(self._pay(self.owed_run, change.id))
                if not change.state.finished:
                    self._store_run(change)
                    touched.add(change.id)
                elif change.id not in self.pending_runs:
                    self._forget_run(change.id)
            elif isinstance(change, Job):
                before = self.jobs.get(change.id)
                if self.pending_jobs.get(change.id) == change:
                    del self.pending_jobs[change.id]
                if change.run_id not in self.runs:
                    continue  # its run ended meanwhile (cannot happen, kept safe)
                self._store_job(change)
                touched.add(change.run_id)
                if change.id not in self.pending_jobs:  # the newest copy: what was asked is done
                    effects.extend(self._pay(self.owed_job, change.id))
                effects.extend(self._hand_over(change, before, changes, now))
        effects.extend(requests.persisted(self, event.requests, changes, now))
        for completed in event.completed:
            effects.extend(self._data_triggers(completed, changes, now))
            effects.extend(requests.completed(self, completed, changes, now))
        return effects

    def _backfilled(self, run: Run, *, made: bool) -> list[Effect]:
        """A backfill's run committed (or refused as existing); its answer
        once the last one is."""
        backfill = self.backfills.pop(run.id, None)
        if backfill is None:
            return []
        backfill.waiting.discard(run.id)
        if not made:
            backfill.order.remove(run.id)
            backfill.skipped.append(run.reference_time)
        if backfill.waiting:
            return []
        return [_answer(backfill.request, backfill.result())] if backfill.request else []

    def _hand_over(self, job: Job, before: Job | None, changes: list[Change], now: float) -> list[Effect]:
        """What the executor must hear of a job's newly committed copy.

        A submitted job is handed over (StartJob) once "submitted" is
        committed, unless a kill is already on its way. A kill is sent only
        once the request is committed, so that a crash cannot leave a job
        killed while the database believes it runs: to the executor if the
        job was handed over (in this daemon's life: a restart hands over
        every active job again), otherwise the job ends killed right here,
        never launched."""
        effects: list[Effect] = []
        latest = self._current_copy(job.id)
        # the newest copy decides: a copy committed again after the executor
        # reported it not started (the job waits again) is not handed over
        if (job.state is JobState.SUBMITTED and latest.state is JobState.SUBMITTED and job.id not in self.handed
                and not latest.kill_requested):
            start = self._start_job(job, now, changes)
            if start is not None:
                self.handed.add(job.id)
                effects.append(start)
        newly_killed = job.kill_requested and not (before is not None and before.kill_requested)
        if newly_killed and job.state.active and job.id not in self.pending_jobs:
            if job.id in self.handed:
                effects.append(KillJob(job.id))
            else:
                self._move(job, JobState.KILLED, changes, reason=states.KILLED_BY_OPERATOR, ended_at=now)
                self._skip_downstream(job, changes, now)
        return effects

    def _data_triggers(self, completed: CompletedInstance, changes: list[Change], now: float) -> list[Effect]:
        """Runs of the pipelines that now have every required product complete
        for this reference time. Fired once per completed instance version;
        a run that exists for the reference time already is not made again
        (runs are unique per pipeline and reference time)."""
        effects: list[Effect] = []
        for pipeline in self.required_by.get(completed.product, ()):
            if set(pipeline.requires) <= completed.complete_products:
                effects.extend(self._trigger(
                    Trigger(pipeline.name, completed.reference_time, RunCause.DATA.value), changes, now
                ))
        return effects

    def _outputs(self, job: Job, event: JobFinished) -> RegisterFiles | None:
        """The index registration of a successful job's outputs, committed
        with the job's success in the same transaction (MUPPET design, "files
        a step produces")."""
        backend = self.outputs_backend
        pipeline = self.job_pipeline(job)
        if backend is None or pipeline is None or not event.outputs or job.step not in pipeline.steps:
            return None
        step = pipeline.steps[job.step]
        product = step.product or (pipeline.produces[0] if len(pipeline.produces) == 1 else "")
        if not product:
            return None
        reference_time = self.runs[job.run_id].reference_time
        return RegisterFiles(
            files=tuple(
                NewFile(
                    product=product,
                    reference_time=reference_time,
                    backend=backend.slug,
                    format=output.format,
                    url=backend.url.rstrip("/") + "/" + output.path,
                    size=output.size,
                    hash=output.sha256,
                )
                for output in event.outputs
            ),
            define_formats=True,
            run_id=job.run_id,
        )

    def _job_not_started(self, event: JobNotStarted, changes: list[Change], now: float) -> None:
        """Back to waiting, to be tried again after a backoff that doubles
        with each failed start (MUPPET design: a failure of MUPPET's own
        machinery is never a job's failure); its tries stay unused."""
        job = self._latest(event.job_id)
        if job is None or job.state is not JobState.SUBMITTED:
            if job is not None and not job.state.active:
                self.handed.discard(job.id)  # not with the executor, whatever it was
            return
        self.handed.discard(job.id)
        if job.kill_requested:
            self._move(job, JobState.KILLED, changes, reason=states.KILLED_BY_OPERATOR, ended_at=now)
            self._skip_downstream(job, changes, now)
            return
        parent = self._ended_parent(job)
        if parent is not None:  # it could never start now
            self._move(job, JobState.SKIPPED, changes, ended_at=now, reason=states.upstream_did_not_succeed(parent))
            self._skip_downstream(job, changes, now)
            return
        attempts = self.start_failures[job.id] = self.start_failures.get(job.id, 0) + 1
        delay = min(START_RETRY_FIRST * 2 ** (attempts - 1), START_RETRY_MAX)
        self._move(
            job, JobState.WAITING, changes,
            not_before=now + delay, reason=states.not_started(event.reason), submitted_at=None,
        )

    def _job_started(self, event: JobStarted, changes: list[Change]) -> None:
        job = self._latest(event.job_id)
        if job is None or not job.state.active:
            return
        if job.state is JobState.SUBMITTED or job.batch_id != event.batch_id:
            self._move(
                job, JobState.RUNNING, changes,
                batch_id=event.batch_id, host=event.host, started_at=event.started_at,
            )

    def _job_finished(self, event: JobFinished, changes: list[Change], now: float) -> None:
        job = self._latest(event.job_id)
        if job is None or job.state.finished:
            return
        common: dict[str, Any] = dict(
            exit_code=event.exit_code,
            started_at=job.started_at if job.started_at is not None else event.started_at,
            ended_at=event.ended_at,
            reason=event.reason,
        )
        changes.append(JobLog(job.id, event.stdout_tail, event.stderr_tail))
        if event.state == "succeeded":
            # the executor says so only when it moved the outputs, and it does
            # not once it has a kill: a kill that came too late loses the race
            self._move(job, JobState.SUCCEEDED, changes, **common)
            register = self._outputs(job, event)
            if register is not None:
                changes.append(register)
            return
        if event.state == "killed" or job.kill_requested:
            # an operator's kill keeps the reason given with it (who, why)
            asked = job.kill_requested and job.reason.startswith(states.KILLED_BY_OPERATOR)
            reason = job.reason if asked else event.reason or states.KILLED_BY_OPERATOR
            self._move(job, JobState.KILLED, changes, **{**common, "reason": reason})
            self._skip_downstream(job, changes, now)
            return
        pipeline = self.job_pipeline(job)
        step = None if pipeline is None else pipeline.steps.get(job.step)
        failures = job.failures + 1
        # no retry when a parent has since ended without success (an
        # operator reran and killed it): the retry would wait for ever
        if step is not None and failures < step.retry.tries and self._ended_parent(job) is None:
            self._successor(
                job,
                changes,
                now,
                failures=failures,
                not_before=now + step.retry.delay(failures),
                ending=JobState.FAILED,
                **common,
            )
        else:
            self._move(job, JobState.FAILED, changes, **common)
            self._skip_downstream(job, changes, now)

    # --- rules ------------------------------------------------------------------

    def _schedule(self, changes: list[Change], now: float) -> None:
        """Submit every waiting job whose dependencies, backoff, step concurrency,
        conflicts and executor slots allow it, oldest first."""
        if not self.waiting or DRAINING in self.controls:
            return
        per_step: dict[tuple[str, str], int] = defaultdict(int, self.active_by_step)
        per_executor: dict[str, int] = defaultdict(int, self.active_by_executor)

        def all_full() -> bool:
            return all(per_executor[name] >= e.max_jobs for name, e in self.executors.items())

        # every executor full: nothing can start, so skip the scan (it runs
        # once per batch of events, over every waiting job)
        if all_full():
            return
        # each run's definition and its conflicts, looked up once a pass
        of_run: dict[int, tuple[Pipeline | None, Mapping[str, frozenset[str]]]] = {}
        # the groups' next jobs, oldest first; nothing in the loop changes a
        # group (the jobs to park are taken out after it)
        heads = [(ids[0], 0, group) for group, ids in self.waiting_groups.items()]
        heapq.heapify(heads)
        parking: list[int] = []
        parking_groups: list[tuple[WaitingGroup, tuple[int, str, int]]] = []
        while heads:
            job_id, position, group = heads[0]
            # a write on its way: the commonest case in a fan-out, kept out
            # of the call
            verdict = _SKIP_JOB if job_id in self.pending_jobs else self._consider(
                job_id, of_run, per_step, per_executor, now)
            if verdict is _PARK:
                parking.append(job_id)
            if isinstance(verdict, tuple):
                # held back by a parent slot of its run that every job of
                # the group waits for: out of the pass until it is done
                parking_groups.append((group, (self.jobs[job_id].run_id, *verdict)))
                verdict = _LEAVE_GROUP
            if verdict is _LEAVE_GROUP:
                # nothing within this pass starts a later job of the group:
                # a submission only fills slots, and satisfies no parent
                heapq.heappop(heads)
                continue
            ids = self.waiting_groups[group]
            if position + 1 < len(ids):
                heapq.heapreplace(heads, (ids[position + 1], position + 1, group))
            else:
                heapq.heappop(heads)
            if verdict is _START:
                job = self.jobs[job_id]
                self._move(job, JobState.SUBMITTED, changes, submitted_at=now)
                per_step[(job.pipeline, job.step)] += 1
                per_executor[job.executor] += 1
                executor = self.executors.get(job.executor)
                if executor is not None and per_executor[job.executor] >= executor.max_jobs and all_full():
                    break
        for job_id in parking:
            self._park(job_id)
        for group, slot in parking_groups:
            self._park_group(group, slot)

    def _consider(
        self, job_id: int, of_run: dict[int, tuple[Pipeline | None, Mapping[str, frozenset[str]]]],
        per_step: Mapping[tuple[str, str], int], per_executor: Mapping[str, int], now: float,
    ) -> object:
        """Whether the scheduling pass starts the waiting job ``job_id``:
        ``_START``; ``_SKIP_JOB``, held back by what is its own (a write on
        its way, its backoff, a parent in an earlier cycle); ``_PARK``, held
        back by its own parent in the run, of an ``each`` step;
        ``_LEAVE_GROUP``, held back by what its whole group shares (its run
        queued, its step configured away, a pause, the step's clock, its
        executor full, the step's concurrency, a conflict, a parent in an
        earlier cycle of an ``all`` step); or a parent slot (step, index) of
        its run, not done, that every job of its ``all`` step waits for.
        ``why_waiting`` puts the same checks into words. The caller has
        checked the write on its way."""
        job = self.jobs[job_id]
        run = self.runs[job.run_id]
        if job.not_before > now:
            return _SKIP_JOB  # a backoff
        if run.state is not RunState.RUNNING:
            return _LEAVE_GROUP  # a queued run
        found = of_run.get(run.id)
        if found is None:
            defined = self.run_pipeline(run)
            found = of_run[run.id] = (defined, {} if defined is None else self._conflict_table(defined))
        pipeline, conflicts = found
        if pipeline is None or job.step not in pipeline.steps:
            return _LEAVE_GROUP  # made fail in _start_job when it was configured away
        if paused_key(pipeline.name) in self.controls:
            return _LEAVE_GROUP
        step = pipeline.steps[job.step]
        clock = self._deadlines(job).not_before  # the step's, in its run
        if clock is not None and clock > now:
            return _LEAVE_GROUP
        executor = self.executors.get(job.executor)
        if executor is not None and per_executor[job.executor] >= executor.max_jobs:
            return _LEAVE_GROUP
        if step.concurrency is not None and per_step[(job.pipeline, job.step)] >= step.concurrency:
            return _LEAVE_GROUP
        if any(per_step[(job.pipeline, other)] for other in conflicts.get(job.step, _NO_CONFLICTS)):
            return _LEAVE_GROUP
        if step.depends is not Depends.EACH:
            unmet = self._unmet_parent_slot(job, pipeline)
            if unmet is not None:
                return unmet
            # a parent in an earlier cycle wakes nothing here: looked at again
            return _START if self._earlier_parents_done(job, pipeline) else _LEAVE_GROUP
        if not self._dependencies_met(job, pipeline):
            return _SKIP_JOB if step.intercycle else _PARK
        return _START

    def why_waiting(self, job_id: int, now: float) -> str:
        """Why a waiting or held job has not started, in words an operator
        can act on (docs/states.md, "Why a job waits"): an operator's order
        first, then in the order the scheduling pass checks; "" for a job
        that is not waiting here."""
        job = self._latest(job_id)
        if job is None:
            return ""
        committed = self.jobs.get(job_id)
        if committed is not None and job.state is not committed.state:
            return f"{job.state.value}: being committed"
        if job.state is JobState.HELD:
            return job.reason or operators.HELD_BY_OPERATOR
        if job.state is not JobState.WAITING:
            return ""
        pipeline = self.job_pipeline(job)
        if pipeline is None or job.step not in pipeline.steps:
            return f"step {job.pipeline}.{job.step} is no longer configured"
        # an operator's standing order first: it holds whatever else is met
        draining = self.controls.get(DRAINING)
        if draining is not None:
            return f"the daemon is draining ({_order_text(draining)}): muppet undrain starts jobs again"
        paused = self.controls.get(paused_key(pipeline.name))
        if paused is not None:
            return f"pipeline {pipeline.name} is paused ({_order_text(paused)}): muppet resume {pipeline.name}"
        run = self.runs[job.run_id]
        if run.state is RunState.QUEUED:
            return (f"runahead: {self._unfinished(pipeline.name)} of {pipeline.runahead} runs of "
                    f"{pipeline.name} running; this one is queued")
        if job.not_before > now:
            if job.reason:  # a failed start: what went wrong, and when it is tried again
                return f"{job.reason}; trying again at {format_time(job.not_before)}"
            return f"backoff until {format_time(job.not_before)}"
        clock = self._deadlines(job).not_before
        if clock is not None and clock > now:
            return f"clock: not before {format_time(datetime.fromtimestamp(clock, UTC))}"
        unmet = []
        for slot in self._parent_slots(job, pipeline):
            parent = self._newest_in_slot(job.run_id, slot)
            if parent is None or parent.state not in DONE:
                unmet.append(f"{slot[0]}[{slot[1]}] {parent.state.value if parent else 'missing'}")
        for name, moment, run_id, state in self._earlier_parents(job, pipeline):
            if state not in DONE:
                if state is None:
                    unmet.append(f"{name}: no run for {format_time(moment)} yet")
                else:
                    unmet.append(f"{name} {state.value} (run {run_id} for {format_time(moment)})")
        if unmet:
            more = f" (and {len(unmet) - 3} more)" if len(unmet) > 3 else ""
            return "parents: " + ", ".join(unmet[:3]) + more
        step = pipeline.steps[job.step]
        active = [self._current_copy(j) for j in sorted(self.active)]
        executor = self.executors.get(job.executor)
        if executor is not None:
            busy = sum(1 for other in active if other.executor == job.executor)
            if busy >= executor.max_jobs:
                return f"executor {executor.name}: {busy} of {executor.max_jobs} slots busy"
        if step.concurrency is not None:
            same = [other.id for other in active if (other.pipeline, other.step) == (job.pipeline, job.step)]
            if len(same) >= step.concurrency:
                return (f"concurrency: {len(same)} of {step.concurrency} {job.step} jobs running"
                        f" ({', '.join(map(str, same[:5]))})")
        conflicting = self._conflict_table(pipeline).get(job.step, _NO_CONFLICTS)
        for other in active:
            if other.pipeline == job.pipeline and other.step in conflicting:
                return f"conflict: {other.step} job {other.id} running"
        return "ready: starts in the next scheduling pass"

    def _dependencies_met(self, job: Job, pipeline: Pipeline) -> bool:
        # A parent's success still on its way to the database counts: the
        # child's submission is written in the same transaction or a later
        # one, and the database task commits them in order and never drops
        # one (docs/database.md), so no committed state has the child
        # submitted without its parent's success, and the child is handed to
        # the executor only once both are committed. It saves a chain one
        # commit per link (docs/architecture.md, "The rules they keep").
        # A rerun of the parent's slot on its way counts the same way: the
        # slot's newest job, the rerun, is the parent the child waits for
        # (once committed, it is the slot's current job).
        for slot in self._parent_slots(job, pipeline):
            parent = self._newest_in_slot(job.run_id, slot)
            if parent is None or parent.state not in DONE:
                return False
        return self._earlier_parents_done(job, pipeline)

    def _earlier_parents_done(self, job: Job, pipeline: Pipeline) -> bool:
        return all(state in DONE for _, _, _, state in self._earlier_parents(job, pipeline))

    def _unmet_parent_slot(self, job: Job, pipeline: Pipeline) -> tuple[str, int] | None:
        """A parent slot of the run, of ``job``'s ``all`` step, whose newest
        job is not done (counting one on its way to the database, as
        ``_dependencies_met`` does), or None. The search starts where the
        group's last one found such a slot and goes round once: the slots
        before it were done then, and a parent ends far more often than it is
        rerun."""
        step = pipeline.steps[job.step]
        group = self._group(job.id)
        parents = [(name, pipeline.steps[name].jobs) for name in step.parents]
        for position, slot in _slots_round(parents, self.unmet_from.get(group, 0)):
            parent = self._newest_in_slot(job.run_id, slot)
            if parent is None or parent.state not in DONE:
                self.unmet_from[group] = position
                return slot
        self.unmet_from.pop(group, None)
        return None

    def _earlier_parents(
        self, job: Job, pipeline: Pipeline,
    ) -> Iterator[tuple[str, datetime, int | None, JobState | None]]:
        """The intercycle parents of ``job`` not counted as satisfied (before
        the pipeline's ``initial``), one per parent slot: (how the step
        names it, the parent run's reference time, its run id if in memory,
        the slot's state: None when that run does not exist (yet))."""
        step = pipeline.steps[job.step]
        if not step.intercycle:
            return
        reference_time = self.runs[job.run_id].reference_time
        for parent in step.intercycle:
            moment = cycling.parent_reference(pipeline, reference_time, parent)
            if cycling.before_initial(pipeline, moment):
                continue
            source = pipeline.steps[parent.step]
            indexes = [job.index] if step.depends is Depends.EACH else range(source.jobs)
            run_id = self.run_at.get((pipeline.name, moment))
            ended = self.ended.get((pipeline.name, moment))
            if run_id is None and ended is not None:
                run_id = ended.run_id
            for index in indexes:
                state: JobState | None = None
                if run_id is not None and run_id in self.runs:
                    current = self.current.get(run_id, {}).get((parent.step, index))
                    state = None if current is None else self.jobs[current].state
                elif ended is not None:
                    state = next((s for st, i, s in ended.slots if (st, i) == (parent.step, index)), None)
                yield f"{parent}", moment, run_id, state

    def _parent_slots(self, job: Job, pipeline: Pipeline) -> Iterator[tuple[str, int]]:
        """The (step, index) slots of the run that ``job`` waits for, lazily
        (the scheduling pass stops at the first one not done)."""
        step = pipeline.steps[job.step]
        for parent_name in step.parents:
            parent = pipeline.steps[parent_name]
            indexes = [job.index] if step.depends is Depends.EACH else range(parent.jobs)
            for index in indexes:
                yield parent_name, index

    def _ended_parent(self, job: Job) -> Job | None:
        """A parent slot's newest job that has ended without success, if any
        (a rerun of that slot still in flight counts as its newest job)."""
        pipeline = self.job_pipeline(job)
        if pipeline is None:
            return None
        for slot in self._parent_slots(job, pipeline):
            parent = self._newest_in_slot(job.run_id, slot)
            if parent is not None and parent.state.finished and parent.state not in DONE:
                return parent
        return None

    def _newest_in_slot(self, run_id: int, slot: tuple[str, int]) -> Job | None:
        """The slot's newest job, following successors not yet committed."""
        current = self.current[run_id].get(slot)
        if current is None:
            return None
        job = self._current_copy(current)
        while job.successor is not None and self._latest(job.successor) is not None:
            job = self._current_copy(job.successor)
        return job

    def _skip_downstream(self, failed: Job, changes: list[Change], now: float, *, expiring: bool = False) -> None:
        """A job that failed for good (or was killed) leaves every job that
        depends on it, directly or not, without a way to run: they end
        skipped; downstream of an expired job they expire with it."""
        pipeline = self.job_pipeline(failed)
        if pipeline is None:
            return
        todo = [(failed.step, failed.index)]
        seen: set[tuple[str, int]] = set()
        while todo:
            step_name, index = todo.pop()
            for child_name in pipeline.children(step_name):
                child = pipeline.steps[child_name]
                indexes = [index] if child.depends is Depends.EACH else range(child.jobs)
                for child_index in indexes:
                    slot = (child_name, child_index)
                    if slot not in seen:
                        seen.add(slot)
                        todo.append(slot)
        for slot in sorted(seen):
            # the newest job of the slot: a rerun still being committed too
            job = self._newest_in_slot(failed.run_id, slot)
            if job is not None and job.state in (JobState.WAITING, JobState.HELD):
                if expiring:
                    self._move(job, JobState.EXPIRED, changes, ended_at=now, reason=states.upstream_expired(failed))
                else:
                    why = states.upstream_did_not_succeed(failed)
                    self._move(job, JobState.SKIPPED, changes, ended_at=now, reason=why)

    def _rerun(self, job: Job, changes: list[Change], now: float, *, downstream: bool = False) -> Job:
        """A fresh job in the same slot (a full set of tries), and fresh jobs for
        the slots downstream that were skipped or expired because of it (with
        ``downstream``: every slot after it in the run that has ended). An
        operator's rerun does not expire (docs/configuration.md, "Cycling")."""
        fresh = self._successor(job, changes, now)
        self._revive_downstream(job, changes, now, downstream=downstream)
        # a run whose end is still in flight is reopened too: the RUNNING
        # proposal replaces the pending end, so the run is not forgotten (a
        # queued run stays queued: its runahead decides)
        self._reopen_run(job.run_id, changes)
        return fresh

    def _reopen_run(self, run_id: int, changes: list[Change]) -> None:
        """An ended run (or one whose end is in flight) runs again."""
        run = self.runs[run_id]
        pending = self.pending_runs.get(run.id)
        if run.state.finished or (pending is not None and pending.state.finished):
            self._move_run(run, RunState.RUNNING, changes, ended_at=None)

    def _revive_downstream(self, job: Job, changes: list[Change], now: float, *, downstream: bool) -> None:
        """Fresh jobs for the ended slots after ``job``'s in its run: those
        skipped or expired because of it, or (``downstream``) all of them."""
        pipeline = self.job_pipeline(job)
        if pipeline is None:
            return
        descendants = pipeline.descendants(job.step)
        # parents before children (the pipeline's steps are in topological
        # order), so that a revived child sees its revived parents; a child
        # with another parent that ended without success stays as it is: it
        # would wait for ever
        slots = self.current[job.run_id]
        for step_name in pipeline.steps:
            if step_name not in descendants:
                continue
            for slot, current in sorted(slots.items()):
                if slot[0] != step_name:
                    continue
                later = self._current_copy(current)
                wanted = later.state.finished if downstream else later.state in _REVIVED
                if wanted and later.successor is None and self._ended_parent(later) is None:
                    self._successor(later, changes, now)

    def _successor(
        self,
        job: Job,
        changes: list[Change],
        now: float,
        *,
        failures: int = 0,
        not_before: float = 0.0,
        ending: JobState | None = None,
        born: JobState = JobState.WAITING,
        born_reason: str = "",
        **ended: Any,
    ) -> Job:
        """A new job in ``job``'s slot, linked both ways; the old job moves to
        ``ending`` (its failure, for a retry) with ``ended``, or keeps its state
        (a rerun of an ended job). The new job is waiting, or ``born`` ended
        (an operator set the slot's outcome: ``born_reason`` says so)."""
        fresh = Job(
            id=self._new_job_id(),
            run_id=job.run_id,
            pipeline=job.pipeline,
            step=job.step,
            index=job.index,
            count=job.count,
            executor=job.executor,
            failures=failures,
            predecessor=job.id,
            not_before=not_before,
            created_at=now,
            state=born,
            reason=born_reason,
            ended_at=now if born.finished else None,
        )
        self._move(job, ending or job.state, changes, successor=fresh.id, **ended)
        self._propose(fresh, changes)
        return fresh

    def _reopen(
        self, run: Run, jobs: tuple[Job, ...], job_id: int, changes: list[Change], definition: Pipeline | None = None,
    ) -> Job | None:
        """Bring a finished run back into memory for a rerun of one of its
        jobs, under the definition it was made with (``definition``, read
        from the database when the scheduler no longer holds it)."""
        if definition is not None and run.definition:
            self.definitions.setdefault(run.definition, definition)
        if run.id in self.runs or self.run_pipeline(run) is None:
            return None
        self.runs[run.id] = run
        for job in sorted(jobs, key=lambda j: j.id):
            self._store_job(job)
        return self.jobs.get(job_id)

    def _maybe_finish_run(self, run_id: int, changes: list[Change], now: float) -> None:
        """A run ends when every slot's current job has ended: succeeded when all
        of them succeeded, failed otherwise (docs/states.md)."""
        run = self.runs.get(run_id)
        if run is None or run.state.finished or run_id in self.pending_runs or self.unsettled.get(run_id):
            return
        states_seen = {self.jobs[job_id].state for job_id in self.current.get(run_id, {}).values()}
        if states_seen <= DONE:
            outcome = RunState.SUCCEEDED
        elif states_seen <= DONE | {JobState.EXPIRED}:
            outcome = RunState.EXPIRED
        else:
            outcome = RunState.FAILED
        self._move_run(run, outcome, changes, ended_at=now)

    def _start_job(self, job: Job, now: float, changes: list[Change]) -> StartJob | None:
        run = self.runs[job.run_id]
        pipeline = self.run_pipeline(run)
        if pipeline is None or job.step not in pipeline.steps:
            self._move(job, JobState.FAILED, changes, ended_at=now, reason=states.no_longer_configured(job))
            return None
        return StartJob(job=job, step=pipeline.steps[job.step], reference_time=run.reference_time)

    # --- the configuration, and the definition each run finishes under -----------

    def configure(self, pipelines: Mapping[str, Pipeline], executors: Mapping[str, ExecutorConfig]) -> None:
        """Make new runs from ``pipelines`` and start jobs under
        ``executors``' limits from now on: at start, and at a reload
        (``reconfigure.py``). A run keeps the definition it was made with; an
        executor taken out of the configuration stays while jobs of runs in
        memory may still run on it (their definitions name it)."""
        self.pipelines = dict(pipelines)
        self.required_by = defaultdict(list)
        self.current_definition, self.definition_texts = {}, {}
        for pipeline in self.pipelines.values():
            for product in pipeline.requires:
                self.required_by[product].append(pipeline)
            text = codec.definition_text(pipeline)
            key = codec.definition_hash(text)
            self.current_definition[pipeline.name] = key
            self.definition_texts[key] = text
            self.definitions[key] = pipeline
        in_use = {job.executor for job in self.jobs.values() if not job.state.finished}
        in_use.update(job.executor for new in self.pending_new.values() for job in new.jobs)
        kept = {name: executor for name, executor in self.executors.items() if name in in_use}
        self.executors = {**kept, **executors}
        # a run made before definitions were kept takes its pipeline's new
        # one, whose parents may differ: every parked job and group is
        # looked at again (the next pass parks again what still waits)
        for group in list(self.parked_groups):
            self._unpark_group(group)
        for job_id in list(self.parked):
            self._unpark(job_id)

    def forget_unused_definitions(self) -> None:
        """Keep only the current definitions and those of runs in memory
        (a run brought back for a rerun brings its own)."""
        used = {run.definition for run in self.runs.values()}
        used.update(new.run.definition for new in self.pending_new.values())
        used.update(self.definition_texts)
        self.definitions = {key: p for key, p in self.definitions.items() if key in used}
        self.conflict_sets.clear()

    def run_pipeline(self, run: Run) -> Pipeline | None:
        """The definition ``run`` was made with and finishes under: its own,
        by hash; for a run made before definitions were kept (""), or one
        whose definition the database lacked, its pipeline's current one.
        None when there is neither (its pipeline was configured away)."""
        if run.definition:
            found = self.definitions.get(run.definition)
            if found is not None:
                return found
        return self.pipelines.get(run.pipeline)

    def job_pipeline(self, job: Job) -> Pipeline | None:
        """The definition of ``job``'s run (``run_pipeline``)."""
        run = self.runs.get(job.run_id)
        return None if run is None else self.run_pipeline(run)

    def _conflict_table(self, pipeline: Pipeline) -> Mapping[str, frozenset[str]]:
        """For each step of ``pipeline`` (one definition), the steps that
        never run at the same time as it, made symmetric."""
        found = self.conflict_sets.get(id(pipeline))
        if found is None:
            # one pass over the declared pairs, not every step against every
            # other: a pipeline of thousands of steps is built at once
            sets: dict[str, set[str]] = {name: set() for name in pipeline.steps}
            for one in pipeline.steps.values():
                for other in one.conflicts:
                    sets[one.name].add(other)
                    sets.setdefault(other, set()).add(one.name)
            table = {name: frozenset(others) for name, others in sets.items()}
            found = self.conflict_sets[id(pipeline)] = (pipeline, table)
        return found[1]

    # --- bookkeeping --------------------------------------------------------------

    def _finish(self, now: float, changes: list[Change], effects: list[Effect] | None = None) -> list[Effect]:
        out: list[Effect] = []
        if changes:
            # an incident is persisted with the change that caused it
            changes.extend(self.incident_rules.derive(self, tuple(changes), now))
            out.append(Persist(tuple(changes)))
        out.extend(effects or ())
        out.extend(Notice(text) for text in self.notices)
        self.notices.clear()
        # entries due now were handled (or wait for a commit in flight, which
        # brings a batch of its own): the next wake-up is the first later one
        self._pop_due(now)
        if self.timers:
            out.append(WakeAt(self.timers[0][0]))
        return out

    # --- time: backoffs, clock triggers, expiry, lateness ---------------------------

    def _timer(self, moment: float | None, what: str, ident: int) -> None:
        if moment is not None and (moment, what, ident) not in self.timer_keys:
            self.timer_keys.add((moment, what, ident))
            heapq.heappush(self.timers, (moment, next(self.timer_sequence), what, ident))

    def _pop_due(self, now: float) -> list[tuple[float, int, str, int]]:
        """Take the entries due at ``now`` off ``timers``, in their order."""
        due = []
        while self.timers and self.timers[0][0] <= now:
            entry = heapq.heappop(self.timers)
            self.timer_keys.discard((entry[0], entry[2], entry[3]))
            due.append(entry)
        return due

    def _deadlines(self, job: Job) -> Deadlines:
        """When the job's step may start, expires, is late, in its run."""
        key = (job.run_id, job.step)
        found = self.deadlines.get(key)
        if found is None:
            run = self.runs.get(job.run_id)
            pipeline = None if run is None else self.run_pipeline(run)
            if pipeline is None or run is None or job.step not in pipeline.steps:
                found = Deadlines()
            else:
                found = cycling.step_deadlines(pipeline, pipeline.steps[job.step], run.reference_time)
            self.deadlines[key] = found
        return found

    def _timers_due(self, changes: list[Change], touched: set[int], now: float) -> None:
        """Expire and flag late what is due (the entries of ``timers`` at or
        before ``now``); a job or run with a write in flight is looked at
        again in the next batch."""
        for moment, _, what, ident in self._pop_due(now):
            if what == "expire":
                job = self.jobs.get(ident)
                if job is not None and ident not in self.pending_jobs and job.state in _UNSTARTED:
                    deadline = format_time(datetime.fromtimestamp(moment, UTC))
                    self._move(job, JobState.EXPIRED, changes, ended_at=now, reason=states.expired(deadline))
                    self._skip_downstream(job, changes, now, expiring=True)
                    touched.add(job.run_id)
            elif what == "late":
                job = self.jobs.get(ident)
                if job is not None and ident not in self.pending_jobs and not job.late and (
                    job.state is not JobState.SUCCEEDED and job.successor is None
                ):
                    self._move(job, job.state, changes, late=True)
                    reference_time = self.runs[job.run_id].reference_time
                    changes.append(LateNotice("job", job.id, job.pipeline, reference_time,
                                              job.step, job.index, moment))
            elif what == "late-run":
                run = self.runs.get(ident)
                if run is not None and ident not in self.pending_runs and not run.late and (
                    run.state is not RunState.SUCCEEDED
                ):
                    self._move_run(run, run.state, changes, late=True)
                    changes.append(LateNotice("run", run.id, run.pipeline, run.reference_time, deadline=moment))

    # --- cycles: runs by reference time, runahead ------------------------------------

    def _store_run(self, run: Run) -> None:
        self.runs[run.id] = run
        self.run_at[(run.pipeline, run.reference_time)] = run.id
        pipeline = self.run_pipeline(run)
        if pipeline is not None and not run.late:
            self._timer(cycling.run_late_deadline(pipeline, run.reference_time), "late-run", run.id)

    def _prune_ended(self, pipeline: Pipeline) -> None:
        """Keep only the ended runs of ``pipeline`` that a run in memory
        waits on (a run made later gets the ones it needs from the database
        with its commit: NewRun.needs)."""
        needed: set[datetime] = set()
        for run in (*self.runs.values(), *(new.run for new in self.pending_new.values())):
            definition = self.run_pipeline(run) if run.pipeline == pipeline.name else None
            if definition is not None:
                needed |= cycling.parent_references(definition, run.reference_time)
        for key in [k for k in self.ended if k[0] == pipeline.name and k[1] not in needed]:
            del self.ended[key]

    def _run_in_memory(self, pipeline: str, reference_time: datetime) -> Run | None:
        """The unfinished (or being made) run of ``pipeline`` at ``reference_time``."""
        run_id = self.run_at.get((pipeline, reference_time))
        if run_id is not None and run_id in self.runs:
            return self.runs[run_id]
        for new in self.pending_new.values():
            if new.run.pipeline == pipeline and new.run.reference_time == reference_time:
                return new.run
        return None

    def _unfinished(self, pipeline: str) -> int:
        """The runs of ``pipeline`` that count against its runahead: running
        (or about to), being made as running."""
        count = 0
        for run in self.runs.values():
            latest = self.pending_runs.get(run.id, run)
            if run.pipeline == pipeline and latest.state is RunState.RUNNING:
                count += 1
        return count + sum(
            1 for new in self.pending_new.values()
            if new.run.pipeline == pipeline and new.run.state is RunState.RUNNING
        )

    def _promote_queued(self, changes: list[Change]) -> None:
        """Let queued runs run, oldest reference time first, while their
        pipeline's runahead has room."""
        queued: dict[str, list[Run]] = defaultdict(list)
        for run in self.runs.values():
            if run.state is RunState.QUEUED and run.id not in self.pending_runs:
                queued[run.pipeline].append(run)
        for name, waiting in queued.items():
            # the runahead configured now; a pipeline configured away lets its
            # queued runs run under their own definition's
            pipeline = self.pipelines.get(name) or self.run_pipeline(waiting[0])
            if pipeline is None or paused_key(name) in self.controls:
                continue
            # no runahead (only a pause made them queued): every one runs
            room = len(waiting) if pipeline.runahead is None else pipeline.runahead - self._unfinished(name)
            for run in sorted(waiting, key=lambda r: r.reference_time)[: max(room, 0)]:
                self._move_run(run, RunState.RUNNING, changes)

    def _move(self, job: Job, state: JobState, changes: list[Change], **fields: Any) -> None:
        """Propose ``job`` in ``state`` with ``fields``: through the table."""
        try:
            moved = states.move_job(job, state, **fields)
        except IllegalTransition as exc:
            self._refuse(exc)
            return
        self._propose(moved, changes)

    def _move_run(self, run: Run, state: RunState, changes: list[Change], **fields: Any) -> None:
        """Propose ``run`` in ``state`` with ``fields``: through the table."""
        try:
            moved = states.move_run(run, state, **fields)
        except IllegalTransition as exc:
            self._refuse(exc)
            return
        self._propose_run(moved, changes)

    def _refuse(self, exc: IllegalTransition) -> None:
        if self.strict:
            raise exc
        self.notices.append(f"refused: {exc}")

    def _propose(self, job: Job, changes: list[Change]) -> None:
        """Send a new job, or a copy that came from ``_move``, to be persisted."""
        self.pending_jobs[job.id] = job
        self._settle(job.id)
        if job.state.active:
            self._activate(job)
        if self.parked or self.parked_on:
            self._wake_children(job)
        changes.append(job)

    def _propose_run(self, run: Run, changes: list[Change]) -> None:
        self.pending_runs[run.id] = run
        changes.append(run)

    def _store_job(self, job: Job) -> None:
        """Keep a persisted copy and the indexes derived from it."""
        if job.id not in self.jobs:
            self.run_jobs.setdefault(job.run_id, set()).add(job.id)
        self.jobs[job.id] = job
        slots = self.current.setdefault(job.run_id, {})
        replaced = slots.get(job.slot, 0)
        if replaced < job.id:
            slots[job.slot] = job.id
            self._settle(replaced)
        self._settle(job.id)
        if job.state is JobState.WAITING:
            self._wait(job.id)
        else:
            self._unwait(job.id)
        if job.state.finished:
            self.handed.discard(job.id)
            self.start_failures.pop(job.id, None)
        elif job.run_id in self.runs:
            deadlines = self._deadlines(job)
            if job.state in _UNSTARTED:
                self._timer(job.not_before or None, "wake", job.id)
                self._timer(deadlines.not_before, "wake", job.id)
                if not _operators_rerun(job):
                    self._timer(deadlines.expire, "expire", job.id)
            if not job.late:
                self._timer(deadlines.late, "late", job.id)
        pending = self.pending_jobs.get(job.id)
        if job.state.active or (pending is not None and pending.state.active):
            self._activate(job)
        else:
            self._deactivate(job)
        if self.parked or self.parked_on:
            self._wake_children(job)

    def _activate(self, job: Job) -> None:
        """``job`` holds a slot (its pipeline, step and executor are the same
        in every copy)."""
        if job.id not in self.active:
            self.active.add(job.id)
            step = (job.pipeline, job.step)
            self.active_by_step[step] = self.active_by_step.get(step, 0) + 1
            self.active_by_executor[job.executor] = self.active_by_executor.get(job.executor, 0) + 1

    def _deactivate(self, job: Job) -> None:
        if job.id in self.active:
            self.active.discard(job.id)
            step = (job.pipeline, job.step)
            self.active_by_step[step] -= 1
            if not self.active_by_step[step]:
                del self.active_by_step[step]
            self.active_by_executor[job.executor] -= 1
            if not self.active_by_executor[job.executor]:
                del self.active_by_executor[job.executor]

    def _settle(self, job_id: int) -> None:
        """Keep ``unsettled`` right for the stored job ``job_id`` (nothing for
        a job not stored yet: it is no slot's current job)."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        current = self.current.get(job.run_id, {}).get(job.slot) == job_id
        if current and (job_id in self.pending_jobs or not job.state.finished):
            self.unsettled.setdefault(job.run_id, set()).add(job_id)
        else:
            unsettled = self.unsettled.get(job.run_id)
            if unsettled is not None:
                unsettled.discard(job_id)

    def _wait(self, job_id: int) -> None:
        """Make the stored job ``job_id`` a candidate of the scheduling pass
        (or of its group's, parked: the same parent holds it back)."""
        if job_id not in self.waiting:
            self.waiting.add(job_id)
            group = self._group(job_id)
            groups = self._groups_holding(group)
            ids = groups.get(group)
            if ids is None:
                groups[group] = [job_id]
            else:
                bisect.insort(ids, job_id)

    def _unwait(self, job_id: int) -> None:
        """No more a candidate of the pass (the job is still stored)."""
        if job_id not in self.waiting:
            return
        self.waiting.discard(job_id)
        if job_id in self.parked:
            self.parked.discard(job_id)
        else:
            self._take_out(self._group(job_id), job_id)

    def _group(self, job_id: int) -> WaitingGroup:
        """The stored job's group of waiting jobs."""
        job = self.jobs[job_id]
        return job.run_id, job.step, job.executor

    def _groups_holding(self, group: WaitingGroup) -> dict[WaitingGroup, list[int]]:
        """Where ``group``'s ids are (or go): parked, or in the pass."""
        return self.parked_groups if group in self.parked_groups else self.waiting_groups

    def _take_out(self, group: WaitingGroup, job_id: int) -> None:
        ids = self._groups_holding(group)[group]
        del ids[bisect.bisect_left(ids, job_id)]
        if not ids:
            self._unpark_group(group)  # the slot's record of it goes too
            del self.waiting_groups[group]
            self.unmet_from.pop(group, None)

    def _park_group(self, group: WaitingGroup, slot: tuple[int, str, int]) -> None:
        """Keep the waiting group ``group`` out of the scheduling pass until
        the parent slot ``slot`` (run id, step, index) is done."""
        ids = self.waiting_groups.pop(group, None)
        if ids is not None:
            self.parked_groups[group] = ids
            self.parked_group_slot[group] = slot
            self.parked_on.setdefault(slot, set()).add(group)

    def _unpark_group(self, group: WaitingGroup) -> None:
        ids = self.parked_groups.pop(group, None)
        if ids is None:
            return
        slot = self.parked_group_slot.pop(group)
        parked = self.parked_on[slot]
        parked.discard(group)
        if not parked:
            del self.parked_on[slot]
        self.waiting_groups[group] = ids

    def _park(self, job_id: int) -> None:
        """Keep the waiting job ``job_id`` out of the scheduling pass until
        its parent succeeds."""
        if job_id in self.waiting and job_id not in self.parked:
            self.parked.add(job_id)
            self._take_out(self._group(job_id), job_id)

    def _unpark(self, job_id: int) -> None:
        if job_id in self.parked:
            self.parked.discard(job_id)
            bisect.insort(self.waiting_groups.setdefault(self._group(job_id), []), job_id)

    def _wake_children(self, job: Job) -> None:
        """``job`` succeeded (or was bypassed), proposed or committed: its
        children of ``each`` steps in the run, with its index, may start,
        and the groups parked on its slot are looked at again."""
        if job.state not in DONE:
            return
        for group in list(self.parked_on.get((job.run_id, job.step, job.index), ())):
            self._unpark_group(group)
        if not self.parked:
            return
        run = self.runs.get(job.run_id)
        pipeline = None if run is None else self.run_pipeline(run)
        if pipeline is None or job.step not in pipeline.steps:
            return
        slots = self.current.get(job.run_id, {})
        for child in pipeline.children(job.step):
            if pipeline.steps[child].depends is Depends.EACH:
                child_id = slots.get((child, job.index))
                if child_id is not None:
                    self._unpark(child_id)

    def _forget_run(self, run_id: int) -> None:
        run = self.runs.pop(run_id, None)
        slots = self.current.pop(run_id, {})
        self.unsettled.pop(run_id, None)
        if run is not None:
            self.run_at.pop((run.pipeline, run.reference_time), None)
            pipeline = self.run_pipeline(run)
            if pipeline is not None and pipeline.cycling:
                # later cycles may wait on it: keep what they need to know
                states_by_slot = tuple(sorted(
                    (step, index, self._current_copy(job_id).state) for (step, index), job_id in slots.items()
                ))
                self.ended[(run.pipeline, run.reference_time)] = EndedRun(
                    run.id, run.pipeline, run.reference_time, run.state, states_by_slot
                )
                self._prune_ended(pipeline)
        for key in [k for k in self.deadlines if k[0] == run_id]:
            del self.deadlines[key]
        for job_id in self.run_jobs.pop(run_id, ()):
            self._unwait(job_id)
            self._deactivate(self.jobs.pop(job_id))
            self.handed.discard(job_id)
            self.start_failures.pop(job_id, None)
            self.pending_jobs.pop(job_id, None)

    def _latest(self, job_id: int) -> Job | None:
        """The newest copy of a job: proposed if a write is in flight."""
        return self.pending_jobs.get(job_id) or self.jobs.get(job_id)

    def _current_copy(self, job_id: int) -> Job:
        """The newest copy of a job known to be in memory."""
        return self.pending_jobs.get(job_id) or self.jobs[job_id]

    def _pay(self, owed: dict[int, list[tuple[int, Reply]]], key: int) -> list[Effect]:
        return [Answer(request, reply) for request, reply in owed.pop(key, [])]

    def _new_run_id(self) -> int:
        self.next_run_id += 1
        return self.next_run_id - 1

    def _new_job_id(self) -> int:
        self.next_job_id += 1
        return self.next_job_id - 1


#: the states of a parent that let its children go on (a bypassed step's
#: children go on as if it had succeeded)
DONE = frozenset({JobState.SUCCEEDED, JobState.BYPASSED})


def _slots_round(parents: list[tuple[str, int]], start: int) -> Iterator[tuple[int, tuple[str, int]]]:
    """The slots (step, index) of ``parents`` ((step, jobs), in order) with
    their positions in that order, from position ``start`` to the end and
    then from the beginning up to ``start``."""
    spans, total = [], 0
    for name, jobs in parents:
        spans.append((total, name, jobs))
        total += jobs
    start = start if start < total else 0
    for low, high in ((start, total), (0, start)):
        for first, name, jobs in spans:
            for index in range(max(low - first, 0), min(high - first, jobs)):
                yield first + index, (name, index)


def _order_text(order: Mapping[str, Any]) -> str:
    """Who gave a standing order, since when, why."""
    text = f"by {order['by']} since {order['since']}"
    return text + (f": {order['reason']}" if order.get("reason") else "")
_NO_CONFLICTS: frozenset[str] = frozenset()

#: the waiting jobs the scheduling pass can leave together: (run id, step, executor)
WaitingGroup = tuple[int, str, str]
#: the scheduling pass's verdicts on a waiting job (Scheduler._consider)
_START, _SKIP_JOB, _PARK, _LEAVE_GROUP = object(), object(), object(), object()
#: the states in which a job has not started: it can still expire
_UNSTARTED = frozenset({JobState.WAITING, JobState.HELD})
#: a rerun brings back the downstream slots that ended so because of it
_REVIVED = frozenset({JobState.SKIPPED, JobState.EXPIRED})


def _operators_rerun(job: Job) -> bool:
    """A job made by an operator's rerun (a retry has failures, the first
    job no predecessor): an explicit request to run it, late or not."""
    return job.predecessor is not None and job.failures == 0


@attrs.define
class _Backfill:
    """A backfill request: its runs still being made, in order, and the
    reference times that had a run already."""

    request: int
    waiting: set[int] = attrs.field(factory=set)
    order: list[int] = attrs.field(factory=list)
    skipped: list[datetime] = attrs.field(factory=list)

    def result(self) -> dict[str, Any]:
        return {"run_ids": list(self.order), "skipped": [format_time(t) for t in sorted(self.skipped)]}


def _answer(request: int, result: Any) -> Answer:
    return Answer(request, Reply(result=result))


def _error(request: int, code: int, message: str) -> Answer:
    return Answer(request, Reply(error=message, code=code))


def _exists(run: Run, duplicate: bool = False) -> str:
    which = "a run" if duplicate else f"run {run.id}"
    return f"{which} of {run.pipeline} for {format_time(run.reference_time)} exists already"
