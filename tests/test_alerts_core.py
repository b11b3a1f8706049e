"""Incidents without Trio: the scheduler core's rules (muppet/alerts/rules.py),
the digest's schedule, who hears of what and what a message says
(docs/alerts.md). Plain function calls; the records' SQL runs on both
databases, without a daemon.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import attrs
import pytest
from test_scheduler_core import T0, Harness, pipeline  # tests/ is on sys.path

from muppet.alerts import records, render, routing
from muppet.alerts.changes import (
    ALERT_CHANGES,
    AckIncident,
    Delivered,
    OpenIncident,
    Remind,
    ResolveIncidents,
    incident_key,
)
from muppet.alerts.digest import Digest
from muppet.alerts.kinds import EXECUTOR_DOWN, JOB_FAILED, LATE, PRODUCT_LATE, RUN_EXPIRED, RUN_FAILED
from muppet.alerts.records import Incident, Notice
from muppet.db import writes
from muppet.db.store import open_store
from muppet.messages import Command, JobNotStarted, NewFile, Persist, RegisterFiles
from muppet.model import (
    AlertsConfig,
    ApiConfig,
    Config,
    DaemonConfig,
    JobState,
    Pipeline,
    Product,
    RetryPolicy,
    RunState,
    Stakeholder,
    Step,
)

# --- the rules, in the scheduler core -------------------------------------------------------


class Recorder(Harness):
    """The scheduler core's harness, keeping each Persist whole: an alert
    change must travel with the change that caused it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.persists: list[Persist] = []

    def _take(self, effects) -> None:
        self.persists += [e for e in effects if isinstance(e, Persist)]
        super()._take(effects)

    def alerts(self) -> list:
        return [c for p in self.persists for c in p.changes if isinstance(c, ALERT_CHANGES)]

    def opened(self) -> list[tuple[str, str, str]]:
        return [(c.kind, c.pipeline, c.step) for c in self.alerts() if isinstance(c, OpenIncident)]

    def resolved(self) -> list[tuple[tuple[str, ...], str, str | None]]:
        return [(c.kinds, c.pipeline, c.step) for c in self.alerts() if isinstance(c, ResolveIncidents)]


def test_a_job_that_failed_for_good_opens_with_its_failure_and_retries_do_not():
    h = Recorder(pipeline("p", Step("a", "false", retry=RetryPolicy(tries=3)), Step("b", "true", parents=("a",))))
    h.trigger("p")
    h.run_job(1, "failed", 3)  # tries left: a retry, no incident
    assert h.alerts() == []
    h.drain(lambda start: ("failed", 3))
    assert h.run().state is RunState.FAILED
    assert h.opened() == [(JOB_FAILED, "p", "a"), (RUN_FAILED, "p", "")]
    [failed] = [c for c in h.alerts() if isinstance(c, OpenIncident) and c.kind == JOB_FAILED]
    job = h.job("a")
    assert (failed.job_id, failed.run_id, failed.reference_time) == (job.id, 1, T0)
    assert failed.summary == f"job {job.id} (a[0]) failed for good: exit code 3"
    # in the very Persist that fails the job (the same transaction)
    [persist] = [p for p in h.persists if failed in p.changes]
    assert any(getattr(c, "id", None) == job.id and getattr(c, "state", None) is JobState.FAILED
               for c in persist.changes)


def test_a_rerun_that_succeeds_resolves_the_step_and_the_run():
    h = Recorder(pipeline("p", Step("a", "false", jobs=2), Step("b", "true", parents=("a",))))
    h.trigger("p")
    h.drain(lambda start: ("failed", 1) if start.job.index == 1 else ("succeeded", 0))
    assert h.run().state is RunState.FAILED
    assert h.opened() == [(JOB_FAILED, "p", "a"), (RUN_FAILED, "p", "")]
    h.persists.clear()
    run = h.run()  # the API loads the ended run and passes it along
    h.ask(Command("rerun", h.job("a", 1).id, run=run, jobs=tuple(j for j in h.db_jobs.values() if j.run_id == 1)))
    h.settle()
    h.drain()
    assert h.run().state is RunState.SUCCEEDED
    assert h.opened() == []
    assert h.resolved() == [
        ((JOB_FAILED, LATE), "p", "a"),
        ((JOB_FAILED, LATE), "p", "b"),  # revived after a skip: nothing open, the writer finds none
        ((JOB_FAILED, RUN_FAILED, RUN_EXPIRED, LATE), "p", None),
    ]


