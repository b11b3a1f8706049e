"""Talking to a batch system without blocking the loop: running its commands
(:func:`run_command`), the one queue listing per interval that every waiting
job shares (:class:`BatchPoller`), and the wait between submit attempts
(:func:`backoff`). The backend (``batch.py``) drives them.
"""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Awaitable, Callable, Iterable

import attrs
import trio

from .batch_results import QueueEntry, Unparseable, clean_message

__all__ = ["BatchPoller", "CommandResult", "PollFn", "backoff", "run_command"]

# the name these log lines had before the poller left batch.py: operators
# filter on it
log = logging.getLogger("muppet.executor.batch")


# --- running commands ---------------------------------------------------------------


@attrs.frozen
class CommandResult:
    """How one batch command went: its exit status and output, decoded."""

    argv: tuple[str, ...]
    returncode: int | None  # None: timed out or could not start
    stdout: str
    stderr: str
    #: it was stopped after its timeout: what it did meanwhile is unknown
    timed_out: bool = False

    @property
    def text(self) -> str:
        return (self.stderr + "\n" + self.stdout).strip()


# A timeout parameter rather than the caller's cancel scope (what ASYNC109
# asks for): a command that hangs is an answer of the batch system, like a
# non-zero exit, and comes back as a result the parsers classify (transient),
# where a cancel scope would only tell the caller that it was cancelled.
async def run_command(argv: Iterable[str], *, timeout: float) -> CommandResult:  # noqa: ASYNC109
    """Run a batch command without blocking the loop; never raises for the
    command's own failure (missing program, non-zero exit, timeout): that is
    in the result. Cancellation kills the command and propagates."""
    argv = tuple(argv)
    try:
        with trio.move_on_after(timeout) as scope:
            done = await trio.run_process(
                argv,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
    except OSError as exc:
        return CommandResult(argv, None, "", f"cannot run {argv[0]}: {exc}")
    if scope.cancelled_caught:
        return CommandResult(argv, None, "", f"{argv[0]} timed out after {timeout:g} s", timed_out=True)
    return CommandResult(
        argv,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


# --- the batched poller ------------------------------------------------------------

#: lists the queue once: the listing, or why there is none (the parser's
#: Unparseable, or the failed command)
PollFn = Callable[[], Awaitable[dict[str, QueueEntry] | Unparseable | CommandResult]]


class BatchPoller:
    """One queue listing per interval, shared by every job that waits.

    A waiter calls ``next_listing()`` and gets the first successful listing
    that started after its call. Whoever waits first runs the command (no
    background task: a backend has no nursery of its own, and nothing polls
    while nobody waits); the others wait for its result. If that waiter is
    cancelled mid-poll, another takes over. A failed or unparseable listing
    is logged (once per outage) and retried next interval; waiters keep
    waiting, since the jobs are wherever they were.
    """

    def __init__(self, name: str, poll: PollFn, interval: float) -> None:
        self.name = name
        self._poll = poll
        self.interval = interval
        self._listing: dict[str, QueueEntry] = {}
        #: number of successful listings so far, and when the last one started
        self.generation = 0
        self._listed_at = -math.inf
        #: when the last attempt started, successful or not (for the interval)
        self._started_at = -math.inf
        self._polling = False
        self._done = trio.Event()
        self._poke = trio.Event()
        self.polls = 0
        self.failures = 0
        self._outage = False

    def poke(self) -> None:
        """List now rather than at the end of the interval (after a submit or a
        kill, so that fast jobs are seen fast)."""
        self._poke.set()

    async def next_listing(self) -> dict[str, QueueEntry]:
        asked_at = trio.current_time()
        while True:
            if self._listed_at >= asked_at:
                return self._listing
            if self._polling:
                done = self._done
                await done.wait()
                continue
            self._polling = True
            try:
                await self._poll_once()
            finally:
                self._polling = False
                done, self._done = self._done, trio.Event()
                done.set()

    async def _poll_once(self) -> None:
        # keep one interval between the starts of two listings, unless poked
        wait = self._started_at + self.interval - trio.current_time()
        if wait > 0 and not self._poke.is_set():
            with trio.move_on_after(wait):
                await self._poke.wait()
        self._poke = trio.Event()
        started = trio.current_time()
        listing = await self._poll()
        self.polls += 1
        self._started_at = started
        if isinstance(listing, dict):
            if self._outage:
                log.warning("%s: the queue listing works again", self.name)
                self._outage = False
            self._listing = listing
            self._listed_at = started
            self.generation += 1
        else:
            self.failures += 1
            if not self._outage:
                log.warning("%s: cannot list the queue (will retry): %s", self.name, _describe(listing))
                self._outage = True


def _describe(listing: object) -> str:
    if isinstance(listing, CommandResult):
        return f"{' '.join(listing.argv[:2])} -> {listing.returncode}: {clean_message(listing.text)}"
    return str(listing)


# --- retry timing -------------------------------------------------------------------


def backoff(attempt: int, *, first: float = 1.0, factor: float = 2.0, cap: float = 60.0) -> float:
    """Seconds to wait before submit attempt ``attempt + 1`` (``attempt`` >= 1)."""
    return min(cap, first * factor ** (attempt - 1))
