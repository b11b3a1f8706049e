"""TOML configuration -> the frozen model, with every problem named.

Two kinds of file (docs/configuration.md is the reference):

* the daemon file (``muppet.toml``): ``[daemon]``, ``[api]``,
  ``[executors.NAME]``, ``[stakeholders.NAME]``; every key has an embedded
  default, so an empty file is a valid configuration;
* pipeline files, found through ``[daemon] pipelines`` globs: one
  ``[pipeline]``, its ``[steps.NAME]`` and more ``[stakeholders.NAME]``.

Validation never stops at the first problem: a pipeline author fixing a file
wants the whole list at once. Every check appends a :class:`Problem` naming the
file, the table and the key, and :func:`load_config` raises one
:class:`ConfigError` holding all of them.

Everything here reads files and blocks: under Trio call it from a worker thread
(or before ``trio.run``).
"""

from __future__ import annotations

import difflib
import glob
import ipaddress
import os
import re
import string
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import attrs
from croniter import croniter

from .model import (
    ROLES,
    ApiConfig,
    Config,
    DaemonConfig,
    DataFormat,
    Depends,
    ExecutorConfig,
    IndexConfig,
    Pipeline,
    Product,
    RetryPolicy,
    ServiceBackend,
    Stakeholder,
    Step,
    Token,
)
from .tomlcheck import MISSING as _MISSING
from .tomlcheck import Bad as _Bad
from .tomlcheck import ConfigError, Problem
from .tomlcheck import TomlFile as _File
from .tomlcheck import any_string as _any_string
from .tomlcheck import integer as _integer
from .tomlcheck import is_int as _is_int
from .tomlcheck import number as _number
from .tomlcheck import read_toml as _read_toml
from .tomlcheck import show as _show
from .tomlcheck import string as _string
from .tomlcheck import string_list as _string_list

__all__ = [
    "ConfigError",
    "Problem",
    "default_config",
    "load_config",
    "sqlite_path",
    "validate_paths",
]


# --- limits and vocabularies -------------------------------------------------

EXECUTOR_TYPES = ("local", "gridengine", "slurm")

#: keys of ``[steps.NAME] resources``; batch executors take the same keys (and
#: poll_interval) as defaults in ``[executors.NAME]``
RESOURCE_KEYS = (
    "queue",
    "partition",
    "slots",
    "cpus",
    "memory",
    "walltime",
    "submit_options",
    "parallel_environment",
    # beyond the list: muppet/executor/batch.py also reads these
    "account",
)
BATCH_EXECUTOR_KEYS = RESOURCE_KEYS + ("poll_interval", "submit_timeout", "max_submit_backoff")
#: jobs submitted at once to a batch system when max_jobs is not given; the
#: batch system queues, so this bounds MUPPET's share, not the machine's load
BATCH_MAX_JOBS = 8

#: one run creates all of its jobs in one transaction; a typo such as
#: ``jobs = 400000`` should not take the daemon down at the first cron firing
MAX_JOBS_PER_STEP = 100_000

#: names end up in directory names, environment values, log lines and the
#: API; keeping them to a portable set avoids quoting problems everywhere
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_NAME_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit"
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


def _default_state_dir() -> str:
    # XDG Base Directory spec: a relative $XDG_STATE_HOME is invalid and ignored.
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "muppet")


def _default_max_jobs() -> int:
    return os.cpu_count() or 2


def _default_executors() -> dict[str, ExecutorConfig]:
    return {"local": ExecutorConfig("local", "local", max_jobs=_default_max_jobs())}


def _sqlite_url(path: str) -> str:
    # SQLAlchemy's spelling: "sqlite:///" + path, so an absolute path gives four
    # slashes. Either removeprefix("sqlite:///") or removeprefix("sqlite://")
    # then yields a path that opens the same file.
    return "sqlite:///" + path


def sqlite_path(database: str) -> str | None:
    """The file of a SQLite URL as :func:`load_config` returns it, or None.

    ``sqlite:////var/lib/muppet/muppet.db`` -> ``/var/lib/muppet/muppet.db``;
    a ``postgresql://`` URL gives None.
    """
    if not database.startswith("sqlite:///"):
        return None
    return database[len("sqlite:///") :]


def default_config() -> Config:
    """The embedded defaults, no pipelines: ``muppet daemon`` without --config."""
    state_dir = _default_state_dir()
    return Config(
        daemon=DaemonConfig(
            database=_sqlite_url(os.path.join(state_dir, "muppet.db")),
            state_dir=state_dir,
            output_dir=os.path.join(state_dir, "output"),
        ),
        api=ApiConfig(),
        executors=_default_executors(),
        pipelines={},
        stakeholders={},
        formats=DEFAULT_FORMATS,
        backends={"local": ServiceBackend("local", "This daemon's output_dir", "file://" + os.path.join(state_dir, "output"))},
        index=IndexConfig(outputs_backend="local"),
        source="",
    )


# --- reading values ----------------------------------------------------------

