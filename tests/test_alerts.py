"""Stakeholders hear of incidents, end to end (docs/alerts.md): a real daemon
on SQLite and PostgreSQL, real jobs, a real SMTP server (aiosmtpd, in a
thread of its own) and a real HTTP server for the webhooks.

Each kind of incident opens once and resolves once; retries do not alert;
a storm of 200 failures makes one message per stakeholder; mail waits out an
SMTP server that is down; ``kill -9`` of the daemon during delivery loses
no mail and sends none twice. The tests wait for what they need with
deadlines (tests/waiting.py); ``digest_seconds`` is small here.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from aiosmtpd.controller import Controller
from executor_harness import fill  # tests/ is on sys.path
from test_api import free_port
from waiting import wait_until, wait_until_async

from muppet import daemon
from muppet.alerts import records
from muppet.api.client import DaemonUnreachable, connect
from muppet.config import load_config
from muppet.db.store import open_store

MUPPET = [sys.executable, "-m", "muppet.cli"]
ENV = {k: v for k, v in os.environ.items() if k not in ("MUPPET_API", "MUPPET_TOKEN")}
#: a safety net for each condition waited for, not a timing
DEADLINE = 60

pytestmark = pytest.mark.timeout(240)


# --- the servers the daemon talks to -------------------------------------------------------


@attrs.frozen
class Mail:
    to: str
    subject: str
    body: str


class Mailbox:
    """An SMTP server (aiosmtpd) that keeps every message it accepted.
    ``hold``: recipients whose messages it keeps waiting in DATA, never
    accepting them, until ``release()``; ``refuse``: it answers 451 to all."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self.hold: set[str] = set()
        self.held = 0
        self.refuse = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.release()
            self.controller.stop()
            self.controller = None

    def release(self) -> None:
        self._released.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            return "451 4.3.0 not now"
        if self.hold & set(envelope.rcpt_tos):
            with self._lock:
                self.held += 1
            # the release comes from the test's thread
            await asyncio.get_running_loop().run_in_executor(None, self._released.wait)
            return "451 4.3.0 not now"  # never accepted: the sender must try again
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            for to in envelope.rcpt_tos:
                self.mails.append(Mail(to, str(message["Subject"]), message.get_content().replace("\r\n", "\n")))
        return "250 OK"

    def to(self, address: str) -> list[Mail]:
        with self._lock:
            return [m for m in self.mails if m.to == address]

    def text(self, address: str) -> str:
        return "\n".join(m.subject + "\n" + m.body for m in self.to(address))


