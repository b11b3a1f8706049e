"""The errors muppet-sync raises; each message names the file, key or torrent
it is about, so that a log line alone tells an operator what to fix."""

from __future__ import annotations


class SyncError(Exception):
    """Base of every muppet-sync error."""


class LayoutError(SyncError):
    """A layout template, or the path it gives for one file, is not allowed
    (absolute, ``..``, empty parts, unknown fields)."""


class PlaceError(SyncError):
    """A downloaded file could not be put in its place under ``data_dir``;
    nothing was left at the destination."""


class HashMismatch(PlaceError):
    """The downloaded file's SHA-256 is not the one the index holds."""


class DiskFull(PlaceError):
    """No space left where the file was being written (ENOSPC/EDQUOT)."""


class TorrentError(SyncError):
    """libtorrent reported an error for a torrent (file error, bad torrent,
    a seed copy that does not match its torrent, the torrent was removed)."""


class EngineError(SyncError):
    """The libtorrent session could not start (for example: cannot listen)."""
