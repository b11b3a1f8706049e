"""How long 48 hourly cycles of a three-step chain take through a real daemon,
beside one cycle alone and beside Cylc and ecFlow on the same workflow.

The workflow (docs/configuration.md, "Cycling"): steps ``a -> b -> c`` of
command ``true``, ``a`` waiting on the previous cycle's ``a``
(``parents = ["a[-PT1H]"]``), ``initial`` at the first cycle, ``runahead =
5``, hourly cron. All 48 cycles are made by one ``runs.backfill``; the clock
runs from sending that request to the moment the client sees the event of the
last run's end (an ``events.subscribe`` on kind ``run``). The same is timed
for a backfill of 1 cycle, in the same daemon, on a second pipeline that is
the same but for its name.

Runs the daemon in this process (database, scheduler, executor and API tasks
as ``muppet daemon`` has them) on SQLite, and also on a PostgreSQL 15 started
here with --postgres. ``--repeat N`` measures N times on fresh databases and
prints each, with where the time of the chain of ``a`` jobs goes (from the
jobs' own times: the end of one ``a`` to the submission of the next, the
submission to the start, the start to the end). ``--profile FILE`` writes a
cProfile of the first SQLite daemon's whole life (start, 1 cycle, 48 cycles;
the event loop's thread only, not the database's worker threads) for
``python -m pstats FILE``. The machine's load average is printed beside: other
processes move these figures.

    .venv/bin/python bench/cycling.py [--postgres] [--repeat 3] [--max-jobs N] [--profile out.prof]

Target: under 2 s for the 48 cycles. Measured on this kind of machine for the
same workflow (48 cycles x 3 steps of ``true``): Cylc 8.7 147.9 s (5 cycles
in flight), ecFlow 5.9 143.2 s with one repeat, 29.3 s with 5 repeat families
side by side.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from muppet import daemon  # noqa: E402
from muppet.api.client import connect  # noqa: E402
from muppet.config import load_config  # noqa: E402

CYCLES = 48
FIRST = datetime(2026, 12, 1, 0, tzinfo=UTC)
#: the figures measured for the same workflow on this kind of machine
OTHERS = (
    ("Cylc 8.7 (5 cycles in flight)", 147.9),
    ("ecFlow 5.9, one repeat", 143.2),
    ("ecFlow 5.9, 5 repeat families", 29.3),
)
TARGET = 2.0

PIPELINE = """
[pipeline]
name = "{name}"
owner = "bench"
cron = ["0 * * * *"]
initial = {initial}
runahead = 5

[steps.a]
parents = ["a[-PT1H]"]
command = "true"

[steps.b]
parents = ["a"]
command = "true"

