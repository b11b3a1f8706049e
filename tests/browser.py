"""A real browser for the console's tests and its benchmark: Debian's
chromium, driven by Playwright (never `playwright install`, which downloads
a browser build), and a `muppet daemon` process with its web page.

``png_colours`` counts the distinct colours of a screenshot, decoding the
PNG here (zlib and the five PNG filters, RFC 2083 / PNG specification
section 9), so that a test can tell a page from a blank one without an
image library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

from services import free_port  # tests/ is on sys.path

CHROMIUM = "/usr/bin/chromium"
#: headless, no sandbox (root), and none of the browser's own traffic to
#: the internet (updates, sync, safe browsing): the page must work without it
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-breakpad", "--no-first-run",
    "--metrics-recording-only", "--disable-domain-reliability",
]
MUPPET = [sys.executable, "-m", "muppet.cli"]


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Daemon:
    """`muppet daemon` in a folder of its own, its API and web page on free
    ports, on ``database`` (default: SQLite in its state_dir); ``log`` is
    its standard error."""

    def __init__(self, folder: Path, pipelines: dict[str, str], max_jobs: int = 8, extra: str = "",
                 database: str = "", tokens: dict[str, tuple[str, str]] | None = None) -> None:
        self.folder = folder
        self.api_port, self.web_port = free_port(), free_port()
        self.api = f"ws://127.0.0.1:{self.api_port}"
        self.web = f"http://127.0.0.1:{self.web_port}"
        (folder / "pipelines").mkdir(parents=True, exist_ok=True)
        for name, text in pipelines.items():
            (folder / "pipelines" / f"{name}.toml").write_text(textwrap.dedent(text))
        # tokens: name -> (role, secret), in a tokens file (docs/configuration.md, "[api]")
        if tokens:
            (folder / "tokens.toml").write_text("".join(
                f'[tokens.{name}]\nrole = "{role}"\nsha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
                for name, (role, secret) in tokens.items()))
        self.config = folder / "muppet.toml"
        self.config.write_text(textwrap.dedent(f"""
            [daemon]
            state_dir = "{folder / 'state'}"
            pipelines = ["pipelines/*.toml"]
            {f'database = "{database}"' if database else ""}
            [api]
            listen = "127.0.0.1:{self.api_port}"
            {'tokens_file = "tokens.toml"' if tokens else ""}
            [web]
            listen = "127.0.0.1:{self.web_port}"
            [executors.local]
            type = "local"
            max_jobs = {max_jobs}
            """) + textwrap.dedent(extra))
        self.log = folder / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "wb") as stderr:
            self.process = subprocess.Popen([*MUPPET, "daemon", "--config", str(self.config)], stderr=stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the daemon exited:\n{self.log.read_text()}"
            try:
                with urllib.request.urlopen(f"{self.web}/healthz", timeout=5) as answer:
                    if json.load(answer)["status"] == "ok":
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"the daemon did not become healthy in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def muppet(self, *args: str) -> str:
        done = subprocess.run([*MUPPET, *args, "--api", self.api], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout


def png_colours(data: bytes, limit: int = 100_000) -> int:
    """The number of distinct colours in a PNG of 8-bit RGB or RGBA
    (what Chromium's screenshots are), counting up to ``limit``."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, "an 8-bit RGB(A) PNG without interlace"
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        kind = raw[start]
        line = bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            upper_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - upper_left
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - upper_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
                line[i] = (line[i] + predictor) & 0xFF
        for x in range(0, stride, channels):
            colours.add(bytes(line[x:x + 3]))
        if len(colours) >= limit:
            break
        previous = line
    return len(colours)


def save_screenshot(page: object, path: Path) -> bytes:
    """A screenshot of the page, kept at ``path`` (docs/images/) too."""
    data: bytes = page.screenshot()  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    shutil.move(tmp, path)
    return data
