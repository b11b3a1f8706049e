"""Cycles, in time: where a run's intercycle parents are, and the moments at
which its jobs may start, expire and are late (docs/configuration.md,
"Cycling"). Pure functions of the configuration and a reference time, for the
scheduler core and for the daemon's start (which loads the ended runs that
unfinished runs wait on)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import attrs

from ..durations import shift
from ..model import IntercycleParent, Pipeline, Run, Step


def parent_reference(pipeline: Pipeline, reference_time: datetime, parent: IntercycleParent) -> datetime:
    """The reference time of the run that holds ``parent`` for a run at
    ``reference_time``."""
    return shift(reference_time, parent.offset, pipeline.timezone)


def before_initial(pipeline: Pipeline, reference_time: datetime) -> bool:
    """Whether a parent run at ``reference_time`` lies before the pipeline's
    first cycle: such a parent counts as satisfied."""
    return pipeline.initial is not None and reference_time < pipeline.initial


def parent_references(pipeline: Pipeline, reference_time: datetime) -> frozenset[datetime]:
    """The reference times of every earlier run a run at ``reference_time``
    waits on (those before ``initial`` left out)."""
    found = set()
    for step in pipeline.steps.values():
        for parent in step.intercycle:
            moment = parent_reference(pipeline, reference_time, parent)
            if not before_initial(pipeline, moment):
                found.add(moment)
    return frozenset(found)


def needed_runs(
    pipelines: Mapping[str, Pipeline], runs: tuple[Run, ...], definitions: Mapping[str, Pipeline] | None = None,
) -> set[tuple[str, datetime]]:
    """(pipeline, reference time) of every earlier run the unfinished
    ``runs`` wait on, each under the definition it was made with (in
    ``definitions``, by hash; else its pipeline's current one)."""
    needed: set[tuple[str, datetime]] = set()
    for run in runs:
        pipeline = (definitions or {}).get(run.definition) or pipelines.get(run.pipeline)
        if pipeline is not None and pipeline.cycling:
            needed.update((run.pipeline, moment) for moment in parent_references(pipeline, run.reference_time))
    return needed


@attrs.frozen
class Deadlines:
    """When a step's job in a run may start, expires and is late (seconds
    since the epoch; None: never)."""

    not_before: float | None = None
    expire: float | None = None
    late: float | None = None


def step_deadlines(pipeline: Pipeline, step: Step, reference_time: datetime) -> Deadlines:
    expire_after = step.expire_after or pipeline.expire_after

    def at(duration: str | None) -> float | None:
        return None if duration is None else shift(reference_time, duration, pipeline.timezone).timestamp()

    return Deadlines(at(step.not_before), at(expire_after), at(step.late_after))


def run_late_deadline(pipeline: Pipeline, reference_time: datetime) -> float | None:
    if pipeline.late_after is None:
        return None
    return shift(reference_time, pipeline.late_after, pipeline.timezone).timestamp()
