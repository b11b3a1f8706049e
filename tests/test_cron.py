import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import trio

from muppet import cron
from muppet.model import Pipeline, Step

UTC = UTC
OSLO = ZoneInfo("Europe/Oslo")


def timed(*exprs: str, tz: str = "UTC") -> Pipeline:
    return Pipeline(name="p", owner="ops", steps={"a": Step("a", "true")}, cron=exprs, timezone=tz)


def firings(pipeline: Pipeline, start: datetime, count: int) -> list[datetime]:
    out, moment = [], start
    for _ in range(count):
        moment = cron.next_firing(pipeline, moment)
        out.append(moment)
    return out


def local(moments):
    return [m.astimezone(OSLO).strftime("%m-%d %H:%M%z") for m in moments]


def test_next_firing_is_strictly_after_and_in_utc():
    p = timed("15 */6 * * *")
    start = datetime(2026, 11, 28, 6, 15, tzinfo=UTC)
    assert firings(p, start, 3) == [
        datetime(2026, 11, 28, 12, 15, tzinfo=UTC),
        datetime(2026, 11, 28, 18, 15, tzinfo=UTC),
        datetime(2026, 11, 29, 0, 15, tzinfo=UTC),
    ]


def test_several_expressions_merge():
    p = timed("0 6 * * *", "30 5 * * *")
    got = firings(p, datetime(2026, 11, 28, tzinfo=UTC), 3)
    assert [m.strftime("%d %H:%M") for m in got] == ["28 05:30", "28 06:00", "29 05:30"]


def test_time_zone_is_the_pipelines():
    p = timed("0 6 * * *", tz="Europe/Oslo")
    [winter] = firings(p, datetime(2026, 11, 28, tzinfo=UTC), 1)
    [summer] = firings(p, datetime(2026, 6, 1, tzinfo=UTC), 1)
    assert winter == datetime(2026, 11, 28, 5, tzinfo=UTC)
    assert summer == datetime(2026, 6, 1, 4, tzinfo=UTC)


def test_daily_job_fires_once_when_clocks_go_back():
    # 2026-10-25 03:00 CEST becomes 02:00 CET: 02:30 happens twice
    p = timed("30 2 * * *", tz="Europe/Oslo")
    got = firings(p, datetime(2026, 10, 24, 12, tzinfo=UTC), 3)
    assert local(got) == ["10-25 02:30+0200", "10-26 02:30+0100", "10-27 02:30+0100"]


def test_daily_job_in_the_skipped_hour_fires_after_the_gap():
    # 2026-03-29 02:00 CET becomes 03:00 CEST: 02:30 does not exist
    p = timed("30 2 * * *", tz="Europe/Oslo")
    got = firings(p, datetime(2026, 3, 28, 12, tzinfo=UTC), 2)
    assert local(got) == ["03-29 03:00+0200", "03-30 02:30+0200"]


def test_wildcard_hours_follow_absolute_time_through_the_change():
    p = timed("30 * * * *", tz="Europe/Oslo")
    got = firings(p, datetime(2026, 10, 24, 23, 0, tzinfo=UTC), 4)
    assert [b - a for a, b in itertools.pairwise(got)] == [timedelta(hours=1)] * 3
    assert local(got) == ["10-25 01:30+0200", "10-25 02:30+0200", "10-25 02:30+0100", "10-25 03:30+0100"]


def test_latest_firing_in_a_window():
    p = timed("15 */6 * * *")
    after = datetime(2026, 11, 20, 0, 15, tzinfo=UTC)
    until = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
    assert cron.latest_firing(p, after, until) == datetime(2026, 11, 28, 12, 15, tzinfo=UTC)
    assert cron.latest_firing(p, until, until + timedelta(hours=1)) is None
    exact = datetime(2026, 11, 28, 12, 15, tzinfo=UTC)
    assert cron.latest_firing(p, after, exact) == exact


async def test_task_catches_up_once_then_fires_on_time(autojump_clock):
    start = datetime(2026, 11, 28, 13, 0, tzinfo=UTC).timestamp()

    def clock() -> float:
        return start + trio.current_time()

    p = timed("15 */6 * * *")
    send, receive = trio.open_memory_channel(100)
    # the daemon was down from 2026-11-26 (last cron run) until now: many
    # missed firings, one catch-up run
    last = {"p": datetime(2026, 11, 26, 0, 15, tzinfo=UTC)}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: cron.run({"p": p}, send, last_fired=last, clock=clock))
        first = await receive.receive()
        assert first.reference_time == datetime(2026, 11, 28, 12, 15, tzinfo=UTC)
        assert first.cause == "cron"
        second = await receive.receive()
        assert second.reference_time == datetime(2026, 11, 28, 18, 15, tzinfo=UTC)
        assert clock() >= second.reference_time.timestamp()
        nursery.cancel_scope.cancel()


async def test_task_does_not_catch_up_a_pipeline_never_fired(autojump_clock):
    start = datetime(2026, 11, 28, 13, 0, tzinfo=UTC).timestamp()
    p = timed("15 */6 * * *")
    send, receive = trio.open_memory_channel(100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: cron.run({"p": p}, send, last_fired={}, clock=lambda: start + trio.current_time())
        )
        first = await receive.receive()
        assert first.reference_time == datetime(2026, 11, 28, 18, 15, tzinfo=UTC)
        nursery.cancel_scope.cancel()


def test_the_firing_cache_answers_as_croniter_at_every_moment(monkeypatch):
    """summary.FiringCache keeps an answer until its first firing passes:
    walked minute by minute across firings, a DST change, a clock set back
    and a changed expression, it answers as computing afresh does."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from muppet.summary import FiringCache

    pipelines = [timed("*/7 * * * *"), timed("30 2 * * *", tz="Europe/Oslo"), timed("0 */6 * * *", "15 1 * * *")]
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # the day before Oslo's clocks go back

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4 * 24 * 60), st.integers(1, 3)), max_size=40))
    def check(asks: list[tuple[int, int, int]]) -> None:
        cache = FiringCache()
        for which, minutes, count in asks:
            pipeline, now = pipelines[which], start + timedelta(minutes=minutes, seconds=minutes % 7)
            assert cache.next_firings(pipeline, now, count) == firings(pipeline, now, count)

    check()
    # minute by minute, one pipeline: each answer right, computed once per firing passed
    cache, pipeline = FiringCache(), pipelines[0]
    expected = {minute: firings(pipeline, start + timedelta(minutes=minute, seconds=30), 1) for minute in range(180)}
    computed = []
    original = cron.next_firing
    monkeypatch.setattr(cron, "next_firing", lambda p, after: computed.append(after) or original(p, after))
    for minute in range(180):
        assert cache.next_firings(pipeline, start + timedelta(minutes=minute, seconds=30)) == expected[minute]
    assert len(computed) == len({tuple(f) for f in expected.values()})  # one per distinct answer
    assert cache.next_firings(timed(), start) == []
