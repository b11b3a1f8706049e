"""Batch resources: what a job asks of Grid Engine or Slurm (``memory``,
``walltime``, ``slots``, ...), and the batch executor's own settings, parsed
and checked.

One parser for both of its users: the configuration loader
(``muppet.config``), which checks every value where it is written
(``[executors.NAME]``, a step's ``resources``) and reports a bad one as a
problem naming file, table and key; and the batch executors
(``muppet.executor.batch``), which merge the executor's defaults with the
step's overrides into :class:`Resources` and turn those into ``qsub`` and
``sbatch`` options. A value that passes ``muppet validate`` therefore cannot
fail a job at submission. docs/configuration.md lists the accepted forms.

A check is a function of the raw TOML value in the manner of
``muppet.tomlcheck``: it returns the value or raises
:class:`muppet.tomlcheck.Bad` with a message that completes "KEY: ...".
Pure: no I/O, no Trio.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .tomlcheck import Bad, integer, is_int, number, show, string, string_list

__all__ = [
    "BATCH_SETTINGS",
    "RESOURCE_KEYS",
    "ResourceError",
    "Resources",
    "batch_setting",
    "check_option",
    "format_hms",
    "merge_resources",
    "parse_memory",
    "parse_walltime",
]

#: keys of a step's ``resources``; a batch executor's table takes them too, as
#: defaults for its jobs. In the order the configuration reference lists them
#: (messages about unknown keys list them in this order).
RESOURCE_KEYS = (
    "queue",
    "partition",
    "slots",
    "cpus",
    "memory",
    "walltime",
    "submit_options",
    "parallel_environment",
    "account",
)

#: settings of a batch executor itself (how MUPPET talks to the batch system,
#: not what a job needs): only in ``[executors.NAME]``, never in a step
BATCH_SETTINGS = ("poll_interval", "submit_timeout", "max_submit_backoff")


class ResourceError(ValueError):
    """A resource or setting that cannot be used; the message names where it
    was given and the key."""


@attrs.frozen
class Resources:
    """What one job asks of the batch system, after merging."""

    queue: str = ""
    cpus: int | None = None
    #: bytes
    memory: int | None = None
    #: seconds
    walltime: int | None = None
    parallel_environment: str = ""
    account: str = ""
    submit_options: tuple[str, ...] = ()


# --- memory ------------------------------------------------------------------------

#: a number and a unit letter, which may be followed by "B" or "iB" ("4G",
#: "4GB", "4GiB" are one size); a bare "B" is refused rather than read as
#: megabytes
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?)?\s*$", re.IGNORECASE)
#: binary units, as Grid Engine's h_vmem and Slurm's --mem read them
_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_MEMORY_RULE = 'must be a size such as "4G", "512M" or "1.5GiB", or a whole number of megabytes'


def _string_or_whole(value: Any) -> str | int:
    """The two TOML types a size or a duration is written in."""
    if is_int(value) and value >= 1:
        whole: int = value
        return whole
    if isinstance(value, str) and value.strip():
        return value
    raise Bad(f"must be a string or an integer >= 1, got {show(value)}")


def parse_memory(value: Any) -> int:
    """Bytes from ``"4G"``, ``"512M"``, ``"1.5GiB"`` (binary units; K, M, G, T,
    with or without ``i`` and ``B``) or a whole number of megabytes, Slurm's
    default unit (``4096``, ``"4096"``). Raises :class:`Bad`."""
    checked = _string_or_whole(value)
    if isinstance(checked, int):
        return checked * 1024**2
    found = _MEMORY.match(checked)
    if found is None:
        raise Bad(f"{_MEMORY_RULE}, got {show(checked)}")
    unit = (found.group(2) or "m").lower()
    amount = float(found.group(1)) * _UNITS[unit]
    if amount < 1:
        raise Bad(f"must be at least one byte, got {show(checked)}")
    return int(amount)


# --- walltime ----------------------------------------------------------------------

_WALLTIME_RULE = 'must be "H:MM:SS", "MM:SS", "D-HH[:MM[:SS]]" or a whole number of seconds'


def parse_walltime(value: Any) -> int:
    """Seconds from ``"H:MM:SS"``, ``"MM:SS"``, ``"D-HH"``, ``"D-HH:MM"``,
    ``"D-HH:MM:SS"`` (Slurm's forms, which MUPPET writes out again as
    ``H:MM:SS`` for either system) or a whole number of seconds. Raises
    :class:`Bad`.

    A number in a string (``"90"``) is refused: Slurm reads it as minutes and
    Grid Engine as seconds, so the same file would mean two things.
    """
    checked = _string_or_whole(value)
    if isinstance(checked, int):
        return checked
    text = checked.strip()
    if text.isdigit():
        raise Bad(
            f"{_WALLTIME_RULE}, got {show(checked)}: a number in a string is minutes to Slurm "
            f'and seconds to Grid Engine; write {int(text)} for seconds or "{format_hms(int(text) * 60)}" for minutes'
        )
    days: int | None = None
    if "-" in text:
        head, _, text = text.partition("-")
        if not head.isdigit():
            raise Bad(f"{_WALLTIME_RULE}, got {show(checked)}")
        days = int(head)
    parts = text.split(":")
    counts = (1, 2, 3) if days is not None else (2, 3)
    if len(parts) not in counts or not all(p.isdigit() for p in parts):
        raise Bad(f"{_WALLTIME_RULE}, got {show(checked)}")
    if days is not None:
        parts = parts + ["0"] * (3 - len(parts))  # D-HH, D-HH:MM
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    seconds += (days or 0) * 86400
    if seconds < 1:
        raise Bad(f"must be at least one second, got {show(checked)}")
    return seconds


def format_hms(seconds: int) -> str:
    """``H:MM:SS``, which both ``qsub -l h_rt`` and ``sbatch -t`` read."""
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --- one key at a time -----------------------------------------------------------------


def _memory(value: Any) -> Any:
    parse_memory(value)
    return value


def _walltime(value: Any) -> Any:
    parse_walltime(value)
    return value


def _submit_options(value: Any) -> list[str]:
    return list(string_list(unique=False)(value))


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "queue": string,
    "partition": string,
    "parallel_environment": string,
    "account": string,
    "slots": integer(1),
    "cpus": integer(1),
    # kept as written ("4G", 3600): the executor parses again when it merges,
    # and the configuration shows what the author wrote
    "memory": _memory,
    "walltime": _walltime,
    "submit_options": _submit_options,
    "poll_interval": number(0, exclusive=True),
    "submit_timeout": number(0, exclusive=True),
    "max_submit_backoff": number(0, exclusive=True),
}


def check_option(key: str) -> Callable[[Any], Any]:
    """The check of one key of :data:`RESOURCE_KEYS` or :data:`BATCH_SETTINGS`:
    it returns the value as the configuration keeps it (``submit_options`` as
    a list, settings as floats, the rest as written) or raises :class:`Bad`."""
    return _CHECKS[key]


# --- merging ---------------------------------------------------------------------------


def merge_resources(
    executor_options: Mapping[str, object], step_resources: Mapping[str, object], *, where: str
) -> Resources:
    """Executor-level settings overridden by the step's, checked.

    ``queue``/``partition`` and ``slots``/``cpus`` are synonyms (one word for
    each system, both accepted by both). ``submit_options`` from the executor
    come first, then the step's: a later option wins on both systems.
    ``where`` names the step for messages. Raises :class:`ResourceError`
    naming ``where``, the origin (executor or step) and the key.
    """
    queue = ""
    cpus: int | None = None
    memory: int | None = None
    walltime: int | None = None
    parallel_environment = ""
    account = ""
    extra: list[str] = []
    for origin, table in (("executor", executor_options), ("step", step_resources)):
        for key, value in table.items():
            here = f"{where}: {origin} resource {key!r}"
            if key in BATCH_SETTINGS:
                if origin == "step":
                    raise ResourceError(f"{here} can only be set on the executor")
                continue
            if key not in RESOURCE_KEYS:
                if origin == "step":
                    raise ResourceError(f"{here} is unknown (known: {', '.join(sorted(RESOURCE_KEYS))})")
                continue  # the executor table holds other settings too (max_jobs, ...)
            try:
                if key in ("queue", "partition"):
                    queue = string(value)
                elif key in ("slots", "cpus"):
                    cpus = integer(1)(value)
                elif key == "memory":
                    memory = parse_memory(value)
                elif key == "walltime":
                    walltime = parse_walltime(value)
                elif key == "parallel_environment":
                    parallel_environment = string(value)
                elif key == "account":
                    account = string(value)
                else:  # submit_options
                    extra.extend(_submit_options(value))
            except Bad as bad:
                raise ResourceError(f"{here}: {bad}") from None
    return Resources(
        queue=queue,
        cpus=cpus,
        memory=memory,
        walltime=walltime,
        parallel_environment=parallel_environment,
        account=account,
        submit_options=tuple(extra),
    )


def batch_setting(options: Mapping[str, object], key: str, default: float, *, where: str) -> float:
    """A batch executor's setting (one of :data:`BATCH_SETTINGS`), in seconds,
    or ``default``. Raises :class:`ResourceError` naming ``where`` and the key."""
    if key not in options:
        return default
    try:
        seconds: float = check_option(key)(options[key])
    except Bad as bad:
        raise ResourceError(f"{where}: {key!r}: {bad}") from None
    return seconds
