"""The ``muppet-sync`` command: seed, fetch, status, torrent, torrent-file."""

from __future__ import annotations

import base64
import importlib.metadata
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click
import trio

from muppet.unwrap_group import unwrap_group

if TYPE_CHECKING:  # imported where used, so that `status` starts without libtorrent
    from .config import FetchConfig, SeedConfig
    from .fetch import Fetcher
    from .progress import ProgressBars
    from .seed import Seeder

#: a click command function, which the option decorators hand back as it is
_Command = TypeVar("_Command", bound=Callable[..., Any])

TOKEN_ENV = "MUPPET_TOKEN"

log = logging.getLogger("muppet.sync")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """MUPPET's file sync over BitTorrent (docs/sync.md).

    \b
    muppet-sync seed    on the producer's storage host: make torrents of the
                        selected finished files, publish them in the index,
                        seed them until they expire
    muppet-sync fetch   on a consumer host: download the selected files from
                        the swarm, verify, place them under data_dir,
                        register and seed the copies, remove them on expiry
    muppet-sync status  what a running seed or fetch is doing, per file
    muppet-sync torrent the torrent of an indexed file, for any client

    Index writes need a token when the daemon has [api] tokens_file: its
    secret goes in the MUPPET_TOKEN environment variable.
    """


@main.command()
def version() -> None:
    """Print muppet-sync's version."""
    try:
        text = importlib.metadata.version("muppet")
    except importlib.metadata.PackageNotFoundError:
        text = "unknown (not installed)"
    click.echo(f"muppet-sync {text}")


