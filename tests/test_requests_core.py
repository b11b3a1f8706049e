"""Requests for product updates in the sans-I/O scheduler core
(muppet/scheduler/requests.py): plain calls, no Trio, no database. The
Harness of test_scheduler_core.py plays the database: it works out what a
request waits for from the instances it was told are complete, as
writes.py does in the request's transaction. End to end in a real daemon:
tests/test_requests.py."""

from __future__ import annotations

import attrs
from test_scheduler_core import T0, Harness, ReplyBox, pipeline  # tests/ is on sys.path

from muppet.messages import (
    CONFLICT,
    NOT_FOUND,
    CompletedInstance,
    Operator,
    Persisted,
    RequestUpdate,
    UpdateRequest,
)
from muppet.model import JobState, RunCause, RunState, Step
from muppet.scheduler.core import Scheduler

DESK = Operator("ops-desk", "THREDDS lost it")
#: make -> publish; make's outputs are the product
MAKER = pipeline("maker", Step("make", "make.sh", outputs=("arome/f.nc",)), Step("publish", "p.sh", parents=("make",)))
MAKER = attrs.evolve(MAKER, produces=("arome",))
#: needs ecmwf and arome complete, makes arome-pp
POST = attrs.evolve(
    pipeline("post", Step("convert", "c.sh", outputs=("pp/f.nc",))), requires=("ecmwf", "arome"), produces=("arome-pp",)
)


def ask(h: Harness, event: RequestUpdate) -> ReplyBox:
    box = ReplyBox()
    h.ask(attrs.evolve(event, by=DESK), box)
    h.settle()
    return box


def complete(h: Harness, product: str, *others: str) -> None:
    """An instance of ``product`` for T0 became complete in a commit."""
    h.complete.add((product, T0))
    done = frozenset({product, *others})
    h.feed(Persisted((), completed=(CompletedInstance(7, product, T0, 1, done),)))
    h.settle()


def test_a_request_without_a_run_makes_one_and_answers_its_id_once_committed():
    h = Harness(MAKER)
    box = ask(h, RequestUpdate("arome", T0, "maker"))
    (reply,) = box.replies
    assert reply.result == {"request_id": 1, "state": "done", "run_id": 1, "made": True, "rerun_job_ids": []}
    assert h.db_runs[1].cause is RunCause.REQUEST and h.db_runs[1].reference_time == T0
    assert (h.db_requests[1].state, h.db_requests[1].run_id, h.db_requests[1].by) == ("done", 1, DESK)
    (event,) = h.operator_events
    assert (event.action, event.by, event.target) == (
        "request", DESK, {"request_id": 1, "product": "arome", "pipeline": "maker",
                          "reference_time": "2026-11-28T06:00:00Z"})


def test_a_request_for_an_ended_run_reruns_the_makers_and_what_follows_them():
    h = Harness(MAKER)
    h.trigger("maker")
    h.drain()
    assert h.db_runs[1].state is RunState.SUCCEEDED and h.core.runs == {}
    run = h.db_runs[1]
    jobs = tuple(h.db_jobs.values())
    box = ask(h, RequestUpdate("arome", T0, "maker", run=run, jobs=jobs))
    (reply,) = box.replies
    assert reply.result == {"request_id": 1, "state": "done", "run_id": 1, "made": False, "rerun_job_ids": [3]}
    assert h.db_runs[1].state is RunState.RUNNING
    h.drain()
    assert [h.job(step).id for step in ("make", "publish")] == [3, 4]
    assert h.db_runs[1].state is RunState.SUCCEEDED


def test_a_request_while_the_makers_have_yet_to_run_reruns_nothing():
    h = Harness(MAKER)
    h.trigger("maker")
    box = ask(h, RequestUpdate("arome", T0, "maker"))
    assert box.replies[0].result["rerun_job_ids"] == [] and box.replies[0].result["run_id"] == 1
    assert h.db_requests[1].state == "done"


