"""The ``muppet`` command: run the daemon, check configuration, steer a running
daemon through its websocket API. docs/cli.md describes every command."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, NoReturn

import click
import trio

from .api import client as api_client
from .api.protocol import EVENT_KINDS, RpcError
from .model import JobState, RunState

#: the tail the daemon keeps of each stream (model.LOG_TAIL_BYTES), and the
#: tail `muppet logs` shows
LOG_TAIL_BYTES = 64 * 1024

API_ENV = "MUPPET_API"
TOKEN_ENV = "MUPPET_TOKEN"


def _remember_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta["muppet.token"] = value or None


def _api_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--api URL and --token SECRET for every command that talks to the daemon."""
    command = click.option(
        "--token",
        metavar="SECRET",
        envvar=TOKEN_ENV,
        show_envvar=True,
        expose_value=False,
        callback=_remember_token,
        help="The secret of an API token, when the daemon has [api] tokens_file.",
    )(command)
    return click.option(
        "--api",
        "api_url",
        metavar="URL",
        envvar=API_ENV,
        default=api_client.DEFAULT_URL,
        show_default=True,
        show_envvar=True,
        help="The daemon's API, as ws://HOST:PORT or wss://HOST:PORT (its [api] listen address); an active "
             "daemon and its standbys comma-separated: writes go to the active one, and a daemon that goes "
             "away is left for another.",
    )(command)


def _token() -> str | None:
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get("muppet.token")


_json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print a JSON array of objects (the API's shape) instead of a table.",
)


_reason_option = click.option(
    "--reason", default="", metavar="TEXT",
    help="Why: kept with your name in the operator event (muppet events --kind operator).",
)
_echo_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the API's answer as a JSON object instead of a sentence.",
)


def _fail(message: str) -> NoReturn:
    click.echo(f"muppet: error: {message}", err=True)
    sys.exit(1)


def _call(api_url: str, method: str, params: Mapping[str, Any] | None = None) -> Any:
    """One API call, its errors turned into one ``muppet: error:`` line and exit 1."""

    async def call(client: api_client.Client) -> Any:
        return await client.call(method, params)

    return _session(api_url, call)


