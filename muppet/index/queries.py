"""The Productstatus index, read side: the questions consumers ask, one SQL
statement each.

Every function takes a ``Store`` and blocks (call it from a worker thread);
rows come back as JSON-able dicts, the shapes docs/api.md documents. The SQL
is SQLite's, translated for PostgreSQL by the store like the engine's.

Pagination: a listing returns ``{"items": [...], "next": CURSOR}`` where
``next`` is None on the last page; a cursor is opaque to clients (it is the
sort key of the last item) and is passed back as ``cursor``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from .. import codec
from ..model import DataFormat, Product, ServiceBackend

#: the largest page any listing returns
MAX_PAGE = 1000


class BadCursor(ValueError):
    """A cursor this module did not make."""


# --- rows -> dicts ---------------------------------------------------------------

PRODUCT_COLUMNS = "slug, name, contact, parents, file_count, operational, lifetime_hours, metadata"


def product_from_row(row: Sequence[Any]) -> Product:
    return Product(
        slug=row[0], name=row[1], contact=row[2], parents=tuple(json.loads(row[3])),
        file_count=row[4], operational=bool(row[5]), lifetime_hours=row[6],
        metadata=json.loads(row[7]),
    )


def product_to_dict(product: Product) -> dict[str, Any]:
    return {
        "slug": product.slug,
        "name": product.name,
        "contact": product.contact,
        "parents": list(product.parents),
        "file_count": product.file_count,
        "operational": product.operational,
        "lifetime_hours": product.lifetime_hours,
        **({"metadata": dict(product.metadata)}),
    }


def format_to_dict(fmt: DataFormat) -> dict[str, Any]:
    return {"slug": fmt.slug, "name": fmt.name}


def backend_to_dict(backend: ServiceBackend) -> dict[str, Any]:
    return {"slug": backend.slug, "name": backend.name, "url": backend.url}


INSTANCE_COLUMNS = "i.id, i.product, i.reference_time, i.version, i.created_at, i.completed_at"


def instance_from_row(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0],
        "product": row[1],
        "reference_time": row[2],
        "version": row[3],
        "created_at": codec.format_time(row[4]),
        "completed_at": None if row[5] is None else codec.format_time(row[5]),
    }


FILE_COLUMNS = (
    "di.id, di.data_id, di.instance_id, i.product, i.reference_time, i.version, d.name,"
    " di.url, di.format, di.backend, di.size, di.hash_type, di.hash, di.expires,"
    " di.deleted, di.partial, di.info_hash, d.time_begin, d.time_end, d.variables,"
    " di.created_at, di.peer, di.superseded_by"
)
FILE_FROM = (
    " FROM data_instances di JOIN data d ON d.id = di.data_id"
    " JOIN instances i ON i.id = di.instance_id"
)


#: the fields of a file, as ``file_from_row`` gives them: what
#: ``files.list``'s ``fields`` may name
FILE_FIELDS = (
    "id", "data_id", "instance_id", "product", "reference_time", "version", "name", "url", "format", "backend",
    "size", "hash_type", "hash", "expires", "deleted", "partial", "info_hash", "time_begin", "time_end",
    "variables", "created_at", "peer", "superseded_by",
)


def file_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """A data instance (a file on one backend), with what its Data and
    ProductInstance say about it."""
    return {
        "id": row[0],
        "data_id": row[1],
        "instance_id": row[2],
        "product": row[3],
        "reference_time": row[4],
        "version": row[5],
        "name": row[6],
        "url": row[7],
        "format": row[8],
        "backend": row[9],
        "size": row[10],
        "hash_type": row[11],
        "hash": row[12],
        "expires": row[13],
        "deleted": bool(row[14]),
        "partial": bool(row[15]),
        "info_hash": row[16],
        "time_begin": row[17],
        "time_end": row[18],
        "variables": json.loads(row[19]),
        "created_at": codec.format_time(row[20]),
        "peer": row[21],
        "superseded_by": row[22],
    }


# --- cursors ---------------------------------------------------------------------


def _page(items: list[Any], limit: int, key: Callable[[Any], str]) -> dict[str, Any]:
    """The first ``limit`` items and the cursor of the next page: the query
    fetched one more than ``limit`` to know whether there is one."""
    if len(items) > limit:
        items = items[:limit]
        return {"items": items, "next": key(items[-1])}
    return {"items": items, "next": None}


def _split_cursor(cursor: str, parts: int) -> list[str]:
    pieces = cursor.split("/")
    if len(pieces) != parts or not all(pieces):
        raise BadCursor(f"not a cursor of this listing: {cursor!r}")
    return pieces


def _int(text: str, cursor: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadCursor(f"not a cursor of this listing: {cursor!r}") from None


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


# --- products, formats, backends -------------------------------------------------


def list_products(store: Any, cursor: str | None = None, limit: int = 100) -> dict[str, Any]:
    """Products by slug."""
    limit = _limit(limit)
    rows = store.query(
        f"SELECT {PRODUCT_COLUMNS} FROM products WHERE slug > ? ORDER BY slug LIMIT ?",
        (cursor or "", limit + 1),
    )
    items = [product_to_dict(product_from_row(r)) for r in rows]
    return _page(items, limit, lambda item: item["slug"])


def get_product(store: Any, slug: str) -> Product | None:
    rows = store.query(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE slug = ?", (slug,))
    return product_from_row(rows[0]) if rows else None


def list_formats(store: Any) -> list[dict[str, Any]]:
    return [
        format_to_dict(DataFormat(slug, name))
        for slug, name in store.query("SELECT slug, name FROM formats ORDER BY slug")
    ]


def list_backends(store: Any) -> list[dict[str, Any]]:
    return [
        backend_to_dict(ServiceBackend(slug, name, url))
        for slug, name, url in store.query("SELECT slug, name, url FROM backends ORDER BY slug")
    ]


# --- instances -------------------------------------------------------------------

#: an instance is complete on a (backend, format) pair holding at least
#: file_count present, whole files; ``{extra}`` narrows the pair
_COMPLETE = (
    "EXISTS (SELECT 1 FROM data_instances c WHERE c.instance_id = i.id"
    " AND c.deleted = 0 AND c.partial = 0{extra}"
    " GROUP BY c.backend, c.format HAVING COUNT(*) >= p.file_count)"
)


def latest_instance(
    store: Any,
    product: str,
    *,
    complete: bool = False,
    backend: str | None = None,
    format: str | None = None,
) -> dict[str, Any] | None:
    """The newest instance of ``product`` (latest reference time, then highest
    version); with ``complete``, the newest complete one, optionally complete
    on ``backend`` and/or in ``format``. None when there is none."""
    sql = f"SELECT {INSTANCE_COLUMNS} FROM instances i"
    params: list[Any] = [product]
    if complete:
        extra = ""
        if backend is not None:
            extra += " AND c.backend = ?"
            params.append(backend)
        if format is not None:
            extra += " AND c.format = ?"
            params.append(format)
        sql += " JOIN products p ON p.slug = i.product WHERE i.product = ? AND " + _COMPLETE.format(extra=extra)
    else:
        sql += " WHERE i.product = ?"
    sql += " ORDER BY i.reference_time DESC, i.version DESC LIMIT 1"
    rows = store.query(sql, params)
    return instance_from_row(rows[0]) if rows else None


def get_instance(store: Any, instance_id: int) -> dict[str, Any] | None:
    rows = store.query(f"SELECT {INSTANCE_COLUMNS} FROM instances i WHERE i.id = ?", (instance_id,))
    return instance_from_row(rows[0]) if rows else None


def find_instance(
    store: Any, product: str, reference_time: datetime, version: int | None = None
) -> dict[str, Any] | None:
    """The instance of (product, reference_time): ``version``, or the newest."""
    sql = f"SELECT {INSTANCE_COLUMNS} FROM instances i WHERE i.product = ? AND i.reference_time = ?"
    params: list[Any] = [product, codec.format_time(reference_time)]
    if version is not None:
        sql += " AND i.version = ?"
        params.append(version)
    rows = store.query(sql + " ORDER BY i.version DESC LIMIT 1", params)
    return instance_from_row(rows[0]) if rows else None


def list_instances(
    store: Any,
    product: str,
    *,
    begin: datetime | None = None,
    end: datetime | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Instances of ``product`` with ``begin <= reference_time < end``, newest
    reference time first, then highest version first."""
    limit = _limit(limit)
    sql = f"SELECT {INSTANCE_COLUMNS} FROM instances i WHERE i.product = ?"
    params: list[Any] = [product]
    if begin is not None:
        sql += " AND i.reference_time >= ?"
        params.append(codec.format_time(begin))
    if end is not None:
        sql += " AND i.reference_time < ?"
        params.append(codec.format_time(end))
    if cursor:
        reference_time, version = _split_cursor(cursor, 2)
        sql += " AND (i.reference_time < ? OR (i.reference_time = ? AND i.version < ?))"
        params += [reference_time, reference_time, _int(version, cursor)]
    sql += " ORDER BY i.reference_time DESC, i.version DESC LIMIT ?"
    params.append(limit + 1)
    items = [instance_from_row(r) for r in store.query(sql, params)]
    return _page(items, limit, lambda item: f"{item['reference_time']}/{item['version']}")