def test_a_run_that_succeeds_at_once_writes_nothing_of_incidents():
    h = Recorder(pipeline("p", Step("a", "true", jobs=3), Step("b", "true", parents=("a",))))
    h.trigger("p")
    h.drain()
    assert h.run().state is RunState.SUCCEEDED
    assert h.alerts() == []


def test_expiry_and_lateness_open_incidents():
    h = Recorder(pipeline("p", Step("a", "true", late_after="PT1H"), Step("b", "true", expire_after="PT2H",
                                                                          parents=("a",))))
    h.now = T0.timestamp()
    h.trigger("p")
    [start] = h.starts
    h.now = T0.timestamp() + 3 * 3600  # past a's late_after and b's expire_after
    h.feed()
    h.settle()
    assert (LATE, "p", "a") in h.opened()
    h.run_job(start.job.id)  # a ends; b expired meanwhile
    h.drain()
    assert h.run().state is RunState.EXPIRED
    assert (RUN_EXPIRED, "p", "") in h.opened()
    # the late step succeeded: its lateness resolves
    assert ((JOB_FAILED, LATE), "p", "a") in h.resolved()


def test_an_executor_that_cannot_start_jobs_opens_once_and_resolves_on_a_start():
    h = Recorder(pipeline("p", Step("a", "true", jobs=3)))
    h.trigger("p")
    for job_id in (1, 2, 3):
        h.feed(JobNotStarted(job_id, "sbatch: error: Unable to contact slurm controller"))
    h.settle()
    opened = [c for c in h.alerts() if isinstance(c, OpenIncident)]
    assert [(c.kind, c.subject) for c in opened] == [(EXECUTOR_DOWN, "local")]
    assert opened[0].summary == "executor local cannot start jobs: sbatch: error: Unable to contact slurm controller"
    h.now += 60
    h.drain()
    assert [(c.kinds, c.subject) for c in h.alerts() if isinstance(c, ResolveIncidents)] == [
        ((EXECUTOR_DOWN,), "local")]


def test_an_operators_failure_is_no_incident():
    h = Recorder(pipeline("p", Step("a", "true"), Step("b", "true", parents=("a",))))
    h.trigger("p")
    h.ask(Command("set", 2, outcome="failed"))  # b waits for a: set by hand
    h.settle()
    h.drain()
    assert h.run().state is RunState.FAILED
    assert h.opened() == [(RUN_FAILED, "p", "")]


# --- the records: open once, resolve once, on both databases ---------------------------------


def test_records_open_once_resolve_once_and_remember_deliveries(database_url):
    store = open_store(database_url)
    try:
        failed = OpenIncident(JOB_FAILED, 10.0, "job 4 (a[0]) failed for good: exit code 3", pipeline="p", step="a",
                              reference_time=T0, run_id=1, job_id=4)
        writes.write(store, [failed, failed, OpenIncident(JOB_FAILED, 11.0, "again", pipeline="p", step="a",
                                                          reference_time=T0, job_id=5)])
        [incident] = records.list_incidents(store)
        assert (incident.kind, incident.summary, incident.job_id, incident.state) == (
            JOB_FAILED, failed.summary, 4, "open")
        [notice] = records.pending_notices(store)
        assert (notice.action, notice.incident.id) == ("trigger", incident.id)
        writes.write(store, [Delivered("ops:mail", (notice.id,), 12.0)])
        assert records.pending_notices(store)[0].sent_to == {"ops:mail"}
        assert records.last_sent(store) == {"ops:mail": 12.0}
        writes.write(store, [Delivered("", (), 12.5, done=(notice.id,))])
        assert records.pending_notices(store) == []
        writes.write(store, [AckIncident(incident.id, 13.0, "ops-desk", "on it")])
        assert records.list_incidents(store, open_only=True)[0].state == "acknowledged"
        assert records.due_reminders(store, 1e9) == []  # acknowledged: no reminders
        resolve = ResolveIncidents((JOB_FAILED, LATE), 14.0, "every job of a succeeded", pipeline="p", step="a",
                                   reference_time=T0)
        writes.write(store, [resolve, resolve])
        [incident] = records.list_incidents(store)
        assert (incident.state, incident.resolution) == ("resolved", "every job of a succeeded")
        assert [n.action for n in records.pending_notices(store)] == ["resolve"]
        # the same cause again later: a new incident
        writes.write(store, [failed])
        assert [i.state for i in records.list_incidents(store)] == ["open", "resolved"]
        events = store.query("SELECT payload FROM events WHERE kind = 'operator'")
        assert json.loads(events[0][0]) == {"action": "ack", "by": "ops-desk", "reason": "on it",
                                            "target": {"incident_id": incident.id}}
    finally:
        store.close()


