"""Scanning a file for ``muppet register``: size, SHA-256, format and, for
NetCDF and GRIB, the reference time, time period and variables.

Everything here blocks (it reads the whole file): callers on the Trio loop run
``scan`` in a worker thread (``trio.to_thread.run_sync``).

The format comes from the content, not the name: NetCDF classic (``CDF\\x01``),
64-bit offset (``CDF\\x02``), CDF5 (``CDF\\x05``), NetCDF-4 (the HDF5 signature at
0 or at a 512 * 2**n user-block offset) and GRIB editions 1 and 2. Anything
else, and a file whose name says ``.nc`` but whose content is not NetCDF, is
classified by its extension and its metadata is not read.

A file that starts like NetCDF or GRIB but is cut short or corrupt raises
``ScanError``. This structural check is done here, without any library,
because netCDF-C opens a truncated classic file without complaint (measured
with netCDF4 1.7.5 / netCDF-C 4.10.1: a file cut to its first 40 bytes opens
and reads as zeros).

Metadata is read with two optional libraries, each imported only when a file
needs it: netCDF4 (``pip install netCDF4``) and eccodes (``pip install
eccodes``, whose wheel depends on ``eccodeslib``, which brings the C library).
Without them ``scan`` still returns format, size and hash, with ``None``/``()``
metadata; for GRIB the reference time is then read from section 1 of each
message by hand.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO

import attrs

from .codec import format_time, parse_time

CHUNK = 1 << 20

_NETCDF_EXTENSIONS = {"nc", "nc4", "netcdf"}
_GRIB_EXTENSIONS = {"grb", "grib", "grb2", "grib2"}
# An HDF5 file under one of these names is plain HDF5, not a NetCDF-4 product.
_HDF5_EXTENSIONS = {"h5", "hdf5", "he5", "hdf"}

_CLASSIC_DETAILS = {1: "netcdf-classic", 2: "netcdf-64bit-offset", 5: "netcdf-cdf5"}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 looks for its superblock at 0, 512, 1024, 2048, ... (HDF5 file format
# specification, "Format Signature and Version Information").
_HDF5_FIRST_USERBLOCK = 512


class ScanError(Exception):
    """A file that cannot be scanned; ``str()`` is ``"PATH: what is wrong"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@attrs.frozen
