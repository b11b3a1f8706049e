"""Fixtures shared by every test module: a real PostgreSQL server for the
session, a fresh database per test, and ``database_url`` to run a test on both
SQLite and PostgreSQL.

When PostgreSQL 15 is not installed or does not start, the tests that need it
are skipped with the reason, unless MUPPET_REQUIRE_SERVICES=1, which turns that
into a failure (CI sets it, so a broken setup cannot pass as green).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _service_missing(reason: str) -> None:
    if os.environ.get("MUPPET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (MUPPET_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1, run by an unprivileged user."""

    def __init__(self) -> None:
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run PostgreSQL") from None
            self.user = "postgres"
            self._prefix = ["runuser", "-u", "postgres", "--"]
        else:
            account = pwd.getpwuid(os.geteuid())
            self.user = account.pw_name
            self._prefix = []
        self.root = Path(tempfile.mkdtemp(prefix="muppet-pg-"))
        os.chown(self.root, account.pw_uid, account.pw_gid)
        self.data = self.root / "data"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._log = self.root / "server.log"

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self._prefix, *argv], capture_output=True, text=True, timeout=120, cwd=self.root
        )

    def start(self) -> None:
        done = self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "--auth=trust",
            "--encoding=UTF8", "--no-locale", "-U", self.user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        self.ctl("start")

    def ctl(self, action: str) -> None:
        """pg_ctl start, stop or restart, waiting until it is done."""
        options = (
            f"-c listen_addresses={self.host} -c port={self.port}"
            f" -c unix_socket_directories={self.root} -c max_connections=200"
        )
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60"]
        if action == "stop":
            argv += ["-m", "fast", "stop"]
        else:
            argv += ["-o", options, "-l", str(self._log), action]
        done = self._run(*argv)
        if done.returncode != 0:
            log = self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""
            raise RuntimeError(
                f"pg_ctl {action} failed: {done.stderr.strip() or done.stdout.strip()}\n{log}"
            )

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.ctl("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL 15 server for the whole session (``.url(dbname)``,
    ``.ctl("stop"|"start")``, ``.host``, ``.port``, ``.user``)."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        _service_missing(f"PostgreSQL 15 is not installed ({PG_BIN} has no initdb/pg_ctl)")
    try:
        server = PostgresServer()
    except (RuntimeError, OSError) as exc:
        _service_missing(f"cannot set up PostgreSQL: {exc}")
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        _service_missing(f"PostgreSQL did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server):
    """A URL of a new, empty PostgreSQL database, dropped after the test."""
    name = f"test_{next(_database_numbers)}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url(name)
    # FORCE: a connection the test left open must not keep the database alive
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def database_url(request, tmp_path):
    """A URL of a new, empty database: the test runs once on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'muppet.db'}"
    return request.getfixturevalue("postgres_url")
