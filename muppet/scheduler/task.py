"""The scheduler task: moves messages between the channels and the sans-I/O
core in `core.py`. It decides nothing itself."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio

from ..messages import KillJob, Persist, StartJob
from .core import Answer, Scheduler, WakeAt

log = logging.getLogger("muppet.scheduler")


async def run(
    core: Scheduler,
    inbox: trio.MemoryReceiveChannel,
    to_database: trio.MemorySendChannel,
    to_executor: trio.MemorySendChannel,
    *,
    loaded: tuple = ((), ()),
    clock: Callable[[], float] = time.time,
) -> None:
    """Feed the core every event that arrives and carry out its effects.

    Receives on ``inbox``: `Persisted` (database task), `Trigger` (cron, API),
    `JobStarted`/`JobFinished` (executor) and `Command` (API). Sends `Persist`
    to the database task, `StartJob`/`KillJob` to the executor and `Reply` on
    the reply channel a request carried. ``loaded`` is ``(runs, jobs)`` of the
    unfinished work a previous daemon left, taken over before anything else.

    Events that arrive together are handled as one batch (one scheduling pass,
    one transaction). A wake-up for a backoff that ends is an empty batch at
    that time. On cancellation it stops between batches; what it had sent is
    either committed by the database task or never acted on, so a restart
    takes over from the database alone.
    """
    runs, jobs = loaded
    effects = core.load(runs, jobs, clock())
    wake_at = math.inf
    while True:
        wake_at = await _carry_out(effects, to_database, to_executor, wake_at)
        batch = []
        with trio.move_on_at(trio.current_time() + max(0.0, wake_at - clock())):
            batch.append(await inbox.receive())
        while True:
            try:
                batch.append(inbox.receive_nowait())
            except trio.WouldBlock:
                break
        now = clock()
        if not batch and wake_at > now:
            continue  # woke early (clock stepped); wait again
        wake_at = math.inf
        effects = core.handle(batch, now)


async def _carry_out(effects, to_database, to_executor, wake_at: float) -> float:
    for effect in effects:
        if isinstance(effect, Persist):
            await to_database.send(effect)
        elif isinstance(effect, (StartJob, KillJob)):
            await to_executor.send(effect)
        elif isinstance(effect, Answer):
            if effect.to is None:
                # nobody asked (cron, a data trigger): a refusal is only news
                if effect.reply.error is not None:
                    log.info("%s", effect.reply.error)
                continue
            try:
                effect.to.send_nowait(effect.reply)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                # the requester went away (its connection closed); the change
                # itself is committed all the same
                log.debug("reply dropped: %r", effect.reply)
        elif isinstance(effect, WakeAt):
            wake_at = min(wake_at, effect.time)
    return wake_at