class Hooks:
    """An HTTP server that keeps the JSON body of every POST."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, path: str) -> list[dict[str, Any]]:
        return [event for body in list(self.bodies) if body["path"] == path for event in body["events"]]


@pytest.fixture
def mailbox():
    box = Mailbox()
    yield box
    box.stop()


@pytest.fixture
def hooks():
    server = Hooks()
    yield server
    server.server.shutdown()


# --- the daemon's files --------------------------------------------------------------------


def gate(tmp_path: Path, name: str) -> str:
    return f"until [ -e {tmp_path}/{name} ] || [ $SECONDS -ge 300 ]; do sleep 0.05; done"


DAEMON = """
[daemon]
database = "{database}"
state_dir = "{state_dir}"
output_dir = "{tmp}/out"
pipelines = ["pipelines/*.toml"]
[api]
listen = "127.0.0.1:{port}"
[web]
listen = ""
[executors.local]
type = "local"
max_jobs = {max_jobs}
[alerts]
smtp = "127.0.0.1:{smtp}"
from = "muppet@example.org"
digest_seconds = {digest}
default_to = ["desk"]
remind_seconds = {remind}
timeout = 5
[stakeholders.ops]
name = "Operations"
email = "ops@example.org"
{ops_webhook}
[stakeholders.desk]
name = "Operations desk"
email = "desk@example.org"
[stakeholders.arome-team]
name = "AROME team"
email = "arome@example.org"
{arome_webhook}
notify = ["product_late"]
[products.arome]
name = "AROME"
contact = "arome-team"
file_count = 1
expected_after = "PT1S"
[formats.text]
name = "Text"
"""


def write_config(tmp_path: Path, database_url: str, mailbox: Mailbox, hooks: Hooks | None, pipelines: dict[str, str],
                 *, digest: float = 0.3, remind: float = 0, state_dir: Path | None = None,
                 max_jobs: int = 32) -> Path:
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    for name, text in pipelines.items():
        (tmp_path / "pipelines" / f"{name}.toml").write_text(textwrap.dedent(text))
    path = tmp_path / "muppet.toml"
    path.write_text(DAEMON.format(
        database=database_url, tmp=tmp_path, port=free_port(), smtp=mailbox.port, digest=digest, remind=remind,
        max_jobs=max_jobs,
        state_dir=state_dir or tmp_path / "state",
        ops_webhook=f'webhook = "{hooks.url}/ops"' if hooks else "",
        arome_webhook=f'webhook = "{hooks.url}/arome"' if hooks else "",
    ))
    return path


async def start(nursery: trio.Nursery, path: Path) -> str:
    port = await nursery.start(daemon.serve, load_config(path))
    return f"ws://127.0.0.1:{port}"


async def muppet(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    with trio.fail_after(DEADLINE):
        done = await trio.run_process([*MUPPET, *args, "--api", url], capture_stdout=True, capture_stderr=True,
                                      check=False, env=ENV)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def incidents(client: Any, **params: Any) -> list[dict[str, Any]]:
    return await client.call("alerts.list", params)


def kinds_of(found: list[dict[str, Any]], state: str | None = None) -> list[tuple[str, str, str]]:
    return sorted((i["kind"], i["pipeline"], i["step"]) for i in found if state is None or i["state"] == state)


# --- every kind through a daemon ---------------------------------------------------------------


async def test_incidents_open_once_reach_their_stakeholders_and_resolve(tmp_path, database_url, mailbox, hooks):
    """A job that fails for good (after a retry that does not alert), its
    run, a late step, an expired run and a product not complete in time:
    each opens once, reaches the pipeline's owner, the product's contact
    and default_to, by mail and webhook; a rerun that succeeds resolves the
    failure, and the product arriving late resolves its lateness."""
    mailbox.start()
    config = write_config(tmp_path, database_url, mailbox, hooks, {
        "fails": f"""
            [pipeline]
            name = "fails"
            owner = "ops"
            produces = ["arome"]
            [steps.make]
            retry = {{ tries = 2 }}
            command = '''
            echo "reading input of run $MUPPET_RUN_ID" >&2
            [ -e {tmp_path}/ok ] || {{ echo "input missing: {tmp_path}/ok" >&2; exit 3; }}
            echo field > "$MUPPET_SCRATCH/arome-$MUPPET_REFERENCE_TIME.txt"'''
            outputs = ["arome-{{reference_time:%Y-%m-%dT%H:%M:%SZ}}.txt"]
            """,
        "slow": f"""
            [pipeline]
            name = "slow"
            owner = "ops"
            [steps.a]
            late_after = "PT1S"
            command = '{gate(tmp_path, "open")}'
            [steps.b]
            parents = ["a"]
            expire_after = "PT1S"
            command = "true"
            """,
    })
    async with trio.open_nursery() as nursery:
        url = await start(nursery, config)
        async with connect(url) as client:
            fails = (await client.call("runs.trigger", {"pipeline": "fails"}))["run_id"]
            await client.call("runs.trigger", {"pipeline": "slow"})

            async def all_open() -> list[dict[str, Any]] | None:
                found = await incidents(client)
                return found if len(found) == 4 else None

            await wait_until_async(all_open, DEADLINE, "job_failed, run_failed, product_late and late")
            (tmp_path / "open").touch()  # a ends; b expired meanwhile: the run ends expired
            await wait_until_async(lambda: _kinds(client, "run_expired"), DEADLINE, "the expired run's incident")
            found = await incidents(client)
            assert kinds_of(found) == [
                ("job_failed", "fails", "make"), ("late", "slow", "a"), ("product_late", "fails", ""),
                ("run_expired", "slow", ""), ("run_failed", "fails", ""),
            ]
            # the late step succeeded: its lateness is over
            assert kinds_of(found, "resolved") == [("late", "slow", "a")]

            # every change reached the stakeholders by mail
            def told() -> bool:
                text = mailbox.text("ops@example.org")
                return all(f"{w}: {k}" in text for w, k in (
                    ("OPENED", "job_failed"), ("OPENED", "run_failed"), ("OPENED", "late"),
                    ("OPENED", "run_expired"), ("RESOLVED", "late"), ("OPENED", "product_late")))

            await wait_until_async(told, DEADLINE, "ops to be told of everything", detail=lambda: mailbox.text(
                "ops@example.org"))
            ops = mailbox.text("ops@example.org")
            assert ops.count("OPENED: job_failed") == 1  # the retry did not alert, the failure for good did once
            # the product's lateness: its producer's owner and default_to hear
            # of it too (each recipient's mail goes on its own)
            for recipient in ("desk@example.org", "arome@example.org"):
                await wait_until_async(lambda r=recipient: "OPENED: product_late" in mailbox.text(r), DEADLINE,
                                       f"{recipient} to be told of the late product")
            arome = mailbox.text("arome@example.org")
            assert "OPENED: product_late" in arome and "job_failed" not in arome  # its notify
            failure = next(m for m in mailbox.to("ops@example.org") if "OPENED: job_failed" in m.body)
            assert "job_failed fails.make" in failure.subject or "incidents" in failure.subject
            block = next(b for b in failure.body.split("\n\n") if b.startswith("OPENED: job_failed"))
            assert "  pipeline:       fails\n  step:           make\n" in block
            assert "failed for good: exit code 3" in block
            assert f"    | input missing: {tmp_path}/ok" in block  # the last lines of stderr
            assert f"    muppet jobs {fails}" in block and "    muppet logs " in block

            # the input comes; a rerun succeeds and registers the product
            (tmp_path / "ok").touch()
            failed_job = next(i for i in found if i["kind"] == "job_failed")["job_id"]
            await client.call("jobs.rerun", {"job_id": failed_job})

            async def resolved() -> bool:
                states = {i["kind"]: i["state"] for i in await incidents(client)}
                return all(states[k] == "resolved" for k in ("job_failed", "run_failed", "product_late"))

            await wait_until_async(resolved, DEADLINE, "the rerun and the late product to resolve their incidents")
            await wait_until_async(lambda: "RESOLVED: product_late" in mailbox.text("arome@example.org"), DEADLINE,
                                   "the product's contact to hear it arrived")
            await wait_until_async(lambda: "RESOLVED: job_failed" in mailbox.text("ops@example.org"), DEADLINE,
                                   "ops to hear the failure is over")
            assert mailbox.text("ops@example.org").count("RESOLVED: job_failed") == 1

            # the webhooks: PagerDuty events, one incident one dedup_key, trigger then resolve
            def hooked() -> list[dict[str, Any]]:
                return [e for e in hooks.events("/ops") if e["payload"]["class"] == "job_failed"]

            await wait_until_async(lambda: len(hooked()) == 2, DEADLINE, "the failure's trigger and resolve")
            trigger, resolve = hooked()
            assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
            assert trigger["dedup_key"] == resolve["dedup_key"]
            assert trigger["payload"]["custom_details"]["job_id"] == failed_job
            await wait_until_async(lambda: hooks.events("/arome"), DEADLINE, "the product's contact's webhook")
            assert {e["payload"]["class"] for e in hooks.events("/arome")} == {"product_late"}
            # the operator's view
            listed = await muppet(url, "alerts", "--open")
            assert listed.returncode == 0, listed.stderr
            assert [line.split()[1] for line in listed.stdout.splitlines()[1:]] == ["run_expired"]
        nursery.cancel_scope.cancel()


async def _kinds(client: Any, kind: str) -> bool:
    return any(i["kind"] == kind for i in await incidents(client))


# --- a storm is gathered ------------------------------------------------------------------------


async def test_a_storm_of_200_failures_makes_one_message_per_stakeholder(tmp_path, database_url, mailbox, hooks):
    """200 runs fail within a second or two (a backfill whose 200 jobs all
    run, waiting on one gate, until the test opens it): 400 incidents, one
    mail to each stakeholder and one webhook post, each listing all of them."""
    mailbox.start()
    config = write_config(tmp_path, database_url, mailbox, hooks, {
        "storm": f"""
            [pipeline]
            name = "storm"
            owner = "ops"
            cron = ["0 0 1 1 *"]  # yearly: no firing of its own during the test
            [steps.a]
            command = 'until [ -e {tmp_path}/go ] || [ $SECONDS -ge 300 ]; do sleep 0.5; done; exit 1'
            """,
    }, digest=6, max_jobs=200)
    first = datetime(1826, 1, 1, tzinfo=UTC)
    async with trio.open_nursery() as nursery:
        url = await start(nursery, config)
        async with connect(url) as client:
            made = await client.call("runs.backfill", {
                "pipeline": "storm", "from": first.isoformat(), "to": first.replace(year=2025).isoformat()})
            assert len(made["run_ids"]) == 200

            async def all_running() -> bool:
                return len(await client.call("jobs.list", {"state": "running"})) == 200

            await wait_until_async(all_running, DEADLINE, "the 200 jobs running, at the gate")
            (tmp_path / "go").touch()

            async def all_failed() -> bool:
                return len(await incidents(client, limit=1000)) == 400

            await wait_until_async(all_failed, DEADLINE, "400 incidents")
            for address in ("ops@example.org", "desk@example.org"):
                await wait_until_async(lambda a=address: mailbox.to(a), DEADLINE, f"a mail to {address}")
            await wait_until_async(lambda: hooks.bodies, DEADLINE, "the webhook's post")
            # and nothing more comes: every notice has reached every destination
            store = await trio.to_thread.run_sync(open_store, database_url)
            try:
                await wait_until_async(lambda: trio.to_thread.run_sync(lambda: not records.pending_notices(store)),
                                       DEADLINE, "no notice pending")
            finally:
                store.close()
        nursery.cancel_scope.cancel()
    for address in ("ops@example.org", "desk@example.org"):
        [mail] = mailbox.to(address)
        assert mail.subject.startswith("[MUPPET] 400 incidents (400 opened, 0 resolved): ")
        assert mail.body.count("OPENED: job_failed") == 200 and mail.body.count("OPENED: run_failed") == 200
    [post] = hooks.bodies
    assert len(post["events"]) == 400 and post["text"].startswith("MUPPET on ")


# --- an SMTP server that is down, then up ----------------------------------------------------------


async def test_mail_waits_for_an_smtp_server_that_is_down(tmp_path, database_url, mailbox, caplog):
    """No SMTP server listens: the daemon tries again with a backoff (the
    scheduler goes on); once it listens, each stakeholder gets the mail once."""
    config = write_config(tmp_path, database_url, mailbox, None, {
        "fails": """
            [pipeline]
            name = "fails"
            owner = "ops"
            [steps.a]
            command = "exit 2"
            [steps.b]
            command = "true"
            """,
    })
    async with trio.open_nursery() as nursery:
        url = await start(nursery, config)
        async with connect(url) as client:
            run_id = (await client.call("runs.trigger", {"pipeline": "fails"}))["run_id"]
            await wait_until_async(
                lambda: [r for r in caplog.records if r.name == "muppet.alerts" and "cannot send to" in r.message],
                DEADLINE, "a failed try to send")
            # the scheduler is not held up: another run is made and ends meanwhile
            second = await client.call("runs.trigger", {"pipeline": "fails", "reference_time": "2026-01-01T00:00:00Z"})
            await wait_until_async(lambda: _ended(client, second["run_id"]), DEADLINE, "the second run to end")
            assert mailbox.mails == []
            mailbox.start()
            for address in ("ops@example.org", "desk@example.org"):
                await wait_until_async(lambda a=address: "OPENED: run_failed" in mailbox.text(a) and mailbox.text(a)
                                       .count("OPENED: run_failed") == 2, DEADLINE, f"the mail to {address}")
            store = await trio.to_thread.run_sync(open_store, database_url)
            try:
                await wait_until_async(lambda: trio.to_thread.run_sync(lambda: not records.pending_notices(store)),
                                       DEADLINE, "no notice pending")
            finally:
                store.close()
            assert run_id
        nursery.cancel_scope.cancel()
    for address in ("ops@example.org", "desk@example.org"):
        text = mailbox.text(address)
        assert text.count("OPENED: job_failed") == 2 and text.count("OPENED: run_failed") == 2  # once each


async def _ended(client: Any, run_id: int) -> bool:
    return (await client.call("runs.get", {"run_id": run_id}))["state"] in ("succeeded", "failed")


# --- acknowledgement and reminders --------------------------------------------------------------------


async def test_reminders_until_an_operator_acknowledges(tmp_path, database_url, mailbox):
    """An open incident is told again every remind_seconds until `muppet ack`,
    which records who and why; its resolution is still told."""
    mailbox.start()
    config = write_config(tmp_path, database_url, mailbox, None, {
        "fails": f"""
            [pipeline]
            name = "fails"
            owner = "ops"
            [steps.a]
            command = '[ -e {tmp_path}/ok ] || exit 2'
            """,
    }, remind=1)
    async with trio.open_nursery() as nursery:
        url = await start(nursery, config)
        async with connect(url) as client:
            await client.call("runs.trigger", {"pipeline": "fails"})
            await wait_until_async(lambda: "STILL OPEN: job_failed" in mailbox.text("ops@example.org"), DEADLINE,
                                   "a reminder")
            failure = next(i for i in await incidents(client) if i["kind"] == "job_failed")
            done = await muppet(url, "ack", str(failure["id"]), "--reason", "ECMWF input late; rerun at 08")
            assert (done.returncode, done.stdout) == (0, f"incident {failure['id']}: acknowledged by local\n"), (
                done.stderr)
            again = await muppet(url, "ack", str(failure["id"]), "--reason", "twice")
            assert again.returncode == 1 and "acknowledged already by local" in again.stderr
            shown = await muppet(url, "alerts", str(failure["id"]))
            assert "state:          acknowledged" in shown.stdout and "ECMWF input late" in shown.stdout
            events = await client.call("events.list", {"since": 0, "kinds": ["operator"]})
            assert events[-1]["data"] == {"action": "ack", "by": "local", "reason": "ECMWF input late; rerun at 08",
                                         "target": {"incident_id": failure["id"]}}
            # the run's incident is still reminded; the acknowledged one no longer
            reminders = mailbox.text("ops@example.org").count("STILL OPEN: job_failed")
            before = mailbox.text("ops@example.org").count("STILL OPEN: run_failed")
            await wait_until_async(
                lambda: mailbox.text("ops@example.org").count("STILL OPEN: run_failed") >= before + 2,
                DEADLINE, "two more reminders of the run")
            assert mailbox.text("ops@example.org").count("STILL OPEN: job_failed") <= reminders + 1  # one under way
            (tmp_path / "ok").touch()
            await client.call("jobs.rerun", {"job_id": failure["job_id"]})
            await wait_until_async(lambda: "RESOLVED: job_failed" in mailbox.text("ops@example.org"), DEADLINE,
                                   "the resolution of the acknowledged incident")
        nursery.cancel_scope.cancel()


# --- kill -9 during delivery ------------------------------------------------------------------------


class DaemonProcess:
    """`muppet daemon` as a process of its own, so that it can be killed -9."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.url = "ws://" + load_config(config).api.listen
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *more: str) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([*MUPPET, "daemon", "--config", str(self.config), *more], stdout=log,
                                            stderr=log, env=ENV)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        async def one() -> Any:
            async with connect(self.url) as client:
                return await client.call(method, params)

        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        try:
            return trio.run(one)
        except DaemonUnreachable:
            return None  # not listening yet

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def sent_to(database_url: str) -> set[str]:
    with open_store(database_url) as store:
        return {row[0] for row in store.query("SELECT DISTINCT destination FROM alert_sends")}


