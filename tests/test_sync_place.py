"""Placing downloaded files under data_dir: layout paths that would escape are
refused, a wrong hash and a full disk leave nothing behind, on_complete runs."""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from sync.errors import DiskFull, HashMismatch, LayoutError, PlaceError
from sync.place import check_layout, render_layout, run_on_complete, sha256_file, verify_and_place

FIELDS = {
    "product": "arome-pp",
    "reference_time": datetime(2026, 3, 4, 6, tzinfo=UTC),
    "filename": "arome_pp.nc",
    "version": 2,
    "backend": "lustre-a",
    "format": "netcdf",
}
LAYOUT = "{product}/{reference_time:%Y/%m/%d}/{filename}"


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_render_layout():
    assert render_layout(LAYOUT, FIELDS) == PurePosixPath("arome-pp/2026/03/04/arome_pp.nc")
    assert check_layout(LAYOUT) == []


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("filename", "../../etc/cron.d/evil", "'..' part"),
        ("filename", "/etc/passwd", "empty path part"),  # "arome-pp/2026/03/04//etc/passwd"
        ("product", "..", "'..' part"),
        ("product", "", "absolute path"),
        ("filename", "", "empty path part"),
        ("filename", ".", "'.' part"),
        ("filename", "a\0b", "NUL byte"),
    ],
)
def test_render_layout_refuses_escapes(field, value, message):
    fields = dict(FIELDS, **{field: value})
    with pytest.raises(LayoutError) as caught:
        render_layout(LAYOUT, fields)
    assert f"file {fields['filename']!r}" in str(caught.value)
    assert message in str(caught.value)


def test_render_layout_refuses_absolute_results():
    with pytest.raises(LayoutError, match=r"file '/etc/passwd'.*absolute path"):
        render_layout("{filename}", dict(FIELDS, filename="/etc/passwd"))


def test_render_layout_names_the_file_when_a_field_is_missing():
    fields = dict(FIELDS)
    del fields["product"]
    with pytest.raises(LayoutError, match=r"file 'arome_pp.nc': layout .* cannot be formatted"):
        render_layout(LAYOUT, fields)


def make_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_place_on_the_same_file_system_links(tmp_path):
    downloaded = tmp_path / "incoming" / "arome_pp.nc"
    downloaded.parent.mkdir()
    digest = make_file(downloaded, 300_000)
    data_dir = tmp_path / "data"
    relative = render_layout(LAYOUT, FIELDS)
    final = verify_and_place(downloaded, data_dir, relative, digest.upper())
    assert final == data_dir / "arome-pp/2026/03/04/arome_pp.nc"
    assert sha256_file(final) == digest
    assert final.stat().st_ino == downloaded.stat().st_ino  # no second copy
    assert listing(data_dir) == ["arome-pp/2026/03/04/arome_pp.nc"]
    # placing it again (a second fetch) leaves one file, no temporary link
    assert verify_and_place(downloaded, data_dir, relative, digest) == final
    assert listing(data_dir) == ["arome-pp/2026/03/04/arome_pp.nc"]


def test_hash_mismatch_leaves_nothing(tmp_path):
    downloaded = tmp_path / "arome_pp.nc"
    make_file(downloaded, 100_000)
    data_dir = tmp_path / "data"
    with pytest.raises(HashMismatch, match=r"SHA-256 of the downloaded file is .* the index says 00+; not placed"):
        verify_and_place(downloaded, data_dir, "p/arome_pp.nc", "0" * 64)
    assert listing(data_dir) == []
    assert downloaded.exists()


def test_hash_mismatch_keeps_an_older_good_file(tmp_path):
    data_dir = tmp_path / "data"
    good = tmp_path / "good.nc"
    digest = make_file(good, 1000)
    verify_and_place(good, data_dir, "p/f.nc", digest)
    bad = tmp_path / "bad.nc"
    make_file(bad, 1000)
    with pytest.raises(HashMismatch):
        verify_and_place(bad, data_dir, "p/f.nc", digest)
    assert sha256_file(data_dir / "p/f.nc") == digest
    assert listing(data_dir) == ["p/f.nc"]


def test_place_refuses_an_escaping_relative_path(tmp_path):
    downloaded = tmp_path / "f.nc"
    digest = make_file(downloaded, 10)
    for relative in ("../f.nc", "/tmp/f.nc", "a//f.nc"):
        with pytest.raises(LayoutError):
            verify_and_place(downloaded, tmp_path / "data", relative, digest)
    assert not (tmp_path / "data").exists()


def test_disk_full_leaves_no_partial_file(tmp_path, small_tmpfs):
    downloaded = tmp_path / "big.nc"  # another file system: copied, not linked
    digest = make_file(downloaded, 3 * 1024 * 1024)
    with pytest.raises(DiskFull, match=r"^disk full: cannot place .*big\.nc .*nothing was left there"):
        verify_and_place(downloaded, small_tmpfs, "p/big.nc", digest)
    assert listing(small_tmpfs) == []
    assert isinstance(DiskFull("x"), PlaceError)


def test_copy_across_file_systems_places_the_file(tmp_path, small_tmpfs):
    downloaded = tmp_path / "small.nc"
    digest = make_file(downloaded, 200_000)
    final = verify_and_place(downloaded, small_tmpfs, "p/small.nc", digest)
    assert sha256_file(final) == digest
    assert final.stat().st_ino != downloaded.stat().st_ino
    assert listing(small_tmpfs) == ["p/small.nc"]


async def test_on_complete_gets_the_path(tmp_path, caplog):
    out = tmp_path / "out.txt"
    script = tmp_path / "hook.py"
    script.write_text(f"import os\nopen({str(out)!r}, 'w').write(os.environ['MUPPET_SYNC_FILE'])\n")
    status = await run_on_complete(f"{sys.executable} {script}", tmp_path / "data" / "f.nc")
    assert status == 0
    assert out.read_text() == str(tmp_path / "data" / "f.nc")


async def test_on_complete_failures_are_logged_not_raised(tmp_path, caplog):
    assert await run_on_complete("", tmp_path) is None
    status = await run_on_complete(f"{sys.executable} -c 'import sys; sys.exit(3)'", tmp_path / "f.nc")
    assert status == 3
    assert await run_on_complete(str(tmp_path / "no-such-command"), tmp_path / "f.nc") is None
    assert await run_on_complete("'unbalanced", tmp_path / "f.nc") is None
    messages = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("exited with 3" in m for m in messages), messages
    assert any("cannot start" in m for m in messages), messages
    assert any("cannot parse" in m for m in messages), messages
