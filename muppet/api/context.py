"""What the API's handlers share (``Context``) and what one websocket
connection carries (``Connection``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

import attrs
import trio
import trio_websocket

from .. import messages, model
from ..db.health import DatabaseHealth
from ..db.store import DatabaseUnavailable, Store
from ..index.events import EventHub, QueryCache
from ..running import Role, RunningConfig
from .protocol import (
    ANYONE,
    DATABASE_UNAVAILABLE,
    INTERNAL_ERROR,
    STANDBY,
    UNAUTHORIZED,
    UNAVAILABLE,
    MethodSpec,
    RpcError,
)

P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M")
R = TypeVar("R")


class ReadPool:
    """A few read Stores, each used by one worker thread at a time: SQLite in
    WAL mode and PostgreSQL both serve readers side by side, so queries do
    not queue behind one connection. Every handler reads through it: a Store
    is one connection, never shared by two threads at once. Each outcome is
    reported to the daemon's DatabaseHealth; a Store whose connection broke
    opens a new one on its next call."""

    def __init__(self, stores: list[Store], health: DatabaseHealth) -> None:
        self.free = list(stores)
        self.all = list(stores)
        self.available = trio.Semaphore(len(stores))
        self.health = health

    async def run(self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(store, *args, **kwargs)`` in a worker thread, on a free store.
        Raises DatabaseUnavailable when the database does not answer."""
        async with self.available:
            store = self.free.pop()
            try:
                result = await trio.to_thread.run_sync(partial(fn, store, *args, **kwargs))
            except DatabaseUnavailable as exc:
                self.health.failed(exc)
                raise
            finally:
                self.free.append(store)
        self.health.answered()
        return result

    def close(self) -> None:
        for store in self.all:
            store.close()


#: how long a listing waits for the scheduler's reasons of waiting jobs
WHY_WAITING_WAIT = 3.0


def _database_unavailable(cause: object) -> RpcError:
    return RpcError(DATABASE_UNAVAILABLE, f"database unavailable, retry: {cause}")


