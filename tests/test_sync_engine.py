"""The libtorrent engine on loopback, with real sessions: a seeder and two
fetchers move a file; a fetcher process killed with -9 resumes from its resume
data; a fetch cancelled while its torrent is checked leaves it running, one
over a partial file checks it and completes, and a file error in that first
check is raised; a corrupted seed copy never yields a wrong file; the peer
filter blocks.

Run as a script, this file is the fetcher process of the kill test (see
``child_main``): one JSON object a line on stdout.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import libtorrent as lt
import pytest
import trio
from waiting import wait_until_async

from sync.engine import STALLED_LOOKS, _Stall, open_engine
from sync.engine_settings import EngineSettings, build_ip_filter
from sync.errors import DiskFull, EngineError, TorrentError
from sync.place import sha256_file, verify_and_place
from sync.torrent import info_hash_hex, make_torrent, torrent_info

pytestmark = pytest.mark.timeout(180)

#: safety nets only: on this host a few MB move in well under a second
SAFETY = 60


def settings(directory: Path, **more) -> EngineSettings:
    return EngineSettings(state_dir=directory, listen="127.0.0.1:0", **more)


def make_file(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


async def wait_for(engine, condition, what: str):
    """Poll ``engine.status()`` until ``condition(statuses)`` is true."""
    with trio.fail_after(SAFETY):
        while True:
            statuses = await engine.status()
            if condition(statuses):
                return statuses
            await trio.sleep(0.1)


async def test_one_seeder_two_fetchers(tmp_path):
    original = tmp_path / "origin" / "arome_pp.nc"
    digest = make_file(original, 5 * 1024 * 1024 + 123)
    torrent = await trio.to_thread.run_sync(make_torrent, original)
    ih = info_hash_hex(torrent)
    async with (
        open_engine(settings(tmp_path / "seed-state")) as seeder,
        open_engine(settings(tmp_path / "a-state")) as fetcher_a,
        open_engine(settings(tmp_path / "b-state")) as fetcher_b,
    ):
        ports = {seeder.listen_port, fetcher_a.listen_port, fetcher_b.listen_port}
        assert len(ports) == 3 and 0 not in ports
        assert await seeder.seed(original, torrent) == ih
        results = {}

        async def fetch(name, engine, peers):
            results[name] = await engine.fetch(torrent, tmp_path / name / "incoming", peers)

        with trio.fail_after(SAFETY):
            async with trio.open_nursery() as nursery:
                seed_peer = ("127.0.0.1", seeder.listen_port)
                nursery.start_soon(fetch, "a", fetcher_a, [seed_peer])
                nursery.start_soon(fetch, "b", fetcher_b, [seed_peer, ("127.0.0.1", fetcher_a.listen_port)])

        for name in "ab":
            assert results[name] == tmp_path / name / "incoming" / "arome_pp.nc"
            assert await trio.to_thread.run_sync(sha256_file, results[name]) == digest
            placed = await trio.to_thread.run_sync(
                verify_and_place, results[name], tmp_path / name / "data", "p/arome_pp.nc", digest
            )
            assert sha256_file(placed) == digest
        (status,) = await seeder.status()
        assert (status.info_hash, status.name, status.state, status.progress) == (ih, "arome_pp.nc", "seeding", 1.0)
        for engine in (fetcher_a, fetcher_b):
            (status,) = await engine.status()
            assert status.state == "seeding" and status.pieces == status.num_pieces
            assert status.total_download >= original.stat().st_size
        # the fetchers keep seeding: a third engine gets the file from them alone
        await seeder.remove(ih)
        assert await seeder.status() == []
        # the session's counters (what /metrics reports) outlive a removed
        # torrent; every piece came from the seeder at least once
        size = original.stat().st_size
        assert (await seeder.counters())["net.sent_payload_bytes"] >= size
        for engine in (fetcher_a, fetcher_b):
            counters = await engine.counters()
            assert counters["net.recv_payload_bytes"] >= size and counters["ses.num_piece_failed"] == 0
        async with open_engine(settings(tmp_path / "c-state")) as fetcher_c:
            with trio.fail_after(SAFETY):
                peers = [("127.0.0.1", fetcher_a.listen_port), ("127.0.0.1", fetcher_b.listen_port)]
                path = await fetcher_c.fetch(torrent, tmp_path / "c", peers)
            assert sha256_file(path) == digest


async def test_restart_restores_seeds_and_remove_forgets(tmp_path):
    original = tmp_path / "origin" / "f.nc"
    make_file(original, 300_000)
    torrent = make_torrent(original)
    ih = info_hash_hex(torrent)
    state = tmp_path / "state"
    async with open_engine(settings(state)) as engine:
        await engine.seed(original, torrent)
    assert (state / "resume" / f"{ih}.fastresume").exists()
    async with open_engine(settings(state)) as engine:
        statuses = await wait_for(engine, lambda s: s and s[0].state == "seeding", "seeding again")
        assert statuses[0].info_hash == ih
        assert statuses[0].save_path == str(original.parent)
        # seeding the same torrent again is a no-op
        assert await engine.seed(original, torrent) == ih
        assert len(await engine.status()) == 1
        assert await engine.remove(ih) is True
        assert await engine.remove(ih) is False
        assert original.exists()
    assert not (state / "resume" / f"{ih}.fastresume").exists()
    async with open_engine(settings(state)) as engine:
        assert await engine.status() == []
        await engine.seed(original, torrent)
        assert await engine.remove(ih, delete_files=True) is True
    assert not original.exists()


async def test_unusable_resume_data_is_logged_and_skipped(tmp_path, caplog):
    original = tmp_path / "origin" / "f.nc"
    make_file(original, 300_000)
    torrent = make_torrent(original)
    ih = info_hash_hex(torrent)
    state = tmp_path / "state"
    async with open_engine(settings(state)) as engine:
        await engine.seed(original, torrent)
    garbage = state / "resume" / f"{'0' * 40}.fastresume"
    garbage.write_bytes(b"not bencoded")
    without_torrent = state / "resume" / f"{'1' * 40}.fastresume"
    without_torrent.write_bytes(lt.bencode({
        b"file-format": b"libtorrent resume file", b"file-version": 1, b"info-hash": bytes.fromhex("1" * 40),
        b"save_path": str(tmp_path).encode(),
    }))
    async with open_engine(settings(state)) as engine:
        assert engine.has(ih)  # the good one is restored beside them
        assert [s.info_hash for s in await engine.status()] == [ih]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(garbage) in line and "unreadable resume data" in line for line in logged), logged
    assert any(str(without_torrent) in line and "without the torrent" in line for line in logged), logged
    # neither is written over nor deleted: an operator may want to look at them
    assert garbage.read_bytes() == b"not bencoded"


async def test_seed_refuses_missing_and_wrong_size_files(tmp_path):
    original = tmp_path / "f.nc"
    make_file(original, 100_000)
    torrent = make_torrent(original)
    async with open_engine(settings(tmp_path / "state")) as engine:
        with pytest.raises(TorrentError, match="no such file to seed"):
            await engine.seed(tmp_path / "missing.nc", torrent)
        original.write_bytes(b"short")
        with pytest.raises(TorrentError, match=r"5 bytes, its torrent .* says 100000; not seeding it"):
            await engine.seed(original, torrent)
        with pytest.raises(TorrentError, match="not a valid torrent"):
            await engine.seed(original, b"garbage")
        assert await engine.status() == []


async def test_listen_failure_is_an_engine_error(tmp_path):
    async with open_engine(settings(tmp_path / "a")) as first:
        busy = EngineSettings(tmp_path / "b", listen=f"127.0.0.1:{first.listen_port}")
        with pytest.raises(EngineError, match=f"cannot listen on 127.0.0.1:{first.listen_port}"):
            async with open_engine(busy):
                pass


async def test_cancelled_while_waiting_to_listen_it_closes(tmp_path, monkeypatch):
    """SIGTERM cancels everything above the engine, and it can land while the
    engine waits for libtorrent to say it listens: the engine still closes
    (its shielded alert loop stopped), it does not wait for ever."""
    from sync.engine import Engine

    start = Engine._start
    outer = trio.CancelScope()

    async def start_then_cancel(engine):
        await start(engine)
        outer.cancel()  # the next checkpoint is the wait for the listen alert

    monkeypatch.setattr(Engine, "_start", start_then_cancel)
    with trio.fail_after(SAFETY):
        with outer:
            async with open_engine(settings(tmp_path / "a")):
                pytest.fail("the body ran although the opening was cancelled")
    assert outer.cancelled_caught


async def test_a_fetch_cancelled_while_its_torrent_is_checked_leaves_it_running(tmp_path, monkeypatch):
    """A fetch adds its torrent paused, dials its peers, and resumes it once
    libtorrent has checked it (sync.engine). Cancelled just after the dial,
    while libtorrent checks the 64 MB already in the save directory, the
    torrent is resumed all the same: it seeds, and the next fetch of it
    returns the file."""
    import sync.engine

    original = tmp_path / "origin" / "big.nc"
    original.parent.mkdir()
    with original.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: zeros, quick to write
    torrent = await trio.to_thread.run_sync(make_torrent, original)
    save = tmp_path / "incoming"
    save.mkdir()
    with (save / "big.nc").open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    dial = sync.engine._dial
    fetch_scope = trio.CancelScope()

    def dial_then_cancel(name, handle, peers):
        dial(name, handle, peers)
        fetch_scope.cancel()  # the next checkpoint: the wait for the check

    monkeypatch.setattr(sync.engine, "_dial", dial_then_cancel)
    async with open_engine(settings(tmp_path / "state")) as engine:
        with fetch_scope:
            await engine.fetch(torrent, save, [("127.0.0.1", 9)])
            pytest.fail("the fetch was not cancelled")
        monkeypatch.setattr(sync.engine, "_dial", dial)
        (status,) = await wait_for(engine, lambda s: s and s[0].state not in ("checking", "queued"), "resumed")
        assert status.state == "seeding"
        with trio.fail_after(SAFETY):
            assert await engine.fetch(torrent, save) == save / "big.nc"


async def test_a_fetch_over_a_partial_file_checks_it_and_completes(tmp_path):
    """A file already in the save directory without resume data (a copy
    interrupted before the engine saved any) is checked piece by piece, which
    libtorrent does only while the torrent runs: the fetch resumes it rather
    than wait for a check that cannot come, and completes the file."""
    original = tmp_path / "origin" / "f.nc"
    digest = make_file(original, 3 * 1024 * 1024)
    torrent = make_torrent(original)
    save = tmp_path / "incoming"
    save.mkdir()
    (save / "f.nc").write_bytes(original.read_bytes()[: 1024 * 1024])
    async with (
        open_engine(settings(tmp_path / "seed-state")) as seeder,
        open_engine(settings(tmp_path / "state")) as fetcher,
    ):
        await seeder.seed(original, torrent)
        with trio.fail_after(SAFETY):
            path = await fetcher.fetch(torrent, save, [("127.0.0.1", seeder.listen_port)])
        assert sha256_file(path) == digest
        # the record of libtorrent's full check that let the fetch go on
        assert fetcher._torrents[info_hash_hex(torrent)].full_check


async def test_a_file_error_in_the_first_check_is_raised(tmp_path):
    """A directory where the file should be: libtorrent's first check of the
    new torrent fails, and the fetch raises it at once (naming the error)
    instead of taking it for an earlier attempt's error to retry."""
    original = tmp_path / "origin" / "f.nc"
    make_file(original, 300_000)
    torrent = make_torrent(original)
    (tmp_path / "incoming" / "f.nc").mkdir(parents=True)
    async with open_engine(settings(tmp_path / "state")) as engine:
        with trio.fail_after(SAFETY), pytest.raises(TorrentError, match="Is a directory"):
            await engine.fetch(torrent, tmp_path / "incoming", [("127.0.0.1", 9)])


