"""Progress bars for ``muppet-sync fetch`` in a terminal.

One bar per file being downloaded, redrawn under the log each second (the
status the run writes to ``status.json`` is what is drawn). Log lines go
above the bars: the logging handler wipes the bars, writes the line, and
draws them again. Not used when stderr is not a terminal (a service's log
gets the log lines only).
"""

from __future__ import annotations

import logging
import shutil
from typing import TextIO

from .state import Status, StatusRow, human_bytes

__all__ = ["BarsLogHandler", "ProgressBars", "bar_line"]

ACTIVE = ("queued", "downloading")


def bar_line(row: StatusRow, width: int) -> str:
    """``arome_00.nc [########------------]  40%  12.3 MB/s  3 peers``"""
    percent = row["progress"] * 100
    tail = f" {percent:3.0f}% {human_bytes(row['download_rate']):>9}/s {row['peers']:2d} peers"
    if row["state"] == "queued":
        tail = " queued"
    name_width = max(12, min(40, width // 3))
    name = row["name"].rsplit("/", 1)[-1]
    if len(name) > name_width:
        name = "…" + name[-(name_width - 1):]
    bar_width = max(10, width - name_width - len(tail) - 4)
    done = int(bar_width * row["progress"])
    return f"{name:<{name_width}} [{'#' * done}{'-' * (bar_width - done)}]{tail}"


class ProgressBars:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._shown = 0

    def update(self, status: Status) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        rows = [r for r in status["files"] if r["state"] in ACTIVE]
        self._lines = [bar_line(r, width) for r in rows]
        self.clear()
        self.draw()

    def clear(self) -> None:
        if self._shown:
            # up to the first bar's line, then erase to the end of the screen
            self.stream.write(f"\x1b[{self._shown}F\x1b[J")
            self._shown = 0

    def draw(self) -> None:
        for line in self._lines:
            self.stream.write(line + "\n")
        self._shown = len(self._lines)
        self.stream.flush()


class BarsLogHandler(logging.StreamHandler[TextIO]):
    """Writes log records above the bars."""

    def __init__(self, bars: ProgressBars) -> None:
        super().__init__(bars.stream)
        self.bars = bars

    def emit(self, record: logging.LogRecord) -> None:
        self.bars.clear()
        super().emit(record)
        self.bars.draw()