@attrs.define
class Context:
    """What the handlers share: the configuration the daemon runs now, the
    channels to the scheduler (commands), to the database task (index
    writes) and to the reload task, the read stores, the event hub and its
    query cache."""

    running: RunningConfig
    scheduler: trio.MemorySendChannel[messages.Asked]
    database: trio.MemorySendChannel[messages.ToDatabase]
    readers: ReadPool
    hub: EventHub
    started_at: float
    reply_timeout: float
    reloads: trio.MemorySendChannel[messages.Reload] | None = None
    #: active, or a standby that serves reads only
    role: Role = attrs.field(factory=lambda: Role(True))

    @property
    def config(self) -> model.Config:
        """The configuration as the daemon runs it now: a reload replaces it
        (docs/operations.md, "Reload")."""
        return self.running.config

    @property
    def cache(self) -> QueryCache:
        return self.hub.cache

    @property
    def health(self) -> DatabaseHealth:
        return self.readers.health

    async def query(self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(store, *args, **kwargs)`` on a free read store of the pool;
        -32005 when the database does not answer."""
        try:
            return await self.readers.run(fn, *args, **kwargs)
        except DatabaseUnavailable as exc:
            raise _database_unavailable(exc) from None

    def refuse_while_database_away(self) -> None:
        """A command or a write is refused at once while the database is
        known to be away: the caller knows it was not done, rather than
        waiting for a reply that comes when the outage ends."""
        if not self.health.available:
            raise _database_unavailable(self.health.cause)

    def refuse_on_standby(self, spec: MethodSpec | None = None) -> None:
        """A standby serves reads and refuses every write and command with
        -32007, naming the active daemon's API in the message and in
        ``data.active`` (docs/api.md, "Errors"): nothing was done, and the
        caller sends it there."""
        if self.role.active or (spec is not None and spec.role in ("read", ANYONE)):
            return
        standing = self.role.standing()
        active = getattr(standing, "active", None)
        standbys = [h.api for h in getattr(standing, "standbys", ())]
        if active is None:
            where, api = "no daemon is active now (a standby takes over soon): retry", None
        else:
            where, api = f"send it to the active daemon, at {active.api} ({active.host}, pid {active.pid})", active.api
        name = spec.name if spec is not None else "this call"
        raise RpcError(STANDBY, f"standby: this daemon is a standby, it serves reads only; {name} was not done: "
                       f"{where}", {"active": api, "standbys": standbys})

    async def ask(self, event: messages.Request) -> Any:
        """Send ``event`` to the scheduler and relay its Reply's result."""
        self.refuse_on_standby()
        self.refuse_while_database_away()
        return await self._ask(event)

    async def why_waiting(self, jobs: list[model.Job]) -> dict[int, str]:
        """The scheduler's reasons for the waiting and held ``jobs`` (an
        empty answer when it does not answer within a few seconds: the
        caller shows what the database says)."""
        ids = tuple(job.id for job in jobs if job.state in (model.JobState.WAITING, model.JobState.HELD))
        if not ids or not self.role.active:
            return {}  # a standby has no scheduler to ask
        with trio.move_on_after(WHY_WAITING_WAIT):
            try:
                answer: dict[int, str] = await self._ask(messages.WhyWaiting(ids))
                return answer
            except RpcError:
                pass
        return {}

    async def _ask(self, event: messages.Request | messages.WhyWaiting) -> Any:
        send, receive = trio.open_memory_channel[messages.Reply](1)
        reply = await self._wait(self.scheduler, messages.Asked(event, send), receive, "scheduler")
        if reply.error is not None:
            raise RpcError(reply.code or INTERNAL_ERROR, reply.error)
        return reply.result

    async def reload(self, by: messages.Operator) -> messages.Reloaded:
        """Ask the reload task to read the configuration again; its outcome
        once committed (or refused). Refused at once while the database is
        away, like every command."""
        self.refuse_on_standby()
        self.refuse_while_database_away()
        if self.reloads is None:
            raise RpcError(UNAVAILABLE, "unavailable: this daemon does not reload its configuration")
        send, receive = trio.open_memory_channel[messages.Reloaded](1)
        return await self._wait(self.reloads, messages.Reload(by, send), receive, "reload task")

    async def write(self, change: messages.IndexChange) -> messages.IndexWritten:
        """Send ``change`` to the database task; its outcome once committed
        (RpcError for a refusal, which wrote nothing)."""
        self.refuse_on_standby()
        self.refuse_while_database_away()
        send, receive = trio.open_memory_channel[messages.IndexWritten](1)
        written = await self._wait(self.database, messages.IndexWrite(change, send), receive, "database")
        if written.error is not None:
            raise RpcError(written.code or INTERNAL_ERROR, written.error)
        return written

    async def _wait(
        self,
        to: trio.MemorySendChannel[M],
        message: M,
        receive: trio.MemoryReceiveChannel[R],
        who: str,
    ) -> R:
        with trio.move_on_after(self.reply_timeout):
            try:
                await to.send(message)
                return await receive.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                raise RpcError(UNAVAILABLE, f"unavailable: the {who} is not running") from None
        raise RpcError(
            UNAVAILABLE,
            f"unavailable: the {who} did not answer within {self.reply_timeout:g} s",
        )

    def authorize(self, conn: Connection, spec: MethodSpec) -> None:
        """Raise -32004 unless ``conn`` may call ``spec``: with a tokens file,
        writes need a token, and reads too unless open_reads (docs/api.md,
        "Tokens and roles")."""
        api = self.config.api
        if not api.tokens_file or spec.role == ANYONE:
            return
        if conn.token_digest:
            # the tokens as the daemon runs them now: a reload that revoked
            # the token or changed its role applies to the next call
            token = api.tokens.get(conn.token_digest)
            if token is None:
                conn.role, conn.token_problem = None, "the token sent is not in the tokens file"
            else:
                conn.role, conn.token_name, conn.token_problem = token.role, token.name, ""
        if spec.role == "read" and api.open_reads:
            return
        if conn.role is not None and model.ROLES.index(conn.role) >= model.ROLES.index(spec.role):
            return
        if conn.token_problem:
            why = conn.token_problem
        elif conn.role is None:
            why = "no token was sent (--token or MUPPET_TOKEN)"
        else:
            why = f"token {conn.token_name!r} has role {conn.role!r}"
        article = "an" if spec.role.startswith("a") else "a"
        raise RpcError(UNAUTHORIZED, f"unauthorized: {spec.name} needs {article} {spec.role} token; {why}")


@attrs.define(eq=False)
class Connection:
    """One client: its websocket, its token's role, its subscriptions."""

    ws: trio_websocket.WebSocketConnection
    nursery: trio.Nursery
    role: str | None = None
    token_name: str = ""
    token_problem: str = ""
    #: the SHA-256 of the secret it presented ("" for none), looked up in
    #: the tokens at each call
    token_digest: str = ""
    #: subscription id -> the cancel scope of the task streaming it
    subscriptions: dict[int, trio.CancelScope] = attrs.field(factory=dict)
    #: set once the reply that made them has been sent: a subscription's
    #: notifications never overtake the reply that tells the client its id
    replied: list[trio.Event] = attrs.field(factory=list)

    @classmethod
    def authenticate(
        cls,
        ws: trio_websocket.WebSocketConnection,
        nursery: trio.Nursery,
        headers: list[tuple[bytes, bytes]],
        config: model.Config,
    ) -> Connection:
        """Read ``Authorization: Bearer SECRET`` from the handshake; the secret
        is looked up by its SHA-256, as the tokens file keeps it."""
        conn = cls(ws, nursery)
        secret = None
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and rest.strip():
                    secret = rest.strip()
                else:
                    conn.token_problem = "the Authorization header is not 'Bearer SECRET'"
        if secret is not None:
            conn.token_digest = hashlib.sha256(secret.encode()).hexdigest()
            token = config.api.tokens.get(conn.token_digest)
            if token is None:
                conn.token_problem = "the token sent is not in the tokens file"
            else:
                conn.role, conn.token_name = token.role, token.name
        return conn
