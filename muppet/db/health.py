"""Whether the database answers, as every part of the daemon sees it.

The database task, the API's read stores and its event hub each talk to the
database on connections of their own, and each notices an outage by itself.
They share one ``DatabaseHealth``, so that the daemon's log says once that the
database became unavailable and once that it is back, with the outage's
length, however many readers and writers ran into it (docs/operations.md,
"When the database is away"). Everything that waits for the database to come
back retries through ``until_available``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from .store import DatabaseUnavailable

log = logging.getLogger("muppet.db")

T = TypeVar("T")

#: the first retry after a failure, and the longest wait between two
RETRY_FIRST = 0.1
RETRY_MAX = 2.0


class DatabaseHealth:
    """The database's state as last seen, and its outages so far. Used from
    the Trio thread only (worker threads report through their caller)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        #: the database's name for the log (no password)
        self.name = name
        self.clock = clock
        #: when the current outage began (``clock`` time), None while it answers
        self.down_since: float | None = None
        #: what the first failure of the current outage said
        self.cause = ""
        #: outages so far
        self.outages = 0

    @property
    def available(self) -> bool:
        return self.down_since is None

    def failed(self, error: BaseException) -> None:
        """A call failed for a transient reason: the first one opens an outage."""
        if self.down_since is None:
            self.down_since = self.clock()
            self.cause = str(error)
            self.outages += 1
            log.warning("database unavailable: %s", error)

    def answered(self) -> None:
        """A call succeeded: an open outage ends."""
        if self.down_since is not None:
            length = self.clock() - self.down_since
            self.down_since = None
            log.warning("database %s available again after %.1f s", self.name, length)

    def outage_seconds(self) -> float:
        """How long the current outage has lasted (0 while it answers)."""
        return 0.0 if self.down_since is None else self.clock() - self.down_since


async def until_available(health: DatabaseHealth, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()`` until it does not raise DatabaseUnavailable, waiting
    ``RETRY_FIRST`` seconds after the first failure, doubling up to
    ``RETRY_MAX``; reports each outcome to ``health``. Cancellable while it
    waits."""
    delay = RETRY_FIRST
    while True:
        try:
            result = await call()
        except DatabaseUnavailable as exc:
            health.failed(exc)
            log.debug("database call failed, retrying in %.2f s: %s", delay, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            continue
        health.answered()
        return result
