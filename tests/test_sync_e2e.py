"""muppet-sync with real processes on loopback (docs/sync.md): a real
daemon (its own process, with a tokens file), `muppet-sync seed` and several
`muppet-sync fetch` processes.

* a step's outputs, registered by the daemon, reach every consumer, verified,
  placed by the layout, registered as copies with peers, seeded; on_complete
  runs; an expiring file is removed everywhere and its copies marked deleted;
* a consumer killed with SIGKILL part-way through a download continues from
  the verified pieces of its resume data after a restart;
* a copy that appears in the index while a consumer downloads (a second
  seeder, on a backend the consumer's [[select]] does not name, so that no
  file event tells it) is found by asking the index, dialled, and finishes
  the download after the first seeder stopped;
* aria2c (Debian) downloads a file that the seed command serves, given the
  torrent from the index (`muppet-sync torrent`) and a standard tracker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import libtorrent as lt
import pytest
import trio
from test_api import free_port  # tests/ is on sys.path
from test_sync_interop import ARIA2C_QUIET, need, opentracker, running
from waiting import wait_until_async

from muppet.api.client import connect
from sync.resume import RESUME_SUFFIX
from sync.torrent import info_hash_hex, make_torrent

pytestmark = pytest.mark.timeout(240)

SAFETY = 120
SECRET = "e2e-write-secret"
REF = "2026-12-01T00:00:00Z"
#: seconds a file registered with an expiry lives: long enough for three
#: consumers to fetch 500 kB on a loaded machine, short for the test's time
SHORT_LIFETIME = 12
CONSUMERS = ("c1", "c2", "c3")

MAKER = """
[pipeline]
name = "maker"
owner = "ops"
produces = ["arome"]
[steps.make]
jobs = 2
command = '''
mkdir -p "$MUPPET_SCRATCH/arome" &&
head -c {size} /dev/urandom > "$MUPPET_SCRATCH/arome/f$MUPPET_JOB_INDEX.nc"'''
outputs = ["arome/f{{index}}.nc"]
"""


class Cluster:
    """A daemon, and seed/fetch processes started on demand, in ``tmp``."""

    def __init__(self, tmp: Path, output_size: int = 3_000_000) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.api = f"ws://127.0.0.1:{self.port}"
        self.output_size = output_size
        self.processes: dict[str, trio.Process] = {}
        self.env = dict(os.environ, MUPPET_TOKEN=SECRET, PYTHONUNBUFFERED="1")

    def write_daemon_config(self) -> None:
        tmp = self.tmp
        (tmp / "pipelines").mkdir(exist_ok=True)
        (tmp / "pipelines" / "maker.toml").write_text(MAKER.format(size=self.output_size))
        digest = hashlib.sha256(SECRET.encode()).hexdigest()
        (tmp / "tokens.toml").write_text(f'[tokens.sync]\nrole = "write"\nsha256 = "{digest}"\n')
        backends = "".join(
            f'[backends.{c}]\nname = "consumer {c}"\nurl = "file://{tmp / c / "data"}"\n' for c in CONSUMERS
        )
        (tmp / "muppet.toml").write_text(textwrap.dedent(f"""
            [daemon]
            state_dir = "{tmp}/state"
            output_dir = "{tmp}/lustre"
            pipelines = ["pipelines/*.toml"]
            [api]
            listen = "127.0.0.1:{self.port}"
            tokens_file = "tokens.toml"
            open_reads = true
            [stakeholders.ops]
            name = "Operations"
            [products.arome]
            name = "AROME"
            contact = "ops"
            file_count = 2
            lifetime_hours = 48
            [backends.lustre-a]
            name = "Lustre A"
            url = "file://{tmp}/lustre"
            [backends.lustre-b]
            name = "Lustre B (a second producer's copy)"
            url = "file://{tmp}/lustre-b"
            [index]
            outputs_backend = "lustre-a"
            expiry_interval = 0.5
            """) + backends)

    async def start_daemon(self) -> None:
        await trio.to_thread.run_sync(self.write_daemon_config)
        await self.start(
            "daemon", [sys.executable, "-m", "muppet.cli", "daemon", "--config", str(self.tmp / "muppet.toml")]
        )

        async def answering() -> bool:
            try:
                async with connect(self.api) as client:
                    await client.call("daemon.status")
                    return True
            except OSError:
                return False
            except Exception as e:  # DaemonUnreachable while it starts
                if "cannot reach" not in str(e):
                    raise
                return False

        await self.wait(answering, "the daemon answering daemon.status")

    def seed_config(self, trackers: list[str] | None = None, metrics: int | None = None, name: str = "seed",
                    backend: str = "lustre-a") -> Path:
        """``metrics``: the port of [metrics] listen on 127.0.0.1 (None: none);
        ``name``: the process's directory; ``backend``: whose files it seeds."""
        path = self.tmp / name / "seed.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(f"""
            api = "{self.api}"
            state_dir = "state"
            listen = "127.0.0.1:0"
            trackers = {json.dumps(trackers or [])}
            [[select]]
            products = ["arome"]
            backend = "{backend}"
            recent = 4
            """) + _metrics_table(metrics))
        return path

    def fetch_config(self, name: str, download_rate: int = 0, metrics: int | None = None,
                     select_backend: str | None = None) -> Path:
        """``select_backend``: the [[select]] table's ``backend`` (None: any)."""
        path = self.tmp / name / "fetch.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(f"""
            api = "{self.api}"
            state_dir = "state"
            listen = "127.0.0.1:0"
            data_dir = "data"
            layout = "{{product}}/{{reference_time:%Y%m%dT%H}}/{{filename}}"
            backend = "{name}"
            on_complete = "sh -c 'echo \\"$MUPPET_SYNC_FILE\\" >> {self.tmp / name / 'placed.log'}'"
            [[select]]
            products = ["arome"]
            recent = 2
            """) + (f'backend = "{select_backend}"\n' if select_backend else "") + textwrap.dedent(f"""
            [peers]
            allow = ["127.0.0.0/8"]
            download_rate = {download_rate}
            """) + _metrics_table(metrics))
        return path

    async def start(self, name: str, argv: list[str]) -> trio.Process:
        log = await trio.open_file(self.tmp / f"{name}.log", "ab")
        try:
            process = await trio.lowlevel.open_process(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        finally:
            await log.aclose()
        self.processes[name] = process
        return process

    async def start_seed(self, trackers: list[str] | None = None, metrics: int | None = None, name: str = "seed",
                         backend: str = "lustre-a") -> None:
        config = await trio.to_thread.run_sync(self.seed_config, trackers, metrics, name, backend)
        await self.start(name, [sys.executable, "-m", "sync.cli", "seed", "--config", str(config)])

    async def start_fetch(self, name: str, download_rate: int = 0, metrics: int | None = None,
                          select_backend: str | None = None) -> None:
        config = await trio.to_thread.run_sync(self.fetch_config, name, download_rate, metrics, select_backend)
        await self.start(name, [sys.executable, "-m", "sync.cli", "fetch", "--config", str(config), "--no-progress"])

    async def stop(self, name: str, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to process ``name``, forget it, and wait for it to end."""
        process = self.processes.pop(name)
        process.send_signal(signum)
        with trio.fail_after(30):  # a safety net against a hang
            await process.wait()

    def check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)}")

    def log(self, name: str) -> str:
        """The end of process ``name``'s log (blocks: for failure messages)."""
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-6000:]

    async def read_log(self, name: str) -> str:
        return await trio.Path(self.tmp / f"{name}.log").read_text(errors="replace")

    async def status(self, name: str) -> dict:
        """What the running process ``name`` last wrote to its status.json."""
        try:
            return json.loads(await trio.Path(self.tmp / name / "state" / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {"files": []}

    async def wait(self, predicate, what: str, timeout: float = SAFETY):  # noqa: ASYNC109 - see waiting.py
        """Wait until ``await predicate()`` is true, and return it; fail at once
        when one of the processes dies, and with every log after ``timeout``."""

        async def alive_and_true():
            for name in self.processes:
                self.check_alive(name)
            return await predicate()

        return await wait_until_async(alive_and_true, timeout, what, detail=self.logs)

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)}" for n in self.processes)

    async def stop_all(self) -> None:
        # Shielded: it runs in a finally block, where the test may have been
        # cancelled, and must not leave processes behind.
        with trio.CancelScope(shield=True):
            for process in self.processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in self.processes.values():
                with trio.move_on_after(20):
                    await process.wait()
                if process.poll() is None:
                    process.kill()
                    await process.wait()