class ScannedFile:
    """What ``scan`` found. Times are aware UTC datetimes or ``None``."""

    path: str
    size: int
    sha256: str
    format: str
    format_detail: str
    reference_time: datetime | None = None
    time_begin: datetime | None = None
    time_end: datetime | None = None
    variables: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, times as ``codec.format_time`` writes them."""
        return {
            "path": self.path,
            "size": self.size,
            "hash_type": "sha256",
            "hash": self.sha256,
            "format": self.format,
            "format_detail": self.format_detail,
            "reference_time": format_time(self.reference_time),
            "time_begin": format_time(self.time_begin),
            "time_end": format_time(self.time_end),
            "variables": list(self.variables),
        }


@functools.cache
def _netcdf4() -> Any:
    try:
        import netCDF4
    except ImportError:
        return None
    return netCDF4


@functools.cache
def _eccodes() -> Any:
    try:
        import eccodes

        # The Python package imports without its C library and fails on
        # first use; ask for the version so a broken install reads as missing.
        eccodes.codes_get_api_version()
    except (ImportError, RuntimeError, OSError):
        return None
    return eccodes


def metadata_libraries() -> dict[str, str | None]:
    """The optional readers and their versions, ``None`` when not importable
    (for ``muppet register`` to warn that metadata will be missing)."""
    netcdf4 = _netcdf4()
    eccodes = _eccodes()
    return {
        "netCDF4": netcdf4.__version__ if netcdf4 is not None else None,
        "eccodes": eccodes.codes_get_api_version() if eccodes is not None else None,
    }


def sniff_format(path: str) -> tuple[str, str]:
    """``(format, format_detail)`` of the file at ``path`` from its first bytes,
    else from its extension (detail ``""``). Raises ScanError when the path is
    not a readable regular file."""
    path = os.path.abspath(path)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        fmt, detail, _ = _sniff(f, size, path)
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
        fmt, detail, hdf5_offset = _sniff(f, size, path)
        grib_refs: list[datetime] = []
        if detail in _CLASSIC_DETAILS.values():
            _check_classic(f, size, path)
        elif detail == "netcdf4-hdf5":
            _check_hdf5(f, size, hdf5_offset, path)
        elif detail in ("grib1", "grib2"):
            grib_refs = _walk_grib(f, size, path)
    scanned = ScannedFile(path=path, size=size, sha256=sha256, format=fmt, format_detail=detail)

    if fmt == "netcdf" and detail:
        netcdf4 = _netcdf4() if libraries else None
        if netcdf4 is not None:
            return _netcdf_metadata(netcdf4, scanned)
    elif fmt == "grib" and detail:
        eccodes = _eccodes() if libraries else None
        if eccodes is not None:
            return _grib_metadata(eccodes, scanned)
        return attrs.evolve(scanned, reference_time=min(grib_refs, default=None))
    return scanned


# --- opening, hashing, sniffing ---------------------------------------------


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


def _read_at(f: BinaryIO, offset: int, count: int) -> bytes:
    f.seek(offset)
    return f.read(count)


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower()


def _by_extension(path: str) -> str:
    ext = _extension(path)
    if ext in _NETCDF_EXTENSIONS:
        return "netcdf"
    if ext in _GRIB_EXTENSIONS:
        return "grib"
    return ext


def _sniff(f: BinaryIO, size: int, path: str) -> tuple[str, str, int]:
    """(format, detail, offset of the HDF5 superblock or 0)."""
    head = _read_at(f, 0, 8)
    if head[:3] == b"CDF" and len(head) >= 4 and head[3] in _CLASSIC_DETAILS:
        return "netcdf", _CLASSIC_DETAILS[head[3]], 0
    if head[:4] == b"GRIB" and len(head) == 8 and head[7] in (1, 2):
        return "grib", f"grib{head[7]}", 0
    offset = 0
    while offset + len(_HDF5_SIGNATURE) <= size:
        if _read_at(f, offset, len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
            if _extension(path) in _HDF5_EXTENSIONS:
                return _by_extension(path), "hdf5", offset
            return "netcdf", "netcdf4-hdf5", offset
        offset = _HDF5_FIRST_USERBLOCK if offset == 0 else offset * 2
    return _by_extension(path), "", 0


# --- structural checks ------------------------------------------------------


class _Truncated(Exception):
    pass


class _Reader:
    """Big-endian reads from a file, raising _Truncated at the end."""

    def __init__(self, f: BinaryIO, offset: int = 0) -> None:
        self.f = f
        f.seek(offset)

    def bytes(self, count: int) -> bytes:
        data = self.f.read(count)
        if len(data) < count:
            raise _Truncated
        return data

    def uint(self, width: int) -> int:
        return int.from_bytes(self.bytes(width), "big")


# NetCDF classic format specification (Unidata, "The NetCDF Classic Format"),
# extended for CDF5 by PnetCDF: the header's tags, type codes and sizes.
_NC_DIMENSION, _NC_VARIABLE, _NC_ATTRIBUTE = 0x0A, 0x0B, 0x0C
_NC_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
# Names, counts and a header cannot plausibly be larger than this; a bigger
# value is garbage, not a reason to try reading gigabytes.
_NC_MAX_NAME = 1 << 16


def _check_classic(f: BinaryIO, size: int, path: str) -> None:
    """Parse the classic header and check that the file is as long as its
    variables say: netCDF-C itself only refuses a file too short to hold
    its first bytes."""
    try:
        _classic_expected_size(f, size, path)
    except _Truncated:
        raise ScanError(path, "truncated NetCDF file: the header is cut short") from None


def _classic_expected_size(f: BinaryIO, size: int, path: str) -> None:
    r = _Reader(f)
    version = r.bytes(4)[3]
    count_width = 8 if version == 5 else 4  # NON_NEG and nelems
    offset_width = 4 if version == 1 else 8  # begin

    def bad(what: str) -> ScanError:
        return ScanError(path, f"corrupt NetCDF header: {what}")

    def count(limit: int, what: str) -> int:
        n = r.uint(count_width)
        if n > limit:
            raise bad(f"{what} {n} is impossible in a {size}-byte file")
        return n

    def name() -> str:
        data = r.bytes(count(_NC_MAX_NAME, "name length"))
        r.bytes(-len(data) % 4)
        return data.decode("utf-8", "replace")

    def list_header(tag: int, what: str) -> int:
        found = r.uint(4)
        n = r.uint(count_width)
        if found == 0 and n == 0:
            return 0
        if found != tag:
            raise bad(f"expected the {what} list, found tag {found:#x}")
        return n

    def skip_attributes() -> None:
        for _ in range(list_header(_NC_ATTRIBUTE, "attribute")):
            name()
            nc_type = r.uint(4)
            if nc_type not in _NC_TYPE_SIZES:
                raise bad(f"unknown attribute type {nc_type}")
            length = count(size, "attribute length") * _NC_TYPE_SIZES[nc_type]
            if length > size:
                raise bad(f"attribute length {length} is impossible in a {size}-byte file")
            r.bytes(length + (-length % 4))

    numrecs = r.uint(count_width)
    streaming = numrecs == (1 << (8 * count_width)) - 1
    dims = []
    for _ in range(list_header(_NC_DIMENSION, "dimension")):
        name()
        dims.append(r.uint(count_width))
    skip_attributes()
    fixed_end = 0
    records: list[tuple[int, int]] = []  # (begin, bytes per record)
    for _ in range(list_header(_NC_VARIABLE, "variable")):
        var = name()
        ndims = count(1024, f"dimension count of {var!r}")
        dimids = [r.uint(count_width) for _ in range(ndims)]
        if any(d >= len(dims) for d in dimids):
            raise bad(f"variable {var!r} names a dimension that does not exist")
        skip_attributes()
        nc_type = r.uint(4)
        if nc_type not in _NC_TYPE_SIZES:
            raise bad(f"variable {var!r} has unknown type {nc_type}")
        r.uint(count_width)  # vsize: computed below, it saturates for big variables
        begin = r.uint(offset_width)
        shape = [dims[d] for d in dimids]
        is_record = bool(shape) and shape[0] == 0
        length = _NC_TYPE_SIZES[nc_type]
        for extent in shape[1:] if is_record else shape:
            length *= extent
        if is_record:
            records.append((begin, length))
        else:
            fixed_end = max(fixed_end, begin + length)
    expected = fixed_end
    if records and numrecs and not streaming:
        # A record is padded to 4 bytes per variable, except when there is
        # only one record variable (classic format specification, "Note on
        # padding").
        if len(records) == 1:
            record_size = records[0][1]
        else:
            record_size = sum(length + (-length % 4) for _, length in records)
        expected = max(
            expected,
            max(begin + (numrecs - 1) * record_size + length for begin, length in records),
        )
    if size < expected:
        raise ScanError(
            path, f"truncated NetCDF file: {size} bytes, its variables need {expected}"
        )


def _check_hdf5(f: BinaryIO, size: int, offset: int, path: str) -> None:
    """The superblock stores the end-of-file address; HDF5 refuses a file
    shorter than that ("truncated file: eof = ..."), and so do we, before
    any library is involved."""
    head = _read_at(f, offset, 64)
    if len(head) < 16:
        raise ScanError(path, "truncated NetCDF-4/HDF5 file: the superblock is cut short")
    version = head[8]
    # HDF5 file format specification, "Superblock", versions 0 to 3.
    if version in (0, 1):
        width = head[13]
        addresses = 24 if version == 0 else 28
        eof_at = addresses + 2 * width
    elif version in (2, 3):
        width = head[9]
        eof_at = 12 + 2 * width
    else:
        raise ScanError(path, f"corrupt NetCDF-4/HDF5 file: unknown superblock version {version}")
    if width not in (2, 4, 8):
        raise ScanError(path, f"corrupt NetCDF-4/HDF5 file: offset size {width}")
    if len(head) < eof_at + width:
        raise ScanError(path, "truncated NetCDF-4/HDF5 file: the superblock is cut short")
    eof = int.from_bytes(head[eof_at : eof_at + width], "little")
    if eof == (1 << (8 * width)) - 1:
        raise ScanError(path, "corrupt NetCDF-4/HDF5 file: the superblock has no end-of-file address")
    # Addresses are relative to the superblock (HDF5 moves its base address
    # there when they differ), so a user block adds its size.
    if size < offset + eof:
        raise ScanError(
            path, f"truncated NetCDF-4/HDF5 file: {size} bytes, its superblock says {offset + eof}"
        )


def _walk_grib(f: BinaryIO, size: int, path: str) -> list[datetime]:
    """Check each message's length and ``7777`` end marker and return each
    message's reference time from section 1.

    Bytes between messages (padding, a trailing newline) are skipped, as
    eccodes does, by looking for the next ``GRIB`` with edition 1 or 2.
    """
    refs = []
    offset = 0
    while offset is not None:
        head = _read_at(f, offset, 40)
        if len(head) < 8 or (head[7] != 1 and len(head) < 16):
            raise ScanError(
                path, f"truncated GRIB file: the message at byte {offset} is cut short"
            )
        edition = head[7]
        if edition == 1:
            length = int.from_bytes(head[4:7], "big")
            if length & 0x800000:
                # ECMWF's "large GRIB1" encoding: the real length is in
                # section 4, which eccodes knows how to find; check no further.
                refs.append(_grib1_reference(head, offset, path))
                return refs
        else:
            length = int.from_bytes(head[8:16], "big")
        if offset + length > size:
            raise ScanError(
                path,
                f"truncated GRIB file: the message at byte {offset} is {length} bytes long, "
                f"the file ends {size - offset} bytes after its start",
            )
        if length < 16 or _read_at(f, offset + length - 4, 4) != b"7777":
            raise ScanError(
                path, f"corrupt GRIB file: the message at byte {offset} does not end with 7777"
            )
        if edition == 1:
            refs.append(_grib1_reference(head, offset, path))
        else:
            refs.append(_grib2_reference(head, offset, path))
        offset = _next_grib(f, offset + length)
    return refs


def _next_grib(f: BinaryIO, offset: int) -> int | None:
    f.seek(offset)
    carry = b""
    base = offset
    while chunk := f.read(CHUNK):
        data = carry + chunk
        at = data.find(b"GRIB")
        while at != -1:
            if at + 8 > len(data):
                break  # the edition byte is in the next chunk, if any
            if data[at + 7] in (1, 2):
                return base + at
            at = data.find(b"GRIB", at + 1)
        keep = min(len(data), 7)
        carry = data[len(data) - keep :]
        base += len(data) - keep
    # "GRIB" in the last 7 bytes is a message cut short, for the caller to
    # report; anything else there is trailing junk.
    at = carry.find(b"GRIB")
    return base + at if at != -1 else None


def _grib_time(path: str, offset: int, *fields: int) -> datetime:
    try:
        return datetime(*fields, tzinfo=UTC)
    except ValueError as e:
        raise ScanError(
            path, f"corrupt GRIB file: the message at byte {offset} has reference time {fields}: {e}"
        ) from None


def _grib1_reference(head: bytes, offset: int, path: str) -> datetime:
    # GRIB1 (WMO FM 92 edition 1) section 1 starts after the 8-byte section 0;
    # its octets 13-17 are year of century, month, day, hour, minute and
    # octet 25 is the century (the year 2000 is century 20, year 100).
    if len(head) < 8 + 25:
        raise ScanError(path, f"truncated GRIB file: the message at byte {offset} is cut short")
    pds = head[8:]
    year = (pds[24] - 1) * 100 + pds[12]
    return _grib_time(path, offset, year, pds[13], pds[14], pds[15], pds[16])


def _grib2_reference(head: bytes, offset: int, path: str) -> datetime:
    # GRIB2 section 1 follows the 16-byte section 0; octet 5 is the section
    # number, octets 13-14 the year, 15-19 month, day, hour, minute, second.
    section = head[16:]
    if len(section) < 19 or section[4] != 1:
        raise ScanError(
            path, f"corrupt GRIB file: the message at byte {offset} has no section 1 after section 0"
        )
    (year,) = struct.unpack(">H", section[12:14])
    return _grib_time(path, offset, year, *section[14:19])


# --- metadata through the libraries -----------------------------------------


def _netcdf_metadata(netcdf4: Any, scanned: ScannedFile) -> ScannedFile:
    path = scanned.path
    try:
        ds = netcdf4.Dataset(path, "r")
    except OSError as e:
        raise ScanError(path, f"netCDF4 cannot open it: {e.strerror or e}") from None
    try:
        with ds:
            return _netcdf_read(netcdf4, ds, scanned)
    except ScanError:
        raise
    except Exception as e:
        raise ScanError(path, f"netCDF4 cannot read it: {e}") from None


def _names(attribute: Any) -> list[str]:
    # CF 1.7 allows "crs: x y" in grid_mapping; the names before a colon are
    # the variables, and a plain list is all names.
    words = str(attribute).split()
    keyed = [w[:-1] for w in words if w.endswith(":")]
    return keyed or words


def _netcdf_read(netcdf4: Any, ds: Any, scanned: ScannedFile) -> ScannedFile:
    path = scanned.path
    variables = ds.variables

    ref_vars = [
        name
        for name, var in variables.items()
        if name == "forecast_reference_time"
        or getattr(var, "standard_name", None) == "forecast_reference_time"
    ]
    reference = None
    for name in ref_vars:
        earliest, _ = _netcdf_times(netcdf4, variables[name], name, path)
        if earliest is not None and (reference is None or earliest < reference):
            reference = earliest
    if reference is None:
        for attr in ("forecast_reference_time", "reference_time"):
            if attr in ds.ncattrs():
                value = ds.getncattr(attr)
                try:
                    reference = parse_time(str(value))
                except ValueError:
                    raise ScanError(
                        path, f"global attribute {attr} is not an ISO 8601 time: {value!r}"
                    ) from None
                break

    time_name = "time" if "time" in variables else None
    if time_name is None:
        for name, var in variables.items():
            if var.dimensions == (name,) and getattr(var, "standard_name", None) == "time":
                time_name = name
                break
    begin = end = None
    if time_name is not None:
        begin, end = _netcdf_times(netcdf4, variables[time_name], time_name, path)

    not_data = set(ref_vars)
    for name, var in variables.items():
        if var.dimensions == (name,):
            not_data.add(name)
        for attr in ("bounds", "climatology", "coordinates", "grid_mapping"):
            if attr in var.ncattrs():
                not_data.update(_names(var.getncattr(attr)))
    data_vars = tuple(name for name in variables if name not in not_data)

    return attrs.evolve(
        scanned, reference_time=reference, time_begin=begin, time_end=end, variables=data_vars
    )


def _netcdf_times(
    netcdf4: Any, var: Any, name: str, path: str
) -> tuple[datetime | None, datetime | None]:
    import numpy

    units = getattr(var, "units", None)
    if units is None:
        raise ScanError(path, f"variable {name} has no units attribute")
    values = numpy.ma.compressed(numpy.ma.masked_invalid(var[...]))
    if values.size == 0:
        return None, None
    calendar = getattr(var, "calendar", "standard")
    try:
        low, high = netcdf4.num2date(
            [values.min(), values.max()],
            units,
            calendar,
            only_use_cftime_datetimes=False,
            only_use_python_datetimes=True,
        )
    except (ValueError, TypeError) as e:
        raise ScanError(
            path, f"variable {name}: cannot convert {units!r} ({calendar}) to dates: {e}"
        ) from None
    return _utc(low), _utc(high)


def _utc(moment: datetime) -> datetime:
    # cftime applies a zone offset in the units and returns naive UTC, as its
    # own datetime subclass: rebuild a plain one.
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return datetime(
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
        moment.microsecond, tzinfo=UTC,
    )


def _grib_metadata(eccodes: Any, scanned: ScannedFile) -> ScannedFile:
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
