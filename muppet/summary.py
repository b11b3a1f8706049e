"""What the operator's views count and judge: runs and jobs by state, the
executors' slots, the index's size, the next cron firings, and which
pipelines need attention (docs/console.md).

Two kinds of function live here:

* reads: functions of a Store, each one statement (or one read transaction),
  for the API's ``daemon.status`` and ``pipelines.status`` and for the
  metrics the web server serves. Like every Store call they block: Trio code
  runs them in a worker thread. They count only what the indexes make
  cheap: the jobs of runs that have not ended (through ``runs_state`` and
  ``jobs_run_state``) and the active jobs (through ``jobs_state``), never the
  whole history of jobs, which grows without end;
* judgements: pure functions of what was read, the configuration and
  ``now``, with no clock of their own (so that a test gives the time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from . import codec, cron
from .db.rows import JOB_COLUMNS, RUN_COLUMNS, job_from_row, run_from_row
from .db.store import Store
from .model import Job, JobState, Pipeline, Run, RunState

#: the states of a job that holds an executor slot (docs/states.md, "Job states")
ACTIVE = (JobState.SUBMITTED.value, JobState.RUNNING.value)

#: a cron firing this long past without its run is "missed": the scheduler
#: makes a run within milliseconds of a firing, so a minute is no false alarm
MISSED_GRACE = timedelta(seconds=60)


# --- reads --------------------------------------------------------------------------


def jobs_by_pipeline_and_state(store: Store) -> dict[tuple[str, str], int]:
    """The jobs of the runs that have not ended, counted by (pipeline, state).

    Counted run by run from the index ``jobs_run_state`` (schema migration
    9); the runs' counts are added up by pipeline here. SQLite groups by run
    and state in the index's order and reads the index alone. PostgreSQL,
    whose statistics do not know yet how big a new run is, sorted the
    running runs' jobs for that grouping; counted by state within each run,
    it hashes a few groups instead (a run of 10,000 jobs while its fan-out
    is written: 3-4 ms against 5-6, bench/scale.py's setting)."""
    if store.kind == "postgresql":
        sql = (
            "SELECT runs.pipeline, counted.state, counted.n FROM runs CROSS JOIN LATERAL"
            " (SELECT state, COUNT(*) AS n FROM jobs WHERE jobs.run_id = runs.id GROUP BY state) AS counted"
            " WHERE runs.state = ?"
        )
    else:
        sql = (
            "SELECT runs.pipeline, jobs.state, COUNT(*) FROM runs JOIN jobs ON jobs.run_id = runs.id"
            " WHERE runs.state = ? GROUP BY runs.id, jobs.state"
        )
    rows = store.query(sql, (RunState.RUNNING.value,))
    counts: dict[tuple[str, str], int] = {}
    for pipeline, state, count in rows:
        counts[(pipeline, state)] = counts.get((pipeline, state), 0) + count
    return counts


def runs_by_pipeline_and_state(store: Store) -> dict[tuple[str, str], int]:
    """Every run, counted by (pipeline, state): a pass over the index
    ``runs_pipeline_state`` (schema migration 7), not the table. A few runs
    per pipeline a day still add up: at 200,000 runs of 200 pipelines this
    took 216-279 ms on SQLite without it, 11-25 ms with it (PostgreSQL
    38 ms either way: it reads the table until a vacuum marks its pages
    all-visible)."""
    rows = store.query("SELECT pipeline, state, COUNT(*) FROM runs GROUP BY pipeline, state")
    return {(pipeline, state): count for pipeline, state, count in rows}


def active_by_executor(store: Store) -> dict[str, int]:
    """The submitted and running jobs, counted by executor: the slots in use,
    as the database has them."""
    rows = store.query(
        "SELECT executor, COUNT(*) FROM jobs WHERE state IN (?, ?) GROUP BY executor", ACTIVE,
    )
    return {executor: count for executor, count in rows}


def running_jobs(store: Store, limit: int = 1000) -> list[Job]:
    """The running jobs, longest running first."""
    rows = store.query(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY started_at, id LIMIT ?",
        (JobState.RUNNING.value, int(limit)),
    )
    return [job_from_row(r) for r in rows]


def unfinished_runs(store: Store) -> list[Run]:
    """Every run that has not ended, by id."""
    rows = store.query(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE state = ? ORDER BY id", (RunState.RUNNING.value,),
    )
    return [run_from_row(r) for r in rows]


def _each(pipelines: Iterable[str]) -> tuple[str, list[str]]:
    """``(VALUES (?), (?), ...)``, a table of the pipelines' names (its
    column is ``column1`` in SQLite and PostgreSQL alike), and the names."""
    names = sorted(set(pipelines))
    return "(VALUES " + ", ".join("(?)" for _ in names) + ")", names


def newest_runs(store: Store, pipelines: Iterable[str]) -> dict[str, Run]:
    """Each of ``pipelines``' newest run (the highest id): one look-up in
    the index ``runs_pipeline_id`` per pipeline, whatever the number of runs
    (at 200,000 runs, 1 ms on SQLite and 6 ms on PostgreSQL, where a GROUP
    BY over every run took 13-24 and 29-38 ms)."""
    table, names = _each(pipelines)
    if not names:
        return {}
    rows = store.query(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE id IN (SELECT (SELECT MAX(r.id) FROM runs AS r"
        f" WHERE r.pipeline = p.column1) FROM {table} AS p)", names,
    )
    return {run.pipeline: run for run in map(run_from_row, rows)}


def latest_reference_times(store: Store, pipelines: Iterable[str]) -> dict[str, datetime]:
    """Each of ``pipelines``' latest reference time among its runs (any
    cause): one look-up per pipeline in the index of UNIQUE (pipeline,
    reference_time) (at 200,000 runs, under 2 ms, where a GROUP BY took
    23-56 ms)."""
    table, names = _each(pipelines)
    if not names:
        return {}
    rows = store.query(
        f"SELECT p.column1, (SELECT MAX(r.reference_time) FROM runs AS r WHERE r.pipeline = p.column1)"
        f" FROM {table} AS p", names,
    )
    return {pipeline: codec.parse_time(text) for pipeline, text in rows if text is not None}


def list_runs(
    store: Store,
    *,
    pipeline: str | None = None,
    state: str | None = None,
    begin: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[Run]:
    """Runs, newest (highest id) first, with ``begin <= reference time <
    end``; ``before_id`` pages back. Reference times are stored as ISO 8601
    text of one width, so comparing the text compares the times."""
    conditions: list[tuple[str, Any]] = [
        ("pipeline = ?", pipeline),
        ("state = ?", state),
        ("reference_time >= ?", None if begin is None else codec.format_time(begin)),
        ("reference_time < ?", None if end is None else codec.format_time(end)),
        ("id < ?", before_id),
    ]
    used = [(sql, value) for sql, value in conditions if value is not None]
    where = " WHERE " + " AND ".join(sql for sql, _ in used) if used else ""
    rows = store.query(
        f"SELECT {RUN_COLUMNS} FROM runs{where} ORDER BY id DESC LIMIT ?",
        [*(value for _, value in used), int(limit)],
    )
    return [run_from_row(r) for r in rows]


@attrs.frozen
class IndexSize:
    """How much the index holds."""

    products: int
    instances: int
    complete_instances: int
    #: present (not deleted) data instances, on every backend
    files: int
    #: their sizes added up
    bytes: int


def index_size(store: Store) -> IndexSize:
    """The index's counts, in one read transaction."""

    def work(cursor: Any) -> IndexSize:
        def one(sql: str) -> int:
            cursor.execute(store.sql(sql))
            value = cursor.fetchone()[0]
            return int(value or 0)

        return IndexSize(
            products=one("SELECT COUNT(*) FROM products"),
            instances=one("SELECT COUNT(*) FROM instances"),
            complete_instances=one("SELECT COUNT(*) FROM instances WHERE completed_at IS NOT NULL"),
            files=one("SELECT COUNT(*) FROM data_instances WHERE deleted = 0"),
            bytes=one("SELECT SUM(size) FROM data_instances WHERE deleted = 0"),
        )

    return store.transaction(work, write=False)


def ping(store: Store) -> None:
    """One trivial statement: raises DatabaseUnavailable when the database
    does not answer (for /healthz)."""
    store.query("SELECT 1")


# --- judgements -----------------------------------------------------------------------


class FiringCache:
    """The next cron firings of each (time zone, expressions), kept until the
    first of them passes.

    Firings computed at moment M are the same for every moment in ``[M,
    first firing)``: no firing lies between M and the first one, by
    definition. So a cached answer stays right until its first firing has
    passed (or the clock went back past M), and a reload that changes a
    pipeline's cron or time zone changes the key. Computing them is
    croniter's work, about 0.1 ms per pipeline: ``daemon.status`` asked it of
    200 pipelines on every call (bench/scale.py). Pure: the caller gives the
    moment.
    """

    #: distinct keys kept at most; beyond, the cache starts afresh (reloads
    #: that keep changing expressions would otherwise grow it for ever)
    LIMIT = 10_000

    def __init__(self) -> None:
        self._known: dict[tuple[str, tuple[str, ...]], tuple[datetime, list[datetime]]] = {}

    def next_firings(self, pipeline: Pipeline, now: datetime, count: int = 1) -> list[datetime]:
        """As the module's ``next_firings``."""
        if not pipeline.cron or count < 1:
            return []
        key = (pipeline.timezone, pipeline.cron)
        known = self._known.get(key)
        if known is not None:
            since, firings = known
            if since <= now < firings[0] and len(firings) >= count:
                return firings[:count]
        firings = _compute_firings(pipeline, now, count)
        if firings:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            self._known[key] = (now, firings)
        return list(firings)


def _compute_firings(pipeline: Pipeline, now: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    moment = now
    while len(found) < count:
        firing = cron.next_firing(pipeline, moment)
        if firing is None:
            break
        found.append(firing)
        moment = firing
    return found


_FIRINGS = FiringCache()


def next_firings(pipeline: Pipeline, now: datetime, count: int = 1) -> list[datetime]:
    """The pipeline's next ``count`` cron firings after ``now`` (UTC); none
    for a pipeline without cron. Cached (``FiringCache``)."""
    return _FIRINGS.next_firings(pipeline, now, count)


def late(
    pipeline: Pipeline, latest_reference_time: datetime | None, running: Sequence[Run], now: datetime
) -> list[str]:
    """Why a cron pipeline is late, in words (empty when it is not):

    - its latest firing is more than ``MISSED_GRACE`` past, and no run has
      that reference time or a later one (cron missed it, or the daemon was
      down and has not caught up yet);
    - a run still running when its pipeline's next firing after its
      reference time has come: the next cycle is due while this one has not
      finished (it overran its cycle).
    """
    if not pipeline.cron:
        return []
    why: list[str] = []
    window_start = latest_reference_time if latest_reference_time is not None else now - timedelta(days=1)
    missed = cron.latest_firing(pipeline, window_start, now - MISSED_GRACE)
    if missed is not None and (latest_reference_time is None or latest_reference_time < missed):
        why.append(f"no run for the firing at {codec.format_time(missed)}")
    for run in running:
        due = cron.next_firing(pipeline, run.reference_time)
        if due is not None and due <= now:
            why.append(
                f"run {run.id} ({codec.format_time(run.reference_time)}) still running at the next "
                f"firing, {codec.format_time(due)}"
            )
    return why


def pipeline_status(
    pipelines: Mapping[str, Pipeline],
    *,
    runs: Mapping[tuple[str, str], int],
    jobs: Mapping[tuple[str, str], int],
    newest: Mapping[str, Run],
    latest_reference: Mapping[str, datetime],
    unfinished: Iterable[Run],
    now: datetime,
) -> list[dict[str, Any]]:
    """Each pipeline as the overview shows it (``pipelines.status`` in
    docs/api.md): those that need attention first (late, or whose newest run
    failed, or with failed jobs in a run still going), then by name."""
    running: dict[str, list[Run]] = {}
    for run in unfinished:
        running.setdefault(run.pipeline, []).append(run)
    items = []
    for name, pipeline in pipelines.items():
        newest_run = newest.get(name)
        job_counts = {state: n for (p, state), n in jobs.items() if p == name}
        late_why = late(pipeline, latest_reference.get(name), running.get(name, []), now)
        attention = list(late_why)
        if newest_run is not None and newest_run.state is RunState.FAILED:
            attention.append(f"newest run {newest_run.id} failed")
        failed_jobs = job_counts.get(JobState.FAILED.value, 0)
        if failed_jobs:
            attention.append(f"{failed_jobs} failed job{'s' if failed_jobs != 1 else ''} in runs still going")
        firing = next_firings(pipeline, now)
        items.append({
            "name": name,
            "owner": pipeline.owner,
            "cron": list(pipeline.cron),
            "timezone": pipeline.timezone,
            "requires": list(pipeline.requires),
            "runs": {state: n for (p, state), n in runs.items() if p == name},
            "jobs": job_counts,
            "running_runs": [r.id for r in running.get(name, [])],
            "newest_run": None if newest_run is None else codec.run_to_dict(newest_run),
            "next_firing": codec.format_time(firing[0]) if firing else None,
            "late": late_why,
            "attention": attention,
        })
    items.sort(key=lambda item: (not item["attention"], item["name"]))
    return items


def utc_now(seconds: float) -> datetime:
    """``seconds`` since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)
