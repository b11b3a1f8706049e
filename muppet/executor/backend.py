"""The interface every executor type implements, and the registry of types.

A backend only knows how to hand a job's wrapper script to something that runs
it (a local process, ``qsub``, ``sbatch``), how to tell whether that something
still runs, and how to stop it. Everything else is common and lives in
``muppet/executor/task.py`` and ``jobdir.py``: the job directory, the wrapper
script (which writes the ``status`` file itself, on whatever host runs it),
status parsing, log tails, outputs, and the JobStarted / JobFinished reports.

The life of one job, as the executor task drives a backend::

    batch_id = await backend.find(job_dir, None)      # a live job (restart)?
    if batch_id: re-attach: await backend.wait(job_dir, batch_id)
    else:
        job_dir.prepare(spec, backend.batch_id_variable)   # AlreadyStarted if status exists
        batch_id = await backend.launch(job_dir, spec)     # NotStarted: JobNotStarted
        await backend.wait(job_dir, batch_id)
    # AlreadyStarted: an end record -> finished while no daemon watched;
    # else await backend.find(job_dir, status): live -> wait; gone -> lost
    status = job_dir.read_status()                     # the end record, or lost
    # no end record, and the wrapper exited 75 (claimed): find the claimant
    # and wait for it; exited 74 (cannot start) with no claim: not started

A backend never decides success or failure; the end record in ``status`` does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Protocol

from ..messages import StartJob
from ..model import ExecutorConfig
from .jobdir import AlreadyStarted, JobDir, Status  # noqa: F401 (re-exported for backends)


class Lost(Exception):
    """The job is gone and will never write an end record (the batch system
    forgot it, the node died, ...). The message says what was seen; the
    executor reports the job failed with reason ``"lost: <message>"``.

    ``wait`` raises it when it knows; it may also simply return, and the
    executor finds no end record in ``status`` and reports the job lost too.
    """


class Ended(Lost):
    """The batch system ended the job (a limit, qdel/scancel, a node failure,
    an error state); the message is the whole reason, reported without
    ``"lost: "``."""


class BackendError(Exception):
    """The backend cannot tell or cannot do what was asked (``qsub`` refused
    the job as written, the controller cannot be asked right now, ...).

    From ``launch`` it fails the job (nothing was started, and the job's own
    request is at fault: an unknown queue, an impossible resource) with the
    message as reason. From ``find`` or ``wait`` the executor retries later
    rather than guess: guessing "not running" could start the user's command
    twice.
    """


class NotStarted(Exception):
    """The job's command did not run, for a failure of MUPPET's own machinery:
    the state directory full or failing, a process that cannot be spawned,
    the batch system out of reach, a wrapper that could not write its claim
    (MUPPET design: such a failure is never the job's). The message says
    what went wrong, naming the path or the system.

    From ``launch`` (or from preparing the job directory) the executor reports
    ``JobNotStarted``, and the scheduler tries the job again after a backoff,
    its tries unused. Whoever raises it leaves nothing of the job running or
    queued, and nothing that a later ``find`` could take for a live job.
    """


class Backend(Protocol):
    """One configured executor (``[executors.NAME]``) of one type.

    Every method is cancellable and cancelling it must leave the job alone: a
    cancelled ``wait`` means the daemon is stopping, and jobs outlive it. Only
    ``kill`` stops a job. Methods must not block the Trio loop: run commands
    with ``trio.run_process`` and file work with ``trio.to_thread.run_sync``.
    """

    #: True when a launched job runs at once (local): the executor reports
    #: JobStarted right after ``launch``, with this host and the current time.
    #: False for batch systems, where a job may sit in a queue: the executor
    #: then reports JobStarted when the wrapper's start record appears in
    #: ``status`` (it polls the file while ``wait`` runs).
    runs_at_launch: bool

    #: the environment variable in which the batch system gives a job its id
    #: (``SLURM_JOB_ID``, ``JOB_ID``): the wrapper writes it into its status
    #: records, so that the executor knows which of two batch jobs of one
    #: job holds the claim. None for local.
    batch_id_variable: str | None

    # Optional, not part of the protocol: a class attribute
    # ``launch_prepares = True`` says that ``launch`` itself calls
    # ``job_dir.prepare(spec)`` (in the worker thread that does its own
    # blocking work, letting AlreadyStarted propagate): local does, to save a
    # thread hop per job. Without it the executor prepares before ``launch``.
    # Optional too: ``said_end(batch_id)``, right after ``wait``, the end
    # record the wrapper said as it exited, and whether its logs are empty
    # (``jobdir.SaidEnd``; local: what a launcher's wrapper says on its
    # pipe), or None: with it, a job with nothing to read or move is
    # reported without reading its files (docs/executor.md).
    # Two optional methods serve a backend that keeps something ready between
    # jobs (local: its launcher, docs/executor.md): ``async def maintain()``,
    # a task the executor runs beside its jobs until ``close()``, which the
    # executor calls when it stops or a reload replaces the backend.

    async def launch(self, job_dir: JobDir, spec: StartJob) -> str:
        """Start (or submit) ``job_dir.wrapper`` and return its batch id: the
        local wrapper's pid, or the batch system's job id.

        The job directory is ready (wrapper, fresh scratch). The
        wrapper sends its own stdout/stderr to the job directory; a backend
        should discard the batch system's copies (``-o /dev/null``). A batch
        backend should name the job after ``job_dir.name`` (``muppet-<id>``)
        and record the batch id with ``job_dir.write_batch_id`` so that
        ``find`` works after a crash at any moment. Raises BackendError when
        nothing was started for the job's own fault (its resources, its
        queue), NotStarted when nothing was started for the machinery's
        (the system out of reach, no process could be spawned).
        """
        ...

    async def wait(self, job_dir: JobDir, batch_id: str) -> int | None:
        """Return once the job has ended (its wrapper process is gone, or the
        batch system lists it as finished), with the wrapper's exit status
        when the backend knows it (None otherwise): the executor needs it
        only when the status file has no end record, to tell a wrapper that
        found the job claimed (``CLAIMED_EXIT``) or could not start it
        (``CANNOT_START_EXIT``) from a lost one. Raises Lost when the job
        vanished without running to its end; BackendError (or any other
        error) makes the executor log it and call ``wait`` again a bit
        later."""
        ...

    async def find(self, job_dir: JobDir, status: Status | None) -> str | None:
        """Re-attach after a daemon restart: the batch id of this job if it is
        still queued or running, else None. ``status`` is what the wrapper has
        written so far (None: nothing yet, the job may be queued or between
        spawn and the wrapper's first write); a record with a ``batch_id``
        names the batch job that holds the claim. Must raise BackendError
        rather than answer None when it cannot tell: None makes the executor
        start the job (if it has no start record)."""
        ...

    async def kill(self, job_dir: JobDir, batch_id: str) -> None:
        """Stop the job (qdel, scancel, SIGTERM then SIGKILL to the process
        group). May return before the job is gone: ``wait`` tells when. Killing
        a job that has ended already is not an error."""
        ...


#: builds a backend from its configuration and the daemon's state directory
BackendFactory = Callable[[ExecutorConfig, str], Backend]

#: executor type -> factory. A value may be a "module:attribute" string, loaded
#: on first use, so that the batch backends (and their imports) cost nothing
#: when only local jobs run. Add a type by adding an entry here.
BACKEND_TYPES: dict[str, BackendFactory | str] = {
    "local": "muppet.executor.local:LocalBackend",
    "gridengine": "muppet.executor.gridengine:GridEngineBackend",
    "slurm": "muppet.executor.slurm:SlurmBackend",
}


def backend_factory(type_name: str) -> BackendFactory:
    """The factory for an executor type; ValueError names the unknown type."""
    try:
        factory = BACKEND_TYPES[type_name]
    except KeyError:
        known = ", ".join(sorted(BACKEND_TYPES))
        raise ValueError(f"unknown executor type {type_name!r} (known: {known})") from None
    if isinstance(factory, str):
        module_name, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        BACKEND_TYPES[type_name] = factory
    return factory


def make_backends(executors: Mapping[str, ExecutorConfig], state_dir: str) -> dict[str, Backend]:
    """One backend per configured executor, keyed by the executor's name.

    Raises ValueError naming the executor whose type is unknown.
    """
    backends: dict[str, Backend] = {}
    for name, config in executors.items():
        try:
            factory = backend_factory(config.type)
        except ValueError as error:
            raise ValueError(f"[executors.{name}] type: {error}") from None
        backends[name] = factory(config, state_dir)
    return backends
