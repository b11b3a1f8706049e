"""One daemon per database (muppet/db/lease.py): a second `muppet daemon` on
the same database exits 2 naming the holder, before it touches anything; a
holder killed with -9 frees the database; an API address in use is named,
and refused before any other task starts. Real daemon processes on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import trio
import trio.testing
from services import free_port  # tests/ is on sys.path
from waiting import daemon_answers, wait_until, wait_until_async  # tests/ is on sys.path

from muppet.api.client import connect
from muppet.db import reads, writes
from muppet.db.lease import LEASE_KEY, LEASE_TIME, Fence, Lease, LeaseLost, read_standing
from muppet.db.store import Store, open_store
from muppet.messages import Operator, OperatorEvent

MUPPET = [sys.executable, "-m", "muppet.cli"]


def write_config(path: Path, database_url: str, port: int) -> Path:
    path.mkdir(exist_ok=True)
    config = path / "muppet.toml"
    config.write_text(textwrap.dedent(f"""
        [daemon]
        database = "{database_url}"
        state_dir = "{path / 'state'}"
        output_dir = "{path / 'output'}"
        pipelines = []
        [api]
        listen = "127.0.0.1:{port}"
        """))
    return config


async def start_daemon(config: Path, log: Path) -> trio.Process:
    with await trio.to_thread.run_sync(log.open, "wb") as stderr:
        return await trio.lowlevel.open_process([*MUPPET, "daemon", "--config", str(config)], stderr=stderr)


async def stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(30):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_second_daemon_on_the_same_database_exits_2_naming_the_holder(tmp_path, database_url):
    first_port, second_port = free_port(), free_port()
    first = await start_daemon(write_config(tmp_path / "a", database_url, first_port), tmp_path / "a.log")
    try:
        await wait_until_async(lambda: daemon_answers(f"ws://127.0.0.1:{first_port}"), 60, "the first daemon")
        store = await trio.to_thread.run_sync(open_store, database_url)
        try:
            events_before = await trio.to_thread.run_sync(reads.last_event_id, store)
            daemons_before = await trio.to_thread.run_sync(store.query, "SELECT id FROM daemons")
            with trio.fail_after(60):
                second = await trio.run_process(
                    [*MUPPET, "daemon", "--config", str(write_config(tmp_path / "b", database_url, second_port))],
                    check=False, capture_stderr=True,
                )
            # it wrote nothing: no event, no row naming itself
            assert await trio.to_thread.run_sync(reads.last_event_id, store) == events_before
            assert await trio.to_thread.run_sync(store.query, "SELECT id FROM daemons") == daemons_before
        finally:
            store.close()
    finally:
        await stop(first)
    error = second.stderr.decode()
    assert second.returncode == 2, error
    assert f"pid {first.pid}" in error and socket.gethostname() in error, error
    assert f"ws://127.0.0.1:{first_port}" in error and "since 20" in error, error
    assert "one daemon per database" in error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 2, error  # the start line and this


async def test_a_holder_killed_with_9_frees_the_database(tmp_path, database_url):
    port = free_port()
    config = write_config(tmp_path / "a", database_url, port)
    first = await start_daemon(config, tmp_path / "a.log")
    await wait_until_async(lambda: daemon_answers(f"ws://127.0.0.1:{port}"), 60, "the first daemon")
    os.kill(first.pid, signal.SIGKILL)
    await first.wait()
    second = await start_daemon(config, tmp_path / "b.log")
    try:
        await wait_until_async(
            lambda: daemon_answers(f"ws://127.0.0.1:{port}"), 60, "the second daemon",
            detail=lambda: (tmp_path / "b.log").read_text(),
        )
        async with connect(f"ws://127.0.0.1:{port}") as client:
            assert (await client.call("daemon.status"))["version"]
    finally:
        await stop(second)


async def test_an_api_address_in_use_is_named_before_the_database_is_touched(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with trio.fail_after(60):
            done = await trio.run_process(
                [*MUPPET, "daemon", "--config",
                 str(write_config(tmp_path, f"sqlite:///{tmp_path / 'muppet.db'}", port))],
                check=False, capture_stderr=True,
            )
    error = done.stderr.decode()
    assert done.returncode == 1, error
    assert f"cannot listen on ws://127.0.0.1:{port}" in error and "in use" in error, error
    assert "Traceback" not in error and "API listening" not in error, error
    assert not (tmp_path / "muppet.db").exists(), "the database was touched"


# --- the lease's fencing, in one process (docs/operations.md, "Running a standby")


def _claimed(url: str, api: str, lease_time: float = LEASE_TIME) -> tuple[Lease, Store]:
    lease = Lease(url, api, lease_time=lease_time)
    lease.take()
    store = open_store(url)
    lease.claim(store)
    return lease, store


def _drop_lock(lease: Lease) -> None:
    """The holder's lock goes as with its death, its process left as it was."""
    if lease._fd is not None:
        os.close(lease._fd)
        lease._fd = None
    lease._drop_conn()


