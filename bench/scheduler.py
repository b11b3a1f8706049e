"""How fast the engine turns jobs over, beside plain process spawns.

Runs, through a real daemon (in this process: database, scheduler, executor,
API tasks as `muppet daemon` has them) on SQLite and on PostgreSQL:
- fan-out: one step with ``jobs = N``, command ``true``;
- chain: ``C`` steps in a line, command ``true``;
and in the same run N plain spawns of ``true`` with the same parallelism as
the executor's ``max_jobs``. Prints jobs per second and the ratio.

    .venv/bin/python bench/scheduler.py [--jobs 1000] [--chain 100] [--max-jobs 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pgserver import PostgresServer  # noqa: E402

from muppet import daemon  # noqa: E402
from muppet.api.client import connect  # noqa: E402
from muppet.config import load_config  # noqa: E402


def pipelines(jobs: int, chain: int) -> dict[str, str]:
    head = '[stakeholders.b]\nname = "bench"\n'
    fan = head + f'[pipeline]\nname = "fan"\nowner = "b"\n[steps.a]\ncommand = "true"\njobs = {jobs}\n'
    line = head + '[pipeline]\nname = "chain"\nowner = "b"\n'
    for n in range(chain):
        line += f'[steps.s{n}]\ncommand = "true"\n' + (f'parents = ["s{n - 1}"]\n' if n else "")
    return {"fan": fan, "chain": line}


def write_config(root: Path, database: str, max_jobs: int, jobs: int, chain: int) -> Path:
    (root / "pipelines").mkdir(parents=True)
    for name, text in pipelines(jobs, chain).items():
        (root / "pipelines" / f"{name}.toml").write_text(text)
    path = root / "muppet.toml"
    path.write_text(
        f'[daemon]\ndatabase = "{database}"\nstate_dir = "{root / "state"}"\n'
        f'output_dir = "{root / "out"}"\npipelines = ["pipelines/*.toml"]\n'
        f'[api]\nlisten = "127.0.0.1:0"\n'
        f'[executors.local]\ntype = "local"\nmax_jobs = {max_jobs}\n'
    )
    return path


async def through_daemon(config_path: Path, pipeline: str, count: int) -> float:
    config = load_config(config_path)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.serve, config)
        async with connect(f"ws://127.0.0.1:{port}") as client:
            begin = time.perf_counter()
            run_id = (await client.call("runs.trigger", {"pipeline": pipeline}))["run_id"]
            while True:
                run = await client.call("runs.list", {"limit": 1})
                if run and run[0]["id"] == run_id and run[0]["state"] != "running":
                    break
                await trio.sleep(0.05)
            elapsed = time.perf_counter() - begin
            assert run[0]["state"] == "succeeded", run
        nursery.cancel_scope.cancel()
    return count / elapsed


async def plain_spawns(count: int, parallel: int) -> float:
    limiter = trio.CapacityLimiter(parallel)

    async def one() -> None:
        async with limiter:
            await trio.run_process(["true"])

    begin = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return count / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs of the fan-out step (default 1000)")
    parser.add_argument("--chain", type=int, default=100, help="steps of the chain (default 100)")
    parser.add_argument("--max-jobs", type=int, default=16, help="the local executor's max_jobs (default 16)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; fan-out N={args.jobs}, chain C={args.chain}, max_jobs={args.max_jobs}")
    plain = trio.run(plain_spawns, args.jobs, args.max_jobs)
    print(f"plain spawns of true ({args.max_jobs} at a time): {plain:8.1f} /s")
    with tempfile.TemporaryDirectory(prefix="muppet-bench-") as tmp, PostgresServer() as pg:
        databases = {
            "sqlite": f"sqlite:///{tmp}/sqlite/muppet.db",
            "postgres": pg.create_database("bench"),
        }
        for name, url in databases.items():
            root = Path(tmp) / name
            root.mkdir(exist_ok=True)
            config = write_config(root, url, args.max_jobs, args.jobs, args.chain)
            fan = trio.run(through_daemon, config, "fan", args.jobs)
            chain = trio.run(through_daemon, config, "chain", args.chain)
            print(
                f"{name:9s} fan-out: {fan:8.1f} jobs/s ({fan / plain:5.1%} of plain)   "
                f"chain: {chain:7.1f} jobs/s"
            )


if __name__ == "__main__":
    main()
