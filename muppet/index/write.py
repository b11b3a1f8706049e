"""The Productstatus index, write side: applies one IndexChange inside the
database task's transaction.

``apply`` is called by ``Store.write`` with the batch's cursor, so an index
change commits together with whatever else the batch holds (a job's success
and the registration of its outputs are one transaction), and every change
appends its events to the same numbered log. Each change is checked before
anything of it is written: a refused change (unknown product, backend, ...)
writes nothing and comes back as an ``IndexWritten`` with an error, without
failing the rest of the batch. The database task is the only writer, so
what the checks read cannot change before the writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import codec
from ..messages import (
    CONFLICT,
    NOT_FOUND,
    CompletedInstance,
    DefineIndex,
    DeleteFiles,
    IndexChange,
    IndexWritten,
    NewFile,
    RegisterFiles,
    SetTorrent,
)
from ..model import DataFormat, Product
from .queries import (
    FILE_COLUMNS,
    FILE_FROM,
    PRODUCT_COLUMNS,
    backend_to_dict,
    file_from_row,
    format_to_dict,
    instance_from_row,
    product_from_row,
    product_to_dict,
)

#: (at, kind, subject_id, payload JSON, product) rows for the events table
EventRow = tuple[float, str, Any, str, "str | None"]
#: ids in one statement's IN list: below SQLite's oldest limit of 999 variables
_PART = 500


class Refused(Exception):
    """The change is refused as a whole; ``code`` is its JSON-RPC error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Writer:
    """One change's work on the batch's cursor; ``sql`` translates SQLite's
    words for the store's dialect."""

    def __init__(self, cursor: Any, sql: Callable[[str], str], now: float, events: list[EventRow]) -> None:
        self.cursor = cursor
        self.sql = sql
        self.now = now
        self.events = events
        # what one change has found to exist, so that a thousand files of one
        # backend and format cost one look each
        self.known_backends: dict[str, str] = {}  # slug -> base URL
        self.known_formats: set[str] = set()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.cursor.execute(self.sql(sql), tuple(params))
        return list(self.cursor.fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def existing(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The one row of a query whose row exists (checked before, or
        written in this transaction)."""
        row = self.one(sql, params)
        if row is None:
            raise LookupError(f"no row for {sql!r} {tuple(params)!r}")
        return row

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """Insert one row and return its id (RETURNING: SQLite 3.35+ and
        PostgreSQL both have it)."""
        self.cursor.execute(self.sql(sql + " RETURNING id"), tuple(params))
        new_id: int = self.cursor.fetchone()[0]
        return new_id

    def event(self, kind: str, subject_id: Any, data: dict[str, Any], product: str | None) -> None:
        self.events.append((self.now, kind, subject_id, codec.compact_json(data), product))

    # --- definitions ---------------------------------------------------------------

    def define(self, change: DefineIndex) -> dict[str, Any]:
        """Upsert; an event only for what actually changed, so that a daemon
        restarting with the same configuration adds nothing to the log."""
        changed: dict[str, list[dict[str, Any]]] = {"products": [], "formats": [], "backends": []}
        for product in change.products:
            row = self.one(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE slug = ?", (product.slug,))
            if row is not None and product_from_row(row) == product:
                continue
            values = (
                product.slug, product.name, product.contact, codec.compact_json(list(product.parents)),
                product.file_count, int(product.operational), product.lifetime_hours,
                codec.compact_json(dict(product.metadata)), self.now,
            )
            self.cursor.execute(self.sql(
                "INSERT INTO products (slug, name, contact, parents, file_count, operational,"
                " lifetime_hours, metadata, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (slug) DO UPDATE SET name = excluded.name, contact = excluded.contact,"
                " parents = excluded.parents, file_count = excluded.file_count,"
                " operational = excluded.operational, lifetime_hours = excluded.lifetime_hours,"
                " metadata = excluded.metadata, updated_at = excluded.updated_at"
            ), values)
            data = product_to_dict(product)
            self.event("product", 0, data, product.slug)
            changed["products"].append(data)
        for fmt in change.formats:
            row = self.one("SELECT name FROM formats WHERE slug = ?", (fmt.slug,))
            if row is not None and row[0] == fmt.name:
                continue
            self.cursor.execute(self.sql(
                "INSERT INTO formats (slug, name, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (slug) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at"
            ), (fmt.slug, fmt.name, self.now))
            data = format_to_dict(fmt)
            self.event("format", 0, data, None)
            changed["formats"].append(data)
        for backend in change.backends:
            row = self.one("SELECT name, url FROM backends WHERE slug = ?", (backend.slug,))
            if row is not None and tuple(row) == (backend.name, backend.url):
                continue
            self.cursor.execute(self.sql(
                "INSERT INTO backends (slug, name, url, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (slug) DO UPDATE SET name = excluded.name, url = excluded.url,"
                " updated_at = excluded.updated_at"
            ), (backend.slug, backend.name, backend.url, self.now))
            data = backend_to_dict(backend)
            self.event("backend", 0, data, None)
            changed["backends"].append(data)
        return changed

    # --- files -----------------------------------------------------------------------

    def register(self, change: RegisterFiles) -> tuple[dict[str, Any], tuple[CompletedInstance, ...]]:
        products: dict[str, Product] = {}
        new_formats: dict[str, DataFormat] = {}
        for position, new in enumerate(change.files):
            self._check(change, position, new, products, new_formats)
        if new_formats:
            self.define(DefineIndex(formats=tuple(new_formats.values())))
        touched: dict[int, tuple[str, datetime, int]] = {}
        registered = []
        #: the new versions this change made, by (product, reference time)
        made: dict[tuple[str, str], tuple[int, int]] = {}
        for new in change.files:
            instance_id, version = self._instance(new, change, made)
            touched[instance_id] = (new.product, new.reference_time, version)
            data_id = self._data(new, instance_id)
            superseded = [r[0] for r in self.rows(
                "SELECT id FROM data_instances WHERE url = ? AND backend = ? AND deleted = 0",
                (new.url, new.backend),
            )]
            expires = new.expires
            lifetime = products[new.product].lifetime_hours
            if expires is None and lifetime is not None:
                expires = datetime.fromtimestamp(self.now, UTC) + timedelta(hours=lifetime)
            file_id = self.insert(
                "INSERT INTO data_instances (data_id, instance_id, url, format, backend, size,"
                " hash_type, hash, expires, deleted, partial, info_hash, peer, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (
                    data_id, instance_id, new.url, new.format, new.backend, new.size,
                    new.hash_type, new.hash.lower(), codec.format_time(expires),
                    int(new.partial), new.info_hash.lower() if new.info_hash else None,
                    new.peer, self.now,
                ),
            )
            # the file at this URL is now the new one: the old records say so,
            # in this transaction, and their events come before the new
            # file's (a consumer drops the old copy, then takes the new)
            for old_id in superseded:
                self.cursor.execute(self.sql(
                    "UPDATE data_instances SET deleted = 1, deleted_at = ?, superseded_by = ? WHERE id = ?"
                ), (self.now, file_id, old_id))
                old = self._file(old_id)
                old["reason"] = f"superseded by file {file_id}"
                self.event("file", old_id, old, old["product"])
            item = self._file(file_id)
            self.event("file", file_id, item, new.product)
            registered.append(item)
        completed = []
        for instance_id, (product, reference_time, version) in sorted(touched.items()):
            if self._completes(instance_id, products[product].file_count):
                others = self.rows(
                    "SELECT DISTINCT product FROM instances WHERE reference_time = ?"
                    " AND completed_at IS NOT NULL",
                    (codec.format_time(reference_time),),
                )
                completed.append(CompletedInstance(
                    instance_id, product, reference_time, version,
                    frozenset(r[0] for r in others),
                ))
        return {"files": registered}, tuple(completed)

    def _check(
        self, change: RegisterFiles, position: int, new: NewFile,
        products: dict[str, Product], new_formats: dict[str, DataFormat],
    ) -> None:
        where = f"file {position} ({new.url})" if len(change.files) > 1 else new.url
        if new.product not in products:
            row = self.one(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE slug = ?", (new.product,))
            if row is None:
                raise Refused(NOT_FOUND, f"{where}: unknown product {new.product!r}")
            products[new.product] = product_from_row(row)
        if new.backend not in self.known_backends:
            row = self.one("SELECT url FROM backends WHERE slug = ?", (new.backend,))
            if row is None:
                raise Refused(NOT_FOUND, f"{where}: unknown service backend {new.backend!r}")
            self.known_backends[new.backend] = row[0]
        if new.format not in self.known_formats and new.format not in new_formats:
            if self.one("SELECT 1 FROM formats WHERE slug = ?", (new.format,)) is not None:
                self.known_formats.add(new.format)
            elif change.define_formats:
                new_formats[new.format] = DataFormat(new.format, new.format)
            else:
                raise Refused(NOT_FOUND, f"{where}: unknown format {new.format!r}")
        if new.data_id is not None:
            row = self.one(
                "SELECT i.product, i.reference_time FROM data d JOIN instances i ON i.id = d.instance_id"
                " WHERE d.id = ?", (new.data_id,),
            )
            if row is None:
                raise Refused(NOT_FOUND, f"{where}: unknown data_id {new.data_id}")
            if (row[0], row[1]) != (new.product, codec.format_time(new.reference_time)):
                raise Refused(CONFLICT, f"{where}: data {new.data_id} belongs to {row[0]} {row[1]}")
        if new.version is not None and new.version < 1:
            raise Refused(CONFLICT, f"{where}: version must be 1 or more")

    def _instance(
        self, new: NewFile, change: RegisterFiles, made: dict[tuple[str, str], tuple[int, int]],
    ) -> tuple[int, int]:
        """The instance the file goes to, made when needed (docs/index.md,
        "Versions"): ``data_id``'s, the given ``version``, the one the
        change's run made, or by hand the newest (a new one when asked)."""
        reference_time = codec.format_time(new.reference_time)
        if new.data_id is not None:
            # _check made sure the Data record exists
            known = self.existing(
                "SELECT i.id, i.version FROM data d JOIN instances i ON i.id = d.instance_id WHERE d.id = ?",
                (new.data_id,),
            )
            return known[0], known[1]
        if new.version is not None:
            row = self.one(
                "SELECT id FROM instances WHERE product = ? AND reference_time = ? AND version = ?",
                (new.product, reference_time, new.version),
            )
            if row is not None:
                return row[0], new.version
            return self._new_instance(new.product, reference_time, new.version, None), new.version
        key = (new.product, reference_time)
        if key in made:
            return made[key]
        if change.run_id is not None:
            row = self.one(
                "SELECT id, version FROM instances WHERE product = ? AND reference_time = ? AND run_id = ?"
                " ORDER BY version DESC LIMIT 1",
                (new.product, reference_time, change.run_id),
            )
            if row is not None:
                return row[0], row[1]
        latest = self.one(
            "SELECT id, version FROM instances WHERE product = ? AND reference_time = ?"
            " ORDER BY version DESC LIMIT 1",
            (new.product, reference_time),
        )
        if latest is not None and change.run_id is None and not change.new_version:
            return latest[0], latest[1]
        # a new run of the producing pipeline, or a new version asked for
        version = 1 if latest is None else latest[1] + 1
        made[key] = (self._new_instance(new.product, reference_time, version, change.run_id), version)
        return made[key]

    def _new_instance(self, product: str, reference_time: str, version: int, run_id: int | None) -> int:
        instance_id = self.insert(
            "INSERT INTO instances (product, reference_time, version, created_at, run_id) VALUES (?, ?, ?, ?, ?)",
            (product, reference_time, version, self.now, run_id),
        )
        row = self.existing(
            "SELECT id, product, reference_time, version, created_at, completed_at FROM instances WHERE id = ?",
            (instance_id,),
        )
        self.event("instance", instance_id, instance_from_row(row), product)
        return instance_id

    def _data(self, new: NewFile, instance_id: int) -> int:
        if new.data_id is not None:
            return new.data_id
        name = self._name(new)
        row = self.one("SELECT id FROM data WHERE instance_id = ? AND name = ?", (instance_id, name))
        if row is not None:
            data_id: int = row[0]
            return data_id
        return self.insert(
            "INSERT INTO data (instance_id, name, time_begin, time_end, variables, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                instance_id, name, codec.format_time(new.time_begin), codec.format_time(new.time_end),
                codec.compact_json(list(new.variables)), self.now,
            ),
        )

    def _name(self, new: NewFile) -> str:
        return _name(new.url, self.known_backends[new.backend])

    def _completes(self, instance_id: int, file_count: int) -> bool:
        """Mark the instance complete if this write made it so; True only the
        first time (the trigger fires once per instance version)."""
        row = self.one(
            "SELECT 1 FROM instances i WHERE i.id = ? AND i.completed_at IS NULL AND EXISTS"
            " (SELECT 1 FROM data_instances c WHERE c.instance_id = i.id AND c.deleted = 0"
            " AND c.partial = 0 GROUP BY c.backend, c.format HAVING COUNT(*) >= ?)",
            (instance_id, file_count),
        )
        if row is None:
            return False
        self.cursor.execute(
            self.sql("UPDATE instances SET completed_at = ? WHERE id = ?"), (self.now, instance_id)
        )
        row = self.existing(
            "SELECT id, product, reference_time, version, created_at, completed_at FROM instances WHERE id = ?",
            (instance_id,),
        )
        self.event("instance", instance_id, instance_from_row(row), row[1])
        return True

    def _file(self, file_id: int) -> dict[str, Any]:
        return file_from_row(self.existing(f"SELECT {FILE_COLUMNS}{FILE_FROM} WHERE di.id = ?", (file_id,)))

    def delete(self, change: DeleteFiles) -> tuple[dict[str, Any], tuple[str, ...]]:
        if change.expired_at is not None:
            # the soonest expired first, at most ``limit`` (expiry's chunks):
            # the partial index on expires gives them in its order
            sql = "SELECT id FROM data_instances WHERE deleted = 0 AND expires <= ? ORDER BY expires, id"
            params: list[Any] = [codec.format_time(change.expired_at)]
            if change.limit is not None:
                sql += " LIMIT ?"
                params.append(change.limit)
            ids = sorted(r[0] for r in self.rows(sql, params))
        else:
            ids = list(dict.fromkeys(change.ids))
            known = {r[0] for r in self.rows(
                f"SELECT id FROM data_instances WHERE id IN ({', '.join('?' for _ in ids)})", ids
            )} if ids else set()
            missing = [i for i in ids if i not in known]
            if missing:
                raise Refused(NOT_FOUND, f"unknown data instance {missing[0]}")
        deleted: list[int] = []
        paths: list[str] = []
        # a few statements per part, not per file: a chunk of expiry is
        # thousands of files
        for start in range(0, len(ids), _PART):
            part = ids[start:start + _PART]
            marks = ", ".join("?" for _ in part)
            present = {r[0] for r in self.rows(
                f"SELECT id FROM data_instances WHERE id IN ({marks}) AND deleted = 0", part)}
            live = [i for i in part if i in present]  # deleted already: no second event
            if not live:
                continue
            marks = ", ".join("?" for _ in live)
            self.cursor.execute(self.sql(
                f"UPDATE data_instances SET deleted = 1, deleted_at = ? WHERE id IN ({marks})"
            ), (self.now, *live))
            items = {row[0]: file_from_row(row) for row in self.rows(
                f"SELECT {FILE_COLUMNS}{FILE_FROM} WHERE di.id IN ({marks})", live)}
            for file_id in live:
                item = items[file_id]
                item["reason"] = change.reason
                self.event("file", file_id, item, item["product"])
                deleted.append(file_id)
                if self._backend_url(item["backend"]).startswith("file://") and item["url"].startswith("file://"):
                    paths.append("/" + item["url"][len("file://"):].lstrip("/"))
        return {"deleted": deleted}, tuple(paths)

    def _backend_url(self, slug: str) -> str:
        if slug not in self.known_backends:
            self.known_backends[slug] = self.existing("SELECT url FROM backends WHERE slug = ?", (slug,))[0]
        return self.known_backends[slug]

    def set_torrent(self, change: SetTorrent) -> dict[str, Any]:
        self.cursor.execute(self.sql(
            "UPDATE data_instances SET info_hash = ?, torrent = ?, peer = COALESCE(?, peer) WHERE id = ?"
        ), (change.info_hash.lower(), change.torrent, change.peer, change.data_instance_id))
        if self.cursor.rowcount != 1:
            raise Refused(NOT_FOUND, f"unknown data instance {change.data_instance_id}")
        item = self._file(change.data_instance_id)
        self.event("file", item["id"], item, item["product"])
        return item


def apply(
    cursor: Any, sql: Callable[[str], str], change: IndexChange, now: float, events: list[EventRow]
) -> IndexWritten:
    """Apply ``change`` on ``cursor`` (inside the caller's transaction) and
    return its committed copy, or a refusal that wrote nothing."""
    mark = len(events)
    writer = _Writer(cursor, sql, now, events)
    try:
        if isinstance(change, RegisterFiles):
            result, completed = writer.register(change)
            return IndexWritten(result, completed=completed)
        if isinstance(change, DefineIndex):
            return IndexWritten(writer.define(change))
        if isinstance(change, DeleteFiles):
            result, paths = writer.delete(change)
            return IndexWritten(result, deleted_paths=paths)
        if isinstance(change, SetTorrent):
            return IndexWritten(writer.set_torrent(change))
    except Refused as refused:
        # every check runs before the first write of a change, so nothing of
        # it was written; drop any events it queued all the same
        del events[mark:]
        return IndexWritten(error=str(refused), code=refused.code)
    raise TypeError(f"not an index change: {change!r}")


def _name(url: str, base: str) -> str:
    """A file's name in its instance: its path under its backend's URL
    (``arome/2026/11/28/f.nc``), or its last part when the URL is not under it."""
    prefix = base.rstrip("/") + "/"
    if url.startswith(prefix) and len(url) > len(prefix):
        return url[len(prefix):]
    return os.path.basename(url.rstrip("/")) or url
