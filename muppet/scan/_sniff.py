"""A file's format from its first bytes (magic numbers), else from its
extension."""

from __future__ import annotations

import os
from typing import BinaryIO

NETCDF_EXTENSIONS = {"nc", "nc4", "netcdf"}
GRIB_EXTENSIONS = {"grb", "grib", "grb2", "grib2"}
# An HDF5 file under one of these names is plain HDF5, not a NetCDF-4 product.
HDF5_EXTENSIONS = {"h5", "hdf5", "he5", "hdf"}

#: the fourth byte of a classic NetCDF file ("CDF" + version) -> format detail
CLASSIC_DETAILS = {1: "netcdf-classic", 2: "netcdf-64bit-offset", 5: "netcdf-cdf5"}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 looks for its superblock at 0, 512, 1024, 2048, ... (HDF5 file format
# specification, "Format Signature and Version Information").
HDF5_FIRST_USERBLOCK = 512


def read_at(f: BinaryIO, offset: int, count: int) -> bytes:
    """Up to ``count`` bytes at ``offset`` (fewer at the end of the file)."""
    f.seek(offset)
    return f.read(count)


def extension(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower()


def format_by_extension(path: str) -> str:
    """"netcdf" or "grib" for their usual extensions, else the extension itself."""
    ext = extension(path)
    if ext in NETCDF_EXTENSIONS:
        return "netcdf"
    if ext in GRIB_EXTENSIONS:
        return "grib"
    return ext


def sniff(f: BinaryIO, size: int, path: str) -> tuple[str, str, int]:
    """``(format, detail, offset of the HDF5 superblock or 0)`` of the open
    file ``f`` of ``size`` bytes; detail ``""`` when the content says nothing
    and the format comes from the extension of ``path``."""
    head = read_at(f, 0, 8)
    if head[:3] == b"CDF" and len(head) >= 4 and head[3] in CLASSIC_DETAILS:
        return "netcdf", CLASSIC_DETAILS[head[3]], 0
    if head[:4] == b"GRIB" and len(head) == 8 and head[7] in (1, 2):
        return "grib", f"grib{head[7]}", 0
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= size:
        if read_at(f, offset, len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            if extension(path) in HDF5_EXTENSIONS:
                return format_by_extension(path), "hdf5", offset
            return "netcdf", "netcdf4-hdf5", offset
        offset = HDF5_FIRST_USERBLOCK if offset == 0 else offset * 2
    return format_by_extension(path), "", 0
