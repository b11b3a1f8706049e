"""Times and compact JSON as the API and the event log write them (muppet/codec.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from muppet import codec


def test_timestamps_keep_milliseconds_and_reference_times_whole_seconds():
    moment = datetime(2026, 12, 4, 19, 32, 39, 364_512, tzinfo=UTC).timestamp()
    assert codec.format_time(moment) == "2026-12-04T19:32:39.364Z"
    # asked again (a job's next event carries the same times): the same text
    assert codec.format_time(moment) == "2026-12-04T19:32:39.364Z"
    assert codec.format_time(int(moment)) == codec.format_time(float(int(moment))) == "2026-12-04T19:32:39.000Z"
    oslo = timezone(timedelta(hours=1))
    assert codec.format_time(datetime(2026, 12, 4, 6, 0, 30, 500_000, tzinfo=oslo)) == "2026-12-04T05:00:30Z"
    assert codec.format_time(None) is None


@pytest.mark.parametrize("value", [
    {"a": [1, 2.5, None, True], "b": {"c": "d"}},
    {"name": "Bjørn ✓", "n": -0.0},
    [],
])
def test_compact_json_is_what_json_dumps_writes(value):
    assert codec.compact_json(value) == json.dumps(value, separators=(",", ":"))
    assert codec.compact_json_text(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))