def _metrics_table(port: int | None) -> str:
    return "" if port is None else f'[metrics]\nlisten = "127.0.0.1:{port}"\n'


@pytest.fixture
async def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        await cluster.stop_all()


async def _lines_of(path: Path, count: int) -> list[str] | None:
    """The lines of ``path`` once it has ``count`` of them."""
    file = trio.Path(path)
    lines = (await file.read_text()).split() if await file.exists() else []
    return lines if len(lines) >= count else None


async def sha256(path: Path) -> str:
    data = await trio.Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest()


async def test_step_outputs_reach_every_consumer_and_expire_everywhere(cluster):
    await cluster.start_daemon()
    await cluster.start_seed()
    for name in CONSUMERS:
        await cluster.start_fetch(name)
    async with connect(cluster.api, token=SECRET) as client:
        await client.call("runs.trigger", {"pipeline": "maker", "reference_time": REF})
        originals = await cluster.wait(
            lambda: _complete_files(client), "the maker's outputs indexed")
        placed_dir = "arome/20261201T00"
        for name in CONSUMERS:
            data = cluster.tmp / name / "data" / placed_dir
            await cluster.wait(partial(_all_there, data, ["f0.nc", "f1.nc"]), f"files placed on {name}")
            for original in originals:
                assert await sha256(data / Path(original["name"]).name) == original["hash"]
            # no temporary or partial file ever in data_dir
            assert sorted(p.name for p in await trio.Path(data).iterdir()) == ["f0.nc", "f1.nc"]
        # each consumer registered its copy, with this host's peer and the torrent's info-hash
        for original in originals:
            copies = await cluster.wait(partial(_copies, client, original["data_id"], 1 + len(CONSUMERS)),
                                        "the copies registered")
            by_backend = {c["backend"]: c for c in copies}
            assert set(by_backend) == {"lustre-a", *CONSUMERS}
            for name in CONSUMERS:
                copy = by_backend[name]
                assert copy["info_hash"] == by_backend["lustre-a"]["info_hash"]
                assert copy["peer"].startswith("127.0.0.1:") and copy["hash"] == original["hash"]
                placed = cluster.tmp / name / "data" / placed_dir / Path(original["name"]).name
                assert copy["url"] == f"file://{placed}"
        # on_complete ran once per placed file; it runs after the copy is
        # registered (sync/fetch.py), so a registered copy may not have run it yet
        for name in CONSUMERS:
            lines = await cluster.wait(partial(_lines_of, cluster.tmp / name / "placed.log", 2),
                                       f"on_complete run for both files on {name}")
            assert sorted(Path(line).name for line in lines) == ["f0.nc", "f1.nc"]
        # the operator's view (the running process writes it every second)
        async def seeding_view():
            view = (await trio.run_process(
                [sys.executable, "-m", "sync.cli", "status", "--config", str(cluster.tmp / "c1" / "fetch.toml")],
                capture_stdout=True, check=True,
            )).stdout.decode()
            return view if view.count("seeding") == 2 else None

        view = await cluster.wait(seeding_view, "muppet-sync status showing both files seeding")
        assert "running, index connected" in view and "f0.nc" in view and "f1.nc" in view, view

        # A file that expires soon: placed everywhere, then removed everywhere.
        # Its lifetime bounds the time the consumers have to fetch it; when
        # it expires before one of them placed it, the test says so rather
        # than waiting out the deadline.
        short = cluster.tmp / "lustre" / "short.nc"
        await trio.Path(short).write_bytes(os.urandom(500_000))
        expires = datetime.now(UTC) + timedelta(seconds=SHORT_LIFETIME)
        registered = await client.call("files.register", {"files": [{
            "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
            "url": f"file://{short}", "size": 500_000, "hash": await sha256(short), "expires": expires.isoformat(),
        }]})
        data_id = registered["files"][0]["data_id"]
        for name in CONSUMERS:
            async def placed_before_expiry(name=name):
                if await _all_there(cluster.tmp / name / "data" / placed_dir, ["short.nc"]):
                    return True
                if datetime.now(UTC) > expires:
                    raise AssertionError(f"short.nc expired ({SHORT_LIFETIME} s) before {name} placed it")
                return False

            await cluster.wait(placed_before_expiry, f"short.nc placed on {name}")
        for name in CONSUMERS:
            await cluster.wait(partial(_gone, cluster.tmp / name / "data" / placed_dir / "short.nc"),
                               f"short.nc removed from {name}", timeout=60)
        await cluster.wait(partial(_copies, client, data_id, 0), "every copy of short.nc marked deleted", timeout=30)
        assert await trio.Path(short).exists()  # the producer's file is the daemon's business, not the sync's
        for name in CONSUMERS:
            async def expired_row(name=name):
                rows = {r["name"]: r for r in (await cluster.status(name))["files"]}
                return rows.get("short.nc", {}).get("state") == "expired"

            await cluster.wait(expired_row, f"short.nc shown expired in {name}'s status")


