"""A reload, as the scheduler core takes it (docs/operations.md, "Reload").

Part of the sans-I/O core, like ``operators.py``: a function of a
``core.Scheduler``. The reload task (``muppet/reloader.py``) has read and
checked the file and worked out what changed; the core

- makes new runs from the new pipelines from now on (a new or changed
  pipeline's next run is made from its new definition, a removed one makes
  none), while every run in memory keeps the definition it was made with
  (``Scheduler.run_pipeline``), down to its last retry;
- starts jobs under the new executors' limits from the next scheduling pass
  (the same ``handle``), and tells the executor, before any job it starts
  under them (``ExecutorSettings``);
- writes the declarations that changed and the ``reload`` operator event in
  one transaction, and answers once it is committed (an ``Ack``), as the
  operators' commands do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..messages import Ack, Change, ExecutorSettings, Reconfigure, Reply
from .operators import operator_event

if TYPE_CHECKING:
    from .core import Effect, Scheduler


def apply(core: Scheduler, event: Reconfigure, changes: list[Change], now: float) -> list[Effect]:
    core.configure(event.pipelines, event.executors)
    core.forget_unused_definitions()
    core.outputs_backend = event.outputs_backend
    if event.index is not None:
        changes.append(event.index)
    operator_event(core, "reload", event.by, event.summary, changes)
    if event.request:
        core.owed_ack[event.request] = Reply()
        changes.append(Ack(event.request))
    return [ExecutorSettings(dict(core.executors))]
