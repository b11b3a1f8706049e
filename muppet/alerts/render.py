"""What a message says: plain-text mail and the webhook's JSON (docs/alerts.md,
"Mail" and "Webhooks"). Pure functions.

A mail's subject names the pipeline, step and reference time of the first
notice (and how many more it gathers); its body has, per notice, what
happened, the reason, the last lines of the job's stderr (its log tail in
the database) and the ``muppet`` commands that look further.

A webhook's body is one JSON object whose ``text`` a chat's incoming webhook
shows and whose ``events`` are PagerDuty Events API v2 events (``dedup_key``
the incident's id, ``event_action`` ``trigger`` or ``resolve``); a message
of one notice has that event's fields at the top level too, so that the body
can be posted to the Events API as it is. With a ``routing_key`` each event
is posted on its own (``pagerduty_event``): the Events API takes one event
per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from .. import codec
from .kinds import SEVERITY
from .records import Incident, Notice

#: the schema of a webhook's body; a change that breaks a reader changes it
SCHEMA = "muppet.alerts/1"
#: lines of a job's stderr a notice quotes
STDERR_LINES = 20
#: characters of one quoted line
LINE_CHARS = 300
#: PagerDuty's limit on payload.summary (Events API v2)
SUMMARY_CHARS = 1024

_WORDS = {"trigger": "OPENED", "remind": "STILL OPEN", "resolve": "RESOLVED"}


def cause(incident: Incident) -> str:
    """``pipeline.step reference-time`` or what stands for it."""
    where = ".".join(part for part in (incident.pipeline, incident.step) if part)
    parts = [where or incident.subject or "the daemon"]
    if incident.subject and where:
        parts.append(incident.subject)
    if incident.reference_time:
        parts.append(incident.reference_time)
    return " ".join(parts)


def title(notice: Notice) -> str:
    word = {"trigger": "", "remind": "still open: ", "resolve": "resolved: "}[notice.action]
    return f"{word}{notice.incident.kind} {cause(notice.incident)}"


def tail(text: str, lines: int = STDERR_LINES) -> list[str]:
    kept = text.rstrip("\n").splitlines()[-lines:] if text.strip() else []
    return [line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + "..." for line in kept]


def commands(incident: Incident) -> list[str]:
    """The ``muppet`` commands that look further."""
    found = []
    if incident.run_id is not None:
        found.append(f"muppet jobs {incident.run_id}")
    if incident.job_id is not None:
        found.append(f"muppet logs {incident.job_id} --stderr")
    if incident.resolved_at is None:
        found.append(f"muppet ack {incident.id} --reason TEXT")
    found.append(f"muppet alerts {incident.id}" if incident.id else "muppet alerts --open")
    return found


def mail(notices: Sequence[Notice], stderr: Mapping[int, str], sender: str, to: str, host: str) -> EmailMessage:
    """One mail of a digest; ``stderr``: job id -> its stderr tail."""
    first = notices[0]
    subject = f"[MUPPET] {title(first)}: {first.incident.summary}"
    if len(notices) > 1:
        opened = sum(1 for n in notices if n.action == "trigger")
        resolved = sum(1 for n in notices if n.action == "resolve")
        subject = (f"[MUPPET] {len(notices)} incidents ({opened} opened, {resolved} resolved): "
                   f"{title(first)} and more")
    body = [f"MUPPET on {host}: {len(notices)} incident change(s) since the last message.", ""]
    for notice in notices:
        body += _notice_text(notice, stderr)
    message = EmailMessage()
    # one line: a reason may hold line breaks (a database's error message)
    message["Subject"] = " ".join(subject.split())[:250]
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=host or None)
    message.set_content("\n".join(body) + "\n")
    return message


def _notice_text(notice: Notice, stderr: Mapping[int, str]) -> list[str]:
    incident = notice.incident
    lines = [
        f"{_WORDS[notice.action]}: {incident.kind} (incident {incident.id}, {incident.dedup_key})",
        f"  pipeline:       {incident.pipeline or '-'}",
        f"  step:           {incident.step or '-'}",
        f"  reference time: {incident.reference_time or '-'}",
    ]
    if incident.subject:
        lines.append(f"  about:          {incident.subject}")
    lines += [
        f"  reason:         {incident.summary}",
        f"  opened:         {codec.format_time(incident.opened_at)}",
    ]
    if incident.resolved_at is not None:
        lines.append(f"  resolved:       {codec.format_time(incident.resolved_at)} ({incident.resolution})")
    if incident.acked_at is not None:
        lines.append(f"  acknowledged:   by {incident.acked_by}: {incident.ack_reason}")
    quoted = tail(stderr.get(incident.job_id, "")) if incident.job_id is not None and notice.action != "resolve" else []
    if quoted:
        lines.append(f"  last lines of stderr (job {incident.job_id}):")
        lines += [f"    | {line}" for line in quoted]
    lines.append("  look further:")
    lines += [f"    {command}" for command in commands(incident)]
    return [*lines, ""]


def event(notice: Notice, stderr: Mapping[int, str], host: str, routing_key: str = "") -> dict[str, Any]:
    """One notice as a PagerDuty Events API v2 event, MUPPET's fields in
    ``payload.custom_details``."""
    incident = notice.incident
    details: dict[str, Any] = {**incident.to_dict(), "action": notice.action, "commands": commands(incident)}
    if incident.job_id is not None and notice.action != "resolve":
        details["stderr_tail"] = tail(stderr.get(incident.job_id, ""))
    found: dict[str, Any] = {
        "event_action": "resolve" if notice.action == "resolve" else "trigger",
        "dedup_key": incident.dedup_key,
        "client": "MUPPET",
        "payload": {
            "summary": f"{title(notice)}: {incident.summary}"[:SUMMARY_CHARS],
            "source": host,
            "severity": "info" if notice.action == "resolve" else SEVERITY.get(incident.kind, "error"),
            "timestamp": codec.format_time(notice.at),
            "component": incident.pipeline or incident.subject or "muppet",
            "group": incident.step or incident.subject or "-",
            "class": incident.kind,
            "custom_details": details,
        },
    }
    if routing_key:
        found = {"routing_key": routing_key, **found}
    return found


def webhook(notices: Sequence[Notice], stderr: Mapping[int, str], host: str, routing_key: str = "") -> bytes:
    """The body of one webhook message (docs/alerts.md, "Webhooks")."""
    events = [event(notice, stderr, host, routing_key) for notice in notices]
    lines = [f"MUPPET on {host}: {len(notices)} incident change(s)"] if len(notices) > 1 else []
    lines += [f"{_WORDS[n.action]}: {n.incident.kind} {cause(n.incident)}: {n.incident.summary}" for n in notices]
    body: dict[str, Any] = {"schema": SCHEMA, "text": "\n".join(lines), "events": events}
    if len(events) == 1:
        body = {**events[0], **body}
    return codec.compact_json(body).encode()


def pagerduty_event(notice: Notice, stderr: Mapping[int, str], host: str, routing_key: str) -> bytes:
    """One notice, posted alone to the Events API v2."""
    return codec.compact_json(event(notice, stderr, host, routing_key)).encode()
