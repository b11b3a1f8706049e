"""The executor task driven as the daemon drives it, for the executor tests
(local, Grid Engine, Slurm): StartJob/KillJob in, JobStarted/JobFinished out."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from muppet.executor import task as executor_task
from muppet.messages import JobFinished, JobStarted, StartJob
from muppet.model import ExecutorConfig

#: seconds; only so that a broken test fails instead of hanging
SAFETY = 120


class Executor:
    """The test's end of a running executor task's channels."""

    def __init__(self, send, receive):
        self.send, self.receive = send, receive
        #: every report received so far
        self.messages: list = []

    async def next(self, kind=None):
        with trio.fail_after(SAFETY):
            message = await self.receive.receive()
        self.messages.append(message)
        if kind is not None:
            assert isinstance(message, kind), message
        return message

    async def until_finished(self, job_id: int) -> tuple[JobStarted | None, JobFinished]:
        started = None
        while True:
            message = await self.next()
            if message.job_id != job_id:
                continue
            if isinstance(message, JobStarted):
                assert started is None, "two JobStarted for one job"
                started = message
            else:
                assert isinstance(message, JobFinished)
                return started, message

    async def until_started(self, job_id: int) -> JobStarted:
        while True:
            message = await self.next()
            if isinstance(message, JobFinished) and message.job_id == job_id:
                raise AssertionError(f"finished before it started: {message}")
            if isinstance(message, JobStarted) and message.job_id == job_id:
                return message

    async def run_job(self, spec: StartJob) -> tuple[JobStarted | None, JobFinished]:
        await self.send.send(spec)
        return await self.until_finished(spec.job.id)


@asynccontextmanager
async def running_executor(executors: Mapping[str, ExecutorConfig], state_dir: Path, output_dir: Path):
    """An executor task; leaving the block cancels it as a daemon's death
    would (the jobs go on running)."""
    to_executor, inbox = trio.open_memory_channel(200)
    reports, from_executor = trio.open_memory_channel(200)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def runner():
            with scope:
                await executor_task.run(
                    inbox, reports, executors=executors,
                    state_dir=str(state_dir), output_dir=str(output_dir),
                )

        nursery.start_soon(runner)
        yield Executor(to_executor, from_executor)
        scope.cancel()


def make_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A state directory and an output directory."""
    state, out = tmp_path / "state", tmp_path / "out"
    state.mkdir()
    out.mkdir()
    return state, out