class Failure(click.ClickException):
    """A command cannot do its work for a reason an operator can fix (the
    configuration, the environment, the index's answer): each line of the
    message is printed as ``muppet-sync: error: LINE`` on stderr, with no
    traceback, and the command exits 1. A bug is not caught: it keeps its
    traceback (docs/sync.md, "Start-up errors")."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.lines:
            click.echo(f"muppet-sync: error: {line}", err=True, file=file)


def _fail(*lines: str) -> NoReturn:
    raise Failure(*lines)


def _config_option(role: str) -> Callable[[_Command], _Command]:
    # a plain string, not click.Path(dir_okay=False): a directory or a missing
    # file is the loader's one line (muppet.tomlcheck.read_toml), not a usage error
    return click.option(
        "--config", "config_path", required=True, metavar="FILE",
        help=f"The {role} configuration (TOML; see conf/sync-{role}.toml).",
    )


_LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


def _load(role: str, path: str) -> SeedConfig | FetchConfig:
    from .config import ConfigError, load_fetch_config, load_seed_config

    try:
        return load_seed_config(path) if role == "seed" else load_fetch_config(path)
    except ConfigError as e:
        # each problem is one line naming the file, the table and the key
        _fail(*(str(problem) for problem in e.problems))


def _setup_logging(level: str, bars: ProgressBars | None) -> None:
    from .progress import BarsLogHandler

    handler: logging.Handler = BarsLogHandler(bars) if bars is not None else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def _run(config: SeedConfig | FetchConfig, token: str | None, bars: ProgressBars | None) -> None:
    from .config import SeedConfig
    from .errors import StartupError
    from .preflight import check_environment
    from .state import StateDirInUse, lock_state_dir

    # Everything the file names that this host may not have, before anything
    # starts: one line each rather than a stack trace from deep inside.
    await trio.to_thread.run_sync(check_environment, config)
    role = "seed" if isinstance(config, SeedConfig) else "fetch"
    try:
        lock = await trio.to_thread.run_sync(lock_state_dir, config.state_dir, role)
    except StateDirInUse as e:
        raise StartupError([f"{config.source}: state_dir: {e}"]) from None
    try:
        await _run_locked(config, token, bars)
    finally:
        os.close(lock)


async def _run_locked(config: SeedConfig | FetchConfig, token: str | None, bars: ProgressBars | None) -> None:
    """``_run`` once the state directory is this process's."""
    from .config import SeedConfig, api_hosts
    from .engine import open_engine
    from .engine_settings import EngineSettings
    from .errors import ListenError, StartupError
    from .fetch import Fetcher
    from .follow import advertised_peer, open_link
    from .preflight import resolve_problem
    from .seed import Seeder
    from .select import Selection
    from .state import load_state
    from .web import bind

    try:
        state = await trio.to_thread.run_sync(load_state, config.state_dir)
    except ValueError as e:
        raise StartupError([f"{config.source}: state_dir: {e}"]) from None
    if isinstance(config, SeedConfig):
        selection = Selection(config.select)
    else:
        selection = Selection(config.select, own_backend=config.backend, need_torrent=True)
    listener = await trio.to_thread.run_sync(bind, config.source, config.metrics_listen)
    try:
        async with open_engine(EngineSettings.from_config(config)) as engine:
            async with open_link(config.api, token) as link:
                try:
                    peer = await trio.to_thread.run_sync(
                        advertised_peer, config.advertise, config.listen.host, engine.listen_port, config.api
                    )
                except socket.gaierror:
                    # check_environment found the name; the resolver has failed since
                    host = api_hosts(config.api)[0]
                    raise StartupError([f"{config.source}: api: {resolve_problem(host)}"]) from None
                run: Seeder | Fetcher
                if isinstance(config, SeedConfig):
                    run = Seeder(config, engine, link, selection, state, peer, token)
                else:
                    run = Fetcher(config, engine, link, selection, state, peer, token)
                if bars is not None:
                    run.on_status.append(bars.update)
                # the body's own error (BackendMissing) comes out as itself
                with unwrap_group():
                    async with trio.open_nursery() as nursery:
                        if listener is not None:
                            # first: /healthz says why while the index is awaited
                            await nursery.start(_serve_web, listener, run, token)
                        if isinstance(run, Fetcher):
                            await run.check_backend()
                        log.info("muppet-sync %s: index %s, peer %s, listening on port %d, products %s",
                                 run.role, config.api, peer, engine.listen_port, ", ".join(selection.products))
                        await run.run()
                        nursery.cancel_scope.cancel()
    except ListenError as e:  # only opening the engine raises it
        raise StartupError([f"{config.source}: listen: {e}"]) from None
    finally:
        if listener is not None:
            listener.close()  # nothing when the web task took it over


async def _serve_web(
    listener: socket.socket, run: Seeder | Fetcher, token: str | None, *, task_status: trio.TaskStatus[str]
) -> None:
    """/metrics and /healthz of ``run`` (sync.web), until cancelled."""
    from .engine import Engine
    from .follow import IndexLink, follow
    from .resume import ResumeWriter
    from .run import SyncRun
    from .web import WebState, running_task_names, serve

    # The tasks that live as long as the command, by the names Trio gives
    # them: /healthz fails when one is gone (docs/sync.md, "Metrics and
    # health check"). The work for one file comes and goes.
    expected = frozenset(f"{fn.__module__}.{fn.__qualname__}" for fn in (
        follow, IndexLink._keep, Engine._alert_loop, ResumeWriter.run, SyncRun._status_loop, SyncRun._expiry_loop,
    ))
    root = trio.lowlevel.current_root_task()
    state = WebState(
        metrics=run.metrics, sample=run.sample, api=run.config.api, token=token, events=run.index_state,
        running_tasks=lambda: running_task_names(root) if root is not None else frozenset(),
        expected_tasks=expected,
    )
    await serve(listener, state, task_status=task_status)


async def _until_signalled(config: SeedConfig | FetchConfig, token: str | None, bars: ProgressBars | None) -> None:
    """Run until done, or until SIGTERM/SIGINT cancel it (which saves resume
    data and state on the way out)."""
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        await _run(config, token, bars)
        nursery.cancel_scope.cancel()


