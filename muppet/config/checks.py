"""Value checks that several tables of the daemon's and pipeline files share:
names, choices among fixed words, paths relative to the file.

Checks in the manner of ``muppet.tomlcheck`` (which holds the ones muppet-sync
shares too): a function of the raw value that returns the checked value or
raises :class:`~muppet.tomlcheck.Bad` with a message completing "KEY: ...".
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..tomlcheck import Bad, TomlFile, show, string

__all__ = ["NAME", "NAME_RULE", "choice", "name", "named_tables", "path", "resolve"]

#: names end up in directory names, environment values, log lines and the
#: API; keeping them to a portable set avoids quoting problems everywhere
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
NAME_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit"


def name(kind: str) -> Callable[[Any], str]:
    """A name by :data:`NAME`; ``kind`` ("pipeline", "product") says whose."""

    def check(value: Any) -> str:
        checked = string(value)
        if not NAME.match(checked):
            raise Bad(f"{kind} name {show(checked)} may only contain {NAME_RULE}")
        return checked

    return check


def choice(*options: str) -> Callable[[Any], str]:
    """One of ``options``, exactly."""

    def check(value: Any) -> str:
        if value not in options:
            listed = ", ".join(show(o) for o in options)
            raise Bad(f"must be one of {listed}, got {show(value)}")
        chosen: str = value
        return chosen

    return check


def resolve(base_dir: str, path: str) -> str:
    """``path`` with ``~`` expanded, relative to ``base_dir`` (the directory
    of the file it was written in, not the working directory)."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def path(base_dir: str) -> Callable[[Any], str]:
    """A path, resolved against ``base_dir`` (see :func:`resolve`)."""

    def check(value: Any) -> str:
        return resolve(base_dir, string(value))

    return check


def named_tables(f: TomlFile, data: Mapping[str, Any], kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, table, body) of each well-formed ``[KIND.KEY]`` table; a key
    that is not a :data:`NAME`, or a value that is not a table, is a problem."""
    found = []
    for key, body in f.table(data, "", kind).items():
        table = f"{kind}.{key}"
        if not NAME.match(key):
            f.problem(table, "", f"{kind[:-1]} key may only contain {NAME_RULE}")
        elif not isinstance(body, dict):
            f.problem(kind, key, f"must be a table [{table}], got {show(body)}")
        else:
            found.append((key, table, body))
    return found
