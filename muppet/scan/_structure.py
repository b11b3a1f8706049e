"""Whether a file that starts like NetCDF or GRIB is whole: the classic NetCDF
header against the file's length, the HDF5 superblock's end-of-file address,
each GRIB message's length and end marker (and, on the way, each GRIB
message's reference time from section 1, for when eccodes is not installed).

Done by hand, with no library: netCDF-C opens a truncated classic file
without complaint (see the package docstring).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import BinaryIO

from ._scanned import ScanError
from ._sniff import read_at

#: how much of the file is read at a time when looking for the next GRIB message
SEARCH_CHUNK = 1 << 20


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


# --- classic NetCDF ---------------------------------------------------------

# NetCDF classic format specification (Unidata, "The NetCDF Classic Format"),
# extended for CDF5 by PnetCDF: the header's tags, type codes and sizes.
_NC_DIMENSION, _NC_VARIABLE, _NC_ATTRIBUTE = 0x0A, 0x0B, 0x0C
_NC_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
# Names, counts and a header cannot plausibly be larger than this; a bigger
# value is garbage, not a reason to try reading gigabytes.
_NC_MAX_NAME = 1 << 16


def check_classic(f: BinaryIO, size: int, path: str) -> None:
    """Parse the classic header and check that the file is as long as its
    variables say: netCDF-C itself only refuses a file too short to hold
    its first bytes. Raises ScanError."""
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


# --- HDF5 (NetCDF-4) --------------------------------------------------------


def check_hdf5(f: BinaryIO, size: int, offset: int, path: str) -> None:
    """The superblock (at ``offset``) stores the end-of-file address; HDF5
    refuses a file shorter than that ("truncated file: eof = ..."), and so do
    we, before any library is involved. Raises ScanError."""
    head = read_at(f, offset, 64)
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


# --- GRIB -------------------------------------------------------------------


def walk_grib(f: BinaryIO, size: int, path: str) -> list[datetime]:
    """Check each message's length and ``7777`` end marker and return each
    message's reference time from section 1. Raises ScanError.

    Bytes between messages (padding, a trailing newline) are skipped, as
    eccodes does, by looking for the next ``GRIB`` with edition 1 or 2.
    """
    refs = []
    offset: int | None = 0
    while offset is not None:
        head = read_at(f, offset, 40)
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
        if length < 16 or read_at(f, offset + length - 4, 4) != b"7777":
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
    while chunk := f.read(SEARCH_CHUNK):
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


def _grib_time(path: str, offset: int, fields: tuple[int, ...]) -> datetime:
    """``fields``: year, month, day, hour, minute and maybe second."""
    year, month, day, hour, minute, *rest = fields
    second = rest[0] if rest else 0
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
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
    return _grib_time(path, offset, (year, pds[13], pds[14], pds[15], pds[16]))


def _grib2_reference(head: bytes, offset: int, path: str) -> datetime:
    # GRIB2 section 1 follows the 16-byte section 0; octet 5 is the section
    # number, octets 13-14 the year, 15-19 month, day, hour, minute, second.
    section = head[16:]
    if len(section) < 19 or section[4] != 1:
        raise ScanError(
            path, f"corrupt GRIB file: the message at byte {offset} has no section 1 after section 0"
        )
    (year,) = struct.unpack(">H", section[12:14])
    return _grib_time(path, offset, (year, *section[14:19]))