[steps.c]
parents = ["b"]
command = "true"
"""

FINISHED = {"succeeded", "failed", "expired"}


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_config(root: Path, database: str, max_jobs: int) -> Path:
    (root / "pipelines").mkdir(parents=True)
    for name in ("cycles", "single"):
        text = '[stakeholders.bench]\nname = "bench"\n' + PIPELINE.format(name=name, initial=iso(FIRST))
        (root / "pipelines" / f"{name}.toml").write_text(text)
    path = root / "muppet.toml"
    path.write_text(
        f'[daemon]\ndatabase = "{database}"\nstate_dir = "{root / "state"}"\n'
        f'output_dir = "{root / "out"}"\npipelines = ["pipelines/*.toml"]\n'
        f'[api]\nlisten = "127.0.0.1:0"\n[web]\nlisten = "127.0.0.1:0"\n'
        f'[executors.local]\ntype = "local"\nmax_jobs = {max_jobs}\n'
    )
    return path


async def backfill(client: Any, events: Any, pipeline: str, cycles: int) -> tuple[float, float, list[dict]]:
    """Backfill ``cycles`` cycles of ``pipeline``; (seconds until the last
    run's end event arrived, seconds until the last run's ``ended_at``, the
    runs with their jobs)."""
    last = FIRST + timedelta(hours=cycles - 1)
    wall = time.time()
    begin = time.perf_counter()
    reply = await client.call("runs.backfill", {"pipeline": pipeline, "from": iso(FIRST), "to": iso(last)})
    wanted = set(reply["run_ids"])
    assert len(wanted) == cycles, reply
    ended: set[int] = set()
    async for event in events:
        run = event["data"]
        if run["pipeline"] == pipeline and run["state"] in FINISHED:
            ended.add(run["id"])
            if ended >= wanted:
                break
    seen = time.perf_counter() - begin
    runs = [await client.call("runs.get", {"run_id": run_id}) for run_id in sorted(wanted)]
    bad = [r for r in runs if r["state"] != "succeeded"]
    assert not bad, bad
    last_end = max(datetime.fromisoformat(r["ended_at"].replace("Z", "+00:00")).timestamp() for r in runs)
    return seen, last_end - wall, runs


async def measure(config_path: Path) -> dict[str, float]:
    config = load_config(config_path)
    figures: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.serve, config)
        async with connect(f"ws://127.0.0.1:{port}") as client:
            events = await client.subscribe(kinds=["run"])
            figures["one"], figures["one_end"], _ = await backfill(client, events, "single", 1)
            figures["all"], figures["all_end"], runs = await backfill(client, events, "cycles", CYCLES)
            figures["in_flight"] = max_in_flight(runs)
            figures.update(critical_path(runs))
        nursery.cancel_scope.cancel()
    return figures


def max_in_flight(runs: list[dict]) -> float:
    """The most runs that had a job submitted or running at one moment (from
    the jobs' times): how much the cycles overlapped."""
    moments = []
    for run in runs:
        begun = min(j["submitted_at"] for j in run["jobs"])
        moments += [(begun, 1), (run["ended_at"], -1)]
    most = current = 0
    for _, step in sorted(moments, key=lambda m: (m[0], m[1])):
        current += step
        most = max(most, current)
    return most


def critical_path(runs: list[dict]) -> dict[str, float]:
    """Where the time of the chain of a's goes (each a waits on the one
    before), medians from the jobs' own times: from the previous a's end to
    this a's submission (the end reported, committed, the scheduler's pass and
    the submission committed), from submission to start (the executor
    launching it), from start to end (the command, ``true``, in its wrapper)."""

    def at(job: dict, key: str) -> float:
        return datetime.fromisoformat(job[key].replace("Z", "+00:00")).timestamp()

    chain = [next(j for j in run["jobs"] if j["step"] == "a") for run in runs]
    return {
        "end_to_submit": statistics.median(at(b, "submitted_at") - at(a, "ended_at") for a, b in pairwise(chain)),
        "submit_to_start": statistics.median(at(a, "started_at") - at(a, "submitted_at") for a in chain),
        "start_to_end": statistics.median(at(a, "ended_at") - at(a, "started_at") for a in chain),
    }


def run_once(name: str, url: str, tmp: Path, max_jobs: int, profile: str | None) -> dict[str, float]:
    root = tmp / name
    config = write_config(root, url, max_jobs)
    if profile is None:
        return trio.run(measure, config)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return trio.run(measure, config)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def report(name: str, trials: list[dict[str, float]]) -> None:
    for n, f in enumerate(trials, 1):
        print(
            f"{name:<9} #{n}  1 cycle: {f['one']:6.3f} s   {CYCLES} cycles: {f['all']:6.3f} s"
            f"  (last run ended_at {f['all_end']:6.3f} s after the request; at most {f['in_flight']:.0f}"
            f" cycles with jobs at once)   {f['all'] / f['one']:5.1f} x one cycle"
        )
        print(f"{'':<13}per a on the chain (medians): previous a ended -> submitted "
              f"{f['end_to_submit'] * 1000:5.1f} ms, submitted -> started {f['submit_to_start'] * 1000:5.1f} ms, "
              f"started -> ended {f['start_to_end'] * 1000:5.1f} ms")
    if len(trials) > 1:
        print(f"{name:<9} median of {len(trials)}: 1 cycle {statistics.median(t['one'] for t in trials):6.3f} s"
              f"   {CYCLES} cycles {statistics.median(t['all'] for t in trials):6.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", action="store_true", help="also on a PostgreSQL 15 started here")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per database (default 1)")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the first SQLite measurement into FILE")
    parser.add_argument("--max-jobs", type=int, default=os.cpu_count() or 1,
                        help="the local executor's max_jobs (default: the number of CPUs, the daemon's default)")
    args = parser.parse_args()
    print(f"{CYCLES} hourly cycles of a -> b -> c (true), a[-PT1H], runahead 5, one backfill; "
          f"machine: {os.cpu_count()} cores, local max_jobs = {args.max_jobs}")
    # other processes on the machine move these figures: say how busy it was
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="muppet-bench-") as tmp:
        for trial in range(args.repeat):
            profile = args.profile if trial == 0 else None
            url = f"sqlite:///{tmp}/sqlite{trial}/muppet.db"
            results.setdefault("sqlite", []).append(run_once(f"sqlite{trial}", url, Path(tmp), args.max_jobs, profile))
        if args.postgres:
            from pgserver import PostgresServer

            server = PostgresServer()
            server.start()
            try:
                for trial in range(args.repeat):
                    url = server.create_database(f"bench_cycling_{trial}")
                    figures = run_once(f"pg{trial}", url, Path(tmp), args.max_jobs, None)
                    results.setdefault("postgres", []).append(figures)
            finally:
                server.stop()
    for name, trials in results.items():
        report(name, trials)
    print("same workflow, same kind of machine:")
    medians = {name: statistics.median(t["all"] for t in trials) for name, trials in results.items()}
    for name, median in medians.items():
        print(f"  MUPPET ({name}){'':<{30 - len(name) - 9}} {median:7.2f} s")
    best = min(medians.values())
    for name, seconds in OTHERS:
        print(f"  {name:<30} {seconds:7.1f} s   ({seconds / best:5.0f} x MUPPET's best)")
    for name, median in medians.items():
        verdict = "met" if median < TARGET else "NOT met"
        print(f"target ({name}): {CYCLES} cycles under {TARGET:g} s: {verdict} ({median:.2f} s)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
