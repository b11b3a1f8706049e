"""The fault benchmark's short form (bench/faults.py): a run of a few dozen
jobs through `muppet daemon` as its own process, with the daemon killed
three times, PostgreSQL down for a second, or `state_dir` full for a second.
No slot may be lost and no job started twice (docs/operations.md, "Restart,
and what happens on a crash" and "When the database is away"; the MUPPET
design: "a failure of MUPPET's own machinery ... is never a job's failure")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from services import service_missing  # tests/ is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import faults  # bench/faults.py, the benchmark this is a short form of

JOBS = 40


def _verdict(result: faults.Result) -> str:
    return f"{faults.HEADER}\n{result.line()}\n{result.details()}"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kills_lose_and_repeat_nothing_sqlite():
    result = await faults.run_scenario("kill-sqlite", jobs=JOBS, kills=3, seed=1)
    assert result.faults == "3 kills", _verdict(result)
    assert result.ok, _verdict(result)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_postgres_outage_loses_and_repeats_nothing(postgres_server):
    result = await faults.run_scenario("pg-outage", jobs=JOBS, outage=1.0, postgres=postgres_server)
    assert result.ok, _verdict(result)
    assert result.fault_hits, f"the daemon never saw the outage\n{_verdict(result)}"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_full_state_dir_loses_and_repeats_nothing():
    try:
        result = await faults.run_scenario("disk-full", jobs=JOBS, outage=1.0)
    except faults.CannotMount as exc:
        service_missing(str(exc))
    assert result.ok, _verdict(result)
    assert result.fault_hits, f"no start met the full disk\n{_verdict(result)}"
