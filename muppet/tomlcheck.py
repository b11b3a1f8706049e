"""Reading a TOML configuration file and checking its values, every problem
collected and named by file, table and key ("muppet.toml: [api] listen: must
be HOST:PORT, got 8765").

Shared by the daemon's configuration (muppet.config) and muppet-sync's seed
and fetch files (sync.config). A check is a function of the raw value that
returns the checked value or raises :class:`Bad` with a message completing
"KEY: ..."; :class:`TomlFile` applies checks and collects :class:`Problem`s.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time
from typing import Any

import attrs

__all__ = [
    "MISSING",
    "Bad",
    "ConfigError",
    "Problem",
    "TomlFile",
    "any_string",
    "boolean",
    "integer",
    "is_int",
    "number",
    "read_toml",
    "show",
    "string",
    "string_list",
]


@attrs.frozen
class Problem:
    """One thing wrong in a configuration file.

    ``table`` is dotted (``steps.convert``), empty for the file's top level,
    and printed in brackets; an entry of an array of tables is named by its
    caller in full (``[[select]] #2``) and printed as it is. ``key`` is dotted
    inside the table (``retry.tries``), empty when the problem is the table or
    the file as a whole.
    """

    file: str
    table: str
    key: str
    message: str
    #: works, but probably not as meant: reported, never refused
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:"
        if self.table:
            where += f" {self.table}" if self.table.startswith("[") else f" [{self.table}]"
        if self.key:
            where += f" {self.key}:"
        return f"{where} {'warning: ' if self.warning else ''}{self.message}"


class ConfigError(Exception):
    """A configuration with problems; ``problems`` lists all of them, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


MISSING = object()


class Bad(Exception):
    """A value check failed; the message completes "KEY: ..."."""


def show(value: Any) -> str:
    """A value the way the user wrote it, near enough: TOML-ish, one line."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value: Any) -> bool:
    # TOML's true is a Python bool, and bool is a subclass of int: "jobs = true"
    # must not read as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    rule = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")

    def check(value: Any) -> int:
        if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
            raise Bad(f"must be {rule}, got {show(value)}")
        checked: int = value
        return checked

    return check


def number(minimum: float, *, exclusive: bool = False) -> Callable[[Any], float]:
    rule = f"a number {'>' if exclusive else '>='} {minimum:g}"

    def check(value: Any) -> float:
        # An int is a fine number ("interval = 5"); nan and inf are not.
        if not (is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise Bad(f"must be {rule}, got {show(value)}")
        if value < minimum or (exclusive and value == minimum):
            raise Bad(f"must be {rule}, got {show(value)}")
        return float(value)

    return check


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"must be a string, got {show(value)}")
    if not value.strip():
        raise Bad("must not be empty")
    return value


def any_string(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"must be a string, got {show(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"must be true or false, got {show(value)}")
    return value


def string_list(*, unique: bool = True, non_empty: bool = False) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise Bad(f"must be a list of strings, got {show(value)}")
        if non_empty and not value:
            raise Bad("must list at least one")
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise Bad(f"must be a list of non-empty strings, got {show(item)} in the list")
        if unique:
            twice = sorted({item for item in value if value.count(item) > 1})
            if twice:
                raise Bad(f"lists {show(twice[0])} more than once")
        return tuple(value)

    return check


class TomlFile:
    """Collects the problems of one file; ``display`` is how messages name it.
    ``problems``: a list to append to (several files, one error), else its
    own; ``warnings`` the same for what is allowed but probably not meant."""

    def __init__(
        self, display: str, problems: list[Problem] | None = None, warnings: list[Problem] | None = None,
    ) -> None:
        self.display = display
        self.problems: list[Problem] = [] if problems is None else problems
        self.warnings: list[Problem] = [] if warnings is None else warnings

    def problem(self, table: str, key: str, message: str) -> None:
        self.problems.append(Problem(self.display, table, key, message))

    def warn(self, table: str, key: str, message: str) -> None:
        self.warnings.append(Problem(self.display, table, key, message, warning=True))

    def unknown(self, data: Mapping[str, Any], table: str, allowed: Iterable[str], prefix: str = "") -> None:
        allowed = list(allowed)
        for key in data:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                more = f'; did you mean "{hint[0]}"?' if hint else ""
                expected = ", ".join(allowed) if allowed else "none"
                self.problem(table, prefix + key, f"unknown key{more} (expected: {expected})")

    def get(
        self,
        data: Mapping[str, Any],
        table: str,
        key: str,
        check: Callable[[Any], Any],
        default: Any = None,
        *,
        required: bool | str = False,
        prefix: str = "",
    ) -> Any:
        """``data[key]`` checked, or ``default``. ``required``: True, or what
        the key is for (said in the "missing" message)."""
        value = data.get(key, MISSING)
        if value is MISSING:
            if required:
                why = "required key" if required is True else f"({required})"
                self.problem(table, prefix + key, f"missing {why}")
            return default
        try:
            return check(value)
        except Bad as bad:
            self.problem(table, prefix + key, str(bad))
            return default

    def table(self, data: Mapping[str, Any], table: str, key: str, prefix: str = "") -> dict[str, Any]:
        """A sub-table (``[a.b]`` or an inline table), {} when absent or not a table."""
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(table, prefix + key, f"must be a table, got {show(value)}")
            return {}
        return value


def read_toml(path: str, display: str, problems: list[Problem]) -> dict[str, Any] | None:
    """The parsed file, or None with the reason appended to ``problems``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        problems.append(Problem(display, "", "", "no such file"))
        return None
    except IsADirectoryError:
        problems.append(Problem(display, "", "", "is a directory, not a TOML file"))
        return None
    except OSError as e:
        problems.append(Problem(display, "", "", f"cannot read: {e.strerror or e}"))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(Problem(display, "", "", f"not UTF-8 (byte {e.start}); TOML files are UTF-8"))
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message carries "(at line L, column C)".
        problems.append(Problem(display, "", "", f"invalid TOML: {e}"))
        return None
