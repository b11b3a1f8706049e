"""Issue 5 point 4, "it is standard BitTorrent": Debian's aria2c and
Transmission download a file that our engine seeds, through a standard HTTP
tracker (opentracker) or with our engine dialling them; and our fetcher drops
the bad pieces a lying peer (aria2c seeding a corrupted copy unverified) sends.

Needs aria2c, transmission-cli and opentracker (apt-get install aria2
transmission-cli opentracker); a missing one skips its tests, or fails them
under MUPPET_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from services import free_port, service_missing
from waiting import wait_until_async

from sync.engine import open_engine
from sync.engine_settings import EngineSettings
from sync.place import sha256_file
from sync.torrent import info_hash_hex, make_torrent, torrent_info

pytestmark = pytest.mark.timeout(180)

SAFETY = 90

#: no DHT, no local peer discovery, no peer exchange: the only peers are the
#: ones the test gives (keeps the tests off the host's network)
ARIA2C_QUIET = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--console-log-level=warn",
    "--summary-interval=0",
    "--file-allocation=none",
    "--disable-ipv6=true",
]


def need(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        service_missing(f"{program} is not installed (apt-get install {package})")
    return path


async def wait_listening(port: int, process: trio.Process, what: str) -> None:
    with trio.fail_after(SAFETY):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"{what} exited with {process.returncode} before listening")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def running(argv, **kwargs):
    process = await trio.lowlevel.open_process(argv, **kwargs)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10) as slow:
                await process.wait()
            if slow.cancelled_caught:
                process.kill()
                await process.wait()


@asynccontextmanager
async def opentracker(directory: Path, info_hashes: list[str], port: int | None = None):
    """An opentracker on loopback (on ``port``, default a free one) that knows
    these info-hashes; yields its announce URL. It chroots to ``directory``
    and accepts only whitelisted torrents (Debian's build: the whitelist path
    is inside the chroot, and ``kill -HUP`` reloads it)."""
    binary = need("opentracker", "opentracker")
    await trio.Path(directory).mkdir()
    (directory / "whitelist.txt").write_text("".join(ih + "\n" for ih in info_hashes))
    port = port or free_port()
    config = directory / "opentracker.conf"
    config.write_text(
        f"listen.tcp_udp 127.0.0.1:{port}\naccess.whitelist /whitelist.txt\ntracker.rootdir {directory}\n"
    )
    async with running([binary, "-f", str(config)]) as process:
        await wait_listening(port, process, "opentracker")
        yield f"http://127.0.0.1:{port}/announce"


def make_file(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def engine_settings(directory: Path) -> EngineSettings:
    return EngineSettings(state_dir=directory, listen="127.0.0.1:0")


async def test_aria2c_downloads_from_our_seeder_through_a_tracker(tmp_path):
    aria2c = need("aria2c", "aria2")
    original = tmp_path / "origin" / "arome_pp.nc"
    digest = make_file(original, 4 * 1024 * 1024 + 77)
    tracker_probe = make_torrent(original)
    async with opentracker(tmp_path / "tracker", [info_hash_hex(tracker_probe)]) as url:
        torrent = make_torrent(original, [url])
        assert info_hash_hex(torrent) == info_hash_hex(tracker_probe)  # trackers are outside the info dict
        (tmp_path / "f.torrent").write_bytes(torrent)
        async with open_engine(engine_settings(tmp_path / "seed-state")) as seeder:
            await seeder.seed(original, torrent)
            argv = [
                aria2c, *ARIA2C_QUIET, "--seed-time=0", f"--listen-port={free_port()}",
                f"--dir={tmp_path / 'aria2'}", str(tmp_path / "f.torrent"),
            ]
            with trio.fail_after(SAFETY):
                result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
            (status,) = await seeder.status()
            assert status.total_upload >= original.stat().st_size
    assert sha256_file(tmp_path / "aria2" / "arome_pp.nc") == digest


async def test_aria2c_downloads_when_our_seeder_dials_it(tmp_path):
    aria2c = need("aria2c", "aria2")
    original = tmp_path / "origin" / "f.nc"
    digest = make_file(original, 2 * 1024 * 1024)
    torrent = make_torrent(original)  # no tracker at all
    (tmp_path / "f.torrent").write_bytes(torrent)
    port = free_port()
    argv = [aria2c, *ARIA2C_QUIET, "--seed-time=0", f"--listen-port={port}", f"--dir={tmp_path / 'aria2'}",
            str(tmp_path / "f.torrent")]
    async with open_engine(engine_settings(tmp_path / "seed-state")) as seeder:
        ih = await seeder.seed(original, torrent)
        async with running(argv, stdout=subprocess.DEVNULL) as aria:
            await wait_listening(port, aria, "aria2c")
            assert await seeder.add_peers(ih, [("127.0.0.1", port)])
            with trio.fail_after(SAFETY):
                await aria.wait()
            assert aria.returncode == 0
    assert sha256_file(tmp_path / "aria2" / "f.nc") == digest


async def test_transmission_downloads_when_our_seeder_dials_it(tmp_path):
    # Transmission 3.00 ignores 127.x peers from a tracker (seen with Debian 12's), so
    # our side dials it, as a seeder told about a consumer by the index would.
    # It takes about 10 s: Transmission only declares interest at its rechoke
    # pulse (every 10 s), connected well before that.
    transmission = need("transmission-cli", "transmission-cli")
    original = tmp_path / "origin" / "f.nc"
    digest = make_file(original, 2 * 1024 * 1024 + 5)
    torrent = make_torrent(original)
    (tmp_path / "f.torrent").write_bytes(torrent)
    config = tmp_path / "transmission-config"
    config.mkdir()
    (config / "settings.json").write_text(json.dumps({
        "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False, "utp-enabled": False,
        "port-forwarding-enabled": False, "rpc-enabled": False, "blocklist-enabled": False,
    }))
    finished = tmp_path / "finished"
    script = tmp_path / "on-finish.sh"
    script.write_text(f"#!/bin/sh\necho \"$TR_TORRENT_NAME\" > {finished}\n")
    script.chmod(0o755)
    port = free_port()
    download = tmp_path / "transmission"
    download.mkdir()
    argv = [transmission, "-g", str(config), "-w", str(download), "-p", str(port), "-M", "-f", str(script),
            str(tmp_path / "f.torrent")]
    async with open_engine(engine_settings(tmp_path / "seed-state")) as seeder:
        ih = await seeder.seed(original, torrent)
        async with running(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as client:
            await wait_listening(port, client, "transmission-cli")
            with trio.fail_after(SAFETY):
                while not finished.exists():
                    await seeder.add_peers(ih, [("127.0.0.1", port)])  # redial: no-op when connected
                    await trio.sleep(0.2)
        # the client has exited (SIGTERM: it closes its files) before the check
    assert finished.read_text().strip() == "f.nc"
    assert sha256_file(download / "f.nc") == digest


async def test_our_fetcher_drops_bad_pieces_from_a_lying_peer(tmp_path):
    aria2c = need("aria2c", "aria2")
    original = tmp_path / "origin" / "f.nc"
    digest = make_file(original, 2 * 1024 * 1024)
    torrent = make_torrent(original)
    info = torrent_info(torrent)
    ih = info_hash_hex(torrent)
    (tmp_path / "f.torrent").write_bytes(torrent)
    # every piece of the liar's copy is wrong, and it seeds without checking
    liar_dir = tmp_path / "liar"
    liar_dir.mkdir()
    data = bytearray(original.read_bytes())
    for piece in range(info.num_pieces()):
        data[piece * info.piece_length()] ^= 0xFF
    (liar_dir / "f.nc").write_bytes(data)
    port = free_port()
    argv = [aria2c, *ARIA2C_QUIET, "--seed-ratio=0.0", "--bt-seed-unverified=true", "--check-integrity=false",
            f"--listen-port={port}", f"--dir={liar_dir}", str(tmp_path / "f.torrent")]
    async with running(argv, stdout=subprocess.DEVNULL) as liar:
        await wait_listening(port, liar, "aria2c")
        async with open_engine(engine_settings(tmp_path / "fetch-state")) as fetcher:
            fetched = []

            async def fetch():
                fetched.append(await fetcher.fetch(torrent, tmp_path / "incoming", [("127.0.0.1", port)]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch)
                await wait_until_async(lambda: fetcher.hash_failures(ih), SAFETY, "a piece that fails its hash check")
                (status,) = await fetcher.status()
                assert status.pieces == 0  # nothing it sent was kept
                # an honest seeder joins
                async with open_engine(engine_settings(tmp_path / "seed-state")) as good:
                    await good.seed(original, torrent)
                    await fetcher.add_peers(ih, [("127.0.0.1", good.listen_port)])
                    seen: list[object] = []

                    async def complete() -> bool:
                        # what both sides report, for the message should it not complete
                        seen[:] = [await fetcher.status(), await good.status(), fetcher.hash_failures(ih)]
                        return bool(fetched)

                    await wait_until_async(complete, SAFETY, "the fetch to complete", detail=lambda: (
                        f"fetcher, seeder, hash failures: {seen}"
                    ))
    assert sha256_file(fetched[0]) == digest
