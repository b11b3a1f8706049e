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


class ListenError(EngineError):
    """libtorrent could not listen on the ``listen`` address (in use, not an
    address of this host); the message says which and why."""


class StartupError(SyncError):
    """The configuration or the environment does not let a command start: a
    host name that does not resolve, a directory that cannot be made or
    written, an address that cannot be listened on, an unreadable state file.

    ``problems`` holds one line per problem, each naming the file, the key
    and the cause (``fetch.toml: data_dir: cannot make /srv/data: Read-only
    file system``); the command prints each and exits 1."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
