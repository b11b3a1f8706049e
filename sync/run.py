"""What ``muppet-sync seed`` and ``fetch`` share: follow the index, feed the
:class:`~sync.select.Selection`, run one task per taken file, release files
that expire, and keep ``state.json`` and ``status.json`` current.

:class:`SyncRun` is subclassed by :class:`sync.seed.Seeder` and
:class:`sync.fetch.Fetcher`, which say what taking and releasing a file means.
Every taken file's work runs in its own cancel scope inside the run's nursery:
releasing a file cancels its work first (a fetch stopped half-way is removed
with its partial download), then cleans up.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import trio

from muppet.api.protocol import RpcError
from muppet.codec import format_time

from .config import FetchConfig, SeedConfig
from .engine import Engine
from .errors import EngineError
from .follow import IndexLink, follow, parse_peer
from .metrics import EngineFigures, Sample, SyncMetrics
from .select import Action, AddPeer, FileRef, Release, Selection, Take
from .state import (
    RELEASED_SHOWN_SECONDS,
    STATE_FILE,
    FileRow,
    Status,
    StatusRow,
    SyncState,
    encode_state,
    save_state,
    write_status,
)

__all__ = ["Stop", "SyncRun"]

log = logging.getLogger("muppet.sync")

#: how often status.json (and state.json, when changed) is written
STATUS_INTERVAL = 1.0


class Stop(Exception):
    """Give up a file for good (until a restart): the reason is its error."""


#: the command's configuration: a Seeder runs on a SeedConfig, a Fetcher on a FetchConfig
ConfigT = TypeVar("ConfigT", SeedConfig, FetchConfig)


class SyncRun(Generic[ConfigT]):
    role = "sync"

    def __init__(
        self,
        config: ConfigT,
        engine: Engine,
        link: IndexLink,
        selection: Selection,
        state: SyncState,
        peer: str,
        token: str | None,
    ) -> None:
        self.config: ConfigT = config
        self.engine = engine
        self.link = link
        self.selection = selection
        self.state = state
        self.peer = peer
        self.token = token
        self.rows: dict[int, FileRow] = {}
        #: whether the index's event stream is subscribed; if not, why (None: connecting)
        self.connected = False
        self.index_problem: str | None = None
        #: this process's figures for /metrics (sync.web)
        self.metrics = SyncMetrics(self.role)
        self._work: dict[int, tuple[trio.CancelScope, trio.Event]] = {}
        self._dirty = False
        self._cleaned = False
        #: the torrents libtorrent restored from resume data at start: the
        #: only ones the first catch-up may find unwanted (run, _on_caught_up)
        self._restored: frozenset[str] = frozenset()
        self._saving = trio.Lock()
        self._nursery: trio.Nursery | None = None
        #: called with each status as it is written, e.g. progress bars
        self.on_status: list[Callable[[Status], None]] = []

    # --- the run ------------------------------------------------------------

    async def run(self) -> None:
        self._restored = frozenset(status.info_hash for status in await self.engine.status())
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for data_id, record in list(self.state.held.items()):
                file = FileRef.from_api(record["file"], origin=str(self.config.state_dir / STATE_FILE))
                if not await self.still_held(record):
                    # lost while we were down: forgotten, so the catch-up takes it again
                    log.warning("%s: no longer held here (its file or torrent is gone); taking it afresh",
                                file.name)
                    del self.state.held[data_id]
                    self._dirty = True
                    continue
                self.selection.restore(file)
                self.row(file, "seeding", info_hash=record.get("info_hash"), path=record.get("placed"))
            nursery.start_soon(self._status_loop)
            nursery.start_soon(self._expiry_loop)
            nursery.start_soon(
                follow, self.config.api, self.token, self.selection.products, self.selection.recent,
                self.state.position, self._on_file, self._on_connected, self._on_caught_up,
            )
            await self.started()

    async def started(self) -> None:
        """Subclasses: work to do once the run is going (the nursery is open)."""

    async def _on_caught_up(self) -> None:
        # Torrents libtorrent restored from resume data that neither the state
        # nor the catch-up wants any more: files released while we were down.
        # Only restored ones: a torrent the catch-up's own work has just handed
        # to the engine is not in its row yet (a seeder still publishing it),
        # and removing it would leave a file that looks seeded and is not.
        # For the same reason a restored torrent of the same name as a file
        # still being taken is left: that work may be taking it back.
        if self._cleaned:
            return
        self._cleaned = True
        wanted = {r.get("info_hash") for r in self.state.held.values()}
        wanted |= {row.info_hash for data_id, row in self.rows.items() if data_id in self._work}
        taking = {
            os.path.basename(row.name) for data_id, row in self.rows.items()
            if data_id in self._work and not row.info_hash
        }
        for status in await self.engine.status():
            unwanted = status.info_hash in self._restored and status.info_hash not in wanted
            if unwanted and os.path.basename(status.name) not in taking:
                log.info("%s (%s): not wanted any more, removing it", status.name, status.info_hash)
                await self.forget_torrent(status.info_hash)

    async def forget_torrent(self, info_hash: str) -> None:
        """Subclasses: drop a torrent no file holds (a consumer deletes its download)."""
        await self.engine.remove(info_hash)

    def _on_connected(self, up: bool, problem: str | None) -> None:
        if self.connected and not up:
            self.metrics.index_lost()
        self.connected = up
        self.index_problem = problem

    async def _on_file(self, data: dict[str, Any], event_id: int | None) -> None:
        try:
            file = FileRef.from_api(data)
        except (KeyError, ValueError, TypeError) as e:
            log.error("ignoring a malformed file record from the index (%r): %s", e, str(data)[:200])
        else:
            self.apply(self.selection.offer(file, _now()))
        if event_id is not None:
            self.state.position = event_id
            self._dirty = True

    @property
    def _running(self) -> trio.Nursery:
        """The run's nursery: every file's work runs there."""
        if self._nursery is None:
            raise RuntimeError("SyncRun.run() has not started: no nursery for the work")
        return self._nursery

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Take):
                self._start_take(action.file)
            elif isinstance(action, AddPeer):
                if action.peer != self.peer and (address := parse_peer(action.peer)):
                    self._running.start_soon(self.engine.add_peers, action.info_hash, [address],
                                             "a copy in the index's file events")
            elif isinstance(action, Release):
                self._running.start_soon(self._release, action)

    def _start_take(self, file: FileRef) -> None:
        scope, done = trio.CancelScope(), trio.Event()
        self._work[file.data_id] = (scope, done)
        self.row(file, "queued", info_hash=file.info_hash)

        async def work() -> None:
            try:
                with scope:
                    await self.take(file)
            except (Stop, RpcError) as e:
                # RpcError: the index refused a call (a token without the
                # write role, an unknown backend): the message says which
                log.error("%s: %s", file.name, e)
                self.row(file, "error", error=str(e))
                self.selection.forget(file.data_id, str(e))
            except Exception as e:  # one file's failure must not stop the others
                log.exception("%s: unexpected error", file.name)
                self.row(file, "error", error=f"{type(e).__name__}: {e}")
                self.selection.forget(file.data_id, str(e))
            finally:
                done.set()
                self._work.pop(file.data_id, None)

        self._running.start_soon(work)

    async def _release(self, action: Release) -> None:
        file = action.file
        work = self._work.get(file.data_id)
        if work is not None:
            work[0].cancel()
            await work[1].wait()
        log.info("%s (%s %s): releasing: %s", file.name, file.product, format_time(file.reference_time), action.reason)
        record = self.state.held.pop(file.data_id, None)
        self._dirty = True
        try:
            await self.release(file, record, action.reason)
        except Exception as e:
            log.exception("%s: releasing failed", file.name)
            self.row(file, "error", error=f"release failed: {e}")
            return
        state = "error" if self.rows.get(file.data_id) and self.rows[file.data_id].state == "error" else "expired"
        self.row(file, state, error=action.reason, progress=0.0, download_rate=0, upload_rate=0, peers=0)

    # --- for subclasses -----------------------------------------------------

    async def still_held(self, record: dict[str, Any]) -> bool:
        """Whether finished work recorded before a restart is still there."""
        return self.engine.has(record.get("info_hash") or "")

    async def take(self, file: FileRef) -> None:
        raise NotImplementedError

    async def release(self, file: FileRef, record: dict[str, Any] | None, reason: str) -> None:
        raise NotImplementedError

    def record(self, file: FileRef, **fields: Any) -> None:
        """Note finished work for a file in state.json (saved within a second)."""
        self.state.held[file.data_id] = {"file": file.to_api(), **fields}
        self._dirty = True

    async def save_now(self) -> None:
        async with self._saving:  # one writer at a time, snapshots in order
            data = encode_state(self.state)
            self._dirty = False
            await trio.to_thread.run_sync(save_state, self.config.state_dir, data)

    # --- the operator's view ------------------------------------------------

    def row(self, file: FileRef, state: str, **fields: Any) -> FileRow:
        row = self.rows.get(file.data_id)
        if row is None:
            row = self.rows[file.data_id] = FileRow(
                data_id=file.data_id, product=file.product, reference_time=format_time(file.reference_time),
                name=file.name, size=file.size,
            )
        if row.state != state:
            row.since = time.time()
        row.state = state
        if state not in ("error", "expired"):
            row.error = None
        for key, value in fields.items():
            setattr(row, key, value)
        return row

    async def _status_loop(self) -> None:
        while True:
            await self._write_status()
            await trio.sleep(STATUS_INTERVAL)

    async def _write_status(self) -> None:
        by_hash = {s.info_hash: s for s in await self.engine.status()}
        now = time.time()
        for data_id, row in list(self.rows.items()):
            if row.state in ("expired",) and now - row.since > RELEASED_SHOWN_SECONDS:
                del self.rows[data_id]
                continue
            torrent = by_hash.get(row.info_hash) if row.info_hash else None
            if torrent is not None and row.state in ("downloading", "seeding", "queued"):
                row.progress = torrent.progress
                row.download_rate = torrent.download_rate
                row.upload_rate = torrent.upload_rate
                row.peers = torrent.peers
                row.uploaded = torrent.total_upload
                row.downloaded = torrent.total_download
        status: Status = {
            "pid": os.getpid(),
            "role": self.role,
            "written": now,
            "index": "connected" if self.connected else f"not connected ({self._index_problem()})",
            "peer": self.peer,
            "position": self.state.position,
            "files": [_row_json(r) for r in sorted(self.rows.values(), key=_row_order)],
        }
        for callback in self.on_status:
            callback(status)
        await trio.to_thread.run_sync(write_status, self.config.state_dir, status)
        if self._dirty:
            await self.save_now()

    def _index_problem(self) -> str:
        return self.index_problem or self.link.problem or "connecting"

    def index_state(self) -> tuple[bool, str]:
        """Whether the index's event stream is subscribed, and in words."""
        if self.connected:
            return True, f"subscribed to {self.config.api}"
        return False, f"not subscribed: {self._index_problem()}"

    async def sample(self) -> Sample:
        """The figures of this moment for /metrics (sync.metrics): the files
        by state, the index, and libtorrent's counters and torrents (read
        in worker threads)."""
        try:
            torrents = collections.Counter(status.state for status in await self.engine.status())
            counters = await self.engine.counters()
        except EngineError:  # closing: the session is gone
            engine = None
        else:
            engine = EngineFigures(torrents=torrents, peers_blocked=self.engine.peers_blocked, counters=counters)
        files = collections.Counter(row.state for row in self.rows.values())
        return Sample(files=files, index_up=self.connected, engine=engine)

    async def _expiry_loop(self) -> None:
        while True:
            self.apply(self.selection.expire(_now()))
            await trio.sleep(1.0)


def _row_json(row: FileRow) -> StatusRow:
    return {
        "data_id": row.data_id, "product": row.product, "reference_time": row.reference_time,
        "name": row.name, "size": row.size, "state": row.state, "info_hash": row.info_hash,
        "progress": round(row.progress, 4), "download_rate": row.download_rate,
        "upload_rate": row.upload_rate, "peers": row.peers, "uploaded": row.uploaded,
        "downloaded": row.downloaded,
        "path": row.path, "error": row.error,
    }


def _row_order(row: FileRow) -> tuple[str, str, str, int]:
    return (row.product, row.reference_time, row.name, row.data_id)


def _now() -> datetime:
    return datetime.now(UTC)

