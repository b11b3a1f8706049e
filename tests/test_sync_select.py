"""The sans-I/O core of muppet-sync (sync.select): which files a seeder or a
consumer takes and releases. No Trio, no daemon: file records and times in,
actions out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest

from sync.config import Select
from sync.select import AddPeer, FileRef, Release, Selection, Take

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def ref(hour: int) -> datetime:
    return datetime(2026, 12, 1, hour, tzinfo=UTC)


def a_file(id: int, *, data_id: int | None = None, product="arome", hour=0, backend="lustre-a",
           format="netcdf", info_hash: str | None = "ab" * 20, peer: str | None = "10.0.0.1:6881",
           expires: datetime | None = NOW + timedelta(days=1), **more) -> FileRef:
    return FileRef(
        id=id, data_id=data_id if data_id is not None else id, product=product, reference_time=ref(hour),
        version=1, name=f"{product}_{hour:02d}_{id}.nc", url=f"file:///lustre/{product}_{id}.nc",
        format=format, backend=backend, size=10, hash_type="sha256", hash="cd" * 32,
        expires=expires, info_hash=info_hash, peer=peer, **more,
    )


def consumer(recent=2, **select) -> Selection:
    return Selection([Select(products=("arome",), recent=recent, **select)], own_backend="thredds-1",
                     need_torrent=True)


def test_a_selected_file_is_taken_once_and_other_copies_add_peers():
    selection = consumer()
    original = a_file(1)
    assert selection.offer(original, NOW) == [Take(original)]
    assert selection.offer(original, NOW) == []  # a replayed event
    other_copy = a_file(2, data_id=1, backend="thredds-2", peer="10.0.0.2:6881")
    assert selection.offer(other_copy, NOW) == [AddPeer(1, "ab" * 20, "10.0.0.2:6881")]
    assert selection.offer(other_copy, NOW) == []


def test_rules_product_format_backend():
    selection = Selection([Select(products=("arome",), recent=5, formats=("grib",), backend="lustre-a")])
    assert selection.offer(a_file(1, product="ecmwf"), NOW) == []
    assert selection.offer(a_file(2, format="netcdf"), NOW) == []
    assert selection.offer(a_file(3, format="grib", backend="lustre-b"), NOW) == []
    wanted = a_file(4, format="grib")
    assert selection.offer(wanted, NOW) == [Take(wanted)]
    # several [[select]] tables: any one selects
    both = Selection([Select(products=("a",), recent=1), Select(products=("b",), recent=3)])
    assert both.products == ("a", "b")
    assert both.recent("b") == 3
    assert both.offer(a_file(5, product="b"), NOW)


def test_a_consumer_waits_for_the_torrent_a_seeder_does_not():
    selection = consumer()
    bare = a_file(1, info_hash=None, peer=None)
    assert selection.offer(bare, NOW) == []
    with_torrent = attrs.evolve(bare, info_hash="ef" * 20, peer="10.0.0.1:6881")
    assert selection.offer(with_torrent, NOW) == [Take(with_torrent)]
    seeder = Selection([Select(products=("arome",), recent=2)])
    assert seeder.offer(bare, NOW) == [Take(bare)]


def test_the_recent_window_releases_the_oldest_reference_time():
    selection = consumer(recent=2)
    first, second = a_file(1, hour=0), a_file(2, hour=6)
    assert selection.offer(first, NOW) == [Take(first)]
    assert selection.offer(second, NOW) == [Take(second)]
    third = a_file(3, hour=12)
    actions = selection.offer(third, NOW)
    assert actions == [Release(first, "older than the 2 most recent reference times of arome"), Take(third)]
    # a late file of the dropped reference time is not taken, nor the released one again
    assert selection.offer(a_file(4, hour=0), NOW) == []
    assert selection.offer(first, NOW) == []
    assert selection.cutoff("arome") == ref(6)


def test_catch_up_in_any_order_keeps_the_newest():
    selection = consumer(recent=2)
    taken = []
    for hour in (12, 0, 6, 18):
        for action in selection.offer(a_file(hour + 100, hour=hour), NOW):
            taken.append((type(action).__name__, action.file.reference_time.hour))
    assert taken == [("Take", 12), ("Take", 0), ("Release", 0), ("Take", 6), ("Release", 6), ("Take", 18)]
    assert sorted(h.file.reference_time.hour for h in selection.held.values()) == [12, 18]


def test_expiry_and_deletion_release():
    selection = consumer()
    soon = a_file(1, expires=NOW + timedelta(minutes=5))
    later = a_file(2)
    selection.offer(soon, NOW)
    selection.offer(later, NOW)
    assert selection.expire(NOW) == []
    assert selection.expire(NOW + timedelta(minutes=5)) == [Release(soon, "expired")]
    # an already expired file is never taken
    assert selection.offer(a_file(3, expires=NOW - timedelta(seconds=1)), NOW) == []
    # the source deleted in the index
    assert selection.offer(attrs.evolve(later, deleted=True), NOW) == [Release(later, "deleted in the index")]
    assert selection.held == {}


def test_a_file_registered_again_is_taken_afresh():
    """docs/index.md, "Versions": the old record is superseded (its event
    first), then the new record of the same Data comes and is taken."""
    selection = consumer()
    old = a_file(1)
    selection.offer(old, NOW)
    superseded = attrs.evolve(old, deleted=True, superseded_by=2)
    assert selection.offer(superseded, NOW) == [Release(old, "superseded in the index")]
    new = attrs.evolve(a_file(2, data_id=1), hash="ef" * 32)
    assert selection.offer(new, NOW) == [Take(new)]
    # a file deleted for good is not taken again
    assert selection.offer(attrs.evolve(new, deleted=True), NOW) == [Release(new, "deleted in the index")]
    assert selection.offer(a_file(3, data_id=1), NOW) == []


def test_a_deleted_copy_elsewhere_does_not_release_while_the_source_lives():
    selection = consumer()
    source = a_file(1)
    selection.offer(source, NOW)
    other = a_file(2, data_id=1, backend="thredds-2", peer="10.0.0.2:6881")
    selection.offer(other, NOW)
    assert selection.offer(attrs.evolve(other, deleted=True), NOW) == []
    assert 1 in selection.held


def test_own_copy_deleted_in_the_index_releases():
    selection = consumer()
    source = a_file(1)
    selection.offer(source, NOW)
    own = a_file(5, data_id=1, backend="thredds-1")
    assert selection.offer(own, NOW) == []  # never a source of itself
    assert selection.offer(attrs.evolve(own, deleted=True), NOW) == [
        Release(source, "its copy on this host was deleted in the index")
    ]


def test_own_copy_registered_again_at_its_url_is_kept():
    # files.register retried after a lost connection: the index supersedes
    # the first record by the second, both on this host's backend
    selection = consumer()
    source = a_file(1)
    selection.offer(source, NOW)
    own = a_file(5, data_id=1, backend="thredds-1")
    assert selection.offer(attrs.evolve(own, deleted=True, superseded_by=6), NOW) == []
    assert 1 in selection.held
    assert selection.offer(attrs.evolve(own, id=6), NOW) == []
    assert selection.offer(attrs.evolve(own, id=6, deleted=True), NOW) == [
        Release(source, "its copy on this host was deleted in the index")
    ]


def test_partial_files_and_unselected_deletions_are_ignored():
    selection = consumer()
    assert selection.offer(a_file(1, partial=True), NOW) == []
    assert selection.offer(a_file(2, deleted=True), NOW) == []


def test_restore_then_expire_after_a_restart():
    selection = consumer()
    held = a_file(1, expires=NOW - timedelta(hours=1))  # expired while the process was down
    selection.restore(held)
    assert selection.offer(held, NOW) == [Release(held, "expired")]
    selection = consumer()
    selection.restore(held)
    assert selection.expire(NOW) == [Release(held, "expired")]


def test_forget_gives_a_file_up_for_good():
    selection = consumer()
    file = a_file(1)
    selection.offer(file, NOW)
    assert selection.forget(1, "hash mismatch") == Release(file, "hash mismatch")
    assert selection.forget(1, "again") is None
    assert selection.offer(file, NOW) == []


def test_file_records_round_trip_the_api_shape():
    api = {
        "id": 7, "data_id": 3, "instance_id": 2, "product": "arome", "reference_time": "2026-12-01T06:00:00Z",
        "version": 2, "name": "a/b.nc", "url": "file:///lustre/a/b.nc", "format": "netcdf",
        "backend": "lustre-a", "size": 5, "hash_type": "sha256", "hash": "00" * 32,
        "expires": "2026-12-04T06:00:00.000Z", "deleted": False, "partial": False, "info_hash": None,
        "time_begin": None, "time_end": None, "variables": ["t2m"], "created_at": "x", "peer": None,
    }
    file = FileRef.from_api(api)
    assert file.reference_time == ref(6) and file.version == 2 and file.variables == ("t2m",)
    back = file.to_api()
    assert FileRef.from_api(back) == file
    # the index's own spelling (muppet.codec): whole seconds, UTC, a Z
    assert back["reference_time"] == "2026-12-01T06:00:00Z"
    assert back["expires"] == "2026-12-04T06:00:00Z"
    with pytest.raises(KeyError):
        FileRef.from_api({"id": 1})
    with pytest.raises(KeyError):
        FileRef.from_api({**api, "reference_time": None})
    # another zone is the same moment
    assert FileRef.from_api({**api, "reference_time": "2026-12-01T07:00:00+01:00"}).reference_time == ref(6)


@pytest.mark.parametrize("field", ["reference_time", "expires", "time_begin", "time_end"])
def test_a_time_without_a_zone_is_refused_naming_the_field(field):
    api = {
        "id": 7, "data_id": 3, "product": "arome", "reference_time": "2026-12-01T06:00:00Z",
        "version": 2, "name": "a/b.nc", "url": "file:///lustre/a/b.nc", "format": "netcdf",
        "backend": "lustre-a", "size": 5, "hash": "00" * 32,
        field: "2026-12-01T06:00:00",  # local time? UTC? the index never writes this
    }
    with pytest.raises(ValueError) as caught:
        FileRef.from_api(api)
    assert str(caught.value) == (
        f"the index: file 7: {field}: '2026-12-01T06:00:00' has no time zone; "
        "give it in UTC with a Z (2026-12-01T06:00:00Z) or with an offset"
    )
    with pytest.raises(ValueError, match=f"^state/state.json: file 7: {field}: not an ISO 8601 time: 'soon'$"):
        FileRef.from_api({**api, field: "soon"}, origin="state/state.json")


def fetch_config(tmp_path, layout="{product}/{reference_time:%Y/%m/%d}/{filename}"):
    from sync.config import parse_fetch_config

    return parse_fetch_config({
        "api": "ws://127.0.0.1:1", "state_dir": str(tmp_path / "state"), "data_dir": str(tmp_path / "data"),
        "layout": layout, "backend": "thredds-1", "select": [{"products": ["arome"], "recent": 1}],
    }, "fetch.toml")


@pytest.mark.parametrize("name", ["../../etc/cron.d/evil", "/etc/passwd", "a/../../b.nc", "a//b.nc"])
def test_a_name_from_the_index_that_would_escape_data_dir_is_refused(tmp_path, name):
    from types import SimpleNamespace

    from sync.fetch import Fetcher
    from sync.run import Stop

    fetcher = SimpleNamespace(config=fetch_config(tmp_path))
    with pytest.raises(Stop, match="refused"):
        Fetcher.relative_path(fetcher, attrs.evolve(a_file(1), name=name))
    placed = Fetcher.relative_path(fetcher, attrs.evolve(a_file(1), name="arome/2026/x.nc"))
    assert str(placed) == "arome/2026/12/01/x.nc"


def test_progress_bars_draw_under_the_log_and_wipe_themselves():
    import io
    import logging

    from sync.progress import BarsLogHandler, ProgressBars, bar_line

    row = {"name": "arome/2026/arome_00.nc", "state": "downloading", "progress": 0.5,
           "download_rate": 12_300_000, "peers": 3}
    line = bar_line(row, 80)
    assert line.startswith("arome_00.nc ") and "50%" in line and "12.3 MB/s" in line and " 3 peers" in line
    bar = line[line.index("[") + 1:line.index("]")]
    assert set(bar) == {"#", "-"} and bar.count("#") == len(bar) // 2
    assert len(line) <= 80
    assert bar_line({**row, "state": "queued", "progress": 0.0}, 80).endswith(" queued")

    stream = io.StringIO()
    bars = ProgressBars(stream)
    seeding = {**row, "name": "done.nc", "state": "seeding", "progress": 1.0}
    bars.update({"files": [row, seeding]})
    assert stream.getvalue().count("\n") == 1  # only the file still downloading has a bar
    handler = BarsLogHandler(bars)
    handler.emit(logging.LogRecord("muppet.sync", logging.INFO, "x", 1, "placed %s", ("x.nc",), None))
    out = stream.getvalue()
    # the bar wiped (cursor up one line, erase), the log line, the bar again
    assert out.endswith("\x1b[1F\x1b[Jplaced x.nc\n" + bar_line(row, bars_width()) + "\n")
    bars.clear()
    assert stream.getvalue().endswith("\x1b[1F\x1b[J")


def bars_width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 20)).columns - 1