def _command(role: str, config_path: str, log_level: str, progress: bool | None) -> None:
    from .errors import StartupError, SyncError
    from .progress import ProgressBars

    config = _load(role, config_path)
    if progress is None:
        progress = role == "fetch" and sys.stderr.isatty()
    bars = ProgressBars(sys.stderr) if progress else None
    _setup_logging(log_level, bars)
    token = click.get_current_context().meta.get("token")
    try:
        # _until_signalled's nursery wraps what _run raises; the helpers
        # inside it (open_engine, open_link) let their bodies' errors out bare
        with unwrap_group():
            trio.run(_until_signalled, config, token, bars)
    except StartupError as e:
        _fail(*e.problems)
    except SyncError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        return
    finally:
        if bars is not None:
            bars.clear()
    log.info("stopped")


def _token_option(func: _Command) -> _Command:
    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        ctx.meta["token"] = value or None

    return click.option(
        "--token", metavar="SECRET", envvar=TOKEN_ENV, show_envvar=True, expose_value=False,
        callback=remember, help="The secret of an API token, for index writes.",
    )(func)


def _log_option(func: _Command) -> _Command:
    return click.option("--log-level", default="info", show_default=True, type=_LOG_LEVELS,
                        help="How much to log (to stderr).")(func)


@main.command()
@_config_option("seed")
@_log_option
@_token_option
def seed(config_path: str, log_level: str) -> None:
    """Seed the selected files of this host's storage.

    Follows the index's event stream (resuming after the last event handled,
    kept in state_dir), first catching up with the `recent` newest reference
    times of each selected product. Each selected file on a file:// backend
    is hashed into a BitTorrent v1 torrent (in a worker thread), seeded, and
    its info-hash, torrent and this host's peer address are stored in the
    index. Seeding a file stops when it expires, is deleted in the index, or
    falls out of the `recent` window. Runs until SIGINT/SIGTERM.
    """
    _command("seed", config_path, log_level, False)


@main.command()
@_config_option("fetch")
@_log_option
@_token_option
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr. Default: when stderr is a terminal.")
def fetch(config_path: str, log_level: str, progress: bool | None) -> None:
    """Keep the selected files on this host, fetched from the swarm.

    Follows the index like `seed`. Each selected file with a torrent is
    downloaded from every host that holds it (from the index, and the
    trackers), its SHA-256 checked against the index, and renamed into place
    under data_dir by the layout; the copy is registered on this host's own
    backend and seeded to the other consumers; `on_complete` runs. Expired
    files are removed and their copies marked deleted in the index. A
    download interrupted by an outage or a restart continues from its
    verified pieces. Runs until SIGINT/SIGTERM.
    """
    _command("fetch", config_path, log_level, progress)


@main.command()
@click.option("--config", "config_path", metavar="FILE",
              help="A seed or fetch configuration: its state_dir is read.")
@click.option("--state-dir", metavar="DIR", help="The state directory, instead of --config.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(config_path: str | None, state_dir: str | None, as_json: bool) -> None:
    """Show what a seed or fetch process is doing, file by file.

    States: queued, downloading (percent and rate), seeding, expired (with the
    reason; shown for an hour), error (with the error). Reads the status the
    running process writes to state_dir every second, so it works without the
    index and from another user's shell.
    """
    import json

    from .config import ConfigError, load_state_dir
    from .state import read_status, render_status

    if state_dir is not None:
        directory = Path(state_dir)
    elif config_path is not None:
        try:
            directory = load_state_dir(config_path)
        except ConfigError as e:
            _fail(*(str(problem) for problem in e.problems))
    else:
        raise click.UsageError("give --config FILE or --state-dir DIR")
    if directory.exists() and not directory.is_dir():
        _fail(f"{'--state-dir' if state_dir is not None else f'{config_path}: state_dir'}: "
              f"{directory} is not a directory")
    try:
        current = read_status(directory)
    except ValueError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(current, indent=1))
    else:
        click.echo(render_status(current, directory, time.time()))