async def test_corrupted_seed_copy_never_yields_a_wrong_file(tmp_path):
    original = tmp_path / "origin" / "f.nc"
    digest = make_file(original, 3 * 1024 * 1024)
    torrent = make_torrent(original)
    info = torrent_info(torrent)
    ih = info_hash_hex(torrent)
    # the seeder's copy: one byte flipped in piece 5, after the torrent was made
    corrupted = tmp_path / "bad" / "f.nc"
    corrupted.parent.mkdir()
    data = bytearray(original.read_bytes())
    data[5 * info.piece_length() + 17] ^= 0xFF
    corrupted.write_bytes(data)
    incoming = tmp_path / "incoming"
    async with (
        open_engine(settings(tmp_path / "seed-state")) as seeder,
        open_engine(settings(tmp_path / "fetch-state")) as fetcher,
    ):
        # seed_mode off: the check finds the bad piece and refuses to seed
        with pytest.raises(TorrentError, match=f"1 of {info.num_pieces()} pieces do not match torrent {ih}"):
            await seeder.seed(corrupted, torrent, verify=True)
        assert await seeder.status() == []
        # seed mode: libtorrent hashes the piece before sending it, finds it
        # bad and leaves seed mode; the fetcher gets every other piece only
        await seeder.seed(corrupted, torrent)
        fetched = []

        async def fetch():
            fetched.append(await fetcher.fetch(torrent, incoming, [("127.0.0.1", seeder.listen_port)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await wait_for(fetcher, lambda s: s and s[0].pieces == info.num_pieces() - 1, "all good pieces")
            (seed_status,) = await seeder.status()
            assert seed_status.pieces == info.num_pieces() - 1 and seed_status.state == "downloading"
            assert fetched == []  # not complete, so fetch has not returned
            # a good seeder joins; the fetcher completes from it
            async with open_engine(settings(tmp_path / "good-state")) as good:
                await good.seed(original, torrent)
                await good.add_peers(ih, [("127.0.0.1", fetcher.listen_port)])
                await wait_until_async(lambda: fetched, SAFETY, "the fetch to complete")
        assert fetched == [incoming / "f.nc"]
        assert sha256_file(fetched[0]) == digest


def test_ip_filter():
    allow = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    deny = [ipaddress.ip_network("10.9.0.0/16")]
    flt = build_ip_filter(allow, deny)
    assert flt.access("10.1.2.3") == 0
    assert flt.access("10.9.1.1") == 1
    assert flt.access("127.0.0.1") == 1
    assert flt.access("fd00::1") == 0
    assert flt.access("2001:db8::1") == 1
    everyone = build_ip_filter([], deny)
    assert everyone.access("127.0.0.1") == 0 and everyone.access("10.9.0.1") == 1


async def test_peers_outside_allow_are_blocked(tmp_path):
    original = tmp_path / "f.nc"
    make_file(original, 200_000)
    torrent = make_torrent(original)
    only_lan = settings(tmp_path / "seed-state", allow=[ipaddress.ip_network("10.0.0.0/8")])
    async with open_engine(only_lan) as seeder, open_engine(settings(tmp_path / "f-state")) as fetcher:
        await seeder.seed(original, torrent)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.fetch, torrent, tmp_path / "in", [("127.0.0.1", seeder.listen_port)])
            await wait_until_async(lambda: seeder.peers_blocked, SAFETY, "a blocked peer")
            (status,) = await fetcher.status()
            assert status.pieces == 0
            nursery.cancel_scope.cancel()
        # a cancelled fetch leaves the torrent in the engine
        assert len(await fetcher.status()) == 1


async def test_disk_full_stops_the_download_with_a_clear_error_and_a_retry_resumes(tmp_path, small_tmpfs):
    original = tmp_path / "origin" / "f.nc"
    digest = make_file(original, 3 * 1024 * 1024)
    torrent = make_torrent(original)
    incoming = small_tmpfs / "incoming"
    async with (
        open_engine(settings(tmp_path / "seed-state")) as seeder,
        open_engine(settings(tmp_path / "fetch-state")) as fetcher,
    ):
        await seeder.seed(original, torrent)
        peers = [("127.0.0.1", seeder.listen_port)]
        with trio.fail_after(SAFETY):
            with pytest.raises(DiskFull, match=r"^disk full: f\.nc \(\w+\): .*No space left on device"):
                await fetcher.fetch(torrent, incoming, peers)
        (status,) = await fetcher.status()
        assert status.state == "error" and "No space left on device" in status.error
        assert 0 < status.pieces < status.num_pieces
        # space again: fetching once more continues the same download
        await trio.run_process(["mount", "-o", "remount,size=16m", str(small_tmpfs)])
        with trio.fail_after(SAFETY):
            path = await fetcher.fetch(torrent, incoming, peers)
        assert path == incoming / "f.nc"
        assert sha256_file(path) == digest
        (status,) = await fetcher.status()
        assert status.state == "seeding" and status.error is None


def test_a_download_that_had_a_piece_fail_is_checked_again_once_it_stalls():
    """``_Stall``: STALLED_LOOKS looks in a row with peers and no byte more,
    after a piece failed its hash check, call for a check of the file; twice
    as many the next time. Progress, no failed piece, no peer or a check
    under way start the count again."""
    downloading = lt.torrent_status.states.downloading

    def status(done, peers=1, state=downloading):
        return SimpleNamespace(total_done=done, num_peers=peers, state=state)

    stall = _Stall()
    assert not stall.look(status(100), hash_failures=0)
    assert not any(stall.look(status(100), hash_failures=0) for _ in range(10)), "no piece failed"
    assert not any(stall.look(status(100, peers=0), hash_failures=2) for _ in range(10)), "nobody to ask"
    looks = [stall.look(status(100), hash_failures=2) for _ in range(STALLED_LOOKS)]
    assert looks == [False] * (STALLED_LOOKS - 1) + [True]
    assert not stall.look(status(100, state=lt.torrent_status.states.checking_files), hash_failures=2)
    assert not stall.look(status(200), hash_failures=2), "a byte more"
    looks = [stall.look(status(200), hash_failures=2) for _ in range(2 * STALLED_LOOKS)]
    assert looks == [False] * (2 * STALLED_LOOKS - 1) + [True], "twice as many the second time"


# --- a fetcher process killed with -9 -------------------------------------------


async def read_lines(process):
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def resume_pieces(path: Path) -> int:
    params = lt.read_resume_data(path.read_bytes())
    return sum(1 for have in params.have_pieces if have)


async def test_killed_fetcher_resumes_from_its_resume_data(tmp_path):
    original = tmp_path / "origin" / "f.nc"
    digest = make_file(original, 6 * 1024 * 1024)
    torrent = make_torrent(original)
    info = torrent_info(torrent)
    ih = info_hash_hex(torrent)
    (tmp_path / "f.torrent").write_bytes(torrent)
    state = tmp_path / "fetch-state"
    resume = state / "resume" / f"{ih}.fastresume"
    async with open_engine(settings(tmp_path / "seed-state")) as seeder:
        await seeder.seed(original, torrent)
        argv = [
            sys.executable, __file__, str(tmp_path / "f.torrent"), str(tmp_path / "incoming"),
            str(state), str(seeder.listen_port),
        ]
        # 1: slowed to 1 MB/s, killed once a third of the file is in its resume data
        first = await trio.lowlevel.open_process([*argv, "1000000"], stdout=subprocess.PIPE)
        try:
            with trio.fail_after(SAFETY):
                async for message in read_lines(first):
                    assert message["event"] != "done", "the slowed fetcher finished before it was killed"
                    if resume.exists() and resume_pieces(resume) >= info.num_pieces() // 3:
                        break
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        assert first.returncode == -signal.SIGKILL
        had = resume_pieces(resume)
        assert 0 < had < info.num_pieces()
        # 2: unlimited, same state directory; the torrent is restored from it
        second = await trio.lowlevel.open_process([*argv, "0"], stdout=subprocess.PIPE)
        try:
            with trio.fail_after(SAFETY):
                messages = [message async for message in read_lines(second)]
                await second.wait()
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
        assert second.returncode == 0
        start, done = messages[0], messages[-1]
        assert start["event"] == "restored" and start["info_hash"] == ih
        assert start["pieces"] >= had
        assert done["event"] == "done"
        # what it downloaded: at most the pieces the resume data did not have
        # (+ one piece: the short last piece may be among those it had)
        missing_bytes = info.total_size() - had * info.piece_length()
        assert done["total_download"] <= missing_bytes + info.piece_length()
        assert sha256_file(done["path"]) == digest


async def child_main(torrent_file: str, save_dir: str, state_dir: str, seeder_port: str, rate: str) -> None:
    torrent = await trio.Path(torrent_file).read_bytes()
    engine_settings = EngineSettings(
        state_dir=state_dir, listen="127.0.0.1:0", download_rate=int(rate), resume_interval=0.2
    )

    def say(**message):
        print(json.dumps(message), flush=True)

    async with open_engine(engine_settings) as engine:
        statuses = await engine.status()
        if statuses:
            # wait out the resume-data check to report what it restored
            while statuses[0].state == "checking":
                await trio.sleep(0.05)
                statuses = await engine.status()
            say(event="restored", info_hash=statuses[0].info_hash, pieces=statuses[0].pieces)
        async with trio.open_nursery() as nursery:

            async def report():
                while True:
                    for status in await engine.status():
                        say(event="progress", pieces=status.pieces)
                    await trio.sleep(0.1)

            nursery.start_soon(report)
            path = await engine.fetch(torrent, save_dir, [("127.0.0.1", int(seeder_port))])
            nursery.cancel_scope.cancel()
        (status,) = await engine.status()
        say(event="done", path=str(path), total_download=status.total_download)


if __name__ == "__main__":
    trio.run(child_main, *sys.argv[1:])
