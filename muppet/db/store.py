"""The synchronous store: one connection to SQLite or PostgreSQL, its
transactions and its schema.

Every method blocks (disk, network), so Trio code calls them through
``trio.to_thread.run_sync``. A Store holds one connection and is used by one
thread at a time; the database task owns the writing Store, and the API opens
its own for reads. What is read and written lives beside it, as functions of
a Store: ``writes.py`` (the database task's batches), ``reads.py`` (runs, jobs,
events) and ``muppet/index/queries.py`` (the index).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .dialect import Kind, StoreError, describe_url, kind_of, sqlite_path, translate
from .migrations import MIGRATIONS, latest_version, statements

log = logging.getLogger("muppet.db")

__all__ = ["DatabaseUnavailable", "Store", "StoreError", "open_store"]

T = TypeVar("T")

#: libpq settings unless the URL gives its own: without them a connect to an
#: unreachable host, or a query on a connection whose peer vanished, blocks the
#: worker thread for the kernel's TCP timeouts (many minutes), and a thread that
#: is writing is never abandoned, so the daemon could not even stop
_PG_DEFAULTS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

#: SQLite's primary result codes of a transient failure (sqlite.org/rescode.html)
_SQLITE_TRANSIENT = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
})

#: pg_advisory_xact_lock key held while migrating: "MUPPET" in ASCII
_MIGRATION_LOCK = 0x4D5550504554


#: the ``application_name`` of the PostgreSQL sessions opened in this
#: context (a Trio task and its worker threads): a daemon names every session
#: it opens, so that a standby that takes its expired lease over can end them
#: all (``lease.py``)
CONNECTION_TAG: contextvars.ContextVar[str] = contextvars.ContextVar("muppet_connection_tag", default="")


def connect_postgresql(url: str, **defaults: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection to ``url`` in autocommit mode (psycopg opens no
    transaction of its own; the caller says BEGIN), with ``defaults`` and
    ``_PG_DEFAULTS`` where the URL does not set its own, named by
    ``CONNECTION_TAG`` when that is set."""
    given = conninfo_to_dict(url)
    wanted = {**_PG_DEFAULTS, **defaults}
    tag = CONNECTION_TAG.get()
    if tag:
        wanted["application_name"] = tag
    settings: dict[str, Any] = {k: v for k, v in wanted.items() if k not in given}
    return psycopg.connect(url, autocommit=True, **settings)


class DatabaseUnavailable(Exception):
    """The database could not take the transaction for now (locked, down,
    connection lost, out of space); it was rolled back and may be retried.
    The original error is the ``__cause__``."""


def open_store(url: str, *, busy_timeout: float = 5.0) -> Store:
    """Connect to ``url`` and bring its schema up to date.

    ``url`` is ``sqlite:///absolute/path.db`` or a libpq URL
    (``postgresql://user@host:port/dbname``, ``postgres://`` also). For
    SQLite, ``busy_timeout`` is how many seconds a statement waits for another
    connection's lock before failing with "database is locked". Raises
    StoreError for a URL it cannot use or a schema newer than this code, and
    DatabaseUnavailable (naming the database) when it cannot be reached.
    """
    try:
        store = Store(url, busy_timeout=busy_timeout)
    except (sqlite3.OperationalError, psycopg.OperationalError, OSError) as exc:
        raise DatabaseUnavailable(f"{describe_url(url)}: {exc}") from exc
    try:
        store.migrate()
    except (sqlite3.OperationalError, psycopg.OperationalError) as exc:
        store.close()
        raise DatabaseUnavailable(f"{store.describe()}: {exc}") from exc
    except BaseException:
        store.close()
        raise
    return store


