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
import subprocess

import psycopg
import pytest
from pgserver import PG_BIN, PostgresServer
from services import service_missing

# An illegal move of a job's or run's state stops the daemon in every test
# (in-process or a subprocess) instead of being refused and logged: see
# docs/states.md.
os.environ["MUPPET_STRICT_STATES"] = "1"


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL 15 server for the whole session (``.url(dbname)``,
    ``.ctl("stop"|"start")``, ``.host``, ``.port``, ``.user``)."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        service_missing(f"PostgreSQL 15 is not installed ({PG_BIN} has no initdb/pg_ctl)")
    try:
        server = PostgresServer()
    except (RuntimeError, OSError) as exc:
        service_missing(f"cannot set up PostgreSQL: {exc}")
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        service_missing(f"PostgreSQL did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server):
    """A URL of a new, empty PostgreSQL database, dropped after the test."""
    name = f"test_{next(_database_numbers)}"
    yield postgres_server.create_database(name)
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


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root); skipped (or failed under
    MUPPET_REQUIRE_SERVICES=1) when it cannot be mounted."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if result.returncode != 0:
        service_missing(f"cannot mount a small tmpfs for the disk-full test: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)
