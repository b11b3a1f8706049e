"""Expiry in chunks (muppet/index/expiry.py), on SQLite and PostgreSQL: many
due files go in several transactions of the database task, one event each;
a daemon killed between two chunks leaves the rest, which its next pass
finishes, each file once."""

from __future__ import annotations

import json
import math
import textwrap
from datetime import UTC, datetime, timedelta

import pytest
import trio
from test_db import raw  # tests/ is on sys.path
from waiting import wait_until_async

from muppet import daemon
from muppet.config import load_config
from muppet.db import open_store, writes
from muppet.db import task as db_task
from muppet.index import expiry
from muppet.messages import DefineIndex, IndexWrite, NewFile, RegisterFiles
from muppet.model import DataFormat, IndexConfig, Product, ServiceBackend

DUE, LATER, CHUNK = 520, 5, 120
NOW = datetime.now(UTC).replace(microsecond=0)


def _file(name: str, expires: datetime) -> NewFile:
    return NewFile(product="arome", reference_time=NOW.replace(minute=0, second=0), backend="lustre-a",
                   format="netcdf", url=f"file:///lustre/a/arome/{name}", size=1, hash="ab" * 32, expires=expires)


@pytest.fixture
def index(database_url):
    """An index of DUE files past their expiry and LATER ones that are not."""
    with open_store(database_url) as store:
        writes.write(store, [DefineIndex(
            products=(Product("arome", "AROME", file_count=1),),
            formats=(DataFormat("netcdf", "NetCDF"),),
            backends=(ServiceBackend("lustre-a", "Lustre A", "file:///lustre/a"),),
        )])
        files = [_file(f"due{n}.nc", NOW - timedelta(hours=1) + timedelta(seconds=n)) for n in range(DUE)]
        files += [_file(f"later{n}.nc", NOW + timedelta(days=3)) for n in range(LATER)]
        writes.write(store, [RegisterFiles(tuple(files))])
    return database_url


def _deletions(url: str) -> list[int]:
    """The file of each deletion event, in the log's order."""
    rows = raw(url, "SELECT payload FROM events WHERE kind = 'file' ORDER BY id")
    return [data["id"] for data in map(json.loads, (row[0] for row in rows)) if data["deleted"]]


def _present(url: str) -> int:
    return raw(url, "SELECT COUNT(*) FROM data_instances WHERE deleted = 0")[0][0]


async def _expire(url: str, *, die_after: int | None = None) -> tuple[list[int], list[int]]:
    """One pass of expiry against a real database task, in chunks of CHUNK:
    what it deleted, and each chunk's size. With ``die_after``, everything
    stops once that many chunks are committed, as a daemon killed then."""
    chunks: list[int] = []
    deleted: list[int] = []
    with open_store(url) as store:
        to_db, inbox = trio.open_memory_channel(10)
        to_scheduler, _ = trio.open_memory_channel(math.inf)
        asked, asks = trio.open_memory_channel(10)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    async for message in asks:
                        assert message.change.limit == CHUNK
                        reply, replies = trio.open_memory_channel(1)
                        await to_db.send(IndexWrite(message.change, reply))
                        written = await replies.receive()
                        chunks.append(len(written.result["deleted"]))
                        if len(chunks) == die_after:
                            nursery.cancel_scope.cancel()  # before its answer: the pass stops here
                        message.reply.send_nowait(written)

                nursery.start_soon(db_task.run, store, inbox, to_scheduler)
                nursery.start_soon(watch)
                deleted = await expiry.expire_once(IndexConfig(), asked, NOW, chunk=CHUNK)
                nursery.cancel_scope.cancel()
    return deleted, chunks


async def test_many_due_files_expire_in_several_transactions(index):
    deleted, chunks = await _expire(index)
    assert chunks == [120, 120, 120, 120, 40]
    assert len(deleted) == len(set(deleted)) == DUE
    assert sorted(_deletions(index)) == sorted(deleted), "one event per file"
    assert _present(index) == LATER


async def test_a_daemon_killed_between_chunks_finishes_the_rest_at_its_next_pass(index, tmp_path, nursery,
                                                                                   monkeypatch):
    _, chunks = await _expire(index, die_after=2)
    assert chunks == [120, 120]
    assert _present(index) == DUE + LATER - 240
    # the next daemon's expiry, in the same chunks
    monkeypatch.setattr(expiry, "CHUNK", CHUNK)
    (tmp_path / "muppet.toml").write_text(textwrap.dedent(f"""
        [daemon]
        database = "{index}"
        state_dir = "{tmp_path}/state"
        [api]
        listen = "127.0.0.1:0"
        [web]
        listen = ""
        [index]
        expiry_interval = 0.2
    """))
    await nursery.start(daemon.serve, load_config(tmp_path / "muppet.toml"))
    await wait_until_async(lambda: _present(index) == LATER, 60, "every due file expired")
    deletions = _deletions(index)
    assert len(deletions) == len(set(deletions)) == DUE, "each file once, none twice"
