"""The executor task driven as the daemon drives it, for the executor tests
(local, Grid Engine, Slurm): StartJob/KillJob in, JobStarted/JobFinished (or
JobNotStarted) out; and a file system filled to its last byte, for the tests
of a full disk."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from muppet.executor import task as executor_task
from muppet.messages import JobFinished, JobNotStarted, JobStarted, StartJob
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

    async def until_not_started(self, job_id: int) -> JobNotStarted:
        """The JobNotStarted of ``job_id``; any other report of it fails."""
        while True:
            message = await self.next()
            if message.job_id != job_id:
                continue
            assert isinstance(message, JobNotStarted), message
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


def fill(path: Path) -> int:
    """Write ``path`` until its file system is full (ENOSPC); the bytes
    written. Blocking: call it in a worker thread from a Trio test."""
    written = 0
    with open(path, "wb", buffering=0) as file:
        while True:
            try:
                count = file.write(b"\0" * 65536)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                return written
            written += count or 0


def free_pages(path: Path, pages: int) -> None:
    """Give back ``pages`` pages (4 KiB) of a file that :func:`fill` wrote,
    so that exactly that much space is free. Blocking."""
    os.truncate(path, os.path.getsize(path) - pages * 4096)
