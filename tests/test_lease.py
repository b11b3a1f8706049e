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

import trio
from waiting import wait_until_async  # tests/ is on sys.path

from muppet.api.client import connect
from muppet.db import reads
from muppet.db.store import open_store

MUPPET = [sys.executable, "-m", "muppet.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


async def _answers(url: str) -> bool:
    try:
        async with connect(url) as client:
            await client.call("daemon.status")
            return True
    except Exception:
        return False


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
        await wait_until_async(lambda: _answers(f"ws://127.0.0.1:{first_port}"), 60, "the first daemon")
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
    await wait_until_async(lambda: _answers(f"ws://127.0.0.1:{port}"), 60, "the first daemon")
    os.kill(first.pid, signal.SIGKILL)
    await first.wait()
    second = await start_daemon(config, tmp_path / "b.log")
    try:
        await wait_until_async(
            lambda: _answers(f"ws://127.0.0.1:{port}"), 60, "the second daemon",
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
