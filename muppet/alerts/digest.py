"""When a message goes out, and with what: sans-I/O, no clock of its own
(docs/alerts.md, "Incidents, not noise").

A storm is gathered: each destination (a stakeholder's mail, or its
webhook) gets at most one message per ``digest_seconds``, listing every
notice that waits for it. A message goes out ``digest_seconds`` after the
oldest notice it holds was written, and never sooner than ``digest_seconds``
after the destination's previous message, so that 200 failures within a
minute make one mail per stakeholder with ``digest_seconds = 60``. A send
that fails is tried again after a backoff that doubles from ``retry_first``
up to ``retry_max`` seconds; meanwhile new notices join it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from .records import Notice


@attrs.frozen
class Message:
    """One message to ``destination``: the notices it holds, oldest first."""

    destination: str
    notices: tuple[Notice, ...]


class Digest:
    """The schedule of every destination: when it last had a message, its
    failed tries, and which destinations have a send under way."""

    def __init__(
        self,
        digest_seconds: float,
        last_sent: Mapping[str, float] | None = None,
        *,
        retry_first: float = 1.0,
        retry_max: float = 300.0,
    ) -> None:
        self.digest_seconds = digest_seconds
        self.last_sent: dict[str, float] = dict(last_sent or {})
        self.retry_first = retry_first
        self.retry_max = retry_max
        #: destination -> (failures in a row, not before)
        self.failing: dict[str, tuple[int, float]] = {}
        self.in_flight: set[str] = set()

    def plan(self, pending: Iterable[tuple[Notice, Iterable[str]]], now: float) -> tuple[list[Message], float | None]:
        """The messages due at ``now`` (each destination's then counts as
        under way), and when the next one falls due (None: nothing waits).
        ``pending``: each notice with the destinations that should have it."""
        waiting: dict[str, list[Notice]] = {}
        for notice, destinations in pending:
            for destination in destinations:
                if destination not in notice.sent_to:
                    waiting.setdefault(destination, []).append(notice)
        due: list[Message] = []
        wake: float | None = None
        for destination, notices in sorted(waiting.items()):
            if destination in self.in_flight:
                continue
            oldest = min(notice.at for notice in notices)
            at = max(self.last_sent.get(destination, oldest), oldest) + self.digest_seconds
            at = max(at, self.failing.get(destination, (0, 0.0))[1])
            if at <= now:
                self.in_flight.add(destination)
                due.append(Message(destination, tuple(sorted(notices, key=lambda n: n.id))))
            else:
                wake = at if wake is None else min(wake, at)
        return due, wake

    def sent(self, destination: str, now: float) -> None:
        self.in_flight.discard(destination)
        self.failing.pop(destination, None)
        self.last_sent[destination] = now

    def failed(self, destination: str, now: float) -> float:
        """A send failed: when the destination is tried again."""
        self.in_flight.discard(destination)
        failures = self.failing.get(destination, (0, 0.0))[0] + 1
        at: float = now + min(self.retry_first * 2.0 ** (failures - 1), self.retry_max)
        self.failing[destination] = (failures, at)
        return at