class Store:
    """One connection to the MUPPET database; see the module docstring."""

    def __init__(self, url: str, *, busy_timeout: float = 5.0) -> None:
        self.kind: Kind = kind_of(url)
        self._path = sqlite_path(url) if self.kind == "sqlite" else ""
        self.url = url
        self._busy_timeout = busy_timeout
        self._conn: Any = None
        self._connect()

    # -- connection and transactions

    def _connect(self) -> None:
        conn: Any
        if self.kind == "sqlite":
            # the embedded default lives in a state directory that may not
            # exist yet on a fresh machine
            os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
            # isolation_level=None: the module never opens transactions behind our
            # back, we say BEGIN IMMEDIATE ourselves (take the write lock up front,
            # so a writer waits at BEGIN instead of failing halfway)
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False,
                timeout=self._busy_timeout,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                mode = self._switch_to_wal(conn)
                if mode.lower() != "wal":
                    raise StoreError(f"{self._path}: cannot switch to WAL mode (got {mode})")
                # FULL: with WAL, NORMAL may lose the last commits on power loss,
                # and the scheduler acts on what it was told is committed
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            except BaseException:
                conn.close()
                raise
        else:
            conn = connect_postgresql(self.url)
        self._conn = conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        # The switch (done once per database file, a no-op later) fails at once
        # with "database is locked" while another connection opens the same
        # new file: SQLite does not call the busy handler for it (four threads
        # opening one fresh file together: 3 of 60 trials failed without this)
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _connection(self) -> Any:
        if self._conn is None:
            self._connect()
        return self._conn

    def transaction(self, work: Callable[[Any], T], *, write: bool | None) -> T:
        """``work(cursor)`` inside one transaction (reads.py and writes.py call
        this with their SQL); commit, or roll back and raise.

        ``write=True`` takes the write lock up front; ``False`` reads from one
        snapshot; ``None`` runs a single statement in autocommit (it is atomic by
        itself, and the hot read path saves two round trips). A transient
        failure comes out as DatabaseUnavailable. A connection that broke is
        dropped; when it broke before this call (the server restarted since
        its last use), ``work`` is tried once more on a new connection at
        once, so that a stale connection is not taken for an outage. ``work``
        must therefore be safe to run again after a rollback (the database
        task's writes check their batch token first).
        """
        reused = self._conn is not None
        try:
            return self._attempt(work, write)
        except DatabaseUnavailable:
            if not (reused and self.kind == "postgresql"):
                raise
            return self._attempt(work, write)

    def _attempt(self, work: Callable[[Any], T], write: bool | None) -> T:
        try:
            conn = self._connection()
            try:
                if write is not None:
                    conn.execute(self._begin_sql(write))
                result = work(conn.cursor())
                if write is not None:
                    conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return result
        except Exception as exc:
            if not self.is_transient(exc):
                raise
            if self.kind == "postgresql":
                # the next attempt starts on a new connection: the server may have
                # restarted, or (read-only) a failover moved the primary elsewhere
                self._drop()
            raise DatabaseUnavailable(f"{self.describe()}: {exc}") from exc

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database's weather (worth a retry) rather
        than a bug. SQLite: busy, locked, full, I/O errors and a file that
        cannot be opened (by its result code; "no such column" or a syntax
        error is a bug). PostgreSQL: a lost or refused connection and the
        server's operational errors (shutting down, out of disk, ...), and a
        primary that turned read-only under us (a failover)."""
        if self.kind == "sqlite":
            if isinstance(exc, OSError):
                return True  # making the database's directory: ENOSPC, EIO, ...
            code = getattr(exc, "sqlite_errorcode", None)
            return isinstance(exc, sqlite3.OperationalError) and code is not None and (
                (code & 0xFF) in _SQLITE_TRANSIENT
            )
        return isinstance(exc, (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction))

    def _begin_sql(self, write: bool) -> str:
        if self.kind == "sqlite":
            return "BEGIN IMMEDIATE" if write else "BEGIN"
        return "BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if self.kind == "sqlite":
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            elif conn.broken or conn.closed:
                self._drop()
            elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except (sqlite3.Error, psycopg.Error):
            # the connection is unusable: start afresh on the next call
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def describe(self) -> str:
        """The database's name for messages (no password)."""
        return describe_url(self.url)

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- migrations

    def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, each in its own transaction.

        Two processes migrating at once apply each migration once: SQLite's
        BEGIN IMMEDIATE and PostgreSQL's transaction-scoped advisory lock let one
        in at a time, and the version is read again under the lock. Returns the
        versions applied now.
        """
        applied_now: list[int] = []
        for version, sql in MIGRATIONS:
            if self._apply(version, sql):
                applied_now.append(version)
                log.info("%s: applied schema migration %d", self.describe(), version)
        return applied_now

    def _apply(self, version: int, sql: str) -> bool:
        conn = self._connection()
        if self.kind == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
        else:
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(self.sql(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            ))
            newest = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
            if newest is not None and newest > latest_version():
                raise StoreError(
                    f"database {self.describe()} has schema version {newest}; this MUPPET"
                    f" knows versions up to {latest_version()}: upgrade MUPPET"
                )
            done = conn.execute(
                self.sql("SELECT 1 FROM schema_migrations WHERE version = ?"), (version,)
            ).fetchone()
            if done:
                conn.execute("ROLLBACK")
                return False
            for statement in statements(sql):
                conn.execute(self.sql(statement))
            conn.execute(
                self.sql("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"),
                (version, time.time()),
            )
            conn.execute("COMMIT")
            return True
        except BaseException:
            self._rollback()
            raise

    def schema_version(self) -> int:
        row = self._connection().execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return row[0] or 0

    # -- reading

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One read-only statement (SQLite's words, ``?`` placeholders), its rows."""
        def work(cursor: Any) -> list[tuple[Any, ...]]:
            cursor.execute(self.sql(sql), tuple(params))
            return list(cursor.fetchall())

        return self.transaction(work, write=None)

    def sql(self, sql: str) -> str:
        """``sql`` (SQLite's words) in this store's dialect."""
        return translate(sql, self.kind)