@main.command()
@click.argument("file_id", metavar="DATA_INSTANCE_ID", type=click.IntRange(min=1))
@click.option("--output", "-o", required=True, metavar="FILE", help="Where to write the .torrent file.")
@click.option("--api", default="ws://127.0.0.1:8765", show_default=True, envvar="MUPPET_API",
              show_envvar=True,
              help="The daemon's API (ws://HOST:PORT; an active daemon and its standbys: comma-separated).")
@_token_option
def torrent(file_id: int, output: str, api: str) -> None:
    """Write the torrent of an indexed file (a data instance) to --output.

    Any BitTorrent client (aria2c, Transmission) can then fetch the file from
    its seeders. A copy registered by a consumer has only the info-hash: the
    torrent is taken from another copy of the same file. Prints the info-hash.
    """
    from muppet.api.client import ConnectionLost, DaemonUnreachable, connect
    from muppet.api.protocol import RpcError

    token = click.get_current_context().meta.get("token")
    _check_api(api)

    async def get() -> tuple[str, bytes]:
        async with connect(api, token=token) as client:
            wanted = await client.call("files.get", {"file_id": file_id, "torrent": True})
            if wanted is None:
                _fail(f"no file {file_id} in the index at {api}")
            if wanted.get("torrent"):
                return wanted["info_hash"], base64.b64decode(wanted["torrent"])
            for copy in await client.call("files.copies", {"data_id": wanted["data_id"]}):
                if copy.get("info_hash") and copy["info_hash"] == wanted.get("info_hash"):
                    got = await client.call("files.get", {"file_id": copy["id"], "torrent": True})
                    if got.get("torrent"):
                        return got["info_hash"], base64.b64decode(got["torrent"])
            _fail(
                f"file {file_id} ({wanted['name']}) has no torrent in the index: "
                "is muppet-sync seed running for its product and backend?"
            )

    try:
        # connect's nursery wraps what its body raises
        with unwrap_group():
            info_hash, data = trio.run(get)
    except (DaemonUnreachable, ConnectionLost, RpcError) as e:
        _fail(str(e))
    _write_output(output, data)
    click.echo(info_hash)


def _check_api(api: str) -> None:
    """--api (or MUPPET_API) as the API client needs it, else one line."""
    ctx = click.get_current_context()
    where = "MUPPET_API" if ctx.get_parameter_source("api") == click.core.ParameterSource.ENVIRONMENT else "--api"
    for url in api.split(","):
        parts = urlsplit(url.strip())
        try:
            parts.port  # noqa: B018 - urllib checks the port's range only when it is read
        except ValueError as e:
            _fail(f"{where}: {api!r}: {e}")
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            _fail(f"{where}: must be the daemon's API as ws://HOST:PORT or wss://HOST:PORT, got {api!r}")


def _write_output(output: str, data: bytes) -> None:
    try:
        with open(output, "wb") as f:
            f.write(data)
    except OSError as e:
        _fail(f"--output: cannot write {output}: {e.strerror or e}")


@main.command("torrent-file")
@click.argument("path")
@click.option("--output", "-o", required=True, metavar="FILE", help="Where to write the .torrent file.")
@click.option("--tracker", "trackers", multiple=True, metavar="URL",
              help="Tracker announce URL to put in the torrent (repeatable).")
def torrent_file(path: str, output: str, trackers: tuple[str, ...]) -> None:
    """Make the BitTorrent (v1) torrent of a local file, the way `seed` does.

    Prints the info-hash. Any BitTorrent client can then fetch the file from a
    seeder of it.
    """
    from .errors import SyncError
    from .torrent import info_hash_hex, make_torrent

    try:
        data = make_torrent(path, trackers)
    except SyncError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{path}: cannot read: {e.strerror or e}")
    _write_output(output, data)
    click.echo(info_hash_hex(data))


if __name__ == "__main__":
    main(prog_name="muppet-sync")