@pytest.mark.slow
def test_kill_9_during_delivery_loses_no_mail_and_sends_none_twice(tmp_path, database_url, mailbox):
    """Three stakeholders hear of a run's failure. ops's mail is accepted
    and recorded; the SMTP server holds desk's and dba's in DATA, never
    accepting them, when the daemon is killed -9. The next daemon sends
    those two, and not ops's again."""
    mailbox.hold = {"desk@example.org", "dba@example.org"}
    mailbox.start()
    config = write_config(tmp_path, database_url, mailbox, None, {
        "fails": """
            [stakeholders.dba]
            name = "Database administrators"
            email = "dba@example.org"
            [pipeline]
            name = "fails"
            owner = "dba"
            [steps.a]
            command = "echo 'disk quota exceeded' >&2; exit 4"
            """,
    })
    text = config.read_text().replace('default_to = ["desk"]', 'default_to = ["desk", "ops"]')
    config.write_text(text)
    first = DaemonProcess(config, tmp_path / "daemon-1.log")
    first.start()
    try:
        wait_until(lambda: first.call("daemon.status"), DEADLINE, "the daemon to answer", detail=first.log.read_text)
        first.call("runs.trigger", {"pipeline": "fails"})
        wait_until(lambda: "ops:mail" in sent_to(database_url), DEADLINE, "ops's mail recorded",
                   detail=first.log.read_text)
        wait_until(lambda: mailbox.held >= 2, DEADLINE, "desk's and dba's mail held in DATA")
        first.kill()
    finally:
        first.stop()
    assert sent_to(database_url) == {"ops:mail"}
    mailbox.release()  # the held conversations end unaccepted (the sender is gone anyway)
    mailbox.hold = set()
    second = DaemonProcess(config, tmp_path / "daemon-2.log")
    second.start()
    try:
        wait_until(lambda: sent_to(database_url) == {"ops:mail", "desk:mail", "dba:mail"}, DEADLINE,
                   "the next daemon to deliver the rest", detail=second.log.read_text)
        wait_until(lambda: second.call("daemon.status"), DEADLINE, "the daemon to answer")
    finally:
        second.stop()
    for address in ("ops@example.org", "desk@example.org", "dba@example.org"):
        [mail] = mailbox.to(address)  # exactly one each: none lost, none twice
        assert mail.body.count("OPENED: job_failed") == 1 and mail.body.count("OPENED: run_failed") == 1
        assert "    | disk quota exceeded" in mail.body


