"""`muppet register`, `products`, `instances`, `files` and `events` as real
subprocesses against the real daemon (in-process), with a tokens file so that
the writes need MUPPET_TOKEN."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from services import service_missing  # tests/ is on sys.path
from test_index_api import make_config

from muppet import daemon

SECRET = "producer-secret"
ENV = {k: v for k, v in os.environ.items() if k not in ("MUPPET_API", "MUPPET_TOKEN")}


async def muppet(*args: str, token: str | None = SECRET) -> subprocess.CompletedProcess:
    env = dict(ENV, **({"MUPPET_TOKEN": token} if token else {}))
    with trio.fail_after(60):  # a safety net against a hang, not a timing assertion
        return await trio.run_process(
            [sys.executable, "-m", "muppet.cli", *args],
            capture_stdout=True, capture_stderr=True, check=False, env=env,
        )


async def netcdf_file(path: Path, reference_time: str = "2026-11-28T06:00:00Z") -> Path:
    """A small NetCDF-4 file with a reference time, written in a worker thread."""
    return await trio.to_thread.run_sync(_write_netcdf, path, reference_time)


def _write_netcdf(path: Path, reference_time: str) -> Path:
    try:
        import netCDF4
    except ImportError:
        service_missing("netCDF4 is not installed (pip install '.[test]')")
    path.parent.mkdir(parents=True, exist_ok=True)
    units = "hours since " + reference_time.replace("T", " ").rstrip("Z")
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.createDimension("time", 3)
        time = ds.createVariable("time", "f8", ("time",))
        time.units = units
        time[:] = [0, 1, 2]
        frt = ds.createVariable("forecast_reference_time", "f8")
        frt.units = units
        frt.assignValue(0)
        ds.createVariable("air_temperature_2m", "f4", ("time",))[:] = [1, 2, 3]
    return path


@pytest.fixture
async def api(nursery, tmp_path):
    tokens = tmp_path / "tokens.toml"
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    await trio.Path(tokens).write_text(f'[tokens.producer]\nrole = "write"\nsha256 = "{digest}"\n')
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}",
                         f'tokens_file = "{tokens}"\nopen_reads = true\n')
    port = await nursery.start(daemon.serve, config)
    return f"ws://127.0.0.1:{port}"


async def test_register_reads_the_file_and_the_listings_show_it(api, tmp_path):
    lustre = tmp_path / "lustre"
    a = await netcdf_file(lustre / "arome" / "a.nc")
    b = await netcdf_file(lustre / "arome" / "b.nc")
    denied = await muppet("register", str(a), "--product", "arome", "--backend", "lustre-a", "--api", api, token=None)
    assert denied.returncode == 1 and "needs a write token" in denied.stderr.decode()

    done = await muppet("register", str(a), str(b), "--product", "arome", "--backend", "lustre-a", "--json",
                        "--api", api)
    assert done.returncode == 0, done.stderr.decode()
    files = json.loads(done.stdout)
    assert [f["name"] for f in files] == ["arome/a.nc", "arome/b.nc"]  # under the backend's URL
    first = files[0]
    assert first["format"] == "netcdf" and first["reference_time"] == "2026-11-28T06:00:00Z"
    assert first["time_begin"] == "2026-11-28T06:00:00Z" and first["time_end"] == "2026-11-28T08:00:00Z"
    assert first["variables"] == ["air_temperature_2m"]
    content = await trio.Path(a).read_bytes()
    assert first["hash"] == hashlib.sha256(content).hexdigest() and first["size"] == len(content)
    assert first["url"] == f"file://{a}"

    products = json.loads((await muppet("products", "--json", "--api", api)).stdout)
    assert [p["slug"] for p in products] == ["arome", "ecmwf"]
    table = (await muppet("products", "--api", api)).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["SLUG", "NAME", "CONTACT"] and table[1].split()[0] == "arome"

    instances = json.loads((await muppet("instances", "arome", "--json", "--api", api)).stdout)
    assert [(i["version"], bool(i["completed_at"])) for i in instances] == [(1, True)]
    listed = json.loads((await muppet("files", "arome", "--json", "--api", api)).stdout)
    assert [f["name"] for f in listed] == ["arome/a.nc", "arome/b.nc"]
    by_time = await muppet("files", "arome", "--reference-time", "2026-11-28T06:00Z", "--backend", "thredds-1",
                           "--api", api)
    assert by_time.returncode == 0 and "no files" in by_time.stderr.decode()

    unknown = await muppet("instances", "nope", "--api", api)
    assert unknown.returncode == 1 and "unknown product 'nope'" in unknown.stderr.decode()


async def test_register_refuses_bad_files_and_sends_nothing(api, tmp_path):
    lustre = tmp_path / "lustre"
    good = await netcdf_file(lustre / "good.nc")
    broken = lustre / "broken.nc"
    await trio.Path(broken).write_bytes((await trio.Path(good).read_bytes())[:100])  # HDF5 signature, cut short
    outside = await netcdf_file(tmp_path / "elsewhere" / "x.nc")
    for path, words in ((broken, str(broken)), (outside, "not under backend 'lustre-a'"),
                        (lustre / "missing.nc", "missing.nc")):
        result = await muppet("register", str(good), str(path), "--product", "arome", "--backend", "lustre-a",
                              "--api", api)
        assert result.returncode in (1, 2) and words in result.stderr.decode(), result.stderr.decode()
    text = lustre / "notes.txt"
    await trio.Path(text).write_text("no reference time in here")
    result = await muppet("register", str(text), "--product", "arome", "--backend", "lustre-a", "--api", api)
    assert result.returncode == 1 and "give --reference-time" in result.stderr.decode()
    result = await muppet("instances", "arome", "--json", "--api", api)
    assert json.loads(result.stdout) == []
    result = await muppet("register", str(text), "--product", "arome", "--backend", "lustre-a",
                          "--reference-time", "2026-11-28T00:00:00Z", "--format", "text", "--api", api)
    assert result.returncode == 0 and "v1" in result.stdout.decode()


async def test_events_backlog_and_follow(api, tmp_path):
    lustre = tmp_path / "lustre"
    a = await netcdf_file(lustre / "a.nc")
    registered = await muppet("register", str(a), "--product", "ecmwf", "--backend", "lustre-a", "--api", api)
    assert registered.returncode == 0, registered.stderr.decode()
    backlog = [json.loads(line) for line in (await muppet("events", "--json", "--api", api)).stdout.splitlines()]
    numbers = [e["id"] for e in backlog]
    assert numbers == list(range(1, len(numbers) + 1))
    filtered = (await muppet("events", "--kind", "file", "--product", "ecmwf", "--api", api)).stdout.decode()
    assert filtered.count("\n") == 1 and f"file://{a}" in filtered

    env = dict(ENV, MUPPET_TOKEN=SECRET)
    follower = await trio.lowlevel.open_process(
        [sys.executable, "-m", "muppet.cli", "events", "--follow", "--json", "--since", str(numbers[-1]),
         "--api", api], stdout=subprocess.PIPE, env=env,
    )
    try:
        b = await netcdf_file(lustre / "b.nc", "2026-11-29T00:00:00Z")
        registered = await muppet("register", str(b), "--product", "ecmwf", "--backend", "lustre-a", "--api", api)
        assert registered.returncode == 0, registered.stderr.decode()
        output = b""
        with trio.fail_after(30):  # a safety net against a hang
            while output.count(b"\n") < 3:  # the new instance, the file, the instance complete
                chunk = await follower.stdout.receive_some()
                assert chunk, f"muppet events --follow ended: {output!r}"
                output += chunk
        followed = [json.loads(line) for line in output.splitlines()[:3]]
        assert [e["id"] for e in followed] == [numbers[-1] + 1, numbers[-1] + 2, numbers[-1] + 3]
        assert [e["kind"] for e in followed] == ["instance", "file", "instance"]
    finally:
        follower.kill()
        with trio.CancelScope(shield=True):
            await follower.wait()
