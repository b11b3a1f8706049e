"""MUPPET's value objects: configuration and state, frozen, no I/O.

Every object here is an ``attrs.frozen`` class; a change is a new copy made with
``attrs.evolve``. Times are UTC seconds since the epoch (``float``) except
reference times, which are timezone-aware ``datetime`` objects in UTC: a
reference time names a run (pipeline + reference time is unique), so it is kept
exact and printable.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime

import attrs

# --- configuration ----------------------------------------------------------
# Mapping fields are copied into a dict of their own (a caller's dict, changed
# later, must not change a frozen object); one typed converter per value type.


def _strings(mapping: Mapping[str, str]) -> dict[str, str]:
    return dict(mapping)


def _objects(mapping: Mapping[str, object]) -> dict[str, object]:
    return dict(mapping)


@attrs.frozen
class Stakeholder:
    """A person or group who depends on data (MUPPET design, "the data model")."""

    key: str
    name: str
    email: str = ""
    #: where incidents are posted as JSON (docs/alerts.md, "Webhooks"); "" none
    webhook: str = ""
    #: the incident kinds they hear of (docs/alerts.md, "Kinds"); None: all
    notify: tuple[str, ...] | None = None
    #: a PagerDuty Events API v2 integration key: the webhook is that API,
    #: which takes one event per request (docs/alerts.md, "Webhooks")
    routing_key: str = ""


@attrs.frozen
class RetryPolicy:
    """How often a failed job is tried, and how long its successor waits.

    ``tries`` counts every execution, the first included: ``tries = 1`` means
    no retry. The n-th successor (``failures == n``) waits
    ``interval * factor ** (n - 1)`` seconds.
    """

    tries: int = 1
    interval: float = 0.0
    factor: float = 1.0

    def delay(self, failures: int) -> float:
        return self.interval * self.factor ** (failures - 1)


class Depends(str, enum.Enum):
    #: a job waits for every job of every parent step
    ALL = "all"
    #: a job waits for the parent jobs with the same index
    EACH = "each"


@attrs.frozen
class IntercycleParent:
    """A parent in an earlier cycle: the slots of ``step`` in the run of the
    same pipeline whose reference time is this run's moved by ``offset`` (an
    ISO 8601 duration that points back, "-PT6H"; docs/configuration.md,
    "Cycling")."""

    step: str
    offset: str

    def __str__(self) -> str:
        return f"{self.step}[{self.offset}]"


@attrs.frozen
class Step:
    """A node of a pipeline's graph."""

    name: str
    command: str
    parents: tuple[str, ...] = ()
    jobs: int = 1
    depends: Depends = Depends.ALL
    #: at most this many jobs of the step submitted or running, over all runs;
    #: None for no limit
    concurrency: int | None = None
    #: steps of the same pipeline never running at the same time as this one
    conflicts: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_strings)
    executor: str = "local"
    #: paths relative to the job's scratch directory, formatted with
    #: ``reference_time`` (datetime, UTC) and ``index`` (int); the same path
    #: relative to ``[daemon] output_dir`` is the destination
    outputs: tuple[str, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    #: executor-specific resources (queue, memory, ...); local ignores them
    resources: Mapping[str, object] = attrs.field(factory=dict, converter=_objects)
    #: the product its outputs are registered as; "" takes the pipeline's one
    #: ``produces`` product (none: outputs are moved but not indexed)
    product: str = ""
    #: parents in earlier cycles (``parents = ["forecast[-PT6H]"]``)
    intercycle: tuple[IntercycleParent, ...] = ()
    #: ISO 8601 durations after the run's reference time: a job does not
    #: start before ``not_before``, expires if not started by
    #: ``expire_after``, is late if not succeeded by ``late_after``; None:
    #: never (``expire_after`` and ``late_after`` default to the pipeline's)
    not_before: str | None = None
    expire_after: str | None = None
    late_after: str | None = None

    def __hash__(self) -> int:  # dict fields are not hashable; the name is enough
        return hash(self.name)


@attrs.frozen
class Pipeline:
    name: str
    owner: str
    #: steps in a topological order (parents before children)
    steps: Mapping[str, Step]
    requires: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    cron: tuple[str, ...] = ()
    timezone: str = "UTC"
    #: the file it was read from, for messages
    source: str = ""
    #: the first reference time of its cycles: an intercycle parent before
    #: it counts as satisfied (None: every parent must have its run)
    initial: datetime | None = None
    #: at most this many runs running at a time; more wait "queued" (a queued
    #: run has not begun, so it does not count: docs/states.md)
    runahead: int | None = None
    #: what cron does about firings missed while no daemon ran: "latest"
    #: (one run, for the latest), "all" (each, oldest first, at most
    #: ``catchup_limit``) or "none"
    catchup: str = "latest"
    catchup_limit: int = 48
    #: a run not succeeded by its reference time + ``late_after`` is late;
    #: ``expire_after`` is every step's unless it has its own
    expire_after: str | None = None
    late_after: str | None = None

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def cycling(self) -> bool:
        """Whether some step waits on an earlier cycle."""
        return any(step.intercycle for step in self.steps.values())

    def children(self, step: str) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps.values() if step in s.parents)

    def descendants(self, step: str) -> frozenset[str]:
        """Every step downstream of ``step``, not ``step`` itself."""
        seen: set[str] = set()
        todo = list(self.children(step))
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.children(name))
        return frozenset(seen)


