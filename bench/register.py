"""How many file registrations per second the daemon's index takes.

Starts the real daemon (`muppet daemon --config X`, its own process) on
SQLite (and PostgreSQL 15 with --postgres), then CLIENTS websocket clients in
this process call `files.register` as fast as they are answered for SECONDS,
each call registering FILES files of a new instance (one instance per call,
as a producing script does after each model run). Prints calls and files per
second and the median and worst latency of a call.

    .venv/bin/python bench/register.py [--clients 8] [--files 1] [--seconds 10] [--postgres]

The daemon runs with no pipelines: what is measured is the API, the database
task's batched commits and the event hub, the path every `muppet register`
takes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio_websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MUPPET = ROOT / ".venv" / "bin" / "muppet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(root: Path, database: str, port: int, files: int) -> Path:
    path = root / "muppet.toml"
    path.write_text(
        "[daemon]\n"
        f'database = "{database}"\n'
        f'state_dir = "{root / "state"}"\n'
        f'output_dir = "{root / "out"}"\n'
        "pipelines = []\n"
        "[api]\n"
        f'listen = "127.0.0.1:{port}"\n'
        "[stakeholders.ops]\n"
        'name = "Operations"\n'
        "[products.arome]\n"
        'name = "AROME"\n'
        f"file_count = {files}\n"
        "[formats.netcdf]\n"
        'name = "NetCDF"\n'
        "[backends.lustre-a]\n"
        'name = "Lustre A"\n'
        'url = "file:///lustre/a"\n'
    )
    return path


async def wait_until_answers(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    with trio.fail_after(60):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {process.returncode}: see {log}")
            try:
                async with trio_websocket.open_websocket_url(url) as ws:
                    await ws.send_message('{"jsonrpc":"2.0","method":"daemon.status","id":1}')
                    await ws.get_message()
                    return
            except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
                await trio.sleep(0.2)


async def client(url: str, number: int, files: int, until: float, latencies: list[float]) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        call = 0
        while trio.current_time() < until:
            call += 1
            # one new instance per call: hour by hour from a start of its own
            hours = number * 1_000_000 + call
            when = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(1_700_000_000 + hours * 3600))
            batch = [{
                "product": "arome", "reference_time": when, "backend": "lustre-a", "format": "netcdf",
                "url": f"file:///lustre/a/arome/c{number}/{call}/f{n}.nc", "size": 1000, "hash": "ab" * 32,
            } for n in range(files)]
            started = time.perf_counter()
            await ws.send_message(json.dumps(
                {"jsonrpc": "2.0", "method": "files.register", "params": {"files": batch}, "id": call}))
            answer = json.loads(await ws.get_message())
            if "result" not in answer:
                raise RuntimeError(f"files.register: {answer}")
            latencies.append(time.perf_counter() - started)


async def measure(url: str, clients: int, files: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    until = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for number in range(clients):
            nursery.start_soon(client, url, number, files, until, latencies)
    return latencies


def run(database: str, root: Path, clients: int, files: int, seconds: float) -> tuple[str, list[float]]:
    port = free_port()
    config = write_config(root, database, port, files)
    log = root / "daemon.log"
    with open(log, "w") as stderr:
        daemon = subprocess.Popen([str(MUPPET), "daemon", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=stderr, cwd=root)
    try:
        url = f"ws://127.0.0.1:{port}"
        trio.run(wait_until_answers, url, daemon, log)
        return url, trio.run(measure, url, clients, files, seconds)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


def report(name: str, latencies: list[float], files: int, seconds: float) -> None:
    calls = len(latencies)
    print(f"{name:<10} {calls / seconds:8.0f} calls/s {calls * files / seconds:8.0f} files/s"
          f"   median {statistics.median(latencies) * 1000:6.1f} ms   worst {max(latencies) * 1000:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--files", type=int, default=1, help="files per call (and per instance)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--postgres", action="store_true", help="also on a PostgreSQL 15 started here")
    args = parser.parse_args()
    print(f"files.register: {args.clients} clients, {args.files} file(s) per call, {args.seconds:g} s"
          f" ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        _, latencies = run(f"sqlite:///{tmp}/muppet.db", Path(tmp), args.clients, args.files, args.seconds)
        report("sqlite", latencies, args.files, args.seconds)
    if args.postgres:
        from pgserver import PostgresServer

        server = PostgresServer()
        server.start()
        try:
            url = server.create_database("bench_register")
            with tempfile.TemporaryDirectory() as tmp:
                _, latencies = run(url, Path(tmp), args.clients, args.files, args.seconds)
                report("postgres", latencies, args.files, args.seconds)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
