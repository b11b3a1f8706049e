"""Making and reading .torrent files (BitTorrent v1).

v1 only, on purpose: aria2 1.36 computes a wrong info-hash for hybrid v1+v2
torrents and neither aria2 nor Transmission 3.00 parses v2-only ones (tried
with Debian 12's packages), and any BitTorrent client must be able to fetch
what ``muppet-sync seed`` serves (MUPPET design, "Sync"; docs/sync.md, "Any
BitTorrent client").

:func:`make_torrent` hashes the whole file and blocks: under Trio run it with
``trio.to_thread.run_sync`` (hashing runs at about 800-1000 MB/s, so a 200 MB
file is a fraction of a second, a 10 GB one is not).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import libtorrent as lt

from .errors import TorrentError

__all__ = ["CREATOR", "info_hash_hex", "make_torrent", "torrent_info"]

CREATOR = "muppet-sync"


def make_torrent(path: str | os.PathLike[str], trackers: Iterable[str] = (), piece_size: int = 0) -> bytes:
    """The bencoded v1 torrent of one file.

    The name inside the torrent is the file's basename; the piece size is
    libtorrent's choice for the size (its piece list grows roughly as the
    square root of the size: 128 KiB pieces for 50 MB), or ``piece_size``
    bytes, a power of two of at least 16 KiB (``bench/sync.py
    --piece-size``; docs/sync.md, "Sixteen consumers", has what other sizes
    did). ``trackers`` go in as one tier each, in order (``announce`` is
    the first). No creation date, so that the same file and trackers give
    the same bytes (the info-hash depends only on the file's name, size and
    content either way). Blocks while hashing.
    """
    path = Path(path).absolute()
    if not path.is_file():
        raise TorrentError(f"{path}: not a regular file, cannot make a torrent of it")
    if path.stat().st_size == 0:
        # libtorrent refuses a torrent without pieces.
        raise TorrentError(f"{path}: empty file, BitTorrent cannot carry it")
    if piece_size and (piece_size < 16 * 1024 or piece_size & (piece_size - 1)):
        raise TorrentError(f"piece size {piece_size}: not a power of two of at least 16 KiB")
    files = lt.list_files(str(path))
    creator = lt.create_torrent(files, piece_size, lt.create_torrent.v1_only)
    for tier, url in enumerate(trackers):
        creator.add_tracker(url, tier)
    creator.set_creator(CREATOR)
    creator.set_creation_date(0)
    lt.set_piece_hashes(creator, str(path.parent))
    # generate_buf() raises UnicodeDecodeError in the 2.1.1 bindings.
    return lt.bencode(creator.generate())


def torrent_info(torrent_bytes: bytes) -> lt.torrent_info:
    """libtorrent's view of a torrent; :class:`TorrentError` when it is not one."""
    try:
        return lt.torrent_info(bytes(torrent_bytes))
    except (RuntimeError, TypeError, ValueError) as e:
        raise TorrentError(f"not a valid torrent: {e}") from None


def info_hash_hex(torrent_bytes: bytes) -> str:
    """The torrent's v1 info-hash: 40 lower-case hex digits (what trackers,
    aria2c's and Transmission's logs show)."""
    return str(torrent_info(torrent_bytes).info_hashes().v1)
