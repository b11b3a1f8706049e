"""The daemon's metrics, in Prometheus's text format on the web server's
``/metrics`` (docs/operations.md, "Metrics", lists each one).

One registry per daemon, never prometheus_client's global one: two daemons
in one process (the tests run them side by side) must not add up each
other's counts. ``muppet/daemon.py`` makes the daemon's ``Metrics`` and sets
it in the context variable ``CURRENT`` before it starts the tasks; Trio hands
every task (and every worker thread it starts) a copy of its parent's
context, so each task finds its own daemon's metrics with ``current()``
without a parameter threaded through every task's signature. Code that runs
outside a daemon (a task under test on its own) counts into a spare Metrics
that nobody serves.

Three kinds of figure:

* counted where they happen: job starts and ends, waits, durations and run
  durations (the scheduler task, from the committed copies it receives),
  database commits (the database task), API requests (the API);
* read when asked, from objects the tasks share (``DatabaseHealth``, the
  event hub): the database's outages, subscribers, events so far;
* read from the database at each scrape (``DatabaseCounts``, by the web
  server in a worker thread before it renders): jobs and runs by state,
  the executors' slots in use, the index's size.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .db.health import DatabaseHealth
from .model import Config, JobState, RunState
from .summary import IndexSize

#: seconds from waiting to running: a job that waits for nothing starts
#: within a scheduling pass (milliseconds); one behind a full executor waits
#: for minutes to hours
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600)
#: seconds a job or a run takes: from `true` to a forecast model's hours
DURATION_BUCKETS = (0.1, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
#: seconds one commit takes: an fsync is about 1 ms here (docs/database.md)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: changes in one commit: one when idle, thousands under a burst
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
#: seconds an API call takes: a cached read answers in microseconds, a
#: command waits for a commit
REQUEST_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)


@attrs.frozen
class DatabaseCounts:
    """What the web server reads from the database for one scrape."""

    #: jobs of the runs that have not ended, by (pipeline, state)
    jobs: Mapping[tuple[str, str], int]
    #: every run, by (pipeline, state)
    runs: Mapping[tuple[str, str], int]
    #: submitted and running jobs by executor
    active: Mapping[str, int]
    index: IndexSize


class Metrics:
    """One daemon's metrics and its registry (``registry``, for
    ``prometheus_client.generate_latest``). Used from the Trio thread and
    from worker threads alike: prometheus_client's metrics lock for
    themselves."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.started = clock()
        self.clock = clock
        r = self.registry
        self.job_starts = Counter(
            "muppet_job_starts", "Jobs that started running, by pipeline", ["pipeline"], registry=r)
        self.job_ends = Counter(
            "muppet_job_ends", "Jobs that ended, by pipeline and end state", ["pipeline", "state"], registry=r)
        self.job_wait = Histogram(
            "muppet_job_wait_seconds", "Time from waiting (created, or the end of its backoff) to running",
            ["pipeline"], buckets=WAIT_BUCKETS, registry=r)
        self.job_duration = Histogram(
            "muppet_job_duration_seconds", "Time from a job's start to its end", ["pipeline"],
            buckets=DURATION_BUCKETS, registry=r)
        self.run_duration = Histogram(
            "muppet_run_duration_seconds", "Time from a run's creation to its end, by end state",
            ["pipeline", "state"], buckets=DURATION_BUCKETS, registry=r)
        self.commit_seconds = Histogram(
            "muppet_database_commit_seconds", "Time one successful commit of the database task took",
            buckets=COMMIT_BUCKETS, registry=r)
        self.commit_changes = Histogram(
            "muppet_database_commit_changes", "Changes written in one commit (the batch size)",
            buckets=BATCH_BUCKETS, registry=r)
        self.api_requests = Counter(
            "muppet_api_requests", "JSON-RPC calls answered, by method", ["method"], registry=r)
        self.api_errors = Counter(
            "muppet_api_errors", "JSON-RPC calls answered with an error, by method and error code",
            ["method", "code"], registry=r)
        self.api_seconds = Histogram(
            "muppet_api_request_seconds", "Time to answer one JSON-RPC call, by method", ["method"],
            buckets=REQUEST_BUCKETS, registry=r)
        self._api_children: dict[str, tuple[Any, Any]] = {}
        self._live = _Live(self)
        r.register(self._live)

    # --- counted where they happen

    def job_started(self, pipeline: str, waited: float | None) -> None:
        self.job_starts.labels(pipeline).inc()
        if waited is not None:
            self.job_wait.labels(pipeline).observe(max(0.0, waited))

    def job_ended(self, pipeline: str, state: str, duration: float | None) -> None:
        self.job_ends.labels(pipeline, state).inc()
        if duration is not None:
            self.job_duration.labels(pipeline).observe(max(0.0, duration))

    def run_ended(self, pipeline: str, state: str, duration: float) -> None:
        self.run_duration.labels(pipeline, state).observe(max(0.0, duration))

    def committed(self, seconds: float, changes: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_changes.observe(changes)

    def api_call(self, method: str, seconds: float, error_code: int | None) -> None:
        # each method's children, looked up once: every call of a batch
        # passes here, and labels() costs as much as inc() and observe()
        children = self._api_children.get(method)
        if children is None:
            children = self._api_children[method] = (self.api_requests.labels(method),
                                                     self.api_seconds.labels(method))
        children[0].inc()
        children[1].observe(seconds)
        if error_code is not None:
            self.api_errors.labels(method, str(error_code)).inc()

    # --- read when asked

    def watch_config(self, config: Config) -> None:
        """The executors' sizes and the pipelines' names (so that a pipeline
        with no job yet shows zeros rather than nothing)."""
        self._live.config = config

    def watch_database(self, health: DatabaseHealth) -> None:
        self._live.health = health

    def watch_events(self, subscribers: Callable[[], int], events: Callable[[], int]) -> None:
        """``subscribers()``: event subscriptions open now; ``events()``:
        events the API's event hub has read since the daemon started."""
        self._live.subscribers = subscribers
        self._live.events = events

    def set_database_counts(self, counts: DatabaseCounts | None) -> None:
        """What one scrape read from the database; None leaves those figures
        out (the database is away)."""
        self._live.counts = counts


class _Live(Collector):
    """The figures read when Prometheus asks (see the module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.config: Config | None = None
        self.health: DatabaseHealth | None = None
        self.subscribers: Callable[[], int] | None = None
        self.events: Callable[[], int] | None = None
        self.counts: DatabaseCounts | None = None

    def describe(self) -> list[Metric]:
        # read at every collect; nothing to check at registration
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        uptime = GaugeMetricFamily("muppet_uptime_seconds", "Seconds since the daemon started")
        uptime.add_metric([], m.clock() - m.started)
        yield uptime
        if self.health is not None:
            up = GaugeMetricFamily("muppet_database_up", "1 while the database answers, 0 during an outage")
            up.add_metric([], 1.0 if self.health.available else 0.0)
            yield up
            outages = CounterMetricFamily("muppet_database_outages", "Database outages since the daemon started")
            outages.add_metric([], self.health.outages)
            yield outages
            length = GaugeMetricFamily(
                "muppet_database_outage_seconds", "How long the current database outage has lasted (0: none)")
            length.add_metric([], self.health.outage_seconds())
            yield length
        if self.subscribers is not None and self.events is not None:
            subscribers = GaugeMetricFamily("muppet_api_subscribers", "Open event subscriptions (events.subscribe)")
            subscribers.add_metric([], self.subscribers())
            yield subscribers
            events = CounterMetricFamily(
                "muppet_events", "Events appended to the event log since the daemon started (rate(): per second)")
            events.add_metric([], self.events())
            yield events
        yield from self._database_figures()

    def _database_figures(self) -> Iterator[Metric]:
        counts = self.counts
        config = self.config
        if counts is None:
            return
        jobs = GaugeMetricFamily(
            "muppet_jobs", "Jobs of the runs that have not ended, by pipeline and state", labels=["pipeline", "state"])
        pipelines = sorted({p for p, _ in counts.jobs} | set(config.pipelines if config else ()))
        for pipeline in pipelines:
            for state in JobState:
                jobs.add_metric([pipeline, state.value], counts.jobs.get((pipeline, state.value), 0))
        yield jobs
        runs = GaugeMetricFamily("muppet_runs", "Runs by pipeline and state", labels=["pipeline", "state"])
        for pipeline in sorted({p for p, _ in counts.runs} | set(pipelines)):
            for run_state in RunState:
                runs.add_metric([pipeline, run_state.value], counts.runs.get((pipeline, run_state.value), 0))
        yield runs
        used = GaugeMetricFamily(
            "muppet_executor_slots_used", "Submitted and running jobs by executor", labels=["executor"])
        size = GaugeMetricFamily("muppet_executor_slots_max", "Each executor's max_jobs", labels=["executor"])
        executors: Mapping[str, Any] = config.executors if config else {}
        for name in sorted(set(executors) | set(counts.active)):
            used.add_metric([name], counts.active.get(name, 0))
            if name in executors:
                size.add_metric([name], executors[name].max_jobs)
        yield used
        yield size
        index = counts.index
        for name, help_text, value in (
            ("muppet_index_products", "Products in the index", index.products),
            ("muppet_index_instances", "Product instances in the index", index.instances),
            ("muppet_index_complete_instances", "Product instances that are complete", index.complete_instances),
            ("muppet_index_files", "Present (not deleted) files in the index, every backend", index.files),
            ("muppet_index_bytes", "Bytes of the present files in the index, every backend", index.bytes),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value)
            yield gauge


#: the daemon's metrics, as ``muppet/daemon.py`` set them for its tasks
CURRENT: contextvars.ContextVar[Metrics | None] = contextvars.ContextVar("muppet_metrics", default=None)

_spare: Metrics | None = None


def current() -> Metrics:
    """The metrics of the daemon this code runs in, or a spare set that
    nobody serves (a task run on its own, in a test)."""
    found = CURRENT.get()
    if found is not None:
        return found
    global _spare
    if _spare is None:
        _spare = Metrics()
    return _spare
