"""The reload task: reads the configuration again without a restart
(``muppet reload``, the API's ``daemon.reload``, SIGHUP; docs/operations.md,
"Reload").

One reload at a time, in the order asked. For each ``Reload`` it

1. reads and checks the daemon's file and every pipeline file it lists
   (``muppet.config.load_config``, in a worker thread: it reads files). Any
   problem refuses the whole reload: every problem is logged and answered,
   and the daemon runs on as before;
2. works out what changes (``muppet/config/changes.py``): the file's
   settings, except those only a restart changes, which are said to wait
   for it. When nothing applies now it answers so and writes nothing;
3. asks the scheduler to run on it (``Reconfigure``): the scheduler makes new
   runs from the new pipelines and starts jobs under the new executors'
   limits, tells the executor, and commits the changed index declarations
   with the ``reload`` operator event in one transaction;
4. once that is committed, hands the new configuration to the tasks that read
   the running one (``RunningConfig``: the API, cron, expiry), logs what
   changed and answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from . import metrics
from .config import ConfigError, load_config
from .config.changes import Changes, compare
from .messages import CONFLICT, INVALID_CONFIGURATION, Asked, DefineIndex, Reconfigure, Reload, Reloaded, Reply
from .model import Config
from .running import RunningConfig

log = logging.getLogger("muppet.daemon")

async def run(
    requests: trio.MemoryReceiveChannel[Reload],
    scheduler: trio.MemorySendChannel[Asked],
    running: RunningConfig,
    *,
    load: Callable[[str], Config] = load_config,
) -> None:
    """Carry out each Reload that arrives on ``requests``, one at a time.

    Sends ``Asked(Reconfigure)`` to ``scheduler`` and waits for its Reply,
    which comes once the change is committed (however long the database
    takes); then replaces ``running``'s configuration and sends the
    ``Reloaded`` on the request's reply channel (a reply channel whose
    requester went away loses nothing: the reload is done all the same).
    ``load`` reads a configuration file (``load_config``; blocking, run in a
    worker thread).

    Cancellation: a reload cancelled while the file is read changes
    nothing; one cancelled while the scheduler commits it is committed or
    not, and the daemon that starts next reads the file anyway.
    """
    async for request in requests:
        outcome = await _reload(request, scheduler, running, load)
        if request.reply is not None:
            try:
                request.reply.send_nowait(outcome)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("reload reply dropped: %r", outcome)


async def _reload(
    request: Reload,
    scheduler: trio.MemorySendChannel[Asked],
    running: RunningConfig,
    load: Callable[[str], Config],
) -> Reloaded:
    who = request.by.name + (f" ({request.by.reason})" if request.by.reason else "")
    source = running.config.source
    if not source:
        why = "the daemon runs on the built-in defaults (started without --config): there is no file to read again"
        log.warning("reload by %s: refused: %s", who, why)
        return Reloaded(error=why, code=CONFLICT)
    try:
        loaded = await trio.to_thread.run_sync(load, source)
    except ConfigError as exc:
        problems = tuple(str(problem) for problem in exc.problems)
        for problem in problems:
            log.warning("reload by %s: %s", who, problem)
        why = (f"{len(problems)} problem(s) in the configuration; nothing reloaded, the daemon runs on as "
               "before")
        log.warning("reload by %s: refused: %s", who, why)
        return Reloaded(error=why, code=INVALID_CONFIGURATION, problems=problems)
    for warning in loaded.warnings:
        log.warning("reload by %s: configuration: %s", who, warning)
    plan = compare(running.config, loaded)
    changes = plan.changes
    if not changes.applied:
        log.info("reload by %s: nothing changed in %s", who, source)
        for line in changes.lines():
            log.warning("reload by %s: %s", who, line)
        return Reloaded(result=_result(source, False, changes, loaded))
    config = plan.config
    index = None
    if changes.products or changes.formats or changes.backends:
        # only what changed: each declaration is written, with its event
        index = DefineIndex(
            products=tuple(config.products[slug] for slug in changes.products),
            formats=tuple(config.formats[slug] for slug in changes.formats),
            backends=tuple(config.backends[slug] for slug in changes.backends),
        )
    send, receive = trio.open_memory_channel[Reply](1)
    await scheduler.send(Asked(Reconfigure(
        pipelines=config.pipelines,
        executors=config.executors,
        outputs_backend=config.backends.get(config.index.outputs_backend),
        summary=changes.target(),
        index=index,
        by=request.by,
    ), send))
    reply = await receive.receive()
    if reply.error is not None:  # the core takes every Reconfigure: a bug
        log.error("reload by %s: the scheduler refused it: %s", who, reply.error)
        return Reloaded(error=reply.error, code=reply.code)
    running.replace(config)
    metrics.current().watch_config(config)
    log.info("reload by %s: %s reloaded", who, source)
    for line in changes.lines():
        # what waits for a restart is a warning: the operator has more to do
        level = logging.WARNING if line.startswith("waiting for a restart") else logging.INFO
        log.log(level, "reload by %s: %s", who, line)
    return Reloaded(result=_result(source, True, changes, loaded))


def _result(source: str, changed: bool, changes: Changes, loaded: Config) -> dict[str, object]:
    """The answer of ``daemon.reload`` (docs/api.md, "daemon.reload")."""
    return {"source": source, "changed": changed, **changes.target(), "warnings": list(loaded.warnings)}
