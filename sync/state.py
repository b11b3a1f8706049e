"""What a seeder or consumer keeps in its ``state_dir`` besides libtorrent's
resume data, and the operator's view of it.

``state.json`` (written with ``muppet.fileio.write_atomically``: temporary
file, fsync, rename, fsync of the directory):
    ``position``: the last event number handled (the event stream resumes
    after it); ``held``: per data id, the file taken and what was done for it
    (the torrent's info-hash; for a consumer the placed path and its own copy's
    file id in the index). Only finished work is recorded: a download killed
    half-way is taken again after a restart, and libtorrent's resume data
    makes that continue from the verified pieces.

``lock`` (held with flock for the process's whole life): one seed or fetch
per state directory, since two would follow, place and record over each
other; it names its holder (pid, role, since when) for the refusal.

``status.json`` (rewritten every second by the running command):
    the process id, when it was written, the index connection, and one row
    per file: state (queued, downloading, seeding, expired, error), progress,
    rates, peers, error. ``muppet-sync status`` prints it.

Everything here blocks (file I/O): under Trio call it in a worker thread.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, cast

import attrs

from muppet.fileio import write_atomically

__all__ = [
    "FILE_STATES",
    "STATE_FILE",
    "STATUS_FILE",
    "FileRow",
    "Status",
    "StatusRow",
    "SyncState",
    "encode_state",
    "load_state",
    "read_status",
    "render_status",
    "save_state",
    "write_status",
]

STATE_FILE = "state.json"
STATUS_FILE = "status.json"
LOCK_FILE = "lock"

#: how long a released file stays in the status view
RELEASED_SHOWN_SECONDS = 3600

#: the states of a file in the operator's view (see docs/sync.md,
#: "The operator's view"): waiting for its torrent or a slot, downloading,
#: seeding, released (with why), given up (with the error)
FILE_STATES = ("queued", "downloading", "seeding", "expired", "error")


@attrs.define
class SyncState:
    position: int | None = None
    held: dict[int, dict[str, Any]] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "held": {str(k): v for k, v in sorted(self.held.items())}}


@attrs.define
class FileRow:
    """One file in the operator's view (mutable: the running command owns it)."""

    data_id: int
    product: str
    reference_time: str
    name: str
    size: int
    state: str = "queued"
    info_hash: str | None = None
    progress: float = 0.0
    download_rate: int = 0
    upload_rate: int = 0
    peers: int = 0
    uploaded: int = 0
    downloaded: int = 0  # payload bytes downloaded by this process (not before a restart)
    path: str | None = None
    error: str | None = None
    since: float = 0.0  # time.time() of the last state change


class StatusRow(TypedDict):
    """One file in ``status.json`` (a :class:`FileRow` as JSON)."""

    data_id: int
    product: str
    reference_time: str
    name: str
    size: int
    state: str
    info_hash: str | None
    progress: float
    download_rate: int
    upload_rate: int
    peers: int
    uploaded: int
    downloaded: int
    path: str | None
    error: str | None


class Status(TypedDict):
    """``status.json``: the running command's view, rewritten every second."""

    pid: int
    role: str  # "seed" or "fetch"
    written: float  # time.time()
    index: str  # "connected" or "not connected (why)"
    peer: str | None
    position: int | None
    files: list[StatusRow]


class StateDirInUse(Exception):
    """Another muppet-sync holds this state directory; the message names it."""


def lock_state_dir(state_dir: Path, role: str) -> int:
    """Take ``state_dir``'s lock for this process (the descriptor: closing
    it, or the process ending, lets it go), writing who holds it; raise
    StateDirInUse naming the holder when another process has it."""
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.read(fd, 4096) or b"{}")
        except ValueError:
            holder = {}
        os.close(fd)
        who = (f"muppet-sync {holder.get('role', '?')} (pid {holder.get('pid', '?')} on "
               f"{holder.get('host', '?')}, since {holder.get('since', '?')})") if holder else "another muppet-sync"
        raise StateDirInUse(f"{state_dir} is in use by {who}: one seed or fetch per state_dir; "
                            "stop that one first, or give this one another state_dir") from None
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "role": role, "host": socket.gethostname(),
                              "since": since}).encode(), 0)
    return fd


def load_state(state_dir: Path) -> SyncState:
    """The state of the last run, or an empty one. A state file that cannot
    be read raises ValueError naming it (it is never overwritten blindly)."""
    path = Path(state_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        return SyncState(
            position=raw.get("position"),
            held={int(k): v for k, v in raw.get("held", {}).items()},
        )
    except FileNotFoundError:
        return SyncState()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: unreadable state ({e}); move it away to start afresh") from None


def encode_state(state: SyncState) -> bytes:
    return json.dumps(state.to_json(), indent=1).encode()


def save_state(state_dir: Path, data: bytes) -> None:
    """Write an :func:`encode_state` result (encoded on the loop, so that the
    thread writing it never reads what the loop is changing) as the state file."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    write_atomically(Path(state_dir) / STATE_FILE, data)


def write_status(state_dir: Path, status: Status) -> None:
    write_atomically(Path(state_dir) / STATUS_FILE, json.dumps(status).encode())


def read_status(state_dir: Path) -> Status | None:
    """What the running command last wrote; None when there is no status
    file. Raises ValueError naming the file when it is not one."""
    path = Path(state_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: not a muppet-sync status file ({e})") from None
    if not isinstance(status, dict):
        raise ValueError(f"{path}: not a muppet-sync status file")
    # written by write_status from a Status, with write_atomically: whole
    return cast(Status, status)


def process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def describe(row: StatusRow) -> str:
    """The state column: "downloading 45% 12.3 MB/s", "seeding", "error: ..."."""
    state = row["state"]
    if state == "downloading":
        return f"downloading {row['progress'] * 100:.0f}% {human_bytes(row['download_rate'])}/s"
    if state == "seeding" and row.get("upload_rate"):
        return f"seeding {human_bytes(row['upload_rate'])}/s up"
    if state in ("error", "expired") and row.get("error"):
        return f"{state}: {row['error']}"
    return state


def render_status(status: Status | None, state_dir: Path, now: float) -> str:
    """``muppet-sync status``'s text."""
    if status is None:
        return f"no status in {state_dir}: muppet-sync seed or fetch has not run with this state_dir"
    lines = []
    running = process_running(int(status["pid"]))
    age = now - status["written"]
    written = datetime.fromtimestamp(status["written"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if running and age < 30:
        head = f"muppet-sync {status['role']} (pid {status['pid']}) running"
    else:
        head = f"muppet-sync {status['role']} (pid {status['pid']}) NOT running; last status {written}"
    lines.append(f"{head}, index {status['index']}, peer {status.get('peer') or '?'}")
    rows = status["files"]
    if not rows:
        lines.append("no files")
        return "\n".join(lines)
    table = [("STATE", "PRODUCT", "REFERENCE TIME", "SIZE", "PEERS", "FILE")]
    for row in rows:
        table.append((
            describe(row), row["product"], row["reference_time"], human_bytes(row["size"]),
            str(row["peers"]), row.get("path") or row["name"],
        ))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        # the last column (the file) is not padded
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    return "\n".join(lines)
