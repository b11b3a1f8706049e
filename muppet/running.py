"""The configuration the daemon runs now, shared by the tasks that take a
reload without a restart (docs/architecture.md, "Reloading the
configuration").

``muppet/daemon.py`` makes one ``RunningConfig`` and hands it to the API,
cron and the expiry task; the reload task (``muppet/reloader.py``) replaces
its configuration once a reload is committed. A reader takes
``running.config`` whenever it needs a setting, and a task that sleeps until
a moment the configuration decides (cron's next firing) waits on
``changed`` as well. The scheduler and the executor do not read it: they get
a reload in their inboxes, in order with everything else they receive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from .model import Config


class RunningConfig:
    """A configuration that a reload replaces, and a way to wait for that.

    Not thread-safe: read and replaced from the Trio thread only.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        #: how many times it was replaced
        self.version = 0
        self._replaced = trio.Event()

    @property
    def config(self) -> Config:
        return self._config

    def replace(self, config: Config) -> None:
        """Run on ``config`` from now on; wakes every task in ``changed``."""
        self._config = config
        self.version += 1
        self._replaced.set()
        self._replaced = trio.Event()

    async def changed(self, version: int) -> Config:
        """Return the configuration once it is newer than ``version`` (at
        once if it is already). Cancellable; nothing is lost by cancelling."""
        while self.version == version:
            await self._replaced.wait()
        return self._config


class Role:
    """Whether this daemon is the active one or a standby waiting for the
    lease (docs/operations.md, "Running a standby"), for the API: a standby
    serves reads and refuses writes and commands, naming the active daemon.

    ``standing`` returns who is active and who waits, as the standby last
    read it (a ``muppet.db.lease.Standing``, or None before its first look).
    Not thread-safe: read and changed from the Trio thread only."""

    def __init__(self, active: bool, standing: Callable[[], Any] = lambda: None) -> None:
        self.active = active
        self.standing = standing
        self._activated = trio.Event()
        if active:
            self._activated.set()

    def activate(self) -> None:
        """This daemon holds the lease now, and its tasks run."""
        self.active = True
        self._activated.set()

    async def wait_active(self) -> None:
        await self._activated.wait()
