"""One active daemon per database: the lease it holds, renews and is fenced by.

Two daemons on one database would both fire cron and both start every job
(MUPPET design, "one active daemon per database"). The daemon takes the lease
before it touches anything else and keeps it until it exits:

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a
  connection of its own. The server lets it go when that session ends, so a
  daemon killed with -9 frees it at once (its socket closes), and one whose
  host vanished once the server notices (TCP keepalives, see
  ``store._PG_DEFAULTS``) or a standby ends its sessions (below).
- SQLite: an exclusive ``flock`` on the database file. SQLite itself uses
  POSIX record locks, which on Linux do not interact with ``flock``; the
  kernel drops the lock when the process dies, however it dies.

A lock alone does not fence: a paused (SIGSTOPped) PostgreSQL client keeps
its session and its lock, and one whose host is cut off keeps them until
the server's keepalives give up, a minute later. So the lease also lives in
the database (the ``lease`` row, migration 6), and three rules keep two
daemons from acting at once (docs/operations.md, "Running a standby"):

1. **Heartbeat.** The holder renews ``lease.expires`` (the database's
   clock: the hosts' clocks do not matter) every ``RENEW_INTERVAL`` seconds,
   to ``LEASE_TIME`` seconds ahead, on its lock's own session. A standby
   that finds the lease expired ends the holder's sessions
   (``pg_terminate_backend`` of every session named by the holder's tag, its
   ``application_name``), which frees the lock, and takes it.
2. **Monotonic fence.** The holder counts its lease valid for ``LEASE_TIME``
   from the moment it *began* its last successful renewal, by the monotonic
   clock, which runs on while the process is stopped. The executor waits for
   a valid lease before it starts or kills a job (``Fence.wait_valid``): a
   daemon woken after a pause, or cut off from its database, starts and
   kills nothing until it has renewed. The database's expiry is set after
   that moment, so it never ends before the holder's own view does.
3. **Epoch.** Each daemon that takes the lease raises ``lease.epoch`` and
   replaces the active daemon's row in ``daemons``; every transaction of the
   database task first reads both (its own row ``FOR SHARE`` on PostgreSQL:
   a takeover waits for a commit in flight and the commit for a takeover)
   and is refused (``LeaseLost``) unless they are still its own
   (``check_epoch``). So a holder that was taken over commits nothing more,
   whatever it was doing when it stopped.

A daemon that learns it was taken over (its renewal finds another epoch or
the lock held by another daemon, or its commit finds another epoch) raises
``LeaseLost`` and exits. One that merely cannot reach the database keeps
trying: as long as no other daemon took the lease, it goes on once it has
renewed (a database restart ends every session, and a single daemon must
survive it, docs/operations.md, "When the database is away").

Who holds it (host, pid, since when, its API address) and who waits
(``role = 'standby'``) is written in the ``daemons`` table, so that a second
daemon can name the holder in its refusal, a standby's API can send writers
to the active one, and ``muppet status`` can show both. The methods of
``Lease`` block: call them in a worker thread.
"""

from __future__ import annotations

import contextvars
import fcntl
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
import trio

from .. import codec
from .dialect import describe_url, kind_of, sqlite_path
from .store import CONNECTION_TAG, DatabaseUnavailable, Store, connect_postgresql, open_store

log = logging.getLogger("muppet.db")

#: pg_try_advisory_lock key of the daemon's lease: "MUPLEASE" in ASCII, apart
#: from the migrations' key
LEASE_KEY = 0x4D55504C45415345
#: seconds a lease lasts after the start of its last renewal: the longest a
#: dead holder's host can keep a standby waiting, and the longest a woken or
#: cut-off holder may still act before it has renewed
LEASE_TIME = 5.0
#: seconds between two renewals: a few chances within one LEASE_TIME
RENEW_INTERVAL = 1.0
#: seconds between a standby's looks at the lease
STANDBY_POLL = 0.25
#: seconds between a standby's writes that it waits (its ``daemons`` row)
STANDBY_SAY = 5.0
#: a standby that has not said it waits for this long is gone (killed)
STANDBY_GONE = 30.0

