"""What a seeder's first catch-up removes from its engine: only torrents
restored from resume data that nothing wants any more, never one the
catch-up's own work has just handed to the engine (a real libtorrent
session; the index is not needed, nothing here asks it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from services import free_port
from waiting import wait_until_async

from sync.config import load_seed_config
from sync.engine import open_engine
from sync.engine_settings import EngineSettings
from sync.follow import IndexLink
from sync.seed import Seeder
from sync.select import Selection
from sync.state import load_state
from sync.torrent import make_torrent

pytestmark = pytest.mark.timeout(120)


async def test_first_catch_up_removes_only_restored_unwanted_torrents(tmp_path: Path) -> None:
    released, new = tmp_path / "released.nc", tmp_path / "new.nc"
    for path in (released, new):
        path.write_bytes(os.urandom(300_000))
    config_path = tmp_path / "seed.toml"
    config_path.write_text(
        f'api = "ws://127.0.0.1:{free_port()}"\nstate_dir = "state"\nlisten = "127.0.0.1:0"\n'
        '[[select]]\nproducts = ["arome"]\nrecent = 2\n'
    )
    config = load_seed_config(config_path)
    settings = EngineSettings.from_config(config)
    # a file seeded in an earlier life and released while the seeder was down:
    # its torrent comes back from the resume data, the state holds nothing
    async with open_engine(settings) as engine:
        released_hash = await engine.seed(released, await trio.to_thread.run_sync(make_torrent, released))
    async with open_engine(settings) as engine:
        assert engine.has(released_hash)
        run = Seeder(config, engine, IndexLink(config.api, None), Selection(config.select),
                     load_state(config.state_dir), "127.0.0.1:1", None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.run)
            await wait_until_async(lambda: run._nursery is not None, 30, "the run going")
            # work of the catch-up: in the engine, not yet recorded as seeded
            new_hash = await engine.seed(new, await trio.to_thread.run_sync(make_torrent, new))
            await run._on_caught_up()
            assert not engine.has(released_hash)
            assert engine.has(new_hash)
            nursery.cancel_scope.cancel()
