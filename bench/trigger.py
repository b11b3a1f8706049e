"""How long from the registration that completes an instance to the run of a
pipeline that requires its product (target: under one second; docs/index.md,
"Completeness and data-driven triggers").

Runs the real daemon in-process on SQLite (and PostgreSQL with --postgres),
registers one file per trial through the API (the product needs one file, so
each registration completes a new instance), and times from sending the
registration to the run's event arriving on a subscription. Prints the
median, the 90th percentile and the worst.

    .venv/bin/python bench/trigger.py [--trials 50] [--postgres]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from muppet import daemon
from muppet.api.client import connect
from muppet.config import load_config

CONFIG = """
[daemon]
database = "{database}"
state_dir = "{tmp}/state"
pipelines = ["pipelines/*.toml"]
[api]
listen = "127.0.0.1:0"
[stakeholders.ops]
name = "Operations"
[products.input]
name = "Input"
file_count = 1
[backends.lustre-a]
name = "Lustre A"
url = "file:///lustre/a"
"""
PIPELINE = """
[pipeline]
name = "consumer"
owner = "ops"
requires = ["input"]
[steps.use]
command = "true"
"""


async def measure(database: str, tmp: Path, trials: int) -> list[float]:
    (tmp / "pipelines").mkdir(exist_ok=True)
    (tmp / "pipelines" / "consumer.toml").write_text(textwrap.dedent(PIPELINE))
    (tmp / "muppet.toml").write_text(CONFIG.format(database=database, tmp=tmp))
    config = load_config(tmp / "muppet.toml")
    delays = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.serve, config)
        url = f"ws://127.0.0.1:{port}"
        async with connect(url) as writer, connect(url) as reader:
            runs = await reader.subscribe(kinds=["run"])
            for trial in range(trials):
                when = f"2026-11-{1 + trial // 24:02d}T{trial % 24:02d}:00:00Z"
                started = time.perf_counter()
                await writer.call("files.register", {"files": [{
                    "product": "input", "reference_time": when, "backend": "lustre-a", "format": "netcdf",
                    "url": f"file:///lustre/a/input/{trial}.nc", "size": 1, "hash": "00" * 32,
                }]})
                async for event in runs:
                    if event["data"]["reference_time"] == when and event["data"]["pipeline"] == "consumer":
                        delays.append(time.perf_counter() - started)
                        break
        nursery.cancel_scope.cancel()
    return delays


def report(name: str, delays: list[float]) -> None:
    delays = sorted(delays)
    p90 = delays[int(len(delays) * 0.9) - 1]
    print(f"{name:<10} {len(delays):>4} trials: median {statistics.median(delays) * 1000:7.1f} ms"
          f"   p90 {p90 * 1000:7.1f} ms   worst {delays[-1] * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--postgres", action="store_true", help="also on a PostgreSQL 15 started here")
    args = parser.parse_args()
    print("registration that completes an instance -> run of the requiring pipeline (its event)")
    with tempfile.TemporaryDirectory() as tmp:
        report("sqlite", trio.run(measure, f"sqlite:///{tmp}/muppet.db", Path(tmp), args.trials))
    if args.postgres:
        from pgserver import PostgresServer

        server = PostgresServer()
        server.start()
        try:
            url = server.create_database("bench_trigger")
            with tempfile.TemporaryDirectory() as tmp:
                report("postgres", trio.run(measure, url, Path(tmp), args.trials))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
