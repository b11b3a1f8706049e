"""A throw-away PostgreSQL 15 server, for the tests (conftest.py) and the
benchmarks (bench/), run as an unprivileged user since PostgreSQL refuses root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from services import free_port  # tests/ is on sys.path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


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
        self.port = free_port()
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

    def ctl(self, action: str, mode: str = "fast") -> None:
        """pg_ctl start, stop or restart, waiting until it is done; ``mode``
        is the stop's shutdown mode ("immediate": as if the server crashed)."""
        options = (
            f"-c listen_addresses={self.host} -c port={self.port}"
            f" -c unix_socket_directories={self.root} -c max_connections=200"
        )
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60"]
        if action == "stop":
            argv += ["-m", mode, "stop"]
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

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