def test_a_request_waits_for_the_required_products_and_is_carried_out_when_they_complete():
    h = Harness(POST)
    h.complete.add(("arome", T0))
    box = ask(h, RequestUpdate("arome-pp", T0, "post"))
    (reply,) = box.replies
    assert reply.result == {"request_id": 1, "state": "waiting", "waiting_for": ["ecmwf"]}
    assert h.db_requests[1].state == "waiting" and h.db_runs == {}
    complete(h, "ecmwf", "arome")
    # the data trigger made the run in the same pass: the request takes it
    (run,) = h.db_runs.values()
    assert run.cause is RunCause.DATA
    assert (h.db_requests[1].state, h.db_requests[1].run_id) == ("done", run.id)
    assert len(box.replies) == 1, "the requester had its answer already"


def test_a_product_of_another_time_or_still_missing_keeps_it_waiting():
    h = Harness(POST)
    ask(h, RequestUpdate("arome-pp", T0, "post"))
    assert h.db_requests[1].waiting_for == ("ecmwf", "arome")
    complete(h, "ecmwf")
    assert (h.db_requests[1].state, h.db_requests[1].waiting_for) == ("waiting", ("arome",))
    h.feed(Persisted((), completed=(CompletedInstance(8, "arome", T0.replace(hour=12), 1, frozenset({"arome"})),)))
    h.settle()
    assert h.db_requests[1].state == "waiting" and h.db_runs == {}


def test_after_a_restart_a_request_waiting_for_nothing_is_carried_out():
    h = Harness(POST)
    waiting = UpdateRequest(4, "arome-pp", T0, "post", "waiting", (), DESK, 1.0)
    h.core = Scheduler(h.pipelines, h.core.executors, next_request_id=5)
    h._take(h.core.load((), (), h.now, update_requests=(waiting,)))
    h.settle()
    (run,) = h.db_runs.values()
    assert run.cause is RunCause.REQUEST
    assert (h.db_requests[4].state, h.db_requests[4].run_id) == ("done", run.id)
    still = UpdateRequest(5, "arome-pp", T0.replace(hour=12), "post", "waiting", ("ecmwf",), DESK, 1.0)
    h.core = Scheduler(h.pipelines, h.core.executors, next_request_id=6)
    h._take(h.core.load((), (), h.now, update_requests=(still,)))
    assert h.core.waiting_requests == {5: still}


def test_refusals_write_nothing():
    h = Harness(MAKER)
    for event, code, message in (
        (RequestUpdate("arome", T0, "nosuch"), NOT_FOUND, "unknown pipeline 'nosuch'"),
        (RequestUpdate("ecmwf", T0, "maker"), NOT_FOUND, "pipeline maker does not produce product 'ecmwf'"),
    ):
        box = ask(h, event)
        assert (box.replies[0].code, box.replies[0].error) == (code, message)
    assert h.db_requests == {} and h.operator_events == []


def test_a_maker_whose_parent_failed_is_not_rerun_and_the_reply_says_why():
    gated = attrs.evolve(pipeline(
        "maker", Step("fetch", "f.sh"), Step("make", "m.sh", parents=("fetch",), outputs=("arome/f.nc",))),
        produces=("arome",))
    h = Harness(gated)
    h.trigger("maker")
    h.drain(lambda start: ("failed", 1))
    assert h.job("make").state is JobState.SKIPPED
    run, jobs = h.db_runs[1], tuple(h.db_jobs.values())
    box = ask(h, RequestUpdate("arome", T0, "maker", run=run, jobs=jobs))
    assert box.replies[0].code == CONFLICT
    assert box.replies[0].error == ("job 2 (make[0]) depends on job 1 (fetch[0]), which is failed: "
                                    "rerun job 1, which reruns this one with it")
    assert h.db_requests[1].state == "refused" and h.core.runs == {}
