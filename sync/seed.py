"""``muppet-sync seed``: on the producer's storage host, make a torrent of each
selected file, publish it in the index beside the file, and seed it until the
file expires.

For each file the :class:`~sync.select.Selection` takes (its backend's URL is
``file://``, so the file is on this host): if the index has its torrent
already (an earlier run made it), that torrent is seeded again; else the file
is hashed into a v1 torrent in a worker thread (one file at a time: hashing is
disk-bound), seeded, and ``files.set_torrent`` stores the info-hash, the
torrent and this host's peer address. The order matters: a consumer learns of
the torrent only once it is served. Releasing stops seeding; the producer's
file is never touched.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import trio

from .config import SeedConfig
from .errors import SyncError
from .run import Stop, SyncRun
from .select import FileRef
from .torrent import make_torrent

__all__ = ["Seeder", "local_path"]

log = logging.getLogger("muppet.sync.seed")


def local_path(url: str) -> Path:
    """The path of a ``file://`` URL; :class:`Stop` for any other scheme."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise Stop(f"{url}: not a file:// URL, so not on this host's storage; not seeding it")
    return Path(unquote(parts.path))


class Seeder(SyncRun[SeedConfig]):
    role = "seed"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hashing = trio.CapacityLimiter(1)

    async def take(self, file: FileRef) -> None:
        path = local_path(file.url)
        size = await trio.to_thread.run_sync(_size, path)
        if size is None:
            raise Stop(f"{path}: no such file on this host (file {file.id} on {file.backend})")
        if size != file.size:
            raise Stop(f"{path}: {size} bytes, the index says {file.size}: changed after it was registered")
        torrent = None
        if file.info_hash:
            if self.engine.has(file.info_hash):
                self._seeding(file, file.info_hash, path)
                return
            got = await self.link.call("files.get", {"file_id": file.id, "torrent": True})
            if got and got.get("torrent"):
                torrent = base64.b64decode(got["torrent"])
        if torrent is None:
            log.info("%s: making its torrent", path)
            async with self._hashing:
                try:
                    torrent = await trio.to_thread.run_sync(make_torrent, path, self.config.trackers)
                except (SyncError, OSError) as e:
                    raise Stop(str(e)) from None
        try:
            info_hash = await self.engine.seed(path, torrent)
        except SyncError as e:
            raise Stop(str(e)) from None
        if file.info_hash != info_hash or file.peer != self.peer:
            await self.link.call("files.set_torrent", {
                "file_id": file.id, "info_hash": info_hash,
                "torrent": base64.b64encode(torrent).decode("ascii"), "peer": self.peer,
            })
        self._seeding(file, info_hash, path)

    def _seeding(self, file: FileRef, info_hash: str, path: Path) -> None:
        self.record(file, info_hash=info_hash)
        self.row(file, "seeding", info_hash=info_hash, path=str(path))
        log.info("seeding %s (%s) for data %d", path, info_hash, file.data_id)

    async def release(self, file: FileRef, record: dict[str, Any] | None, reason: str) -> None:
        info_hash = (record or {}).get("info_hash") or file.info_hash
        if info_hash and self.engine.has(info_hash):
            await self.engine.remove(info_hash)
        log.info("stopped seeding %s: %s", file.name, reason)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
