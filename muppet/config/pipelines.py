"""Pipeline files: one ``[pipeline]`` table and its ``[steps.NAME]`` tables
(docs/configuration.md). Stakeholders defined in the same file are read by
``index.py``; the graph of steps is checked by ``graph.py``.

A step's ``resources`` are checked by ``muppet.resources``, the parser the
batch executors use when they submit. Output patterns and cron expressions
are tried out at a sample reference time, so that a pattern that cannot be
formatted or an expression that never fires is reported here, with its file,
rather than at the first run.
"""

from __future__ import annotations

import difflib
import re
import string as _formatting
import zoneinfo
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from pathlib import PurePosixPath
from typing import Any

from croniter import croniter

from .. import durations
from ..model import Depends, IntercycleParent, Pipeline, RetryPolicy, Step
from ..resources import RESOURCE_KEYS
from ..tomlcheck import Bad, TomlFile, integer, number, show, string, string_list
from . import graph
from .checks import NAME, NAME_RULE, choice
from .checks import name as name_check
from .executors import resource_options

__all__ = ["MAX_JOBS_PER_STEP", "PIPELINE_TABLES", "SAMPLE_REFERENCE_TIME", "output_fields", "pipeline_file"]

#: the tables a pipeline file may hold
PIPELINE_TABLES = ("stakeholders", "pipeline", "steps")

#: one run creates all of its jobs in one transaction; a typo such as
#: ``jobs = 400000`` should not take the daemon down at the first cron firing
MAX_JOBS_PER_STEP = 100_000

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# POSIX cron's five fields, or one of the @-aliases; croniter's optional
# seconds and year fields are refused: reference times are whole minutes.
# An alias is stored as its five fields (croniter's meanings), so that code
# reading the fields (the cron task looks at the hour) sees one shape.
_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: formatting outputs with this shows bad fields and format specs at load time
SAMPLE_REFERENCE_TIME = datetime(2026, 11, 28, 6, 15, tzinfo=UTC)


def _timezone(value: Any) -> str:
    zone = string(value)
    if zone == "UTC":  # works even where the system has no tz database
        return zone
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        hint = difflib.get_close_matches(zone, zoneinfo.available_timezones(), n=1)
        more = f'; did you mean "{hint[0]}"?' if hint else ' (use an IANA name such as "Europe/Oslo")'
        raise Bad(f"unknown time zone {show(zone)}{more}") from None
    return zone


_PIPELINE_KEYS = (
    "name", "owner", "requires", "produces", "cron", "timezone",
    # cycling (docs/configuration.md, "Cycling")
    "initial", "runahead", "catchup", "catchup_limit", "expire_after", "late_after",
)
#: catchup_limit's range: a day of minutely firings at most
CATCHUP_LIMIT_MAX = 1440
_STEP_KEYS = (
    "command",
    "parents",
    "jobs",
    "depends",
    "concurrency",
    "conflicts",
    "env",
    "executor",
    "outputs",
    "retry",
    "resources",
    "product",
    "not_before",
    "expire_after",
    "late_after",
)
#: an intercycle parent: a step's name and an ISO 8601 offset in brackets
_INTERCYCLE = re.compile(r"(?P<step>[^\[\]]+)\[(?P<offset>[^\[\]]*)\]\Z")


def _duration(value: Any) -> str:
    """An ISO 8601 duration that does not point back ("PT3H20M", "P1D")."""
    text = string(value)
    try:
        parsed = durations.parse(text)
    except ValueError as exc:
        raise Bad(str(exc)) from None
    if durations.is_negative(parsed):
        raise Bad(f"must not be negative (it counts from the run's reference time), got {show(text)}")
    return text


def _initial(value: Any) -> datetime:
    """The first reference time: a TOML date-time with its zone, or the
    same as a string."""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Bad(f'must be a time such as "2026-01-01T00:00:00Z", got {show(value)}') from None
    if not isinstance(moment, datetime):
        raise Bad(f'must be a time such as 2026-01-01T00:00:00Z, got {show(value)}')
    if moment.tzinfo is None:
        raise Bad(f"must say its time zone (a Z for UTC), got {show(str(value))}")
    return moment.astimezone(UTC)


