"""``muppet-sync fetch``: on a consumer host, download each selected file from
the swarm, place it under ``data_dir``, register the copy, keep seeding it,
and remove it when it expires.

For each file the :class:`~sync.select.Selection` takes (it has an info-hash:
a seeder serves it):

1. its path under ``data_dir`` is worked out from ``layout`` first: a name
   from the index that would escape ``data_dir`` is refused before a byte
   moves;
2. the torrent comes from the index (``files.get torrent=true``), the peers
   from ``files.copies`` (every host that holds the file) and the torrent's
   trackers;
3. libtorrent downloads into ``STATE_DIR/downloads/INFOHASH/`` (bad pieces are
   dropped by the swarm's SHA-1 checks; resume data makes a restart continue
   from the verified pieces);
4. :func:`~sync.place.verify_and_place` checks the SHA-256 against the index
   and renames the file into place (a hard link to the download when both are
   on one file system, else a copy);
5. the copy is registered on the consumer's own backend with the torrent's
   info-hash and this host's peer address, so other consumers fetch from it
   too; then ``on_complete`` runs.

Releasing (expiry, deletion in the index, falling out of the ``recent``
window) stops seeding, deletes the download and the placed file, and marks
the copy deleted in the index.
"""

from __future__ import annotations

import base64
import errno
import logging
import time
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import trio

from muppet.codec import parse_zoned_time
from muppet.unwrap_group import unwrap_group

from .config import FetchConfig
from .errors import DiskFull, HashMismatch, LayoutError, PlaceError, SyncError, TorrentError
from .follow import parse_peer
from .place import render_layout, run_on_complete, verify_and_place
from .run import Stop, SyncRun
from .select import FileRef

__all__ = ["COPIES_INTERVAL", "BackendMissing", "Fetcher"]

log = logging.getLogger("muppet.sync.fetch")

#: while a file downloads, its copies are asked of the index this often, and
#: the peers of new ones dialled (Fetcher._watch_copies;
#: docs/sync.md, "How a fetch finds its peers")
COPIES_INTERVAL = 10.0


class BackendMissing(SyncError):
    """The consumer's own backend is not declared in the index."""


