"""`muppet daemon`'s start-up errors (docs/operations.md, "Start-up errors"):
one caused by the configuration or the environment (a database that cannot
be reached or opened, an API address that cannot be listened on, a state
directory that cannot be made) is one line, ``muppet: error: FILE: [TABLE]
KEY: cause``, and exit status 1, never a traceback; a bug keeps its
traceback.

Each case starts the real daemon in its own process, except the last, which
puts a bug in on purpose."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from services import MISSING_HOST, free_port, no_such_name, service_missing  # tests/ is on sys.path

from muppet import cli

#: a log line: the daemon logs its start before it fails
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def start(tmp_path: Path, database: str | None = None, *, api: str = "", **daemon: str) -> tuple[Path, str]:
    """Write a daemon file (SQLite in tmp_path, the API on a free port, but
    for ``database``, ``api`` lines and ``daemon`` keys), run `muppet daemon`
    on it; its path and the one line it printed, after checking that this
    line is all it said besides its log, with exit status 1 and no traceback."""
    keys = {
        "database": database or f"sqlite:///{tmp_path / 'muppet.db'}",
        "state_dir": str(tmp_path / "state"),
        "output_dir": str(tmp_path / "output"),
    } | daemon
    path = tmp_path / "muppet.toml"
    path.write_text("[daemon]\n" + "".join(f'{key} = "{value}"\n' for key, value in keys.items())
                    + "[api]\n" + (textwrap.dedent(api) or 'listen = "127.0.0.1:0"\n'))
    done = subprocess.run([sys.executable, "-m", "muppet.cli", "daemon", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if not LOG_LINE.match(line)]
    assert len(said) == 1, done.stderr
    return path, said[0]


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system (a tmpfs mounted ro: root ignores modes)."""
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        service_missing(f"cannot mount a read-only tmpfs: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


@pytest.fixture
def tokens(tmp_path):
    """A tokens file, which lets the API listen on another address than loopback."""
    path = tmp_path / "tokens.toml"
    path.write_text(f'[tokens.ops]\nsha256 = "{hashlib.sha256(b"x" * 40).hexdigest()}"\nrole = "write"\n')
    return path


# --- the database ---------------------------------------------------------------------


def test_a_postgresql_host_that_does_not_resolve(tmp_path):
    why = f"[Errno {socket.EAI_NONAME}] {no_such_name()}"
    url = f"postgresql://muppet@{MISSING_HOST}/muppet"
    path, line = start(tmp_path, url)
    assert line == (f"muppet: error: {path}: [daemon] database: {url}: "
                    f"failed to resolve host '{MISSING_HOST}': {why}")


def test_a_postgresql_server_that_does_not_answer(tmp_path):
    port = free_port()
    url = f"postgresql://muppet@127.0.0.1:{port}/muppet"
    path, line = start(tmp_path, url)
    # psycopg's message is two lines; the daemon's is one
    assert line == (
        f"muppet: error: {path}: [daemon] database: {url}: connection failed: connection to server at "
        f'"127.0.0.1", port {port} failed: Connection refused Is the server running on that host and '
        "accepting TCP/IP connections?"
    )


@pytest.mark.postgres
def test_a_postgresql_database_that_does_not_exist(tmp_path, postgres_server):
    url = postgres_server.url("no_such_database")
    path, line = start(tmp_path, url)
    assert line == (
        f"muppet: error: {path}: [daemon] database: {url}: connection failed: connection to server at "
        f'"{postgres_server.host}", port {postgres_server.port} failed: FATAL: database "no_such_database" '
        "does not exist"
    )


def test_a_sqlite_file_under_a_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    database = tmp_path / "plain" / "muppet.db"
    path, line = start(tmp_path, f"sqlite:///{database}")
    assert line == f"muppet: error: {path}: [daemon] database: {database}: {tmp_path / 'plain'} is not a directory"


def test_a_sqlite_file_on_a_read_only_file_system(tmp_path, read_only):
    path, line = start(tmp_path, f"sqlite:///{read_only / 'muppet.db'}")
    assert line == f"muppet: error: {path}: [daemon] database: Read-only file system: {read_only / 'muppet.db'}"


def test_a_sqlite_file_that_is_not_a_database(tmp_path):
    database = tmp_path / "other.db"
    database.write_bytes(b"not SQLite at all " * 100)
    path, line = start(tmp_path, f"sqlite:///{database}")
    # sqlite3's message names no file: the daemon's does
    assert line == f"muppet: error: {path}: [daemon] database: {database}: file is not a database"


def test_a_sqlite_path_that_is_a_directory(tmp_path):
    (tmp_path / "db").mkdir()
    path, line = start(tmp_path, f"sqlite:///{tmp_path / 'db'}")
    assert line == f"muppet: error: {path}: [daemon] database: Is a directory: {tmp_path / 'db'}"


# --- the API's address ----------------------------------------------------------------


def test_an_api_address_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path, line = start(tmp_path, api=f'listen = "127.0.0.1:{port}"\n')
    assert line == (f"muppet: error: {path}: [api] listen: cannot listen on ws://127.0.0.1:{port}: "
                    "Address already in use (another daemon there? choose another address)")


def test_an_api_address_not_of_this_host(tmp_path, tokens):
    path, line = start(tmp_path, api=f"""
        listen = "192.0.2.1:8765"
        tokens_file = "{tokens}"
        """)  # RFC 5737 TEST-NET-1
    assert line == (f"muppet: error: {path}: [api] listen: cannot listen on ws://192.0.2.1:8765: "
                    "Cannot assign requested address (not an address of this host: give one of its own, "
                    "or 0.0.0.0 for all of them)")


def test_an_api_host_that_does_not_resolve(tmp_path, tokens):
    why = no_such_name()
    path, line = start(tmp_path, api=f"""
        listen = "{MISSING_HOST}:8765"
        tokens_file = "{tokens}"
        """)
    assert line == (f"muppet: error: {path}: [api] listen: cannot listen on ws://{MISSING_HOST}:8765: "
                    f"{why} (the host name does not resolve here: give an address, or a name this host "
                    "resolves)")


def test_an_api_certificate_that_does_not_load(tmp_path, tokens):
    (tmp_path / "api.crt").write_text("not a certificate\n")
    (tmp_path / "api.key").write_text("not a key\n")
    path, line = start(tmp_path, api=f"""
        listen = "127.0.0.1:0"
        tokens_file = "{tokens}"
        tls_cert = "{tmp_path / 'api.crt'}"
        tls_key = "{tmp_path / 'api.key'}"
        """)
    assert line.startswith(f"muppet: error: {path}: [api] tls_cert: cannot load the certificate "
                           f"{tmp_path / 'api.crt'} with the key {tmp_path / 'api.key'}: "), line
    assert line.endswith(" (both PEM, the key matching the certificate)"), line


def test_a_web_address_not_of_this_host(tmp_path, tokens):
    path, line = start(tmp_path, api=f"""
        listen = "127.0.0.1:0"
        tokens_file = "{tokens}"
        [web]
        listen = "192.0.2.1:8780"
        """)
    assert line == (f"muppet: error: {path}: [web] listen: cannot listen on http://192.0.2.1:8780: "
                    "Cannot assign requested address (not an address of this host: give one of its own, "
                    "or 0.0.0.0 for all of them, or listen = \"\" for no web page)")


# --- the state directory --------------------------------------------------------------


def test_a_state_dir_under_a_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    path, line = start(tmp_path, state_dir=str(tmp_path / "plain" / "state"))
    assert line == f"muppet: error: {path}: [daemon] state_dir: Not a directory: {tmp_path / 'plain' / 'state'}"


def test_a_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "plain").write_text("x")
    path, line = start(tmp_path, state_dir=str(tmp_path / "plain"))
    assert line == f"muppet: error: {path}: [daemon] state_dir: {tmp_path / 'plain'} is not a directory"


