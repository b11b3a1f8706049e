"""A JSON-RPC 2.0 client for the MUPPET API, on Trio.

    async with connect("ws://127.0.0.1:8765") as client:
        run = await client.call("runs.trigger", {"pipeline": "ecmwf"})

Calls may be made from many tasks at once on one connection: a reader task
routes each reply to its caller by id, whatever order the server answers in.
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
from .protocol import RpcError

__all__ = ["DEFAULT_URL", "Client", "ConnectionLost", "DaemonUnreachable", "RpcError", "connect"]

log = logging.getLogger("muppet.api.client")

DEFAULT_URL = "ws://127.0.0.1:8765"


class DaemonUnreachable(Exception):
    """No websocket connection could be made to the daemon's API."""


class ConnectionLost(Exception):
    """The connection closed while a call was waiting for its reply."""


#: the events of one ``events`` notification
_EventBatch = list[dict[str, Any]]


@attrs.define
class _Waiter:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: protocol.Response | None = None


class Client:
    """One open connection to the API. Made by ``connect``; not reusable after
    the ``async with`` block ends."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, url: str) -> None:
        self.url = url
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[Any, _Waiter] = {}
        self._lost: str | None = None
        # subscription id -> where its events go; events that arrive before
        # subscribe() has its id wait in _early
        self._subscriptions: dict[int, trio.MemorySendChannel[_EventBatch]] = {}
        self._early: dict[int, list[_EventBatch]] = {}

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
        connection closes."""
        result = await self.call("events.subscribe", {"since": since, "kinds": kinds, "products": products})
        subscription = result["subscription"]
        send, receive = trio.open_memory_channel[_EventBatch](math.inf)
        self._subscriptions[subscription] = send
        for batch in self._early.pop(subscription, []):
            send.send_nowait(batch)
        if self._lost is not None:
            send.close()
        return self._events(receive)

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

    async def call(
        self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None
    ) -> Any:
        """Call ``method`` and return its result.

        Raises ``RpcError(code, message, data)`` when the server answers with
        an error, ``ConnectionLost`` when the connection closes first.
        Cancellable; a cancelled call's late reply is dropped.
        """
        if self._lost is not None:
            raise ConnectionLost(self._lost)
        request_id = next(self._ids)
        waiter = self._waiting[request_id] = _Waiter()
        try:
            try:
                await self._ws.send_message(protocol.request(method, params, request_id))
            except trio_websocket.ConnectionClosed as exc:
                raise ConnectionLost(self._lost or _closed(self.url, exc)) from None
            await waiter.done.wait()
        finally:
            del self._waiting[request_id]
        if waiter.response is None:
            raise ConnectionLost(self._lost or f"connection to {self.url} closed")
        if waiter.response.error is not None:
            raise waiter.response.error
        return waiter.response.result

    async def notify(self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> None:
        """Send a notification: no reply comes back, not even an error (JSON-RPC 2.0, 4.1)."""
        try:
            await self._ws.send_message(protocol.notification(method, params))
        except trio_websocket.ConnectionClosed as exc:
            raise ConnectionLost(_closed(self.url, exc)) from None

    async def _reader(self) -> None:
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
    url: str = DEFAULT_URL,
    *,
    token: str | None = None,
    connect_timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """Open a connection to the API at ``url`` (``ws://HOST:PORT``, or
    ``wss://`` with TLS: the server's certificate is checked against the
    system's CAs, or the file in $SSL_CERT_FILE).

    ``token`` is the secret of an API token, sent as ``Authorization: Bearer``
    in the handshake.

    Raises ``DaemonUnreachable`` ("cannot reach the MUPPET daemon at URL:
    connection refused") when no connection can be made, ``ValueError`` for a
    URL that is not ``ws://`` or ``wss://``. Leaving the block closes the
    connection; calls still waiting then raise ``ConnectionLost``.
    """
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"the API URL must start with ws:// or wss://, got {url!r}")
    opened = False
    ws = None
    try:
        headers = [(b"Authorization", f"Bearer {token}".encode())] if token else None
        ssl_context = ssl.create_default_context() if url.startswith("wss://") else None
        async with trio_websocket.open_websocket_url(
            url, ssl_context, extra_headers=headers, connect_timeout=connect_timeout,
            max_message_size=MAX_MESSAGE,
        ) as ws:
            opened = True
            client = Client(ws, url)
            # The caller's own error comes out as itself, not wrapped in the
            # group of our reader's nursery (the reader never raises).
            with unwrap_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client._reader)
                    yield client
                    nursery.cancel_scope.cancel()
    except (trio_websocket.HandshakeError, OSError) as exc:
        if opened:
            raise
        raise DaemonUnreachable(
            f"cannot reach the MUPPET daemon at {url}: {_why(exc, connect_timeout)}"
        ) from exc
    finally:
        # trio-websocket 0.12.2: when the server closes first, the client side
        # waits for the server's TCP close (RFC 6455, 7.1.1) and then never
        # closes its own socket, which is left to the garbage collector.
        stream = getattr(ws, "_stream", None)
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