@attrs.frozen
class ExecutorConfig:
    name: str
    #: "local", "gridengine" or "slurm"
    type: str
    max_jobs: int = 8
    #: type-specific settings (queue, partition, submit options, ...)
    options: Mapping[str, object] = attrs.field(factory=dict, converter=_objects)

    def __hash__(self) -> int:
        return hash(self.name)


@attrs.frozen
class DaemonConfig:
    database: str
    state_dir: str
    output_dir: str
    pipeline_globs: tuple[str, ...] = ()
    #: wait for the lease as a hot standby instead of refusing to start
    #: (docs/operations.md, "Running a standby")
    standby: bool = False
    #: how long finished runs (their jobs, logs and definitions) and events
    #: are kept, an ISO 8601 duration (docs/operations.md, "What is kept")
    keep_history: str = "P30D"
    #: how long the job directories and scratch of finished jobs are kept
    keep_job_dirs: str = "P7D"


@attrs.frozen
class Token:
    """An API client's credential: the secret itself is never stored, only
    its SHA-256, so a leaked tokens file grants nothing."""

    name: str
    role: str  # "read", "write" or "admin"
    sha256: str


def _copy_tokens(mapping: Mapping[str, Token]) -> dict[str, Token]:
    return dict(mapping)


#: what each role may call, cumulative: a write token also reads
ROLES = ("read", "write", "admin")


@attrs.frozen
class ApiConfig:
    listen: str = "127.0.0.1:8765"
    #: the tokens file, or "" for an open API (then only on loopback)
    tokens_file: str = ""
    #: secret digest -> Token, read from ``tokens_file``
    tokens: Mapping[str, Token] = attrs.field(factory=dict, converter=_copy_tokens)
    #: reads need no token even when a tokens file is set
    open_reads: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    #: the largest websocket message the server takes, in bytes
    max_message_bytes: int = 1024 * 1024

    def __hash__(self) -> int:
        return hash(self.listen)

    @property
    def scheme(self) -> str:
        return "wss" if self.tls_cert else "ws"

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@attrs.frozen
class WebConfig:
    """The ``[web]`` table: where the daemon serves its web page, ``/metrics``
    and ``/healthz`` (docs/configuration.md, "[web]")."""

    #: HOST:PORT, or "" for no web server at all
    listen: str = "127.0.0.1:8780"
    #: ``listen`` was written in the file: an address in use then stops the
    #: daemon, as the API's does; the built-in default only gives a warning
    explicit: bool = False

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


