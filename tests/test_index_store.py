"""The index in the database: writes (muppet/index/write.py through
Store.write) and queries (muppet/index/queries.py), on SQLite and a real
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from muppet.db import reads, writes
from muppet.db.store import open_store
from muppet.index import queries
from muppet.messages import (
    CONFLICT,
    NOT_FOUND,
    DefineIndex,
    DeleteFiles,
    IndexWritten,
    NewFile,
    RegisterFiles,
    SetTorrent,
)
from muppet.model import DataFormat, Product, ServiceBackend

T0 = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
T6 = T0 + timedelta(hours=6)
HASH = "ab" * 32

PRODUCTS = (
    Product("arome", "AROME", contact="ops", file_count=2, operational=True,
            metadata={"projection": "lambert", "time_steps": 67}),
    Product("ecmwf", "ECMWF", file_count=1, lifetime_hours=72.0),
    Product("arome-pp", "AROME post-processed", parents=("arome",), file_count=1),
)
FORMATS = (DataFormat("netcdf", "NetCDF"), DataFormat("grib", "GRIB"))
BACKENDS = (
    ServiceBackend("lustre-a", "Lustre A", "file:///lustre/a"),
    ServiceBackend("thredds-1", "THREDDS 1", "https://thredds-1.example/fileServer"),
)


def nf(name: str, product: str = "arome", when: datetime = T0, backend: str = "lustre-a", **kw) -> NewFile:
    base = "file:///lustre/a" if backend == "lustre-a" else "https://thredds-1.example/fileServer"
    return NewFile(
        product=product, reference_time=when, backend=backend, format=kw.pop("format", "netcdf"),
        url=f"{base}/{product}/{name}", size=kw.pop("size", 100), hash=kw.pop("hash", HASH), **kw,
    )


@pytest.fixture
def store(database_url):
    store = open_store(database_url)
    writes.write(store, [DefineIndex(PRODUCTS, FORMATS, BACKENDS)])
    yield store
    store.close()


def register(store, *files, **kw) -> IndexWritten:
    committed = writes.write(store, [RegisterFiles(tuple(files), **kw)])
    (written,) = committed.index
    assert isinstance(written, IndexWritten)
    return written


def events(store, after=0, **kw):
    return queries.events_since(store, after, **kw)


# --- definitions -------------------------------------------------------------------


def test_definitions_round_trip_and_repeat_without_events(store):
    page = queries.list_products(store)
    assert [p["slug"] for p in page["items"]] == ["arome", "arome-pp", "ecmwf"]
    assert queries.get_product(store, "arome") == PRODUCTS[0]
    assert queries.list_formats(store) == [{"slug": "grib", "name": "GRIB"}, {"slug": "netcdf", "name": "NetCDF"}]
    assert queries.list_backends(store)[0] == {"slug": "lustre-a", "name": "Lustre A", "url": "file:///lustre/a"}
    before = reads.last_event_id(store)
    assert [e["kind"] for e in events(store)] == ["product"] * 3 + ["format"] * 2 + ["backend"] * 2
    # a daemon restarting with the same configuration adds nothing to the log
    (written,) = writes.write(store, [DefineIndex(PRODUCTS, FORMATS, BACKENDS)]).index
    assert written.result == {"products": [], "formats": [], "backends": []}
    assert reads.last_event_id(store) == before
    changed = Product("ecmwf", "ECMWF HRES", file_count=1, lifetime_hours=72.0)
    (written,) = writes.write(store, [DefineIndex(products=(changed,))]).index
    assert [p["name"] for p in written.result["products"]] == ["ECMWF HRES"]
    (event,) = events(store, before)
    assert (event["kind"], event["product"], event["data"]["name"]) == ("product", "ecmwf", "ECMWF HRES")


def test_products_paginate_by_cursor(store):
    first = queries.list_products(store, limit=2)
    assert [p["slug"] for p in first["items"]] == ["arome", "arome-pp"] and first["next"] == "arome-pp"
    second = queries.list_products(store, cursor=first["next"], limit=2)
    assert [p["slug"] for p in second["items"]] == ["ecmwf"] and second["next"] is None


# --- registering --------------------------------------------------------------------


def test_register_makes_instance_data_and_files_and_completes(store):
    written = register(store, nf("a.nc", variables=("t2m",), time_begin=T0, time_end=T6))
    (item,) = written.result["files"]
    assert item["product"] == "arome" and item["version"] == 1 and item["reference_time"] == "2026-11-28T00:00:00Z"
    assert item["variables"] == ["t2m"] and item["time_end"] == "2026-11-28T06:00:00Z"
    assert item["hash"] == HASH and not item["deleted"] and written.completed == ()
    assert queries.latest_instance(store, "arome", complete=True) is None
    written = register(store, nf("b.nc"))
    (completed,) = written.completed
    assert (completed.product, completed.reference_time, completed.version) == ("arome", T0, 1)
    assert completed.complete_products == {"arome"}
    latest = queries.latest_instance(store, "arome", complete=True)
    assert latest["id"] == completed.instance_id and latest["completed_at"] is not None
    kinds = [(e["kind"], e["product"]) for e in events(store) if e["kind"] in ("instance", "file")]
    assert kinds == [("instance", "arome"), ("file", "arome"), ("file", "arome"), ("instance", "arome")]
    # completing fires once per instance version: more files do not again
    assert register(store, nf("c.nc")).completed == ()


def test_complete_products_name_the_others_at_the_same_reference_time(store):
    register(store, nf("e.grb", product="ecmwf", format="grib"))
    register(store, nf("a.nc"))
    (completed,) = register(store, nf("b.nc")).completed
    assert completed.complete_products == {"arome", "ecmwf"}


def test_a_file_registered_again_replaces_its_record_in_the_same_version(store):
    """docs/index.md, "Versions": registering a file again at its URL keeps
    the instance version and supersedes the old record (deleted, with an
    event, in the same transaction)."""
    first = register(store, nf("a.nc"), nf("b.nc")).result["files"]
    assert {f["version"] for f in first} == {1}
    complete = queries.latest_instance(store, "arome", complete=True)
    copy = register(store, nf("a.nc", backend="thredds-1", format="netcdf")).result["files"][0]
    assert copy["version"] == 1 and copy["data_id"] == first[0]["data_id"]
    assert [c["backend"] for c in queries.copies(store, first[0]["data_id"])] == ["lustre-a", "thredds-1"]
    before = reads.last_event_id(store)
    again = register(store, nf("a.nc", hash="cd" * 32)).result["files"][0]
    assert again["version"] == 1 and again["instance_id"] == first[0]["instance_id"]
    assert again["data_id"] == first[0]["data_id"] and again["hash"] == "cd" * 32
    old = queries.get_file(store, first[0]["id"])
    assert old["deleted"] and old["superseded_by"] == again["id"]
    # the old record's event first, then the new one's
    assert [(e["kind"], e["subject_id"], e["data"]["deleted"]) for e in events(store, before)] == [
        ("file", first[0]["id"], True), ("file", again["id"], False)]
    assert events(store, before)[0]["data"]["reason"] == f"superseded by file {again['id']}"
    # the instance holds two live files on lustre-a still: complete, the same one
    assert queries.latest_instance(store, "arome", complete=True)["id"] == complete["id"]
    live = [f for f in queries.list_files(store, complete["id"])["items"] if f["backend"] == "lustre-a"]
    assert sorted(f["name"] for f in live) == ["arome/a.nc", "arome/b.nc"]
    # the copy on thredds-1 is another URL: untouched
    assert not queries.get_file(store, copy["id"])["deleted"]


def test_a_new_version_only_when_asked(store):
    register(store, nf("a.nc"))
    newer = writes.write(store, [RegisterFiles((nf("a.nc"), nf("b.nc")), new_version=True)]).index[0]
    assert {f["version"] for f in newer.result["files"]} == {2}
    assert queries.latest_instance(store, "arome")["version"] == 2
    explicit = register(store, nf("z.nc", version=1)).result["files"][0]
    assert explicit["version"] == 1


def test_the_outputs_of_one_run_make_one_version_and_a_new_run_a_new_one(store):
    def from_run(run_id, *files):
        return writes.write(store, [RegisterFiles(tuple(files), run_id=run_id)]).index[0].result["files"]

    register(store, nf("by-hand.nc"))  # version 1, by hand
    (a,) = from_run(7, nf("a.nc"))
    (b,) = from_run(7, nf("b.nc"))  # another job of run 7
    (a_again,) = from_run(7, nf("a.nc", hash="cd" * 32))  # a rerun inside run 7
    assert a["version"] == b["version"] == a_again["version"] == 2
    assert queries.get_file(store, a["id"])["superseded_by"] == a_again["id"]
    (c,) = from_run(8, nf("a.nc"))  # a new run
    assert c["version"] == 3


def test_completeness_per_backend_and_format(store):
    register(store, nf("a.nc"), nf("b.nc"), nf("a.nc", backend="thredds-1"))
    instance = queries.latest_instance(store, "arome")
    assert queries.completeness(store, instance["id"]) == [
        {"backend": "lustre-a", "format": "netcdf", "files": 2, "file_count": 2, "complete": True},
        {"backend": "thredds-1", "format": "netcdf", "files": 1, "file_count": 2, "complete": False},
    ]
    assert queries.latest_instance(store, "arome", complete=True, backend="thredds-1") is None
    latest = queries.latest_instance(store, "arome", complete=True, backend="lustre-a", format="netcdf")
    assert latest["id"] == instance["id"]
    assert queries.latest_instance(store, "arome", complete=True, format="grib") is None


def test_partial_files_do_not_count(store):
    register(store, nf("a.nc"), nf("b.nc", partial=True))
    assert queries.latest_instance(store, "arome", complete=True) is None


@pytest.mark.parametrize("bad, code, words", [
    (nf("a.nc", product="nope"), NOT_FOUND, "unknown product 'nope'"),
    (nf("a.nc", backend="nope"), NOT_FOUND, "unknown service backend 'nope'"),
    (nf("a.nc", format="nope"), NOT_FOUND, "unknown format 'nope'"),
    (nf("a.nc", data_id=999), NOT_FOUND, "unknown data_id 999"),
])
def test_a_refused_registration_writes_nothing(store, bad, code, words):
    before = reads.last_event_id(store)
    written = register(store, nf("ok.nc"), bad)
    assert written.code == code and words in written.error and "file 1" in written.error
    assert reads.last_event_id(store) == before
    assert queries.latest_instance(store, "arome") is None


def test_refusal_does_not_fail_the_rest_of_the_batch(store):
    persisted = writes.write(store, [
        RegisterFiles((nf("x.nc", product="nope"),)),
        RegisterFiles((nf("a.nc"),)),
    ])
    refused, done = persisted.index
    assert refused.error and done.error is None and done.result["files"][0]["url"].endswith("a.nc")


def test_data_id_must_belong_to_the_same_product_and_time(store):
    (first,) = register(store, nf("a.nc")).result["files"]
    written = register(store, nf("a.nc", product="ecmwf", backend="thredds-1", data_id=first["data_id"]))
    assert written.code == CONFLICT


def test_step_outputs_define_unknown_formats(store):
    written = register(store, nf("a.txt", format="txt"), define_formats=True)
    assert written.error is None
    assert {"slug": "txt", "name": "txt"} in queries.list_formats(store)


def test_lifetime_gives_expiry(store):
    (item,) = register(store, nf("e.grb", product="ecmwf", format="grib")).result["files"]
    expires = datetime.fromisoformat(item["expires"].replace("Z", "+00:00"))
    assert timedelta(hours=71) < expires - datetime.now(UTC) <= timedelta(hours=72)


# --- deleting, expiring, torrents ----------------------------------------------------


def test_delete_by_id_and_expiry(store):
    past, future = T0 - timedelta(days=1), T0 + timedelta(days=1)
    files = register(store, nf("a.nc", expires=past), nf("b.nc", expires=future)).result["files"]
    assert [f["id"] for f in queries.expiring(store, T0)["items"]] == [files[0]["id"]]
    (written,) = writes.write(store, [DeleteFiles(expired_at=T0, reason="expired")]).index
    assert written.result == {"deleted": [files[0]["id"]]}
    assert written.deleted_paths == ("/lustre/a/arome/a.nc",)
    event = events(store, kinds=["file"])[-1]
    assert event["data"]["deleted"] and event["data"]["reason"] == "expired"
    # again: nothing more to do, no second event
    before = reads.last_event_id(store)
    (again,) = writes.write(store, [DeleteFiles(expired_at=T0)]).index
    assert again.result == {"deleted": []} and reads.last_event_id(store) == before
    assert queries.latest_instance(store, "arome", complete=True) is None  # one file left
    (bad,) = writes.write(store, [DeleteFiles(ids=(files[1]["id"], 9999))]).index
    assert bad.code == NOT_FOUND and "9999" in bad.error
    (ok,) = writes.write(store, [DeleteFiles(ids=(files[1]["id"],))]).index
    assert ok.result == {"deleted": [files[1]["id"]]}
    assert queries.list_files(store, files[0]["instance_id"])["items"] == []
    assert len(queries.list_files(store, files[0]["instance_id"], include_deleted=True)["items"]) == 2


def test_set_torrent(store):
    (item,) = register(store, nf("a.nc")).result["files"]
    (written,) = writes.write(store, [SetTorrent(item["id"], "AA" * 20, "ZGF0YQ==", peer="10.0.0.1:6881")]).index
    assert written.result["info_hash"] == "aa" * 20 and written.result["peer"] == "10.0.0.1:6881"
    (kept,) = writes.write(store, [SetTorrent(item["id"], "AA" * 20, "ZGF0YQ==")]).index
    assert kept.result["peer"] == "10.0.0.1:6881"
    (copy,) = register(store, nf("a.nc", backend="thredds-1", data_id=item["data_id"],
                                 info_hash="bb" * 20, peer="10.0.0.2:6881")).result["files"]
    assert (copy["info_hash"], copy["peer"]) == ("bb" * 20, "10.0.0.2:6881")
    assert queries.get_file(store, item["id"], torrent=True)["torrent"] == "ZGF0YQ=="
    (missing,) = writes.write(store, [SetTorrent(999, "aa" * 20, "x")]).index
    assert missing.code == NOT_FOUND


# --- listings ------------------------------------------------------------------------------


def test_instances_window_and_pagination(store):
    for day in range(3):
        for hour in (0, 12):
            register(store, nf("a.nc", when=T0 + timedelta(days=day, hours=hour)))
    everything = queries.list_instances(store, "arome", limit=1000)["items"]
    assert [i["reference_time"][5:13] for i in everything] == [
        "11-30T12", "11-30T00", "11-29T12", "11-29T00", "11-28T12", "11-28T00"]
    window = queries.list_instances(store, "arome", begin=T0 + timedelta(days=1), end=T0 + timedelta(days=2))
    assert [i["reference_time"][5:13] for i in window["items"]] == ["11-29T12", "11-29T00"]
    seen, cursor = [], None
    while True:
        page = queries.list_instances(store, "arome", cursor=cursor, limit=4)
        seen += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == everything
    with pytest.raises(queries.BadCursor):
        queries.list_instances(store, "arome", cursor="garbage")


def test_files_filter_and_paginate(store):
    register(store, *(nf(f"{i}.nc") for i in range(5)), nf("x.grb", format="grib"),
             nf("0.nc", backend="thredds-1"))
    instance = queries.latest_instance(store, "arome")["id"]
    assert len(queries.list_files(store, instance)["items"]) == 7
    assert len(queries.list_files(store, instance, backend="lustre-a", format="netcdf")["items"]) == 5
    first = queries.list_files(store, instance, limit=3)
    rest = queries.list_files(store, instance, cursor=first["next"], limit=100)
    assert [f["id"] for f in first["items"] + rest["items"]] == sorted(
        f["id"] for f in queries.list_files(store, instance)["items"])


def test_events_filter_by_kind_and_product(store):
    register(store, nf("a.nc"), nf("e.grb", product="ecmwf", format="grib"))
    ecmwf = events(store, products=["ecmwf"])
    assert {e["product"] for e in ecmwf} == {"ecmwf"} and {e["kind"] for e in ecmwf} >= {"file", "instance"}
    files = events(store, kinds=["file"], products=["arome", "ecmwf"])
    assert [e["data"]["url"].rsplit("/", 1)[1] for e in files] == ["a.nc", "e.grb"]
    numbers = [e["id"] for e in events(store)]
    assert numbers == list(range(1, len(numbers) + 1))  # gap-free


def test_a_retried_batch_returns_the_same_committed_copy(store):
    change = RegisterFiles((nf("a.nc"),))
    first = writes.write(store, [change], token="batch-1")
    before = reads.last_event_id(store)
    again = writes.write(store, [change], token="batch-1")
    assert again.index == first.index and reads.last_event_id(store) == before
    assert len(queries.list_files(store, first.index[0].result["files"][0]["instance_id"])["items"]) == 1