def _string_or_integer(value: Any) -> str | int:
    if _is_int(value):
        if value < 1:
            raise _Bad(f"must be a string or an integer >= 1, got {_show(value)}")
        return value
    if isinstance(value, str) and value.strip():
        return value
    raise _Bad(f"must be a string or an integer >= 1, got {_show(value)}")


def _name(kind: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        value = _string(value)
        if not _NAME.match(value):
            raise _Bad(f"{kind} name {_show(value)} may only contain {_NAME_RULE}")
        return value

    return check


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            listed = ", ".join(_show(o) for o in options)
            raise _Bad(f"must be one of {listed}, got {_show(value)}")
        return value

    return check


def _timezone(value: Any) -> str:
    value = _string(value)
    if value == "UTC":  # works even where the system has no tz database
        return value
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        hint = difflib.get_close_matches(value, zoneinfo.available_timezones(), n=1)
        more = f'; did you mean "{hint[0]}"?' if hint else ' (use an IANA name such as "Europe/Oslo")'
        raise _Bad(f"unknown time zone {_show(value)}{more}") from None
    return value


def _listen(value: Any) -> str:
    value = _string(value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _Bad(f"must be HOST:PORT with a port 0-65535 (such as \"127.0.0.1:8765\"), got {_show(value)}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise _Bad(f"an IPv6 address goes in brackets (\"[::1]:8765\"), got {_show(value)}")
    if host.strip("[]") == "" or any(c.isspace() for c in host):
        raise _Bad(f"must be HOST:PORT, got {_show(value)}")
    return value


def _resolve(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


# --- the daemon file ---------------------------------------------------------

_DAEMON_TABLES = ("daemon", "api", "executors", "stakeholders", "products", "formats", "backends", "index")
_PIPELINE_TABLES = ("stakeholders", "pipeline", "steps")


def _database(base_dir: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        value = _string(value)
        scheme = value.partition(":")[0]
        if scheme == "sqlite":
            if not value.startswith("sqlite:///"):
                raise _Bad(
                    "a SQLite URL is sqlite:///relative/path.db (relative to this file's "
                    f"directory) or sqlite:////absolute/path.db, got {_show(value)}"
                )
            path = value[len("sqlite:///") :]
            if path in ("", ":memory:") or path.endswith("/"):
                raise _Bad(f"must name a database file, got {_show(value)}")
            return _sqlite_url(_resolve(base_dir, path))
        if scheme == "postgresql":
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 -- raises ValueError on a bad port
            except ValueError as e:
                raise _Bad(f"not a valid PostgreSQL URL ({e}): {_show(value)}") from None
            if not value.startswith("postgresql://"):
                raise _Bad(f"a PostgreSQL URL is postgresql://user@host:port/dbname, got {_show(value)}")
            return value
        raise _Bad(f'must be a "sqlite:///..." or "postgresql://..." URL, got {_show(value)}')

    return check


def _path(base_dir: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        return _resolve(base_dir, _string(value))

    return check


def _options(f: _File, data: Mapping[str, Any], table: str, prefix: str, keys: Sequence[str]) -> dict[str, Any]:
    """Executor resources; shared by [executors.NAME] and [steps.NAME] resources."""
    checks: dict[str, Callable[[Any], Any]] = {
        "queue": _string,
        "partition": _string,
        "parallel_environment": _string,
        "account": _string,
        "slots": _integer(1),
        "cpus": _integer(1),
        # "4G" or 4096 (MB), "01:30:00" or 5400 (s): the batch system's own syntax
        "memory": _string_or_integer,
        "walltime": _string_or_integer,
        "submit_options": _string_list(unique=False),
        "poll_interval": _number(0, exclusive=True),
        "submit_timeout": _number(0, exclusive=True),
        "max_submit_backoff": _number(0, exclusive=True),
    }
    options: dict[str, Any] = {}
    for key in keys:
        if key in data:
            value = f.get(data, table, key, checks[key], _MISSING, prefix=prefix)
            if value is not _MISSING:
                options[key] = list(value) if key == "submit_options" else value
    return options


def _executors(f: _File, data: Mapping[str, Any]) -> dict[str, ExecutorConfig]:
    # The embedded "local" stays unless the file defines its own "local": steps
    # default to it, and a file adding a batch system should not lose it.
    executors = _default_executors()
    section = f.table(data, "", "executors")
    for name, body in section.items():
        table = f"executors.{name}"
        if not _NAME.match(name):
            f.problem(table, "", f"executor name may only contain {_NAME_RULE}")
            continue
        if not isinstance(body, dict):
            f.problem("executors", name, f"must be a table [{table}], got {_show(body)}")
            continue
        kind = f.get(body, table, "type", _choice(*EXECUTOR_TYPES), required=True)
        if kind is None:
            # Reported; still define the name so that steps using it do not
            # add an "unknown executor" for each of them.
            executors[name] = ExecutorConfig(name, "local")
            continue
        option_keys = BATCH_EXECUTOR_KEYS if kind != "local" else ()
        f.unknown(body, table, ("type", "max_jobs") + option_keys)
        default_max = _default_max_jobs() if kind == "local" else BATCH_MAX_JOBS
        max_jobs = f.get(body, table, "max_jobs", _integer(1), default_max)
        options = _options(f, body, table, "", option_keys)
        executors[name] = ExecutorConfig(name, kind, max_jobs=max_jobs, options=options)
    return executors


def _stakeholders(f: _File, data: Mapping[str, Any]) -> list[tuple[Stakeholder, str]]:
    found = []
    for key, body in f.table(data, "", "stakeholders").items():
        table = f"stakeholders.{key}"
        if not _NAME.match(key):
            f.problem(table, "", f"stakeholder key may only contain {_NAME_RULE}")
            continue
        if not isinstance(body, dict):
            f.problem("stakeholders", key, f"must be a table [{table}], got {_show(body)}")
            continue
        f.unknown(body, table, ("name", "email"))
        name = f.get(body, table, "name", _string, key)
        email = f.get(body, table, "email", _any_string, "")
        if email and ("@" not in email or any(c.isspace() for c in email)):
            f.problem(table, "email", f"not an e-mail address: {_show(email)}")
        found.append((Stakeholder(key, name, email), f.display))
    return found


# --- the API and its tokens -------------------------------------------------------


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_show(value)}")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as in ``[api] listen``) only accepts connections from
    this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _readable_file(base_dir: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        path = _resolve(base_dir, _string(value))
        if not os.path.isfile(path):
            raise _Bad(f"no such file: {path}")
        if not os.access(path, os.R_OK):
            raise _Bad(f"cannot read {path}")
        return path

    return check


_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def _tokens(path: str, problems: list[Problem]) -> dict[str, Token]:
    """The ``[tokens.NAME]`` tables of a tokens file, by secret digest."""
    data = _read_toml(path, path, problems)
    if data is None:
        return {}
    f = _File(path, problems)
    f.unknown(data, "", ("tokens",))
    tokens: dict[str, Token] = {}
    for name, body in f.table(data, "", "tokens").items():
        table = f"tokens.{name}"
        if not isinstance(body, dict):
            f.problem("tokens", name, f"must be a table [{table}], got {_show(body)}")
            continue
        f.unknown(body, table, ("role", "sha256"))
        role = f.get(body, table, "role", _choice(*ROLES), None, required=True)
        digest = f.get(body, table, "sha256", _string, None, required=True)
        if digest is not None and not _SHA256.match(digest.lower()):
            f.problem(table, "sha256", "must be 64 hexadecimal digits: the SHA-256 of the secret (sha256sum), never the secret itself")
            continue
        if role is None or digest is None:
            continue
        digest = digest.lower()
        if digest in tokens:
            f.problem(table, "sha256", f"the same secret as [tokens.{tokens[digest].name}]")
            continue
        tokens[digest] = Token(name, role, digest)
    return tokens


def _api(f: _File, data: Mapping[str, Any], base_dir: str) -> ApiConfig:
    section = f.table(data, "", "api")
    f.unknown(section, "api", ("listen", "tokens_file", "open_reads", "tls_cert", "tls_key", "max_message_bytes"))
    default = ApiConfig()
    listen = f.get(section, "api", "listen", _listen, default.listen)
    tokens_file = f.get(section, "api", "tokens_file", _readable_file(base_dir), "")
    tokens = _tokens(tokens_file, f.problems) if tokens_file else {}
    tls_cert = f.get(section, "api", "tls_cert", _readable_file(base_dir), "")
    tls_key = f.get(section, "api", "tls_key", _readable_file(base_dir), "")
    if bool(tls_cert) != bool(tls_key) and not (("tls_cert" in section) and ("tls_key" in section)):
        f.problem("api", "tls_key" if tls_cert else "tls_cert", "tls_cert and tls_key go together")
    api = ApiConfig(
        listen=listen,
        tokens_file=tokens_file,
        tokens=tokens,
        open_reads=f.get(section, "api", "open_reads", _boolean, False),
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_message_bytes=f.get(section, "api", "max_message_bytes", _integer(1024, 1 << 30), default.max_message_bytes),
    )
    if "tokens_file" not in section and not is_loopback(api.host):
        f.problem(
            "api", "listen",
            f"{_show(listen)} is reachable from other hosts, but without [api] tokens_file anyone "
            "could write to the index and steer jobs; set tokens_file, or listen on 127.0.0.1",
        )
    return api


# --- the index: products, formats, service backends ------------------------------

#: the grid and time-step metadata a product may carry (Productstatus's fields)
PRODUCT_METADATA_KEYS = (
    "projection", "grid_resolution", "grid_resolution_units", "bounding_box",
    "time_steps", "time_step_hours",
)
_PRODUCT_KEYS = ("name", "contact", "parents", "file_count", "operational", "lifetime_hours") + PRODUCT_METADATA_KEYS

#: formats every daemon knows; [formats.X] may rename them or add more
DEFAULT_FORMATS = {
    "netcdf": DataFormat("netcdf", "NetCDF"),
    "grib": DataFormat("grib", "GRIB"),
}


def _metadata_value(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, list)):
        raise _Bad(f"must be a string, a number or a list, got {_show(value)}")
    return value


def _url(value: Any) -> str:
    value = _string(value)
    parts = urlsplit(value)
    if not parts.scheme or (parts.scheme != "file" and not parts.netloc):
        raise _Bad(f"must be a URL such as \"file:///lustre/a\" or \"https://host/path\", got {_show(value)}")
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise _Bad(f"a file:// URL needs an absolute path, got {_show(value)}")
    return value.rstrip("/") or value


def _named_tables(f: _File, data: Mapping[str, Any], kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(slug, table, body) of each well-formed [KIND.SLUG] table."""
    found = []
    for slug, body in f.table(data, "", kind).items():
        table = f"{kind}.{slug}"
        if not _NAME.match(slug):
            f.problem(table, "", f"{kind[:-1]} key may only contain {_NAME_RULE}")
        elif not isinstance(body, dict):
            f.problem(kind, slug, f"must be a table [{table}], got {_show(body)}")
        else:
            found.append((slug, table, body))
    return found


def _index(
    f: _File, data: Mapping[str, Any], output_dir: str
) -> tuple[dict[str, Product], dict[str, DataFormat], dict[str, ServiceBackend], IndexConfig]:
    products: dict[str, Product] = {}
    for slug, table, body in _named_tables(f, data, "products"):
        f.unknown(body, table, _PRODUCT_KEYS)
        metadata = {
            key: f.get(body, table, key, _metadata_value) for key in PRODUCT_METADATA_KEYS if key in body
        }
        products[slug] = Product(
            slug=slug,
            name=f.get(body, table, "name", _string, slug, required=True),
            contact=f.get(body, table, "contact", _string, ""),
            parents=f.get(body, table, "parents", _string_list(), ()),
            file_count=f.get(body, table, "file_count", _integer(1, 1_000_000), 1),
            operational=f.get(body, table, "operational", _boolean, False),
            lifetime_hours=f.get(body, table, "lifetime_hours", _number(0, exclusive=True), None),
            metadata=metadata,
        )
    for slug, product in products.items():
        for parent in product.parents:
            if parent not in products:
                f.problem(f"products.{slug}", "parents", f"unknown product {_show(parent)}")
            elif parent == slug:
                f.problem(f"products.{slug}", "parents", "a product cannot be its own parent")

    formats = dict(DEFAULT_FORMATS)
    for slug, table, body in _named_tables(f, data, "formats"):
        f.unknown(body, table, ("name",))
        formats[slug] = DataFormat(slug, f.get(body, table, "name", _string, slug, required=True))

    backends: dict[str, ServiceBackend] = {}
    for slug, table, body in _named_tables(f, data, "backends"):
        f.unknown(body, table, ("name", "url"))
        backends[slug] = ServiceBackend(
            slug,
            f.get(body, table, "name", _string, slug, required=True),
            f.get(body, table, "url", _url, "", required=True),
        )

    section = f.table(data, "", "index")
    f.unknown(section, "index", ("outputs_backend", "expiry_interval", "delete_expired_files"))
    outputs_backend = f.get(section, "index", "outputs_backend", _string, "")
    if outputs_backend and outputs_backend not in backends:
        known = ", ".join(sorted(backends)) or "none"
        f.problem("index", "outputs_backend", f"unknown backend {_show(outputs_backend)} (declared: {known})")
    elif outputs_backend:
        root = backends[outputs_backend].local_root
        # step outputs land in output_dir and are indexed under the backend's
        # URL: the two must name the same directory, or the index lies
        if root is not None and os.path.normpath(root) != os.path.normpath(output_dir):
            f.problem(
                "index", "outputs_backend",
                f"backend {_show(outputs_backend)} is the directory {root}, but step outputs go to "
                f"[daemon] output_dir {output_dir}; make them the same",
            )
    if not outputs_backend:
        # the daemon's own outputs are always indexed somewhere: by default on
        # a backend named after what it is, the output directory itself
        outputs_backend = "local"
        backends.setdefault("local", ServiceBackend("local", "This daemon's output_dir", "file://" + output_dir))
    index = IndexConfig(
        outputs_backend=outputs_backend,
        expiry_interval=f.get(section, "index", "expiry_interval", _number(0.1), 60.0),
        delete_expired_files=f.get(section, "index", "delete_expired_files", _boolean, False),
    )
    return products, formats, backends, index


# --- pipeline files ----------------------------------------------------------

_PIPELINE_KEYS = ("name", "owner", "requires", "produces", "cron", "timezone")
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
)


def _cron(timezone_name: str | None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        value = _string(value)
        expr = " ".join(value.split())
        if expr.startswith("@") and expr in _CRON_ALIASES:
            expr = _CRON_ALIASES[expr]
        elif expr.startswith("@"):
            raise _Bad(f"{_show(value)} is not a cron expression: known aliases are {', '.join(_CRON_ALIASES)}")
        if len(expr.split()) != 5:
            raise _Bad(
                f"{_show(value)} is not a cron expression: it needs 5 fields "
                "(minute hour day-of-month month day-of-week)"
            )
        if not croniter.is_valid(expr):
            raise _Bad(f"{_show(value)} is not a valid cron expression")
        # Valid syntax can still never fire ("0 0 30 2 *"); the cron task steps
        # both ways, so try both here where the error names the file.
        zone = UTC
        if timezone_name and timezone_name != "UTC":
            zone = zoneinfo.ZoneInfo(timezone_name)
        start = SAMPLE_REFERENCE_TIME.astimezone(zone)
        try:
            croniter(expr, start).get_next(datetime)
            croniter(expr, start).get_prev(datetime)
        except Exception as e:  # croniter's errors have no common public base
            raise _Bad(f"{_show(value)} never fires ({e})") from None
        return expr

    return check


def _env(f: _File, data: Mapping[str, Any], table: str) -> dict[str, str]:
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
            f.problem(table, where, f'must be a string, got {_show(value)} (quote it: "{value}")')
        else:
            env[key] = value
    return env


def _output_fields(pattern: str) -> list[str]:
    """Root names of the format fields ("reference_time" of "{reference_time.year}")."""
    roots = []
    for _, field, spec, _ in string.Formatter().parse(pattern):
        if field is not None:
            roots.append(re.split(r"[.\[]", field, maxsplit=1)[0])
            if spec and "{" in spec:
                roots.extend(_output_fields(spec))
    return roots


def _output(pattern: str) -> str:
    """One output pattern, checked by formatting it as a job's would be."""
    try:
        roots = _output_fields(pattern)
    except ValueError as e:
        raise _Bad(f"{_show(pattern)}: bad format string ({e}); write a literal brace as {{{{ or }}}}") from None
    for root in roots:
        if root not in ("reference_time", "index"):
            got = f"{{{root}}}" if root else "{} (a positional field)"
            raise _Bad(f"{_show(pattern)}: only {{reference_time}} and {{index}} can be used, got {got}")
    try:
        sample = pattern.format(reference_time=SAMPLE_REFERENCE_TIME, index=0)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
        raise _Bad(f"{_show(pattern)}: cannot be formatted with a reference time and index 0 ({e})") from None
    if sample.startswith("/") or PurePosixPath(pattern).is_absolute():
        raise _Bad(f"{_show(pattern)}: must be relative (to the job's scratch and to [daemon] output_dir)")
    if ".." in PurePosixPath(sample).parts or ".." in PurePosixPath(pattern).parts:
        raise _Bad(f"{_show(pattern)}: must not contain '..' (it would leave the scratch and output directories)")
    if sample.strip() in ("", ".") or sample.endswith("/"):
        raise _Bad(f"{_show(pattern)}: must name a file or directory below the scratch directory")
    return pattern


def _outputs(f: _File, data: Mapping[str, Any], table: str) -> tuple[str, ...]:
    # Each pattern on its own, so that one bad one does not hide the others.
    good = []
    for pattern in f.get(data, table, "outputs", _string_list(), ()):
        try:
            good.append(_output(pattern))
        except _Bad as bad:
            f.problem(table, "outputs", str(bad))
    return tuple(good)


def _retry(f: _File, data: Mapping[str, Any], table: str) -> RetryPolicy:
    if "retry" not in data:
        return RetryPolicy()
    body = f.table(data, table, "retry")
    f.unknown(body, table, ("tries", "interval", "factor"), "retry.")
    return RetryPolicy(
        tries=f.get(body, table, "tries", _integer(1), 1, prefix="retry."),
        interval=f.get(body, table, "interval", _number(0), 0.0, prefix="retry."),
        factor=f.get(body, table, "factor", _number(1), 1.0, prefix="retry."),
    )


def _step(f: _File, name: str, body: Mapping[str, Any]) -> Step:
    table = f"steps.{name}"
    f.unknown(body, table, _STEP_KEYS)
    resources = {}
    if "resources" in body:
        raw = f.table(body, table, "resources")
        f.unknown(raw, table, RESOURCE_KEYS, "resources.")
        resources = _options(f, raw, table, "resources.", RESOURCE_KEYS)
    depends = f.get(body, table, "depends", _choice("all", "each"), "all")
    return Step(
        name=name,
        command=f.get(body, table, "command", _string, "", required=True),
        parents=f.get(body, table, "parents", _string_list(), ()),
        jobs=f.get(body, table, "jobs", _integer(1, MAX_JOBS_PER_STEP), 1),
        depends=Depends(depends),
        concurrency=f.get(body, table, "concurrency", _integer(1), None),
        conflicts=f.get(body, table, "conflicts", _string_list(), ()),
        env=_env(f, body, table),
        executor=f.get(body, table, "executor", _string, "local"),
        outputs=_outputs(f, body, table),
        retry=_retry(f, body, table),
        resources=resources,
        product=f.get(body, table, "product", _name("product"), ""),
    )


def _cycles(steps: Mapping[str, Step]) -> list[list[str]]:
    """Cycles of the parents graph, each as [a, b, ..., a] with a parent before its child."""
    children: dict[str, list[str]] = {name: [] for name in steps}
    for step in steps.values():
        for parent in step.parents:
            if parent in children and parent != step.name:
                children[parent].append(step.name)
    colour = dict.fromkeys(steps, 0)  # 0 new, 1 on the path, 2 done
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    for root in steps:  # file order, so messages are stable
        if colour[root]:
            continue
        path = [root]
        colour[root] = 1
        stack = [iter(children[root])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour[child] == 1:
                cycle = path[path.index(child) :] + [child]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append(iter(children[child]))
    return found


def _topological(steps: Mapping[str, Step]) -> dict[str, Step]:
    """Parents first; among steps ready at the same time, the one first in the file."""
    placed: dict[str, Step] = {}
    remaining = list(steps.values())
    while remaining:
        for i, step in enumerate(remaining):
            if all(p in placed or p not in steps for p in step.parents):
                placed[step.name] = remaining.pop(i)
                break
        else:  # a cycle, already reported: keep the rest in file order
            placed.update((s.name, s) for s in remaining)
            break
    return placed


def _graph(f: _File, steps: Mapping[str, Step]) -> None:
    for step in steps.values():
        table = f"steps.{step.name}"
        for key, names in (("parents", step.parents), ("conflicts", step.conflicts)):
            for other in names:
                if other == step.name:
                    f.problem(table, key, f"a step cannot name itself ({_show(other)})")
                elif other not in steps:
                    hint = difflib.get_close_matches(other, list(steps), n=1)
                    more = f'; did you mean "{hint[0]}"?' if hint else ""
                    f.problem(table, key, f"unknown step {_show(other)}{more} (steps: {', '.join(steps)})")
        if step.depends is Depends.EACH:
            for parent in step.parents:
                if parent in steps and parent != step.name and steps[parent].jobs != step.jobs:
                    f.problem(
                        table,
                        "depends",
                        f'"each" needs equal job counts: this step has jobs = {step.jobs}, '
                        f"parent {_show(parent)} has jobs = {steps[parent].jobs}",
                    )
        if step.jobs > 1:
            for pattern in step.outputs:
                if "index" not in _output_fields(pattern):
                    f.problem(
                        table,
                        "outputs",
                        f"{_show(pattern)}: with jobs = {step.jobs} every output needs {{index}}, "
                        "or the jobs overwrite each other's files",
                    )
    for cycle in _cycles(steps):
        f.problem(f"steps.{cycle[0]}", "parents", f"cycle in the steps' parents: {' -> '.join(cycle)}")


@attrs.frozen
class _Loaded:
    """A pipeline read from one file, before the checks that span files."""

    pipeline: Pipeline
    display: str
    #: the file's own checks found nothing, so cross-file checks are meaningful
    clean: bool


def _pipeline(f: _File, data: Mapping[str, Any], source: str) -> Pipeline:
    for key, value in data.items():
        if key not in _PIPELINE_TABLES:
            if isinstance(value, dict):
                tables = ", ".join(f"[{t}]" for t in _PIPELINE_TABLES)
                f.problem(key, "", f"unknown table (a pipeline file has {tables})")
            else:
                f.problem("", key, "unknown key at the top level (pipeline keys go in [pipeline])")
    # Without the table, its missing keys would only repeat the one problem.
    has_head = "pipeline" in data
    if not has_head:
        f.problem("pipeline", "", "missing required table")
    head = f.table(data, "", "pipeline")
    f.unknown(head, "pipeline", _PIPELINE_KEYS)
    name = f.get(head, "pipeline", "name", _name("pipeline"), "", required=has_head)
    owner = f.get(head, "pipeline", "owner", _string, "", required=has_head)
    zone = f.get(head, "pipeline", "timezone", _timezone, None)
    cron = f.get(head, "pipeline", "cron", _string_list(), ())
    # Each expression on its own, so that one bad one does not hide the others.
    checked_cron = []
    for expr in cron:
        try:
            checked_cron.append(_cron(zone)(expr))
        except _Bad as bad:
            f.problem("pipeline", "cron", str(bad))

    steps: dict[str, Step] = {}
    raw_steps = f.table(data, "", "steps")
    if not raw_steps:
        f.problem("steps", "", "a pipeline needs at least one [steps.NAME] table")
    for step_name, body in raw_steps.items():
        if not _NAME.match(step_name):
            f.problem(f"steps.{step_name}", "", f"step name may only contain {_NAME_RULE}")
            continue
        if not isinstance(body, dict):
            f.problem("steps", step_name, f"must be a table [steps.{step_name}], got {_show(body)}")
            continue
        steps[step_name] = _step(f, step_name, body)
    _graph(f, steps)
    return Pipeline(
        name=name,
        owner=owner,
        steps=_topological(steps),
        requires=f.get(head, "pipeline", "requires", _string_list(), ()),
        produces=f.get(head, "pipeline", "produces", _string_list(), ()),
        cron=tuple(checked_cron),
        timezone=zone or "UTC",
        source=source,
    )


# --- putting files together ----------------------------------------------------


class _Loader:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.stakeholders: dict[str, tuple[Stakeholder, str]] = {}
        self.loaded: list[_Loaded] = []
        #: the daemon file's products; None while checking pipeline files alone
        self.products: Mapping[str, Product] | None = None

    def add_stakeholders(self, f: _File, found: list[tuple[Stakeholder, str]]) -> None:
        for stakeholder, display in found:
            first = self.stakeholders.get(stakeholder.key)
            if first is None:
                self.stakeholders[stakeholder.key] = (stakeholder, display)
            elif first[0] != stakeholder:
                f.problem(
                    f"stakeholders.{stakeholder.key}",
                    "",
                    f"defined differently in {first[1]} (name {_show(first[0].name)}, "
                    f"email {_show(first[0].email)}); stakeholders are shared by all files",
                )

    def pipeline_file(self, path: str, display: str, data: dict[str, Any] | None = None) -> None:
        if data is None:
            data = _read_toml(path, display, self.problems)
            if data is None:
                return
        before = len(self.problems)
        f = _File(display, self.problems)
        self.add_stakeholders(f, _stakeholders(f, data))
        pipeline = _pipeline(f, data, os.path.abspath(path))
        self.loaded.append(_Loaded(pipeline, display, clean=len(self.problems) == before))

    def cross_check(self, executors: Mapping[str, ExecutorConfig] | None) -> dict[str, Pipeline]:
        """Checks that span files.

        ``executors`` None: pipeline files checked without their daemon file,
        where owners and executor names may be defined and cannot be checked.
        """
        pipelines: dict[str, Pipeline] = {}
        first_file: dict[str, str] = {}
        destinations: dict[str, tuple[str, str, int]] = {}
        for item in self.loaded:
            f = _File(item.display, self.problems)
            p = item.pipeline
            if p.name:
                if p.name in first_file:
                    f.problem("pipeline", "name", f"pipeline {_show(p.name)} is also defined in {first_file[p.name]}")
                else:
                    first_file[p.name] = item.display
                    pipelines[p.name] = p
            if p.owner and p.owner not in self.stakeholders and executors is not None:
                known = ", ".join(sorted(self.stakeholders)) or "none"
                f.problem(
                    "pipeline",
                    "owner",
                    f"unknown stakeholder {_show(p.owner)}; define [stakeholders.{p.owner}] "
                    f"in this file or another (known: {known})",
                )
            self._products(f, p)
            for step in p.steps.values():
                if executors is not None and step.executor not in executors:
                    f.problem(
                        f"steps.{step.name}",
                        "executor",
                        f"unknown executor {_show(step.executor)} (defined: {', '.join(executors)})",
                    )
                if item.clean:
                    self._destinations(f, p, step, destinations)
        return pipelines

    def _products(self, f: _File, p: Pipeline) -> None:
        for key in ("requires", "produces"):
            for slug in getattr(p, key):
                if self.products is not None and slug not in self.products:
                    known = ", ".join(sorted(self.products)) or "none"
                    f.problem("pipeline", key, f"unknown product {_show(slug)}; declare [products.{slug}] in the daemon file (known: {known})")
        for step in p.steps.values():
            table = f"steps.{step.name}"
            if step.product and step.product not in p.produces:
                f.problem(table, "product", f"{_show(step.product)} is not in the pipeline's produces ({', '.join(p.produces) or 'none'})")
            elif step.outputs and not step.product and len(p.produces) > 1:
                f.problem(table, "product", f"the pipeline produces {len(p.produces)} products; say which one this step's outputs are")

    def _destinations(self, f: _File, p: Pipeline, step: Step, seen: dict[str, tuple[str, str, int]]) -> None:
        # Two jobs writing one destination would replace each other's file.
        # Checked at one sample reference time over the first indices: that
        # catches equal patterns, the usual copy-and-paste mistake.
        for pattern in step.outputs:
            for index in range(min(step.jobs, 1000)):
                dest = os.path.normpath(pattern.format(reference_time=SAMPLE_REFERENCE_TIME, index=index))
                here = (p.name, step.name, index)
                other = seen.setdefault(dest, here)
                if other != here:
                    f.problem(
                        f"steps.{step.name}",
                        "outputs",
                        f"{_show(pattern)} gives the same destination {_show(dest)} as "
                        f"pipeline {_show(other[0])} step {_show(other[1])} (index {other[2]})",
                    )
                    break


def _daemon_file(loader: _Loader, path: str, display: str, data: dict[str, Any]) -> tuple[Config, list[str]]:
    """Reads a daemon file and the pipeline files its globs match; returns them too."""
    base_dir = os.path.dirname(os.path.abspath(path))
    f = _File(display, loader.problems)
    for key, value in data.items():
        if key not in _DAEMON_TABLES:
            if key in ("pipeline", "steps"):
                f.problem(key, "", "belongs in a pipeline file, listed by [daemon] pipelines")
            elif isinstance(value, dict):
                f.problem(key, "", f"unknown table (a daemon file has {', '.join(f'[{t}]' for t in _DAEMON_TABLES)})")
            else:
                f.problem("", key, "unknown key at the top level (daemon keys go in [daemon])")

    section = f.table(data, "", "daemon")
    f.unknown(section, "daemon", ("database", "state_dir", "output_dir", "pipelines"))
    defaults = default_config().daemon
    state_dir = f.get(section, "daemon", "state_dir", _path(base_dir), defaults.state_dir)
    output_dir = f.get(section, "daemon", "output_dir", _path(base_dir), os.path.join(state_dir, "output"))
    database = f.get(
        section, "daemon", "database", _database(base_dir), _sqlite_url(os.path.join(state_dir, "muppet.db"))
    )
    globs = f.get(section, "daemon", "pipelines", _string_list(), ())

    api = _api(f, data, base_dir)

    executors = _executors(f, data)
    loader.add_stakeholders(f, _stakeholders(f, data))

    files: list[str] = []
    seen: set[str] = set()
    display_dir = os.path.dirname(display)
    for pattern in globs:
        expanded = os.path.expanduser(pattern)
        if os.path.isabs(expanded):
            matches = [(m, m) for m in sorted(glob.glob(expanded, recursive=True))]
        else:
            matches = [
                (os.path.join(base_dir, m), os.path.join(display_dir, m))
                for m in sorted(glob.glob(expanded, root_dir=base_dir, recursive=True))
            ]
        if not matches and not any(c in expanded for c in "*?["):
            # A literal file name that is not there is a mistake; a pattern
            # that matches nothing is an empty directory of pipelines.
            f.problem("daemon", "pipelines", f"{_show(pattern)}: no such file (relative to {base_dir})")
        for full, shown in matches:
            real = os.path.realpath(full)
            if real in seen or os.path.isdir(full):
                continue
            seen.add(real)
            files.append(real)
            loader.pipeline_file(full, shown)

    products, formats, backends, index = _index(f, data, output_dir)
    loader.products = products
    pipelines = loader.cross_check(executors)
    for key, product in products.items():
        if product.contact and product.contact not in loader.stakeholders:
            known = ", ".join(sorted(loader.stakeholders)) or "none"
            f.problem(f"products.{key}", "contact", f"unknown stakeholder {_show(product.contact)} (known: {known})")
    config = Config(
        daemon=DaemonConfig(
            database=database,
            state_dir=state_dir,
            output_dir=output_dir,
            pipeline_globs=tuple(_resolve(base_dir, g) for g in globs),
        ),
        api=api,
        executors=executors,
        pipelines=pipelines,
        stakeholders={key: s for key, (s, _) in loader.stakeholders.items()},
        products=products,
        formats=formats,
        backends=backends,
        index=index,
        source=os.path.abspath(path),
    )
    return config, files


def _is_pipeline_file(data: Mapping[str, Any]) -> bool:
    return "pipeline" in data or "steps" in data


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a daemon file and every pipeline file its globs match.

    Relative paths (``state_dir``, ``output_dir``, ``sqlite:///relative.db``,
    the pipeline globs) are relative to the file's directory. Raises
    :class:`ConfigError` with every problem found, in every file. Blocks.
    """
    display = os.fspath(path)
    loader = _Loader()
    data = _read_toml(display, display, loader.problems)
    if data is None:
        raise ConfigError(loader.problems)
    if "pipeline" in data and not any(k in data for k in ("daemon", "api", "executors")):
        raise ConfigError(
            [Problem(display, "", "", "this is a pipeline file; give the daemon file (muppet.toml) that lists it")]
        )
    config, _ = _daemon_file(loader, display, display, data)
    if loader.problems:
        raise ConfigError(loader.problems)
    return config


def validate_paths(paths: Sequence[str]) -> list[Problem]:
    """Every problem in the given files, for ``muppet validate PATH...``.

    A file with a ``[pipeline]`` (or ``[steps]``) table is a pipeline file;
    any other file is a daemon file, validated with all the pipeline files it
    lists, exactly as :func:`load_config` would. Pipeline files given that no
    given daemon file lists are validated together, on their own: everything
    in them is checked, stakeholders are shared among them, pipeline names must
    differ, but an owner defined in none of them and executor names are not
    reported, since they live in the daemon file. Validate the daemon file to
    check those. An empty list means all is well.
    """
    problems: list[Problem] = []
    covered: set[str] = set()
    lone: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        data = _read_toml(path, path, problems)
        if data is None:
            continue
        if _is_pipeline_file(data):
            lone.append((path, data))
            continue
        loader = _Loader()
        _, files = _daemon_file(loader, path, path, data)
        covered.update(files)
        problems.extend(loader.problems)

    loader = _Loader()
    for path, data in lone:
        if os.path.realpath(path) not in covered:
            loader.pipeline_file(path, path, data)
    loader.cross_check(None)
    problems.extend(loader.problems)

    unique: list[Problem] = []
    for problem in problems:  # a file given twice reports once
        if problem not in unique:
            unique.append(problem)
    return unique
