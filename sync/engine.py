"""The libtorrent session as a Trio-friendly object: :class:`Engine`, made by
:func:`open_engine`.

::

    async with open_engine(EngineSettings.from_config(config)) as engine:
        info_hash = await engine.seed(path, torrent_bytes)
        ...
        path = await engine.fetch(torrent_bytes, save_dir, peers=[("10.0.0.5", 6881)])

One session per engine. libtorrent runs its own network and disk threads; the
engine's only task on the Trio loop pops alerts when libtorrent writes to the
alert socket (``set_alert_fd`` + ``trio.lowlevel.wait_readable``: no thread is
parked in ``wait_for_alert``) and hands each to the alert handler
(sync.alerts), which copies what it needs out of it at once (alerts die at
the next pop) and wakes the waiters. Calls that wait for an answer from
libtorrent's network thread (``add_torrent``, ``status``, building and
destroying the session) run in worker threads, and so do the reads of its
figures for /metrics (``status``, ``post_session_stats``); calls that only
post a request for a torrent (``connect_peer``, ``flush_cache``,
``save_resume_data``) run on the loop.

Around it: sync.engine_settings (what the session is set up with, and why),
sync.alerts (what the engine learns from libtorrent), sync.resume (resume
data on disk, so that restarts lose no verified piece), sync.torrent_status
(what :meth:`Engine.status` reports).

"Finished" is not "on disk": reading a file right after libtorrent's
``torrent_finished_alert`` gave a wrong SHA-256 in 4 runs of 10 (libtorrent
2.1.1), so :meth:`Engine.fetch` returns only after ``flush_cache`` and its
``cache_flushed_alert``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import libtorrent as lt
import trio

from muppet.unwrap_group import unwrap_group

from .alerts import AlertHandler, RequestResume, TorrentRecord, WriteResume
from .engine_settings import EngineSettings, build_ip_filter, session_settings
from .errors import DiskFull, EngineError, ListenError, TorrentError
from .resume import SAVE_FLAGS, ResumeFiles, ResumeWriter, params_from_resume_data
from .torrent import torrent_info
from .torrent_status import TorrentStatus, torrent_status_of

__all__ = ["CLOSE_RESUME_TIMEOUT", "LISTEN_TIMEOUT", "RECONNECT_INTERVAL", "STATS_TIMEOUT", "Engine", "open_engine"]

log = logging.getLogger("muppet.sync.engine")

#: while a fetch waits, it dials its peers again this often: libtorrent gives up
#: on a peer after a few failed connections, and a seeder that was down during
#: a network outage must be tried again when it is back (docs/sync.md: "peers
#: are dialled again every few seconds")
RECONNECT_INTERVAL = 5.0

#: looks (one each RECONNECT_INTERVAL) without a byte more of a download
#: that had a piece fail its hash check, with peers connected, after which
#: the fetch has libtorrent check its file again: libtorrent may leave such
#: a piece out of its picks for good (docs/sync.md, "A piece that failed")
STALLED_LOOKS = 3

#: how long a fetch keeps its new torrent paused waiting for libtorrent's
#: first check of it (:meth:`Engine.fetch`): it comes within milliseconds;
#: past this the torrent is resumed unchecked, and libtorrent dials its
#: peers at its next tick, as it would have without the wait
PAUSED_CHECK_TIMEOUT = 1.0

#: how long closing the engine waits for the last resume data
CLOSE_RESUME_TIMEOUT = 10.0

#: how long opening waits for libtorrent to report its listen socket
LISTEN_TIMEOUT = 20.0

#: how long :meth:`Engine.counters` waits for libtorrent's answer: it comes
#: within milliseconds (one trip through the network thread); a scrape
#: must not hang on a stuck session
STATS_TIMEOUT = 2.0


class Engine:
    """A running libtorrent session; made by :func:`open_engine` only.

    All methods are async and never block the Trio loop. Cancelling one of them
    cancels the wait, not libtorrent's work: a cancelled :meth:`fetch` leaves
    the torrent downloading in the engine (:meth:`remove` drops it).
    """

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._ses: lt.session | None = None
        self._torrents: dict[str, TorrentRecord] = {}
        self._alerts = AlertHandler(self._torrents, settings.resume_interval)
        self._resume_files = ResumeFiles(Path(settings.state_dir) / "resume")
        self._resume_writer = ResumeWriter(self._resume_files, self._resume_written)
        self._alert_r, self._alert_w = socket.socketpair()
        self._alert_r.setblocking(False)
        self._alert_w.setblocking(False)
        self._closing = False
        # Shielded: when the caller is cancelled (SIGTERM cancels everything
        # above the engine), closing still needs alerts to save resume data.
        # open_engine stops the alert loop itself, last.
        self._alert_scope = trio.CancelScope(shield=True)

    # --- public -------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        """The TCP port the session listens on (the one chosen, with a range or 0)."""
        return self._alerts.listen_port

    @property
    def peers_blocked(self) -> int:
        """Connections refused by the ``[peers]`` allow/deny filter so far."""
        return self._alerts.peers_blocked

    async def seed(
        self, path: str | os.PathLike[str], torrent_bytes: bytes, *, verify: bool = False
    ) -> str:
        """Seed the complete file at ``path``, whose torrent is ``torrent_bytes``;
        returns the info-hash (hex). If the engine has the torrent already
        (restored from resume data, or seeded before), nothing changes.

        ``verify=False`` uses libtorrent's seed mode: no up-front check, each
        piece is hashed when first uploaded (a piece that fails makes libtorrent
        leave seed mode and re-check the file, so a bad copy is never sent as
        good). ``verify=True`` checks the whole file first and raises
        :class:`TorrentError` (the torrent not added) if any piece differs.
        """
        info = torrent_info(torrent_bytes)
        ih = str(info.info_hashes().v1)
        if ih in self._torrents:
            return ih
        file, size = await trio.to_thread.run_sync(_absolute_file_size, Path(path))
        if size is None:
            raise TorrentError(f"{file}: no such file to seed")
        if size != info.total_size():
            raise TorrentError(f"{file}: {size} bytes, its torrent {ih} says {info.total_size()}; not seeding it")
        params = lt.add_torrent_params()
        params.ti = info
        params.save_path = str(file.parent)
        if file.name != info.name():
            params.renamed_files = {0: file.name}
        params.flags = self._flags(params.flags, seed_mode=not verify)
        torrent = await self._add(ih, info.name(), params)
        if verify:
            while not (torrent.checked or torrent.error or torrent.removed):
                await torrent.changed.wait()
            status = await self._handle_status(torrent)
            if torrent.error or status is None or not status.is_seeding:
                bad = (status.num_pieces if status else 0)
                await self.remove(ih)
                raise TorrentError(
                    f"{file}: {info.num_pieces() - bad} of {info.num_pieces()} pieces do not match "
                    f"torrent {ih}{'; ' + torrent.error if torrent.error else ''}; not seeding it"
                )
        self._request_resume(torrent)
        log.info("seeding %s (%s)", file, ih)
        return ih

    async def fetch(
        self,
        torrent_bytes: bytes,
        save_dir: str | os.PathLike[str],
        peers: Sequence[tuple[str, int]] = (),
        trackers: Sequence[str] = (),
    ) -> Path:
        """Download the torrent's file into ``save_dir`` (keeping it seeded
        there afterwards); returns the file's path once it is complete, flushed
        to the file and its resume data saved.

        ``peers``: (host, port) pairs to dial (the hosts that hold the file),
        dialled again every few seconds until complete; trackers in the torrent
        are announced to as well. If the engine has the torrent already (from
        resume data), the download continues where its verified pieces end, in
        the save directory it had. ``trackers``: more tracker URLs to announce
        to (the consumer's own ``trackers``).

        Raises :class:`TorrentError` when libtorrent reports an error for it
        (:class:`DiskFull` when that is ENOSPC) or it is removed meanwhile.
        The file in ``save_dir`` only holds pieces that passed their SHA-1
        (libtorrent drops the others), but it is only complete when this
        returns: check its SHA-256 and place it with :func:`sync.place.verify_and_place`.
        """
        info = torrent_info(torrent_bytes)
        ih = str(info.info_hashes().v1)
        wanted = [(host, int(port)) for host, port in peers]
        torrent = self._torrents.get(ih)
        added_here = torrent is None
        if torrent is None:
            params = lt.add_torrent_params()
            params.ti = info
            params.save_path = await trio.to_thread.run_sync(os.path.abspath, save_dir)
            # Added paused, and resumed with its peers listed once checked:
            # libtorrent dials a torrent's listed peers as it resumes if its
            # files are checked by then (torrent::do_resume, want_peers), and
            # otherwise, like a peer given to connect_peer on a running
            # torrent, at its session's next tick, up to a second later
            # (docs/sync.md, "Where a consumer's first second goes"). The
            # quick check (no file yet, or nothing to verify) is done while
            # paused; a file already in the save directory is checked piece
            # by piece only once the torrent runs (torrent::should_check_files),
            # so that one is resumed at once. Resumed however the wait ends,
            # so nothing is left paused; resume data never restores a torrent
            # paused either (``_flags``).
            params.flags = self._flags(params.flags, seed_mode=False) | lt.torrent_flags.paused
            torrent = await self._add(ih, info.name(), params)
            added = torrent.handle
            assert added is not None  # _add returns the torrent with its handle
            try:
                _dial(torrent.name, added, sorted(set(wanted)))
                with trio.move_on_after(PAUSED_CHECK_TIMEOUT):
                    while not (torrent.checked or torrent.full_check or torrent.error or torrent.removed):
                        await torrent.changed.wait()
            finally:
                if not torrent.removed and added.is_valid():
                    added.resume()
            self._request_resume(torrent)
        torrent.peers.update(wanted)
        handle = await self._handle_of(torrent)
        for url in trackers:  # this side's trackers, beside the torrent's own
            handle.add_tracker({"url": url})
        if torrent.error and not added_here:
            # An earlier attempt stopped on an error (a full disk puts the
            # torrent in upload mode): this call is the retry. An error of
            # the check above is this attempt's own, raised below.
            log.info("%s (%s): retrying after: %s", torrent.name, ih, torrent.error)
            torrent.error, torrent.error_errno = None, 0
            handle.unset_flags(lt.torrent_flags.upload_mode)
            handle.clear_error()
            handle.resume()
        log.info("fetching %s (%s) from %s", info.name(), ih, ", ".join(f"{h}:{p}" for h, p in peers) or "trackers")
        torrent.fetching = True
        try:
            # a torrent added here dialled its peers as it resumed
            next_dial = trio.current_time() + RECONNECT_INTERVAL if added_here else 0.0
            stalled = _Stall()
            while not torrent.finished:
                self._raise_if_failed(torrent)
                if trio.current_time() >= next_dial:
                    # the peers add_peers brought meanwhile too (new copies in the index)
                    _dial(torrent.name, handle, sorted(torrent.peers))
                    next_dial = trio.current_time() + RECONNECT_INTERVAL
                    # Belt and braces: a torrent restored complete from resume
                    # data may never post torrent_finished_alert.
                    status = await self._handle_status(torrent)
                    if status is not None and status.is_seeding:
                        torrent.finished = True
                        break
                    if status is not None and stalled.look(status, torrent.hash_failures):
                        log.warning(
                            "%s (%s): no byte more for %.0f s after %d pieces failed their hash check, with %d "
                            "peers connected: checking the file again", torrent.name, ih,
                            stalled.needed // 2 * RECONNECT_INTERVAL, torrent.hash_failures, status.num_peers,
                        )
                        handle.force_recheck()
                with trio.move_on_at(next_dial):
                    await torrent.changed.wait()
        finally:
            torrent.fetching = False
        self._raise_if_failed(torrent)
        # torrent_finished_alert comes before the last blocks are in the file
        # (see the module docstring).
        flushes = torrent.flushes
        handle.flush_cache()
        while torrent.flushes == flushes:
            self._raise_if_failed(torrent)
            await torrent.changed.wait()
        await self._save_resume(torrent)
        status = await self._handle_status(torrent)
        save_path = status.save_path if status is not None else os.fspath(save_dir)
        path = Path(save_path) / info.name()  # single-file torrents: the name is the file's
        log.info("fetched %s (%s)", path, ih)
        return path

    async def add_peers(self, info_hash: str, peers: Sequence[tuple[str, int]], why: str = "") -> bool:
        """Dial these (host, port) peers for a torrent the engine has (a seeder
        learning of consumers, a consumer of a new holder); False when the
        engine does not have it. libtorrent keeps them in the torrent's peer
        list and reconnects as it sees fit; a :meth:`fetch` still under way
        dials them again every ``RECONNECT_INTERVAL`` like its first peers.
        A peer new to a download is logged, with ``why`` (where it came from)."""
        torrent = self._torrents.get(info_hash)
        if torrent is None or torrent.handle is None:
            return False
        for host, port in peers:
            peer = (host, int(port))
            if peer not in torrent.peers and torrent.fetching:
                log.info("%s (%s): a new peer %s:%d%s, dialling it", torrent.name, info_hash, host, peer[1],
                         f" ({why})" if why else "")
            torrent.peers.add(peer)
        _dial(torrent.name, torrent.handle, peers)
        return True

    async def remove(self, info_hash: str, delete_files: bool = False) -> bool:
        """Stop seeding or downloading a torrent and forget its resume data;
        with ``delete_files`` also delete its file (the one in the torrent's
        save directory, not a copy placed elsewhere). Returns once libtorrent
        has done so; False when the engine did not have the torrent."""
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            return False
        try:
            handle = await self._handle_of(torrent)
        except TorrentError:
            return False  # its add failed, or another call removed it meanwhile
        if self._torrents.pop(info_hash, None) is not torrent:
            return False
        torrent.removed = True
        torrent.poke()
        done = self._alerts.expect_removal(info_hash, delete_files)
        flags = lt.session.delete_files if delete_files else 0
        self._session().remove_torrent(handle, flags)
        self._resume_writer.delete_soon(info_hash)
        await done.wait()
        log.info("removed %s (%s)%s", torrent.name, info_hash, " and its file" if delete_files else "")
        return True

    async def status(self) -> list[TorrentStatus]:
        """Every torrent of the engine, sorted by name."""
        ses = self._session()

        def collect() -> list[TorrentStatus]:
            return [torrent_status_of(h.status()) for h in ses.get_torrents()]

        statuses = []
        for status in await trio.to_thread.run_sync(collect):
            torrent = self._torrents.get(status.info_hash)
            if status.error is None and torrent is not None and torrent.error:
                # libtorrent does not flag every file error on the torrent (a
                # full disk only puts it in upload mode): the engine's record does
                status = attrs.evolve(status, state="error", error=torrent.error)
            statuses.append(status)
        return sorted(statuses, key=lambda s: (s.name, s.info_hash))

    async def counters(self) -> Mapping[str, int] | None:
        """The session's counters (sync.alerts.SESSION_COUNTERS, by
        libtorrent's names) as libtorrent reports them now; None when it
        has not answered within ``STATS_TIMEOUT`` seconds. The byte and
        piece counts start at zero with the engine."""
        alerts = self._alerts
        asked = alerts.stats_received
        # The request only queues work for libtorrent's network thread, but
        # it goes through a worker thread like the other reads of the
        # session's figures (status): a scrape never holds up the loop. The
        # answer comes as an alert, to the alert loop.
        await trio.to_thread.run_sync(self._session().post_session_stats)
        with trio.move_on_after(STATS_TIMEOUT):
            while alerts.stats_received == asked:
                await alerts.stats_changed.wait()
            return alerts.session_counters
        log.warning("libtorrent did not report its session counters within %ss", STATS_TIMEOUT)
        return None

    def has(self, info_hash: str) -> bool:
        """Whether the engine holds this torrent (added, or restored from
        resume data), in any state."""
        return info_hash in self._torrents

    def hash_failures(self, info_hash: str) -> int:
        """Pieces of a torrent that failed their hash check in this engine
        (libtorrent dropped them and fetched them again)."""
        torrent = self._torrents.get(info_hash)
        return torrent.hash_failures if torrent else 0

    # --- internals ----------------------------------------------------------

    def _session(self) -> lt.session:
        if self._ses is None:
            raise EngineError("the libtorrent session is not running (the engine is closed)")
        return self._ses

    def _flags(self, flags: int, *, seed_mode: bool | None) -> int:
        """``seed_mode`` None keeps what resume data says."""
        # Not auto-managed: libtorrent's queue would pause every seed beyond
        # active_seeds (5); the sync decides itself what to seed.
        flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        flags |= lt.torrent_flags.apply_ip_filter
        if seed_mode is not None:
            flags &= ~lt.torrent_flags.seed_mode
            if seed_mode:
                flags |= lt.torrent_flags.seed_mode
        return flags

    async def _add(self, ih: str, name: str, params: lt.add_torrent_params) -> TorrentRecord:
        # Registered before libtorrent knows it, so that no alert of it is lost.
        torrent = TorrentRecord(ih, name)
        self._torrents[ih] = torrent
        try:
            torrent.handle = await trio.to_thread.run_sync(self._session().add_torrent, params)
        except RuntimeError as e:
            self._torrents.pop(ih, None)
            torrent.removed = True  # for a concurrent call waiting in _handle_of
            torrent.poke()
            raise TorrentError(f"{name} ({ih}): libtorrent cannot add it: {e}") from None
        torrent.poke()
        return torrent

    async def _handle_of(self, torrent: TorrentRecord) -> lt.torrent_handle:
        """The torrent's handle, once a concurrent call adding it has done so.
        Raises TorrentError when that add failed or the torrent was removed."""
        while torrent.handle is None and not torrent.removed:
            await torrent.changed.wait()
        if torrent.removed or torrent.handle is None:
            raise TorrentError(f"{torrent.name} ({torrent.info_hash}): removed while waiting for it")
        return torrent.handle

    async def _handle_status(self, torrent: TorrentRecord) -> lt.torrent_status | None:
        handle = torrent.handle
        if handle is None or not handle.is_valid():
            return None
        return await trio.to_thread.run_sync(handle.status)

    def _raise_if_failed(self, torrent: TorrentRecord) -> None:
        if torrent.removed:
            raise TorrentError(f"{torrent.name} ({torrent.info_hash}): removed while waiting for it")
        if torrent.error:
            if torrent.error_errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"disk full: {torrent.name} ({torrent.info_hash}): {torrent.error}")
            raise TorrentError(f"{torrent.name} ({torrent.info_hash}): {torrent.error}")

    def _request_resume(self, torrent: TorrentRecord) -> None:
        if torrent.resume_pending or torrent.removed or self._closing or torrent.handle is None:
            return
        torrent.resume_pending = True
        torrent.last_resume = time.monotonic()
        torrent.handle.save_resume_data(SAVE_FLAGS)

    def _resume_written(self, info_hash: str) -> None:
        torrent = self._torrents.get(info_hash)
        if torrent is not None:
            torrent.resume_pending = False
            torrent.resume_saves += 1
            torrent.poke()

    async def _save_resume(self, torrent: TorrentRecord) -> None:
        while torrent.resume_pending and not torrent.removed:  # a save in flight may predate what we want
            await torrent.changed.wait()
        saves = torrent.resume_saves
        self._request_resume(torrent)
        while torrent.resume_saves == saves and not torrent.removed:
            await torrent.changed.wait()

    async def _save_all(self) -> None:
        waits = []
        for torrent in list(self._torrents.values()):
            if torrent.handle is not None:
                # one in flight counts: it is newer than anything we hold
                waits.append((torrent, torrent.resume_saves))
                self._request_resume(torrent)
        for torrent, saves in waits:
            while torrent.resume_saves == saves and not torrent.removed:
                await torrent.changed.wait()

    async def _start(self) -> None:
        await trio.to_thread.run_sync(self._resume_files.make_directory)
        pack = session_settings(self.settings)
        ip_filter = build_ip_filter(self.settings.allow, self.settings.deny)

        def build() -> lt.session:
            ses = lt.session(pack)
            ses.set_ip_filter(ip_filter)
            ses.set_alert_fd(self._alert_w.fileno())
            return ses

        self._ses = await trio.to_thread.run_sync(build)

    async def _restore(self) -> None:
        """Re-add every torrent whose resume data is in the state directory."""
        for path, data in await trio.to_thread.run_sync(self._resume_files.read_all):
            try:
                params, info = params_from_resume_data(data)
            except ValueError as e:
                log.error("%s: %s, ignored", path, e)
                continue
            ih = str(info.info_hashes().v1)
            params.flags = self._flags(params.flags, seed_mode=None)
            try:
                torrent = await self._add(ih, info.name(), params)
            except TorrentError as e:
                log.error("%s: %s", path, e)
                continue
            log.info("resumed %s (%s) in %s", torrent.name, ih, params.save_path)

    async def _alert_loop(self) -> None:
        with self._alert_scope:
            while True:
                self._drain_alert_socket()
                for alert in self._session().pop_alerts():
                    try:
                        self._on_alert(alert)
                    except Exception:  # one odd alert must not kill the engine
                        log.exception("handling %s", alert.what())
                await trio.lowlevel.wait_readable(self._alert_r)

    def _drain_alert_socket(self) -> None:
        # Drained before popping: libtorrent writes a byte only when its queue
        # goes from empty to non-empty, so an alert after the pop wakes us.
        try:
            while self._alert_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _on_alert(self, alert: lt.alert) -> None:
        effect = self._alerts.handle(alert, time.monotonic())
        if isinstance(effect, RequestResume):
            self._request_resume(effect.torrent)
        elif isinstance(effect, WriteResume):
            if not self._resume_writer.write_soon(effect.torrent.info_hash, effect.data):
                effect.torrent.resume_pending = False  # closing, after the last save

    def _stop_loops(self) -> None:
        self._alert_scope.cancel()
        self._resume_writer.stop()

    def _destroy(self) -> None:
        # Runs in a worker thread: the session's destructor waits for the
        # trackers' "stopped" announces (stop_tracker_timeout).
        ses, self._ses = self._ses, None
        if ses is not None:
            ses.pause()
            del ses


def _absolute_file_size(path: Path) -> tuple[Path, int | None]:
    """The absolute path, and the size of the regular file there (None when
    there is none). Blocks."""
    path = path.absolute()
    try:
        return path, path.stat().st_size if path.is_file() else None
    except OSError:
        return path, None


class _Stall:
    """Whether a download that had a piece fail its hash check has stalled:
    STALLED_LOOKS looks in a row with peers connected and no byte more.
    libtorrent puts a failed piece back among those to fetch once its disk
    thread has cleared it; a download whose other pieces all came meanwhile
    was seen to ask nobody for it again, the piece's bytes still counted as
    done (docs/sync.md, "A piece that failed"). A check of the file rebuilds
    what libtorrent knows of it from the disk."""

    def __init__(self) -> None:
        self.done = -1
        self.looks = 0
        #: looks needed: STALLED_LOOKS, twice as many after each check, so
        #: that a download stuck for another reason (every peer choking it)
        #: does not have a big file read again every few seconds
        self.needed = STALLED_LOOKS

    def look(self, status: lt.torrent_status, hash_failures: int) -> bool:
        """Take one look; True when the download has stalled (once, then
        the count starts again)."""
        if status.total_done != self.done or not hash_failures or not status.num_peers \
                or status.state == lt.torrent_status.states.checking_files:
            self.done, self.looks = status.total_done, 0
            return False
        self.looks += 1
        if self.looks < self.needed:
            return False
        self.looks = 0
        self.needed *= 2
        return True


def _dial(name: str, handle: lt.torrent_handle, peers: Sequence[tuple[str, int]]) -> None:
    for host, port in peers:
        try:
            handle.connect_peer((host, int(port)))
        except RuntimeError as e:  # a name that does not resolve, a bad address
            log.warning("%s: cannot dial peer %s:%s: %s", name, host, port, e)


@asynccontextmanager
async def open_engine(settings: EngineSettings) -> AsyncIterator[Engine]:
    """Start a libtorrent session, restore the torrents of its state
    directory, and yield the :class:`Engine`.

    Raises :class:`ListenError` if it cannot listen. On exit (normal, error
    or cancellation) it saves every torrent's resume data (at most
    ``CLOSE_RESUME_TIMEOUT`` seconds), then destroys the session in a worker
    thread. An exception from the ``async with`` body comes out as it is, not
    wrapped in an ExceptionGroup by the engine's internal nursery.
    """
    engine = Engine(settings)
    try:
        await engine._start()
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine._alert_loop)
                nursery.start_soon(engine._resume_writer.run)
                # The alert loop is shielded (it must outlive a cancelled
                # body to save resume data), so every way out of this block,
                # a cancellation while waiting to listen included, stops the
                # loops here or the nursery would wait for them for ever.
                try:
                    with trio.move_on_after(LISTEN_TIMEOUT):
                        await engine._alerts.listening.wait()
                    if engine._alerts.listen_error or not engine._alerts.listening.is_set():
                        raise ListenError(
                            f"cannot listen on {settings.listen}: "
                            f"{engine._alerts.listen_error or 'no answer from libtorrent'}"
                        )
                    try:
                        await engine._restore()
                        yield engine
                    finally:
                        with trio.CancelScope(shield=True):
                            with trio.move_on_after(CLOSE_RESUME_TIMEOUT) as timeout:
                                await engine._save_all()
                            if timeout.cancelled_caught:
                                log.warning("closing: resume data not saved within %ss", CLOSE_RESUME_TIMEOUT)
                            engine._closing = True
                            engine._resume_writer.close()
                            await engine._resume_writer.done.wait()
                finally:
                    engine._stop_loops()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(engine._destroy)
        engine._alert_r.close()
        engine._alert_w.close()