def _parents(f: TomlFile, body: Mapping[str, Any], table: str) -> tuple[tuple[str, ...], tuple[IntercycleParent, ...]]:
    """``parents``: steps of the same run, and ``name[-PT6H]`` ones of an
    earlier cycle (each checked on its own)."""
    same: list[str] = []
    earlier: list[IntercycleParent] = []
    for item in f.get(body, table, "parents", string_list(), ()):
        match = _INTERCYCLE.match(item)
        if match is None:
            if "[" in item or "]" in item:
                f.problem(table, "parents", f'{show(item)}: an earlier cycle is written "step[-PT6H]"')
            else:
                same.append(item)
            continue
        step, offset = match["step"].strip(), match["offset"].strip()
        try:
            parsed = durations.parse(offset)
        except ValueError as exc:
            f.problem(table, "parents", f"{show(item)}: the offset {exc}")
            continue
        if durations.is_zero(parsed):
            f.problem(table, "parents", f"{show(item)}: the offset must point back in time "
                      f"(a zero offset is this cycle's {step}: write {show(step)})")
            continue
        if not durations.is_negative(parsed):
            f.problem(table, "parents", f"{show(item)}: the offset must point back in time (\"-{offset.lstrip('+')}\")")
            continue
        earlier.append(IntercycleParent(step, offset))
    return tuple(same), tuple(earlier)


