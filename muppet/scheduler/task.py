"""The scheduler task: moves messages between the channels and the sans-I/O
core in `core.py`. It decides nothing itself."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import trio

from .. import codec, metrics
from ..messages import (
    Asked,
    Backfill,
    Command,
    DaemonCommand,
    EndedRun,
    ExecutorSettings,
    KillJob,
    Operator,
    Persist,
    Persisted,
    PipelineCommand,
    Reconfigure,
    Reply,
    RequestUpdate,
    RunCommand,
    StartJob,
    ToExecutor,
    ToScheduler,
    Trigger,
    UpdateRequest,
    WhyWaiting,
)
from ..model import Job, Run
from .core import Answer, Effect, Event, Notice, Scheduler, WakeAt
from .watch import Ended, JobWatch, RunEnded, Started

log = logging.getLogger("muppet.scheduler")


async def run(
    core: Scheduler,
    inbox: trio.MemoryReceiveChannel[ToScheduler],
    to_database: trio.MemorySendChannel[Persist],
    to_executor: trio.MemorySendChannel[ToExecutor],
    *,
    loaded: tuple[Iterable[Run], Iterable[Job]] = ((), ()),
    ended: Iterable[EndedRun] = (),
    controls: Mapping[str, Any] | None = None,
    update_requests: Iterable[UpdateRequest] = (),
    clock: Callable[[], float] = time.time,
) -> None:
    """Feed the core every event that arrives and carry out its effects.

    Receives on ``inbox``: `Persisted` (database task), `Trigger` (cron),
    `JobStarted`/`JobFinished` (executor) and `Asked` (a Trigger or Command
    from the API, with the channel its Reply goes to; a Reconfigure from the
    reload task). Sends `Persist` to the database task, `StartJob`/`KillJob`
    (and a reload's `ExecutorSettings`) to the executor, and each `Reply` on
    the channel of the request it answers. ``loaded`` is ``(runs, jobs)`` of
    the unfinished work a previous daemon left, taken over before anything
    else; ``ended`` the ended runs those wait on through intercycle parents;
    ``controls`` the operators' standing orders (paused pipelines, draining);
    ``update_requests`` the requests for product updates still waiting.

    The core sees requests by number: this task numbers each Asked and keeps
    its channel until the core's Answer of that number.

    Events that arrive together are handled as one batch (one scheduling pass,
    one transaction). A wake-up for a backoff that ends is an empty batch at
    that time. On cancellation it stops between batches; what it had sent is
    either committed by the database task or never acted on, so a restart
    takes over from the database alone.
    """
    requests = _Requests()
    runs, jobs = loaded
    # read twice: by the core and by the watch that logs and counts changes
    runs, jobs = tuple(runs), tuple(jobs)
    watch = JobWatch(runs, jobs)
    effects = core.load(runs, jobs, clock(), ended, controls, update_requests)
    wake_at = math.inf
    while True:
        wake_at = await _carry_out(effects, to_database, to_executor, requests, wake_at)
        batch: list[Event] = []
        with trio.move_on_at(trio.current_time() + max(0.0, wake_at - clock())):
            batch.extend(requests.take(await inbox.receive(), core, clock))
        while True:
            try:
                batch.extend(requests.take(inbox.receive_nowait(), core, clock))
            except trio.WouldBlock:
                break
        now = clock()
        if not batch and wake_at > now:
            # woke early (the clock stepped, or a question was answered
            # without an event): nothing new to carry out; wait again
            effects = []
            continue
        wake_at = math.inf
        _hear(watch, batch)
        effects = core.handle(batch, now)


class _Requests:
    """Who waits for which request number."""

    def __init__(self) -> None:
        self.numbers = itertools.count(1)
        self.waiting: dict[int, trio.MemorySendChannel[Reply]] = {}
        #: what each operator's request asked, for the log line of its outcome
        self.asked: dict[int, str] = {}

    def take(self, message: ToScheduler, core: Scheduler, clock: Callable[[], float]) -> list[Event]:
        """The event for the core, numbered when it is a request; a question
        (WhyWaiting) is answered here at once and gives no event."""
        if not isinstance(message, Asked):
            return [message]
        if isinstance(message.event, WhyWaiting):
            now = clock()
            reasons = {job_id: core.why_waiting(job_id, now) for job_id in message.event.job_ids}
            self._send(message.reply, Reply(result=reasons))
            return []
        request = next(self.numbers)
        self.waiting[request] = message.reply
        self.asked[request] = _operator_action(message.event)
        return [attrs.evolve(message.event, request=request)]

    def answer(self, answer: Answer) -> None:
        reply = answer.reply
        action = self.asked.pop(answer.request, None)
        if action is not None:
            _log_operator_action(action, reply)
        channel = self.waiting.pop(answer.request, None)
        if channel is None:
            # nobody asked (cron, a data trigger): a refusal is only news
            if reply.error is not None:
                log.info("%s", reply.error)
            return
        self._send(channel, reply)

    def _send(self, channel: trio.MemorySendChannel[Reply], reply: Reply) -> None:
        try:
            channel.send_nowait(reply)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            # the requester went away (its connection closed); the change
            # itself is committed all the same
            log.debug("reply dropped: %r", reply)


def _hear(watch: JobWatch, batch: list[Event]) -> None:
    """Log what the committed changes of ``batch`` tell an operator and count
    them in the daemon's metrics (``watch.py``)."""
    figures = metrics.current()
    for event in batch:
        if not isinstance(event, Persisted):
            continue
        heard = watch.persisted(event)
        for line in heard.lines:
            log.warning("%s", line)
        for seen in heard.observations:
            if isinstance(seen, Started):
                figures.job_started(seen.pipeline, seen.waited)
            elif isinstance(seen, Ended):
                figures.job_ended(seen.pipeline, seen.state, seen.duration)
            elif isinstance(seen, RunEnded):
                figures.run_ended(seen.pipeline, seen.state, seen.duration)


def _operator_action(event: object) -> str:
    """An operator's request in words, as the log tells it: who, what, why."""
    if isinstance(event, Command):
        what = f"{event.action} job {event.job_id}" + (f" {event.outcome}" if event.outcome else "")
        what += " and downstream" if event.downstream else ""
    elif isinstance(event, RunCommand):
        what = f"{event.action} run {event.run_id}" + (f" step {event.step}" if event.step else "")
    elif isinstance(event, PipelineCommand):
        what = f"{event.action} {event.pipeline}"
    elif isinstance(event, DaemonCommand):
        what = event.action
    elif isinstance(event, Trigger):
        what = f"trigger {event.pipeline} for {codec.format_time(event.reference_time)}"
    elif isinstance(event, RequestUpdate):
        what = f"request {event.product} for {codec.format_time(event.reference_time)} from {event.pipeline}"
    elif isinstance(event, Backfill):
        what = f"backfill {event.pipeline} ({len(event.reference_times)} reference times)"
    elif isinstance(event, Reconfigure):
        what = "reload"
    else:
        what = type(event).__name__.lower()
    by: Operator | None = getattr(event, "by", None)
    if by is None:
        return what
    return f"{by.name}: {what}" + (f" ({by.reason})" if by.reason else "")


def _log_operator_action(action: str, reply: Reply) -> None:
    """One line for every operator's action, once the scheduler has answered
    it: what was asked and what came of it (docs/operations.md, "Steering jobs")."""
    if reply.error is not None:
        log.info("operator: %s: refused: %s", action, reply.error)
        return
    result = reply.result
    if isinstance(result, dict):
        outcome = ", ".join(f"{key} {value}" for key, value in result.items())
    else:
        outcome = "done"
    log.info("operator: %s: %s", action, outcome)


async def _carry_out(
    effects: list[Effect],
    to_database: trio.MemorySendChannel[Persist],
    to_executor: trio.MemorySendChannel[ToExecutor],
    requests: _Requests,
    wake_at: float,
) -> float:
    for effect in effects:
        if isinstance(effect, Persist):
            await to_database.send(effect)
        elif isinstance(effect, (StartJob, KillJob, ExecutorSettings)):
            await to_executor.send(effect)
        elif isinstance(effect, Answer):
            requests.answer(effect)
        elif isinstance(effect, Notice):
            log.warning("%s", effect.text)
        elif isinstance(effect, WakeAt):
            wake_at = min(wake_at, effect.time)
    return wake_at
