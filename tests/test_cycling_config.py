"""`muppet validate` on cycling pipelines (docs/configuration.md, "Cycling"):
it refuses a bad duration, an offset that does not point back, an unknown step
in ``name[-PT6H]``, ``runahead`` below 1, a ``catchup_limit`` out of 1 to
1440 and a loop within one cycle; it allows a loop through time
(``a[-PT6H]`` on ``a``) and warns, exit 0, about an offset no firing of the
pipeline's cron can meet. Every line names the file, the table and the key
(``FILE: [TABLE] KEY: message``). The real command, as a pipeline author runs
it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

HEAD = """
[stakeholders.ops]
name = "Operations"

[pipeline]
name = "cycling"
owner = "ops"
cron = ["0 0,6,12,18 * * *"]
timezone = "Europe/Oslo"
"""


def pipeline_file(tmp_path: Path, head: str = "", steps: str = '[steps.a]\ncommand = "true"\n') -> Path:
    """A pipeline file of HEAD plus ``head`` (more [pipeline] keys) and ``steps``."""
    path = tmp_path / "cycling.toml"
    path.write_text(textwrap.dedent(HEAD) + textwrap.dedent(head) + "\n" + textwrap.dedent(steps))
    return path


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "muppet.cli", "validate", *map(str, paths)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def refused(path: Path) -> list[str]:
    """The lines `muppet validate` prints for ``path``, which it must refuse
    (exit 1, nothing on stdout), each starting with the file's name."""
    done = validate(path)
    assert (done.returncode, done.stdout) == (1, ""), (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith(f"{path}: [") for line in lines), lines
    return lines


def case(what: str, head: str, steps: str, expected: str, **marks: Any) -> Any:
    """What is wrong, the [pipeline] keys added, the steps, and the line
    `muppet validate` prints after "FILE: "."""
    return pytest.param(head, steps, expected, id=what, **marks)


REFUSED = [
    case(
        "a bad duration in not_before",
        "",
        '[steps.a]\ncommand = "true"\nnot_before = "20 minutes"\n',
        '[steps.a] not_before: must be an ISO 8601 duration such as "PT6H", "PT3H20M" or "P1D", '
        "got '20 minutes'",
    ),
    case(
        "a bad duration in expire_after",
        'expire_after = "P"\n',
        '[steps.a]\ncommand = "true"\n',
        '[pipeline] expire_after: must be an ISO 8601 duration such as "PT6H", "PT3H20M" or "P1D", got \'P\'',
    ),
    case(
        "a duration of no element",
        'expire_after = "PT"\n',
        '[steps.a]\ncommand = "true"\n',
        '[pipeline] expire_after: must be an ISO 8601 duration such as "PT6H", "PT3H20M" or "P1D", got \'PT\'',
    ),
    case(
        "a negative late_after (it counts from the reference time)",
        "",
        '[steps.a]\ncommand = "true"\nlate_after = "-PT1H"\n',
        '[steps.a] late_after: must not be negative (it counts from the run\'s reference time), got "-PT1H"',
    ),
    case(
        "a bad duration in an intercycle offset",
        "",
        '[steps.a]\ncommand = "true"\nparents = ["a[-6 hours]"]\n',
        '[steps.a] parents: "a[-6 hours]": the offset must be an ISO 8601 duration such as "PT6H", '
        "\"PT3H20M\" or \"P1D\", got '-6 hours'",
    ),
    case(
        "a positive offset",
        "",
        '[steps.a]\ncommand = "true"\n[steps.b]\ncommand = "true"\nparents = ["a[PT6H]"]\n',
        '[steps.b] parents: "a[PT6H]": the offset must point back in time ("-PT6H")',
    ),
    case(
        "an unknown step in name[-PT6H]",
        "",
        '[steps.forecast]\ncommand = "true"\n[steps.analysis]\ncommand = "true"\nparents = ["forecats[-PT6H]"]\n',
        '[steps.analysis] parents: "forecats[-PT6H]": unknown step "forecats"; did you mean "forecast"? '
        "(steps: forecast, analysis)",
    ),
    case(
        "runahead = 0",
        "runahead = 0\n",
        '[steps.a]\ncommand = "true"\n',
        "[pipeline] runahead: must be an integer >= 1, got 0",
    ),
    case(
        "catchup_limit = 0",
        'catchup = "all"\ncatchup_limit = 0\n',
        '[steps.a]\ncommand = "true"\n',
        "[pipeline] catchup_limit: must be an integer >= 1 and <= 1440, got 0",
    ),
    case(
        "catchup_limit = 1441",
        'catchup = "all"\ncatchup_limit = 1441\n',
        '[steps.a]\ncommand = "true"\n',
        "[pipeline] catchup_limit: must be an integer >= 1 and <= 1440, got 1441",
    ),
    case(
        "a loop within one cycle",
        "",
        '[steps.a]\ncommand = "true"\nparents = ["b"]\n[steps.b]\ncommand = "true"\nparents = ["a"]\n',
        "[steps.a] parents: cycle in the steps' parents: a -> b -> a",
    ),
    case(
        "a step its own parent in the same cycle",
        "",
        '[steps.a]\ncommand = "true"\nparents = ["a"]\n',
        '[steps.a] parents: a step cannot name itself ("a")',
    ),
    case(
        "an initial without its time zone",
        'initial = "2026-03-28T00:00:00"\n',
        '[steps.a]\ncommand = "true"\n',
        '[pipeline] initial: must say its time zone (a Z for UTC), got "2026-03-28T00:00:00"',
    ),
]


