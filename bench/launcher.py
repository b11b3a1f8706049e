"""What starting a local job costs through the launcher alone, without the
daemon (docs/executor.md, "The launcher").

Prepares N job directories (the real wrapper, command ``true``, on tmpfs
unless told otherwise), hands the wrappers to a real launcher, 16 at a time
as the local executor's ``max_jobs`` default lets it, and waits for each to
say how it exited: it prints the wrappers a second, and the CPU and the
page faults of the launcher and of the wrappers it ran per job (what the
launcher reaped, counted once it has exited). Then it hands ``--alone``
more over one at a time, each once the one before has exited, as a chain
does, and prints the median and 90th percentile from the hand-over (the
launcher's ``run`` returned) to the wrapper's start record. Several rounds show the spread of
the machine.

    .venv/bin/python bench/launcher.py [--jobs 3000] [--alone 300] [--rounds 3] [--state-dir-under /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from muppet.executor.jobdir import JobDir  # noqa: E402
from muppet.executor.local import _Launcher, default_bash  # noqa: E402
from muppet.messages import StartJob  # noqa: E402
from muppet.model import Job, JobState, Step  # noqa: E402

AT_ONCE = 16
REFERENCE_TIME = datetime(2026, 12, 1, tzinfo=UTC)


def spec(job_id: int) -> StartJob:
    job = Job(id=job_id, run_id=1, pipeline="bench", step="true", index=0, count=1, executor="local",
              state=JobState.SUBMITTED)
    return StartJob(job=job, step=Step(name="true", command="true"), reference_time=REFERENCE_TIME)


def one_round(state_dir: str, jobs: int, at_once: int) -> tuple[float, float, float, list[float]]:
    """Wrappers a second, CPU seconds and page faults a job, and each
    job's time from its hand-over to its start record, with ``at_once``
    handed over at a time."""
    job_dirs = [JobDir(state_dir, job_id) for job_id in range(1, jobs + 1)]
    for job_dir in job_dirs:
        job_dir.prepare(spec(job_dir.job_id), interpreter_line=False)
    launcher = _Launcher(default_bash(), os.path.join(state_dir, "jobs"))
    time.sleep(0.2)  # its readers forked
    handed: list[float] = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    ended = 0
    while ended < jobs:
        while len(handed) < jobs and len(handed) - ended < at_once:
            if not launcher.run(job_dirs[len(handed)].wrapper):
                raise SystemExit(f"the launcher took no {job_dirs[len(handed)].wrapper}")
            handed.append(time.time())
        select.select([launcher.output], [], [])
        launcher.drain()
        ended = len(launcher.said.exits)
    seconds = time.perf_counter() - began
    launcher.close()
    launcher.process.wait()
    launcher.has_exited()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.close(launcher.output)
    failed = [pid for pid, status in launcher.said.exits.items() if status != 0]
    if failed:
        raise SystemExit(f"{len(failed)} wrappers failed")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    faults = after.ru_minflt + after.ru_majflt - before.ru_minflt - before.ru_majflt
    latencies = []
    for job_dir, at in zip(job_dirs, handed, strict=True):
        status = job_dir.read_status()
        assert status is not None and status.started is not None, job_dir
        latencies.append(status.started - at)
    return jobs / seconds, cpu / jobs, faults / jobs, sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000, help="wrappers a round (default 3000)")
    parser.add_argument("--alone", type=int, default=300, help="wrappers handed over one at a time (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--state-dir-under", default="/dev/shm", metavar="DIR",
                        help="where the job directories go (default /dev/shm, a tmpfs)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; a round: {args.jobs} jobs "
          f"{AT_ONCE} at a time, then {args.alone} one at a time; under {default_bash()}")
    for number in range(1, args.rounds + 1):
        figures = []
        for jobs, at_once in ((args.jobs, AT_ONCE), (args.alone, 1)):
            state_dir = tempfile.mkdtemp(prefix="muppet-bench-launcher-", dir=args.state_dir_under)
            try:
                figures.append(one_round(state_dir, jobs, at_once))
            finally:
                shutil.rmtree(state_dir)
        (rate, cpu, faults, _), (_, _, _, latencies) = figures
        print(f"round {number}: {rate:7.1f} jobs/s, {cpu * 1e3:.3f} ms CPU and {faults:.0f} page faults a job; "
              f"one at a time, hand-over to start record: median {statistics.median(latencies) * 1e3:.2f} ms, "
              f"90th percentile {latencies[len(latencies) * 9 // 10] * 1e3:.2f} ms; "
              f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
