"""The API's index methods: Productstatus queries, index writes and event
subscriptions. docs/api.md documents each with a request and its reply.

Hot reads are answered from the event hub's cache as ready JSON text
(``protocol.Raw``); the hub drops an answer as soon as an event makes it
stale. Writes go to the database task (``messages.IndexWrite``), which commits
them and replies with their outcome; the reply waits until the hub has applied
the write's events, so that the writer's next read sees its own write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any

import trio
import trio_websocket

from .. import messages
from ..codec import compact_json_text
from ..db import reads
from ..db.health import until_available
from ..index import params as index_params
from ..index import queries
from ..index.events import encode_event
from ..messages import NOT_FOUND
from .context import Connection, Context
from .protocol import EVENT_KINDS, INVALID_PARAMS, Raw, RpcError

#: how long a write's reply waits for the event hub to have its events
READ_YOUR_WRITES_WAIT = 5.0


def _invalid(error: index_params.ParamError) -> RpcError:
    return RpcError(INVALID_PARAMS, f"invalid params: {error}", {"param": error.field.split(".")[0].split("[")[0]})


def _key(method: str, params: Mapping[str, Any]) -> tuple[Any, ...]:
    return (method, *(tuple(v) if isinstance(v, list) else v for v in params.values()))


async def _cached(
    ctx: Context, key: tuple[Any, ...], tags: tuple[str, ...], compute: Callable[[], Awaitable[Any]]
) -> Any:
    """The cached JSON text for ``key``, or ``compute()`` encoded and kept
    under ``tags`` (unless an event touched them meanwhile)."""
    cache = ctx.cache
    text = cache.get(key)
    if text is not None:
        return Raw(text)
    generation = cache.generation(tags)
    result = await compute()
    text = compact_json_text(result)
    cache.put(key, text, tags, generation)
    return Raw(text)


def cached_answer(ctx: Context, method: str, params: Mapping[str, Any]) -> str | None:
    """The cached answer of a call, without awaiting: the server's fast path
    for batches of hot queries."""
    if method not in CACHED:
        return None
    return ctx.cache.entries.get(_key(method, params))


async def _product_or_404(ctx: Context, slug: str) -> None:
    if await ctx.query(queries.get_product, slug) is None:
        raise RpcError(NOT_FOUND, f"unknown product {slug!r}", {"product": slug})


# --- products, formats, backends ---------------------------------------------------


async def _products_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    try:
        return await _cached(ctx, _key("products.list", params), ("*",), lambda: ctx.query(
            queries.list_products, params["cursor"], params["limit"]))
    except queries.BadCursor as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: 'cursor' {exc}", {"param": "cursor"}) from None


async def _products_get(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    async def compute() -> Any:
        product = await ctx.query(queries.get_product, params["product"])
        if product is None:
            raise RpcError(NOT_FOUND, f"unknown product {params['product']!r}", {"product": params["product"]})
        return queries.product_to_dict(product)

    return await _cached(ctx, _key("products.get", params), ("*",), compute)


async def _formats_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    return await _cached(ctx, ("formats.list",), ("*",), lambda: ctx.query(queries.list_formats))


async def _backends_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    return await _cached(ctx, ("backends.list",), ("*",), lambda: ctx.query(queries.list_backends))


async def _write(ctx: Context, change: messages.IndexChange) -> messages.IndexWritten:
    """Commit ``change`` and wait until the event hub has its events, so that
    the writer's next query sees what it wrote."""
    written = await ctx.write(change)
    # the hub reads after every commit; should it lag (a slow read), the
    # writer gets its answer anyway, only without the guarantee
    with trio.move_on_after(READ_YOUR_WRITES_WAIT):
        await ctx.hub.wait_for(written.event_id)
    return written