def _cron(timezone_name: str | None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        written = string(value)
        expr = " ".join(written.split())
        if expr.startswith("@") and expr in _CRON_ALIASES:
            expr = _CRON_ALIASES[expr]
        elif expr.startswith("@"):
            raise Bad(f"{show(written)} is not a cron expression: known aliases are {', '.join(_CRON_ALIASES)}")
        if len(expr.split()) != 5:
            raise Bad(
                f"{show(written)} is not a cron expression: it needs 5 fields "
                "(minute hour day-of-month month day-of-week)"
            )
        if not croniter.is_valid(expr):
            raise Bad(f"{show(written)} is not a valid cron expression")
        # Valid syntax can still never fire ("0 0 30 2 *"); the cron task steps
        # both ways, so try both here where the error names the file.
        zone: tzinfo = UTC
        if timezone_name and timezone_name != "UTC":
            zone = zoneinfo.ZoneInfo(timezone_name)
        start = SAMPLE_REFERENCE_TIME.astimezone(zone)
        try:
            croniter(expr, start).get_next(datetime)
            croniter(expr, start).get_prev(datetime)
        except Exception as e:  # croniter's errors have no common public base
            raise Bad(f"{show(written)} never fires ({e})") from None
        return expr

    return check


def _env(f: TomlFile, data: Mapping[str, Any], table: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in f.table(data, table, "env").items():
        where = f"env.{key}"
        if not _ENV_NAME.match(key):
            f.problem(
                table, where, "not a valid environment variable name (letters, digits, '_', not starting with a digit)"
            )
        elif key.startswith("MUPPET_"):
            f.problem(table, where, "MUPPET_* variables are set by MUPPET for each job and cannot be overridden")
        elif not isinstance(value, str):
            f.problem(table, where, f'must be a string, got {show(value)} (quote it: "{value}")')
        else:
            env[key] = value
    return env


def output_fields(pattern: str) -> list[str]:
    """Root names of the format fields ("reference_time" of "{reference_time.year}")."""
    roots = []
    for _, field, spec, _ in _formatting.Formatter().parse(pattern):
        if field is not None:
            roots.append(re.split(r"[.\[]", field, maxsplit=1)[0])
            if spec and "{" in spec:
                roots.extend(output_fields(spec))
    return roots


def _output(pattern: str) -> str:
    """One output pattern, checked by formatting it as a job's would be."""
    try:
        roots = output_fields(pattern)
    except ValueError as e:
        raise Bad(f"{show(pattern)}: bad format string ({e}); write a literal brace as {{{{ or }}}}") from None
    for root in roots:
        if root not in ("reference_time", "index"):
            got = f"{{{root}}}" if root else "{} (a positional field)"
            raise Bad(f"{show(pattern)}: only {{reference_time}} and {{index}} can be used, got {got}")
    try:
        sample = pattern.format(reference_time=SAMPLE_REFERENCE_TIME, index=0)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
        raise Bad(f"{show(pattern)}: cannot be formatted with a reference time and index 0 ({e})") from None
    if sample.startswith("/") or PurePosixPath(pattern).is_absolute():
        raise Bad(f"{show(pattern)}: must be relative (to the job's scratch and to [daemon] output_dir)")
    if ".." in PurePosixPath(sample).parts or ".." in PurePosixPath(pattern).parts:
        raise Bad(f"{show(pattern)}: must not contain '..' (it would leave the scratch and output directories)")
    if sample.strip() in ("", ".") or sample.endswith("/"):
        raise Bad(f"{show(pattern)}: must name a file or directory below the scratch directory")
    return pattern


def _outputs(f: TomlFile, data: Mapping[str, Any], table: str) -> tuple[str, ...]:
    # Each pattern on its own, so that one bad one does not hide the others.
    good = []
    for pattern in f.get(data, table, "outputs", string_list(), ()):
        try:
            good.append(_output(pattern))
        except Bad as bad:
            f.problem(table, "outputs", str(bad))
    return tuple(good)


def _retry(f: TomlFile, data: Mapping[str, Any], table: str) -> RetryPolicy:
    if "retry" not in data:
        return RetryPolicy()
    body = f.table(data, table, "retry")
    f.unknown(body, table, ("tries", "interval", "factor"), "retry.")
    return RetryPolicy(
        tries=f.get(body, table, "tries", integer(1), 1, prefix="retry."),
        interval=f.get(body, table, "interval", number(0), 0.0, prefix="retry."),
        factor=f.get(body, table, "factor", number(1), 1.0, prefix="retry."),
    )


def _step(f: TomlFile, name: str, body: Mapping[str, Any]) -> Step:
    table = f"steps.{name}"
    f.unknown(body, table, _STEP_KEYS)
    resources: dict[str, Any] = {}
    if "resources" in body:
        raw = f.table(body, table, "resources")
        f.unknown(raw, table, RESOURCE_KEYS, "resources.")
        resources = resource_options(f, raw, table, "resources.", RESOURCE_KEYS)
    depends = f.get(body, table, "depends", choice("all", "each"), "all")
    parents, intercycle = _parents(f, body, table)
    return Step(
        name=name,
        command=f.get(body, table, "command", string, "", required=True),
        parents=parents,
        intercycle=intercycle,
        not_before=f.get(body, table, "not_before", _duration, None),
        expire_after=f.get(body, table, "expire_after", _duration, None),
        late_after=f.get(body, table, "late_after", _duration, None),
        jobs=f.get(body, table, "jobs", integer(1, MAX_JOBS_PER_STEP), 1),
        depends=Depends(depends),
        concurrency=f.get(body, table, "concurrency", integer(1), None),
        conflicts=f.get(body, table, "conflicts", string_list(), ()),
        env=_env(f, body, table),
        executor=f.get(body, table, "executor", string, "local"),
        outputs=_outputs(f, body, table),
        retry=_retry(f, body, table),
        resources=resources,
        product=f.get(body, table, "product", name_check("product"), ""),
    )


def _outputs_indexed(f: TomlFile, step: Step) -> None:
    for pattern in step.outputs:
        if "reference_time" not in output_fields(pattern):
            f.warn(
                f"steps.{step.name}",
                "outputs",
                f"{show(pattern)}: without {{reference_time}} every run writes the same path, and each "
                "run's file replaces the one before (the index keeps only the newest)",
            )
    if step.jobs > 1:
        for pattern in step.outputs:
            if "index" not in output_fields(pattern):
                f.problem(
                    f"steps.{step.name}",
                    "outputs",
                    f"{show(pattern)}: with jobs = {step.jobs} every output needs {{index}}, "
                    "or the jobs overwrite each other's files",
                )


def pipeline_file(f: TomlFile, data: Mapping[str, Any], source: str) -> Pipeline:
    """The pipeline of one parsed pipeline file, every problem in ``f``;
    ``source`` is the file's absolute path. Checks that span files (names of
    pipelines, owners, executors, products, output destinations) are the
    loader's."""
    for key, value in data.items():
        if key not in PIPELINE_TABLES:
            if isinstance(value, dict):
                tables = ", ".join(f"[{t}]" for t in PIPELINE_TABLES)
                f.problem(key, "", f"unknown table (a pipeline file has {tables})")
            else:
                f.problem("", key, "unknown key at the top level (pipeline keys go in [pipeline])")
    # Without the table, its missing keys would only repeat the one problem.
    has_head = "pipeline" in data
    if not has_head:
        f.problem("pipeline", "", "missing required table")
    head = f.table(data, "", "pipeline")
    f.unknown(head, "pipeline", _PIPELINE_KEYS)
    name = f.get(head, "pipeline", "name", name_check("pipeline"), "", required=has_head)
    owner = f.get(head, "pipeline", "owner", string, "", required=has_head)
    zone = f.get(head, "pipeline", "timezone", _timezone, None)
    cron = f.get(head, "pipeline", "cron", string_list(), ())
    # Each expression on its own, so that one bad one does not hide the others.
    checked_cron = []
    for expr in cron:
        try:
            checked_cron.append(_cron(zone)(expr))
        except Bad as bad:
            f.problem("pipeline", "cron", str(bad))

    steps: dict[str, Step] = {}
    raw_steps = f.table(data, "", "steps")
    if not raw_steps:
        f.problem("steps", "", "a pipeline needs at least one [steps.NAME] table")
    for step_name, body in raw_steps.items():
        if not NAME.match(step_name):
            f.problem(f"steps.{step_name}", "", f"step name may only contain {NAME_RULE}")
            continue
        if not isinstance(body, dict):
            f.problem("steps", step_name, f"must be a table [steps.{step_name}], got {show(body)}")
            continue
        steps[step_name] = _step(f, step_name, body)
    for step in steps.values():
        graph.check_references(f, step, steps)
        _outputs_indexed(f, step)
    graph.check_cycles(f, steps)
    pipeline = Pipeline(
        name=name,
        owner=owner,
        steps=graph.topological(steps),
        requires=f.get(head, "pipeline", "requires", string_list(), ()),
        produces=f.get(head, "pipeline", "produces", string_list(), ()),
        cron=tuple(checked_cron),
        timezone=zone or "UTC",
        source=source,
        initial=f.get(head, "pipeline", "initial", _initial, None),
        runahead=f.get(head, "pipeline", "runahead", integer(1), None),
        catchup=f.get(head, "pipeline", "catchup", choice("latest", "all", "none"), "latest"),
        catchup_limit=f.get(head, "pipeline", "catchup_limit", integer(1, CATCHUP_LIMIT_MAX), 48),
        expire_after=f.get(head, "pipeline", "expire_after", _duration, None),
        late_after=f.get(head, "pipeline", "late_after", _duration, None),
    )
    _check_offsets(f, pipeline)
    return pipeline


def _check_offsets(f: TomlFile, pipeline: Pipeline) -> None:
    """Warn about an intercycle offset that no cron firing can meet: every
    run would wait on a run that cron never makes (only one made by hand or
    by a backfill at exactly that reference time would do)."""
    if not pipeline.cron or not any(step.intercycle for step in pipeline.steps.values()):
        # nothing to check; and the 200 firings below cost about 15 ms of
        # croniter per pipeline, most of the start-up of a daemon with a few
        # hundred cron pipelines (bench/scale.py)
        return
    from ..cron import next_firing  # the cron task's own firing rules

    firings: list[datetime] = []
    moment = SAMPLE_REFERENCE_TIME
    # 200 firings: 50 days of a six-hourly cron, over half a year of a daily
    # one; a pattern of offsets that no firing meets shows well within that
    for _ in range(200):
        found = next_firing(pipeline, moment)
        if found is None:
            return
        firings.append(found)
        moment = found
    known = set(firings)
    for step in pipeline.steps.values():
        for earlier in step.intercycle:
            back = [durations.shift(firing, earlier.offset, pipeline.timezone) for firing in firings[100:]]
            if not any(moment in known for moment in back):
                f.warn(
                    f"steps.{step.name}",
                    "parents",
                    f"{show(str(earlier))}: no firing of the pipeline's cron is {earlier.offset.lstrip('-')} "
                    "after another, so this parent's run would never be made by cron",
                )