def _note(text: str) -> OperatorEvent:
    return OperatorEvent("test", Operator("local", text), {})


def test_a_daemon_taken_over_from_commits_nothing_more_and_learns_it_at_its_renewal(database_url):
    first, first_store = _claimed(database_url, "ws://a:1")
    second_store = None
    try:
        writes.write(first_store, [_note("before")], lease=first.mark)
        first.renew()
        _drop_lock(first)
        second, second_store = _claimed(database_url, "ws://b:2")
        assert second.epoch == first.epoch + 1
        events = reads.last_event_id(second_store)
        with pytest.raises(LeaseLost) as lost:
            writes.write(first_store, [_note("after")], lease=first.mark)
        assert "ws://b:2" in str(lost.value) and f"ours was {first.epoch}" in str(lost.value)
        assert reads.last_event_id(second_store) == events, "the fenced write committed something"
        writes.write(second_store, [_note("new holder")], lease=second.mark)
        with pytest.raises(LeaseLost):
            first.renew()
        second.renew()
        standing = read_standing(second_store)
        assert standing.active is not None and standing.active.api == "ws://b:2" and standing.epoch == second.epoch
    finally:
        first_store.close()
        if second_store is not None:
            second_store.close()


@pytest.mark.postgres
def test_a_standby_ends_the_sessions_of_a_holder_that_stopped_renewing(postgres_url):
    first, first_store = _claimed(postgres_url, "ws://a:1", lease_time=1.0)
    standby = Lease(postgres_url, "ws://b:2", lease_time=1.0)
    try:
        assert not standby.try_takeover(), "taken while the lease was fresh"
        assert standby.standing.active is not None and standby.standing.active.api == "ws://a:1"
        # the holder renews no more (stopped, or its host gone): past its lease...
        taken = wait_until(standby.try_takeover, 10, "the standby to take the lock", interval=0.2)
        assert taken
        store = open_store(postgres_url)
        try:
            standby.claim(store)
        finally:
            store.close()
        # ... its sessions were ended: the lock's and the writer's
        with pytest.raises(psycopg.OperationalError):
            first._conn.execute("SELECT 1")
        with pytest.raises(LeaseLost):
            writes.write(first_store, [_note("late")], lease=first.mark)
        with pytest.raises(LeaseLost):
            first.renew()
    finally:
        first_store.close()
        standby.release()
        first.release()


@pytest.mark.postgres
def test_a_lock_held_by_a_session_that_does_not_renew_is_not_broken(postgres_url):
    open_store(postgres_url).close()  # the schema, as an older daemon would have made it
    with psycopg.connect(postgres_url, autocommit=True) as older:
        assert older.execute("SELECT pg_try_advisory_lock(%s)", (LEASE_KEY,)).fetchone()[0]
        standby = Lease(postgres_url, "ws://b:2", lease_time=1.0)
        try:
            for _ in range(3):
                assert not standby.try_takeover()
            older.execute("SELECT 1")  # still alive
        finally:
            standby.release()


async def test_the_fence_holds_the_executor_until_the_lease_is_renewed_and_raises_once_lost():
    now = [100.0]
    fence = Fence(lease_time=5.0, clock=lambda: now[0])
    fence.renewed(100.0)
    await fence.wait_valid()  # fresh: at once
    now[0] = 105.5  # no renewal for longer than the lease: wait
    waited = []

    async def act() -> None:
        await fence.wait_valid()
        waited.append(now[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(act)
        await trio.testing.wait_all_tasks_blocked()
        assert not waited
        fence.renewed(105.4)
    assert waited == [105.5]
    fence.revoke("lost the lease on X: taken over")
    with pytest.raises(LeaseLost, match="taken over"):
        await fence.wait_valid()
