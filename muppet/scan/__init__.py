"""Scanning a finished file: size, SHA-256, format and, for NetCDF and GRIB,
the reference time, time period and variables, for ``muppet register`` and
for a step's outputs.

Everything here blocks (it reads the whole file): callers on the Trio loop run
``scan`` in a worker thread (``trio.to_thread.run_sync``).

The format comes from the content, not the name (``_sniff``): NetCDF classic
(``CDF\\x01``), 64-bit offset (``CDF\\x02``), CDF5 (``CDF\\x05``), NetCDF-4 (the
HDF5 signature at 0 or at a 512 * 2**n user-block offset) and GRIB editions 1
and 2. Anything else, and a file whose name says ``.nc`` but whose content is
not NetCDF, is classified by its extension and its metadata is not read.

A file that starts like NetCDF or GRIB but is cut short or corrupt raises
``ScanError`` (``_structure``). This structural check is done without any
library, because netCDF-C opens a truncated classic file without complaint
(measured with netCDF4 1.7.5 / netCDF-C 4.10.1: a file cut to its first 40
bytes opens and reads as zeros).

Metadata is read with two optional libraries, each imported only when a file
needs it: netCDF4 (``_netcdf``; ``pip install netCDF4``) and eccodes
(``_grib``; ``pip install eccodes``, whose wheel depends on ``eccodeslib``,
which brings the C library). Without them ``scan`` still returns format, size
and hash, with ``None``/``()`` metadata; for GRIB the reference time is then
read from section 1 of each message by hand.

The modules: ``_scanned`` (ScannedFile, ScanError), ``_sniff`` (magic numbers
and extensions), ``_structure`` (classic NetCDF, HDF5 and GRIB structure
checks), ``_netcdf`` and ``_grib`` (metadata through the libraries), ``_scan``
(the entry points).
"""

from ._scan import CHUNK, metadata_libraries, scan, sniff_format
from ._scanned import ScanError, ScannedFile

__all__ = ["CHUNK", "ScanError", "ScannedFile", "metadata_libraries", "scan", "sniff_format"]
