"""The scheduler core and the index: a step's outputs are registered with its
success, and a completed instance triggers the pipelines that require it.
Plain calls, no Trio, no database. (Index writes from the API do not pass
through the core: the database task answers them, see test_db.py.)"""

from __future__ import annotations

from datetime import UTC, datetime

from muppet.messages import (
    CompletedInstance,
    JobFinished,
    JobStarted,
    MovedOutput,
    NewRun,
    Persist,
    Persisted,
    RegisterFiles,
    Trigger,
)
from muppet.model import ExecutorConfig, JobState, Pipeline, RunCause, ServiceBackend, Step
from muppet.scheduler.core import Answer, Scheduler

T0 = datetime(2026, 11, 28, 6, tzinfo=UTC)
LUSTRE = ServiceBackend("lustre-a", "Lustre A", "file:///lustre/a")

MAKER = Pipeline(
    name="maker", owner="ops", produces=("arome",),
    steps={"make": Step("make", "make.sh", outputs=("arome/{reference_time:%H}/f.nc",))},
)
USER = Pipeline(name="user", owner="ops", requires=("arome", "ecmwf"), steps={"use": Step("use", "use.sh")})
SINGLE = Pipeline(name="single", owner="ops", requires=("arome",), steps={"use": Step("use", "use.sh")})


def core(*pipelines: Pipeline) -> Scheduler:
    return Scheduler({p.name: p for p in pipelines}, {"local": ExecutorConfig("local", "local")},
                     outputs_backend=LUSTRE)


def persists(effects) -> list:
    return [c for e in effects if isinstance(e, Persist) for c in e.changes]


def _finish_first_job(scheduler: Scheduler, outputs=()) -> list:
    (new,) = persists(scheduler.handle([Trigger("maker", T0, RunCause.MANUAL.value)], 1.0))
    assert isinstance(new, NewRun)
    (submitted,) = persists(scheduler.handle([Persisted((new,))], 2.0))
    scheduler.handle([Persisted((submitted,))], 3.0)
    (running,) = persists(scheduler.handle([JobStarted(submitted.id, "123", "host", 3.0)], 3.0))
    scheduler.handle([Persisted((running,))], 4.0)
    finished = JobFinished(submitted.id, "succeeded", 0, "", 3.0, 5.0, outputs=outputs)
    return persists(scheduler.handle([finished], 5.0))


def test_outputs_are_registered_in_the_same_transaction_as_the_success():
    scheduler = core(MAKER)
    moved = (MovedOutput("arome/06/f.nc", 1234, "ab" * 32, "netcdf"),)
    changes = _finish_first_job(scheduler, moved)
    (job,) = [c for c in changes if getattr(c, "state", None) is JobState.SUCCEEDED]
    (register,) = [c for c in changes if isinstance(c, RegisterFiles)]
    assert register.run_id == job.run_id
    (new_file,) = register.files
    assert register.define_formats
    assert (new_file.product, new_file.reference_time, new_file.backend) == ("arome", T0, "lustre-a")
    assert new_file.url == "file:///lustre/a/arome/06/f.nc"
    assert (new_file.size, new_file.hash, new_file.format) == (1234, "ab" * 32, "netcdf")


def test_a_job_without_outputs_or_product_registers_nothing():
    assert not [c for c in _finish_first_job(core(MAKER)) if isinstance(c, RegisterFiles)]
    quiet = Pipeline(name="maker", owner="ops", steps=MAKER.steps)  # produces nothing
    moved = (MovedOutput("arome/06/f.nc", 1, "ab" * 32, "netcdf"),)
    assert not [c for c in _finish_first_job(core(quiet), moved) if isinstance(c, RegisterFiles)]


def completed(product: str, products: set[str], version: int = 1) -> Persisted:
    """The database task's report of a commit that completed an instance."""
    return Persisted((), completed=(CompletedInstance(7, product, T0, version, frozenset(products)),))


def test_data_trigger_waits_for_every_required_product():
    scheduler = core(USER, SINGLE)
    effects = scheduler.handle([completed("arome", {"arome"})], 1.0)
    (new,) = persists(effects)
    assert (new.run.pipeline, new.run.reference_time, new.run.cause) == ("single", T0, RunCause.DATA)
    effects = scheduler.handle([completed("ecmwf", {"arome", "ecmwf"})], 2.0)
    (new,) = persists(effects)
    assert (new.run.pipeline, new.run.cause) == ("user", RunCause.DATA)


def test_a_new_version_does_not_make_a_second_run_for_the_reference_time():
    scheduler = core(SINGLE)
    (new,) = persists(scheduler.handle([completed("arome", {"arome"})], 1.0))
    scheduler.handle([Persisted((new,))], 2.0)
    effects = scheduler.handle([completed("arome", {"arome"}, version=2)], 3.0)
    assert not [c for c in persists(effects) if isinstance(c, NewRun)]
    (answer,) = [e for e in effects if isinstance(e, Answer)]
    assert answer.request == 0 and "exists already" in answer.reply.error
