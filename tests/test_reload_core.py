"""A reload in the sans-I/O parts: plain function calls, no Trio, no database
(docs/operations.md, "Reload").

- ``codec``: a pipeline's definition as canonical JSON, its hash, and the
  way back, for every field of Pipeline and Step;
- ``config.changes.compare``: what a reload changes, what it applies and
  which settings wait for a restart;
- the scheduler core (``scheduler/reconfigure.py`` and the definitions it
  keeps): new runs are made from the new definition while runs in progress
  finish under their own, across a restart too; a removed pipeline makes no
  new run; executor limits apply in the same scheduling pass; the reload is
  one transaction with its operator event and its index declarations,
  answered once committed.

``Reloads`` is test_scheduler_core's Harness (the database held back until
the test commits) plus the definitions table and a restart.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from test_scheduler_core import T0, Harness, ReplyBox, pipeline

from muppet import codec
from muppet.config import default_config, load_config
from muppet.config.changes import RESTART_ONLY, Changes, compare
from muppet.messages import (
    NOT_FOUND,
    Ack,
    Backfill,
    Command,
    DefineIndex,
    ExecutorSettings,
    JobFinished,
    NewRun,
    Operator,
    OperatorEvent,
    Persist,
    Reconfigure,
    Trigger,
)
from muppet.model import (
    ApiConfig,
    Depends,
    ExecutorConfig,
    IntercycleParent,
    Pipeline,
    Product,
    RetryPolicy,
    Run,
    Step,
    Token,
)
from muppet.scheduler.core import Scheduler

ROOT = Path(__file__).resolve().parent.parent
DESK = Operator("ops-desk", "new convert")
HOUR = timedelta(hours=1)


def chain(version: str, *, tries: int = 1, executor: str = "local") -> Pipeline:
    """a -> b, each echoing ``version``."""
    return pipeline(
        "p",
        Step("a", f"echo {version}", retry=RetryPolicy(tries=tries), executor=executor),
        Step("b", f"echo {version}", parents=("a",)),
    )


def hash_of(p: Pipeline) -> str:
    return codec.definition_hash(codec.definition_text(p))


class Reloads(Harness):
    """The Harness, keeping the definitions table as the database does
    (one row per hash, written with each NewRun), the executor's settings
    as the scheduler sends them, and able to restart the daemon."""

    def __init__(self, *pipelines: Pipeline, max_jobs: int = 100) -> None:
        super().__init__(*pipelines, max_jobs=max_jobs)
        self.definitions: dict[str, str] = {}
        self.settings: list[ExecutorSettings] = []

    def _take(self, effects: Any) -> None:
        self.settings.extend(e for e in effects if isinstance(e, ExecutorSettings))
        super()._take(effects)

    def commit(self) -> None:
        for persist in self.unsent:
            for change in persist.changes:
                if isinstance(change, NewRun) and (change.run.pipeline, change.run.reference_time) not in (
                    self.committed_keys
                ):
                    assert change.definition, "a NewRun carries its definition's JSON"
                    assert codec.definition_hash(change.definition) == change.run.definition
                    self.definitions.setdefault(change.run.definition, change.definition)
        super().commit()

    def reload(
        self, *pipelines: Pipeline, max_jobs: int | None = None,
        executors: dict[str, ExecutorConfig] | None = None, index: DefineIndex | None = None,
    ) -> tuple[Persist, Any]:
        """A Reconfigure by DESK: one Persist holding the operator event, the
        index declarations and the Ack, answered only once committed.
        Returns that Persist and the reply's result."""
        if executors is None:
            limit = max_jobs if max_jobs is not None else self.core.executors["local"].max_jobs
            executors = {"local": ExecutorConfig("local", "local", max_jobs=limit)}
        self.pipelines = {p.name: p for p in pipelines}
        summary = {"pipelines_changed": sorted(self.pipelines)}
        box = ReplyBox()
        self.ask(Reconfigure(self.pipelines, executors, None, summary, index=index, by=DESK), box)
        assert box.replies == []  # not before the commit
        [persist] = self.unsent
        events = [c for c in persist.changes if isinstance(c, OperatorEvent)]
        assert events == [OperatorEvent("reload", DESK, summary)]
        assert len([c for c in persist.changes if isinstance(c, Ack)]) == 1
        self.commit()  # that transaction alone
        [reply] = box.replies
        assert reply.error is None, reply.error
        self.settle()
        return persist, reply.result

    def restart(self) -> None:
        """A new daemon on what is committed: the unfinished runs, their jobs
        and the definitions they were made with."""
        self.unsent = []
        runs = [r for r in self.db_runs.values() if not r.state.finished]
        self.core = Scheduler(
            self.pipelines, self.core.executors,
            next_run_id=max(self.db_runs, default=0) + 1, next_job_id=max(self.db_jobs, default=0) + 1,
            definitions={r.definition: codec.pipeline_from_json(json.loads(self.definitions[r.definition]))
                         for r in runs if r.definition},
        )
        jobs = [j for j in self.db_jobs.values() if j.run_id in {r.id for r in runs}]
        self._take(self.core.load(runs, jobs, self.now))
        self.settle()

    def commands(self, run_id: int) -> list[tuple[str, str]]:
        """(step, command) of every StartJob of run ``run_id``, in order."""
        return [(s.job.step, s.step.command) for s in self.starts if s.job.run_id == run_id]

    def finish(self, run_id: int, step: str, state: str = "succeeded", exit_code: int = 0) -> None:
        self.run_job(self.job(step, run_id=run_id).id, state, exit_code)


