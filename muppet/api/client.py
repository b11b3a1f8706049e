"""A JSON-RPC 2.0 client for the MUPPET API, on Trio.

    async with connect("ws://127.0.0.1:8765") as client:
        run = await client.call("runs.trigger", {"pipeline": "ecmwf"})

Calls may be made from many tasks at once on one connection: a reader task
routes each reply to its caller by id, whatever order the server answers in.

With an active daemon and standbys (docs/operations.md, "Running a
standby"), give every daemon's API, as a list or comma-separated
(``"ws://a:8765,ws://b:8765"``, as ``MUPPET_API`` and ``--api`` take it).
Reads go to any daemon that answers; a write or command that a standby
refuses (-32007) goes to the active daemon it names, or, while none is
active yet, to each again until one takes it; when a daemon goes away the
client moves on to another and calls again, and a subscription resumes
there after the last event it delivered (``Client`` has the rules).
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_websocket

from ..unwrap_group import unwrap_group
from . import protocol
from .protocol import STANDBY, RpcError

__all__ = ["DEFAULT_URL", "Client", "ConnectionLost", "DaemonUnreachable", "RpcError", "connect", "split_urls"]

log = logging.getLogger("muppet.api.client")

DEFAULT_URL = "ws://127.0.0.1:8765"

#: seconds a client with several daemons keeps trying to reach one that
#: takes its call (a standby takes over within seconds)
FAILOVER_TIMEOUT = 30.0
#: seconds such a client waits for one daemon's handshake before it tries
#: the next
FAILOVER_CONNECT_TIMEOUT = 3.0


class DaemonUnreachable(Exception):
    """No websocket connection could be made to the daemon's API."""


class ConnectionLost(Exception):
    """The connection closed while a call was waiting for its reply.
    ``sent``: the request had gone out (a write may have been done)."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


def split_urls(url: str | Sequence[str]) -> list[str]:
    """The API URLs of a comma-separated string (or a list of them),
    each checked: ``ws://`` or ``wss://``; ValueError otherwise."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = [part.strip() for part in parts if part.strip()]
    if not urls:
        raise ValueError("no API URL given")
    for one in urls:
        if not one.startswith(("ws://", "wss://")):
            raise ValueError(f"the API URL must start with ws:// or wss://, got {one!r}")
    return urls


#: the events of one ``events`` notification
_EventBatch = list[dict[str, Any]]


@attrs.define
class _Waiter:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: protocol.Response | None = None


