"""One active daemon per database: the lease it holds for its whole life.

Two daemons on one database would both fire cron and both start every job
(MUPPET design, "one active daemon per database"). The daemon takes the lease
before it touches anything else and keeps it until it exits:

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a
  connection of its own. The server lets it go when that session ends, so a
  daemon killed with -9, or whose host vanished, frees it once the server
  notices the session is gone (TCP keepalives, see ``store._PG_DEFAULTS``).
- SQLite: an exclusive ``flock`` on the database file. SQLite itself uses
  POSIX record locks, which on Linux do not interact with ``flock``; the
  kernel drops the lock when the process dies, however it dies.

Who holds it (host, pid, since when, its API address) is written in the
``daemons`` table once the lease is taken, so that a second daemon can name
the holder in its refusal. Blocking throughout: call it in a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from typing import Any

import attrs
import psycopg

from .. import codec
from .dialect import describe_url, kind_of, sqlite_path
from .store import Store, connect_postgresql

#: pg_try_advisory_lock key of the daemon's lease: "MUPLEASE" in ASCII, apart
#: from the migrations' key
LEASE_KEY = 0x4D55504C45415345


@attrs.frozen
class Holder:
    """A daemon, as it names itself in the ``daemons`` table."""

    host: str
    pid: int
    #: when it took the lease (seconds since the epoch)
    since: float
    #: its API, as clients reach it (ws://HOST:PORT)
    api: str

    @classmethod
    def this_process(cls, api: str) -> Holder:
        return cls(host=socket.gethostname(), pid=os.getpid(), since=time.time(), api=api)

    def describe(self) -> str:
        return f"the daemon on {self.host} (pid {self.pid}, since {codec.format_time(self.since)}, API {self.api})"


class LeaseHeld(Exception):
    """Another daemon holds the database's lease."""

    def __init__(self, database: str, holder: Holder | None) -> None:
        who = holder.describe() if holder is not None else "another daemon (it has not said who yet)"
        super().__init__(
            f"database {database} is in use by {who}: one daemon per database; "
            "stop that one first, or give this one another [daemon] database"
        )
        self.holder = holder


class Lease:
    """The lease on one database, taken by ``take``; ``release`` lets it go
    (the process's end does too)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.kind = kind_of(url)
        self._conn: Any = None
        self._fd: int | None = None

    def take(self) -> None:
        """Take the lease now, or raise LeaseHeld naming the holder.
        Raises what connecting raises when the database cannot be reached."""
        if self.kind == "sqlite":
            path = sqlite_path(self.url)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            # a missing file is made empty: SQLite takes a zero-length file
            # for a new database
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LeaseHeld(describe_url(self.url), self._holder()) from None
            self._fd = fd
            return
        conn = connect_postgresql(self.url)
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEASE_KEY,)).fetchone()
        if row is None or not row[0]:
            conn.close()
            raise LeaseHeld(describe_url(self.url), self._holder())
        self._conn = conn

    def announce(self, store: Store, holder: Holder) -> None:
        """Write ``holder`` as the active daemon (after the migrations made
        the table)."""

        def work(cursor: Any) -> None:
            cursor.execute(store.sql("DELETE FROM daemons WHERE role = 'active'"))
            cursor.execute(
                store.sql("INSERT INTO daemons (host, pid, since, api, role) VALUES (?, ?, ?, ?, 'active')"),
                (holder.host, holder.pid, holder.since, holder.api),
            )

        store.transaction(work, write=True)

    def _holder(self) -> Holder | None:
        """The active daemon as the ``daemons`` table names it, if it can be read."""
        try:
            store = Store(self.url, busy_timeout=1.0)
        except Exception:
            return None
        try:
            rows = store.query("SELECT host, pid, since, api FROM daemons WHERE role = 'active'")
        except Exception:
            return None  # a database from before the table, or not readable now
        finally:
            store.close()
        return Holder(*rows[0]) if rows else None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            try:
                # unlocked here, at once: closing alone leaves the lock to the
                # server's backend, which ends a moment later, so a daemon
                # started right after could find the lease still held
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (LEASE_KEY,))
            except psycopg.Error:
                pass  # the connection is gone, and the lock with it
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