async def test_a_killed_consumer_resumes_from_its_verified_pieces(tmp_path):
    # Two 16 MB files through a 1 MB/s limit: 32 s to fetch both, while the
    # engine saves resume data every 5 s of downloading (sync/resume.py). The
    # consumer is killed as soon as resume data of a partial download of each
    # file is on disk, so the limit only has to keep the downloads unfinished
    # until then: a slow machine makes them slower, never faster.
    cluster = Cluster(tmp_path, output_size=16_000_000)
    resume_dir = tmp_path / "c1" / "state" / "resume"
    try:
        await cluster.start_daemon()
        await cluster.start_seed()
        await cluster.start_fetch("c1", download_rate=1_000_000)
        async with connect(cluster.api, token=SECRET) as client:
            await client.call("runs.trigger", {"pipeline": "maker", "reference_time": REF})
            await cluster.wait(lambda: _complete_files(client), "the outputs indexed")

        async def a_quarter_saved():
            saved = await trio.to_thread.run_sync(_verified_pieces, resume_dir)
            quarter = len(saved) == 2 and all(have >= num / 4 for have, num, _ in saved.values())
            return saved if quarter else None

        await cluster.wait(a_quarter_saved, "c1's resume data holding a quarter of each file's pieces")
        await cluster.stop("c1", signal.SIGKILL)
        # What the killed process left: resume data of two partial downloads,
        # and nothing placed (a file is placed only once it is whole).
        saved = await trio.to_thread.run_sync(_verified_pieces, resume_dir)
        assert sorted(saved) == ["f0.nc", "f1.nc"], saved
        for name, (have, num, _) in saved.items():
            assert num / 4 <= have < num, f"{name}: {have} of {num} pieces in the resume data: not a partial download"
        data = tmp_path / "c1" / "data" / "arome" / "20261201T00"
        assert not await _any_there(data)

        await cluster.start_fetch("c1")  # no rate limit now
        await cluster.wait(partial(_all_there, data, ["f0.nc", "f1.nc"]), "the downloads finished")
        log = await cluster.read_log("c1")
        assert "resumed f0.nc" in log and "resumed f1.nc" in log, log

        async def downloaded():
            rows = (await cluster.status("c1"))["files"]
            return rows if len(rows) == 2 and all(r["state"] == "seeding" for r in rows) else None

        for row in await cluster.wait(downloaded, "the status after the restart"):
            # The second process fetched the pieces missing from the resume
            # data, not the whole file again: pieces the first one verified
            # after its last save are fetched again (resume data is all a
            # restart trusts), the others not. The margin of 4 pieces is for
            # blocks requested again after a timeout on a loaded machine,
            # which arrive twice and count twice.
            name = Path(row["name"]).name
            have, num, piece_length = saved[name]
            missing = row["size"] - have * piece_length
            assert 0 < row["downloaded"] <= missing + 4 * piece_length, (row, have, num, piece_length)
            assert await sha256(data / name) == await sha256(tmp_path / "lustre" / "arome" / name)
    finally:
        await cluster.stop_all()