class _Link:
    """One open websocket connection to one daemon's API."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, url: str) -> None:
        self.url = url
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[Any, _Waiter] = {}
        self._lost: str | None = None
        self.closed = trio.Event()
        #: the daemon refused a write as a standby
        self.standby = False
        # subscription id -> where its events go; events that arrive before
        # subscribe() has its id wait in _early
        self._subscriptions: dict[int, trio.MemorySendChannel[_EventBatch]] = {}
        self._early: dict[int, list[_EventBatch]] = {}

    @property
    def lost(self) -> str | None:
        return self._lost

    async def subscribe(
        self, since: int | None, kinds: Sequence[str] | None, products: Sequence[str] | None,
    ) -> tuple[int, AsyncIterator[dict[str, Any]]]:
        result = await self.call("events.subscribe", {"since": since, "kinds": kinds, "products": products})
        subscription = result["subscription"]
        send, receive = trio.open_memory_channel[_EventBatch](math.inf)
        self._subscriptions[subscription] = send
        for batch in self._early.pop(subscription, []):
            send.send_nowait(batch)
        if self._lost is not None:
            send.close()
        position = result.get("position") if isinstance(result, dict) else None
        return (position if isinstance(position, int) else 0), self._events(receive)

    async def _events(self, receive: trio.MemoryReceiveChannel[_EventBatch]) -> AsyncIterator[dict[str, Any]]:
        async for batch in receive:
            for event in batch:
                yield event
        raise ConnectionLost(self._lost or f"connection to {self.url} closed")

    def _notification(self, data: dict[str, Any]) -> None:
        if data.get("method") != "events":
            log.debug("ignoring notification %r from %s", data.get("method"), self.url)
            return
        params = data.get("params") or {}
        subscription, events = params.get("subscription"), params.get("events", [])
        if not isinstance(subscription, int) or not isinstance(events, list):
            log.warning("ignoring a malformed events notification from %s", self.url)
            return
        send = self._subscriptions.get(subscription)
        if send is None:
            self._early.setdefault(subscription, []).append(events)
        else:
            send.send_nowait(events)

    async def call(self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> Any:
        if self._lost is not None:
            raise ConnectionLost(self._lost, sent=False)
        request_id = next(self._ids)
        waiter = self._waiting[request_id] = _Waiter()
        try:
            try:
                await self._ws.send_message(protocol.request(method, params, request_id))
            except trio_websocket.ConnectionClosed as exc:
                raise ConnectionLost(self._lost or _closed(self.url, exc), sent=False) from None
            await waiter.done.wait()
        finally:
            del self._waiting[request_id]
        if waiter.response is None:
            raise ConnectionLost(self._lost or f"connection to {self.url} closed")
        if waiter.response.error is not None:
            raise waiter.response.error
        return waiter.response.result

    async def notify(self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> None:
        try:
            await self._ws.send_message(protocol.notification(method, params))
        except trio_websocket.ConnectionClosed as exc:
            raise ConnectionLost(_closed(self.url, exc), sent=False) from None

    async def reader(self) -> None:
        try:
            while True:
                message = await self._ws.get_message()
                if '"method"' in message[:200]:
                    try:
                        data = json.loads(message)
                    except ValueError:
                        data = None
                    if isinstance(data, dict) and "method" in data and "id" not in data:
                        self._notification(data)
                        continue
                try:
                    responses = protocol.parse_responses(message)
                except ValueError as exc:
                    log.warning("ignoring a message from %s: %s", self.url, exc)
                    continue
                for response in responses:
                    waiter = self._waiting.get(_key(response.id))
                    if waiter is None:
                        # A cancelled call's reply, or an error with id null
                        # (the server could not read our request): nobody to
                        # hand it to.
                        if response.error is not None:
                            log.warning("error reply from %s: %s", self.url, response.error)
                        continue
                    waiter.response = response
                    waiter.done.set()
        except trio_websocket.ConnectionClosed as exc:
            self._lost = _closed(self.url, exc)
        finally:
            if self._lost is None:
                self._lost = f"connection to {self.url} closed"
            for waiter in self._waiting.values():
                waiter.done.set()
            for send in self._subscriptions.values():
                send.close()
            self.closed.set()


def _is_read(method: str) -> bool:
    """Whether any daemon, a standby too, answers ``method`` (its role in
    protocol.METHODS); an unknown method counts as a write: a standby's
    refusal then says where to send it."""
    spec = protocol.METHODS.get(method)
    return spec is not None and spec.role in ("read", protocol.ANYONE)


class Client:
    """A connection to the API, made by ``connect``; not reusable after the
    ``async with`` block ends.

    Given one URL, it is one connection: a lost one raises ConnectionLost.
    A write or command refused by a standby (-32007) is sent once more to the
    active daemon the refusal names. Given several (``urls``), it fails over:

    - a read goes to the daemon it is connected to, whichever it is; when
      that one goes away, to the next that answers, and it is sent again;
    - a write or command goes to the active daemon: refused by a standby, it
      is sent to the active one it names, or while none is active yet, to
      each in turn, every 0.2 s, until one takes it or ``failover_timeout``
      seconds have passed (then the refusal is raised). One whose connection
      is lost before it was sent is sent elsewhere; one that was sent may
      have been done, so it raises ConnectionLost (``sent``) rather than risk
      doing it twice;
    - a subscription (``subscribe``) resumes on another daemon after the
      last event it delivered, with no gap and no duplicate.
    Only when no daemon answers for ``failover_timeout`` seconds does a call
    raise DaemonUnreachable or ConnectionLost."""

    def __init__(
        self,
        nursery: trio.Nursery,
        urls: Sequence[str],
        *,
        token: str | None,
        connect_timeout: float,
        failover_timeout: float,
        follow_active: bool = True,
    ) -> None:
        self._nursery = nursery
        self._follow_active = follow_active
        self.urls = list(urls)
        self._token = token
        self._connect_timeout = connect_timeout
        self.failover_timeout = failover_timeout
        self._link: _Link | None = None
        self._opening = trio.Lock()
        #: the active daemon's API, as a standby named it
        self._active: str | None = None
        #: the URLs that refused a write as standbys
        self._standbys: set[str] = set()

    @property
    def url(self) -> str:
        """The API this client talks to now."""
        return self._link.url if self._link is not None else self.urls[0]

    @property
    def failover(self) -> bool:
        return len(self.urls) > 1

    # -- connections

    async def _hold(self, url: str, *, task_status: trio.TaskStatus[_Link]) -> None:
        """Open ``url`` and keep it until it closes or is dropped."""
        headers = [(b"Authorization", f"Bearer {self._token}".encode())] if self._token else None
        ssl_context = ssl.create_default_context() if url.startswith("wss://") else None
        # with others to try, a daemon that takes the connection but does not
        # answer (stopped, frozen) is left for the next one sooner
        timeout = min(self._connect_timeout, FAILOVER_CONNECT_TIMEOUT) if self.failover else self._connect_timeout
        ws = None
        opened = False
        try:
            # disconnect_timeout: a handshake that timed out closes the
            # connection, which waits that long for a peer that does not
            # answer (trio-websocket's default: 60 s)
            async with trio_websocket.open_websocket_url(
                url, ssl_context, extra_headers=headers, connect_timeout=timeout, disconnect_timeout=timeout,
                max_message_size=MAX_MESSAGE,
            ) as ws:
                opened = True
                link = _Link(ws, url)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(link.reader)
                    task_status.started(link)
                    await link.closed.wait()
                    nursery.cancel_scope.cancel()
        except (trio_websocket.HandshakeError, OSError) as exc:
            if opened:
                return  # it went away; its callers have been told
            raise DaemonUnreachable(f"cannot reach the MUPPET daemon at {url}: {_why(exc, timeout)}") from exc
        finally:
            # trio-websocket 0.12.2: when the server closes first, the client side
            # waits for the server's TCP close (RFC 6455, 7.1.1) and then never
            # closes its own socket, which is left to the garbage collector.
            stream = getattr(ws, "_stream", None)
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _open(self, url: str) -> _Link:
        link: _Link = await self._nursery.start(self._hold, url)
        return link

    def _drop(self, link: _Link) -> None:
        """Stop using ``link`` (and close it)."""
        if self._link is link:
            self._link = None
        if not link.closed.is_set():
            link.closed.set()

    def _candidates(self, write: bool) -> list[str]:
        """The URLs to try, in order: for a write the active daemon named by
        a standby first and known standbys last; else the list's order,
        starting after the one in use."""
        order = list(self.urls)
        if self._link is not None and self._link.url in order:
            at = order.index(self._link.url)
            order = order[at + 1:] + order[:at + 1]
        if write:
            order.sort(key=lambda url: url in self._standbys)
            if self._active:
                order = [self._active] + [url for url in order if url != self._active]
        return order

    async def _connection(self, write: bool, deadline: float | None) -> _Link:
        """A link to use for a call: the one in use, unless it is gone or a
        write needs another daemon; else the first candidate that answers,
        trying again until ``deadline`` (None: one round)."""
        async with self._opening:
            link = self._link
            if link is not None and link.lost is None and not (write and link.standby and self._active
                                                              and self._active != link.url):
                return link
            delay = 0.1
            while True:
                problems = []
                for url in self._candidates(write):
                    try:
                        new = await self._open(url)
                    except DaemonUnreachable as exc:
                        problems.append(str(exc))
                        continue
                    if self._link is not None:
                        self._drop(self._link)
                    self._link = new
                    if url in self._standbys:
                        new.standby = True
                    return new
                if deadline is None or trio.current_time() + delay > deadline:
                    if len(problems) == 1:
                        raise DaemonUnreachable(problems[0])
                    raise DaemonUnreachable("cannot reach any MUPPET daemon: " + "; ".join(
                        problem.removeprefix("cannot reach the MUPPET daemon at ") for problem in problems))
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- calls

    async def call(self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> Any:
        """Call ``method`` and return its result.

        Raises ``RpcError(code, message, data)`` when the server answers with
        an error, ``ConnectionLost`` when the connection closes first (with
        several daemons: see the class's rules), ``DaemonUnreachable`` when
        no daemon answers. Cancellable; a cancelled call's late reply is
        dropped."""
        write = not _is_read(method)
        deadline = trio.current_time() + self.failover_timeout
        redirected = False
        while True:
            link = await self._connection(write, deadline if self.failover else None)
            try:
                return await link.call(method, params)
            except RpcError as error:
                if error.code != STANDBY or (redirected and not self.failover) or not self._follow_active:
                    raise
                link.standby = True
                self._standbys.add(link.url)
                active = error.data.get("active") if isinstance(error.data, dict) else None
                if isinstance(active, str) and active.startswith(("ws://", "wss://")):
                    self._active = active
                    if active not in self.urls:
                        self.urls.append(active)
                if not self.failover and (redirected or not active or active == link.url):
                    raise
                if trio.current_time() > deadline:
                    raise
                redirected = True
                if self._active == link.url or not active:
                    self._active = None
                    await trio.sleep(0.2)
                self._drop(link)
            except ConnectionLost as exc:
                self._drop(link)
                if not self.failover or trio.current_time() > deadline:
                    raise
                if write and exc.sent:
                    raise ConnectionLost(
                        f"{exc}: {method} was sent and may have been done; not sent again", sent=True) from None
                log.info("%s; calling %s on another daemon", exc, method)
                if self._active == link.url:
                    self._active = None

    async def notify(self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> None:
        """Send a notification: no reply comes back, not even an error (JSON-RPC 2.0, 4.1)."""
        link = await self._connection(not _is_read(method), None)
        await link.notify(method, params)

    async def subscribe(
        self,
        since: int | None = None,
        kinds: Sequence[str] | None = None,
        products: Sequence[str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Events from ``since`` on (or only new ones), in order, as an async
        iterator of event dicts (``id``, ``at``, ``kind``, ``product``,
        ``subject_id``, ``data``). Ends with ``ConnectionLost`` (naming the
        server's reason, such as a slow subscriber's resume number) when the
        connection closes; with several daemons, it resumes on another one
        after the last event it delivered, and ends so only when none
        answers for ``failover_timeout`` seconds."""
        link = await self._connection(False, None)
        position, events = await link.subscribe(since, kinds, products)
        if not self.failover:
            return events
        return self._resuming(events, since if since is not None else position, kinds, products)

    async def _resuming(
        self, events: AsyncIterator[dict[str, Any]], position: int,
        kinds: Sequence[str] | None, products: Sequence[str] | None,
    ) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                async for event in events:
                    position = event["id"]
                    yield event
            except ConnectionLost as exc:
                lost = str(exc)
            deadline = trio.current_time() + self.failover_timeout
            while True:
                try:
                    link = await self._connection(False, deadline)
                    _, events = await link.subscribe(position, kinds, products)
                    break
                except ConnectionLost:
                    if trio.current_time() > deadline:
                        raise
            log.info("%s; events resume on %s after event %d", lost, link.url, position)


def _key(request_id: Any) -> Any:
    # JSON has one number type: an id sent as 7 may come back as 7.0.
    if isinstance(request_id, float) and math.isfinite(request_id) and request_id.is_integer():
        return int(request_id)
    return request_id


def _closed(url: str, exc: trio_websocket.ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return f"connection to {url} closed"
    detail = f": {reason.reason}" if reason.reason else ""
    return f"connection to {url} closed ({reason.code} {reason.name}{detail})"


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, trio_websocket.ConnectionTimeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"the server refused the websocket handshake (HTTP {exc.status_code})"
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    # The OSError that says why sits in the HandshakeError's cause; trio's
    # connect puts one per address tried inside its own OSError's cause.
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or getattr(current, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    cause = exc.__cause__ or exc
    return str(cause) or type(cause).__name__


#: the largest message the client takes: a page of files or a batch of
#: events is far larger than a request
MAX_MESSAGE = 256 * 1024 * 1024


@asynccontextmanager
async def connect(
    url: str | Sequence[str] = DEFAULT_URL,
    *,
    token: str | None = None,
    connect_timeout: float = 10.0,
    failover_timeout: float = FAILOVER_TIMEOUT,
    follow_active: bool = True,
) -> AsyncIterator[Client]:
    """Open a connection to the API at ``url`` (``ws://HOST:PORT``, or
    ``wss://`` with TLS: the server's certificate is checked against the
    system's CAs, or the file in $SSL_CERT_FILE). Several daemons' APIs
    (a list, or comma-separated) make a client that fails over between them
    (``Client``); it connects to the first that answers.

    ``token`` is the secret of an API token, sent as ``Authorization: Bearer``
    in the handshake. ``follow_active=False``: a write a standby refuses
    raises its -32007 rather than go to the active daemon it names.

    Raises ``DaemonUnreachable`` ("cannot reach the MUPPET daemon at URL:
    connection refused") when no connection can be made, ``ValueError`` for a
    URL that is not ``ws://`` or ``wss://``. Leaving the block closes the
    connection; calls still waiting then raise ``ConnectionLost``.
    """
    urls = split_urls(url)
    # The caller's own error comes out as itself, not wrapped in the
    # group of our connections' nursery (they never raise).
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            client = Client(nursery, urls, token=token, connect_timeout=connect_timeout,
                            failover_timeout=failover_timeout, follow_active=follow_active)
            await client._connection(False, None)
            yield client
            nursery.cancel_scope.cancel()
