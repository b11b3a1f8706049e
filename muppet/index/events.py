"""The event stream as the API serves it: one reader of the event log, many
subscribers, and a cache of hot answers that the same events keep current.

The database task appends events in the transaction of each change (the
transactional outbox) and, after each commit, tells the hub the newest event
number and the events the commit appended. The hub takes what is new once,
for every subscriber, in order (from that message when it follows what the
hub delivered last, else from the log):

- it first drops the cached answers the events make stale, then hands the
  events to the subscribers, so a client that reacts to an event and then
  queries sees the change;
- a subscriber has a bounded queue; the hub never waits for one. A subscriber
  that falls a queue's length behind is told to go (``Subscription.overflowed``)
  and its connection closes with the number to resume from.

Numbers are gap-free and in commit order: there is one writer, the database
task, so events commit one batch after the other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from ..codec import compact_json_text
from ..messages import EventsCommitted
from .queries import event_from_row

log = logging.getLogger("muppet.index")

#: events a subscriber may be behind before it is disconnected
SUBSCRIBER_QUEUE = 10_000
#: events read from the log per query
PAGE = 1000

ReadEvents = Callable[[int, int], Awaitable[list[dict[str, Any]]]]


def encode_event(event: dict[str, Any]) -> str:
    return compact_json_text(event)


@attrs.define(eq=False)
class Subscription:
    """One client's subscription: what it wants and the events queued for it.

    ``queue`` carries lists of ``(id, json_text)``; ``position`` is the last
    number handed to the client (the resume point it is told on overflow).
    """

    id: int
    kinds: frozenset[str] | None
    products: frozenset[str] | None
    send: trio.MemorySendChannel[list[tuple[int, str]]]
    receive: trio.MemoryReceiveChannel[list[tuple[int, str]]]
    position: int = 0
    queued: int = 0
    overflowed: trio.Event = attrs.field(factory=trio.Event)

    def wants(self, kind: str, product: str | None) -> bool:
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.products is not None and product not in self.products:
            return False
        return True


#: the kinds of event that make cached answers stale (``QueryCache.apply``)
CACHE_KINDS = frozenset({"file", "instance", "product", "format", "backend"})


class QueryCache:
    """Answers of hot queries as JSON text, each tagged with what it depends
    on ("product:P", "instance:I", or "*" for everything).

    A stale answer must never be stored: a query that read the database while
    an event touching its tag was being applied might hold the old state. So
    every tag has a generation, bumped on invalidation; an answer is kept only
    if its tags' generations did not move while it was computed.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.entries: dict[Any, str] = {}
        self.tags_of: dict[Any, tuple[str, ...]] = {}
        self.keys_of: dict[str, set[Any]] = {}
        self.generations: dict[str, int] = {}
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> str | None:
        text = self.entries.get(key)
        if text is None:
            self.misses += 1
        else:
            self.hits += 1
        return text

    def generation(self, tags: Iterable[str]) -> tuple[int, ...]:
        return tuple(self.generations.get(t, 0) for t in (*tags, "*"))

    def put(self, key: Any, text: str, tags: tuple[str, ...], generation: tuple[int, ...]) -> None:
        if self.generation(tags) != generation:
            return
        if len(self.entries) >= self.max_entries:
            self.clear()
        self.entries[key] = text
        self.tags_of[key] = tags
        for tag in tags:
            self.keys_of.setdefault(tag, set()).add(key)

    def invalidate(self, tag: str) -> None:
        self.generations[tag] = self.generations.get(tag, 0) + 1
        if tag == "*":
            self.clear()
            return
        for key in self.keys_of.pop(tag, ()):
            self.entries.pop(key, None)
            for other in self.tags_of.pop(key, ()):
                if other != tag:
                    self.keys_of.get(other, set()).discard(key)

    def clear(self) -> None:
        self.entries.clear()
        self.tags_of.clear()
        self.keys_of.clear()

    def apply(self, event: dict[str, Any]) -> None:
        """Drop what ``event`` makes stale (an event of ``CACHE_KINDS``; the
        others change no answer it keeps)."""
        kind = event["kind"]
        data = event["data"]
        if kind == "file":
            self.invalidate(f"instance:{data['instance_id']}")
            self.invalidate(f"product:{data['product']}")
        elif kind == "instance":
            self.invalidate(f"instance:{data['id']}")
            self.invalidate(f"product:{data['product']}")
        elif kind in ("product", "format", "backend"):
            self.invalidate("*")