async def test_a_copy_that_appears_mid_download_is_dialled(tmp_path):
    # c1 fetches a 6 MB file at 0.5 MB/s and selects only the originals on
    # lustre-a, so the index's file events of other copies never reach it.
    # Once it has part of the file, the only seeder stops; then a second
    # seeder serves a copy on lustre-b. Only by asking the index for the
    # file's copies during the download (sync/fetch.py, COPIES_INTERVAL) can
    # c1 learn of it and finish.
    size = 6_000_000
    cluster = Cluster(tmp_path)
    lustre, lustre_b = tmp_path / "lustre", tmp_path / "lustre-b"
    try:
        await cluster.start_daemon()
        await cluster.start_seed()
        await cluster.start_fetch("c1", download_rate=500_000, select_backend="lustre-a")
        await trio.Path(lustre).mkdir(exist_ok=True)
        await trio.Path(lustre_b).mkdir()
        original = lustre / "late.nc"
        await trio.Path(original).write_bytes(os.urandom(size))
        digest = await sha256(original)
        async with connect(cluster.api, token=SECRET) as client:
            registered = await client.call("files.register", {"files": [{
                "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
                "url": f"file://{original}", "size": size, "hash": digest,
            }]})
            data_id = registered["files"][0]["data_id"]

            async def part_downloaded():
                rows = {r["name"]: r for r in (await cluster.status("c1"))["files"]}
                row = rows.get("late.nc", {})
                return row if row.get("state") == "downloading" and 0 < row.get("progress", 0) < 0.5 else None

            await cluster.wait(part_downloaded, "c1 part-way through late.nc")
            await cluster.stop("seed")
            copy = lustre_b / "late.nc"
            await trio.to_thread.run_sync(shutil.copyfile, original, copy)
            await client.call("files.register", {"files": [{
                "product": "arome", "reference_time": REF, "backend": "lustre-b", "format": "netcdf",
                "url": f"file://{copy}", "size": size, "hash": digest, "data_id": data_id,
            }]})
            await cluster.start_seed(name="seed-b", backend="lustre-b")
            served = await cluster.wait(partial(_served_copy, client, data_id, "lustre-b"),
                                        "seed-b serving its copy")
            placed = tmp_path / "c1" / "data" / "arome" / "20261201T00" / "late.nc"
            await cluster.wait(partial(_all_there, placed.parent, ["late.nc"]), "late.nc placed on c1 from seed-b")
        assert await sha256(placed) == digest
        log = await cluster.read_log("c1")
        line = f"a new peer {served['peer']} (file {served['id']} on lustre-b, from files.copies), dialling it"
        assert line in log, log[-3000:]
    finally:
        await cluster.stop_all()


