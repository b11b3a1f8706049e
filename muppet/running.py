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
