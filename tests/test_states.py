"""The one table of job and run moves (muppet/scheduler/states.py), and
docs/states.md, which must say the same."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from muppet.model import Job, JobState, Pipeline, Run, RunState, Step
from muppet.scheduler import states
from muppet.scheduler.core import Notice, Scheduler
from muppet.scheduler.states import IllegalTransition, move_job, move_run

DOC = Path(__file__).resolve().parent.parent / "docs" / "states.md"


def _table(heading: str) -> dict[str, tuple[str, frozenset[str]]]:
    """The rows of the table under ``heading``: state -> (meaning, moves)."""
    text = DOC.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        moves = frozenset(re.findall(r"`(\w+)`", cells[2]))
        rows[cells[0].strip("`")] = (cells[1], moves)
    return rows


def test_the_docs_show_the_job_table():
    rows = _table("Job states")
    assert set(rows) == {s.value for s in JobState}
    for state, moves in states.JOB_TRANSITIONS.items():
        meaning, documented = rows[state.value]
        assert documented == {s.value for s in moves}, f"docs/states.md: moves from {state.value}"
        assert meaning == states.JOB_STATE_MEANINGS[state], f"docs/states.md: meaning of {state.value}"


def test_the_docs_show_the_run_table():
    rows = _table("Run states")
    assert set(rows) == {s.value for s in RunState}
    for state, moves in states.RUN_TRANSITIONS.items():
        meaning, documented = rows[state.value]
        assert documented == {s.value for s in moves}, f"docs/states.md: moves from {state.value}"
        assert meaning == states.RUN_STATE_MEANINGS[state], f"docs/states.md: meaning of {state.value}"


def test_the_docs_list_the_schedulers_reasons():
    text = DOC.read_text()
    assert f"`{states.KILLED_BY_OPERATOR}`" in text
    placeholder = Job(1, 1, "PIPELINE", "STEP", 0, 1, "local")
    assert f"`{states.no_longer_configured(placeholder)}`" in text
    # the doc shows the job, step and index as N, STEP and I
    shown = states.upstream_did_not_succeed(Job(999, 1, "p", "STEP", 888, 1, "local"))
    assert "`" + shown.replace("999", "N").replace("888", "I") + "`" in text


JOB = Job(1, 1, "p", "a", 0, 1, "local")


@pytest.mark.parametrize("start", list(JobState))
def test_every_job_move_outside_the_table_is_refused(start):
    job = move_job(JOB, start) if start is JobState.WAITING else Job(1, 1, "p", "a", 0, 1, "local", state=start)
    for target in JobState:
        if target is start or target in states.JOB_TRANSITIONS[start]:
            assert move_job(job, target, reason="x") == Job(1, 1, "p", "a", 0, 1, "local", state=target, reason="x")
        else:
            with pytest.raises(IllegalTransition, match=f"from {start.value} to {target.value}"):
                move_job(job, target)


def test_run_moves():
    run = Run(1, "p", datetime(2026, 12, 1, tzinfo=UTC))
    ended = move_run(run, RunState.FAILED, ended_at=5.0)
    assert ended.state is RunState.FAILED and ended.ended_at == 5.0
    assert move_run(ended, RunState.RUNNING).state is RunState.RUNNING
    with pytest.raises(IllegalTransition, match=r"run 1 .* from succeeded to failed"):
        move_run(move_run(run, RunState.SUCCEEDED), RunState.FAILED)


def _core(strict: bool) -> Scheduler:
    pipeline = Pipeline("p", "ops", {"a": Step("a", "true")})
    return Scheduler({"p": pipeline}, {}, strict=strict)


def test_a_strict_core_raises_on_an_illegal_move():
    ended = Job(1, 1, "p", "a", 0, 1, "local", state=JobState.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        _core(strict=True)._move(ended, JobState.RUNNING, [])


def test_the_daemons_core_refuses_an_illegal_move_and_says_so():
    core = _core(strict=False)
    ended = Job(1, 1, "p", "a", 0, 1, "local", state=JobState.SUCCEEDED)
    changes: list = []
    core._move(ended, JobState.RUNNING, changes)
    assert changes == [] and 1 not in core.pending_jobs
    notices = [e for e in core.handle([], 1.0) if isinstance(e, Notice)]
    assert [n.text for n in notices] == ["refused: job 1 (p.a[0]) cannot move from succeeded to running"]
    assert not [e for e in core.handle([], 2.0) if isinstance(e, Notice)]  # said once