# --- the definition: canonical JSON, its hash, and back -----------------------------------------


def every_field_set() -> Pipeline:
    """A pipeline whose every field, and its last step's, differs from its default."""
    step = Step(
        name="model", command="model.sh", parents=("fetch",), jobs=3, depends=Depends.EACH, concurrency=2,
        conflicts=("plot",), env={"OMP_NUM_THREADS": "4"}, executor="cluster", outputs=("m/{index}.nc",),
        retry=RetryPolicy(tries=3, interval=1.5, factor=2.0), resources={"memory": "4G", "submit_options": ["-x"]},
        product="arome", intercycle=(IntercycleParent("model", "-PT6H"),), not_before="PT1H",
        expire_after="PT2H", late_after="PT3H",
    )
    # steps in topological order, which is not their names' order
    steps = {"plot": Step("plot", "plot.sh"), "fetch": Step("fetch", "fetch.sh"), "model": step}
    return Pipeline(
        name="arome", owner="ops", steps=steps, requires=("ecmwf",), produces=("arome",), cron=("15 6 * * *",),
        timezone="Europe/Oslo", source="/etc/muppet/pipelines/arome.toml", initial=T0, runahead=2,
        catchup="all", catchup_limit=5, expire_after="P1D", late_after="PT5H",
    )


def _default(field: Any) -> Any:
    default = field.default
    return default.factory() if isinstance(default, attrs.Factory) else default  # type: ignore[arg-type]


def test_a_definition_holds_every_field_and_comes_back_equal():
    defined = every_field_set()
    step = defined.steps["model"]
    # every field set, so that a field the JSON left out would come back as its default
    assert [f.name for f in attrs.fields(Pipeline) if getattr(defined, f.name) == _default(f)] == []
    assert [f.name for f in attrs.fields(Step) if getattr(step, f.name) == _default(f)] == []
    data = codec.pipeline_to_json(defined)
    assert set(data) == {f.name for f in attrs.fields(Pipeline)}
    assert set(data["steps"][2]) == {f.name for f in attrs.fields(Step)}
    text = codec.definition_text(defined)
    back = codec.pipeline_from_json(json.loads(text))
    assert back == defined
    assert list(back.steps) == ["plot", "fetch", "model"]  # the order is part of it
    assert codec.definition_text(back) == text


def test_one_definition_one_hash():
    defined = every_field_set()
    again = codec.pipeline_from_json(json.loads(codec.definition_text(defined)))
    assert hash_of(again) == hash_of(defined)
    assert len(hash_of(defined)) == 64
    changed = attrs.evolve(defined, steps={**defined.steps, "plot": Step("plot", "plot2.sh")})
    assert hash_of(changed) != hash_of(defined)


def test_the_example_pipelines_come_back_equal():
    config = load_config(ROOT / "conf" / "muppet.toml")
    assert config.pipelines
    for defined in config.pipelines.values():
        assert codec.pipeline_from_json(json.loads(codec.definition_text(defined))) == defined


# --- what a reload changes ---------------------------------------------------------------------------


def test_nothing_changed_applies_nothing():
    running = default_config()
    plan = compare(running, attrs.evolve(running, warnings=("a warning",)))
    assert plan.changes == Changes() and not plan.changes.applied
    assert plan.changes.lines() == []


