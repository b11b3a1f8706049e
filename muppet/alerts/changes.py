"""What the alerts write, as changes for the database task's batches.

The scheduler core puts ``OpenIncident`` and ``ResolveIncidents`` into its
``Persist`` beside the change that caused them (a job failed for good, a run
succeeded), so that an incident and the notice that stakeholders must hear of
it commit in the same transaction as its cause; ``muppet/db/writes.py`` hands
them to ``records.apply``. The alerts task sends the rest (what it delivered,
reminders, the incidents it finds itself) in an ``AlertWrite``, through the
same single writer (docs/architecture.md, "The rules they keep").
"""

from __future__ import annotations

from datetime import datetime

import attrs
import trio


@attrs.frozen
class OpenIncident:
    """Open the incident of ``key`` unless one of that key is open: one
    incident per (kind, pipeline, step, subject, reference time), opened
    once (docs/alerts.md, "Incidents"). Opening writes a ``trigger`` notice.

    ``subject`` is what the incident is about beyond the step: the product
    of a ``product_late``, the executor of an ``executor_down``.
    """

    kind: str
    at: float
    summary: str
    pipeline: str = ""
    step: str = ""
    subject: str = ""
    reference_time: datetime | None = None
    run_id: int | None = None
    job_id: int | None = None
    #: open it only if the product ``subject`` has no complete instance for
    #: ``reference_time`` as this transaction sees it (product_late)
    unless_complete: bool = False
    #: open it only if no incident of this key was ever opened (product_late:
    #: one that arrived late and resolved does not open again)
    once: bool = False
    #: destinations (``STAKEHOLDER:CHANNEL``) that were told already: the
    #: database_down incident is sent while the database is away and written
    #: once it is back
    delivered_to: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return incident_key(self.kind, self.pipeline, self.step, self.subject, self.reference_time)


def incident_key(kind: str, pipeline: str, step: str, subject: str, reference_time: datetime | None) -> str:
    """The text that names one incident's cause (its unique key while open)."""
    moment = "" if reference_time is None else reference_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    return "|".join((kind, pipeline, step, subject, moment))


@attrs.frozen
class ResolveIncidents:
    """Resolve the open incidents of these ``kinds`` that match: the same
    pipeline, subject and reference time, and ``step`` (None: any step).
    Each one resolved writes a ``resolve`` notice; none open, nothing."""

    kinds: tuple[str, ...]
    at: float
    reason: str
    #: None: any pipeline
    pipeline: str | None = ""
    step: str | None = ""
    subject: str = ""
    reference_time: datetime | None = None


@attrs.frozen
class AckIncident:
    """An operator acknowledged an open incident: no reminders from now on
    (``muppet ack``). ``by`` and ``reason`` are recorded with it, and an
    operator event of action "ack"."""

    incident_id: int
    at: float
    by: str
    reason: str


@attrs.frozen
class Delivered:
    """``destination`` (``STAKEHOLDER:mail`` or ``STAKEHOLDER:webhook``) has
    the notices ``notice_ids``: they are never sent there again. ``done``:
    the notices every destination now has, which are no longer pending."""

    destination: str
    notice_ids: tuple[int, ...]
    at: float
    done: tuple[int, ...] = ()


@attrs.frozen
class Remind:
    """A ``remind`` notice of each of these open incidents (nobody
    acknowledged them within [alerts] remind_seconds)."""

    incident_ids: tuple[int, ...]
    at: float
    #: only those last told of before this (a Remind written twice tells once)
    before: float = 0.0


AlertChange = OpenIncident | ResolveIncidents | AckIncident | Delivered | Remind
#: for isinstance: the changes ``records.apply`` writes
ALERT_CHANGES = (OpenIncident, ResolveIncidents, AckIncident, Delivered, Remind)


@attrs.frozen
class AlertWrite:
    """To the database task, from the alerts task and the API: commit
    ``changes`` with the rest of a batch, then send ``True`` on ``reply``."""

    changes: tuple[AlertChange, ...]
    reply: trio.MemorySendChannel[bool] | None = None