class EventHub:
    """Reads the event log after each commit and fans it out; see the module
    docstring. ``read_events(after_id, limit)`` reads the log (in a worker
    thread); ``start`` is the newest number when the daemon started."""

    def __init__(self, read_events: ReadEvents, start: int, cache: QueryCache | None = None) -> None:
        self.read_events = read_events
        self.position = start
        self.cache = cache if cache is not None else QueryCache()
        self.subscriptions: dict[int, Subscription] = {}
        self._next_id = 1
        self._advanced = trio.Event()

    async def run(self, committed: trio.MemoryReceiveChannel[EventsCommitted], *, poll: float = 5.0) -> None:
        """Follow the log: after each commit the database task says on
        ``committed`` what the newest event is and which events the commit
        appended. The hub delivers those when they follow the last one it
        delivered, and reads what is new otherwise (a commit's message was
        dropped while an earlier one waited, or it could not tell its
        events). Every ``poll`` seconds it looks anyway, as a safety net."""
        while True:
            with trio.move_on_after(poll):
                message = await committed.receive()
                if message.newest <= self.position or self._take(message):
                    continue
            await self.catch_up()

    def _take(self, message: EventsCommitted) -> bool:
        """Deliver the events a commit appended as it handed them over, when
        they are exactly those after ``position`` up to its newest: the log
        need not be read back (a worker thread's read per commit: 0.16 ms of
        the daemon's CPU per link of a chain of short steps;
        docs/performance.md). False, delivering nothing, otherwise."""
        rows = [row for row in message.rows or () if row[0] > self.position]
        if not rows or rows[0][0] != self.position + 1 or rows[-1][0] != message.newest:
            return False
        # only the events someone needs are made (a timestamp formatted,
        # JSON parsed): in a fan-out nobody watches, a job's events are
        # neither the cache's nor a subscriber's (docs/performance.md)
        subscriptions = list(self.subscriptions.values())
        needed = [
            row for row in rows
            if row[2] in CACHE_KINDS or any(subscription.wants(row[2], row[3]) for subscription in subscriptions)
        ]
        self.deliver([event_from_row(row) for row in needed], newest=message.newest)
        return True

    async def catch_up(self) -> None:
        while True:
            events = await self.read_events(self.position, PAGE)
            if not events:
                return
            self.deliver(events)
            if len(events) < PAGE:
                return

    def deliver(self, events: Sequence[dict[str, Any]], newest: int | None = None) -> None:
        """Apply events in order: cache first, then subscribers, then waiters.
        ``newest``: the last event number they cover, when that is not the
        last one's (events nobody needs were left out)."""
        for event in events:
            self.cache.apply(event)
        # encoded only for subscribers: without any (a daemon nobody
        # watches) it was a JSON encoding per job event for nothing
        texts = [(e["id"], encode_event(e), e) for e in events] if self.subscriptions else []
        for subscription in list(self.subscriptions.values()):
            wanted = [
                (i, t) for i, t, e in texts if i > subscription.position and subscription.wants(e["kind"], e["product"])
            ]
            if not wanted:
                continue
            self._offer(subscription, wanted)
        self.position = newest if newest is not None else events[-1]["id"]
        self._advanced.set()
        self._advanced = trio.Event()

    def _offer(self, subscription: Subscription, events: list[tuple[int, str]]) -> None:
        if subscription.overflowed.is_set():
            return
        if subscription.queued + len(events) > SUBSCRIBER_QUEUE:
            subscription.overflowed.set()
            return
        try:
            subscription.send.send_nowait(events)
            subscription.queued += len(events)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            subscription.overflowed.set()

    async def wait_for(self, event_id: int) -> None:
        """Return once the hub has applied event ``event_id`` (read-your-writes
        for a write's reply). Callers bound the wait with a cancel scope."""
        while self.position < event_id:
            await self._advanced.wait()

    def subscribe(self, kinds: Iterable[str] | None, products: Iterable[str] | None) -> Subscription:
        # unbounded in messages, bounded in events by SUBSCRIBER_QUEUE through
        # ``queued``: a message holds one commit's events
        send, receive = trio.open_memory_channel[list[tuple[int, str]]](math.inf)
        subscription = Subscription(
            id=self._next_id,
            kinds=frozenset(kinds) if kinds else None,
            products=frozenset(products) if products else None,
            send=send,
            receive=receive,
        )
        self._next_id += 1
        self.subscriptions[subscription.id] = subscription
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.pop(subscription.id, None)
        subscription.send.close()

    async def stream(
        self,
        subscription: Subscription,
        since: int | None,
        read_filtered: Callable[[int, int], Awaitable[list[dict[str, Any]]]],
        send: Callable[[list[tuple[int, str]]], Awaitable[None]],
    ) -> None:
        """Deliver a subscription: the past from ``since`` (read from the log
        with the subscription's filters by ``read_filtered(after, limit)``),
        then the live events queued since it was made, each number once, in
        order. ``send`` writes one batch to the client. Runs until cancelled,
        the subscription ends, or it overflows (then returns); whoever runs it
        also watches ``overflowed``, since a send stuck on a slow client
        would not notice."""
        # The subscription already queues live events above the hub's position
        # at the time it was made; the past is read up to there, then the
        # queue takes over. ``position`` skips what the past already gave.
        subscription.position = self.position if since is None else since
        if since is not None:
            while not subscription.overflowed.is_set():
                past = await read_filtered(subscription.position, PAGE)
                past = [e for e in past if e["id"] <= self.position]
                if not past:
                    break
                await send([(e["id"], encode_event(e)) for e in past])
                subscription.position = past[-1]["id"]
                if len(past) < PAGE:
                    break
        while not subscription.overflowed.is_set():
            try:
                batch = await subscription.receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            subscription.queued -= len(batch)
            fresh = [(i, t) for i, t in batch if i > subscription.position]
            if fresh:
                await send(fresh)
                subscription.position = fresh[-1][0]