async def _products_define(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    try:
        product = index_params.product(params["product"])
    except index_params.ParamError as exc:
        raise _invalid(exc) from None
    if product.contact and product.contact not in ctx.config.stakeholders:
        known = ", ".join(sorted(ctx.config.stakeholders)) or "none"
        raise RpcError(INVALID_PARAMS, f"invalid params: product.contact: unknown stakeholder "
                       f"{product.contact!r} (known: {known})", {"param": "product"})
    for parent in product.parents:
        if parent != product.slug:
            await _product_or_404(ctx, parent)
    written = await _write(ctx, messages.DefineIndex(products=(product,)))
    return queries.product_to_dict(product) | {"changed": bool(written.result["products"])}


async def _formats_define(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    try:
        fmt = index_params.data_format(params["format"])
    except index_params.ParamError as exc:
        raise _invalid(exc) from None
    written = await _write(ctx, messages.DefineIndex(formats=(fmt,)))
    return queries.format_to_dict(fmt) | {"changed": bool(written.result["formats"])}


async def _backends_define(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    try:
        backend = index_params.backend(params["backend"])
    except index_params.ParamError as exc:
        raise _invalid(exc) from None
    written = await _write(ctx, messages.DefineIndex(backends=(backend,)))
    return queries.backend_to_dict(backend) | {"changed": bool(written.result["backends"])}


# --- instances ----------------------------------------------------------------------


async def _instances_latest(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    product = params["product"]

    async def compute() -> Any:
        found = await ctx.query(
            queries.latest_instance, product, complete=params["complete"],
            backend=params["backend"], format=params["format"],
        )
        if found is None:
            await _product_or_404(ctx, product)
        return found

    return await _cached(ctx, _key("instances.latest", params), (f"product:{product}",), compute)


def _time_param(name: str, value: Any) -> datetime | None:
    """An optional time parameter (None when not given)."""
    try:
        return index_params.optional_time(name, value)
    except index_params.ParamError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: {exc}", {"param": name}) from None


def _required_time(name: str, value: Any) -> datetime:
    """A time parameter that must be given (a missing one is refused
    before the handler runs, or by the handler's own check)."""
    try:
        return index_params.time(name, value)
    except index_params.ParamError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: {exc}", {"param": name}) from None


async def _instances_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    begin = _time_param("begin", params["begin"])
    end = _time_param("end", params["end"])
    try:
        page = await ctx.query(
            queries.list_instances, params["product"], begin=begin, end=end,
            cursor=params["cursor"], limit=params["limit"],
        )
    except queries.BadCursor as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: 'cursor' {exc}", {"param": "cursor"}) from None
    if not page["items"] and params["cursor"] is None:
        await _product_or_404(ctx, params["product"])
    return page


async def _instance_or_404(ctx: Context, instance_id: int) -> dict[str, Any]:
    found = await ctx.query(queries.get_instance, instance_id)
    if found is None:
        raise RpcError(NOT_FOUND, f"unknown instance {instance_id}", {"instance_id": instance_id})
    return found


async def _instances_get(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    return await _cached(ctx, _key("instances.get", params), (f"instance:{params['instance_id']}",),
                         lambda: _instance_or_404(ctx, params["instance_id"]))


async def _instances_completeness(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    instance_id = params["instance_id"]

    async def compute() -> Any:
        instance = await _instance_or_404(ctx, instance_id)
        pairs = await ctx.query(queries.completeness, instance_id)
        return {**instance, "complete": any(p["complete"] for p in pairs), "pairs": pairs}

    return await _cached(ctx, _key("instances.completeness", params), (f"instance:{instance_id}",), compute)


# --- files ----------------------------------------------------------------------------


async def _files_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    try:
        fields = index_params.slugs("fields", params["fields"], queries.FILE_FIELDS)
    except index_params.ParamError as exc:
        raise _invalid(exc) from None
    if fields is not None and not fields:
        raise RpcError(INVALID_PARAMS, "invalid params: 'fields' must name at least one field", {"param": "fields"})
    instance_id = params["instance_id"]
    if instance_id is None:
        if params["product"] is None or params["reference_time"] is None:
            raise RpcError(INVALID_PARAMS, "invalid params: give instance_id, or product and reference_time",
                           {"param": "instance_id"})
        reference_time = _required_time("reference_time", params["reference_time"])
        found = await ctx.query(queries.find_instance, params["product"], reference_time, params["version"])
        if found is None:
            await _product_or_404(ctx, params["product"])
            raise RpcError(NOT_FOUND, f"no instance of {params['product']!r} for {params['reference_time']}"
                           + (f" version {params['version']}" if params["version"] else ""),
                           {"product": params["product"]})
        instance_id = found["id"]

    async def compute() -> Any:
        try:
            page = await ctx.query(
                queries.list_files, instance_id, backend=params["backend"], format=params["format"],
                include_deleted=params["include_deleted"], cursor=params["cursor"], limit=params["limit"],
                fields=fields,
            )
        except queries.BadCursor as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params: 'cursor' {exc}", {"param": "cursor"}) from None
        if not page["items"] and params["cursor"] is None:
            await _instance_or_404(ctx, instance_id)
        return page

    return await _cached(ctx, _key("files.list", {**params, "instance_id": instance_id}),
                         (f"instance:{instance_id}",), compute)


async def _files_get(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    found = await ctx.query(queries.get_file, params["file_id"], torrent=params["torrent"])
    if found is None:
        raise RpcError(NOT_FOUND, f"unknown file {params['file_id']}", {"file_id": params["file_id"]})
    return found


async def _files_copies(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    return await ctx.query(queries.copies, params["data_id"])


async def _files_expiring(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    before = _required_time("before", params["before"])
    try:
        return await ctx.query(queries.expiring, before, cursor=params["cursor"], limit=params["limit"])
    except queries.BadCursor as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: 'cursor' {exc}", {"param": "cursor"}) from None


async def _files_register(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    try:
        files = index_params.new_files(params["files"])
    except index_params.ParamError as exc:
        raise _invalid(exc) from None
    written = await _write(ctx, messages.RegisterFiles(files, new_version=params["new_version"]))
    return written.result


async def _files_delete(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    try:
        ids = index_params.file_ids(params["ids"])
    except index_params.ParamError as exc:
        raise _invalid(exc) from None
    written = await _write(ctx, messages.DeleteFiles(ids=ids, reason=params["reason"]))
    return written.result


async def _files_set_torrent(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    try:
        info_hash = index_params.info_hash("info_hash", params["info_hash"])
        peer = None if params["peer"] is None else index_params.peer("peer", params["peer"])
    except index_params.ParamError as exc:
        raise _invalid(exc) from None
    written = await _write(ctx, messages.SetTorrent(params["file_id"], info_hash, params["torrent"], peer))
    return written.result


# --- events ---------------------------------------------------------------------------


def _filters(params: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    try:
        kinds = index_params.slugs("kinds", params["kinds"], EVENT_KINDS)
        products = index_params.slugs("products", params["products"])
    except index_params.ParamError as exc:
        raise _invalid(exc) from None
    return kinds, products


async def _events_list(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    kinds, products = _filters(params)
    return await ctx.query(
        queries.events_since, params["since"], limit=params["limit"], kinds=kinds, products=products
    )


#: a notification's text with the events spliced in, not re-encoded
_NOTIFICATION = '{{"jsonrpc":"2.0","method":"events","params":{{"subscription":{},"events":[{}]}}}}'


async def _events_subscribe(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    hub = ctx.hub
    kinds, products = _filters(params)
    since = params["since"]
    # where the kept events start: a subscriber whose filter leaves out the
    # "pruned" marker learns it here (docs/api.md, "Subscribing to events")
    oldest = await ctx.query(reads.oldest_event)
    subscription = hub.subscribe(kinds, products)
    replied = trio.Event()
    conn.replied.append(replied)
    scope = trio.CancelScope()
    conn.subscriptions[subscription.id] = scope

    async def read(after: int, limit: int) -> list[dict[str, Any]]:
        # the past is read again until the database answers: a subscription
        # outlives an outage, and resumes where it was
        read_past = partial(ctx.readers.run, queries.events_since, after, limit=limit, kinds=kinds, products=products)
        return await until_available(ctx.health, read_past)

    async def send(batch: list[tuple[int, str]]) -> None:
        await conn.ws.send_message(_NOTIFICATION.format(subscription.id, ",".join(t for _, t in batch)))

    async def stream() -> None:
        with scope:
            try:
                await replied.wait()
                async with trio.open_nursery() as nursery:
                    async def watch() -> None:
                        await subscription.overflowed.wait()
                        # RFC 6455 7.4.1: 1008, a message that violates policy;
                        # the reason (at most 123 bytes) says where to resume
                        await conn.ws.aclose(
                            1008, f"subscriber too slow: resume with events.subscribe since={subscription.position}"
                        )

                    nursery.start_soon(watch)
                    await hub.stream(subscription, since, read, send)
                    nursery.cancel_scope.cancel()
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                hub.unsubscribe(subscription)
                conn.subscriptions.pop(subscription.id, None)

    conn.nursery.start_soon(stream)
    return {"subscription": subscription.id, "position": hub.position, "oldest": oldest}


async def _events_unsubscribe(ctx: Context, params: Mapping[str, Any], conn: Connection) -> Any:
    scope = conn.subscriptions.pop(params["subscription"], None)
    if scope is None:
        raise RpcError(NOT_FOUND, f"no subscription {params['subscription']} on this connection",
                       {"subscription": params["subscription"]})
    scope.cancel()
    return {"subscription": params["subscription"]}


#: the methods whose answers the hub's cache keeps
CACHED = frozenset({
    "products.list", "products.get", "formats.list", "backends.list", "instances.latest",
    "instances.get", "instances.completeness", "files.list",
})

HANDLERS = {
    "products.list": _products_list,
    "products.get": _products_get,
    "products.define": _products_define,
    "formats.list": _formats_list,
    "formats.define": _formats_define,
    "backends.list": _backends_list,
    "backends.define": _backends_define,
    "instances.latest": _instances_latest,
    "instances.list": _instances_list,
    "instances.get": _instances_get,
    "instances.completeness": _instances_completeness,
    "files.list": _files_list,
    "files.get": _files_get,
    "files.copies": _files_copies,
    "files.expiring": _files_expiring,
    "files.register": _files_register,
    "files.delete": _files_delete,
    "files.set_torrent": _files_set_torrent,
    "events.list": _events_list,
    "events.subscribe": _events_subscribe,
    "events.unsubscribe": _events_unsubscribe,
}

__all__ = ["CACHED", "HANDLERS", "cached_answer", "encode_event"]
