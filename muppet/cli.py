"""The ``muppet`` command: run the daemon, check configuration, steer a running
daemon through its websocket API. docs/cli.md describes every command."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Mapping, NoReturn, Sequence

import click
import trio

from .api import client as api_client
from .api.protocol import RpcError

API_ENV = "MUPPET_API"

_api_option = click.option(
    "--api",
    "api_url",
    metavar="URL",
    envvar=API_ENV,
    default=api_client.DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    help="The daemon's API, as ws://HOST:PORT (the [api] listen address of its configuration).",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print a JSON array of objects (the API's shape) instead of a table.",
)


def _fail(message: str) -> NoReturn:
    click.echo(f"muppet: error: {message}", err=True)
    sys.exit(1)


def _call(api_url: str, method: str, params: Mapping[str, Any] | None = None) -> Any:
    """One API call, its errors turned into one ``muppet: error:`` line and exit 1."""

    async def call() -> Any:
        async with api_client.connect(api_url) as client:
            return await client.call(method, params)

    try:
        return trio.run(call)
    except (api_client.DaemonUnreachable, api_client.ConnectionLost, RpcError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as aligned text columns; numbers align right, None shows as "-"."""

    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else str(value)

    header = [title for title, _ in columns]
    body = [[cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(columns))]
    numeric = [
        all(isinstance(row.get(key), int) or row.get(key) is None for row in rows) and bool(rows)
        for _, key in columns
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(r) for r in body)])


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: Sequence[tuple[str, str]], empty: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        click.echo(_table(rows, columns))
    else:
        click.echo(empty, err=True)


RUN_COLUMNS = (
    ("ID", "id"), ("PIPELINE", "pipeline"), ("REFERENCE TIME", "reference_time"),
    ("STATE", "state"), ("CAUSE", "cause"), ("CREATED", "created_at"), ("ENDED", "ended_at"),
)
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
    muppet status      what the running daemon says about itself
    muppet trigger     make a run of a pipeline now
    muppet runs/jobs   list runs and jobs
    muppet logs        show a job's standard output or error
    muppet hold/release/kill/rerun   steer one job

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
def daemon(config_path: str | None) -> None:
    """Run the MUPPET daemon in the foreground until SIGTERM or SIGINT.

    It loads the configuration and every pipeline file it names, refuses to
    start on any problem (listing them all), then runs cron, the scheduler,
    the executors, the database and the API in one process.
    """
    from .daemon import run_daemon  # the engine's imports are only for this command

    from .config import ConfigError

    try:
        run_daemon(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _fail(f"{len(exc.problems)} problem(s) in the configuration; not starting")
    except Exception as exc:
        # What an operator can fix (a port in use, a database that cannot be
        # reached) is one line; anything else is a bug and keeps its traceback.
        leaves = _leaves(exc)
        if not all(isinstance(e, _operator_errors()) for e in leaves):
            raise
        _fail("; ".join(f"{e}" for e in leaves))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _operator_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    import psycopg

    from .daemon import StateMismatch
    from .db.store import DatabaseUnavailable, StoreError

    return (OSError, sqlite3.Error, psycopg.Error, StoreError, DatabaseUnavailable, StateMismatch)


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(dir_okay=False))
def validate(paths: tuple[str, ...]) -> None:
    """Check daemon and pipeline configuration files.

    A file with a [pipeline] table is a pipeline file; any other is a daemon
    file, checked together with every pipeline file it lists. Prints one line
    per problem on stderr (FILE: [TABLE] KEY: what is wrong) and exits 1 if
    there is any; prints "N files OK" and exits 0 otherwise.
    """
    from .config import validate_paths

    problems = validate_paths(list(paths))
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{len(paths)} file{'s' if len(paths) != 1 else ''} OK")


@main.command()
@_api_option
@_json_option
def status(api_url: str, as_json: bool) -> None:
    """Show the running daemon's version, start time and pipelines."""
    result = _call(api_url, "daemon.status")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"version     {result['version']}")
    click.echo(f"started at  {result['started_at']}")
    click.echo(f"pipelines   {', '.join(result['pipelines']) or '-'}")


