"""JSON objects from API requests -> index model objects, checked field by
field. Sans-I/O: what exists in the database is checked by the writer.

Every problem raises ``ParamError`` whose message names the field the way the
client wrote it (``files[2].size``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .. import codec
from ..messages import NewFile
from ..model import DataFormat, Product, ServiceBackend

_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_HEX = re.compile(r"[0-9a-fA-F]+\Z")
#: hash types and their hex digest lengths
HASH_TYPES = {"sha256": 64, "md5": 32, "sha1": 40, "sha512": 128}


class ParamError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Object:
    """Reads the fields of one JSON object, naming them under ``where``."""

    def __init__(self, data: Any, where: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ParamError(where, f"must be an object, got {_show(data)}")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ParamError(f"{where}.{unknown[0]}", f"is not a known field (known: {', '.join(allowed)})")
        self.data = data
        self.where = where

    def field(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, check: Callable[[str, Any], Any], default: Any = None, *, required: bool = False) -> Any:
        if name not in self.data or self.data[name] is None:
            if required:
                raise ParamError(self.field(name), "is required")
            return default
        return check(self.field(name), self.data[name])


def string(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParamError(field, f"must be a non-empty string, got {_show(value)}")
    return value


def slug(field: str, value: Any) -> str:
    text = string(field, value)
    if not _SLUG.match(text) or len(text) > 200:
        raise ParamError(field, f"must be a slug (letters, digits, '_', '.', '-'), got {_show(text)}")
    return text


def integer(minimum: int) -> Callable[[str, Any], int]:
    def check(field: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value > 2**62:
            raise ParamError(field, f"must be an integer >= {minimum}, got {_show(value)}")
        return value

    return check


def number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ParamError(field, f"must be a number > 0, got {_show(value)}")
    return float(value)


def boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParamError(field, f"must be true or false, got {_show(value)}")
    return value


def time(field: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise ParamError(field, f"must be an ISO 8601 time string, got {_show(value)}")
    try:
        return codec.parse_time(value)
    except ValueError as exc:
        raise ParamError(field, str(exc)) from None


def strings(field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamError(field, f"must be an array of strings, got {_show(value)}")
    return tuple(value)


_FILE_FIELDS = (
    "product", "reference_time", "backend", "format", "url", "size", "hash", "hash_type",
    "time_begin", "time_end", "variables", "expires", "partial", "version", "data_id",
    "info_hash", "peer",
)


def info_hash(field: str, value: Any) -> str:
    text = string(field, value)
    if len(text) != 40 or not _HEX.match(text):
        raise ParamError(field, "must be 40 hex digits (a v1 info-hash)")
    return text.lower()


def peer(field: str, value: Any) -> str:
    text = string(field, value)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParamError(field, f"must be HOST:PORT, got {_show(text)}")
    return text


def new_file(data: Any, where: str) -> NewFile:
    o = _Object(data, where, _FILE_FIELDS)
    hash_type = o.get("hash_type", string, "sha256")
    if hash_type not in HASH_TYPES:
        raise ParamError(o.field("hash_type"), f"must be one of {', '.join(HASH_TYPES)}, got {_show(hash_type)}")
    digest = o.get("hash", string, required=True)
    if not _HEX.match(digest) or len(digest) != HASH_TYPES[hash_type]:
        raise ParamError(o.field("hash"), f"must be {HASH_TYPES[hash_type]} hex digits ({hash_type})")
    url = o.get("url", string, required=True)
    if "://" not in url:
        raise ParamError(o.field("url"), f"must be a URL (file:///path, https://...), got {_show(url)}")
    begin = o.get("time_begin", time)
    end = o.get("time_end", time)
    if begin is not None and end is not None and end < begin:
        raise ParamError(o.field("time_end"), "is before time_begin")
    return NewFile(
        product=o.get("product", slug, required=True),
        reference_time=o.get("reference_time", time, required=True),
        backend=o.get("backend", slug, required=True),
        format=o.get("format", slug, required=True),
        url=url,
        size=o.get("size", integer(0), required=True),
        hash=digest.lower(),
        hash_type=hash_type,
        time_begin=begin,
        time_end=end,
        variables=o.get("variables", strings, ()),
        expires=o.get("expires", time),
        partial=o.get("partial", boolean, False),
        version=o.get("version", integer(1)),
        data_id=o.get("data_id", integer(1)),
        info_hash=o.get("info_hash", info_hash),
        peer=o.get("peer", peer),
    )


def new_files(value: list[Any], limit: int = 10_000) -> tuple[NewFile, ...]:
    if not value:
        raise ParamError("files", "must hold at least one file")
    if len(value) > limit:
        raise ParamError("files", f"holds {len(value)} files; at most {limit} per call")
    return tuple(new_file(item, f"files[{i}]") for i, item in enumerate(value))


_METADATA_KEYS = (
    "projection", "grid_resolution", "grid_resolution_units", "bounding_box",
    "time_steps", "time_step_hours",
)


def product(data: Any) -> Product:
    o = _Object(data, "product", (
        "slug", "name", "contact", "parents", "file_count", "operational", "lifetime_hours", "metadata",
    ))
    metadata = o.get("metadata", lambda f, v: v, {})
    if not isinstance(metadata, dict):
        raise ParamError(o.field("metadata"), "must be an object")
    for key in metadata:
        if key not in _METADATA_KEYS:
            raise ParamError(f"product.metadata.{key}", f"is not a known field (known: {', '.join(_METADATA_KEYS)})")
    return Product(
        slug=o.get("slug", slug, required=True),
        name=o.get("name", string, required=True),
        contact=o.get("contact", string, ""),
        parents=o.get("parents", strings, ()),
        file_count=o.get("file_count", integer(1), 1),
        operational=o.get("operational", boolean, False),
        lifetime_hours=o.get("lifetime_hours", number),
        metadata=metadata,
    )


def data_format(data: Any) -> DataFormat:
    o = _Object(data, "format", ("slug", "name"))
    return DataFormat(o.get("slug", slug, required=True), o.get("name", string, required=True))


def backend(data: Any) -> ServiceBackend:
    o = _Object(data, "backend", ("slug", "name", "url"))
    url = o.get("url", string, required=True)
    if "://" not in url:
        raise ParamError("backend.url", f"must be a URL such as file:///lustre/a, got {_show(url)}")
    return ServiceBackend(o.get("slug", slug, required=True), o.get("name", string, required=True), url.rstrip("/"))


def optional_time(name: str, value: Any) -> datetime | None:
    return None if value is None else time(name, value)


def slugs(name: str, value: Any, allowed: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = strings(name, value)
    if allowed is not None:
        for item in items:
            if item not in allowed:
                raise ParamError(name, f"holds {_show(item)}; allowed: {', '.join(allowed)}")
    return items


def file_ids(value: Any) -> tuple[int, ...]:
    if not value:
        raise ParamError("ids", "must hold at least one id")
    check = integer(1)
    return tuple(check(f"ids[{i}]", v) for i, v in enumerate(value))