# --- the Productstatus index ------------------------------------------------------
# The declared kinds of things (products, formats, backends) are configuration;
# their instances and files live in the database and travel as dicts
# (muppet/index/).


@attrs.frozen
class Product:
    """A product as Productstatus had it: what is made, by whom, and how many
    files make one instance of it complete."""

    slug: str
    name: str
    contact: str = ""  # a stakeholder's key
    parents: tuple[str, ...] = ()  # slugs of the products it is made from
    file_count: int = 1
    operational: bool = False
    #: data instances registered without an explicit expiry expire this many
    #: hours after registration; None keeps them
    lifetime_hours: float | None = None
    #: grid and time-step metadata, free-form (projection, resolution,
    #: bounding_box, time_steps, time_step_hours, ...)
    metadata: Mapping[str, object] = attrs.field(factory=dict, converter=_objects)
    #: an instance not complete this long (ISO 8601) after its reference
    #: time is an incident (Productstatus's grace time; docs/alerts.md)
    expected_after: str | None = None

    def __hash__(self) -> int:
        return hash(self.slug)


@attrs.frozen
class DataFormat:
    slug: str
    name: str


@attrs.frozen
class ServiceBackend:
    """Where copies of files live; ``url`` is the base of their URLs
    (``file:///lustre/a``, ``https://thredds.example/thredds/fileServer``)."""

    slug: str
    name: str
    url: str

    @property
    def local_root(self) -> str | None:
        """The directory of a ``file://`` backend, None for any other."""
        if self.url.startswith("file://"):
            return "/" + self.url[len("file://"):].lstrip("/")
        return None


@attrs.frozen
class IndexConfig:
    #: the service backend the daemon's own step outputs are registered on;
    #: "" is the implicit backend "local" at ``[daemon] output_dir``
    outputs_backend: str = ""
    #: seconds between expiry passes
    expiry_interval: float = 60.0
    #: also remove the file of an expired data instance when its backend is
    #: a file:// directory on this host
    delete_expired_files: bool = False


@attrs.frozen
class AlertsConfig:
    """The ``[alerts]`` table: how incidents reach stakeholders (docs/alerts.md)."""

    #: HOST:PORT of the SMTP server; "" sends no mail
    smtp: str = ""
    #: "" (plain SMTP), "starttls" or "ssl" (SMTP over TLS from the start)
    security: str = ""
    username: str = ""
    #: read from ``password_file`` at load; never shown
    password: str = attrs.field(default="", repr=False)
    password_file: str = ""
    #: the From: address
    sender: str = ""
    #: at most one message per stakeholder and channel in this many seconds
    digest_seconds: float = 60.0
    #: stakeholders who hear of every incident
    default_to: tuple[str, ...] = ()
    #: an open incident nobody acknowledged is told again after this many
    #: seconds; 0: never
    remind_seconds: float = 4 * 3600.0
    #: seconds one SMTP conversation or webhook request may take
    timeout: float = 30.0


def _copy_products(mapping: Mapping[str, Product]) -> dict[str, Product]:
    return dict(mapping)


def _copy_formats(mapping: Mapping[str, DataFormat]) -> dict[str, DataFormat]:
    return dict(mapping)


def _copy_backends(mapping: Mapping[str, ServiceBackend]) -> dict[str, ServiceBackend]:
    return dict(mapping)


@attrs.frozen
class Config:
    """Everything the daemon reads at start, validated."""

    daemon: DaemonConfig
    api: ApiConfig
    executors: Mapping[str, ExecutorConfig]
    pipelines: Mapping[str, Pipeline]
    stakeholders: Mapping[str, Stakeholder]
    products: Mapping[str, Product] = attrs.field(factory=dict, converter=_copy_products)
    formats: Mapping[str, DataFormat] = attrs.field(factory=dict, converter=_copy_formats)
    backends: Mapping[str, ServiceBackend] = attrs.field(factory=dict, converter=_copy_backends)
    index: IndexConfig = IndexConfig()
    #: the daemon's configuration file
    source: str = ""
    #: what the loader found allowed but probably not meant, for the log
    warnings: tuple[str, ...] = ()
    #: the web page, /metrics and /healthz
    web: WebConfig = WebConfig()
    #: how incidents reach stakeholders
    alerts: AlertsConfig = AlertsConfig()

    def __hash__(self) -> int:
        return id(self)


