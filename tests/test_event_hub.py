"""The API's event hub over a real SQLite log: it delivers the events a
commit hands it without reading them back, and reads the log when a commit's
message is missing or cannot tell them; either way every event once, in
order (muppet/index/events.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import trio

from muppet.db import open_store, reads, writes
from muppet.index import queries
from muppet.index.events import EventHub
from muppet.messages import EventsCommitted, NewRun
from muppet.model import Job, Run

T0 = datetime(2026, 11, 28, 6, tzinfo=UTC)


def new_run(run_id: int, hour: int) -> NewRun:
    run = Run(id=run_id, pipeline="ecmwf", reference_time=T0.replace(hour=hour), created_at=1_700_000_000.0)
    job = Job(id=run_id, run_id=run_id, pipeline="ecmwf", step="fetch", index=0, count=1, executor="local",
              created_at=1_700_000_000.5)
    return NewRun(run=run, jobs=(job,))


async def test_the_hub_delivers_what_a_commit_hands_it_and_reads_the_log_for_what_it_missed(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        reads_made: list[int] = []

        async def read_events(after: int, limit: int) -> list[dict]:
            reads_made.append(after)
            return await trio.to_thread.run_sync(
                lambda: queries.events_since(store, after, limit=limit, pruned=False))

        hub = EventHub(read_events, reads.last_event_id(store))
        subscription = hub.subscribe(None, None)
        committed, hub_inbox = trio.open_memory_channel[EventsCommitted](1)

        async def delivered(count: int) -> list[dict]:
            events: list[dict] = []
            with trio.fail_after(30):
                while len(events) < count:
                    events += [json.loads(text) for _, text in await subscription.receive.receive()]
            return events

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run, hub_inbox)
            # a commit's own events: delivered as handed over, nothing read
            first = await trio.to_thread.run_sync(writes.write, store, [new_run(1, 0)])
            await committed.send(EventsCommitted(first.last_event_id, first.events))
            assert [(e["kind"], e["subject_id"]) for e in await delivered(2)] == [("run", 1), ("job", 1)]
            assert reads_made == []
            # a commit whose message never came (dropped while another
            # waited), then one that came: the log is read from the last
            # event delivered, and both commits' events come once, in order
            await trio.to_thread.run_sync(writes.write, store, [new_run(2, 6)])
            third = await trio.to_thread.run_sync(writes.write, store, [new_run(3, 12)])
            await committed.send(EventsCommitted(third.last_event_id, third.events))
            later = await delivered(4)
            assert [(e["kind"], e["subject_id"]) for e in later] == [("run", 2), ("job", 2), ("run", 3), ("job", 3)]
            assert reads_made == [first.last_event_id]
            # a commit that cannot tell its events (a retried batch): read
            fourth = await trio.to_thread.run_sync(writes.write, store, [new_run(4, 18)])
            await committed.send(EventsCommitted(fourth.last_event_id, None))
            assert [e["subject_id"] for e in await delivered(2)] == [4, 4]
            assert reads_made == [first.last_event_id, third.last_event_id]
            nursery.cancel_scope.cancel()
        ids = [e["id"] for e in queries.events_since(store, 0, pruned=False)]
        assert hub.position == ids[-1] and ids == list(range(ids[0], ids[0] + 8))


def test_the_hub_makes_only_the_events_someone_needs():
    """Events that neither the query cache nor a subscriber wants are not
    made from their rows (no timestamp formatted, no JSON parsed: a job's
    events in a fan-out nobody watches), and the hub still moves past them.
    The rows those events come from hold data that is not JSON: making one
    would raise."""

    async def read_events(after: int, limit: int) -> list[dict]:
        raise AssertionError("the commit handed its rows over")

    hub = EventHub(read_events, 10)
    hub.cache.put("product ecmwf", "[]", ("product:ecmwf",), hub.cache.generation(("product:ecmwf",)))
    assert hub.cache.get("product ecmwf") == "[]"
    file_data = json.dumps({"instance_id": 3, "product": "ecmwf"})
    rows = (
        (11, 1_700_000_000.0, "job", "ecmwf", 1, "not JSON"),
        (12, 1_700_000_000.0, "file", "ecmwf", 5, file_data),
    )
    assert hub._take(EventsCommitted(12, rows))
    assert hub.position == 12
    assert hub.cache.get("product ecmwf") is None, "the file's event was made, and made the answer stale"
    runs = hub.subscribe(["run"], None)
    rows = ((13, 1_700_000_000.0, "job", "ecmwf", 1, "not JSON"), (14, 1_700_000_000.0, "run", "ecmwf", 2, "{}"))
    assert hub._take(EventsCommitted(14, rows))
    assert hub.position == 14
    assert [json.loads(text)["subject_id"] for _, text in runs.receive.receive_nowait()] == [2]
