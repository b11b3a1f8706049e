"""muppet.unwrap_group: a caller's exception out of a helper's nursery as itself."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from muppet.unwrap_group import unwrap_group


class Mine(Exception):
    pass


@asynccontextmanager
async def helper() -> AsyncIterator[None]:
    """What client.connect, follow.open_link and open_engine look like."""
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            yield
            nursery.cancel_scope.cancel()


async def test_the_body_error_comes_out_as_itself_with_its_links() -> None:
    with pytest.raises(Mine) as caught:
        async with helper():
            try:
                raise KeyError("why")
            except KeyError as error:
                raise Mine("mine") from error
    assert isinstance(caught.value.__cause__, KeyError)
    assert isinstance(caught.value.__context__, KeyError)  # not the group
    text = "".join(traceback.format_exception(caught.value))
    assert "ExceptionGroup" not in text
    assert "raise Mine" in text  # its own traceback, from where it was raised


async def test_an_error_without_a_cause_gets_no_context_from_the_group() -> None:
    with pytest.raises(Mine) as caught:
        async with helper():
            raise Mine("plain")
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


async def test_a_normal_exit_and_a_cancellation_pass_through() -> None:
    async with helper():
        pass
    with trio.move_on_after(0.01) as scope:
        async with helper():
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_a_group_of_several_stays_a_group() -> None:
    async def fail() -> None:
        raise KeyError("background")

    with pytest.raises(ExceptionGroup) as caught:
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail)
                raise Mine("body")
    assert sorted(type(e).__name__ for e in caught.value.exceptions) == ["KeyError", "Mine"]


def test_only_the_outer_group_is_unwrapped() -> None:
    inner = ExceptionGroup("inner", [Mine("a"), Mine("b")])
    with pytest.raises(ExceptionGroup) as caught:
        with unwrap_group():
            raise ExceptionGroup("outer", [inner])
    assert caught.value is inner


def test_plain_exceptions_are_left_alone() -> None:
    with pytest.raises(Mine):
        with unwrap_group():
            raise Mine("plain")