# --- the daemon's own troubles ---------------------------------------------------------------------


async def test_an_executor_that_cannot_start_jobs_is_an_incident(tmp_path, database_url, mailbox, small_tmpfs):
    """A full state_dir: the executor cannot start jobs (docs/operations.md,
    "When the disk is full"). One incident for the executor, to default_to;
    resolved once a job starts again."""
    mailbox.start()
    config = write_config(tmp_path, database_url, mailbox, None, {
        "many": """
            [pipeline]
            name = "many"
            owner = "ops"
            [steps.a]
            jobs = 4
            command = "true"
            """,
    }, state_dir=small_tmpfs)
    filler = small_tmpfs / "filler"
    async with trio.open_nursery() as nursery:
        url = await start(nursery, config)
        await trio.to_thread.run_sync(fill, filler)
        async with connect(url) as client:
            await client.call("runs.trigger", {"pipeline": "many"})
            await wait_until_async(lambda: "OPENED: executor_down" in mailbox.text("desk@example.org"), DEADLINE,
                                   "the executor's trouble told to default_to")
            [trouble] = await incidents(client)
            assert (trouble["kind"], trouble["subject"], trouble["state"]) == ("executor_down", "local", "open")
            assert trouble["summary"].startswith("executor local cannot start jobs: ")
            await trio.Path(filler).unlink()
            await wait_until_async(lambda: "RESOLVED: executor_down" in mailbox.text("desk@example.org"), DEADLINE,
                                   "the executor's trouble resolved")
            assert [i["kind"] for i in await incidents(client)] == ["executor_down"]  # once, for every job
            assert mailbox.to("ops@example.org") == []  # the daemon's trouble is default_to's
        nursery.cancel_scope.cancel()


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_database_away_for_longer_than_the_grace_is_told_while_it_lasts(
        tmp_path, postgres_server, postgres_url, mailbox, monkeypatch):
    """PostgreSQL stops: past the grace (a minute; a second here) default_to
    hears of it while it lasts, without the database; once it is back the
    incident is written, with whom it reached, and resolved."""
    from muppet.alerts import task as alerts_task

    monkeypatch.setattr(alerts_task, "DATABASE_GRACE", 1.0)
    mailbox.start()
    config = write_config(tmp_path, postgres_url, mailbox, None, {
        "quiet": '[pipeline]\nname = "quiet"\nowner = "ops"\n[steps.a]\ncommand = "true"\n',
    })
    async with trio.open_nursery() as nursery:
        url = await start(nursery, config)
        await trio.to_thread.run_sync(postgres_server.ctl, "stop", "immediate")
        try:
            await wait_until_async(lambda: "OPENED: database_down" in mailbox.text("desk@example.org"), DEADLINE,
                                   "the outage told while it lasts")
        finally:
            await trio.to_thread.run_sync(postgres_server.ctl, "start")
        await wait_until_async(lambda: "RESOLVED: database_down" in mailbox.text("desk@example.org"), DEADLINE,
                               "its end told")
        async with connect(url) as client:
            [outage] = await incidents(client)
            assert (outage["kind"], outage["state"]) == ("database_down", "resolved")
            assert outage["summary"].startswith("database ") and "unavailable" in outage["summary"]

            async def recorded() -> dict[str, Any] | None:
                told = await client.call("alerts.get", {"incident_id": outage["id"]})
                return None if any(n["pending"] for n in told["notices"]) else told

            told = await wait_until_async(recorded, DEADLINE, "both notices recorded as sent")
            trigger, resolve = told["notices"]
            assert [s["destination"] for s in trigger["sent"]] == ["desk:mail"]
            assert [s["destination"] for s in resolve["sent"]] == ["desk:mail"]
        nursery.cancel_scope.cancel()
    text = mailbox.text("desk@example.org")
    assert text.count("OPENED: database_down") == 1 and text.count("RESOLVED: database_down") == 1
    assert mailbox.to("ops@example.org") == []


