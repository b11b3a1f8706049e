"""muppet.scan, the scanning core, on real NetCDF and GRIB files, written at
test time with netCDF4 and eccodes, and on broken and odd files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from services import service_missing

from muppet import scan as scanning
from muppet.scan import ScanError, ScannedFile, scan, sniff_format

UTC = UTC
REF = datetime(2026, 11, 28, 6, tzinfo=UTC)

NETCDF_FORMATS = {
    "NETCDF3_CLASSIC": "netcdf-classic",
    "NETCDF3_64BIT_OFFSET": "netcdf-64bit-offset",
    "NETCDF3_64BIT_DATA": "netcdf-cdf5",
    "NETCDF4": "netcdf4-hdf5",
    "NETCDF4_CLASSIC": "netcdf4-hdf5",
}


@pytest.fixture(scope="session")
def netCDF4():
    try:
        import netCDF4
    except ImportError:
        service_missing("netCDF4 is not installed (pip install netCDF4)")
    return netCDF4


@pytest.fixture(scope="session")
def eccodes():
    try:
        import eccodes

        eccodes.codes_get_api_version()
    except (ImportError, RuntimeError, OSError) as e:
        service_missing(f"eccodes is not usable (pip install eccodes): {e}")
    return eccodes


def write_netcdf(netCDF4, path: Path, fmt: str, *, records: int = 3, x: int = 50) -> Path:
    """A forecast file as MET Norway writes them: a record ``time`` axis,
    a scalar ``forecast_reference_time``, two data variables, plus the
    variables that are not data (bounds, grid mapping, 2-D coordinates)."""
    import numpy

    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.createDimension("time", None)
        ds.createDimension("x", x)
        ds.createDimension("nv", 2)
        time = ds.createVariable("time", "f8", ("time",))
        time.units = "hours since 2026-11-28 06:00:00"
        time.standard_name = "time"
        time.bounds = "time_bnds"
        time[:] = [6.0 * i for i in range(records)]
        bnds = ds.createVariable("time_bnds", "f8", ("time", "nv"))
        bnds[:] = [[6.0 * i - 6, 6.0 * i] for i in range(records)]
        ref = ds.createVariable("forecast_reference_time", "f8", ())
        ref.units = "seconds since 1970-01-01 00:00:00"
        ref.standard_name = "forecast_reference_time"
        ref[...] = REF.timestamp()
        xs = ds.createVariable("x", "f4", ("x",))
        xs[:] = numpy.arange(x)
        lat = ds.createVariable("latitude", "f4", ("x",))
        lat[:] = numpy.linspace(50, 70, x)
        crs = ds.createVariable("projection_lambert", "i4", ())
        crs.grid_mapping_name = "lambert_conformal_conic"
        for name in ("air_temperature_2m", "precipitation_amount"):
            var = ds.createVariable(name, "f4", ("time", "x"))
            var.coordinates = "forecast_reference_time latitude"
            var.grid_mapping = "projection_lambert"
            var[:] = numpy.ones((records, x))
    return path


def write_grib(eccodes, path: Path, edition: int, messages: list[tuple[int, int, int, str]]) -> Path:
    """One message per (dataDate, dataTime, step in hours, shortName)."""
    with open(path, "wb") as f:
        for date, time, step, short_name in messages:
            handle = eccodes.codes_grib_new_from_samples(f"GRIB{edition}")
            try:
                eccodes.codes_set(handle, "dataDate", date)
                eccodes.codes_set(handle, "dataTime", time)
                eccodes.codes_set(handle, "stepRange", str(step))
                eccodes.codes_set(handle, "shortName", short_name)
                eccodes.codes_write(handle, f)
            finally:
                eccodes.codes_release(handle)
    return path


TWO_FIELDS = [(20261128, 600, 0, "t"), (20261128, 600, 6, "2t")]


# --- NetCDF -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(NETCDF_FORMATS))
def test_netcdf_metadata(netCDF4, tmp_path, fmt):
    path = write_netcdf(netCDF4, tmp_path / "arome.nc", fmt)
    data = path.read_bytes()

    scanned = scan(str(path))

    assert scanned == ScannedFile(
        path=str(path),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        format="netcdf",
        format_detail=NETCDF_FORMATS[fmt],
        reference_time=REF,
        time_begin=REF,
        time_end=datetime(2026, 11, 28, 18, tzinfo=UTC),
        variables=("air_temperature_2m", "precipitation_amount"),
    )
    # Plain datetimes, not cftime's subclass: they go to codec and the API.
    assert type(scanned.reference_time) is datetime
    assert type(scanned.time_end) is datetime
    assert sniff_format(str(path)) == ("netcdf", NETCDF_FORMATS[fmt])


@pytest.mark.parametrize("fmt", sorted(NETCDF_FORMATS))
def test_netcdf_without_library_keeps_format_size_and_hash(netCDF4, tmp_path, fmt):
    path = write_netcdf(netCDF4, tmp_path / "arome.nc", fmt)

    scanned = scan(str(path), libraries=False)

    assert scanned.format == "netcdf"
    assert scanned.format_detail == NETCDF_FORMATS[fmt]
    assert scanned.size == path.stat().st_size
    assert scanned.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (scanned.reference_time, scanned.time_begin, scanned.time_end) == (None, None, None)
    assert scanned.variables == ()


def test_netcdf_reference_time_from_global_attribute_and_zoned_units(netCDF4, tmp_path):
    path = tmp_path / "obs.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.reference_time = "2026-11-28T00:00:00Z"
        ds.createDimension("time", 2)
        time = ds.createVariable("time", "i4", ("time",))
        time.units = "hours since 2026-11-28 06:00:00 +01:00"
        time[:] = [12, 0]  # not sorted: the period is min..max
        ds.createVariable("air_pressure", "f4", ("time",))[:] = [1000, 1001]

    scanned = scan(str(path))

    assert scanned.reference_time == datetime(2026, 11, 28, tzinfo=UTC)
    assert scanned.time_begin == datetime(2026, 11, 28, 5, tzinfo=UTC)
    assert scanned.time_end == datetime(2026, 11, 28, 17, tzinfo=UTC)
    assert scanned.variables == ("air_pressure",)


def test_netcdf_several_reference_times_gives_the_earliest(netCDF4, tmp_path):
    path = tmp_path / "ens.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("forecast_reference_time", 3)
        ref = ds.createVariable("forecast_reference_time", "f8", ("forecast_reference_time",))
        ref.units = "hours since 2026-11-28 00:00:00"
        ref[:] = [12, 6, 18]
        ds.createVariable("t", "f4", ("forecast_reference_time",))[:] = [1, 2, 3]

    scanned = scan(str(path))

    assert scanned.reference_time == REF
    assert (scanned.time_begin, scanned.time_end) == (None, None)
    assert scanned.variables == ("t",)


def test_netcdf_without_time_metadata(netCDF4, tmp_path):
    path = tmp_path / "static.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.createDimension("x", 3)
        ds.createVariable("altitude", "f4", ("x",))[:] = [1, 2, 3]

    scanned = scan(str(path))

    assert (scanned.reference_time, scanned.time_begin, scanned.time_end) == (None, None, None)
    assert scanned.variables == ("altitude",)


def test_netcdf_bad_time_metadata_names_file_and_variable(netCDF4, tmp_path):
    path = tmp_path / "bad.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("time", 1)
        ds.createVariable("time", "f8", ("time",))[:] = [0]  # no units

    with pytest.raises(ScanError) as caught:
        scan(str(path))
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value) and "time" in str(caught.value)

    path2 = tmp_path / "bad2.nc"
    with netCDF4.Dataset(path2, "w", format="NETCDF4") as ds:
        ds.forecast_reference_time = "yesterday"
    with pytest.raises(ScanError, match="forecast_reference_time") as caught:
        scan(str(path2))
    assert str(path2) in str(caught.value)


@pytest.mark.parametrize("userblock", [512, 1024])
def test_netcdf4_with_a_user_block(netCDF4, tmp_path, userblock):
    # HDF5 looks for its superblock at 0, 512, 1024, ...; addresses are
    # relative to it, so prepending a user block keeps the file readable.
    plain = write_netcdf(netCDF4, tmp_path / "plain.nc", "NETCDF4")
    path = tmp_path / "userblock.nc"
    path.write_bytes(b"U" * userblock + plain.read_bytes())

    assert sniff_format(str(path)) == ("netcdf", "netcdf4-hdf5")
    assert scan(str(path), libraries=False).format_detail == "netcdf4-hdf5"
    cut = tmp_path / "userblock-cut.nc"
    cut.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ScanError, match="truncated"):
        scan(str(cut), libraries=False)


def test_hdf5_under_an_hdf5_name_is_not_netcdf(netCDF4, tmp_path):
    plain = write_netcdf(netCDF4, tmp_path / "plain.nc", "NETCDF4")
    path = tmp_path / "granule.H5"
    path.write_bytes(plain.read_bytes())

    scanned = scan(str(path))

    assert (scanned.format, scanned.format_detail) == ("h5", "hdf5")
    assert scanned.variables == ()


# --- GRIB -------------------------------------------------------------------


@pytest.mark.parametrize("edition", [1, 2])
def test_grib_metadata(eccodes, tmp_path, edition):
    path = write_grib(eccodes, tmp_path / f"ec.grib{edition}", edition, TWO_FIELDS)
    data = path.read_bytes()

    scanned = scan(str(path))

    assert scanned == ScannedFile(
        path=str(path),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        format="grib",
        format_detail=f"grib{edition}",
        reference_time=REF,
        time_begin=REF,
        time_end=datetime(2026, 11, 28, 12, tzinfo=UTC),
        variables=("2t", "t"),
    )
    assert sniff_format(str(path)) == ("grib", f"grib{edition}")


@pytest.mark.parametrize("edition", [1, 2])
def test_grib_without_library_reads_reference_time_from_section_1(eccodes, tmp_path, edition):
    path = write_grib(eccodes, tmp_path / "ec.bin", edition, TWO_FIELDS)

    scanned = scan(str(path), libraries=False)

    assert (scanned.format, scanned.format_detail) == ("grib", f"grib{edition}")
    assert scanned.size == path.stat().st_size
    assert scanned.reference_time == REF
    assert (scanned.time_begin, scanned.time_end, scanned.variables) == (None, None, ())


@pytest.mark.parametrize("edition", [1, 2])
@pytest.mark.parametrize(
    "date,time",
    [(19991231, 2359), (20000101, 0), (20000229, 1230), (20991231, 1800), (20261128, 600)],
)
def test_grib_section_1_agrees_with_eccodes(eccodes, tmp_path, edition, date, time):
    # Century boundaries are where GRIB1's year-of-century encoding bites.
    path = write_grib(eccodes, tmp_path / "one.grib", edition, [(date, time, 0, "t")])
    expected = datetime(
        date // 10000, date // 100 % 100, date % 100, time // 100, time % 100, tzinfo=UTC
    )

    assert scan(str(path), libraries=False).reference_time == expected
    assert scan(str(path)).reference_time == expected


@pytest.mark.parametrize("libraries", [True, False])
def test_grib_several_reference_times_gives_the_earliest(eccodes, tmp_path, libraries):
    fields = [(20261128, 1200, 0, "t"), (20261128, 0, 3, "u"), (20261129, 0, 0, "v")]
    path = write_grib(eccodes, tmp_path / "mixed.grib2", 2, fields)

    scanned = scan(str(path), libraries=libraries)

    assert scanned.reference_time == datetime(2026, 11, 28, tzinfo=UTC)
    if libraries:
        assert scanned.time_begin == datetime(2026, 11, 28, 3, tzinfo=UTC)
        assert scanned.time_end == datetime(2026, 11, 29, tzinfo=UTC)
        assert scanned.variables == ("t", "u", "v")


@pytest.mark.parametrize("libraries", [True, False])
def test_grib_padding_between_messages_and_trailing_junk(eccodes, tmp_path, libraries):
    one = write_grib(eccodes, tmp_path / "a.grib", 2, [(20261128, 0, 0, "t")]).read_bytes()
    two = write_grib(eccodes, tmp_path / "b.grib", 1, [(20261127, 1800, 0, "u")]).read_bytes()
    path = tmp_path / "padded.grib"
    path.write_bytes(one + b"\0" * 13 + two + b"\n")

    scanned = scan(str(path), libraries=libraries)

    assert scanned.format_detail == "grib2"  # from the first message
    assert scanned.reference_time == datetime(2026, 11, 27, 18, tzinfo=UTC)
    if libraries:
        assert scanned.variables == ("t", "u")


@pytest.mark.parametrize("libraries", [True, False])
def test_grib_without_end_marker_is_corrupt(eccodes, tmp_path, libraries):
    data = bytearray(write_grib(eccodes, tmp_path / "a.grib", 2, TWO_FIELDS).read_bytes())
    data[-4:] = b"8888"
    path = tmp_path / "broken.grib"
    path.write_bytes(bytes(data))

    with pytest.raises(ScanError, match="7777") as caught:
        scan(str(path), libraries=libraries)
    assert caught.value.path == str(path)


# --- truncated and garbage files --------------------------------------------


def assert_every_prefix_fails(
    path: Path, data: bytes, *, libraries: bool, step: int = 1, whole: tuple[int, ...] = ()
) -> None:
    """Every prefix long enough to be recognised by its magic number must be
    refused, naming the file; shorter ones fall back to the extension. The
    cuts in ``whole`` leave complete files (GRIB messages end to end)."""
    for cut in range(8, len(data), step):
        path.write_bytes(data[:cut])
        if cut in whole:
            scan(str(path), libraries=libraries)
            continue
        with pytest.raises(ScanError) as caught:
            scan(str(path), libraries=libraries)
        assert caught.value.path == str(path), cut
        assert str(caught.value).startswith(f"{path}: "), cut


@pytest.mark.parametrize("fmt", sorted(NETCDF_FORMATS))
def test_truncated_netcdf(netCDF4, tmp_path, fmt):
    # netCDF-C itself opens a classic file cut after its header and reads
    # zeros, so this is the scanner's own check, with or without netCDF4.
    data = write_netcdf(netCDF4, tmp_path / "full.nc", fmt, records=2, x=3).read_bytes()
    path = tmp_path / "cut.nc"
    assert_every_prefix_fails(path, data, libraries=False)
    assert_every_prefix_fails(path, data, libraries=True, step=max(1, len(data) // 60))
    for cut in range(4):
        path.write_bytes(data[:cut])
        assert scan(str(path)).format_detail == ""


@pytest.mark.parametrize("edition", [1, 2])
def test_truncated_grib(eccodes, tmp_path, edition):
    data = write_grib(eccodes, tmp_path / "full.grib", edition, TWO_FIELDS).read_bytes()
    first = write_grib(eccodes, tmp_path / "first.grib", edition, TWO_FIELDS[:1]).read_bytes()
    assert data.startswith(first)
    path = tmp_path / "cut.grib"
    # The first message and 1 to 3 bytes of the second ("G", "GR", "GRI") read
    # as a whole file with trailing junk, as eccodes reads them; from "GRIB"
    # on it is a cut-short message.
    whole = tuple(range(len(first), len(first) + 4))
    assert_every_prefix_fails(path, data, libraries=False, whole=whole)
    assert_every_prefix_fails(path, data, libraries=True, whole=whole)


@pytest.mark.parametrize(
    "head",
    [
        b"CDF\x01" + b"\xff" * 60,
        b"CDF\x02\x00\x00\x00\x00\x00\x00\x00\x0a\x7f\xff\xff\xff",
        b"CDF\x05" + bytes(range(200)),
        b"\x89HDF\r\n\x1a\n" + b"\x07" * 100,
        b"\x89HDF\r\n\x1a\n\x02\x08\x08\x00" + b"\x00" * 16 + b"\xff" * 8 + b"\x00" * 20,
    ],
)
@pytest.mark.parametrize("libraries", [True, False])
def test_garbage_after_a_netcdf_magic_number(tmp_path, head, libraries):
    path = tmp_path / "garbage.nc"
    path.write_bytes(head)

    with pytest.raises(ScanError) as caught:
        scan(str(path), libraries=libraries)
    assert caught.value.path == str(path)


def test_hdf5_superblock_sound_but_content_garbage_is_refused_by_netcdf4(netCDF4, tmp_path):
    data = bytearray(write_netcdf(netCDF4, tmp_path / "full.nc", "NETCDF4").read_bytes())
    data[96:] = b"\x5a" * (len(data) - 96)
    path = tmp_path / "scrambled.nc"
    path.write_bytes(bytes(data))

    assert scan(str(path), libraries=False).format_detail == "netcdf4-hdf5"
    with pytest.raises(ScanError, match="netCDF4") as caught:
        scan(str(path))
    assert caught.value.path == str(path)


# --- extension fallback, odd paths, progress --------------------------------


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("notes.txt", b"GRIB files are...", ("txt", "")),
        ("DATA.JSON", b'{"a": 1}', ("json", "")),
        ("README", b"hello", ("", "")),
        ("archive.tar.gz", b"\x1f\x8b\x08\x00", ("gz", "")),
        ("not-really.nc", b"this is text, not NetCDF", ("netcdf", "")),
        ("not-really.nc4", b"CDF\x09 unknown version", ("netcdf", "")),
        ("not-really.netcdf", b"", ("netcdf", "")),
        ("not-really.grb", b"GRIB\x00\x00\x00\x03", ("grib", "")),
        ("not-really.grib2", b"text", ("grib", "")),
        (".hidden", b"x", ("", "")),
    ],
)
@pytest.mark.parametrize("libraries", [True, False])
def test_format_by_extension(tmp_path, name, content, expected, libraries):
    path = tmp_path / name
    path.write_bytes(content)

    scanned = scan(str(path), libraries=libraries)

    # Not NetCDF or GRIB by content: no attempt to read metadata from it.
    assert (scanned.format, scanned.format_detail) == expected
    assert (scanned.reference_time, scanned.time_begin, scanned.variables) == (None, None, ())
    assert sniff_format(str(path)) == expected


def test_empty_file(tmp_path):
    path = tmp_path / "empty.grib2"
    path.write_bytes(b"")
    calls = []

    scanned = scan(str(path), progress=calls.append)

    assert scanned == ScannedFile(
        path=str(path),
        size=0,
        sha256=hashlib.sha256(b"").hexdigest(),
        format="grib",
        format_detail="",
    )
    assert calls == [0]


def test_relative_path_becomes_absolute(tmp_path, monkeypatch):
    (tmp_path / "f.txt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)

    assert scan("f.txt").path == str(tmp_path / "f.txt")


def test_directory_missing_and_special_paths(tmp_path):
    with pytest.raises(ScanError, match="is a directory") as caught:
        scan(str(tmp_path))
    assert caught.value.path == str(tmp_path)

    missing = tmp_path / "missing.nc"
    with pytest.raises(ScanError, match="no such file") as caught:
        scan(str(missing))
    assert str(caught.value).startswith(f"{missing}: ")

    # A FIFO would block a plain open() until a writer comes; it is refused.
    fifo = tmp_path / "pipe.nc"
    os.mkfifo(fifo)
    with pytest.raises(ScanError, match="not a regular file"):
        scan(str(fifo))
    with pytest.raises(ScanError, match="not a regular file"):
        sniff_format(str(fifo))

    with pytest.raises(ScanError, match="not a regular file"):
        scan("/dev/null")


def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.nc"
    path.write_bytes(b"CDF\x01")
    path.chmod(0)
    try:
        if os.geteuid() == 0:
            # Root reads it anyway; what it then finds is a cut-short header.
            with pytest.raises(ScanError, match="truncated"):
                scan(str(path))
        else:
            with pytest.raises(ScanError, match="cannot open: Permission denied") as caught:
                scan(str(path))
            assert caught.value.path == str(path)
    finally:
        path.chmod(0o600)


def test_progress_reports_every_chunk_up_to_the_size(tmp_path):
    size = 2 * scanning.CHUNK + 12345
    data = os.urandom(size)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    calls = []

    scanned = scan(str(path), progress=calls.append)

    assert calls == [scanning.CHUNK, 2 * scanning.CHUNK, size]
    assert scanned.size == size
    assert scanned.sha256 == hashlib.sha256(data).hexdigest()
    assert (scanned.format, scanned.format_detail) == ("bin", "")


def test_to_dict(tmp_path):
    scanned = ScannedFile(
        path="/a/b.nc",
        size=3,
        sha256="ab",
        format="netcdf",
        format_detail="netcdf-classic",
        reference_time=REF,
        time_begin=REF,
        time_end=None,
        variables=("t", "u"),
    )
    assert scanned.to_dict() == {
        "path": "/a/b.nc",
        "size": 3,
        "hash_type": "sha256",
        "hash": "ab",
        "format": "netcdf",
        "format_detail": "netcdf-classic",
        "reference_time": "2026-11-28T06:00:00Z",
        "time_begin": "2026-11-28T06:00:00Z",
        "time_end": None,
        "variables": ["t", "u"],
    }


def test_without_the_libraries_installed(netCDF4, eccodes, tmp_path):
    # The import itself failing, in a fresh interpreter (None in sys.modules
    # makes ``import`` raise ImportError), not only ``libraries=False``.
    nc = write_netcdf(netCDF4, tmp_path / "a.nc", "NETCDF4")
    grib = write_grib(eccodes, tmp_path / "a.grib", 2, TWO_FIELDS)
    code = (
        "import sys, json\n"
        "sys.modules['netCDF4'] = sys.modules['eccodes'] = None\n"
        "from muppet import scan\n"
        "print(json.dumps([scan.metadata_libraries()]"
        " + [scan.scan(p).to_dict() for p in sys.argv[1:]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(nc), str(grib)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    versions, nc_dict, grib_dict = json.loads(out)

    assert versions == {"netCDF4": None, "eccodes": None}
    assert nc_dict["format_detail"] == "netcdf4-hdf5"
    assert (nc_dict["reference_time"], nc_dict["variables"]) == (None, [])
    assert nc_dict["hash"] == hashlib.sha256(nc.read_bytes()).hexdigest()
    assert grib_dict["format_detail"] == "grib2"
    assert grib_dict["reference_time"] == "2026-11-28T06:00:00Z"
    assert (grib_dict["time_begin"], grib_dict["variables"]) == (None, [])


def test_metadata_libraries_reports_versions(netCDF4, eccodes):
    versions = scanning.metadata_libraries()
    assert versions == {
        "netCDF4": netCDF4.__version__,
        "eccodes": eccodes.codes_get_api_version(),
    }