def completeness(store: Any, instance_id: int) -> list[dict[str, Any]]:
    """Per (backend, format): the files present, whole and not deleted,
    against the product's file_count; one query for all pairs."""
    rows = store.query(
        "SELECT di.backend, di.format, COUNT(*), p.file_count FROM data_instances di"
        " JOIN instances i ON i.id = di.instance_id JOIN products p ON p.slug = i.product"
        " WHERE di.instance_id = ? AND di.deleted = 0 AND di.partial = 0"
        " GROUP BY di.backend, di.format, p.file_count ORDER BY di.backend, di.format",
        (instance_id,),
    )
    return [
        {"backend": b, "format": f, "files": n, "file_count": want, "complete": n >= want}
        for b, f, n, want in rows
    ]


# --- files -------------------------------------------------------------------------


def list_files(
    store: Any,
    instance_id: int,
    *,
    backend: str | None = None,
    format: str | None = None,
    include_deleted: bool = False,
    cursor: str | None = None,
    limit: int = 100,
    fields: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The data instances of one instance, by id; with ``fields``, each
    holds only those (in ``FILE_FIELDS``' order)."""
    limit = _limit(limit)
    sql = f"SELECT {FILE_COLUMNS}{FILE_FROM} WHERE di.instance_id = ?"
    params: list[Any] = [instance_id]
    if backend is not None:
        sql += " AND di.backend = ?"
        params.append(backend)
    if format is not None:
        sql += " AND di.format = ?"
        params.append(format)
    if not include_deleted:
        sql += " AND di.deleted = 0"
    if cursor:
        sql += " AND di.id > ?"
        params.append(_int(_split_cursor(cursor, 1)[0], cursor))
    sql += " ORDER BY di.id LIMIT ?"
    params.append(limit + 1)
    items = [file_from_row(r) for r in store.query(sql, params)]
    page = _page(items, limit, lambda item: str(item["id"]))
    if fields is not None:
        chosen = [name for name in FILE_FIELDS if name in fields]
        page["items"] = [{name: item[name] for name in chosen} for item in page["items"]]
    return page


def get_file(store: Any, file_id: int, *, torrent: bool = False) -> dict[str, Any] | None:
    """One data instance; ``torrent`` adds the stored torrent (base64 or None)."""
    extra = ", di.torrent" if torrent else ""
    rows = store.query(f"SELECT {FILE_COLUMNS}{extra}{FILE_FROM} WHERE di.id = ?", (file_id,))
    if not rows:
        return None
    item = file_from_row(rows[0])
    if torrent:
        item["torrent"] = rows[0][-1]
    return item


def copies(store: Any, data_id: int) -> list[dict[str, Any]]:
    """Every present copy of one file (one Data), on every backend."""
    rows = store.query(
        f"SELECT {FILE_COLUMNS}{FILE_FROM} WHERE di.data_id = ? AND di.deleted = 0 ORDER BY di.id",
        (data_id,),
    )
    return [file_from_row(r) for r in rows]


def expiring(
    store: Any, before: datetime, *, cursor: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """Present data instances whose ``expires`` is before ``before``, soonest first."""
    limit = _limit(limit)
    sql = f"SELECT {FILE_COLUMNS}{FILE_FROM} WHERE di.deleted = 0 AND di.expires < ?"
    params: list[Any] = [codec.format_time(before)]
    if cursor:
        expires, last_id = _split_cursor(cursor, 2)
        sql += " AND (di.expires > ? OR (di.expires = ? AND di.id > ?))"
        params += [expires, expires, _int(last_id, cursor)]
    sql += " ORDER BY di.expires, di.id LIMIT ?"
    params.append(limit + 1)
    items = [file_from_row(r) for r in store.query(sql, params)]
    return _page(items, limit, lambda item: f"{item['expires']}/{item['id']}")


# --- events ------------------------------------------------------------------------


#: the kind of the marker that stands for the pruned events (docs/api.md,
#: "Subscribing to events"); no event of the log has it
PRUNED = "pruned"


def events_since(
    store: Any,
    after_id: int,
    *,
    limit: int = 1000,
    kinds: Sequence[str] | None = None,
    products: Sequence[str] | None = None,
    pruned: bool = True,
) -> list[dict[str, Any]]:
    """Events numbered above ``after_id``, oldest first, as
    ``{"id", "at", "kind", "product", "subject_id", "data"}``.

    When some of them were pruned ([daemon] keep_history), the first item is
    a marker of kind "pruned" that stands for them: its id is the last
    number pruned, its ``at`` when they went, its data ``{"oldest": N}``,
    the number of the oldest event kept. It passes the ``products`` filter,
    and ``kinds`` when they name "pruned"; ``pruned=False`` leaves it out
    (the API's event hub, which only reads what is new). One statement, so
    that the marker and the events come from one moment of the log."""
    sql = "SELECT id, at, kind, product, subject_id, payload FROM events WHERE id > ?"
    params: list[Any] = [after_id]
    if kinds:
        sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
        params += list(kinds)
    if products:
        sql += f" AND product IN ({', '.join('?' for _ in products)})"
        params += list(products)
    sql += " ORDER BY id LIMIT ?"
    params.append(int(limit))
    if pruned and (not kinds or PRUNED in kinds):
        sql = (
            f"SELECT id, at, kind, product, subject_id, payload FROM (SELECT events AS id, at, '{PRUNED}' AS kind,"
            " NULL AS product, 0 AS subject_id, '{}' AS payload FROM pruned WHERE id = 1 AND events > ?"
            f" UNION ALL SELECT * FROM ({sql}) AS kept) AS page ORDER BY id LIMIT ?"
        )
        params = [after_id, *params, int(limit)]
    return [event_from_row(r) for r in store.query(sql, params)]


def event_from_row(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0],
        "at": codec.format_time(row[1]),
        "kind": row[2],
        "product": row[3],
        "subject_id": row[4],
        "data": {"oldest": row[0] + 1} if row[2] == PRUNED else json.loads(row[5]),
    }