def test_pipelines_executors_and_declarations_apply():
    running = attrs.evolve(default_config(), pipelines={"p": chain("v1"), "old": pipeline("old", Step("s", "x"))})
    loaded = attrs.evolve(
        running,
        pipelines={"p": chain("v2"), "new": pipeline("new", Step("s", "x"))},
        executors={**running.executors, "local": attrs.evolve(running.executors["local"], max_jobs=99),
                   "cluster": ExecutorConfig("cluster", "slurm")},
        products={"arome": Product("arome", "AROME")},
    )
    plan = compare(running, loaded)
    assert plan.changes == Changes(
        pipelines_added=("new",), pipelines_changed=("p",), pipelines_removed=("old",),
        executors_added=("cluster",), executors_changed=("local",), products=("arome",),
    )
    assert plan.config.pipelines == loaded.pipelines and plan.config.executors == loaded.executors
    assert plan.changes.lines() == [
        "pipelines added: new",
        "pipelines changed: p (new runs use the new definition; runs in progress finish under their own)",
        "pipelines removed: old (no new runs; runs in progress finish under their own)",
        "executors added: cluster",
        "executors changed: local",
        "products declared or changed: arome",
    ]
    assert Changes.from_target(plan.changes.target()) == plan.changes


def test_what_only_a_restart_changes_keeps_its_running_value():
    running = default_config()
    loaded = attrs.evolve(
        running,
        daemon=attrs.evolve(running.daemon, database="sqlite:////elsewhere.db", state_dir="/elsewhere"),
        api=attrs.evolve(running.api, listen="127.0.0.1:9999", max_message_bytes=2048, open_reads=True),
        web=attrs.evolve(running.web, listen=""),
    )
    plan = compare(running, loaded)
    assert plan.changes.restart == (
        "[api] listen", "[api] max_message_bytes", "[api] open_reads", "[daemon] database", "[daemon] state_dir",
        "[web] listen",
    )
    assert set(plan.changes.restart) <= set(RESTART_ONLY)
    assert not plan.changes.applied
    assert (plan.config.daemon, plan.config.api, plan.config.web) == (running.daemon, running.api, running.web)
    assert plan.changes.lines() == [
        "waiting for a restart: [api] listen, [api] max_message_bytes, [api] open_reads, [daemon] database, "
        "[daemon] state_dir, [web] listen (the daemon runs on the old values until it restarts)"]


def test_the_default_web_address_written_out_is_no_change():
    running = default_config()
    loaded = attrs.evolve(running, web=attrs.evolve(running.web, explicit=True))
    assert compare(running, loaded).changes == Changes()


def test_tokens_apply_at_once_but_an_open_api_stays_open_until_a_restart():
    read, admin = Token("reader", "read", "a" * 64), Token("admin", "admin", "b" * 64)
    with_tokens = attrs.evolve(default_config(), api=ApiConfig(tokens_file="/etc/t.toml", tokens={read.sha256: read}))
    loaded = attrs.evolve(with_tokens, api=ApiConfig(tokens_file="/etc/t2.toml", tokens={admin.sha256: admin}))
    plan = compare(with_tokens, loaded)
    assert plan.changes.settings == ("[api] tokens_file",) and plan.changes.restart == ()
    assert plan.config.api.tokens == {admin.sha256: admin}
    # between no tokens and tokens: the API's openness is decided at start
    opened = compare(with_tokens, attrs.evolve(with_tokens, api=ApiConfig()))
    assert opened.changes.restart == ("[api] tokens_file",) and opened.config.api == with_tokens.api
    closed = compare(default_config(), loaded)
    assert closed.changes.restart == ("[api] tokens_file",) and closed.config.api == ApiConfig()


def test_a_new_output_dir_waits_and_the_outputs_backend_with_it():
    running = default_config()
    loaded = attrs.evolve(
        running, daemon=attrs.evolve(running.daemon, output_dir="/new/out"),
        backends={**running.backends, "local": attrs.evolve(running.backends["local"], url="file:///new/out")},
    )
    plan = compare(running, loaded)
    assert plan.changes.restart == ("[daemon] output_dir", "[index] outputs_backend")
    assert plan.config.backends["local"] == running.backends["local"]
    assert plan.changes.backends == ()


def test_other_settings_that_apply_at_once():
    running = default_config()
    loaded = attrs.evolve(
        running, index=attrs.evolve(running.index, expiry_interval=5.0),
        daemon=attrs.evolve(running.daemon, pipeline_globs=("pipelines/*.toml",)),
    )
    plan = compare(running, loaded)
    assert plan.changes.settings == ("[daemon] pipelines", "[index] expiry_interval")
    assert plan.config.index.expiry_interval == 5.0 and plan.changes.applied


