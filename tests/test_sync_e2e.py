"""muppet-sync with real processes on loopback (issue 5, point 8): a real
daemon (its own process, with a tokens file), `muppet-sync seed` and several
`muppet-sync fetch` processes.

* a step's outputs, registered by the daemon, reach every consumer, verified,
  placed by the layout, registered as copies with peers, seeded; on_complete
  runs; an expiring file is removed everywhere and its copies marked deleted;
* a consumer killed with SIGKILL half-way through a download continues from
  its verified pieces after a restart;
* aria2c (Debian) downloads a file that the seed command serves, given the
  torrent from the index (`muppet-sync torrent`) and a standard tracker.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from test_api import free_port  # tests/ is on sys.path
from test_sync_interop import ARIA2C_QUIET, need, opentracker, running

from muppet.api.client import connect
from sync.torrent import info_hash_hex, make_torrent

pytestmark = pytest.mark.timeout(240)

SAFETY = 120
SECRET = "e2e-write-secret"
REF = "2026-12-01T00:00:00Z"
CONSUMERS = ("c1", "c2", "c3")

MAKER = """
[pipeline]
name = "maker"
owner = "ops"
produces = ["arome"]
[steps.make]
jobs = 2
command = 'mkdir -p "$MUPPET_SCRATCH/arome" && head -c {size} /dev/urandom > "$MUPPET_SCRATCH/arome/f$MUPPET_JOB_INDEX.nc"'
outputs = ["arome/f{{index}}.nc"]
"""


class Cluster:
    """A daemon, and seed/fetch processes started on demand, in ``tmp``."""

    def __init__(self, tmp: Path, output_size: int = 3_000_000) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.api = f"ws://127.0.0.1:{self.port}"
        self.output_size = output_size
        self.processes: dict[str, subprocess.Popen] = {}
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
            [index]
            outputs_backend = "lustre-a"
            expiry_interval = 0.5
            """) + backends)

    async def start_daemon(self) -> None:
        self.write_daemon_config()
        self.start("daemon", [sys.executable, "-m", "muppet.cli", "daemon", "--config", str(self.tmp / "muppet.toml")])
        with trio.fail_after(SAFETY):
            while True:
                self.check_alive("daemon")
                try:
                    async with connect(self.api) as client:
                        await client.call("daemon.status")
                        return
                except OSError:
                    pass
                except Exception as e:  # DaemonUnreachable while it starts
                    if "cannot reach" not in str(e):
                        raise
                await trio.sleep(0.1)

    def seed_config(self, trackers: list[str] | None = None) -> Path:
        path = self.tmp / "seed" / "seed.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(f"""
            api = "{self.api}"
            state_dir = "state"
            listen = "127.0.0.1:0"
            trackers = {json.dumps(trackers or [])}
            [[select]]
            products = ["arome"]
            backend = "lustre-a"
            recent = 4
            """))
        return path

    def fetch_config(self, name: str, download_rate: int = 0) -> Path:
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
            [peers]
            allow = ["127.0.0.0/8"]
            download_rate = {download_rate}
            """))
        return path

    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=cwd)
        log.close()
        self.processes[name] = process
        return process

    def start_seed(self, trackers: list[str] | None = None) -> None:
        config = self.seed_config(trackers)
        self.start("seed", [sys.executable, "-m", "sync.cli", "seed", "--config", str(config)])

    def start_fetch(self, name: str, download_rate: int = 0) -> None:
        config = self.fetch_config(name, download_rate)
        self.start(name, [sys.executable, "-m", "sync.cli", "fetch", "--config", str(config), "--no-progress"])

    def check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)}")

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-6000:]

    def status(self, name: str) -> dict:
        try:
            return json.loads((self.tmp / name / "state" / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {"files": []}

    async def wait(self, predicate, what: str, timeout: float = SAFETY):
        with trio.move_on_after(timeout):
            while True:
                for name in self.processes:
                    if name != "killed":
                        self.check_alive(name)
                value = await predicate()
                if value:
                    return value
                await trio.sleep(0.1)
        logs = "\n".join(f"--- {n}\n{self.log(n)}" for n in self.processes)
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop_all()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_step_outputs_reach_every_consumer_and_expire_everywhere(cluster):
    await cluster.start_daemon()
    cluster.start_seed()
    for name in CONSUMERS:
        cluster.start_fetch(name)
    async with connect(cluster.api, token=SECRET) as client:
        await client.call("runs.trigger", {"pipeline": "maker", "reference_time": REF})
        originals = await cluster.wait(
            lambda: _complete_files(client), "the maker's outputs indexed")
        placed_dir = "arome/20261201T00"
        for name in CONSUMERS:
            data = cluster.tmp / name / "data" / placed_dir
            await cluster.wait(lambda: _all_there(data, ["f0.nc", "f1.nc"]), f"files placed on {name}")
            for original in originals:
                assert sha256(data / Path(original["name"]).name) == original["hash"]
            # no temporary or partial file ever in data_dir
            assert sorted(p.name for p in data.iterdir()) == ["f0.nc", "f1.nc"]
        # each consumer registered its copy, with this host's peer and the torrent's info-hash
        for original in originals:
            copies = await cluster.wait(lambda: _copies(client, original["data_id"], 1 + len(CONSUMERS)),
                                        "the copies registered")
            by_backend = {c["backend"]: c for c in copies}
            assert set(by_backend) == {"lustre-a", *CONSUMERS}
            for name in CONSUMERS:
                copy = by_backend[name]
                assert copy["info_hash"] == by_backend["lustre-a"]["info_hash"]
                assert copy["peer"].startswith("127.0.0.1:") and copy["hash"] == original["hash"]
                assert copy["url"] == f"file://{cluster.tmp / name / 'data' / 'arome/20261201T00'}/{Path(original['name']).name}"
        # on_complete ran once per placed file
        for name in CONSUMERS:
            lines = (cluster.tmp / name / "placed.log").read_text().split()
            assert sorted(Path(line).name for line in lines) == ["f0.nc", "f1.nc"]
        # the operator's view (the running process writes it every second)
        async def seeding_view():
            view = subprocess.run(
                [sys.executable, "-m", "sync.cli", "status", "--config", str(cluster.tmp / "c1" / "fetch.toml")],
                capture_output=True, text=True, check=True,
            ).stdout
            return view if view.count("seeding") == 2 else None

        view = await cluster.wait(seeding_view, "muppet-sync status showing both files seeding")
        assert "running, index connected" in view and "f0.nc" in view and "f1.nc" in view, view

        # A file that expires soon: placed everywhere, then removed everywhere.
        short = cluster.tmp / "lustre" / "short.nc"
        short.write_bytes(os.urandom(500_000))
        expires = (datetime.now(UTC) + timedelta(seconds=8)).isoformat()
        registered = await client.call("files.register", {"files": [{
            "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
            "url": f"file://{short}", "size": 500_000, "hash": sha256(short), "expires": expires,
        }]})
        data_id = registered["files"][0]["data_id"]
        for name in CONSUMERS:
            await cluster.wait(lambda: _all_there(cluster.tmp / name / "data" / placed_dir, ["short.nc"]),
                               f"short.nc placed on {name}")
        for name in CONSUMERS:
            await cluster.wait(lambda: _gone(cluster.tmp / name / "data" / placed_dir / "short.nc"),
                               f"short.nc removed from {name}", timeout=60)
        await cluster.wait(lambda: _copies(client, data_id, 0), "every copy of short.nc marked deleted", timeout=30)
        assert short.exists()  # the producer's file is the daemon's business, not the sync's
        for name in CONSUMERS:
            async def expired_row():
                rows = {r["name"]: r for r in cluster.status(name)["files"]}
                return rows.get("short.nc", {}).get("state") == "expired"

            await cluster.wait(expired_row, f"short.nc shown expired in {name}'s status")


async def test_a_killed_consumer_resumes_from_its_verified_pieces(tmp_path):
    cluster = Cluster(tmp_path, output_size=16_000_000)
    try:
        await cluster.start_daemon()
        cluster.start_seed()
        cluster.start_fetch("c1", download_rate=1_500_000)
        async with connect(cluster.api, token=SECRET) as client:
            await client.call("runs.trigger", {"pipeline": "maker", "reference_time": REF})
            await cluster.wait(lambda: _complete_files(client), "the outputs indexed")

        async def half_way():
            rows = [r for r in cluster.status("c1")["files"] if r["state"] == "downloading"]
            return rows if len(rows) == 2 and min(r["progress"] for r in rows) >= 0.5 else None

        await cluster.wait(half_way, "c1 half-way through its downloads")
        await trio.sleep(5.5)  # the engine saves resume data every 5 s while downloading
        killed = cluster.processes.pop("c1")
        killed.kill()
        killed.wait()
        data = tmp_path / "c1" / "data" / "arome" / "20261201T00"
        assert not data.exists() or list(data.iterdir()) == []
        cluster.start_fetch("c1")  # no rate limit now
        await cluster.wait(lambda: _all_there(data, ["f0.nc", "f1.nc"]), "the downloads finished")
        assert "resumed f0.nc" in cluster.log("c1") and "resumed f1.nc" in cluster.log("c1")

        async def downloaded():
            rows = cluster.status("c1")["files"]
            return rows if len(rows) == 2 and all(r["state"] == "seeding" for r in rows) else None

        for row in await cluster.wait(downloaded, "the status after the restart"):
            # what the second process downloaded: not the whole file again
            assert row["downloaded"] < 0.75 * row["size"], row
    finally:
        cluster.stop_all()


async def test_aria2c_fetches_what_muppet_sync_seeds_with_the_torrent_from_the_index(tmp_path):
    aria2c = need("aria2c", "aria2")
    cluster = Cluster(tmp_path)
    lustre = tmp_path / "lustre"
    lustre.mkdir()
    source = lustre / "arome_interop.nc"
    source.write_bytes(os.urandom(2_000_000))
    try:
        tracker_port = free_port()
        tracker = f"http://127.0.0.1:{tracker_port}/announce"
        # opentracker serves whitelisted torrents only, so the info-hash must
        # be known before: our torrents are deterministic (no creation date)
        expected = info_hash_hex(make_torrent(source, [tracker]))
        async with opentracker(tmp_path / "tracker", [expected], port=tracker_port) as url:
            assert url == tracker
            await cluster.start_daemon()
            cluster.start_seed(trackers=[tracker])
            async with connect(cluster.api, token=SECRET) as client:
                registered = await client.call("files.register", {"files": [{
                    "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
                    "url": f"file://{source}", "size": source.stat().st_size, "hash": sha256(source),
                }]})
                file_id = registered["files"][0]["id"]

                async def published():
                    got = await client.call("files.get", {"file_id": file_id})
                    return got["info_hash"]

                assert await cluster.wait(published, "the torrent published") == expected
            torrent_file = tmp_path / "from-index.torrent"
            shown = subprocess.run(
                [sys.executable, "-m", "sync.cli", "torrent", str(file_id), "--output", str(torrent_file),
                 "--api", cluster.api], capture_output=True, text=True, check=True,
            ).stdout
            assert shown.strip() == expected
            async with running([aria2c, *ARIA2C_QUIET, "--seed-time=0", f"--listen-port={free_port()}",
                                f"--dir={tmp_path / 'aria2'}", str(torrent_file)]) as process:
                with trio.fail_after(SAFETY):
                    await process.wait()
            assert process.returncode == 0
            assert sha256(tmp_path / "aria2" / source.name) == sha256(source)
    finally:
        cluster.stop_all()


async def _complete_files(client):
    latest = await client.call("instances.latest", {"product": "arome", "complete": True})
    if latest is None:
        return None
    return (await client.call("files.list", {"instance_id": latest["id"], "backend": "lustre-a"}))["items"]


async def _all_there(directory: Path, names: list[str]) -> bool:
    return all((directory / name).exists() for name in names)


async def _gone(path: Path) -> bool:
    return not path.exists()


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
        cluster.start_seed()
        cluster.start_fetch("c1")
        data = tmp_path / "c1" / "data" / "arome" / "20261201T00"

        async def register(name: str) -> None:
            path = lustre / name
            path.write_bytes(os.urandom(300_000))
            async with connect(cluster.api, token=SECRET) as client:
                await client.call("files.register", {"files": [{
                    "product": "arome", "reference_time": REF, "backend": "lustre-a", "format": "netcdf",
                    "url": f"file://{path}", "size": 300_000, "hash": sha256(path),
                }]})

        await register("before.nc")
        await cluster.wait(lambda: _all_there(data, ["before.nc"]), "before.nc placed")
        daemon = cluster.processes.pop("daemon")
        daemon.terminate()
        daemon.wait(30)

        async def disconnected():
            return cluster.status("c1")["index"].startswith("not connected")

        await cluster.wait(disconnected, "c1 noticing the outage", timeout=30)
        await cluster.start_daemon()
        await register("after.nc")
        await cluster.wait(lambda: _all_there(data, ["after.nc"]), "after.nc placed after the restart", timeout=90)
        assert sha256(data / "after.nc") == sha256(lustre / "after.nc")
        assert "subscribing again from event" in cluster.log("c1")
        # A consumer restarted after its placed file was lost fetches it again.
        consumer = cluster.processes.pop("c1")
        consumer.terminate()
        consumer.wait(30)
        (data / "before.nc").unlink()
        cluster.start_fetch("c1")
        await cluster.wait(lambda: _all_there(data, ["before.nc"]), "before.nc fetched again")
        assert sha256(data / "before.nc") == sha256(lustre / "before.nc")
        assert "before.nc: no longer held here" in cluster.log("c1")
    finally:
        cluster.stop_all()