class Fetcher(SyncRun[FetchConfig]):
    role = "fetch"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the base URL of this host's copies: the own backend's, from check_backend()
        self.own_url: str | None = None

    async def check_backend(self) -> None:
        """Raise :class:`BackendMissing` unless the index knows our backend."""
        backends = await self.link.call("backends.list")
        for backend in backends:
            if backend["slug"] == self.config.backend:
                self.own_url = backend["url"]
                return
        known = ", ".join(sorted(b["slug"] for b in backends)) or "none"
        raise BackendMissing(
            f"{self.config.source}: backend: {self.config.backend!r} is not in the index at "
            f"{self.config.api} (it has: {known}); declare [backends.{self.config.backend}] with "
            "its url in the daemon's configuration, or define it with backends.define"
        )

    def relative_path(self, file: FileRef) -> PurePosixPath:
        """Where ``file`` goes under ``data_dir``; :class:`Stop` when its name
        or the layout would put it outside."""
        try:
            render_layout("{filename}", {"filename": file.name})  # the index's name itself
            return render_layout(self.config.layout, {
                "product": file.product,
                "reference_time": file.reference_time,
                "filename": PurePosixPath(file.name).name,
                "version": file.version,
                "backend": file.backend,
                "format": file.format,
            })
        except LayoutError as e:
            raise Stop(str(e)) from None

    async def take(self, file: FileRef) -> None:
        relative = self.relative_path(file)
        if file.hash_type != "sha256":
            raise Stop(f"the index has a {file.hash_type} hash; muppet-sync checks SHA-256 only")
        copies = await self.link.call("files.copies", {"data_id": file.data_id})
        info_hash = file.info_hash
        if info_hash is None:  # the selection takes none without (need_torrent)
            raise Stop(f"the index has no torrent for data {file.data_id} yet")
        torrent = await self._torrent(file, copies)
        peers = [address for c in copies
                 if c.get("peer") and c["peer"] != self.peer and (address := parse_peer(c["peer"]))]
        save_dir = Path(self.config.state_dir) / "downloads" / info_hash
        self.row(file, "downloading", info_hash=info_hash)
        started = time.monotonic()
        try:
            with unwrap_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_copies, file, info_hash, set(peers))
                    downloaded = await self.engine.fetch(torrent, save_dir, peers, self.config.trackers)
                    nursery.cancel_scope.cancel()
        except DiskFull as e:
            await self.engine.remove(info_hash, delete_files=True)
            raise Stop(f"disk full while downloading, download stopped and removed: {e}") from None
        except TorrentError as e:
            raise Stop(f"download failed: {e}") from None
        try:
            placed = await trio.to_thread.run_sync(
                verify_and_place, downloaded, self.config.data_dir, relative, file.hash
            )
        except HashMismatch as e:
            self.metrics.verification_failed()
            await self.engine.remove(info_hash, delete_files=True)
            raise Stop(str(e)) from None
        except DiskFull as e:
            raise Stop(str(e)) from None
        except PlaceError as e:
            raise Stop(str(e)) from None
        seconds = time.monotonic() - started
        placed_at = datetime.now(UTC)
        # The path may have held an older version of this file: it is this one's now.
        for record in self.state.held.values():
            if record.get("placed") == str(relative):
                record["placed"] = None
        own = [c for c in copies if c["backend"] == self.config.backend]
        own_id = own[0]["id"] if own else await self._register(file, relative)
        self.record(file, info_hash=info_hash, placed=str(relative), own_id=own_id)
        await self.save_now()
        self.row(file, "seeding", path=str(placed), progress=1.0)
        # counted once it shows as seeding, so that a scrape never sees it placed and still downloading
        self.metrics.placed(_registered(copies, self.config.backend), placed_at)
        log.info("placed %s (%d bytes in %.1f s, %.1f MB/s), registered as file %d on %s",
                 placed, file.size, seconds, file.size / max(seconds, 1e-6) / 1e6, own_id, self.config.backend)
        await run_on_complete(self.config.on_complete, placed)

    async def _watch_copies(self, file: FileRef, info_hash: str, known: set[tuple[str, int]]) -> None:
        """While the file downloads, ask the index for its copies every
        ``COPIES_INTERVAL`` seconds and dial the peers of new ones (another
        consumer that placed it meanwhile, a second seeder): the download
        would otherwise draw only on the copies known when it started. The
        index's file events bring most new copies sooner (sync.run, AddPeer),
        but only those the ``[[select]]`` tables select: a consumer that
        selects the originals' backend never hears of the other consumers'
        copies there, and a peer that moved (a seeder restarted on another
        address) keeps its copy's record. Cancelled when the download ends."""
        while True:
            await trio.sleep(COPIES_INTERVAL)
            copies = await self.link.call("files.copies", {"data_id": file.data_id})
            for copy in copies:
                peer = copy.get("peer")
                if (not peer or peer == self.peer or copy.get("deleted") or copy.get("info_hash") != info_hash
                        or (address := parse_peer(peer)) is None or address in known):
                    continue
                known.add(address)
                # the engine logs it: "NAME (INFOHASH): a new peer HOST:PORT (...), dialling it"
                await self.engine.add_peers(
                    info_hash, [address], f"file {copy.get('id')} on {copy.get('backend')}, from files.copies")

    async def _torrent(self, file: FileRef, copies: list[dict[str, Any]]) -> bytes:
        # The seeder stored the torrent with its copy; other consumers' copies
        # carry only the info-hash.
        for copy in sorted(copies, key=lambda c: c["id"] != file.id):
            if copy.get("info_hash") != file.info_hash:
                continue
            got = await self.link.call("files.get", {"file_id": copy["id"], "torrent": True})
            if got and got.get("torrent"):
                return base64.b64decode(got["torrent"])
        raise Stop(f"the index holds no torrent for info-hash {file.info_hash} (data {file.data_id})")

    async def _register(self, file: FileRef, relative: PurePosixPath) -> int:
        if self.own_url is None:
            raise Stop(f"backend {self.config.backend!r} not checked in the index yet: no URL for the copy")
        url = self.own_url.rstrip("/") + "/" + quote(str(relative))
        copy = {
            "product": file.product,
            "reference_time": file.to_api()["reference_time"],
            "version": file.version,
            "backend": self.config.backend,
            "format": file.format,
            "url": url,
            "size": file.size,
            "hash_type": file.hash_type,
            "hash": file.hash,
            "data_id": file.data_id,
            "info_hash": file.info_hash,
            "peer": self.peer,
        }
        api = file.to_api()
        for key in ("expires", "time_begin", "time_end"):
            if api[key] is not None:
                copy[key] = api[key]
        if file.variables:
            copy["variables"] = list(file.variables)
        registered = await self.link.call("files.register", {"files": [copy]})
        own_id: int = registered["files"][0]["id"]
        return own_id

    async def still_held(self, record: dict[str, Any]) -> bool:
        # The placed file is what matters; without it, fetch it again. (A
        # placed file whose torrent is gone is kept: it is removed at expiry.)
        placed = record.get("placed")
        if placed is None:
            return True  # a newer version took its path
        return await trio.to_thread.run_sync((Path(self.config.data_dir) / placed).exists)

    async def release(self, file: FileRef, record: dict[str, Any] | None, reason: str) -> None:
        info_hash = (record or {}).get("info_hash") or file.info_hash
        if info_hash and self.engine.has(info_hash):
            await self.engine.remove(info_hash, delete_files=True)
        await trio.to_thread.run_sync(_remove_tree, Path(self.config.state_dir) / "downloads" / str(info_hash))
        placed = (record or {}).get("placed")
        if record is None:
            # released before its work was recorded: the file may be placed all the same
            try:
                placed = str(self.relative_path(file))
            except Stop:
                placed = None
        owners = {r.get("placed") for r in self.state.held.values()}
        if placed and placed not in owners:
            await trio.to_thread.run_sync(_unlink, Path(self.config.data_dir) / placed)
        copies = await self.link.call("files.copies", {"data_id": file.data_id})
        own = [c["id"] for c in copies if c["backend"] == self.config.backend]
        if own:
            await self.link.call("files.delete", {"ids": own, "reason": f"muppet-sync: {reason}"})
        log.info("removed %s: %s", placed or file.name, reason)

    async def forget_torrent(self, info_hash: str) -> None:
        await self.engine.remove(info_hash, delete_files=True)
        await trio.to_thread.run_sync(_remove_tree, Path(self.config.state_dir) / "downloads" / info_hash)


def _registered(copies: list[dict[str, Any]], own_backend: str) -> datetime | None:
    """When the file was registered in the index: the earliest ``created_at``
    of its copies other than this host's own (the original comes first;
    the consumers' copies are registered after it). None when the index
    says nothing usable."""
    times = []
    for copy in copies:
        if copy.get("backend") == own_backend or not copy.get("created_at"):
            continue
        try:
            times.append(parse_zoned_time(copy["created_at"], f"the index: file {copy.get('id')}: created_at"))
        except ValueError as e:
            log.warning("%s", e)
    return min(times, default=None)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _remove_tree(directory: Path) -> None:
    """An emptied download directory (libtorrent removed the file itself)."""
    try:
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            log.warning("cannot remove %s: %s", directory, e)


