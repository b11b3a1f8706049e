"""The alerts task: tells stakeholders of incidents by mail and webhook
(docs/alerts.md), out of the scheduler's way.

It reads on a Store of its own; it writes through the database task (an
``AlertWrite`` on ``database``: the single writer). Each pass, every
``poll`` seconds or when a send ends, it

1. takes the outcomes of the sends that ended: a destination that has a
   message is recorded (``Delivered``, committed before the destination is
   free again, so that a message is never sent twice unless the daemon dies
   between the server's "accepted" and that commit: delivery is at least
   once); one that failed waits out a backoff;
2. every ``checks`` seconds, asks for reminders of the open incidents nobody
   acknowledged within ``[alerts] remind_seconds``, and opens a
   ``product_late`` incident for each instance not complete by its
   product's ``expected_after``;
3. reads the pending notices, works out who should have each
   (``routing.py``, on the configuration the daemon runs now), marks done
   those that every destination has, and starts one send per destination
   that is due (``digest.py``), each in a task of its own whose blocking
   calls run in a worker thread with a timeout. A dead SMTP server or
   webhook holds up its own destinations only.

The database's own outage cannot be written while it lasts: after
``DATABASE_GRACE`` seconds of it the task sends the ``database_down``
incident straight to ``[alerts] default_to``, and writes it (with whom it
reached) and its resolution once the database answers again.

Cancellation: sends under way are abandoned (their threads end at their
timeout); what was not recorded is sent again by the next daemon.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from .. import codec, durations
from ..db.health import DatabaseHealth
from ..db.store import DatabaseUnavailable, Store, open_store
from ..model import AlertsConfig, Config
from . import records, render, routing
from .changes import AlertChange, AlertWrite, Delivered, OpenIncident, Remind, ResolveIncidents, incident_key
from .digest import Digest, Message
from .kinds import DATABASE_DOWN, DATABASE_GRACE, EXECUTOR_DOWN, PRODUCT_LATE, TAKEOVER
from .records import Incident, Notice
from .send import SendFailed, post_json, send_mail

log = logging.getLogger("muppet.alerts")

T = TypeVar("T")

#: seconds between two looks at the pending notices
POLL = 0.5
#: seconds between two looks for reminders and late products (at most
#: [alerts] remind_seconds)
CHECKS = 2.0
#: how far back a product's instances are looked at for lateness: an old
#: database holds years of them, and a first start must not page for each
LATE_LOOKBACK = timedelta(days=1)
#: job stderr tails kept for the messages being made
STDERR_CACHE = 1000


@attrs.frozen
class _Outcome:
    destination: str
    ok: bool
    error: str = ""
    #: the outage's message (nothing to record: the database is away)
    outage: bool = False


@attrs.define
class _Outage:
    """The database's outage told while it lasts."""

    opened_at: float
    cause: str
    delivered: set[str] = attrs.field(factory=set)


async def run(
    database_url: str,
    database: trio.MemorySendChannel[AlertWrite],
    *,
    current: Callable[[], Config],
    health: DatabaseHealth,
    poll: float = POLL,
    checks: float = CHECKS,
    clock: Callable[[], float] = time.time,
    host: str = "",
    took_over: str = "",
) -> None:
    """Deliver the pending notices until cancelled; ``current()`` is the
    configuration the daemon runs now (a reload changes who hears of what).
    ``took_over``: this daemon is a standby that took the database's lease
    over, in words: a ``takeover`` incident is written first."""
    alerts = _Alerts(database_url, database, current, health, clock, host or socket.gethostname())
    if took_over:
        await alerts._write(takeover(clock(), took_over))
    try:
        await alerts.loop(poll, checks)
    finally:
        if alerts.store is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(alerts.store.close)