def test_reminders_and_a_late_product_that_arrives(database_url):
    store = open_store(database_url)
    try:
        from muppet.messages import DefineIndex
        from muppet.model import DataFormat, ServiceBackend

        writes.write(store, [DefineIndex(products=(Product("arome", "AROME"),), formats=(DataFormat("text", "Text"),),
                                         backends=(ServiceBackend("lustre", "Lustre", "file:///lustre"),))])
        late = OpenIncident(PRODUCT_LATE, 10.0, "arome late", pipeline="p", subject="arome", reference_time=T0,
                            unless_complete=True, once=True)
        writes.write(store, [late])
        [incident] = records.list_incidents(store)
        assert records.due_reminders(store, 10.0) == []
        assert records.due_reminders(store, 20.0) == [incident.id]
        writes.write(store, [Remind((incident.id,), 20.0, before=20.0), Remind((incident.id,), 20.0, before=20.0)])
        assert [n.action for n in records.pending_notices(store)] == ["trigger", "remind"]
        # the instance arrives: its incident resolves in the same transaction
        writes.write(store, [RegisterFiles((NewFile("arome", T0, "lustre", "text", "file:///lustre/a.txt", 1,
                                                    "0" * 64),))])
        [incident] = records.list_incidents(store)
        assert (incident.state, incident.resolution) == ("resolved", "the instance is complete")
        # once resolved, a product_late of that key never opens again
        writes.write(store, [late])
        assert len(records.list_incidents(store)) == 1
    finally:
        store.close()


# --- the digest -------------------------------------------------------------------------------


def incident(id_: int, kind: str = JOB_FAILED, **fields) -> Incident:
    values = dict(id=id_, kind=kind, pipeline="p", step="a", subject="", reference_time="2026-11-28T06:00:00Z",
                  run_id=1, job_id=id_ + 100, summary=f"job {id_ + 100} (a[0]) failed for good: exit code 3",
                  opened_at=1000.0 + id_, resolved_at=None, resolution="", acked_at=None, acked_by="",
                  ack_reason="", reminded_at=1000.0)
    values.update(fields)
    return Incident(**values)


def notice(id_: int, at: float, action: str = "trigger", sent: frozenset[str] = frozenset()) -> Notice:
    return Notice(id_, action, at, incident(id_), sent)


def test_a_storm_of_200_makes_one_message_per_destination():
    digest = Digest(60.0)
    storm = [(notice(i, 1000.0 + i * 0.25), ["ops:mail", "desk:mail", "desk:webhook"]) for i in range(200)]
    messages, wake = digest.plan(storm, 1030.0)
    assert messages == [] and wake == 1060.0  # gathered: 60 s after the oldest
    messages, wake = digest.plan(storm, 1060.0)
    assert sorted(m.destination for m in messages) == ["desk:mail", "desk:webhook", "ops:mail"]
    assert all(len(m.notices) == 200 for m in messages)
    assert digest.plan(storm, 1061.0) == ([], None)  # under way: not planned twice
    for m in messages:
        digest.sent(m.destination, 1061.0)
    # what comes next waits for the destination's digest window
    later = [(notice(300, 1070.0), ["ops:mail"])]
    assert digest.plan(later, 1100.0) == ([], 1130.0)
    assert [len(m.notices) for m in digest.plan(later, 1130.0)[0]] == [1]


