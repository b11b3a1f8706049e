"""Letting a caller's exception out of a helper's nursery as itself.

A context manager that runs its body in a Trio nursery with a background
task (a websocket reader, a connection keeper, libtorrent's alert loop)
gets back whatever the body raised wrapped in an ExceptionGroup: trio's
nurseries are strict (trio docs, "Designing for multiple errors"). The
caller wrote ``except TorrentError``, not ``except* TorrentError``, and the
background task is written never to raise, so the group holds the caller's
own exception alone. :func:`unwrap_group` takes it out::

    @asynccontextmanager
    async def open_thing() -> AsyncIterator[Thing]:
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(background)
                yield thing
                nursery.cancel_scope.cancel()

A group of several exceptions is a real double failure and comes out as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["unwrap_group"]


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise an ExceptionGroup (or BaseExceptionGroup) that holds exactly
    one exception as that exception, with its own traceback; leave every
    other exception, and a group of several, alone.

    Only the outer group is unwrapped: a group inside it is the inner
    exception, and comes out as a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        inner = group.exceptions[0]
        # Raising it here would chain the group to it as its context (and
        # `raise ... from None` would wipe its own cause): keep the links it
        # had, so that it reads as if no nursery had been in the way.
        cause, context, suppress = inner.__cause__, inner.__context__, inner.__suppress_context__
        try:
            raise inner
        finally:
            inner.__cause__, inner.__context__, inner.__suppress_context__ = cause, context, suppress
