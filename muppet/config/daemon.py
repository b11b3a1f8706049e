"""The ``[daemon]`` table of the daemon file: where state, outputs and the
database live, and which pipeline files to read (docs/configuration.md).

Every key has an embedded default under the XDG state directory, so that an
empty file (or no file) is a valid configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from .. import durations
from ..model import DaemonConfig
from ..tomlcheck import Bad, TomlFile, boolean, show, string, string_list
from .checks import path, resolve

__all__ = ["daemon_table", "default_daemon", "default_state_dir", "sqlite_path", "sqlite_url"]

DAEMON_KEYS = ("database", "state_dir", "output_dir", "pipelines", "standby", "keep_history", "keep_job_dirs")


def default_state_dir() -> str:
    """``$XDG_STATE_HOME/muppet``, else ``~/.local/state/muppet``."""
    # XDG Base Directory spec: a relative $XDG_STATE_HOME is invalid and ignored.
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "muppet")


def sqlite_url(path: str) -> str:
    """The URL of the SQLite database file ``path`` (absolute)."""
    # SQLAlchemy's spelling: "sqlite:///" + path, so an absolute path gives four
    # slashes. Either removeprefix("sqlite:///") or removeprefix("sqlite://")
    # then yields a path that opens the same file.
    return "sqlite:///" + path


def sqlite_path(database: str) -> str | None:
    """The file of a SQLite URL as :func:`muppet.config.load_config` returns
    it, or None.

    ``sqlite:////var/lib/muppet/muppet.db`` -> ``/var/lib/muppet/muppet.db``;
    a ``postgresql://`` URL gives None.
    """
    if not database.startswith("sqlite:///"):
        return None
    return database[len("sqlite:///") :]


def default_daemon() -> DaemonConfig:
    """The ``[daemon]`` table of an empty file."""
    state_dir = default_state_dir()
    return DaemonConfig(
        database=sqlite_url(os.path.join(state_dir, "muppet.db")),
        state_dir=state_dir,
        output_dir=os.path.join(state_dir, "output"),
    )


def _database(base_dir: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        url = string(value)
        scheme = url.partition(":")[0]
        if scheme == "sqlite":
            if not url.startswith("sqlite:///"):
                raise Bad(
                    "a SQLite URL is sqlite:///relative/path.db (relative to this file's "
                    f"directory) or sqlite:////absolute/path.db, got {show(url)}"
                )
            file = url[len("sqlite:///") :]
            if file in ("", ":memory:") or file.endswith("/"):
                raise Bad(f"must name a database file, got {show(url)}")
            return sqlite_url(resolve(base_dir, file))
        if scheme == "postgresql":
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 -- raises ValueError on a bad port
            except ValueError as e:
                raise Bad(f"not a valid PostgreSQL URL ({e}): {show(url)}") from None
            if not url.startswith("postgresql://"):
                raise Bad(f"a PostgreSQL URL is postgresql://user@host:port/dbname, got {show(url)}")
            return url
        raise Bad(f'must be a "sqlite:///..." or "postgresql://..." URL, got {show(url)}')

    return check


def retention(value: Any) -> str:
    """``keep_history``, ``keep_job_dirs``: an ISO 8601 duration longer than
    nothing ("P30D", "PT12H")."""
    text = string(value)
    try:
        parsed = durations.parse(text)
    except ValueError as exc:
        raise Bad(str(exc)) from None
    if durations.is_negative(parsed) or durations.is_zero(parsed):
        raise Bad(f"must be a duration longer than zero, such as \"P30D\", got {show(text)}")
    return text


def _longer(first: str, second: str) -> bool:
    """Whether the duration ``first`` reaches further back than ``second``."""
    moment = datetime(2000, 1, 1, tzinfo=UTC)
    return durations.before(moment, first) < durations.before(moment, second)


def daemon_table(f: TomlFile, data: Mapping[str, Any], base_dir: str) -> tuple[DaemonConfig, tuple[str, ...]]:
    """The ``[daemon]`` table, and its ``pipelines`` globs as written (the
    loader matches them relative to ``base_dir``, the file's directory)."""
    section = f.table(data, "", "daemon")
    f.unknown(section, "daemon", DAEMON_KEYS)
    defaults = default_daemon()
    state_dir = f.get(section, "daemon", "state_dir", path(base_dir), defaults.state_dir)
    output_dir = f.get(section, "daemon", "output_dir", path(base_dir), os.path.join(state_dir, "output"))
    database = f.get(
        section, "daemon", "database", _database(base_dir), sqlite_url(os.path.join(state_dir, "muppet.db"))
    )
    globs: tuple[str, ...] = f.get(section, "daemon", "pipelines", string_list(), ())
    standby: bool = f.get(section, "daemon", "standby", boolean, False)
    known = len(f.problems)
    keep_history: str = f.get(section, "daemon", "keep_history", retention, defaults.keep_history)
    keep_job_dirs: str = f.get(section, "daemon", "keep_job_dirs", retention, defaults.keep_job_dirs)
    # compared only when both are good: a bad one stands as its default here,
    # which the file does not say
    if len(f.problems) == known and _longer(keep_job_dirs, keep_history):
        # a job directory outliving its job's record would be found by no
        # one: its job is gone from the database (docs/operations.md, "What is kept")
        f.problem("daemon", "keep_job_dirs", f"must not be longer than keep_history ({show(keep_history)}), "
                  f"got {show(keep_job_dirs)}")
    daemon = DaemonConfig(
        database=database,
        state_dir=state_dir,
        output_dir=output_dir,
        pipeline_globs=tuple(resolve(base_dir, g) for g in globs),
        standby=standby,
        keep_history=keep_history,
        keep_job_dirs=keep_job_dirs,
    )
    return daemon, globs