#: the database's clock, seconds since the epoch, in each dialect
_NOW = {
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())::float8",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def new_tag() -> str:
    """A daemon's name for its database sessions: PostgreSQL's
    ``application_name`` of each connection it opens (at most 63 bytes)."""
    return f"muppet {socket.gethostname()[:24]} {os.getpid()} {secrets.token_hex(4)}"


@attrs.frozen
class Holder:
    """A daemon, as it names itself in the ``daemons`` table."""

    host: str
    pid: int
    #: when it took the lease, or began to wait for it (seconds since the epoch)
    since: float
    #: its API, as clients reach it (ws://HOST:PORT)
    api: str
    #: its sessions' application_name (new_tag)
    tag: str = ""

    @classmethod
    def this_process(cls, api: str, tag: str = "") -> Holder:
        return cls(host=socket.gethostname(), pid=os.getpid(), since=time.time(), api=api, tag=tag)

    def describe(self) -> str:
        return f"the daemon on {self.host} (pid {self.pid}, since {codec.format_time(self.since)}, API {self.api})"

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "since": codec.format_time(self.since), "api": self.api}


class LeaseHeld(Exception):
    """Another daemon holds the database's lease."""

    def __init__(self, database: str, holder: Holder | None) -> None:
        who = holder.describe() if holder is not None else "another daemon (it has not said who yet)"
        super().__init__(
            f"database {database} is in use by {who}: one daemon per database; "
            "stop that one first, give this one another [daemon] database, "
            "or run it as a standby (--standby) to take over when that one ends"
        )
        self.holder = holder


class LeaseLost(Exception):
    """Another daemon took this daemon's lease over: it must stop at once."""


@attrs.frozen
class Standing:
    """Who is active and who waits, as the ``daemons`` table says."""

    active: Holder | None
    standbys: tuple[Holder, ...]
    #: the lease's epoch (raised at each takeover)
    epoch: int = 0


