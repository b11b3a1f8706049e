"""The ``[executors.NAME]`` tables of the daemon file: where jobs run, how
many at once, and a batch executor's defaults for its jobs' resources
(docs/configuration.md, docs/batch.md).

Resource values (``memory``, ``walltime``, ...) are checked by
``muppet.resources``, the parser the batch executors use when they submit:
a value the loader lets through cannot fail a job at submission.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..fileio import executable_file
from ..model import ExecutorConfig
from ..resources import BATCH_SETTINGS, RESOURCE_KEYS, check_option
from ..tomlcheck import MISSING, Bad, TomlFile, integer, show, string
from .checks import NAME, NAME_RULE, choice

__all__ = [
    "BATCH_EXECUTOR_KEYS",
    "BATCH_MAX_JOBS",
    "EXECUTOR_TYPES",
    "LOCAL_EXECUTOR_KEYS",
    "default_executors",
    "executor_tables",
    "resource_options",
]

EXECUTOR_TYPES = ("local", "gridengine", "slurm")

#: what a batch executor's table takes beside ``type`` and ``max_jobs``: the
#: resources its jobs get unless a step says otherwise, and its own settings
BATCH_EXECUTOR_KEYS = RESOURCE_KEYS + BATCH_SETTINGS

#: what a local executor's table takes beside ``type`` and ``max_jobs``
LOCAL_EXECUTOR_KEYS = ("bash",)

#: jobs submitted at once to a batch system when max_jobs is not given; the
#: batch system queues, so this bounds MUPPET's share, not the machine's load
BATCH_MAX_JOBS = 8


def _default_max_jobs() -> int:
    return os.cpu_count() or 2


def default_executors() -> dict[str, ExecutorConfig]:
    """The embedded ``local`` executor: as many jobs at once as CPUs."""
    return {"local": ExecutorConfig("local", "local", max_jobs=_default_max_jobs())}


def bash_path(value: Any) -> str:
    """A local executor's ``bash``: an absolute path to an executable file
    of this host (muppet.executor.local runs its launcher and spares with it)."""
    text = string(value)
    if not os.path.isabs(text):
        raise Bad(f"must be an absolute path, got {show(value)}")
    if not executable_file(text):
        raise Bad(f"{text} is not an executable file here")
    return text


def resource_options(
    f: TomlFile, data: Mapping[str, Any], table: str, prefix: str, keys: Sequence[str]
) -> dict[str, Any]:
    """The ``keys`` present in ``data``, each checked by ``muppet.resources``;
    shared by ``[executors.NAME]`` (``prefix`` "") and a step's resources
    (``prefix`` "resources."). A bad value is a problem and left out."""
    options: dict[str, Any] = {}
    for key in keys:
        if key in data:
            value = f.get(data, table, key, check_option(key), MISSING, prefix=prefix)
            if value is not MISSING:
                options[key] = value
    return options


def executor_tables(f: TomlFile, data: Mapping[str, Any]) -> dict[str, ExecutorConfig]:
    """Every ``[executors.NAME]``, beside the embedded ``local``."""
    # The embedded "local" stays unless the file defines its own "local": steps
    # default to it, and a file adding a batch system should not lose it.
    executors = default_executors()
    section = f.table(data, "", "executors")
    for name, body in section.items():
        table = f"executors.{name}"
        if not NAME.match(name):
            f.problem(table, "", f"executor name may only contain {NAME_RULE}")
            continue
        if not isinstance(body, dict):
            f.problem("executors", name, f"must be a table [{table}], got {show(body)}")
            continue
        kind = f.get(body, table, "type", choice(*EXECUTOR_TYPES), required=True)
        if kind is None:
            # Reported; still define the name so that steps using it do not
            # add an "unknown executor" for each of them.
            executors[name] = ExecutorConfig(name, "local")
            continue
        option_keys = BATCH_EXECUTOR_KEYS if kind != "local" else LOCAL_EXECUTOR_KEYS
        f.unknown(body, table, ("type", "max_jobs", *option_keys))
        default_max = _default_max_jobs() if kind == "local" else BATCH_MAX_JOBS
        max_jobs = f.get(body, table, "max_jobs", integer(1), default_max)
        if kind == "local":
            bash = f.get(body, table, "bash", bash_path)
            options = {} if bash is None else {"bash": bash}
        else:
            options = resource_options(f, body, table, "", option_keys)
        executors[name] = ExecutorConfig(name, kind, max_jobs=max_jobs, options=options)
    return executors
