"""muppet-sync's side of the index: calls that survive outages, and the
event stream followed from the last number seen.

* :class:`IndexLink` - one kept-open API connection for the commands' calls
  (files.get, files.set_torrent, files.register, ...). A call made while the
  daemon is unreachable waits and tries again (backoff up to 30 s) instead of
  failing: a network outage delays the sync, it does not stop it.
* :func:`follow` - catch-up then live: subscribes to ``file`` events of the
  selected products from the saved position (or from now), then asks the
  index for the files of the most recent reference times, then hands every
  live event over; on a lost connection it reconnects and subscribes again
  from the last event it handed over. Every file record goes through one
  callback, so the caller's core (:class:`sync.select.Selection`) sees
  duplicates at worst, never a gap.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio

from muppet.api.client import Client, ConnectionLost, DaemonUnreachable, connect
from muppet.api.protocol import RpcError
from muppet.unwrap_group import unwrap_group

__all__ = ["MAX_BACKOFF", "IndexLink", "advertised_peer", "catch_up_files", "follow", "open_link", "parse_peer"]

log = logging.getLogger("muppet.sync.follow")

MAX_BACKOFF = 30.0

#: files.list page size (the API's largest)
PAGE = 1000

_UNREACHABLE = (ConnectionLost, DaemonUnreachable, OSError)


class IndexLink:
    """The commands' connection to the index; made by :func:`open_link`.

    ``call`` raises :class:`RpcError` for an error answer (a bad request is
    not retried) and waits out connection problems.
    """

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token
        self._client: Client | None = None
        self._wanted = trio.Event()  # set: some call needs a connection
        # set while self._client is usable; replaced by a fresh one when it is lost
        self._connected = trio.Event()
        self._lost = trio.Event()  # the current connection's: set to drop it
        self.problem: str | None = None  # the last connection problem, for status

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        while True:
            self._wanted.set()
            await self._connected.wait()
            client = self._client
            if client is None:  # lost again before this task ran: wait for the next one
                continue
            try:
                return await client.call(method, params)
            except _UNREACHABLE as e:
                if self._client is client:
                    log.warning("index %s: %s; the call %s waits for it", self.url, e, method)
                    self.problem = str(e)
                    self._drop()

    def _drop(self) -> None:
        if self._connected.is_set():
            self._connected = trio.Event()
        self._client = None
        self._lost.set()

    async def _keep(self) -> None:
        backoff = 1.0
        while True:
            await self._wanted.wait()
            try:
                async with connect(self.url, token=self.token) as client:
                    if self.problem is not None:
                        log.info("index %s: connected again", self.url)
                    self.problem = None
                    backoff = 1.0
                    self._client = client
                    self._lost = lost = trio.Event()
                    self._connected.set()
                    await lost.wait()
            except _UNREACHABLE as e:
                self.problem = str(e)
                log.warning("index %s: %s; trying again in %.0f s", self.url, e, backoff)
            self._drop()
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


@asynccontextmanager
async def open_link(url: str, token: str | None) -> AsyncIterator[IndexLink]:
    """``async with open_link(url, token) as link:`` - an :class:`IndexLink`
    whose connection is kept by a background task until the block ends."""
    link = IndexLink(url, token)
    # the body's own error comes out as itself (the keeper never raises)
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link._keep)
            yield link
            nursery.cancel_scope.cancel()


async def catch_up_files(client: Any, product: str, recent: int) -> list[dict[str, Any]]:
    """The present files of the ``recent`` newest instances of ``product``,
    newest instance first."""
    instances = await client.call("instances.list", {"product": product, "limit": min(max(recent, 1), 1000)})
    files: list[dict[str, Any]] = []
    for instance in instances["items"]:
        cursor = None
        while True:
            page = await client.call(
                "files.list", {"instance_id": instance["id"], "limit": PAGE, "cursor": cursor}
            )
            files.extend(page["items"])
            cursor = page["next"]
            if cursor is None:
                break
    return files


async def follow(
    url: str,
    token: str | None,
    products: tuple[str, ...],
    recent: Callable[[str], int],
    position: int | None,
    on_file: Callable[[dict[str, Any], int | None], Awaitable[None]],
    on_connected: Callable[[bool, str | None], None] = lambda up, problem: None,
    on_caught_up: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Follow the index for ever (cancel to stop).

    ``on_file(file, event_id)`` gets each file record: from the catch-up
    queries with ``event_id`` None, from events with the event's number (the
    caller saves it as its position once it has handled the file). ``position``:
    the last event number handled before (None: start with what is there now).
    ``on_caught_up()`` runs after each catch-up, before the live events.
    ``on_connected(up, problem)``: True once subscribed, False with what went
    wrong when the stream is lost or cannot be had.
    """
    backoff = 1.0
    while True:
        try:
            async with connect(url, token=token) as client:
                events = await client.subscribe(since=position, kinds=["file"], products=list(products))
                on_connected(True, None)
                log.info("following %s from event %s", url, position if position is not None else "now")
                for product in products:
                    for file in await catch_up_files(client, product, recent(product)):
                        await on_file(file, None)
                log.info("caught up with %s", ", ".join(products))
                # only now: an index that takes the subscription but refuses
                # the catch-up (a product it does not know) is asked again
                # less and less often, not every second for ever
                backoff = 1.0
                if on_caught_up is not None:
                    await on_caught_up()
                async for event in events:
                    await on_file(event["data"], event["id"])
                    position = event["id"]
        except _UNREACHABLE as e:
            on_connected(False, str(e))
            log.warning("index %s: %s; subscribing again from event %s in %.0f s", url, e, position, backoff)
        except RpcError as e:
            # a product of ours unknown to the index, a token without read
            # rights: wait and try again, an operator can fix the daemon
            on_connected(False, f"the index refused: {e}")
            log.error("index %s refused: %s; trying again in %.0f s", url, e, backoff)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


def advertised_peer(advertise: str | None, listen_host: str, listen_port: int, api_url: str) -> str:
    """The "HOST:PORT" this host publishes in the index for other peers.

    ``advertise`` from the configuration wins (its port defaults to the one
    listened on). Else the listen address when it is a specific one, else the
    address of this host's interface that routes to the index's host (the one
    the consumers, on the same networks, most likely reach too). Blocks (a
    name lookup): call it in a worker thread.
    """
    if advertise:
        host, sep, port = advertise.rpartition(":")
        if sep and port.isdigit() and (not host.count(":") or host.endswith("]")):
            return advertise
        return f"{_bracket(advertise)}:{listen_port}"
    if listen_host not in ("0.0.0.0", "::", "") and _is_ip(listen_host):
        return f"{_bracket(listen_host)}:{listen_port}"
    target = urlsplit(api_url.split(",")[0].strip()).hostname or "127.0.0.1"
    info = socket.getaddrinfo(target, 9, type=socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as probe:
        probe.connect(info[4])  # UDP: no packet sent, only a route chosen
        host = probe.getsockname()[0]
    return f"{_bracket(host)}:{listen_port}"


def parse_peer(peer: str) -> tuple[str, int] | None:
    """"HOST:PORT" (or "[v6]:PORT") -> (host, port); None when malformed."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True