class Lease:
    """The lease on one database, as this daemon holds it or waits for it.

    ``take`` or ``try_takeover`` get the lock; ``claim`` then makes this
    daemon the holder (a new epoch); ``renew`` keeps it; ``release`` lets it
    go (the process's end does too). Blocking throughout."""

    def __init__(self, url: str, api: str = "", *, tag: str | None = None, lease_time: float = LEASE_TIME) -> None:
        self.url = url
        self.kind = kind_of(url)
        self.api = api
        self.tag = tag if tag is not None else new_tag()
        self.lease_time = lease_time
        #: the epoch this daemon took (None: not the holder)
        self.epoch: int | None = None
        #: the active daemon as last read (a standby's API names it)
        self.standing = Standing(None, ())
        self._conn: Any = None
        self._fd: int | None = None
        #: bookkeeping (the daemons rows; SQLite's renewals)
        self._store: Store | None = None
        self._since = time.time()
        #: when this standby last said it waits (time.monotonic)
        self._said_waiting = -math.inf
        self._said_foreign = False

    @property
    def database(self) -> str:
        return describe_url(self.url)

    @property
    def mark(self) -> Mark:
        """What the holder's writes check (``check_epoch``); after ``claim``."""
        assert self.epoch is not None, "mark before claim"
        return Mark(self.epoch, self.tag)

    # -- the lock

    def take(self) -> None:
        """Take the lock now, or raise LeaseHeld naming the holder.
        Raises what connecting raises when the database cannot be reached."""
        if not self._lock():
            raise LeaseHeld(self.database, self._read_active())

    def _lock(self) -> bool:
        """Try to take the lock, without waiting; whether it was taken."""
        if self.kind == "sqlite":
            if self._fd is not None:
                return True
            path = sqlite_path(self.url)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            # a missing file is made empty: SQLite takes a zero-length file
            # for a new database
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True
        try:
            if self._conn is None:
                self._conn = self._connect()
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEASE_KEY,)).fetchone()
        except psycopg.OperationalError as exc:
            self._drop_conn()
            raise DatabaseUnavailable(f"{self.database}: {exc}") from exc
        return bool(row and row[0])

    def _connect(self) -> Any:
        # the lease's session must notice a vanished server within a lease:
        # a renewal that hangs on a dead socket keeps no one else out, but it
        # would keep this daemon from learning it was taken over
        with _tagged(self.tag):
            return connect_postgresql(
                self.url, connect_timeout=max(1, int(self.lease_time)),
                tcp_user_timeout=int(self.lease_time * 1000),
            )

    def fileno(self) -> int | None:
        """The lock session's socket (PostgreSQL): it turns readable when the
        server ends the session, which a holder must notice at once."""
        if self._conn is None or self._conn.closed:
            return None
        return int(self._conn.fileno())

    # -- becoming the holder

    def claim(self, store: Store) -> int:
        """Make this daemon the holder: a new epoch, the lease renewed, its
        row in ``daemons`` as the active one (after the migrations made the
        tables). Ends the sessions of the previous holder first (PostgreSQL):
        it lost its lock, so it is dead or will find out; none of its
        transactions may hold the lease row meanwhile."""
        if self.kind == "postgresql":
            self._end_sessions(store, exclude_tag=self.tag)
        holder = Holder.this_process(self.api, self.tag)
        now = _NOW[store.kind]

        def work(cursor: Any) -> int:
            cursor.execute(store.sql(
                f"UPDATE lease SET epoch = epoch + 1, holder = ?, expires = {now} + ? WHERE id = 1"),
                (self.tag, self.lease_time))
            cursor.execute("SELECT epoch FROM lease WHERE id = 1")
            epoch = int(cursor.fetchone()[0])
            cursor.execute(store.sql("DELETE FROM daemons WHERE role = 'active' OR tag = ?"), (self.tag,))
            cursor.execute(
                store.sql("INSERT INTO daemons (host, pid, since, api, role, tag, seen)"
                          " VALUES (?, ?, ?, ?, 'active', ?, ?)"),
                (holder.host, holder.pid, holder.since, holder.api, self.tag, holder.since),
            )
            return epoch

        self.epoch = store.transaction(work, write=True)
        self.standing = Standing(holder, self.standing.standbys, self.epoch)
        return self.epoch

    def _end_sessions(self, store: Store, exclude_tag: str) -> list[int]:
        """End the PostgreSQL sessions of the daemon named in the lease row
        (by its tag), and of whoever holds the lease's lock, but none of
        ``exclude_tag``'s (this daemon's); the ended pids."""
        rows = store.query("SELECT holder FROM lease WHERE id = 1")
        tag = rows[0][0] if rows else ""
        ended = store.query(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> ?"
            " AND ((? <> '' AND application_name = ?)"
            "  OR pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            "   AND classid = ? AND objid = ?"
            "   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())))",
            (exclude_tag, tag, tag, LEASE_KEY >> 32, LEASE_KEY & 0xFFFFFFFF),
        )
        return [row[0] for row in ended]

    # -- holding it

    def renew(self) -> None:
        """Renew the lease. Raises LeaseLost when another daemon has taken
        it (another epoch, or the lock held by a session of another daemon),
        DatabaseUnavailable when the database cannot tell now (try again)."""
        assert self.epoch is not None, "renew before claim"
        if self.kind == "sqlite":
            store = self._bookkeeping()
            updated = store.transaction(lambda cursor: self._renew_row(store, cursor), write=True)
            if not updated:
                raise LeaseLost(self._lost_words(store))
            return
        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._reconnect()
                cursor = self._conn.execute(
                    f"UPDATE lease SET expires = {_NOW['postgresql']} + %s"
                    " WHERE id = 1 AND epoch = %s AND holder = %s",
                    (self.lease_time, self.epoch, self.tag))
            except psycopg.OperationalError as exc:
                # the session ended (a restart, a standby that ended it):
                # once more at once on a new one, which says which it was
                self._drop_conn()
                if attempt == 2:
                    raise DatabaseUnavailable(f"{self.database}: renewing the lease: {exc}") from exc
                continue
            if cursor.rowcount != 1:
                raise LeaseLost(self._lost_words())
            return

    def _renew_row(self, store: Store, cursor: Any) -> bool:
        cursor.execute(store.sql(f"UPDATE lease SET expires = {_NOW[store.kind]} + ? WHERE id = 1 AND epoch = ?"),
                       (self.lease_time, self.epoch))
        return bool(cursor.rowcount == 1)

    def _reconnect(self) -> None:
        """A new lock session after the old one ended (a database restart,
        the network, or a standby that ended it): the lock again, and only
        if the epoch is still ours."""
        self._drop_conn()
        if self._lock():
            epoch = self._read_epoch()
            if epoch != self.epoch:
                self._drop_conn()
                raise LeaseLost(self._lost_words())
            log.info("lease on %s: taken again (epoch %d) on a new session", self.database, epoch)
            return
        epoch = self._read_epoch()
        if epoch != self.epoch:
            self._drop_conn()
            raise LeaseLost(self._lost_words())
        # our old session, which the server has not ended yet, still holds
        # it (or a standby is about to raise the epoch): we cannot tell yet
        self._drop_conn()
        raise DatabaseUnavailable(f"{self.database}: the lease's lock is still held by another session")

    def _read_epoch(self) -> int:
        row = self._conn.execute("SELECT epoch FROM lease WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def _lost_words(self, store: Store | None = None) -> str:
        try:
            standing = self.read_standing(store)
        except Exception:  # the database went away again: say what we know
            standing = Standing(None, ())
        return lost_words(self.database, standing, self.epoch)

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    # -- waiting for it (a standby)

    def try_takeover(self) -> bool:
        """One look of a standby: take the lock if it is free, or end the
        sessions of a holder whose lease expired so that the next look takes
        it; say that this daemon waits (its ``daemons`` row). Whether the lock
        is now this daemon's (``claim`` it next)."""
        if self._lock():
            return True
        store = self._bookkeeping()
        now = _NOW[store.kind]
        rows = store.query(f"SELECT epoch, holder, expires - {now} FROM lease WHERE id = 1")
        if time.monotonic() - self._said_waiting > STANDBY_SAY:
            self._say_waiting(store)
            self._said_waiting = time.monotonic()
        self.standing = self.read_standing(store)
        if not rows or self.kind == "sqlite":
            # SQLite: the kernel holds the lock for a live process, however
            # stale its heartbeat: the standby waits for it to end
            return False
        epoch, holder, remaining = rows[0]
        if remaining >= 0:
            return False
        # only a holder that renews may be taken over: a lock held by
        # another session (a MUPPET from before the lease row, which never
        # renews it) is waited for, not broken
        lockers = [row[0] for row in store.query(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ? AND l.objid = ?"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (LEASE_KEY >> 32, LEASE_KEY & 0xFFFFFFFF))]
        if lockers and (not holder or any(name != holder for name in lockers)):
            if not self._said_foreign:
                log.warning("the lease on %s is held by a session that does not renew it (%s): waiting for it "
                            "to end", self.database, ", ".join(repr(name) for name in lockers))
                self._said_foreign = True
            return False
        who = self.standing.active.describe() if self.standing.active is not None else f"daemon {holder!r}"
        ended = self._end_sessions(store, exclude_tag=self.tag)
        log.warning("the lease on %s expired %.1f s ago (epoch %d, %s): ended its %d database session(s)",
                    self.database, -remaining, epoch, who, len(ended))
        return self._lock()

    def _say_waiting(self, store: Store) -> None:
        me = Holder.this_process(self.api, self.tag)
        now = _NOW[store.kind]

        def work(cursor: Any) -> None:
            cursor.execute(store.sql(f"UPDATE daemons SET seen = {now} WHERE tag = ? AND role = 'standby'"),
                           (self.tag,))
            if cursor.rowcount == 0:
                cursor.execute(store.sql(
                    "INSERT INTO daemons (host, pid, since, api, role, tag, seen)"
                    f" VALUES (?, ?, ?, ?, 'standby', ?, {now})"), (me.host, me.pid, self._since, me.api, self.tag))
            # standbys that stopped saying so (killed) are gone
            cursor.execute(store.sql(f"DELETE FROM daemons WHERE role = 'standby' AND seen < {now} - ?"),
                           (STANDBY_GONE,))

        store.transaction(work, write=True)

    def read_standing(self, store: Store | None = None) -> Standing:
        """Who is active and who waits, from the ``daemons`` table."""
        store = store or self._bookkeeping()
        return read_standing(store)

    def _bookkeeping(self) -> Store:
        if self._store is None:
            with _tagged(self.tag):
                self._store = open_store(self.url, busy_timeout=self.lease_time / 2)
        return self._store

    def _read_active(self) -> Holder | None:
        """The active daemon as the ``daemons`` table names it, if it can be read."""
        try:
            store = Store(self.url, busy_timeout=1.0)
        except Exception:
            return None
        try:
            return read_standing(store).active
        except Exception:
            return None  # a database from before the table, or not readable now
        finally:
            store.close()

    def release(self) -> None:
        """Let the lease go: the lock, and this daemon's row (the epoch stays,
        so that a holder that went away cannot come back with it)."""
        if self._store is not None:
            store, self._store = self._store, None
            try:
                store.transaction(lambda cursor: cursor.execute(
                    store.sql("DELETE FROM daemons WHERE tag = ?"), (self.tag,)), write=True)
            except Exception:
                pass  # the database is away: the row is stale, and says so by its age
            store.close()
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
            self._drop_conn()


def lost_words(database: str, standing: Standing, epoch: int | None) -> str:
    """What a daemon that was taken over says as it exits."""
    who = standing.active.describe() if standing.active is not None else "another daemon"
    now = f"epoch {standing.epoch}, " if standing.epoch else ""
    return (f"lost the lease on {database}: {who} took it over ({now}ours was {epoch}); "
            "this daemon starts, kills and commits nothing more, and exits")


@attrs.frozen
class Mark:
    """What each write transaction of the holder checks (rule 3 of the
    module docstring): the epoch it took, and its tag."""

    epoch: int
    tag: str


def check_epoch(store: Store, cursor: Any, mark: Mark) -> None:
    """The epoch fence of a write transaction (rule 3 of the module
    docstring): raise LeaseLost unless the lease's epoch is still
    ``mark.epoch`` and this daemon's row is the active one.

    On PostgreSQL the daemon's own row in ``daemons`` is read ``FOR
    SHARE``: a takeover (``Lease.claim``) deletes it, so it waits for a
    transaction that checked before it, and one that checks after it finds
    the row gone. The lease row itself is not locked, so that renewals
    (which update it) never wait for a long write. SQLite's writers take
    the database's lock up front (``BEGIN IMMEDIATE``): one at a time."""
    lock = " FOR SHARE" if store.kind == "postgresql" else ""
    cursor.execute(store.sql(f"SELECT 1 FROM daemons WHERE tag = ? AND role = 'active'{lock}"), (mark.tag,))
    mine = cursor.fetchone() is not None
    cursor.execute("SELECT epoch FROM lease WHERE id = 1")
    row = cursor.fetchone()
    if not mine or row is None or int(row[0]) != mark.epoch:
        try:
            cursor.execute("SELECT host, pid, since, api, tag FROM daemons WHERE role = 'active'")
            rows = cursor.fetchall()
        except Exception:
            rows = []
        active = Holder(*rows[-1]) if rows else None
        raise LeaseLost(lost_words(store.describe(), Standing(active, (), int(row[0]) if row else 0), mark.epoch))


def read_standing(store: Store) -> Standing:
    """Who is active and who waits (the ``daemons`` table) and the epoch."""
    rows = store.query("SELECT host, pid, since, api, tag, role FROM daemons ORDER BY since")
    try:
        epoch_rows = store.query("SELECT epoch FROM lease WHERE id = 1")
    except Exception:
        epoch_rows = []
    active = [Holder(*row[:5]) for row in rows if row[5] == "active"]
    standbys = tuple(Holder(*row[:5]) for row in rows if row[5] == "standby")
    return Standing(active[-1] if active else None, standbys, int(epoch_rows[0][0]) if epoch_rows else 0)


class _tagged:
    """Open connections named ``tag`` (PostgreSQL's application_name)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._token: contextvars.Token[str] | None = None

    def __enter__(self) -> None:
        self._token = CONNECTION_TAG.set(self.tag)

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        CONNECTION_TAG.reset(self._token)


class Fence:
    """Whether this daemon may act now: its lease, as the monotonic clock
    knows it (rule 2 of the module docstring). The renewal task moves it;
    the executor waits on it before it starts or kills a job."""

    def __init__(self, lease_time: float = LEASE_TIME, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_time = lease_time
        self.clock = clock
        self.valid_until = -math.inf
        #: why the lease is lost for good (None: it is not)
        self.lost: str | None = None
        self._changed = trio.Event()
        self._said_closed = False

    def renewed(self, began: float) -> None:
        """A renewal that began at ``began`` (the clock's) succeeded."""
        self.valid_until = max(self.valid_until, began + self.lease_time)
        if self._said_closed:
            log.warning("lease renewed: starting and killing jobs again")
            self._said_closed = False
        self._wake()

    def suspend(self) -> None:
        """The lock's session ended: act no more until renewed."""
        self.valid_until = -math.inf

    def revoke(self, why: str) -> None:
        self.lost = why
        self.valid_until = -math.inf
        self._wake()

    @property
    def valid(self) -> bool:
        return self.lost is None and self.clock() < self.valid_until

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_valid(self) -> None:
        """Return at once while the lease is valid; else wait until it is
        renewed. Raises LeaseLost once it was taken over."""
        while True:
            if self.lost is not None:
                raise LeaseLost(self.lost)
            if self.clock() < self.valid_until:
                return
            if not self._said_closed:
                self._said_closed = True
                log.warning("lease not renewed within %g s: starting and killing no job until it is", self.lease_time)
            await self._changed.wait()


async def keep(lease: Lease, fence: Fence, *, interval: float = RENEW_INTERVAL) -> None:
    """Renew ``lease`` every ``interval`` seconds, moving ``fence``, until
    cancelled. Raises LeaseLost (after revoking the fence) once another
    daemon has the lease: the daemon must exit. A database that does not
    answer is tried again every ``interval``; the fence closes by itself
    once the lease time has passed without a renewal.

    PostgreSQL: between renewals it watches the lock's session, so that one
    the server ends (a standby's takeover, a restart) closes the fence at
    once rather than at the lease's end."""
    failing: str | None = None
    while True:
        began = fence.clock()
        try:
            # abandoned on cancel: a renewal hung on a dead network must not
            # keep the daemon from stopping (the connection has its timeouts).
            # Not on SQLite, a local file: the daemon closes the lease's
            # connection as it stops, and an abandoned renewal still inside
            # libsqlite3 on it crashed the process (segfault, bench/scale.py)
            await trio.to_thread.run_sync(lease.renew, abandon_on_cancel=lease.kind != "sqlite")
        except LeaseLost as exc:
            fence.revoke(str(exc))
            raise
        except DatabaseUnavailable as exc:
            if failing is None:
                log.warning("lease on %s: cannot renew: %s", lease.database, exc)
            failing = str(exc)
        else:
            if failing is not None:
                log.info("lease on %s: renewed again", lease.database)
                failing = None
            fence.renewed(began)
        fd = lease.fileno()
        with trio.move_on_after(interval):
            if fd is not None and failing is None:
                await trio.lowlevel.wait_readable(fd)
                # the server said something on an idle session: it ends it
                fence.suspend()
                log.warning("lease on %s: its session is ending; renewing at once", lease.database)
                continue
            await trio.sleep(interval)