# --- state ---------------------------------------------------------------


class JobState(str, enum.Enum):
    WAITING = "waiting"  # dependencies, concurrency, conflicts or backoff not yet met
    HELD = "held"  # waiting, and kept from starting by an operator
    SUBMITTED = "submitted"  # handed to the executor, not yet seen running
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    SKIPPED = "skipped"  # downstream of a job that failed for good
    EXPIRED = "expired"  # not started by its expiry (expire_after), or downstream of one
    BYPASSED = "bypassed"  # ended without running: an operator bypassed its step

    @property
    def active(self) -> bool:
        """Holding a slot of the executor, the step's concurrency, conflicts."""
        return self in (JobState.SUBMITTED, JobState.RUNNING)

    @property
    def finished(self) -> bool:
        return self in FINISHED_JOB_STATES


FINISHED_JOB_STATES = frozenset(
    {
        JobState.SUCCEEDED, JobState.FAILED, JobState.KILLED, JobState.SKIPPED, JobState.EXPIRED,
        JobState.BYPASSED,
    }
)


class RunState(str, enum.Enum):
    QUEUED = "queued"  # made, waiting for the pipeline's runahead to let it run
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"  # every job ended succeeded or expired, some expired

    @property
    def finished(self) -> bool:
        return self not in (RunState.QUEUED, RunState.RUNNING)


class RunCause(str, enum.Enum):
    CRON = "cron"
    MANUAL = "manual"
    DATA = "data"
    REQUEST = "request"  # a request for a product update (products.request_update)


@attrs.frozen
class Run:
    """One activation of a pipeline for one reference time."""

    id: int
    pipeline: str
    reference_time: datetime
    state: RunState = RunState.RUNNING
    cause: RunCause = RunCause.MANUAL
    created_at: float = 0.0
    ended_at: float | None = None
    #: not succeeded by its pipeline's late_after
    late: bool = False
    #: the hash of the pipeline's definition it was made with (its row in
    #: the ``definitions`` table): it finishes under that one whatever a
    #: reload changes; "" for a run made before definitions were kept, which
    #: runs under its pipeline's current one (docs/operations.md, "Reload")
    definition: str = ""


@attrs.frozen
class Job:
    """One execution of a step in a run; a retry is a new Job.

    The jobs of a run form slots ``(step, index)``; the slot's current job is
    the one without a successor.
    """

    id: int
    run_id: int
    pipeline: str
    step: str
    index: int
    count: int
    executor: str
    state: JobState = JobState.WAITING
    failures: int = 0
    predecessor: int | None = None
    successor: int | None = None
    #: a retry does not start before this time (its backoff)
    not_before: float = 0.0
    exit_code: int | None = None
    #: why it failed, was killed or skipped, in words
    reason: str = ""
    #: pid of the local wrapper, or the batch system's job id
    batch_id: str = ""
    host: str = ""
    created_at: float = 0.0
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    #: an operator asked to kill it while it was submitted or running: kept
    #: with the job, so that the kill holds whatever comes first (the commit
    #: of its submission, its end, a restart of the daemon)
    kill_requested: bool = False
    #: not succeeded by its step's late_after
    late: bool = False

    @property
    def slot(self) -> tuple[str, int]:
        return (self.step, self.index)


@attrs.frozen
class JobLog:
    """The tail of a finished job's output, kept in the database."""

    job_id: int
    stdout: str
    stderr: str


#: how much of stdout and stderr the database keeps per job
LOG_TAIL_BYTES = 64 * 1024
