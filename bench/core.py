"""The scheduler core alone, without I/O: CPU per job event through runs of N jobs.

The core is driven as the daemon's tasks drive it, by plain calls (the
harness of tests/test_scheduler_core.py stands in for the database, which
commits each write at once): a run is triggered, and each job the core
starts is reported running and then succeeded, one event per batch (the
worst case for what a batch costs), with the executor's ``max_jobs`` 16.
Shapes: a fan-out (one step, ``jobs = N``), ``each`` chains of 5 steps
(N/5 jobs per step), a fan-out whose step has ``late_after`` and
``expire_after`` ("late"), and an ``each`` step of N/2 jobs behind N/2
parents on a second executor, "batch", whose 16 slots they fill while
the local executor has room ("behind"), a line of N/10 one-job steps
("chain"), and one job on the local executor gathering N-1 jobs of a step
on "batch" ("gather": a step of ``depends = "all"`` whose executor has room
while its parents run). Prints the core's CPU
(``time.process_time``) per job event for each N, and the ratio of the
largest N to the smallest: a core without a term that grows faster than
the run keeps it near 1.

Then the work beside a big run that waits: a run whose second step (N
jobs) waits for its first, which runs on, and one-job runs of another
pipeline started and finished meanwhile; it prints the core's CPU per
one-job run for each N, which should not grow with N.

    .venv/bin/python bench/core.py [--sizes 1000,10000,50000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_scheduler_core import T0, Harness  # noqa: E402

from muppet.messages import JobFinished, JobStarted, Trigger  # noqa: E402
from muppet.model import Depends, ExecutorConfig, Pipeline, Step  # noqa: E402


def shape(name: str, size: int) -> Pipeline:
    if name == "fan":
        return Pipeline(name=name, owner="b", steps={"a": Step("a", "true", jobs=size)})
    if name == "behind":
        # ``each`` jobs behind parents on a batch executor that is full, while
        # the local executor has room for them (per_event's "batch")
        half = max(size // 2, 1)
        return Pipeline(name=name, owner="b", steps={
            "s0": Step("s0", "true", jobs=half, executor="batch"),
            "s1": Step("s1", "true", jobs=half, parents=("s0",), depends=Depends.EACH),
        })
    if name == "late":
        # a fan-out whose step has deadlines (docs/configuration.md): a few
        # timers per job, which the core keeps while the run goes on
        return Pipeline(name=name, owner="b", steps={
            "a": Step("a", "true", jobs=size, late_after="PT6H", expire_after="PT12H"),
        })
    if name == "chain":
        return Pipeline(name=name, owner="b", steps={
            f"s{n}": Step(f"s{n}", "true", parents=(f"s{n - 1}",) if n else ()) for n in range(max(size // 10, 1))
        })
    if name == "gather":
        return Pipeline(name=name, owner="b", steps={
            "s0": Step("s0", "true", jobs=max(size - 1, 1), executor="batch"),
            "s1": Step("s1", "true", parents=("s0",)),
        })
    each = max(size // 5, 1)
    steps = {
        f"s{n}": Step(f"s{n}", "true", jobs=each, parents=(f"s{n - 1}",) if n else (), depends=Depends.EACH)
        for n in range(5)
    }
    return Pipeline(name=name, owner="b", steps=steps)


def per_event(pipeline: Pipeline) -> float:
    """CPU seconds of the core per job event through one run of ``pipeline``."""
    harness = Harness(pipeline, max_jobs=16)
    harness.core.configure(harness.pipelines, {
        "local": ExecutorConfig("local", "local", max_jobs=16), "batch": ExecutorConfig("batch", "local", max_jobs=16),
    })
    harness.feed(Trigger(pipeline.name, T0, "manual"))
    harness.commit()
    began, events = time.process_time(), 0
    while harness.starts or harness.unsent:
        if harness.unsent:
            harness.commit()
            continue
        job = harness.starts.pop(0).job
        for event in (JobStarted(job.id, str(job.id), "host", harness.now),
                      JobFinished(job.id, "succeeded", 0, "", harness.now, harness.now)):
            harness.feed(event)
            harness.commit()
            events += 1
    return (time.process_time() - began) / max(events, 1)


def beside_a_waiting_step(size: int, runs: int = 100) -> float:
    """CPU seconds of the core per one-job run started and finished while a
    step of ``size`` jobs waits for its parent, which runs on."""
    big = Pipeline(name="big", owner="b", steps={
        "a": Step("a", "true"), "b": Step("b", "true", jobs=size, parents=("a",)),
    })
    small = Pipeline(name="small", owner="b", steps={"a": Step("a", "true")})
    harness = Harness(big, small, max_jobs=16)
    harness.feed(Trigger("big", T0, "manual"))
    harness.settle()
    (first,) = harness.starts
    harness.feed(JobStarted(first.job.id, "1", "host", harness.now))
    harness.settle()
    began = time.process_time()
    for hour in range(1, runs + 1):
        harness.feed(Trigger("small", T0 + timedelta(hours=hour), "manual"))
        harness.settle()
        harness.run_job(harness.starts[-1].job.id)
    return (time.process_time() - began) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000", help="jobs per run, comma-separated")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; sizes {sizes}")
    for name in ("fan", "each", "late", "behind", "chain", "gather"):
        figures = {size: per_event(shape(name, size)) for size in sizes}
        for size, seconds in figures.items():
            print(f"  {name:4s} {size:>6,} jobs: core {seconds * 1e6:6.1f} us/event")
        print(f"  {name}: {figures[sizes[-1]] / figures[sizes[0]]:.2f}x from {sizes[0]:,} to {sizes[-1]:,} jobs")
    beside = {size: beside_a_waiting_step(size) for size in sizes}
    for size, seconds in beside.items():
        print(f"  one-job runs beside a step of {size:>6,} jobs waiting for its parent: "
              f"core {seconds * 1e3:6.2f} ms/run")
    print(f"  beside: {beside[sizes[-1]] / beside[sizes[0]]:.2f}x from {sizes[0]:,} to {sizes[-1]:,} jobs")


if __name__ == "__main__":
    main()