def test_what_is_kept_applies_at_the_history_tasks_next_pass():
    """[daemon] keep_history and keep_job_dirs: the history task reads them
    from the running configuration at each pass (muppet/history.py)."""
    running = default_config()
    loaded = attrs.evolve(running, daemon=attrs.evolve(running.daemon, keep_history="P90D", keep_job_dirs="P2D"))
    plan = compare(running, loaded)
    assert plan.changes.settings == ("[daemon] keep_history", "[daemon] keep_job_dirs")
    assert (plan.config.daemon.keep_history, plan.config.daemon.keep_job_dirs) == ("P90D", "P2D")
    assert plan.changes.applied and not plan.changes.restart


# --- the scheduler core ---------------------------------------------------------------------------------


def test_each_run_is_made_with_its_pipelines_current_definition():
    h = Reloads(chain("v1"))
    h.trigger("p")
    assert h.run(1).definition == hash_of(chain("v1"))
    assert codec.pipeline_from_json(json.loads(h.definitions[hash_of(chain("v1"))])) == chain("v1")


def test_a_changed_pipeline_makes_new_runs_from_it_while_a_run_in_progress_finishes_under_its_own():
    h = Reloads(chain("v1"))
    h.trigger("p")
    assert h.commands(1) == [("a", "echo v1")]
    h.reload(chain("v2"))
    h.trigger("p", T0 + HOUR)
    assert h.run(2).definition == hash_of(chain("v2")) != h.run(1).definition
    assert h.commands(2) == [("a", "echo v2")]
    h.finish(1, "a")
    assert h.commands(1) == [("a", "echo v1"), ("b", "echo v1")]
    h.finish(1, "b")
    assert h.run(1).state.value == "succeeded"
    # no run uses v1 any more: the next reload forgets it
    h.reload(chain("v2"))
    assert set(h.core.definitions) == {hash_of(chain("v2"))}


def test_the_reload_and_its_declarations_are_one_transaction_answered_once_committed():
    h = Reloads(chain("v1"))
    declared = DefineIndex(products=(Product("arome", "AROME"),))
    persist, result = h.reload(chain("v2"), index=declared)
    assert declared in persist.changes
    assert result is None


def test_a_run_in_progress_keeps_its_retries():
    h = Reloads(chain("v1", tries=2))
    h.trigger("p")
    h.reload(chain("v2", tries=1))
    h.finish(1, "a", "failed", 3)
    assert h.commands(1) == [("a", "echo v1"), ("a", "echo v1")], "v1 had a try left"
    h.trigger("p", T0 + HOUR)
    h.finish(2, "a", "failed", 3)
    assert h.commands(2) == [("a", "echo v2")] and h.run(2).state.value == "failed"


def test_a_removed_pipeline_makes_no_new_run_and_its_run_finishes():
    h = Reloads(chain("v1"))
    h.trigger("p")
    h.reload()
    box = ReplyBox()
    h.ask(Trigger("p", T0 + HOUR, "manual"), box)
    assert [(r.code, r.error) for r in box.replies] == [(NOT_FOUND, "unknown pipeline 'p'")]
    h.ask(Backfill("p", (T0 + HOUR,)), box)
    assert box.replies[-1].error == "unknown pipeline 'p'"
    h.finish(1, "a")
    h.finish(1, "b")
    assert h.commands(1) == [("a", "echo v1"), ("b", "echo v1")]
    assert h.run(1).state.value == "succeeded" and list(h.db_runs) == [1]


def test_a_new_pipeline_runs_at_once():
    h = Reloads(chain("v1"))
    h.reload(chain("v1"), pipeline("new", Step("s", "echo new")))
    box = ReplyBox()
    h.trigger("new", box=box)
    assert box.replies[0].result == {"run_id": 1}
    assert h.commands(1) == [("s", "echo new")]


def test_executor_limits_apply_in_the_same_pass():
    h = Reloads(pipeline("p", Step("a", "x", jobs=4)), max_jobs=1)
    h.trigger("p")
    assert len(h.starts) == 1
    h.reload(pipeline("p", Step("a", "x", jobs=4)), max_jobs=3)
    assert len(h.starts) == 3, "two more start once the reload is committed"
    assert h.settings[-1] == ExecutorSettings({"local": ExecutorConfig("local", "local", max_jobs=3)})
    h.reload(pipeline("p", Step("a", "x", jobs=4)), max_jobs=1)
    first, second, third = (s.job.id for s in h.starts)
    h.run_job(first)
    h.run_job(second)
    assert len(h.starts) == 3, "one still runs: at most one at a time now"
    h.run_job(third)
    assert len(h.starts) == 4


