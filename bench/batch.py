"""How fast the batch executors turn jobs over, beside a plain shell loop.

For each batch system that answers (Grid Engine, Slurm), in the same run:
- shell: a bash loop submits N trivial jobs straight to the batch system
  (``qsub``/``sbatch`` of a one-line script), then lists the queue every
  0.1 s until all have left it;
- muppet: the executor task (``muppet/executor/task.py``, as the daemon runs
  it) gets N StartJob messages for the same trivial command and reports N
  JobFinished; each job goes through the full path (job directory, wrapper,
  status file, batch id file, submit, shared queue polling, log tails).
Prints jobs per second for both and their ratio (target >= 0.8).

    .venv/bin/python bench/batch.py [--jobs 100] [--poll-interval 0.5] [--only slurm]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from muppet.executor import task as executor_task  # noqa: E402
from muppet.messages import JobFinished, StartJob  # noqa: E402
from muppet.model import ExecutorConfig, Job, JobState, Step  # noqa: E402

SYSTEMS = {
    "gridengine": {
        "probe": ["qstat"],
        "loop": """
            for i in $(seq {n}); do
                qsub -terse -N shell-$i -o /dev/null -e /dev/null {script} >/dev/null || exit 1
            done
            while qstat | grep -q shell-; do sleep 0.1; done
        """,
    },
    "slurm": {
        "probe": ["sinfo", "-h"],
        "loop": """
            for i in $(seq {n}); do
                sbatch --parsable -J shell-$i -o /dev/null -e /dev/null {script} >/dev/null || exit 1
            done
            while [ -n "$(squeue --me -h -o %i)" ]; do sleep 0.1; done
        """,
    },
}


def answers(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def shell_loop(kind: str, jobs: int, work: Path) -> float:
    script = work / "job.sh"
    script.write_text("#!/bin/bash\necho hi\n")
    script.chmod(0o755)
    loop = SYSTEMS[kind]["loop"].format(n=jobs, script=script)
    start = time.monotonic()
    subprocess.run(["bash", "-c", loop], check=True, cwd=work, timeout=1800)
    return time.monotonic() - start


async def through_muppet(kind: str, jobs: int, work: Path, poll_interval: float) -> tuple[float, dict]:
    state, out = work / "state", work / "out"
    state.mkdir()
    out.mkdir()
    executors = {
        "cluster": ExecutorConfig("cluster", kind, max_jobs=jobs, options={"poll_interval": poll_interval})
    }
    to_executor, inbox = trio.open_memory_channel(jobs)
    reports, from_executor = trio.open_memory_channel(2 * jobs)
    base = int(time.time() * 10) % 10**8 * 1000
    finished: list[JobFinished] = []
    step = Step(name="b", command="echo hi", executor="cluster")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: executor_task.run(
                inbox, reports, executors=executors, state_dir=str(state), output_dir=str(out)
            )
        )
        start = trio.current_time()
        for i in range(jobs):
            job = Job(base + i, 1, "bench", "b", i, jobs, "cluster", state=JobState.SUBMITTED)
            await to_executor.send(StartJob(job, step, datetime(2026, 11, 28, tzinfo=UTC)))
        while len(finished) < jobs:
            message = await from_executor.receive()
            if isinstance(message, JobFinished):
                finished.append(message)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    states: dict[str, int] = {}
    for f in finished:
        states[f.state] = states.get(f.state, 0) + 1
    return elapsed, states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--only", choices=sorted(SYSTEMS))
    args = parser.parse_args()
    print(f"{args.jobs} trivial jobs per system; MUPPET poll_interval {args.poll_interval} s")
    print(f"{'system':<11} {'shell loop':>16} {'muppet executor':>20} {'ratio':>6}  states")
    ran = False
    for kind in sorted(SYSTEMS):
        if args.only and kind != args.only:
            continue
        if not answers(SYSTEMS[kind]["probe"]):
            print(f"{kind:<11} not answering ({' '.join(SYSTEMS[kind]['probe'])}): skipped")
            continue
        ran = True
        with tempfile.TemporaryDirectory(prefix=f"muppet-bench-{kind}-") as tmp:
            work = Path(tmp)
            (work / "shell").mkdir()
            (work / "muppet").mkdir()
            shell = shell_loop(kind, args.jobs, work / "shell")
            muppet, states = trio.run(through_muppet, kind, args.jobs, work / "muppet", args.poll_interval)
        shell_rate, muppet_rate = args.jobs / shell, args.jobs / muppet
        print(
            f"{kind:<11} {shell_rate:7.1f} jobs/s ({shell:5.1f} s) {muppet_rate:9.1f} jobs/s ({muppet:5.1f} s)"
            f" {muppet_rate / shell_rate:6.2f}  {states}"
        )
    if not ran:
        sys.exit("no batch system answered: run .ci/services/start-sge.sh or start-slurm.sh")


if __name__ == "__main__":
    main()
