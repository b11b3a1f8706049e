"""Putting a downloaded file in its place under ``data_dir``.

The consumer's promise (docs/sync.md: "Nothing partial or unverified ever
appears under data_dir") is that ``data_dir`` only ever holds complete files
equal to the originals: a path from the index that would escape
``data_dir`` is refused, the SHA-256 is checked against the index, and the file
appears at its final name by one ``rename`` of a fully written, fsynced
temporary file beside it. A hash mismatch or a full disk leaves nothing behind.

:func:`check_layout` and :func:`render_layout` are pure; :func:`verify_and_place`
blocks (hashing, copying, fsync): under Trio run it with
``trio.to_thread.run_sync``. :func:`run_on_complete` is async.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import shlex
import string
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import trio

from muppet.fileio import fsync_directory

from .errors import DiskFull, HashMismatch, LayoutError, PlaceError

__all__ = [
    "LAYOUT_FIELDS",
    "check_layout",
    "render_layout",
    "run_on_complete",
    "sha256_file",
    "verify_and_place",
]

log = logging.getLogger("muppet.sync.place")

#: the fields a layout template may use, each with a sample value: formatting
#: the sample shows a bad format spec (``{product:%Y}``) when the file is loaded
#: rather than at the first download
LAYOUT_FIELDS: Mapping[str, Any] = {
    "product": "arome-pp",
    "reference_time": datetime(2026, 11, 28, 6, 0, tzinfo=UTC),
    "filename": "arome_pp_20261128T06Z.nc",
    "version": 1,
    "backend": "lustre-a",
    "format": "netcdf",
}

#: read size for hashing and copying: large enough that the syscall count is
#: irrelevant next to the disk, small enough to stay in L2-ish buffers
_CHUNK = 1 << 20

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def check_layout(template: str) -> list[str]:
    """Everything wrong with a layout template, as messages that complete
    "layout: ..." (empty when it is fine).

    Only plain ``{field}`` and ``{field:spec}`` are allowed: attribute and index
    access (``{product.__class__}``), conversions and nested fields are refused,
    because the values come from the index, not from the operator.
    """
    problems: list[str] = []
    if not isinstance(template, str) or not template.strip():
        return ["must be a non-empty string"]
    if template.startswith("/"):
        problems.append(f"must be relative to data_dir, got {template!r}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        return [*problems, f"{template!r} is not a valid template: {e}"]
    known = ", ".join(LAYOUT_FIELDS)
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "":
            problems.append(f"{{}} needs a field name (one of {known})")
        elif field not in LAYOUT_FIELDS:
            problems.append(f"unknown field {{{field}}} (known: {known})")
        if conversion is not None:
            problems.append(f"{{{field}!{conversion}}}: conversions are not allowed")
        if spec and "{" in spec:
            problems.append(f"{{{field}:{spec}}}: nested fields are not allowed")
    if problems:
        return problems
    try:
        sample = template.format_map(LAYOUT_FIELDS)
    except (ValueError, TypeError) as e:
        return [f"{template!r} cannot be formatted: {e}"]
    if "filename" not in {field for _, field, _, _ in parsed}:
        # Two files of one product and reference time would get one path.
        problems.append("must contain {filename}")
    problems.extend(_path_problems(sample))
    return problems


def _path_problems(path: str) -> list[str]:
    if "\0" in path:
        return [f"{path!r} contains a NUL byte"]
    if path.startswith("/"):
        return [f"{path!r} is an absolute path"]
    problems = []
    for part in path.split("/"):
        if part == "":
            problems.append(f"{path!r} has an empty path part")
        elif part in (".", ".."):
            problems.append(f"{path!r} has a {part!r} part")
    return problems


def render_layout(template: str, fields: Mapping[str, Any]) -> PurePosixPath:
    """The path, relative to ``data_dir``, of one file.

    ``fields`` holds the :data:`LAYOUT_FIELDS` of one data instance, from the
    index. Raises :class:`LayoutError`, naming the file name, when the result
    is absolute or has ``..``, ``.`` or empty parts (a file name such as
    ``../../etc/cron.d/x`` or ``/etc/passwd``), or the template cannot be
    formatted with these values.
    """
    name = fields.get("filename", "?")
    try:
        path = template.format_map(fields)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise LayoutError(f"file {name!r}: layout {template!r} cannot be formatted: {e!r}") from None
    problems = _path_problems(path)
    if problems:
        raise LayoutError(
            f"file {name!r}: refused, not a safe path under data_dir: " + "; ".join(problems)
        )
    return PurePosixPath(path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, hex. Blocks: run it in a worker thread."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_and_place(
    downloaded_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    relative: str | PurePosixPath,
    sha256_hex: str,
) -> Path:
    """Check a downloaded file against its SHA-256 and put it at
    ``data_dir / relative``; returns the final path.

    Blocks (hashing, copying, fsync): under Trio call it through
    ``trio.to_thread.run_sync``. The downloaded file itself is left where it
    is (the engine keeps seeding it). The new file is first made as a hidden
    temporary name in the destination directory: a hard link when both are on
    one file system (no copy, no extra space), else a copy. Its bytes are
    hashed *there*, so what is checked is what will be published; then it is
    fsynced, renamed over the final name, and the directory fsynced.

    Raises :class:`HashMismatch` when the hash differs, :class:`DiskFull` on
    ENOSPC/EDQUOT, :class:`LayoutError` for a ``relative`` that escapes
    ``data_dir``, :class:`PlaceError` for other I/O errors. In every error case
    the temporary file is removed and the final path is untouched.
    """
    source = Path(downloaded_path)
    # checked as given: PurePosixPath would hide "a//b" and "a/./b"
    problems = _path_problems(relative if isinstance(relative, str) else str(relative))
    relative = PurePosixPath(relative)
    if problems:
        raise LayoutError(f"file {relative.name!r}: refused: " + "; ".join(problems))
    final = Path(data_dir) / relative
    tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.muppet-sync-tmp"
    expected = sha256_hex.lower()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, tmp)
            actual = sha256_file(tmp)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            actual = _copy_hashing(source, tmp)
        if actual != expected:
            raise HashMismatch(
                f"{final}: SHA-256 of the downloaded file is {actual}, the index says {expected}; "
                "not placed"
            )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        # rename(2) between two links to one inode does nothing: the file
        # was already placed (a second fetch of it), the temporary link stays.
        if tmp.exists():
            tmp.unlink()
        fsync_directory(final.parent)  # the rename is durable once the entry is on disk
    except PlaceError:
        _remove_quietly(tmp)
        raise
    except OSError as e:
        _remove_quietly(tmp)
        if e.errno in _DISK_FULL:
            raise DiskFull(f"disk full: cannot place {final} ({e.strerror}); nothing was left there") from e
        raise PlaceError(f"cannot place {final}: {e}") from e
    return final


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        # A full disk may only show at flush or fsync (delayed allocation).
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error("cannot remove temporary file %s: %s", path, e)


async def run_on_complete(command: str, path: str | os.PathLike[str]) -> int | None:
    """Run the ``on_complete`` command for a placed file.

    ``command`` is split like a shell would (no shell is run); the file's path
    is in the environment as ``MUPPET_SYNC_FILE``. Returns the exit status, or
    None when ``command`` is empty or could not be started. A failure is
    logged, never raised: the file is placed either way, and a broken hook
    must not stop the sync. Cancellation kills the command.
    """
    if not command.strip():
        return None
    try:
        argv = shlex.split(command)
    except ValueError as e:
        log.error("on_complete %r: cannot parse: %s", command, e)
        return None
    env = dict(os.environ, MUPPET_SYNC_FILE=os.fspath(path))
    log.info("on_complete for %s: %s", path, command)
    try:
        result = await trio.run_process(argv, env=env, check=False, capture_stdout=True, capture_stderr=True)
    except OSError as e:
        log.error("on_complete %r for %s: cannot start: %s", command, path, e)
        return None
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip()[-500:]
        log.error("on_complete %r for %s exited with %d: %s", command, path, result.returncode, tail)
    return result.returncode
