"""The entry points: ``scan`` (hash, format, structure, metadata) and
``sniff_format`` (the format alone)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from typing import BinaryIO

import attrs

from ._grib import eccodes_module, eccodes_version, grib_metadata
from ._netcdf import netcdf4_module, netcdf4_version, netcdf_metadata
from ._scanned import ScanError, ScannedFile
from ._sniff import CLASSIC_DETAILS, sniff
from ._structure import check_classic, check_hdf5, walk_grib

#: bytes hashed between two ``progress`` calls
CHUNK = 1 << 20


def metadata_libraries() -> dict[str, str | None]:
    """The optional readers and their versions, ``None`` when not importable
    (for ``muppet register`` to warn that metadata will be missing)."""
    return {"netCDF4": netcdf4_version(), "eccodes": eccodes_version()}


def sniff_format(path: str) -> tuple[str, str]:
    """``(format, format_detail)`` of the file at ``path`` from its first bytes,
    else from its extension (detail ``""``). Raises ScanError when the path is
    not a readable regular file."""
    path = os.path.abspath(path)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        fmt, detail, _ = sniff(f, size, path)
    return fmt, detail


def scan(
    path: str,
    *,
    progress: Callable[[int], None] | None = None,
    libraries: bool = True,
) -> ScannedFile:
    """Hash the file at ``path`` in 1 MiB chunks and read what it says about
    itself.

    ``progress`` is called after each chunk with the bytes hashed so far; its
    last call is the file's size (``progress(0)`` once for an empty file).
    ``libraries=False`` reads no metadata through netCDF4 or eccodes, as if
    they were not installed.

    NetCDF: the reference time is the ``forecast_reference_time`` variable (by
    name or ``standard_name``), else the global attribute
    ``forecast_reference_time`` or ``reference_time`` (ISO 8601); the time
    period is the min and max of the ``time`` coordinate; variables are the
    root group's data variables: not coordinate variables, nor variables named
    by another's ``bounds``, ``climatology``, ``coordinates`` or
    ``grid_mapping``, nor the reference time.
    GRIB: the reference time is ``dataDate``/``dataTime``, the period the min
    and max of ``validityDate``/``validityTime`` over all messages, variables
    the sorted unique ``shortName`` values.
    A file that holds several reference times gets the earliest.

    Raises ScanError (naming the file) when the path is missing, not a
    regular file or unreadable, when a NetCDF or GRIB file is truncated or
    corrupt, and when its time metadata cannot be understood.
    """
    path = os.path.abspath(path)
    with _open_regular(path) as f:
        size, sha256 = _hash(f, path, progress)
        fmt, detail, hdf5_offset = sniff(f, size, path)
        grib_refs = []
        if detail in CLASSIC_DETAILS.values():
            check_classic(f, size, path)
        elif detail == "netcdf4-hdf5":
            check_hdf5(f, size, hdf5_offset, path)
        elif detail in ("grib1", "grib2"):
            grib_refs = walk_grib(f, size, path)
    scanned = ScannedFile(path=path, size=size, sha256=sha256, format=fmt, format_detail=detail)

    if fmt == "netcdf" and detail:
        netcdf4 = netcdf4_module() if libraries else None
        if netcdf4 is not None:
            return netcdf_metadata(netcdf4, scanned)
    elif fmt == "grib" and detail:
        eccodes = eccodes_module() if libraries else None
        if eccodes is not None:
            return grib_metadata(eccodes, scanned)
        return attrs.evolve(scanned, reference_time=min(grib_refs, default=None))
    return scanned


def _open_regular(path: str) -> BinaryIO:
    # O_NONBLOCK so that a FIFO given by mistake is refused instead of
    # blocking the worker thread until someone writes to it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise ScanError(path, "is a directory, not a file") from None
    except FileNotFoundError:
        raise ScanError(path, "no such file") from None
    except OSError as e:
        raise ScanError(path, f"cannot open: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ScanError(path, "is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise ScanError(path, "is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _hash(f: BinaryIO, path: str, progress: Callable[[int], None] | None) -> tuple[int, str]:
    digest = hashlib.sha256()
    done = 0
    try:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)
    except OSError as e:
        raise ScanError(path, f"cannot read: {e.strerror or e}") from None
    if done == 0 and progress is not None:
        progress(0)
    return done, digest.hexdigest()