@pytest.mark.parametrize(("head", "steps", "expected"), REFUSED)
def test_refused_naming_file_table_and_key(tmp_path, head, steps, expected):
    path = pipeline_file(tmp_path, head, steps)
    assert refused(path) == [f"{path}: {expected}"]


def test_every_problem_of_a_file_at_once(tmp_path):
    """One file with all of them: each is its own line, none hides another."""
    path = pipeline_file(
        tmp_path,
        "runahead = 0\ncatchup_limit = 1441\n",
        """
        [steps.a]
        command = "true"
        parents = ["a[PT6H]", "nosuch[-PT6H]"]
        not_before = "soon"
        [steps.b]
        command = "true"
        parents = ["c"]
        [steps.c]
        command = "true"
        parents = ["b"]
        """,
    )
    lines = refused(path)
    for table, key, words in (
        ("steps.a", "parents", '"a[PT6H]": the offset must point back in time'),
        ("steps.a", "parents", '"nosuch[-PT6H]": unknown step "nosuch"'),
        ("steps.a", "not_before", "must be an ISO 8601 duration"),
        ("steps.b", "parents", "cycle in the steps' parents: b -> c -> b"),
        ("pipeline", "runahead", "must be an integer >= 1, got 0"),
        ("pipeline", "catchup_limit", "got 1441"),
    ):
        prefix = f"{path}: [{table}] {key}: "
        assert any(line.startswith(prefix) and words in line for line in lines), (prefix, words, lines)


def test_a_zero_offset_is_refused_as_the_same_cycle(tmp_path):
    """``b[-PT0S]`` is b of the same cycle: not an earlier cycle, and said so."""
    path = pipeline_file(
        tmp_path, steps='[steps.a]\ncommand = "true"\nparents = ["b[-PT0S]"]\n[steps.b]\ncommand = "true"\n',
    )
    assert refused(path) == [
        f'{path}: [steps.a] parents: "b[-PT0S]": the offset must point back in time '
        '(a zero offset is this cycle\'s b: write "b")'
    ]


def test_a_loop_through_time_is_allowed(tmp_path):
    """``a[-PT6H]`` on ``a`` is no cycle: the parent is in another run; nor is
    a waiting on the previous cycle's b while b waits on a of its own cycle.
    Europe/Oslo at 00, 06, 12 and 18: -PT6H is the previous firing every day,
    so there is no warning either."""
    path = pipeline_file(
        tmp_path,
        'initial = 2026-03-28T00:00:00+01:00\nrunahead = 1\n'
        'catchup = "all"\ncatchup_limit = 1440\nexpire_after = "PT18H"\nlate_after = "P1D"\n',
        """
        [steps.a]
        command = "true"
        parents = ["a[-PT6H]", "b[-PT6H]"]
        not_before = "PT3H20M"
        [steps.b]
        command = "true"
        parents = ["a", "b[-P1D]"]
        expire_after = "P1M"
        """,
    )
    done = validate(path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "1 file OK\n", "")


def test_catchup_limit_bounds_are_accepted(tmp_path):
    for limit in (1, 1440):
        path = pipeline_file(tmp_path, f'catchup = "all"\ncatchup_limit = {limit}\n')
        done = validate(path)
        assert (done.returncode, done.stdout, done.stderr) == (0, "1 file OK\n", ""), limit


def test_an_offset_no_firing_can_meet_is_a_warning(tmp_path):
    """Twice a day, and a parent 6 hours back: cron never makes that run
    (only a run made by hand at that time would do), so every run would wait
    for ever: allowed, but said, and the file passes."""
    path = tmp_path / "twice.toml"
    path.write_text(textwrap.dedent(HEAD).replace("0 0,6,12,18 * * *", "0 0,12 * * *") + textwrap.dedent("""
        [steps.analysis]
        command = "true"
        parents = ["forecast[-PT6H]"]
        [steps.forecast]
        command = "true"
        parents = ["analysis", "forecast[-PT12H]"]
        """))
    done = validate(path)
    expected = (
        f'{path}: [steps.analysis] parents: warning: "forecast[-PT6H]": no firing of the pipeline\'s cron '
        "is PT6H after another, so this parent's run would never be made by cron"
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "1 file OK (1 warning)\n", expected + "\n")


def test_the_daemon_file_names_the_pipeline_file(tmp_path):
    """Validating the daemon file checks its pipelines: the line names the
    pipeline file, not the daemon file."""
    (tmp_path / "pipelines").mkdir()
    pipeline = tmp_path / "pipelines" / "cycling.toml"
    pipeline.write_text(textwrap.dedent(HEAD) + 'runahead = 0\n[steps.a]\ncommand = "true"\n')
    daemon_file = tmp_path / "muppet.toml"
    daemon_file.write_text('[daemon]\npipelines = ["pipelines/*.toml"]\n')
    assert refused_lines(daemon_file) == [f"{pipeline}: [pipeline] runahead: must be an integer >= 1, got 0"]


def refused_lines(path: Path) -> list[str]:
    done = validate(path)
    assert (done.returncode, done.stdout) == (1, ""), (done.returncode, done.stdout, done.stderr)
    return done.stderr.splitlines()
