"""Durable file writes: the one way MUPPET and muppet-sync replace a small
file (a state file, resume data, a job's batch id or output plan) so that a
crash or a power cut leaves the old content or the new, never a mix or an
empty file.

The rule, for POSIX file systems: write a temporary file beside the target
(same directory, so same file system: rename(2) is atomic only there), fsync
it (else the rename can reach the disk before the data, and a crash leaves
an empty or partial file under the target's name), rename it over the target,
then fsync the directory (the rename itself is only durable once the
directory's entry is on disk; fsync(2): "Calling fsync() does not necessarily
ensure that the entry in the directory containing the file has also reached
disk. For that an explicit fsync() on a file descriptor for the directory is
also needed.").

Pure standard library, and everything here blocks: under Trio call it in a
worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import os
import secrets

__all__ = ["fsync_directory", "usable_directory", "write_atomically"]


def usable_directory(path: str | os.PathLike[str]) -> None:
    """Make the directory ``path`` if needed, and write and remove a file in
    it: a daemon that cannot use its state or output directory says so when
    it starts (an OSError naming the path), not at its first job."""
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".muppet-probe.{secrets.token_hex(4)}")
    with open(probe, "wb") as file:
        file.write(b"probe")
    os.remove(probe)


def executable_file(path: str) -> bool:
    """Is ``path`` a file this process may run (not a directory)?"""
    return os.path.isfile(path) and os.access(path, os.X_OK)


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at ``path`` with ``data``, durably (see the module
    docstring). The file gets the usual mode (0o666 less the umask).

    The temporary file is ``.NAME.RANDOM.tmp`` beside the target, made with
    O_EXCL, so two writers of one target never share it; it is removed when
    the write fails. Raises OSError (the target is then untouched).
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(directory or ".")


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in the directory ``path`` durable (the
    directory's own data on disk)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