async def _served_copy(client, data_id: int, backend: str):
    """The copy of ``data_id`` on ``backend`` once it has a peer (its seeder serves it)."""
    for copy in await client.call("files.copies", {"data_id": data_id}):
        if copy["backend"] == backend and copy.get("peer") and copy.get("info_hash"):
            return copy
    return None


def _verified_pieces(resume_dir: Path) -> dict[str, tuple[int, int, int]]:
    """File name -> (pieces verified, pieces, piece length), as the resume
    data in ``resume_dir`` says: what a restarted engine starts from."""
    saved = {}
    for path in resume_dir.glob("*" + RESUME_SUFFIX):
        try:
            params = lt.read_resume_data(path.read_bytes())
        except (OSError, RuntimeError):  # replaced (written atomically) while we looked
            continue
        if params.ti is not None:
            have = sum(1 for piece in params.have_pieces if piece)
            saved[params.ti.name()] = (have, params.ti.num_pieces(), params.ti.piece_length())
    return saved


async def test_aria2c_fetches_what_muppet_sync_seeds_with_the_torrent_from_the_index(tmp_path):
    aria2c = need("aria2c", "aria2")
    cluster = Cluster(tmp_path)
    lustre = trio.Path(tmp_path / "lustre")
    await lustre.mkdir()
    source = lustre / "arome_interop.nc"
    await source.write_bytes(os.urandom(2_000_000))
    try:
        tracker_port = free_port()
        tracker = f"http://127.0.0.1:{tracker_port}/announce"
        # opentracker serves whitelisted torrents only, so the info-hash must
        # be known before: our torrents are deterministic (no creation date)
        expected = info_hash_hex(await trio.to_thread.run_sync(make_torrent, source, [tracker]))
        async with opentracker(tmp_path / "tracker", [expected], port=tracker_port) as url:
            assert url == tracker
            await cluster.start_daemon()
            await cluster.start_seed(trackers=[tracker])
            async with connect(cluster.api, token=SECRET) as client:
                registered = await client.call("files.register", {"files": [{
                    "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
                    "url": f"file://{source}", "size": (await source.stat()).st_size, "hash": await sha256(source),
                }]})
                file_id = registered["files"][0]["id"]

                async def published():
                    got = await client.call("files.get", {"file_id": file_id})
                    return got["info_hash"]

                assert await cluster.wait(published, "the torrent published") == expected
            torrent_file = tmp_path / "from-index.torrent"
            shown = (await trio.run_process(
                [sys.executable, "-m", "sync.cli", "torrent", str(file_id), "--output", str(torrent_file),
                 "--api", cluster.api], capture_stdout=True, check=True,
            )).stdout.decode()
            assert shown.strip() == expected
            async with running([aria2c, *ARIA2C_QUIET, "--seed-time=0", f"--listen-port={free_port()}",
                                f"--dir={tmp_path / 'aria2'}", str(torrent_file)]) as process:
                with trio.fail_after(SAFETY):
                    await process.wait()
            assert process.returncode == 0
            assert await sha256(tmp_path / "aria2" / source.name) == await sha256(source)
    finally:
        await cluster.stop_all()