def test_a_failed_send_backs_off_and_gathers_what_comes_meanwhile():
    digest = Digest(1.0, retry_first=2.0, retry_max=8.0)
    first = [(notice(1, 100.0), ["ops:mail"])]
    [message], _ = digest.plan(first, 101.0)
    assert digest.failed("ops:mail", 101.0) == 103.0
    both = [*first, (notice(2, 102.0), ["ops:mail"])]
    assert digest.plan(both, 102.5) == ([], 103.0)
    [message], _ = digest.plan(both, 103.0)
    assert [n.id for n in message.notices] == [1, 2]
    assert digest.failed("ops:mail", 103.0) == 107.0  # doubled
    digest.plan(both, 107.0)
    assert digest.failed("ops:mail", 107.0) == 115.0  # at most retry_max
    digest.plan(both, 115.0)
    digest.sent("ops:mail", 115.0)
    assert digest.failing == {}


def test_a_destination_that_has_a_notice_is_not_sent_it_again():
    digest = Digest(0.0)
    assert digest.plan([(notice(1, 1.0, sent=frozenset({"ops:mail"})), ["ops:mail"])], 5.0) == ([], None)


# --- who hears of it ----------------------------------------------------------------------------


def config(**alerts) -> Config:
    stakeholders = {
        "ops": Stakeholder("ops", "Ops", "ops@example.org"),
        "desk": Stakeholder("desk", "Desk", "desk@example.org", webhook="https://chat.example.org/h"),
        "arome-team": Stakeholder("arome-team", "AROME team", "arome@example.org", notify=("product_late",)),
        "quiet": Stakeholder("quiet", "Quiet", "quiet@example.org", notify=()),
    }
    return Config(
        daemon=DaemonConfig("sqlite:////x.db", "/x", "/x/out"), api=ApiConfig(), executors={},
        pipelines={"p": Pipeline(name="p", owner="ops", steps={"a": Step("a", "true")}, produces=("arome",))},
        stakeholders=stakeholders,
        products={"arome": Product("arome", "AROME", contact="arome-team")},
        alerts=AlertsConfig(**{"smtp": "127.0.0.1:25", "sender": "m@x.org", "default_to": ("desk", "quiet"),
                               **alerts}),
    )


def test_an_incident_reaches_the_owner_the_contacts_and_default_to():
    assert routing.stakeholders(config(), JOB_FAILED, "p", "") == ["ops", "desk"]  # arome-team: notify
    assert routing.stakeholders(config(), PRODUCT_LATE, "p", "arome") == ["arome-team", "ops", "desk"]
    assert routing.stakeholders(config(), EXECUTOR_DOWN, "", "slurm") == ["desk"]
    assert routing.destinations(config(), JOB_FAILED, "p", "") == ["ops:mail", "desk:mail", "desk:webhook"]
    assert routing.destinations(config(smtp=""), JOB_FAILED, "p", "") == ["desk:webhook"]


# --- what a message says ---------------------------------------------------------------------------


def test_a_mail_names_pipeline_step_time_reason_stderr_and_commands():
    one = notice(7, 1000.0)
    mail = render.mail([one], {107: "line 1\n" + "\n".join(f"x{i}" for i in range(30)) + "\n"}, "m@x.org",
                       "ops@example.org", "node1")
    assert mail["Subject"] == ("[MUPPET] job_failed p.a 2026-11-28T06:00:00Z: job 107 (a[0]) failed for good: "
                               "exit code 3")
    body = mail.get_content()
    assert "  reason:         job 107 (a[0]) failed for good: exit code 3\n" in body
    assert "    | x29\n" in body and "    | x9\n" not in body and "line 1" not in body  # the last 20 lines
    for command in ("muppet jobs 1", "muppet logs 107 --stderr", "muppet ack 7 --reason TEXT"):
        assert f"    {command}\n" in body
    digest = render.mail([notice(i, 1000.0) for i in range(1, 201)], {}, "m@x.org", "ops@example.org", "node1")
    assert digest["Subject"].startswith("[MUPPET] 200 incidents (200 opened, 0 resolved): job_failed p.a ")
    assert digest.get_content().count("OPENED: job_failed") == 200


