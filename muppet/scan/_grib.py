"""GRIB metadata (reference time, validity period, variables) through the
optional eccodes library, imported only when a file needs it.

eccodes publishes no type information: its objects are ``Any``, and the
functions below are the typed edge.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import attrs

from ._scanned import ScanError, ScannedFile


@functools.cache
def eccodes_module() -> Any:
    """The eccodes module, or None when it or its C library is missing."""
    try:
        import eccodes

        # The Python package imports without its C library and fails on
        # first use; ask for the version so a broken install reads as missing.
        eccodes.codes_get_api_version()
    except (ImportError, RuntimeError, OSError):
        return None
    return eccodes


def eccodes_version() -> str | None:
    eccodes = eccodes_module()
    return None if eccodes is None else str(eccodes.codes_get_api_version())


def grib_metadata(eccodes: Any, scanned: ScannedFile) -> ScannedFile:
    """``scanned`` with what the messages of the file at ``scanned.path`` say:
    the earliest ``dataDate``/``dataTime``, the min and max of
    ``validityDate``/``validityTime``, the sorted unique ``shortName`` values.
    Raises ScanError naming the file when eccodes cannot read it."""
    path = scanned.path
    refs: list[datetime] = []
    valid: list[datetime] = []
    names: set[str] = set()
    try:
        with open(path, "rb") as f:
            while (handle := eccodes.codes_grib_new_from_file(f)) is not None:
                try:
                    refs.append(
                        _yyyymmdd_hhmm(
                            eccodes.codes_get(handle, "dataDate", ktype=int),
                            eccodes.codes_get(handle, "dataTime", ktype=int),
                        )
                    )
                    valid.append(
                        _yyyymmdd_hhmm(
                            eccodes.codes_get(handle, "validityDate", ktype=int),
                            eccodes.codes_get(handle, "validityTime", ktype=int),
                        )
                    )
                    names.add(eccodes.codes_get(handle, "shortName", ktype=str))
                finally:
                    eccodes.codes_release(handle)
    except OSError as e:
        raise ScanError(path, f"cannot read: {e.strerror or e}") from None
    except Exception as e:
        raise ScanError(path, f"eccodes cannot read it: {e}") from None
    return attrs.evolve(
        scanned,
        reference_time=min(refs, default=None),
        time_begin=min(valid, default=None),
        time_end=max(valid, default=None),
        variables=tuple(sorted(names)),
    )


def _yyyymmdd_hhmm(date: int, time: int) -> datetime:
    return datetime(
        date // 10000, date // 100 % 100, date % 100, time // 100, time % 100, tzinfo=UTC
    )
