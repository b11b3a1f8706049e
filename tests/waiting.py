"""Waiting for a condition, with a deadline, instead of sleeping a fixed time.

A test that sleeps and then asserts passes or fails by how fast the machine
is that day; one that waits for the condition it needs passes as soon as the
condition holds, and when it never does, fails saying what did not happen and
how long it waited::

    wait_until(lambda: path.exists(), 30, "the job's status file")
    rows = await wait_until_async(lambda: client.call("jobs.list"), 30, "any job")

The deadline is a safety net against a hang, not a timing assertion: make it
generous, since a loaded machine is slow, and a passing test never waits it out.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

__all__ = ["wait_until", "wait_until_async"]

T = TypeVar("T")

#: seconds between two looks at the condition
INTERVAL = 0.1


def _failure(what: str, timeout: float, last: object, detail: Callable[[], str] | None) -> AssertionError:
    message = f"waited {timeout:g} s for {what}; it did not happen (last seen: {last!r})"
    if detail is not None:
        message += "\n" + detail()
    return AssertionError(message)


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = INTERVAL,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns a true value, and return that value.

    Raises AssertionError naming ``what`` (and, with ``detail``, what it
    returns: a log, say) when ``timeout`` seconds pass first. An exception from
    ``predicate`` goes through at once: that is how a predicate says "this will
    never happen" (a process it waits on has died). Blocks: for synchronous
    tests only.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, value, detail)
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float,  # noqa: ASYNC109 - the deadline is the point: its failure names what did not happen
    what: str,
    *,
    interval: float = INTERVAL,
    detail: Callable[[], str] | None = None,
) -> T:
    """:func:`wait_until` for Trio tests: ``predicate`` may be a plain
    function or a coroutine function (a call to the daemon's API), and the
    waiting between two calls lets other tasks run. A call of ``predicate`` in
    progress at the deadline is cancelled."""
    value: object = None
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            await trio.sleep(interval)
    raise _failure(what, timeout, value, detail)


async def daemon_answers(url: str) -> bool:
    """Does a daemon at ``url`` answer ``daemon.status``? (A predicate for
    ``wait_until_async``: any failure to connect or call is "not yet".)"""
    from muppet.api.client import connect

    try:
        async with connect(url) as client:
            await client.call("daemon.status")
            return True
    except Exception:
        return False