def test_a_webhook_body_is_a_chat_text_and_pagerduty_events():
    one = json.loads(render.webhook([notice(7, 1000.0)], {107: "boom\n"}, "node1"))
    assert one["schema"] == "muppet.alerts/1"
    assert one["text"] == "OPENED: job_failed p.a 2026-11-28T06:00:00Z: job 107 (a[0]) failed for good: exit code 3"
    # one event: PagerDuty's fields at the top level too
    assert one["event_action"] == "trigger" and one["dedup_key"] == incident(7).dedup_key
    assert one["payload"]["severity"] == "error" and one["payload"]["source"] == "node1"
    assert one["payload"]["custom_details"]["stderr_tail"] == ["boom"]
    assert one["events"] == [{k: one[k] for k in ("event_action", "dedup_key", "client", "payload")}]
    resolved = Notice(8, "resolve", 2000.0, incident(7, resolved_at=2000.0, resolution="every job of a succeeded"))
    two = json.loads(render.webhook([notice(7, 1000.0), resolved], {}, "node1"))
    assert "event_action" not in two and [e["event_action"] for e in two["events"]] == ["trigger", "resolve"]
    assert {e["dedup_key"] for e in two["events"]} == {incident(7).dedup_key}  # one incident, one key
    pd = json.loads(render.pagerduty_event(resolved, {}, "node1", "KEY"))
    assert (pd["routing_key"], pd["event_action"], pd["dedup_key"]) == ("KEY", "resolve", incident(7).dedup_key)


def test_the_incident_key_and_dedup_key_are_stable():
    moment = datetime(2026, 11, 28, 6, tzinfo=UTC)
    assert incident_key(JOB_FAILED, "p", "a", "", moment) == "job_failed|p|a||2026-11-28T06:00:00Z"
    assert incident(1).dedup_key == incident(1).dedup_key != incident(1, opened_at=5.0).dedup_key


@pytest.mark.parametrize("action, word", [("trigger", "OPENED"), ("remind", "STILL OPEN"), ("resolve", "RESOLVED")])
def test_each_action_has_its_word(action, word):
    assert render.mail([Notice(1, action, 1.0, incident(1))], {}, "m@x.org", "o@x.org", "h").get_content().count(
        f"{word}: job_failed") == 1


def test_a_reload_applies_alerts_at_once():
    """The alerts task reads the configuration the daemon runs now: a
    changed [alerts] is a setting applied by a reload, not one waiting for a
    restart (docs/operations.md, "Reload")."""
    from muppet.config.changes import compare

    old = config()
    new = attrs.evolve(old, alerts=attrs.evolve(old.alerts, digest_seconds=5.0, sender="other@x.org"))
    plan = compare(old, new)
    assert plan.changes.settings == ("[alerts] digest_seconds", "[alerts] from") and plan.changes.restart == ()
    assert plan.config.alerts.digest_seconds == 5.0


def test_an_executors_trouble_left_open_by_a_daemon_before_ends_with_a_start(database_url):
    """The rules know only the troubles their daemon opened; the alerts task
    asks the database for the others (records.stale_troubles)."""
    from muppet.messages import NewRun
    from muppet.model import Job, Run

    store = open_store(database_url)
    try:
        writes.write(store, [OpenIncident(EXECUTOR_DOWN, 10.0, "executor slurm cannot start jobs", subject="slurm")])
        assert records.stale_troubles(store, 15.0) == []  # nothing started since
        run = Run(1, "p", T0, created_at=16.0)
        job = Job(1, 1, "p", "a", 0, 1, "slurm", state=JobState.RUNNING, created_at=16.0, started_at=20.0)
        writes.write(store, [NewRun(run, (job,))])
        [(_, executor)] = records.stale_troubles(store, 15.0)
        assert executor == "slurm"
        assert records.stale_troubles(store, 5.0) == []  # opened by this daemon: its rules resolve it
    finally:
        store.close()