def _session(api_url: str, work: Callable[[api_client.Client], Any]) -> Any:
    """``await work(client)`` on one connection; errors as ``_call``'s."""
    token = _token()

    async def run() -> Any:
        async with api_client.connect(api_url, token=token) as client:
            return await work(client)

    try:
        return trio.run(run)
    except (api_client.DaemonUnreachable, api_client.ConnectionLost, RpcError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as aligned text columns; numbers align right, None shows as "-",
    a flag as "yes" or "-"."""

    def cell(value: Any) -> str:
        if value is True:
            return "yes"
        return "-" if value is None or value == "" or value is False else str(value)

    header = [title for title, _ in columns]
    body = [[cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(columns))]
    numeric = [
        all(_is_number(row.get(key)) or row.get(key) is None for row in rows) and bool(rows)
        for _, key in columns
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(r) for r in body)])


def _is_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: Sequence[tuple[str, str]], empty: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        click.echo(_table(rows, columns))
    else:
        click.echo(empty, err=True)


LONG_JOB_COLUMNS = (
    ("ID", "id"), ("RUN", "run_id"), ("PIPELINE", "pipeline"), ("STEP", "step"), ("INDEX", "index"),
    ("STATE", "state"), ("EXIT", "exit_code"), ("FAILURES", "failures"),
    ("PRED", "predecessor"), ("SUCC", "successor"), ("STARTED", "started_at"), ("ENDED", "ended_at"),
    ("DURATION", "duration"), ("HOST", "host"), ("BATCH ID", "batch_id"), ("REASON", "reason"),
)
RUN_COLUMNS = (
    ("ID", "id"), ("PIPELINE", "pipeline"), ("REFERENCE TIME", "reference_time"),
    ("STATE", "state"), ("LATE", "late"), ("CAUSE", "cause"), ("CREATED", "created_at"), ("ENDED", "ended_at"),
    ("DEFINITION", "definition"),
)
#: how much of a definition's hash the tables show (as git shows a commit's)
SHORT_HASH = 12
JOB_COLUMNS = (
    ("ID", "id"), ("RUN", "run_id"), ("PIPELINE", "pipeline"), ("STEP", "step"), ("INDEX", "index"),
    ("STATE", "state"), ("EXIT", "exit_code"), ("FAILURES", "failures"),
    ("PRED", "predecessor"), ("SUCC", "successor"), ("REASON", "reason"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="muppet", prog_name="muppet")
def main() -> None:
    """MUPPET runs a weather service's production pipelines.

    \b
    muppet daemon      run the engine (cron, scheduler, executor, database, API)
    muppet validate    check configuration files before deploying them
    muppet status      the running daemon at a glance
    muppet pipelines   the pipelines, those that need attention first
    muppet show        one pipeline: triggers, steps, graph
    muppet trigger     make a run of a pipeline now
    muppet runs/jobs   list runs and jobs
    muppet logs        show a job's standard output or error, or follow it
    muppet hold/release/kill/rerun   steer one job
    muppet products    the products of the index
    muppet instances   a product's instances
    muppet files       the files of an instance
    muppet register    scan finished files and index them
    muppet events      the numbered event log, or follow it

    The commands that talk to a running daemon take --api ws://HOST:PORT
    (default: $MUPPET_API, else ws://127.0.0.1:8765). Errors print one line
    "muppet: error: ..." on stderr and exit 1; usage errors exit 2.
    """


@main.command()
@click.option(
    "--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
    help="The daemon's configuration file (TOML). Without it: the built-in defaults "
         "(SQLite in the state directory, no pipelines, API on 127.0.0.1:8765).",
)
@click.option(
    "--standby", is_flag=True, default=None,
    help="When another daemon holds the database, serve reads and wait to take over from it "
         "instead of exiting 2 (also [daemon] standby = true).",
)
def daemon(config_path: str | None, standby: bool | None) -> None:
    """Run the MUPPET daemon in the foreground until SIGTERM or SIGINT.

    It loads the configuration and every pipeline file it names, refuses to
    start on any problem (listing them all), then runs cron, the scheduler,
    the executors, the database and the API in one process. As a standby
    (--standby) it serves reads while another daemon holds the database,
    and takes over within seconds when that one dies.
    """
    import logging

    import trio

    from .config import ConfigError, default_config, load_config
    from .daemon import serve_until_signal  # the engine's imports are only for this command
    from .db.lease import LeaseHeld, LeaseLost

    # SIGHUP is the reload signal (docs/operations.md, "Reload"): one that
    # comes while the files load, before the daemon listens for it, must not
    # end the process as its default action would
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    try:
        config = load_config(config_path) if config_path else default_config()
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _fail(f"{len(exc.problems)} problem(s) in the configuration; not starting")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("muppet.daemon")
    log.info("starting: %d pipelines, state in %s", len(config.pipelines), config.daemon.state_dir)
    for warning in config.warnings:
        log.warning("configuration: %s", warning)
    try:
        trio.run(partial(serve_until_signal, config, standby=standby or None))
    except Exception as exc:
        # What an operator can fix (a port in use, a database that cannot be
        # reached, a directory that cannot be made) is one line naming the
        # file, the key and the cause; anything else is a bug and keeps its
        # traceback (docs/operations.md, "Start-up errors").
        leaves = _leaves(exc)
        for leaf in leaves:
            if isinstance(leaf, LeaseLost):
                # exit status 3: a standby took over from this daemon, which
                # stopped acting (docs/operations.md, "Running a standby")
                click.echo(f"muppet: error: {leaf}", err=True)
                sys.exit(3)
        for leaf in leaves:
            if isinstance(leaf, LeaseHeld):
                # exit status 2: another daemon has the database (docs/operations.md)
                click.echo(f"muppet: error: {leaf}", err=True)
                sys.exit(2)
        if not all(isinstance(e, _operator_errors()) for e in leaves):
            raise
        for leaf in leaves:
            line = _operator_line(leaf, config_path, config.daemon.database, config.daemon.state_dir,
                                  config.daemon.output_dir)
            click.echo(f"muppet: error: {line}", err=True)
        sys.exit(1)
    log.info("stopped")


def _leaves(exc: BaseException) -> list[BaseException]:
    """Every exception in ``exc``'s nested groups. Not muppet.unwrap_group,
    which takes out one exception from one group: the daemon's nurseries
    nest (serve_until_signal's around serve's around the tasks'), and two
    tasks can fail at once; each leaf is judged, and all must be an
    operator's to be said in one line each."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _operator_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    import psycopg

    from .db.store import DatabaseUnavailable, StoreError
    from .db.task import StateMismatch

    return (OSError, sqlite3.Error, psycopg.Error, StoreError, DatabaseUnavailable, StateMismatch)


def _operator_line(
    error: BaseException, config_path: str | None, database: str, state_dir: str, output_dir: str
) -> str:
    """``FILE: [TABLE] KEY: cause`` for one of :func:`_operator_errors`, on
    one line. The key is the one the error is about: an error that names its
    own (``[api] listen: ...``) keeps it; a database error is ``[daemon]
    database``, a mismatched state directory ``[daemon] state_dir``; a file
    system error is the configured directory or database its path is in."""
    import re
    import sqlite3
    from pathlib import Path

    import psycopg

    from .db.dialect import describe_url, sqlite_path
    from .db.store import DatabaseUnavailable, StoreError
    from .db.task import StateMismatch

    where = f"{config_path}: " if config_path else ""
    text = str(error)
    key = ""
    if isinstance(error, (sqlite3.Error, psycopg.Error, StoreError, DatabaseUnavailable)):
        key = "[daemon] database"
        cause = error.__cause__ if isinstance(error, DatabaseUnavailable) else error
        if isinstance(cause, OSError) and cause.filename is not None:
            text = _os_cause(cause)
        if describe_url(database) not in text:
            # sqlite3's own messages ("file is not a database") name no file
            text = f"{describe_url(database)}: {text}"
    elif isinstance(error, StateMismatch):
        key = "[daemon] state_dir"
    elif isinstance(error, OSError) and error.filename is not None and not re.match(r"\[\w+\] ", text):
        path = Path(error.filename).absolute()
        paths = [("[daemon] state_dir", Path(state_dir).absolute()),
                 ("[daemon] output_dir", Path(output_dir).absolute())]
        if database.startswith("sqlite:"):
            # first: by default the database is inside state_dir
            paths.insert(0, ("[daemon] database", Path(sqlite_path(database)).absolute()))
        # the path itself or one inside it; else one of its parents (making
        # the directory failed higher up)
        key = next((name for name, configured in paths if path.is_relative_to(configured)), "") or next(
            (name for name, configured in paths if configured.is_relative_to(path)), "")
        text = _os_cause(error)
    # psycopg's messages run over several lines ("... failed: Connection
    # refused\n\tIs the server running on that host ...?")
    text = " ".join(text.split())
    return f"{where}{key}: {text}" if key else f"{where}{text}"


def _os_cause(error: OSError) -> str:
    """``strerror: path``, and for mkdir on a path that is a file, what that means."""
    import errno

    if error.errno == errno.EEXIST:
        return f"{error.filename} is not a directory"
    return f"{error.strerror or error}: {error.filename}"


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(dir_okay=False))
def validate(paths: tuple[str, ...]) -> None:
    """Check daemon and pipeline configuration files.

    A file with a [pipeline] table is a pipeline file; any other is a daemon
    file, checked together with every pipeline file it lists. Prints one line
    per problem on stderr (FILE: [TABLE] KEY: what is wrong) and exits 1 if
    there is any; prints "N file(s) OK" and exits 0 otherwise. A warning (FILE:
    [TABLE] KEY: warning: ...) is something allowed but probably not meant:
    printed, and the files still pass.
    """
    from .config import validate_paths

    problems = validate_paths(list(paths))
    for problem in problems:
        click.echo(str(problem), err=True)
    warnings = sum(1 for p in problems if p.warning)
    if len(problems) > warnings:
        sys.exit(1)
    also = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
    click.echo(f"{len(paths)} file{'s' if len(paths) != 1 else ''} OK{also}")


@main.command()
@_api_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (the API's shape) instead of a table.")
def status(api_url: str, as_json: bool) -> None:
    """Show the running daemon at a glance.

    Its version, start time, pipelines and uptime; the database's health and
    the executors' slots in use; the jobs of the runs that have not ended,
    by state; each pipeline's next cron firing; a drain or a paused
    pipeline, by whom and since when; then the running jobs.
    """
    result = _call(api_url, "daemon.status")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for line in _status_lines(result):
        click.echo(line)
    running = result.get("running") or []
    if running:
        click.echo("")
        click.echo(_table([_with_times(job) for job in running], RUNNING_COLUMNS))


RUNNING_COLUMNS = (
    ("ID", "id"), ("RUN", "run_id"), ("PIPELINE", "pipeline"), ("STEP", "step"), ("INDEX", "index"),
    ("HOST", "host"), ("BATCH ID", "batch_id"), ("STARTED", "started_at"), ("FOR", "duration"),
)


def _duration(seconds: float | None) -> str | None:
    """Seconds as an on-call person reads them: "4.2 s", "3 min 12 s", "2 h 13 min"."""
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    from .codec import parse_time

    if start is None:
        return None
    began = parse_time(start)
    ended = parse_time(end) if end is not None else datetime.now(UTC)
    return max(0.0, (ended - began).total_seconds())


def _with_times(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job with ``duration``: from its start to its end, or to now while it runs."""
    duration = _duration(_seconds_between(job.get("started_at"), job.get("ended_at")))
    if duration is not None and job.get("ended_at") is None:
        duration += " so far"
    return {**job, "duration": duration}


def _order_text(order: Mapping[str, Any]) -> str:
    """Who gave a standing order, since when, and why."""
    text = f"by {order['by']} since {order['since']}"
    return text + (f": {order['reason']}" if order.get("reason") else "")


def _status_lines(result: Mapping[str, Any]) -> list[str]:
    database = result.get("database") or {}
    if database.get("available", True):
        outages = database.get("outages", 0)
        health = "available" + (f" ({outages} outage{'s' if outages != 1 else ''} since the start)" if outages else "")
    else:
        health = (f"UNAVAILABLE for {_duration(database.get('outage_seconds'))}: {database.get('cause')}")
    executors = ", ".join(
        f"{e['name']} {'?' if e['used'] is None else e['used']} of {e['max']} slots used"
        for e in result.get("executors", [])
    )
    jobs = result.get("jobs")
    if jobs is None:
        counts = "unknown while the database is away"
    else:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(jobs.items(), key=lambda i: (-i[1], i[0])))
    firings = ", ".join(f"{name} {when or '-'}" for name, when in (result.get("next_firings") or {}).items())
    orders = []
    draining = result.get("draining")
    if draining:
        orders.append(f"draining    no new job starts: {_order_text(draining)} (muppet undrain)")
    for name, paused in (result.get("paused") or {}).items():
        orders.append(f"paused      {name}: {_order_text(paused)} (muppet resume {name})")
    return [
        *orders,
        *_standing_lines(result),
        f"version     {result['version']}",
        f"started at  {result['started_at']}",
        f"pipelines   {', '.join(result['pipelines']) or '-'}",
        f"uptime      {_duration(result.get('uptime_seconds'))}",
        f"database    {database.get('name', '-')}: {health}",
        f"executors   {executors or '-'}",
        f"jobs        {counts or 'none in runs still going'}",
        f"next cron   {firings or '-'}",
    ]


def _standing_lines(result: Mapping[str, Any]) -> list[str]:
    """Which daemon is active, since when, and which standbys wait
    (docs/operations.md, "Running a standby"): said when there is a standby."""
    standbys = result.get("standbys") or []
    active = result.get("active")
    if result.get("role") != "standby" and not standbys:
        return []

    def who(daemon: Mapping[str, Any], since: str) -> str:
        return f"{daemon['host']} (pid {daemon['pid']}, {since} {daemon['since']}, API {daemon['api']})"

    lines = []
    if result.get("role") == "standby":
        lines.append("role        STANDBY: this daemon serves reads and waits to take over; "
                     "writes and commands go to the active one")
    lines.append(f"active      {who(active, 'since') if active else 'none now (a standby takes over)'}")
    for number, daemon in enumerate(standbys):
        lines.append(f"{'standby' if number == 0 else '':<12}{who(daemon, 'waiting since')}")
    return lines


@main.command()
@click.argument("pipeline")
@click.option(
    "--reference-time", metavar="ISO",
    help="The run's reference time, ISO 8601 (2026-11-28T06:00:00Z; without a zone: UTC). "
         "Default: now, in whole seconds.",
)
@click.option("--from", "first", metavar="ISO",
              help="Backfill: a run for every cron firing from this reference time ...")
@click.option("--to", "last", metavar="ISO", help="... to this one, both included, oldest first.")
@click.option("--yes", is_flag=True, help="Backfill more than 1000 runs.")
@_reason_option
@_api_option
def trigger(
    pipeline: str, reference_time: str | None, first: str | None, last: str | None, yes: bool, reason: str,
    api_url: str,
) -> None:
    """Make a run of PIPELINE; print its run id alone on stdout.

    Fails (exit 1) for an unknown pipeline, a bad time, or when a run of that
    pipeline for that reference time exists already.

    With --from and --to, a backfill: a run for every firing of the
    pipeline's cron between them (both included), oldest first, under its
    runahead (runs beyond it wait queued); reference times that have a run
    already are skipped. Prints the new runs' ids, one per line, and says
    how many were skipped on stderr. More than 1000 runs need --yes.
    """
    if first is None and last is None:
        if yes:
            _fail("--yes goes with --from and --to (a backfill)")
        params: dict[str, Any] = {"pipeline": pipeline, "reason": reason}
        if reference_time is not None:
            params["reference_time"] = reference_time
        result = _call(api_url, "runs.trigger", params)
        click.echo(result["run_id"])
        return
    if first is None or last is None:
        _fail("a backfill needs both --from and --to")
    if reference_time is not None:
        _fail("give --reference-time (one run) or --from and --to (a backfill), not both")
    result = _call(api_url, "runs.backfill",
                   {"pipeline": pipeline, "from": first, "to": last, "yes": yes, "reason": reason})
    for run_id in result["run_ids"]:
        click.echo(run_id)
    if result["skipped"]:
        click.echo(f"skipped {len(result['skipped'])} reference time(s) that had a run already", err=True)


@main.command()
@click.option("--pipeline", metavar="NAME", help="Only runs of this pipeline.")
@click.option("--state", type=click.Choice([state.value for state in RunState]),
              help="Only runs in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="At most this many runs, newest first.")
@_json_option
@_api_option
def runs(pipeline: str | None, state: str | None, limit: int, as_json: bool, api_url: str) -> None:
    """List runs, newest first. DEFINITION: the start of the hash of the
    pipeline definition the run was made with, and finishes under (a reload
    that changes the pipeline gives its new runs another)."""
    rows = _call(api_url, "runs.list", {"pipeline": pipeline, "state": state, "limit": limit})
    if not as_json:  # the pipeline definition each run runs under, by its hash's start
        rows = [{**row, "definition": (row.get("definition") or "")[:SHORT_HASH]} for row in rows]
    _print_rows(rows, as_json, RUN_COLUMNS, "no runs")


@main.command()
@click.argument("run_id", type=click.IntRange(min=1), required=False)
@click.option("--state", type=click.Choice([state.value for state in JobState]),
    help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=1000, show_default=True,
              help="At most this many jobs (without RUN_ID: the newest).")
@click.option("--long", "-l", "long_", is_flag=True,
              help="Also show when each job started and ended, how long it ran, its host and batch id.")
@_json_option
@_api_option
def jobs(run_id: int | None, state: str | None, limit: int, long_: bool, as_json: bool, api_url: str) -> None:
    """List the jobs of run RUN_ID, or the newest jobs of all runs, by id.

    A retried job is a new job: PRED and SUCC link it to the one before and
    the one after. REASON says why a waiting job waits and why an ended one
    ended. With --long: STARTED, ENDED, DURATION (so far, while it runs),
    HOST and BATCH ID too.
    """
    if run_id is not None and state is None:
        # runs.get tells an unknown run (an error) from a run without jobs
        rows = _call(api_url, "runs.get", {"run_id": run_id})["jobs"][:limit]
    else:
        rows = _call(api_url, "jobs.list", {"run_id": run_id, "state": state, "limit": limit})
    if long_ and not as_json:
        _print_rows([_with_times(row) for row in rows], as_json, LONG_JOB_COLUMNS, "no jobs")
        return
    _print_rows(rows, as_json, JOB_COLUMNS, "no jobs")


@main.command()
@click.argument("job_id", type=click.IntRange(min=1))
@click.option("--stderr", "stderr", is_flag=True, help="Show standard error instead of standard output.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing the output as it grows, until the job ends; resumes after a lost connection.")
@_api_option
def logs(job_id: int, stderr: bool, follow: bool, api_url: str) -> None:
    """Print the tail of job JOB_ID's standard output (or error).

    The last 64 KiB, read from the job's file under the daemon's state
    directory (a batch job's too, on the shared file system); a first line
    "[... N bytes before]" says when it is not the whole output. With
    --follow, the output is printed as it grows until the job ends.
    """
    stream = "stderr" if stderr else "stdout"
    if not follow:
        piece = _call(api_url, "jobs.output", {"job_id": job_id, "stream": stream})
        _print_output(piece, first=True)
        if piece["text"] and not piece["text"].endswith("\n"):
            click.echo("")
        return
    token = _token()

    async def stream_output() -> None:
        offset: int | None = None
        delay = 0.5
        while True:
            try:
                async with api_client.connect(api_url, token=token) as client:
                    delay = 0.5
                    while True:
                        piece = await client.call("jobs.output", {
                            "job_id": job_id, "stream": stream, "offset": offset, "wait": 10})
                        _print_output(piece, first=offset is None)
                        sys.stdout.flush()
                        if not piece["more"] or piece["next"] is None:
                            return
                        offset = piece["next"]
            except (api_client.DaemonUnreachable, api_client.ConnectionLost) as exc:
                click.echo(f"muppet: {exc}; resuming at byte {offset or 0} in {delay:g} s", err=True)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)

    try:
        trio.run(stream_output)
    except (RpcError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


def _print_output(piece: Mapping[str, Any], *, first: bool) -> None:
    """A piece of jobs.output; the first says whether output came before it."""
    if first:
        before = piece.get("offset")
        if before:
            click.echo(f"[... {before:,} bytes before]")
        elif piece.get("kept") == "database" and len(piece["text"].encode()) >= LOG_TAIL_BYTES - 3:
            click.echo("[... earlier output not kept]")
    click.echo(piece["text"], nl=False)


def _answer(as_json: bool, result: Any, sentence: str) -> None:
    click.echo(json.dumps(result) if as_json else sentence)


def _describe(action: str, job_id: int, result: Any) -> str:
    if not isinstance(result, dict):
        return f"job {job_id}: {action} done"
    if action == "rerun":
        return f"job {job_id}: rerun as job {result.get('job_id')}"
    state = result.get("state")
    verb = {"hold": "held", "release": "released", "kill": "kill requested", "set": "set"}[action]
    text = f"job {job_id}: {verb}"
    acted_on = result.get("job_id")
    if acted_on is not None and acted_on != job_id:
        # the scheduler acts on the newest job of the slot (a retry of job_id),
        # or a set of an ended job makes a new one
        text = f"job {job_id}: {verb} as job {acted_on}" if action == "set" else (
            f"job {acted_on} (the newest retry of job {job_id}): {verb}")
    return text + (f" (now {state})" if state else "")


def _job_or_run_command(action: str, summary: str) -> Callable[..., None]:
    @click.argument("id_", metavar="ID", type=click.IntRange(min=1))
    @click.option("--run", "whole_run", is_flag=True, help=f"ID is a run: {action} every job of it.")
    @_reason_option
    @_echo_json_option
    @_api_option
    def command(id_: int, whole_run: bool, reason: str, as_json: bool, api_url: str) -> None:
        if whole_run:
            result = _call(api_url, f"runs.{action}", {"run_id": id_, "reason": reason})
            _answer(as_json, result, f"run {id_}: {action} of {result['jobs']} job(s)")
            return
        result = _call(api_url, f"jobs.{action}", {"job_id": id_, "reason": reason})
        _answer(as_json, result, _describe(action, id_, result))

    command.__doc__ = summary
    return main.command(name=action)(command)


_job_or_run_command("hold", """Keep waiting job ID (with --run: every waiting job of run ID)
from starting until it is released.

Fails for a job that has started or ended, and for a run with no waiting job.""")
_job_or_run_command("release", """Let held job ID (with --run: every held job of run ID) start
again when its turn comes.""")
_job_or_run_command("kill", """Kill job ID (with --run: every job of run ID not yet ended): a
running job is killed, a waiting or held one is cancelled; the steps that
depend on it are skipped.""")


@main.command()
@click.argument("id_", metavar="ID", type=click.IntRange(min=1))
@click.option("--downstream", is_flag=True, help="Rerun every job after it in the run too, in order.")
@click.option("--run", "whole_run", is_flag=True, help="ID is a run (give --failed too).")
@click.option("--failed", is_flag=True,
              help="With --run: rerun every failed, killed, expired or skipped slot of the run.")
@_reason_option
@_echo_json_option
@_api_option
def rerun(id_: int, downstream: bool, whole_run: bool, failed: bool, reason: str, as_json: bool,
          api_url: str) -> None:
    """Run ended job ID's slot again, as a new job with a full set of tries
    ("job 4: rerun as job 52"). The jobs downstream that were skipped because
    of it run again too; with --downstream every job after it in the run
    runs again, in order, whatever its outcome.

    With --run --failed: every failed, killed, expired or skipped slot of run
    ID runs again (parents first); prints how many.

    Refused for a job that has not ended, a job that is not the newest of its
    slot, and a job whose parent ended without success (rerun the parent:
    this one runs again with it).
    """
    if whole_run:
        if not failed:
            _fail("say which slots of the run: --failed (every failed, killed, expired or skipped slot)")
        if downstream:
            _fail("--downstream goes with a job; --run --failed reruns the run's failed slots")
        result = _call(api_url, "runs.rerun", {"run_id": id_, "reason": reason})
        _answer(as_json, result, f"run {id_}: {result['jobs']} slot(s) run again")
        return
    if failed:
        _fail("--failed goes with --run (a run's failed slots)")
    result = _call(api_url, "jobs.rerun", {"job_id": id_, "downstream": downstream, "reason": reason})
    _answer(as_json, result, _describe("rerun", id_, result))


@main.command(name="set")
@click.argument("job_id", type=click.IntRange(min=1))
@click.option("--succeeded", "outcome", flag_value="succeeded", help="End it as succeeded: its children run.")
@click.option("--failed", "outcome", flag_value="failed", help="End it as failed: its children are skipped.")
@_reason_option
@_echo_json_option
@_api_option
def set_outcome(job_id: int, outcome: str | None, reason: str, as_json: bool, api_url: str) -> None:
    """Set job JOB_ID's outcome by hand: the job ends so, the jobs downstream
    act on it, and the operator event says you set it.

    A waiting or held job ends succeeded or failed. A job that ended without
    success (failed, killed, skipped, expired) can be set --succeeded: a new
    job of its slot records the success and what was skipped because of it
    runs. Refused for a running job (kill it first) and a job that succeeded.
    """
    if outcome is None:
        _fail("give --succeeded or --failed")
    result = _call(api_url, "jobs.set", {"job_id": job_id, "outcome": outcome, "reason": reason})
    _answer(as_json, result, _describe("set", job_id, result))


@main.command()
@click.argument("run_id", type=click.IntRange(min=1))
@click.argument("step")
@_reason_option
@_echo_json_option
@_api_option
def bypass(run_id: int, step: str, reason: str, as_json: bool, api_url: str) -> None:
    """End STEP's jobs in run RUN_ID without running them; the steps after
    it go on as if it had succeeded (Cylc's skip mode).

    The jobs show as bypassed, never as succeeded, and register no outputs in
    the index. Refused while a job of the step runs (kill it first) and for a
    step that has ended.
    """
    result = _call(api_url, "runs.bypass", {"run_id": run_id, "step": step, "reason": reason})
    _answer(as_json, result, f"run {run_id}: {step} bypassed ({result['jobs']} job(s))")


def _pipeline_command(action: str, summary: str) -> None:
    @click.argument("pipeline")
    @_reason_option
    @_echo_json_option
    @_api_option
    def command(pipeline: str, reason: str, as_json: bool, api_url: str) -> None:
        result = _call(api_url, f"pipelines.{action}", {"pipeline": pipeline, "reason": reason})
        _answer(as_json, result, f"pipeline {pipeline}: {action}d")

    command.__doc__ = summary
    main.command(name=action)(command)


_pipeline_command("pause", """Start no new job of PIPELINE until it is resumed; running jobs
finish. Its cron firings meanwhile make runs that wait (queued).""")
_pipeline_command("resume", """Start PIPELINE's jobs again. Of the cron runs made while it was
paused, its catch-up policy picks which run: "all" (up to catchup_limit),
"latest" (the newest) or "none"; the others expire without running.""")


def _daemon_command(action: str, summary: str) -> None:
    @_reason_option
    @_echo_json_option
    @_api_option
    def command(reason: str, as_json: bool, api_url: str) -> None:
        result = _call(api_url, f"daemon.{action}", {"reason": reason})
        _answer(as_json, result, "the daemon is draining: no new job starts" if result["draining"]
                else "the daemon starts jobs again")

    command.__doc__ = summary
    main.command(name=action)(command)


_daemon_command("drain", """Start no new job at all; running jobs finish (for maintenance of a
cluster or of the daemon's host). muppet status says so. Needs an admin token.""")
_daemon_command("undrain", """Start jobs again after muppet drain. Needs an admin token.""")


@main.command()
@_reason_option
@_echo_json_option
@_api_option
def reload(reason: str, as_json: bool, api_url: str) -> None:
    """Read the daemon's configuration again (its --config file and every
    pipeline file it lists) and run on it, without a restart; as SIGHUP to
    the daemon does. Needs an admin token.

    Prints what changed once the daemon runs on it: pipelines added,
    changed and removed (runs in progress finish under the definition they
    were made with), executors, index declarations, and the settings that
    wait for a restart. On any problem in the files nothing changes: every
    problem is printed, one per line, and it exits 1.
    """
    from .config.changes import Changes

    async def work(client: api_client.Client) -> Any:
        try:
            return await client.call("daemon.reload", {"reason": reason})
        except RpcError as error:
            for problem in (error.data or {}).get("problems", []) if isinstance(error.data, dict) else []:
                click.echo(problem, err=True)
            raise

    result = _session(api_url, work)
    for warning in result.get("warnings", []):
        click.echo(warning, err=True)
    if as_json:
        click.echo(json.dumps(result))
        return
    changes = Changes.from_target(result)
    click.echo(f"reloaded {result['source']}" if result["changed"] else f"nothing changed in {result['source']}")
    for line in changes.lines():
        click.echo(line)


@main.command()
@click.argument("product")
@click.option("--reference-time", required=True, metavar="ISO",
              help="The reference time of the instance wanted, ISO 8601 (without a zone: UTC).")
@click.option("--pipeline", metavar="NAME", help="The pipeline that makes it, when several produce the product.")
@_reason_option
@_echo_json_option
@_api_option
def request(product: str, reference_time: str, pipeline: str | None, reason: str, as_json: bool,
            api_url: str) -> None:
    """Ask for an update of PRODUCT for a reference time: the daemon makes a
    run of the pipeline that produces it for that time, or, when there is
    one, reruns the steps whose outputs make up the product and what is
    downstream of them. Prints what happened: the run, or that the request
    waits for products the pipeline requires (muppet requests shows it; it
    is carried out when they are complete).

    Fails for an unknown product and one that no pipeline produces.
    """
    params: dict[str, Any] = {"product": product, "reference_time": reference_time, "reason": reason}
    if pipeline is not None:
        params["pipeline"] = pipeline
    result = _call(api_url, "products.request_update", params)
    if as_json:
        click.echo(json.dumps(result))
    elif result["state"] == "waiting":
        click.echo(f"request {result['request_id']}: waiting for {', '.join(result['waiting_for'])}")
    elif result["made"]:
        click.echo(f"request {result['request_id']}: run {result['run_id']} made")
    elif result["rerun_job_ids"]:
        jobs = ", ".join(str(j) for j in result["rerun_job_ids"])
        click.echo(f"request {result['request_id']}: run {result['run_id']}: the steps that make {product} "
                   f"run again (job(s) {jobs})")
    else:
        click.echo(f"request {result['request_id']}: run {result['run_id']} makes it already")


REQUEST_COLUMNS = (
    ("ID", "id"), ("PRODUCT", "product"), ("REFERENCE TIME", "reference_time"), ("PIPELINE", "pipeline"),
    ("STATE", "state"), ("WAITING FOR", "waiting_for"), ("RUN", "run_id"), ("BY", "by"), ("REASON", "reason"),
    ("CREATED", "created_at"),
)


@main.command()
@click.option("--state", type=click.Choice(["waiting", "done", "refused"]), help="Only requests in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="At most this many.")
@_json_option
@_api_option
def requests(state: str | None, limit: int, as_json: bool, api_url: str) -> None:
    """The requests for product updates, newest first: those still waiting
    say for which products."""
    found = _call(api_url, "requests.list", {"state": state, "limit": limit})
    rows = [{**r, "waiting_for": ", ".join(r["waiting_for"])} for r in found]
    _print_rows(found if as_json else rows, as_json, REQUEST_COLUMNS, "no requests")


# --- incidents (docs/alerts.md) --------------------------------------------------------

INCIDENT_COLUMNS = (
    ("ID", "id"), ("KIND", "kind"), ("STATE", "state"), ("PIPELINE", "pipeline"), ("STEP", "step"),
    ("ABOUT", "subject"), ("REFERENCE TIME", "reference_time"), ("OPENED", "opened_at"), ("SUMMARY", "summary"),
)


@main.command()
@click.argument("incident_id", metavar="INCIDENT", type=click.IntRange(min=1), required=False)
@click.option("--open", "open_only", is_flag=True, help="Only the incidents not resolved.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="At most this many.")
@_json_option
@_api_option
def alerts(incident_id: int | None, open_only: bool, limit: int, as_json: bool, api_url: str) -> None:
    """The incidents, newest first: failures for good, lateness, products
    not complete in time, the daemon's own troubles; with INCIDENT, that one
    with its notices and whom each reached."""
    if incident_id is None:
        found = _call(api_url, "alerts.list", {"open": open_only, "limit": limit})
        _print_rows(found, as_json, INCIDENT_COLUMNS, "no incidents")
        return
    incident = _call(api_url, "alerts.get", {"incident_id": incident_id})
    if as_json:
        click.echo(json.dumps(incident, indent=2))
        return
    for title, key in (*INCIDENT_COLUMNS, ("DEDUP KEY", "dedup_key"), ("RUN", "run_id"), ("JOB", "job_id"),
                       ("RESOLVED", "resolved_at"), ("RESOLUTION", "resolution"), ("ACKNOWLEDGED", "acked_at"),
                       ("BY", "acked_by"), ("REASON", "ack_reason")):
        value = incident.get(key)
        click.echo(f"{title.lower() + ':':16}{'-' if value in (None, '') else value}")
    for notice in incident["notices"]:
        sent = ", ".join(f"{s['destination']} at {s['at']}" for s in notice["sent"]) or "nobody yet"
        click.echo(f"{notice['action']} {notice['at']}: {'pending; ' if notice['pending'] else ''}sent to {sent}")


@main.command()
@click.argument("incident_id", metavar="INCIDENT", type=click.IntRange(min=1))
@click.option("--reason", required=True, metavar="TEXT", help="Why, or who looks at it: kept with your name.")
@_echo_json_option
@_api_option
def ack(incident_id: int, reason: str, as_json: bool, api_url: str) -> None:
    """Acknowledge open incident INCIDENT: nobody is reminded of it any
    more; its resolution is still told. Your token's name and the reason
    are kept with it (and in an operator event)."""
    result = _call(api_url, "alerts.ack", {"incident_id": incident_id, "reason": reason})
    _answer(as_json, result, f"incident {incident_id}: acknowledged by {result['acked_by']}")


# --- pipelines ---------------------------------------------------------------------

PIPELINE_COLUMNS = (
    ("NAME", "name"), ("OWNER", "owner"), ("STEPS", "steps"), ("CRON", "cron"), ("TIMEZONE", "timezone"),
    ("NEXT FIRING", "next_firing"), ("NEWEST RUN", "newest"), ("RUNNING", "running"), ("ATTENTION", "attention"),
)


@main.command()
@_json_option
@_api_option
def pipelines(as_json: bool, api_url: str) -> None:
    """List the configured pipelines, those that need attention first.

    STEPS counts their steps; NEXT FIRING is the next cron firing; NEWEST
    RUN its id and state; RUNNING the runs not ended; ATTENTION why to look
    (late, a failed newest run, failed jobs in runs still going).
    """

    async def work(client: api_client.Client) -> list[dict[str, Any]]:
        configured = {p["name"]: p for p in await client.call("pipelines.list")}
        status: list[dict[str, Any]] = await client.call("pipelines.status")
        rows = []
        for item in status:
            newest = item["newest_run"]
            rows.append({
                **item,
                "steps": len(configured[item["name"]]["steps"]) if item["name"] in configured else None,
                "cron": "; ".join(item["cron"]) or None,
                "newest": None if newest is None else f"{newest['id']} {newest['state']}",
                "running": len(item["running_runs"]),
                "attention": "; ".join(item["attention"]) or None,
            })
        return rows

    rows = _session(api_url, work)
    if as_json:
        click.echo(json.dumps([{k: v for k, v in r.items() if k not in ("newest", "running")} for r in rows],
                              indent=2))
        return
    _print_rows(rows, False, PIPELINE_COLUMNS, "no pipelines")


@main.command()
@click.argument("pipeline")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (the API's shape) instead of text.")
@_api_option
def show(pipeline: str, as_json: bool, api_url: str) -> None:
    """Show pipeline PIPELINE: its triggers, next firings, steps and graph.

    The steps are listed parents first, each with its jobs, executor,
    retries and command; the graph draws each step under its parents (a step
    with several parents is drawn under the first and named under the
    others).
    """
    found = _call(api_url, "pipelines.get", {"pipeline": pipeline})
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for line in _pipeline_lines(found):
        click.echo(line)


def _pipeline_lines(found: Mapping[str, Any]) -> list[str]:
    triggers = [f"cron {expr} ({found['timezone']})" for expr in found["cron"]]
    triggers += [f"data: {slug} complete" for slug in found["requires"]]
    triggers.append("manual (muppet trigger)")
    lines = [
        f"pipeline    {found['name']}",
        f"owner       {found['owner']}",
        f"file        {found.get('source') or '-'}",
        f"triggers    {'; '.join(triggers)}",
        f"produces    {', '.join(found['produces']) or '-'}",
        f"next cron   {', '.join(found['next_firings']) or '-'}",
        "",
    ]
    steps = found["steps"]
    rows = []
    for step in steps:
        retry = step.get("retry") or {}
        rows.append({
            "name": step["name"],
            "parents": ", ".join(step["parents"]) or None,
            "jobs": step["jobs"],
            "executor": step["executor"],
            "tries": retry.get("tries"),
            "command": step["command"],
        })
    lines.append(_table(rows, (
        ("STEP", "name"), ("PARENTS", "parents"), ("JOBS", "jobs"), ("EXECUTOR", "executor"),
        ("TRIES", "tries"), ("COMMAND", "command"),
    )))
    lines.append("")
    lines.append("graph")
    lines.extend(_graph_lines(steps))
    return lines


def _graph_lines(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """The steps as a text tree, roots first: each step under its first
    parent; under another parent it is named with "(under PARENT)"."""
    by_name = {step["name"]: step for step in steps}
    lines: list[str] = []

    def draw(name: str, prefix: str, last: bool, parent: str | None, depth: int) -> None:
        step = by_name[name]
        branch = "" if parent is None else ("└── " if last else "├── ")
        first_parent = step["parents"][0] if step["parents"] else None
        if parent is not None and parent != first_parent:
            lines.append(f"{prefix}{branch}{name} (under {first_parent})")
            return
        lines.append(f"{prefix}{branch}{name}")
        children = [c for c in step.get("children", []) if c in by_name]
        inner = prefix + ("" if parent is None else ("    " if last else "│   "))
        for i, child in enumerate(children):
            draw(child, inner, i == len(children) - 1, name, depth + 1)

    for step in steps:
        if not step["parents"]:
            draw(step["name"], "  ", True, None, 0)
    return lines


# --- the index ---------------------------------------------------------------------

PRODUCT_COLUMNS = (
    ("SLUG", "slug"), ("NAME", "name"), ("CONTACT", "contact"), ("FILES", "file_count"),
    ("OPERATIONAL", "operational"), ("LIFETIME H", "lifetime_hours"),
)
INSTANCE_COLUMNS = (
    ("ID", "id"), ("PRODUCT", "product"), ("REFERENCE TIME", "reference_time"), ("VERSION", "version"),
    ("CREATED", "created_at"), ("COMPLETE SINCE", "completed_at"),
)
FILE_COLUMNS = (
    ("ID", "id"), ("INSTANCE", "instance_id"), ("VERSION", "version"), ("BACKEND", "backend"),
    ("FORMAT", "format"), ("SIZE", "size"), ("EXPIRES", "expires"), ("URL", "url"),
)


async def _all_pages(
    client: api_client.Client, method: str, params: dict[str, Any], limit: int | None = None
) -> list[Any]:
    """Every item of a paginated listing (at most ``limit``)."""
    items: list[Any] = []
    cursor = None
    while True:
        page = await client.call(method, {**params, "cursor": cursor, "limit": 1000})
        items.extend(page["items"])
        cursor = page["next"]
        if cursor is None or (limit is not None and len(items) >= limit):
            return items[:limit] if limit is not None else items


@main.command()
@_json_option
@_api_option
def products(as_json: bool, api_url: str) -> None:
    """List the products of the index, by slug."""
    rows = _session(api_url, lambda client: _all_pages(client, "products.list", {}))
    _print_rows(rows, as_json, PRODUCT_COLUMNS, "no products")


@main.command()
@click.argument("product")
@click.option("--begin", metavar="ISO", help="Only reference times from this one on.")
@click.option("--end", metavar="ISO", help="Only reference times before this one.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True,
              help="At most this many instances, newest first.")
@_json_option
@_api_option
def instances(product: str, begin: str | None, end: str | None, limit: int, as_json: bool, api_url: str) -> None:
    """List the instances of PRODUCT, newest reference time first.

    COMPLETE SINCE is when the first backend and format held the product's
    file_count files.
    """
    rows = _session(api_url, lambda client: _all_pages(
        client, "instances.list", {"product": product, "begin": begin, "end": end}, limit))
    _print_rows(rows, as_json, INSTANCE_COLUMNS, f"no instances of {product}")


@main.command()
@click.argument("product")
@click.option("--reference-time", metavar="ISO", help="The instance's reference time. Default: the newest instance.")
@click.option("--version", "version", type=click.IntRange(1), help="The instance's version. Default: the newest.")
@click.option("--backend", metavar="NAME", help="Only files on this service backend.")
@click.option("--format", "fmt", metavar="NAME", help="Only files in this format.")
@click.option("--deleted", is_flag=True, help="Show deleted files too.")
@_json_option
@_api_option
def files(product: str, reference_time: str | None, version: int | None, backend: str | None,
          fmt: str | None, deleted: bool, as_json: bool, api_url: str) -> None:
    """List the files of an instance of PRODUCT: the newest, or the one at
    --reference-time (and --version)."""

    async def work(client: api_client.Client) -> list[Any]:
        if reference_time is None:
            latest = await client.call("instances.latest", {"product": product})
            if latest is None:
                _fail(f"product {product!r} has no instances yet")
            where = {"instance_id": latest["id"]}
        else:
            where = {"product": product, "reference_time": reference_time, "version": version}
        return await _all_pages(client, "files.list", {
            **where, "backend": backend, "format": fmt, "include_deleted": deleted,
        })

    rows = _session(api_url, work)
    _print_rows(rows, as_json, FILE_COLUMNS, "no files")


def _event_line(event: Mapping[str, Any]) -> str:
    data = event["data"]
    kind = event["kind"]
    if kind == "run":
        what = f"run {data['id']} {data['pipeline']} {data['reference_time']} {data['state']}"
    elif kind == "job":
        what = f"job {data['id']} {data['pipeline']}.{data['step']}[{data['index']}] {data['state']}"
    elif kind == "instance":
        complete = " complete" if data.get("completed_at") else ""
        what = f"instance {data['id']} {data['product']} {data['reference_time']} v{data['version']}{complete}"
    elif kind == "file":
        state = " deleted" if data.get("deleted") else ""
        what = f"file {data['id']} {data['backend']} {data['url']}{state}"
    elif kind == "operator":
        target = " ".join(
            f"{key}={_compact(value)}" for key, value in (data.get("target") or {}).items() if value not in (None, [])
        )
        reason = f": {data['reason']}" if data.get("reason") else ""
        what = f"operator {data['by']} {data['action']} {target}".rstrip() + reason
    elif kind == "late":
        slot = f".{data['step']}[{data['index']}]" if data.get("kind") == "job" else ""
        what = f"late {data['kind']} {data['id']} {data['pipeline']}{slot} {data['reference_time']}"
    else:
        what = f"{kind} {data.get('slug', '')}"
    return f"{event['id']:>8}  {event['at']}  {what}"


def _pruned_note(marker: Mapping[str, Any], since: int | None) -> str:
    """What the marker of pruned events says (docs/api.md, "Subscribing to
    events"): the events asked for that are gone."""
    first = (since or 0) + 1
    gone = f"event {first:,}" if first == marker["id"] else f"events {first:,} to {marker['id']:,}"
    return (f"muppet: {gone} {'was' if first == marker['id'] else 'were'} pruned ([daemon] keep_history); "
            f"the oldest kept is {marker['data']['oldest']:,}")


def _compact(value: Any) -> str:
    """A target's value on one line: lists joined by commas."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


@main.command()
@click.option("--since", type=click.IntRange(0), default=None,
              help="Print events numbered above this one. Default: all, or with --follow only new ones.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing events as they happen; reconnects and resumes after a lost connection.")
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(list(EVENT_KINDS)),
              help="Only events of this kind (repeatable).")
@click.option("--product", "products_", multiple=True, metavar="SLUG",
              help="Only index events of this product (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@_api_option
def events(since: int | None, follow: bool, kinds: tuple[str, ...], products_: tuple[str, ...],
           as_json: bool, api_url: str) -> None:
    """Print the numbered event log: every run, job and index change.

    Numbers have no gaps and never repeat; a reader that remembers the last
    number it saw resumes with --since. With --follow the command streams until
    interrupted, resuming from its last number whenever the connection drops
    (the daemon restarting, a slow reader being let go).
    """
    # the marker of pruned events comes whatever kinds were asked for
    filters = {"kinds": list(dict.fromkeys([*kinds, "pruned"])) if kinds else None,
               "products": list(products_) or None}

    def emit(event: Mapping[str, Any], after: int | None) -> None:
        """Print ``event``, read from above ``after``."""
        if event["kind"] == "pruned" and not as_json:
            click.echo(_pruned_note(event, after), err=True)
            return
        click.echo(json.dumps(event) if as_json else _event_line(event))
        if follow:
            sys.stdout.flush()  # a pipe is block-buffered: a reader waits for each event

    async def backlog(client: api_client.Client) -> None:
        after = since or 0
        while True:
            batch = await client.call("events.list", {"since": after, **filters, "limit": 1000})
            for event in batch:
                emit(event, after)
            if len(batch) < 1000:
                return
            after = batch[-1]["id"]

    if not follow:
        _session(api_url, backlog)
        return

    token = _token()

    async def stream() -> None:
        position = since
        delay = 0.5
        while True:
            try:
                async with api_client.connect(api_url, token=token) as client:
                    delay = 0.5
                    async for event in await client.subscribe(position, **filters):
                        emit(event, position)
                        position = event["id"]
            except (api_client.DaemonUnreachable, api_client.ConnectionLost) as exc:
                click.echo(f"muppet: {exc}; resuming after event {position or 0} in {delay:g} s", err=True)
                if position is None:
                    position = 0 if since is None else since
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)

    try:
        trio.run(stream)
    except (RpcError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="FILE...", type=click.Path(dir_okay=False))
@click.option("--product", required=True, metavar="SLUG", help="The product the files are instances of.")
@click.option("--backend", required=True, metavar="NAME",
              help="The service backend they are on; a file:// backend's directory must hold them.")
@click.option("--reference-time", metavar="ISO",
              help="The reference time, for files that do not hold one (or to override theirs).")
@click.option("--format", "fmt", metavar="NAME", help="The format's slug, instead of the one found by content.")
@click.option("--expires", metavar="ISO", help="When the files expire. Default: the product's lifetime_hours.")
@click.option("--version", "version", type=click.IntRange(1),
              help="The instance version. Default: the newest (version 1 for a new reference time).")
@click.option("--new-version", is_flag=True,
              help="Make a new instance version for the files (the product was made again).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of the registered files (the API's shape) instead of a line each.")
@_api_option
def register(paths: tuple[str, ...], product: str, backend: str, reference_time: str | None,
             fmt: str | None, expires: str | None, version: int | None, new_version: bool,
             as_json: bool, api_url: str) -> None:
    """Scan finished FILEs and index them as instances of PRODUCT on BACKEND.

    Each file is read once: size, SHA-256, format by content (NetCDF classic,
    64-bit offset, CDF5, NetCDF-4; GRIB 1 and 2; else by extension) and, for
    NetCDF and GRIB, reference time, time period and variables. All files are
    registered in one request, all or none: a file that cannot be read stops
    the command before anything is sent.

    The files join the newest version of each product instance; a file
    registered again at the same URL replaces its record there. A new
    version is made only with --new-version (docs/index.md, "Versions").
    """
    if version is not None and new_version:
        _fail("give --version or --new-version, not both")
    from . import scan as scanning

    async def work(client: api_client.Client) -> Any:
        backends = {b["slug"]: b for b in await client.call("backends.list")}
        if backend not in backends:
            _fail(f"unknown backend {backend!r} (known: {', '.join(sorted(backends)) or 'none'})")
        root = _local_root(backends[backend]["url"])
        scanned = []
        for path in paths:
            # abspath only joins strings with the working directory: no I/O
            absolute = os.path.abspath(path)  # noqa: ASYNC240
            if root is None:
                _fail(f"{path}: backend {backend!r} is {backends[backend]['url']}, not a file:// directory "
                      "this command can register local files on")
            if os.path.commonpath([root, absolute]) != root:
                _fail(f"{path}: not under backend {backend!r}'s directory {root}")
            scanned.append(await trio.to_thread.run_sync(_scan_with_progress, scanning, absolute))
        files = []
        for item in scanned:
            when = reference_time or _time_text(item.reference_time)
            if when is None:
                _fail(f"{item.path}: the file holds no reference time; give --reference-time")
            files.append({
                "product": product,
                "reference_time": when,
                "backend": backend,
                "format": fmt or item.format or "data",
                "url": "file://" + item.path,
                "size": item.size,
                "hash": item.sha256,
                "hash_type": "sha256",
                "time_begin": _time_text(item.time_begin),
                "time_end": _time_text(item.time_end),
                "variables": list(item.variables),
                "expires": expires,
                "version": version,
            })
        return await client.call("files.register", {"files": files, "new_version": new_version})

    result = _session(api_url, work)
    rows = result["files"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            click.echo(f"{row['url']}: file {row['id']}, {row['product']} {row['reference_time']} v{row['version']}")


def _local_root(url: str) -> str | None:
    if not url.startswith("file://"):
        return None
    return os.path.normpath("/" + url[len("file://"):].lstrip("/"))


def _time_text(moment: Any) -> str | None:
    from .codec import format_time

    return None if moment is None else format_time(moment)


def _scan_with_progress(scanning: Any, path: str) -> Any:
    """Scan one file; a file that takes long shows its progress on stderr."""
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    show = size >= 256 * 1024 * 1024 and sys.stderr.isatty()

    def progress(done: int) -> None:
        if show:
            sys.stderr.write(f"\r{os.path.basename(path)}: {done * 100 // max(size, 1)}%")
            sys.stderr.flush()

    try:
        item = scanning.scan(path, progress=progress)
    except scanning.ScanError as exc:
        _fail(str(exc))
    if show:
        sys.stderr.write("\n")
    return item


if __name__ == "__main__":
    main(prog_name="muppet")