def test_an_executor_taken_away_stays_while_jobs_of_runs_in_progress_name_it():
    cluster = ExecutorConfig("cluster", "slurm", max_jobs=1)
    h = Reloads(chain("v1", executor="cluster"))
    h.core.configure(h.pipelines, {**h.core.executors, "cluster": cluster})
    h.trigger("p")
    h.reload(chain("v2"))
    assert h.settings[-1].executors["cluster"] == cluster
    h.finish(1, "a")
    h.finish(1, "b")
    h.reload(chain("v2"))
    assert set(h.settings[-1].executors) == {"local"}


def test_runs_keep_their_definition_across_a_restart():
    h = Reloads(chain("v1"))
    h.trigger("p")
    h.reload(chain("v2"))
    h.restart()
    assert h.commands(1)[-1] == ("a", "echo v1"), "handed over again after the restart, as it was made"
    h.finish(1, "a")
    assert h.commands(1)[-1] == ("b", "echo v1")
    h.trigger("p", T0 + HOUR)
    assert h.commands(2) == [("a", "echo v2")]


def test_a_run_made_before_definitions_were_kept_runs_under_the_current_one():
    h = Reloads(chain("v1"))
    h.trigger("p")
    old = attrs.evolve(h.run(1), definition="")
    h.db_runs[1] = old
    h.pipelines = {"p": chain("v2")}
    h.restart()
    assert h.core.run_pipeline(old) == chain("v2")
    h.finish(1, "a")
    assert h.commands(1)[-1] == ("b", "echo v2")


def test_a_step_put_aside_for_its_parent_is_looked_at_again_after_a_reload():
    """A run made before definitions were kept takes its pipeline's new one
    at a reload: a step the pass put aside until its parent succeeds starts
    once the new one no longer gives it that parent."""
    h = Reloads(chain("v1"))
    h.trigger("p")
    h.db_runs[1] = attrs.evolve(h.run(1), definition="")
    h.restart()
    h.settle()
    assert h.core.parked_group_slot == {(1, "b", "local"): (1, "a", 0)}  # a was handed over again, running
    h.reload(pipeline("p", Step("a", "echo v2"), Step("b", "echo v2")))
    assert h.commands(1)[-1] == ("b", "echo v2")
    assert not h.core.parked_groups


def test_a_run_whose_definition_the_database_lacks_says_so_and_runs_under_the_current_one():
    core = Scheduler({"p": chain("v2")}, {"local": ExecutorConfig("local", "local")})
    run = Run(1, "p", T0, definition="f" * 64)
    effects = core.load([run], [], 1000.0)
    assert [e.text for e in effects if hasattr(e, "text")] == [
        f"run 1 (p): its definition {'f' * 64} is not in the database; it runs under its pipeline's current one"]
    assert core.run_pipeline(run) == chain("v2")


def test_a_rerun_brings_an_ended_run_back_under_its_own_definition():
    h = Reloads(chain("v1"))
    h.trigger("p")
    h.finish(1, "a", "failed", 3)
    assert h.run(1).state.value == "failed"
    renamed = pipeline("p", Step("a", "echo v2"), Step("c", "echo v2", parents=("a",)))
    h.reload(renamed)
    h.restart()  # the definition of the ended run is in the database only
    ended = {"run": h.run(1), "jobs": tuple(j for j in h.db_jobs.values() if j.run_id == 1)}
    box = ReplyBox()
    h.ask(Command("rerun", h.job("a").id, definition=chain("v1"), by=DESK, **ended), box)
    h.settle()
    assert box.replies[0].error is None, box.replies
    h.finish(1, "a")
    assert h.commands(1)[-2:] == [("a", "echo v1"), ("b", "echo v1")]


@pytest.mark.parametrize("restart", [False, True])
def test_a_run_of_a_removed_pipeline_finishes_across_a_restart_too(restart):
    h = Reloads(chain("v1"))
    h.trigger("p")
    h.reload()
    job = h.job("a")
    h.feed(JobFinished(job.id, "succeeded", 0, "", 1.0, 2.0))
    h.settle()
    if restart:
        h.restart()
    h.finish(1, "b")
    assert h.run(1).state.value == "succeeded"
