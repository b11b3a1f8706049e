"""``/healthz``: whether the daemon can do its work now (docs/operations.md,
"Health check").

Healthy means all of:

* the database answers: no outage is open in the daemon's shared
  ``DatabaseHealth`` (a reader or the writer ran into one) and a trivial
  statement on the web server's own connection answers;
* the scheduler answers: a question with nothing to look up
  (``WhyWaiting(())``) comes back, which it answers from its loop at once,
  so a stuck scheduler shows;
* every long-lived task of the daemon's nursery is still running (a task
  that returned would leave the daemon up but deaf to what it did).

The judgement is a pure function of the checks' outcomes (``judge``); the
probes that make them are in ``muppet/web/app.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

#: how long each probe may take before it counts as failed, in seconds: far
#: above a healthy answer (milliseconds), below a prober's usual timeout
PROBE_TIMEOUT = 2.0


@attrs.frozen
class Check:
    """One probe's outcome; ``detail`` says what was found, in words."""

    name: str
    ok: bool
    detail: str


def judge(checks: Iterable[Check]) -> tuple[int, dict[str, Any]]:
    """The HTTP status (200, or 503 Service Unavailable: RFC 9110, 15.6.4,
    "the server is currently unable to handle the request") and the JSON
    body: ``status``, every check, and ``reasons``, one line per failure."""
    found = list(checks)
    failed = [c for c in found if not c.ok]
    body = {
        "status": "ok" if not failed else "unavailable",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in found},
        "reasons": [f"{c.name}: {c.detail}" for c in failed],
    }
    return (200 if not failed else 503), body


def tasks_check(expected: frozenset[str], running: frozenset[str]) -> Check:
    """Every task seen running once the daemon was up is running still."""
    gone = sorted(expected - running)
    if gone:
        return Check("tasks", False, f"not running: {', '.join(gone)}")
    return Check("tasks", True, f"{len(expected)} running")
