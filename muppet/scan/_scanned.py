"""What a scan finds (ScannedFile), and why it could not (ScanError)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from ..codec import format_time


class ScanError(Exception):
    """A file that cannot be scanned; ``str()`` is ``"PATH: what is wrong"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@attrs.frozen
class ScannedFile:
    """What ``scan`` found. Times are aware UTC datetimes or ``None``."""

    path: str
    size: int
    sha256: str
    format: str
    format_detail: str
    reference_time: datetime | None = None
    time_begin: datetime | None = None
    time_end: datetime | None = None
    variables: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, times as ``codec.format_time`` writes them."""
        return {
            "path": self.path,
            "size": self.size,
            "hash_type": "sha256",
            "hash": self.sha256,
            "format": self.format,
            "format_detail": self.format_detail,
            "reference_time": format_time(self.reference_time),
            "time_begin": format_time(self.time_begin),
            "time_end": format_time(self.time_end),
            "variables": list(self.variables),
        }
