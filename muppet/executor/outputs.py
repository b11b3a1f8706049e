"""Moving a successful job's declared outputs into place, atomically.

A step never writes where others read: it writes into its scratch directory,
and after it succeeded each declared output moves to the same relative path
under ``[daemon] output_dir`` with one rename, so a reader sees the old file or
the whole new one, never a partial file (MUPPET design, "files"). Across file
systems a rename is impossible (EXDEV): the file is copied to a temporary name
beside its destination, fsynced, and renamed over it.

Everything here blocks: run it in a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from datetime import datetime

from ..fileio import fsync_directory, write_atomically
from ..messages import MovedOutput
from .jobdir import MACHINE_ERRORS


class OutputError(Exception):
    """A declared output cannot be moved, for the job's own fault or its
    configuration's (a directory where a file must go, a permission); the
    message names it. Errors of the machine (``jobdir.MACHINE_ERRORS``: a
    full disk, an I/O error) come out as OSError instead, with nothing
    half-done left at the destination: the executor tries again later."""


class MissingOutput(OutputError):
    """A declared output is not in the scratch directory."""

    def __init__(self, path: str) -> None:
        super().__init__(f"missing output: {path}")
        self.path = path


def output_paths(templates: Iterable[str], reference_time: datetime, index: int) -> list[str]:
    """Each template formatted with ``reference_time`` and ``index``, checked
    to be a relative path that stays inside its directory."""
    paths = []
    for template in templates:
        try:
            path = template.format(reference_time=reference_time, index=index)
        except (KeyError, IndexError, ValueError, AttributeError) as error:
            raise OutputError(f"output {template!r}: cannot format it: {error!r}") from None
        normal = os.path.normpath(path)
        if not path or os.path.isabs(path) or normal == "." or normal.split(os.sep)[0] == "..":
            raise OutputError(f"output {template!r}: {path!r} is not a relative path inside the scratch directory")
        if ".." in path.split("/"):
            raise OutputError(f"output {template!r}: {path!r} contains '..'")
        paths.append(normal)
    return paths


def move_outputs(
    templates: Iterable[str],
    scratch: str,
    output_dir: str,
    reference_time: datetime,
    index: int,
    *,
    plan: str | None = None,
) -> list[str]:
    """Move every declared output from ``scratch`` to ``output_dir``; return
    the destination paths.

    All or nothing as far as a check can make it: every source must exist
    before the first one moves (else MissingOutput naming the first missing
    one, and nothing moved). ``plan`` is a file in the job directory that lists
    the outputs before any moves: after a crash mid-way the same call again
    counts an output whose source is gone and whose destination is there as
    moved already, and moves the rest.
    """
    paths = output_paths(templates, reference_time, index)
    if not paths:
        return []
    planned: set[str] = set()
    if plan is not None:
        planned = _read_plan(plan)
    pending = []
    for path in paths:
        source, destination = os.path.join(scratch, path), os.path.join(output_dir, path)
        if os.path.lexists(source):
            pending.append((source, destination))
        elif not (path in planned and os.path.lexists(destination)):
            raise MissingOutput(path)
    if plan is not None and not planned:
        _write_plan(plan, paths)
    directories = set()
    for source, destination in pending:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        move_into_place(source, destination, sync_directory=False)
        directories.add(os.path.dirname(destination))
    # the renames are durable once their directories are
    for directory in sorted(directories):
        fsync_directory(directory)
    return [os.path.join(output_dir, path) for path in paths]


def describe_output(path: str, output_dir: str) -> MovedOutput:
    """A moved output as the index takes it: its path relative to
    ``output_dir``, size, SHA-256 and format (by content, then extension)."""
    from ..scan import sniff_format

    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return MovedOutput(
        path=os.path.relpath(path, output_dir),
        size=size,
        sha256=digest.hexdigest(),
        format=sniff_format(path)[0] or "data",
    )


def move_into_place(source: str, destination: str, *, sync_directory: bool = True) -> None:
    """Rename ``source`` to ``destination``; across file systems copy, fsync
    and rename instead (``copy_then_rename``)."""
    try:
        os.rename(source, destination)
    except OSError as error:
        if error.errno in MACHINE_ERRORS:
            raise
        if error.errno != errno.EXDEV:
            raise OutputError(f"cannot move {source} to {destination}: {error.strerror}") from None
        copy_then_rename(source, destination, sync_directory=sync_directory)
        return
    if sync_directory:
        fsync_directory(os.path.dirname(destination))


def copy_then_rename(source: str, destination: str, *, sync_directory: bool = True) -> None:
    """Copy ``source`` (a file or a directory tree) to a temporary name beside
    ``destination``, fsync it, rename it over ``destination``, then remove the
    source. The temporary name is fixed per destination, so a copy cut short by
    a crash is simply overwritten by the next attempt."""
    directory, name = os.path.split(destination)
    temporary = os.path.join(directory, f".{name}.muppet-tmp")
    try:
        if os.path.isdir(temporary) and not os.path.islink(temporary):
            shutil.rmtree(temporary)
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.copytree(source, temporary, symlinks=True, copy_function=_copy_file)
            for root, _dirs, _files in os.walk(temporary):
                fsync_directory(root)
        else:
            _copy_file(source, temporary)
        os.rename(temporary, destination)
    except OSError as error:
        # a copy cut short gives its space back at once: on a full disk the
        # next attempt needs it
        if os.path.isdir(temporary) and not os.path.islink(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.lexists(temporary):
            try:
                os.unlink(temporary)
            except OSError:
                pass
        if error.errno in MACHINE_ERRORS:
            raise
        raise OutputError(f"cannot copy {source} to {destination}: {error.strerror or error}") from None
    if sync_directory:
        fsync_directory(directory)
    # only now: until the destination is durable, the source is the only copy
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.rmtree(source)
    else:
        os.unlink(source)


def _copy_file(source: str, destination: str) -> None:
    if os.path.islink(source):
        if os.path.lexists(destination):
            os.unlink(destination)
        os.symlink(os.readlink(source), destination)
        return
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1024 * 1024)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copystat(source, destination)


def _read_plan(path: str) -> set[str]:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return set()
    except ValueError:
        # written with write_atomically, so this is not ours to trust; start over
        return set()
    return {item for item in data if isinstance(item, str)} if isinstance(data, list) else set()


def _write_plan(path: str, paths: list[str]) -> None:
    write_atomically(path, json.dumps(paths).encode())