async def test_a_mail_server_that_hangs_slows_nothing(tmp_path, database_url, mailbox):
    """The SMTP server takes the mail's DATA and never answers: the send
    waits in its worker thread (until [alerts] timeout), while the scheduler
    runs 20 more runs to their end and the API answers."""
    mailbox.hold = {"ops@example.org", "desk@example.org"}
    mailbox.start()
    config = write_config(tmp_path, database_url, mailbox, None, {
        "fails": '[pipeline]\nname = "fails"\nowner = "ops"\n[steps.a]\ncommand = "exit 2"\n',
        "fine": '[pipeline]\nname = "fine"\nowner = "ops"\n[steps.a]\ncommand = "true"\n[steps.b]\n'
                'parents = ["a"]\ncommand = "true"\n',
    })
    config.write_text(config.read_text().replace("timeout = 5", "timeout = 120"))
    async with trio.open_nursery() as nursery:
        url = await start(nursery, config)
        async with connect(url) as client:
            await client.call("runs.trigger", {"pipeline": "fails"})
            await wait_until_async(lambda: mailbox.held >= 2, DEADLINE, "both mails held by the server")
            runs = []
            for hour in range(20):
                made = await client.call("runs.trigger", {"pipeline": "fine",
                                                          "reference_time": f"2026-01-01T{hour:02}:00:00Z"})
                runs.append(made["run_id"])

            async def all_ended() -> bool:
                return all([await _ended(client, run_id) for run_id in runs])

            # a scheduler that waited for the mail would wait out its timeout (120 s) first
            await wait_until_async(all_ended, DEADLINE, "20 runs to end while the mail server hangs")
            assert mailbox.mails == []
            mailbox.release()
        nursery.cancel_scope.cancel()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_standby_that_takes_over_tells_default_to(tmp_path, postgres_url, mailbox):
    """kill -9 of the active daemon: the standby takes its lease over and
    opens a takeover incident, told to default_to (docs/alerts.md, "Kinds")."""
    mailbox.start()
    config = write_config(tmp_path, postgres_url, mailbox, None, {
        "quiet": '[pipeline]\nname = "quiet"\nowner = "ops"\n[steps.a]\ncommand = "true"\n',
    })
    second = tmp_path / "standby.toml"
    second.write_text(config.read_text().replace(load_config(config).api.listen, f"127.0.0.1:{free_port()}"))
    active, standby = DaemonProcess(config, tmp_path / "active.log"), DaemonProcess(second, tmp_path / "standby.log")
    try:
        active.start()
        wait_until(lambda: active.call("daemon.status"), DEADLINE, "the active daemon to answer")
        standby.start("--standby")
        wait_until(lambda: (standby.call("daemon.status") or {}).get("role") == "standby", DEADLINE,
                   "the standby to wait", detail=standby.log.read_text)
        active.kill()
        wait_until(lambda: "OPENED: takeover" in mailbox.text("desk@example.org"), DEADLINE,
                   "the takeover told to default_to", detail=standby.log.read_text)
        [incident] = standby.call("alerts.list")
        assert (incident["kind"], incident["state"]) == ("takeover", "open")
        assert incident["summary"].startswith("the standby on ") and " took over the lease on " in incident["summary"]
        assert mailbox.to("ops@example.org") == []  # the daemon's own news: default_to's
        # it has no end of its own: acknowledging it ends it
        standby.call("alerts.ack", {"incident_id": incident["id"], "reason": "node1 lost its disk; on it"})
        wait_until(lambda: "RESOLVED: takeover" in mailbox.text("desk@example.org"), DEADLINE,
                   "the acknowledged takeover resolved")
    finally:
        active.stop()
        standby.stop()
