"""NetCDF metadata (reference time, time period, data variables) through the
optional netCDF4 library, imported only when a file needs it.

netCDF4 and numpy publish no type information that mypy uses here: their
objects are ``Any``, and the functions below are the typed edge.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import attrs

from ..codec import parse_time
from ._scanned import ScanError, ScannedFile


@functools.cache
def netcdf4_module() -> Any:
    """The netCDF4 module, or None when it cannot be imported."""
    try:
        import netCDF4
    except ImportError:
        return None
    return netCDF4


def netcdf4_version() -> str | None:
    netcdf4 = netcdf4_module()
    return None if netcdf4 is None else str(netcdf4.__version__)


def netcdf_metadata(netcdf4: Any, scanned: ScannedFile) -> ScannedFile:
    """``scanned`` with what the file at ``scanned.path`` says of itself.
    Raises ScanError naming the file when netCDF4 cannot read it or a time in
    it cannot be understood."""
    path = scanned.path
    try:
        ds = netcdf4.Dataset(path, "r")
    except OSError as e:
        raise ScanError(path, f"netCDF4 cannot open it: {e.strerror or e}") from None
    try:
        with ds:
            return _read(netcdf4, ds, scanned)
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


def _read(netcdf4: Any, ds: Any, scanned: ScannedFile) -> ScannedFile:
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
        earliest, _ = _times(netcdf4, variables[name], name, path)
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
        begin, end = _times(netcdf4, variables[time_name], time_name, path)

    not_data = set(ref_vars)
    for name, var in variables.items():
        if var.dimensions == (name,):
            not_data.add(name)
        for attr in ("bounds", "climatology", "coordinates", "grid_mapping"):
            if attr in var.ncattrs():
                not_data.update(_names(var.getncattr(attr)))
    data_vars = tuple(str(name) for name in variables if name not in not_data)

    return attrs.evolve(
        scanned, reference_time=reference, time_begin=begin, time_end=end, variables=data_vars
    )


def _times(netcdf4: Any, var: Any, name: str, path: str) -> tuple[datetime | None, datetime | None]:
    """The earliest and latest time a time variable holds (None, None when empty)."""
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