def test_a_state_dir_on_a_read_only_file_system(tmp_path):
    """Checked when the daemon starts, by writing a file there: not at the
    first job."""
    mountpoint = tmp_path / "readonly"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        service_missing(f"cannot mount a read-only tmpfs: {done.stderr.strip()}")
    try:
        path, line = start(tmp_path, state_dir=str(mountpoint))
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)
    assert line.startswith(f"muppet: error: {path}: [daemon] state_dir: Read-only file system: {mountpoint}/"), line


def test_a_state_dir_ahead_of_its_database(tmp_path):
    (tmp_path / "state" / "jobs" / "7").mkdir(parents=True)
    path, line = start(tmp_path)
    assert line == (
        f"muppet: error: {path}: [daemon] state_dir: {tmp_path / 'state'} holds job directories up to job 7, "
        f"but the database {tmp_path / 'muppet.db'} has only reached job 0: a new database with an old "
        f"state_dir? Move {tmp_path / 'state'}/jobs away or set another state_dir"
    )


# --- a bug is not an operator's error ---------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["bare", "in-a-nursery"])
def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch, nested):
    from muppet import daemon

    async def broken(config, **options):
        if not nested:
            raise ZeroDivisionError("a bug")

        async def fails() -> None:
            raise ZeroDivisionError("a bug")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails)

    monkeypatch.setattr(daemon, "serve_until_signal", broken)
    result = CliRunner().invoke(cli.main, ["daemon"])
    # it comes out of the command as it was raised, not as one line
    error = result.exception
    if nested:
        assert isinstance(error, ExceptionGroup), result.output
        error = error.exceptions[0]
    assert isinstance(error, ZeroDivisionError), result.output
    assert "muppet: error" not in result.output
