"""Resume data: what libtorrent needs to take a torrent up again after a
restart without the index and without re-checking its file.

Every torrent's resume data (with its info dict) is kept in
``STATE_DIR/resume/INFOHASH.fastresume``, written durably
(``muppet.fileio.write_atomically``), while it downloads (at most every
``EngineSettings.resume_interval`` seconds), when it completes, and when the
engine closes. A new engine re-adds every torrent found there, so a download
killed with ``kill -9`` continues from the verified pieces of its last save,
and a seeded file is seeded again without a re-check.

:class:`ResumeFiles` is the directory (blocking file I/O: call it in a worker
thread); :class:`ResumeWriter` is the Trio task that writes and deletes those
files in order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import attrs
import libtorrent as lt
import trio

from muppet.fileio import write_atomically

__all__ = ["RESUME_SUFFIX", "SAVE_FLAGS", "ResumeFiles", "ResumeWriter", "params_from_resume_data"]

log = logging.getLogger("muppet.sync.engine")

RESUME_SUFFIX = ".fastresume"

#: flush_disk_cache: resume data must not claim pieces that are only in
#: memory; save_info_dict: a restarted engine re-adds the torrent without the
#: index.
SAVE_FLAGS = lt.save_resume_flags_t.flush_disk_cache | lt.save_resume_flags_t.save_info_dict


class ResumeFiles:
    """The resume directory. Every method blocks: call it in a worker thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, info_hash: str) -> Path:
        return self.directory / (info_hash + RESUME_SUFFIX)

    def make_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def read_all(self) -> list[tuple[Path, bytes]]:
        """Every resume file and its content, sorted by name."""
        return [(p, p.read_bytes()) for p in sorted(self.directory.glob("*" + RESUME_SUFFIX))]

    def write(self, info_hash: str, data: bytes) -> None:
        write_atomically(self.path(info_hash), data)

    def delete(self, info_hash: str) -> None:
        try:
            self.path(info_hash).unlink()
        except FileNotFoundError:
            pass


def params_from_resume_data(data: bytes) -> tuple[lt.add_torrent_params, lt.torrent_info]:
    """The add_torrent_params a resume file holds, and the torrent in them.
    Raises ValueError saying why they cannot be used."""
    try:
        params = lt.read_resume_data(data)
    except RuntimeError as e:
        raise ValueError(f"unreadable resume data: {e}") from None
    info = params.ti
    if info is None or not info.is_valid():
        raise ValueError("resume data without the torrent")
    return params, info


@attrs.frozen
class _Write:
    info_hash: str
    data: bytes


@attrs.frozen
class _Delete:
    info_hash: str


class ResumeWriter:
    """Writes and deletes resume files in order, in a worker thread, so that
    a delete after a remove is never undone by an older write.

    ``on_written(info_hash)`` runs on the loop after each write, whether it
    succeeded or not (a failure is logged): the engine counts the save as done.
    :meth:`run` is the task; it ends once :meth:`close` was called and every
    queued request is done, or when :meth:`stop` cancels it.
    """

    def __init__(self, files: ResumeFiles, on_written: Callable[[str], None]) -> None:
        self.files = files
        self._on_written = on_written
        self._send, self._receive = trio.open_memory_channel[_Write | _Delete](math.inf)
        # Shielded: when the caller is cancelled (SIGTERM cancels everything
        # above the engine), closing still writes the last resume data.
        self._scope = trio.CancelScope(shield=True)
        #: set when run() has ended
        self.done = trio.Event()

    def write_soon(self, info_hash: str, data: bytes) -> bool:
        """Queue a write; False when the writer is closed (the data is dropped)."""
        try:
            self._send.send_nowait(_Write(info_hash, data))
        except trio.ClosedResourceError:
            return False
        return True

    def delete_soon(self, info_hash: str) -> bool:
        """Queue the deletion of a torrent's resume file (after every write
        queued before it); False when the writer is closed (the file stays,
        and the next engine restores the torrent)."""
        try:
            self._send.send_nowait(_Delete(info_hash))
        except trio.ClosedResourceError:
            return False
        return True

    def close(self) -> None:
        """No more requests: run() ends once the queued ones are done."""
        self._send.close()

    def stop(self) -> None:
        """End run() now, queued requests or not."""
        self._scope.cancel()

    async def run(self) -> None:
        try:
            with self._scope:
                async with self._receive:
                    async for request in self._receive:
                        await self._carry_out(request)
        finally:
            self.done.set()

    async def _carry_out(self, request: _Write | _Delete) -> None:
        path = self.files.path(request.info_hash)
        try:
            if isinstance(request, _Write):
                await trio.to_thread.run_sync(self.files.write, request.info_hash, request.data)
            else:
                await trio.to_thread.run_sync(self.files.delete, request.info_hash)
        except OSError as e:
            log.error("%s: %s", path, e)
        if isinstance(request, _Write):
            self._on_written(request.info_hash)