@main.command()
@click.argument("pipeline")
@click.option(
    "--reference-time", metavar="ISO",
    help="The run's reference time, ISO 8601 (2026-11-28T06:00:00Z; without a zone: UTC). "
         "Default: now, in whole seconds.",
)
@_api_option
def trigger(pipeline: str, reference_time: str | None, api_url: str) -> None:
    """Make a run of PIPELINE; print its run id alone on stdout.

    Fails (exit 1) for an unknown pipeline, a bad time, or when a run of that
    pipeline for that reference time exists already.
    """
    params: dict[str, Any] = {"pipeline": pipeline}
    if reference_time is not None:
        params["reference_time"] = reference_time
    result = _call(api_url, "runs.trigger", params)
    click.echo(result["run_id"])


@main.command()
@click.option("--pipeline", metavar="NAME", help="Only runs of this pipeline.")
@click.option("--state", type=click.Choice(["running", "succeeded", "failed"]), help="Only runs in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="At most this many runs, newest first.")
@_json_option
@_api_option
def runs(pipeline: str | None, state: str | None, limit: int, as_json: bool, api_url: str) -> None:
    """List runs, newest first."""
    rows = _call(api_url, "runs.list", {"pipeline": pipeline, "state": state, "limit": limit})
    _print_rows(rows, as_json, RUN_COLUMNS, "no runs")


@main.command()
@click.argument("run_id", type=click.IntRange(min=1), required=False)
@click.option("--state", type=click.Choice(
    ["waiting", "held", "submitted", "running", "succeeded", "failed", "killed", "skipped"]),
    help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=1000, show_default=True,
              help="At most this many jobs (without RUN_ID: the newest).")
@_json_option
@_api_option
def jobs(run_id: int | None, state: str | None, limit: int, as_json: bool, api_url: str) -> None:
    """List the jobs of run RUN_ID, or the newest jobs of all runs, by id.

    A retried job is a new job: PRED and SUCC link it to the one before and
    the one after.
    """
    if run_id is not None and state is None:
        # runs.get tells an unknown run (an error) from a run without jobs
        rows = _call(api_url, "runs.get", {"run_id": run_id})["jobs"][:limit]
    else:
        rows = _call(api_url, "jobs.list", {"run_id": run_id, "state": state, "limit": limit})
    _print_rows(rows, as_json, JOB_COLUMNS, "no jobs")


@main.command()
@click.argument("job_id", type=click.IntRange(min=1))
@click.option("--stderr", "stderr", is_flag=True, help="Show standard error instead of standard output.")
@_api_option
def logs(job_id: int, stderr: bool, api_url: str) -> None:
    """Print the kept tail of job JOB_ID's standard output (or error).

    The daemon keeps the last 64 KiB of each stream of a finished job; a job
    still running shows nothing yet (its files are in its job directory).
    """
    result = _call(api_url, "jobs.logs", {"job_id": job_id, "stream": "stderr" if stderr else "stdout"})
    text = result["text"]
    click.echo(text, nl=bool(text) and not text.endswith("\n"))


def _describe(action: str, job_id: int, result: Any) -> str:
    if not isinstance(result, dict):
        return f"job {job_id}: {action} done"
    if action == "rerun":
        return f"job {job_id}: rerun as job {result.get('job_id')}"
    state = result.get("state")
    verb = {"hold": "held", "release": "released", "kill": "kill requested"}[action]
    text = f"job {job_id}: {verb}"
    acted_on = result.get("job_id")
    if acted_on is not None and acted_on != job_id:
        # the scheduler acts on the newest job of the slot (a retry of job_id)
        text = f"job {acted_on} (the newest retry of job {job_id}): {verb}"
    return text + (f" (now {state})" if state else "")


def _job_command(action: str, summary: str) -> Callable[..., None]:
    @click.argument("job_id", type=click.IntRange(min=1))
    @_api_option
    def command(job_id: int, api_url: str) -> None:
        result = _call(api_url, f"jobs.{action}", {"job_id": job_id})
        click.echo(_describe(action, job_id, result))

    command.__doc__ = summary
    return main.command(name=action)(command)


_job_command("hold", """Keep waiting job JOB_ID from starting until it is released.

Fails for a job that has started or ended.""")
_job_command("release", """Let held job JOB_ID start again when its turn comes.""")
_job_command("kill", """Kill job JOB_ID: a running job is killed, a waiting or held one
is cancelled; the steps that depend on it are skipped.""")
_job_command("rerun", """Run ended job JOB_ID's slot again, as a new job with a full set
of tries (the jobs downstream that were skipped because of it run again too);
prints the new job's id.""")


if __name__ == "__main__":
    main(prog_name="muppet")