class _Alerts:
    def __init__(
        self,
        database_url: str,
        database: trio.MemorySendChannel[AlertWrite],
        current: Callable[[], Config],
        health: DatabaseHealth,
        clock: Callable[[], float],
        host: str,
    ) -> None:
        self.database_url = database_url
        #: opened at the first pass the database answers: its outage is
        #: watched from the start
        self.store: Store | None = None
        self.database = database
        self.current = current
        self.health = health
        self.clock = clock
        self.host = host
        self.digest = Digest(current().alerts.digest_seconds)
        self.stderr: dict[int, str] = {}
        self.outage: _Outage | None = None
        self.next_checks = 0.0
        self.started = clock()
        #: product_late keys opened (or found opened) already, with their
        #: reference times: each is looked up in the database once
        self.late_known: dict[str, datetime] = {}
        self.outcomes, self.receive = trio.open_memory_channel[_Outcome](math.inf)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self.store is None:
                self.store = await trio.to_thread.run_sync(open_store, self.database_url)
                # the digest's clock across a restart
                self.digest.last_sent.update(await trio.to_thread.run_sync(records.last_sent, self.store))
            result = await trio.to_thread.run_sync(partial(fn, self.store, *args))
        except DatabaseUnavailable as exc:
            self.health.failed(exc)
            raise
        self.health.answered()
        return result

    async def _write(self, *changes: AlertChange, wait: bool = False) -> None:
        if not changes:
            return
        if not wait:
            await self.database.send(AlertWrite(changes))
            return
        send, receive = trio.open_memory_channel[bool](1)
        await self.database.send(AlertWrite(changes, send))
        await receive.receive()

    async def loop(self, poll: float, checks: float) -> None:
        async with trio.open_nursery() as nursery:
            wake: float | None = None
            while True:
                delay = poll if wake is None else max(0.0, min(poll, wake - self.clock()))
                with trio.move_on_after(delay):
                    self._took(await self.receive.receive())
                while True:
                    try:
                        self._took(self.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                config = self.current()
                self.digest.digest_seconds = config.alerts.digest_seconds
                await self._database_outage(nursery, config)
                # tried during an outage too: a read that answers ends it
                # (the database task retries only while it has a batch)
                try:
                    if self.clock() >= self.next_checks:
                        every = config.alerts.remind_seconds
                        self.next_checks = self.clock() + (min(checks, every) if every > 0 else checks)
                        await self._reminders(config)
                        await self._stale_troubles()
                        await self._late_products(config)
                    wake = await self._pass(nursery, config)
                except DatabaseUnavailable as exc:
                    log.debug("database unavailable: %s", exc)
                    wake = None

    def _took(self, outcome: _Outcome) -> None:
        if outcome.outage:
            if outcome.ok and self.outage is not None:
                self.outage.delivered.add(outcome.destination)
            return
        if outcome.ok:
            self.digest.sent(outcome.destination, self.clock())
        else:
            again = self.digest.failed(outcome.destination, self.clock())
            log.warning("cannot send to %s: %s; trying again at %s", outcome.destination, outcome.error,
                        codec.format_time(again))

    async def _pass(self, nursery: trio.Nursery, config: Config) -> float | None:
        pending = await self._read(records.pending_notices)
        if not pending:
            return None
        now = self.clock()
        wanted = [(notice, _destinations(config, notice.incident)) for notice in pending]
        done = tuple(n.id for n, where in wanted if set(where) <= n.sent_to)
        if done:
            # nobody (else) to tell: no stakeholder hears of it, or every one has it
            await self._write(Delivered("", (), now, done=done))
        messages, wake = self.digest.plan(((n, w) for n, w in wanted if n.id not in done), now)
        jobs = {n.incident.job_id for m in messages for n in m.notices
                if n.incident.job_id is not None and n.action != "resolve"} - set(self.stderr)
        for job_id in sorted(jobs):
            self.stderr[job_id] = await self._read(records.stderr_tail, job_id)
        for message in messages:
            nursery.start_soon(self._deliver, message, config)
        if len(self.stderr) > STDERR_CACHE:
            self.stderr.clear()
        return wake

    async def _deliver(self, message: Message, config: Config, *, outage: bool = False) -> None:
        """Send one message, record it (unless ``outage``), report the outcome."""
        try:
            await _send(config, message, self.stderr, self.host)
            if not outage:
                await self._write(Delivered(message.destination, tuple(n.id for n in message.notices), self.clock()),
                                  wait=True)
            log.info("%s: sent %d incident change(s)", message.destination, len(message.notices))
            outcome = _Outcome(message.destination, True, outage=outage)
        except SendFailed as exc:
            outcome = _Outcome(message.destination, False, str(exc), outage=outage)
        except Exception as exc:
            # a bug in making the message: it must not stop the daemon; the
            # message is tried again, and the log has the traceback
            log.exception("cannot make the message to %s", message.destination)
            outcome = _Outcome(message.destination, False, f"{type(exc).__name__}: {exc}", outage=outage)
        self.outcomes.send_nowait(outcome)

    async def _reminders(self, config: Config) -> None:
        every = config.alerts.remind_seconds
        if every <= 0:
            return
        now = self.clock()
        due = await self._read(records.due_reminders, now - every)
        if due:
            await self._write(Remind(tuple(due), now, before=now - every))

    async def _stale_troubles(self) -> None:
        """An executor's trouble that a daemon before this one left open ends
        when a job of that executor starts (this daemon's rules know only
        the troubles it opened)."""
        for _, executor in await self._read(records.stale_troubles, self.started):
            await self._write(ResolveIncidents((EXECUTOR_DOWN,), self.clock(),
                                               f"a job of executor {executor} started", subject=executor))

    async def _late_products(self, config: Config) -> None:
        """Open ``product_late`` for each instance not complete by its
        product's ``expected_after`` (Productstatus's grace time)."""
        now = self.clock()
        moment = datetime.fromtimestamp(now, UTC)
        # what fell out of every product's window is not looked at again
        oldest = moment - LATE_LOOKBACK - timedelta(days=366)
        self.late_known = {k: t for k, t in self.late_known.items() if t >= oldest}
        for product in config.products.values():
            if not product.expected_after:
                continue
            producers = [p.name for p in config.pipelines.values() if product.slug in p.produces]
            until = durations.shift(moment, "-" + product.expected_after, "UTC")
            found = await self._read(records.unfinished_references, producers, [product.slug],
                                     codec.format_time(until - LATE_LOOKBACK), codec.format_time(until))
            for pipeline, _, text in sorted(set(found)):
                reference_time = codec.parse_time(text)
                pipeline = pipeline or (producers[0] if producers else "")
                key = incident_key(PRODUCT_LATE, pipeline, "", product.slug, reference_time)
                if key in self.late_known:
                    continue
                self.late_known[key] = reference_time
                if await self._read(records.complete, product.slug, text) or await self._read(
                        records.ever_opened, key):
                    continue
                await self._write(OpenIncident(
                    PRODUCT_LATE, now,
                    f"{product.slug} for {text} not complete {product.expected_after} after its reference time",
                    pipeline=pipeline, subject=product.slug, reference_time=reference_time,
                    unless_complete=True, once=True,
                ))

    async def _database_outage(self, nursery: trio.Nursery, config: Config) -> None:
        if self.outage is None and not self.health.available and self.health.outage_seconds() > DATABASE_GRACE:
            opened_at = self.clock() - self.health.outage_seconds()
            self.outage = _Outage(opened_at, self.health.cause)
            log.warning("the database has been away for %.0f s: telling [alerts] default_to",
                        self.health.outage_seconds())
            notice = _outage_notice(self.outage, self.health.name)
            for destination in _destinations(config, notice.incident):
                nursery.start_soon(partial(self._deliver, Message(destination, (notice,)), config, outage=True))
        elif self.outage is not None and self.health.available:
            outage, self.outage = self.outage, None
            now = self.clock()
            await self._write(
                OpenIncident(DATABASE_DOWN, outage.opened_at, _outage_summary(self.health.name, outage.cause),
                             delivered_to=tuple(sorted(outage.delivered))),
                ResolveIncidents((DATABASE_DOWN,), now,
                                 f"the database answers again after {now - outage.opened_at:.0f} s"),
            )


def _destinations(config: Config, incident: Incident) -> list[str]:
    return routing.destinations(config, incident.kind, incident.pipeline, incident.subject)


def _outage_summary(name: str, cause: str) -> str:
    return f"database {name} unavailable: {cause}"


def _outage_notice(outage: _Outage, name: str) -> Notice:
    """The database_down incident as it will be written once it is back
    (same kind, key and opening moment: the same dedup_key)."""
    incident = Incident(
        id=0, kind=DATABASE_DOWN, pipeline="", step="", subject="", reference_time="", run_id=None, job_id=None,
        summary=_outage_summary(name, outage.cause), opened_at=outage.opened_at, resolved_at=None, resolution="",
        acked_at=None, acked_by="", ack_reason="", reminded_at=outage.opened_at,
    )
    return Notice(0, "trigger", outage.opened_at, incident)


async def _send(config: Config, message: Message, stderr: dict[int, str], host: str) -> None:
    """Render and send ``message`` in a worker thread; SendFailed when it
    is not accepted within the timeout."""
    key, channel = routing.split(message.destination)
    stakeholder = config.stakeholders.get(key)
    alerts = config.alerts
    if stakeholder is None:
        raise SendFailed(f"stakeholder {key} is no longer configured")
    calls: list[Callable[[], None]] = []
    if channel == routing.MAIL:
        if not alerts.smtp or not stakeholder.email:
            raise SendFailed(f"{key} has no e-mail address or [alerts] smtp is not set")
        mail = render.mail(message.notices, stderr, alerts.sender, stakeholder.email, host)
        calls.append(partial(send_mail, alerts, mail))
    elif stakeholder.routing_key:
        # the Events API v2 takes one event per request
        calls += [partial(post_json, stakeholder.webhook,
                          render.pagerduty_event(n, stderr, host, stakeholder.routing_key), alerts.timeout)
                  for n in message.notices]
    else:
        body = render.webhook(message.notices, stderr, host)
        calls.append(partial(post_json, stakeholder.webhook, body, alerts.timeout))
    for call in calls:
        await _in_thread(call, alerts)


async def _in_thread(call: Callable[[], None], alerts: AlertsConfig) -> None:
    # the socket timeout bounds each operation; this bounds the whole
    # conversation (a server that answers a byte at a time), and abandons
    # the thread, which ends at its own timeout
    with trio.move_on_after(alerts.timeout * 4) as scope:
        await trio.to_thread.run_sync(call, abandon_on_cancel=True)
    if scope.cancelled_caught:
        raise SendFailed(f"no answer within {alerts.timeout * 4:g} s")


def takeover(now: float, summary: str) -> OpenIncident:
    """The incident of a standby that took over the database's lease
    (``run``'s ``took_over``; docs/alerts.md, "Kinds"): its subject is this
    host, and it stays open until an operator acknowledges it."""
    return OpenIncident(TAKEOVER, now, summary, subject=socket.gethostname())