async def _complete_files(client):
    latest = await client.call("instances.latest", {"product": "arome", "complete": True})
    if latest is None:
        return None
    return (await client.call("files.list", {"instance_id": latest["id"], "backend": "lustre-a"}))["items"]


async def _all_there(directory: Path, names: list[str]) -> bool:
    for name in names:
        if not await trio.Path(directory / name).exists():
            return False
    return True


async def _any_there(directory: Path) -> bool:
    return await trio.Path(directory).exists() and bool(await trio.Path(directory).iterdir())


async def _gone(path: Path) -> bool:
    return not await trio.Path(path).exists()


async def _copies(client, data_id: int, count: int):
    copies = await client.call("files.copies", {"data_id": data_id})
    if len(copies) != count:
        return None
    return copies if count else True


async def test_seed_and_fetch_ride_out_a_daemon_restart(tmp_path):
    cluster = Cluster(tmp_path)
    lustre = tmp_path / "lustre"
    lustre.mkdir()
    try:
        await cluster.start_daemon()
        await cluster.start_seed()
        await cluster.start_fetch("c1")
        data = tmp_path / "c1" / "data" / "arome" / "20261201T00"

        async def register(name: str) -> None:
            path = lustre / name
            await trio.Path(path).write_bytes(os.urandom(300_000))
            async with connect(cluster.api, token=SECRET) as client:
                await client.call("files.register", {"files": [{
                    "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
                    "url": f"file://{path}", "size": 300_000, "hash": await sha256(path),
                }]})

        await register("before.nc")
        await cluster.wait(partial(_all_there, data, ["before.nc"]), "before.nc placed")
        await cluster.stop("daemon")

        async def disconnected():
            return (await cluster.status("c1")).get("index", "").startswith("not connected")

        await cluster.wait(disconnected, "c1 noticing the outage", timeout=30)
        await cluster.start_daemon()
        await register("after.nc")
        await cluster.wait(partial(_all_there, data, ["after.nc"]), "after.nc placed after the restart", timeout=90)
        assert await sha256(data / "after.nc") == await sha256(lustre / "after.nc")
        assert "subscribing again from event" in await cluster.read_log("c1")
        # A consumer restarted after its placed file was lost fetches it again.
        await cluster.stop("c1")
        await trio.Path(data / "before.nc").unlink()
        await cluster.start_fetch("c1")
        await cluster.wait(partial(_all_there, data, ["before.nc"]), "before.nc fetched again")
        assert await sha256(data / "before.nc") == await sha256(lustre / "before.nc")
        assert "before.nc: no longer held here" in await cluster.read_log("c1")
    finally:
        await cluster.stop_all()
