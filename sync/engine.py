"""The libtorrent session as a Trio-friendly object.

::

    async with open_engine(EngineSettings.from_config(config)) as engine:
        info_hash = await engine.seed(path, torrent_bytes)
        ...
        path = await engine.fetch(torrent_bytes, save_dir, peers=[("10.0.0.5", 6881)])

One session per engine. libtorrent runs its own network and disk threads; the
engine's only task on the Trio loop pops alerts when libtorrent writes to the
alert socket (``set_alert_fd`` + ``trio.lowlevel.wait_readable``: no thread is
parked in ``wait_for_alert``), copies what it needs out of each alert at once
(alerts die at the next pop) and wakes the waiters. Calls that wait for an answer
from libtorrent's network thread (``add_torrent``, ``status``, building and
destroying the session) run in worker threads; calls that only post a request
(``connect_peer``, ``flush_cache``, ``save_resume_data``) run on the loop.

Settings that decide whether it works at all (shared NOTES, measured): uTP off
unless asked for (it crawls on loopback and in LANs), several connections per IP
allowed (every test peer is 127.0.0.1; so are NATed consumers), a 1 s
``min_reconnect_time`` (the default 60 s stalls a downloader that knocked while
the seeder was still checking), rate limits applied to local peers too, and
"finished" is not "on disk": :meth:`Engine.fetch` returns only after
``flush_cache`` and its ``cache_flushed_alert``.

Resume data: every torrent's resume data (with its info dict) is kept in
``STATE_DIR/resume/INFOHASH.fastresume``, written atomically, while it
downloads (at most every ``resume_interval`` seconds), when it completes, and
when the engine closes. A new engine re-adds every torrent found there, so a
download killed with ``kill -9`` continues from the verified pieces of its last
save, and a seeded file is seeded again without a re-check.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import libtorrent as lt
import trio

from muppet.fileio import write_atomically

from .config import DEFAULT_LISTEN, FetchConfig, Listen, Network, SeedConfig, _listen
from .errors import DiskFull, EngineError, TorrentError
from .torrent import torrent_info

__all__ = [
    "RESUME_SUFFIX",
    "Engine",
    "EngineSettings",
    "TorrentStatus",
    "build_ip_filter",
    "open_engine",
    "session_settings",
]

log = logging.getLogger("muppet.sync.engine")

RESUME_SUFFIX = ".fastresume"

#: while a fetch waits, it dials its peers again this often: libtorrent gives up
#: on a peer after a few failed connections, and a seeder that was down during
#: a network outage must be tried again when it is back (issue 5: "survive
#: network outages and recover quickly")
RECONNECT_INTERVAL = 5.0

#: how long closing the engine waits for the last resume data
CLOSE_RESUME_TIMEOUT = 10.0

#: how long opening waits for libtorrent to report its listen socket
LISTEN_TIMEOUT = 20.0

_ALERT_MASK = (
    lt.alert_category.error
    | lt.alert_category.status
    | lt.alert_category.storage
    | lt.alert_category.ip_block
    | lt.alert_category.piece_progress
    | lt.alert_category.tracker
)


def _parse_listen(value: str | Listen) -> Listen:
    return value if isinstance(value, Listen) else _listen(value)


@attrs.frozen
class EngineSettings:
    """What a session needs from a seed or fetch configuration.

    ``listen`` as in the configuration (``Listen`` or "HOST:PORT[-LAST]", port 0:
    any free port); rates in bytes per second, 0 unlimited; ``allow``/``deny``
    networks as in ``[peers]``; ``resume_interval``: the shortest time between
    two resume-data saves of a downloading torrent.
    """

    state_dir: Path = attrs.field(converter=Path)
    listen: Listen = attrs.field(default=DEFAULT_LISTEN, converter=_parse_listen)
    utp: bool = False
    upload_rate: int = 0
    download_rate: int = 0
    allow: tuple[Network, ...] = attrs.field(default=(), converter=tuple)
    deny: tuple[Network, ...] = attrs.field(default=(), converter=tuple)
    resume_interval: float = 5.0

    @classmethod
    def from_config(cls, config: SeedConfig | FetchConfig) -> EngineSettings:
        return cls(
            state_dir=config.state_dir,
            listen=config.listen,
            utp=config.utp,
            upload_rate=config.peers.upload_rate,
            download_rate=config.peers.download_rate,
            allow=config.peers.allow,
            deny=config.peers.deny,
        )


@attrs.frozen
class TorrentStatus:
    """One torrent, as :meth:`Engine.status` saw it.

    ``state``: "queued" (paused), "checking", "downloading", "seeding" or
    "error" (then ``error`` says why). ``progress`` 0..1; rates in bytes per
    second; ``peers`` connected; ``total_download``/``total_upload``: payload
    bytes moved since this engine added the torrent; ``pieces`` verified of
    ``num_pieces``.
    """

    info_hash: str
    name: str
    state: str
    progress: float
    download_rate: int
    upload_rate: int
    peers: int
    total_download: int
    total_upload: int
    pieces: int
    num_pieces: int
    save_path: str
    error: str | None = None


_CHECKING = {
    lt.torrent_status.states.checking_files,
    lt.torrent_status.states.queued_for_checking,
    lt.torrent_status.states.checking_resume_data,
    lt.torrent_status.states.allocating,
}
_DOWNLOADING = {lt.torrent_status.states.downloading, lt.torrent_status.states.downloading_metadata}
_SEEDING = {lt.torrent_status.states.seeding, lt.torrent_status.states.finished}


def _state_name(st: lt.torrent_status) -> str:
    if st.errc.value() != 0:
        return "error"
    if st.state in _CHECKING:
        return "checking"
    if st.flags & lt.torrent_flags.paused:
        return "queued"
    if st.state in _SEEDING:
        return "seeding"
    return "downloading"


def _torrent_status(st: lt.torrent_status) -> TorrentStatus:
    return TorrentStatus(
        info_hash=str(st.info_hashes.v1),
        name=st.name,
        state=_state_name(st),
        progress=float(st.progress),
        download_rate=int(st.download_payload_rate),
        upload_rate=int(st.upload_payload_rate),
        peers=int(st.num_peers),
        total_download=int(st.total_payload_download),
        total_upload=int(st.total_payload_upload),
        pieces=int(st.num_pieces),
        num_pieces=len(st.pieces),
        save_path=st.save_path,
        error=st.errc.message() if st.errc.value() != 0 else None,
    )


def build_ip_filter(allow: Iterable[Network], deny: Iterable[Network]) -> lt.ip_filter:
    """libtorrent's filter for ``[peers]``: with an allow list, every address
    outside it is blocked; deny wins over allow. Later rules override earlier
    ones in libtorrent's ip_filter, hence the order."""
    allow, deny = list(allow), list(deny)
    flt = lt.ip_filter()
    if allow:
        flt.add_rule("0.0.0.0", "255.255.255.255", 1)
        flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
        for net in allow:
            flt.add_rule(str(net.network_address), str(net.broadcast_address), 0)
    for net in deny:
        flt.add_rule(str(net.network_address), str(net.broadcast_address), 1)
    return flt


def session_settings(settings: EngineSettings) -> dict:
    """The libtorrent settings_pack for these settings (see the module docstring
    for why each non-default is there)."""
    listen = settings.listen
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return {
        "listen_interfaces": f"{host}:{listen.first_port}",
        "max_retry_port_bind": listen.last_port - listen.first_port,
        # Binding some other port than the configured ones would leave firewall
        # rules and peers' address books wrong: fail instead.
        "listen_system_port_fallback": listen.first_port == 0,
        "enable_incoming_utp": settings.utp,
        "enable_outgoing_utp": settings.utp,
        "enable_incoming_tcp": True,
        "enable_outgoing_tcp": True,
        "allow_multiple_connections_per_ip": True,
        "min_reconnect_time": 1,
        # Queue requests for 1 s of a peer's rate, not 3: with 3, every
        # consumer reserves a long queue of pieces at the seeder that the
        # others then fetch from it too (bench/sync.py, 200 MB, 4 consumers at
        # 100 Mbit/s: the seeder sent 1.59x the file and the swarm took 1.56x
        # one consumer's time; with 1 s, 1.38x and 1.37x).
        "request_queue_time": 1,
        "ignore_limits_on_local_network": False,
        "upload_rate_limit": settings.upload_rate,
        "download_rate_limit": settings.download_rate,
        # Peers come from the index and the configured trackers only: the
        # consumers are known hosts, and "keep transfers local" rules out
        # discovery on public networks.
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": int(_ALERT_MASK),
        "alert_queue_size": 100_000,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "stop_tracker_timeout": 1,
        "user_agent": "muppet-sync/libtorrent-" + lt.__version__,
    }


class _Torrent:
    """What the engine tracks per torrent beyond libtorrent (mutable, owned by
    the engine; waiters sleep on ``changed``, which every update replaces)."""

    def __init__(self, info_hash: str, name: str) -> None:
        self.info_hash = info_hash
        self.name = name
        self.handle: lt.torrent_handle | None = None
        self.finished = False
        self.checked = False
        self.removed = False
        self.error: str | None = None
        self.error_errno = 0
        self.hash_failures = 0
        self.flushes = 0
        self.resume_saves = 0  # saves finished (written or failed)
        self.resume_pending = False
        self.last_resume = 0.0
        self.changed = trio.Event()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class Engine:
    """A running libtorrent session; made by :func:`open_engine` only.

    All methods are async and never block the Trio loop. Cancelling one of them
    cancels the wait, not libtorrent's work: a cancelled :meth:`fetch` leaves
    the torrent downloading in the engine (:meth:`remove` drops it).
    """

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._ses: lt.session | None = None
        self._torrents: dict[str, _Torrent] = {}
        self._removals: dict[str, tuple[bool, trio.Event]] = {}
        self._resume_dir = Path(settings.state_dir) / "resume"
        self._alert_r, self._alert_w = socket.socketpair()
        self._alert_r.setblocking(False)
        self._alert_w.setblocking(False)
        self._listening = trio.Event()
        self._listen_error: str | None = None
        self._listen_port = 0
        self._write_send, self._write_receive = trio.open_memory_channel[tuple](math.inf)
        self._closing = False
        #: connections refused by the [peers] allow/deny filter so far
        self.peers_blocked = 0
        self._writer_done = trio.Event()
        self._loops_scope = trio.CancelScope(shield=True)
        self._writer_scope = trio.CancelScope(shield=True)

    # --- public -------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        """The TCP port the session listens on (the one chosen, with a range or 0)."""
        return self._listen_port

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
        path = Path(path).absolute()
        info = torrent_info(torrent_bytes)
        ih = str(info.info_hashes().v1)
        if ih in self._torrents:
            return ih
        size = await trio.to_thread.run_sync(_file_size, path)
        if size is None:
            raise TorrentError(f"{path}: no such file to seed")
        if size != info.total_size():
            raise TorrentError(f"{path}: {size} bytes, its torrent {ih} says {info.total_size()}; not seeding it")
        params = lt.add_torrent_params()
        params.ti = info
        params.save_path = str(path.parent)
        if path.name != info.name():
            params.renamed_files = {0: path.name}
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
                    f"{path}: {info.num_pieces() - bad} of {info.num_pieces()} pieces do not match "
                    f"torrent {ih}{'; ' + torrent.error if torrent.error else ''}; not seeding it"
                )
        self._request_resume(torrent)
        log.info("seeding %s (%s)", path, ih)
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
        torrent = self._torrents.get(ih)
        if torrent is None:
            params = lt.add_torrent_params()
            params.ti = info
            params.save_path = str(Path(save_dir).absolute())
            params.flags = self._flags(params.flags, seed_mode=False)
            torrent = await self._add(ih, info.name(), params)
            self._request_resume(torrent)
        for url in trackers:  # this side's trackers, beside the torrent's own
            torrent.handle.add_tracker({"url": url})
        handle = torrent.handle
        if torrent.error:
            # An earlier attempt stopped on an error (a full disk puts the
            # torrent in upload mode): this call is the retry.
            log.info("%s (%s): retrying after: %s", torrent.name, ih, torrent.error)
            torrent.error, torrent.error_errno = None, 0
            handle.unset_flags(lt.torrent_flags.upload_mode)
            handle.clear_error()
            handle.resume()
        log.info("fetching %s (%s) from %s", info.name(), ih, ", ".join(f"{h}:{p}" for h, p in peers) or "trackers")
        next_dial = 0.0
        while not torrent.finished:
            self._raise_if_failed(torrent)
            if trio.current_time() >= next_dial:
                self._dial(torrent, peers)
                next_dial = trio.current_time() + RECONNECT_INTERVAL
                # Belt and braces: a torrent restored complete from resume
                # data may never post torrent_finished_alert.
                status = await self._handle_status(torrent)
                if status is not None and status.is_seeding:
                    torrent.finished = True
                    break
            with trio.move_on_at(next_dial):
                await torrent.changed.wait()
        self._raise_if_failed(torrent)
        # torrent_finished_alert comes before the last blocks are in the file
        # (NOTES: 4 wrong SHA-256 of 10 reading right after it).
        flushes = torrent.flushes
        handle.flush_cache()
        while torrent.flushes == flushes:
            self._raise_if_failed(torrent)
            await torrent.changed.wait()
        await self._save_resume(torrent)
        status = await self._handle_status(torrent)
        save_path = status.save_path if status is not None else str(save_dir)
        path = Path(save_path) / info.name()  # single-file torrents: the name is the file's
        log.info("fetched %s (%s)", path, ih)
        return path

    async def add_peers(self, info_hash: str, peers: Sequence[tuple[str, int]]) -> bool:
        """Dial these (host, port) peers for a torrent the engine has (a seeder
        learning of consumers, a consumer of a new holder); False when the
        engine does not have it. libtorrent keeps them in the torrent's peer
        list and reconnects as it sees fit."""
        torrent = self._torrents.get(info_hash)
        if torrent is None or torrent.handle is None:
            return False
        self._dial(torrent, peers)
        return True

    def _dial(self, torrent: _Torrent, peers: Sequence[tuple[str, int]]) -> None:
        for host, port in peers:
            try:
                torrent.handle.connect_peer((host, int(port)))
            except RuntimeError as e:  # a name that does not resolve, a bad address
                log.warning("%s: cannot dial peer %s:%s: %s", torrent.name, host, port, e)

    async def remove(self, info_hash: str, delete_files: bool = False) -> bool:
        """Stop seeding or downloading a torrent and forget its resume data;
        with ``delete_files`` also delete its file (the one in the torrent's
        save directory, not a copy placed elsewhere). Returns once libtorrent
        has done so; False when the engine did not have the torrent."""
        torrent = self._torrents.pop(info_hash, None)
        if torrent is None:
            return False
        torrent.removed = True
        torrent.poke()
        done = trio.Event()
        self._removals[info_hash] = (delete_files, done)
        flags = lt.session.delete_files if delete_files else 0
        self._ses.remove_torrent(torrent.handle, flags)
        await self._write_send.send(("delete", info_hash, None))
        await done.wait()
        log.info("removed %s (%s)%s", torrent.name, info_hash, " and its file" if delete_files else "")
        return True

    async def status(self) -> list[TorrentStatus]:
        """Every torrent of the engine, sorted by name."""
        ses = self._ses

        def collect() -> list[TorrentStatus]:
            return [_torrent_status(h.status()) for h in ses.get_torrents()]

        statuses = []
        for status in await trio.to_thread.run_sync(collect):
            torrent = self._torrents.get(status.info_hash)
            if status.error is None and torrent is not None and torrent.error:
                # libtorrent does not flag every file error on the torrent (a
                # full disk only puts it in upload mode): the engine's record does
                status = attrs.evolve(status, state="error", error=torrent.error)
            statuses.append(status)
        return sorted(statuses, key=lambda s: (s.name, s.info_hash))

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

    async def _add(self, ih: str, name: str, params: lt.add_torrent_params) -> _Torrent:
        # Registered before libtorrent knows it, so that no alert of it is lost.
        torrent = _Torrent(ih, name)
        self._torrents[ih] = torrent
        try:
            torrent.handle = await trio.to_thread.run_sync(self._ses.add_torrent, params)
        except RuntimeError as e:
            self._torrents.pop(ih, None)
            raise TorrentError(f"{name} ({ih}): libtorrent cannot add it: {e}") from None
        return torrent

    async def _handle_status(self, torrent: _Torrent) -> lt.torrent_status | None:
        handle = torrent.handle
        if handle is None or not handle.is_valid():
            return None
        return await trio.to_thread.run_sync(handle.status)

    def _raise_if_failed(self, torrent: _Torrent) -> None:
        if torrent.removed:
            raise TorrentError(f"{torrent.name} ({torrent.info_hash}): removed while waiting for it")
        if torrent.error:
            if torrent.error_errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"disk full: {torrent.name} ({torrent.info_hash}): {torrent.error}")
            raise TorrentError(f"{torrent.name} ({torrent.info_hash}): {torrent.error}")

    def _request_resume(self, torrent: _Torrent) -> None:
        if torrent.resume_pending or torrent.removed or self._closing or torrent.handle is None:
            return
        torrent.resume_pending = True
        torrent.last_resume = time.monotonic()
        # flush_disk_cache: resume data must not claim pieces that are only in
        # memory; save_info_dict: a restarted engine re-adds it without the index.
        torrent.handle.save_resume_data(
            lt.save_resume_flags_t.flush_disk_cache | lt.save_resume_flags_t.save_info_dict
        )

    async def _save_resume(self, torrent: _Torrent) -> None:
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
        await trio.to_thread.run_sync(lambda: self._resume_dir.mkdir(parents=True, exist_ok=True))
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

        def read_all() -> list[tuple[Path, bytes]]:
            return [(p, p.read_bytes()) for p in sorted(self._resume_dir.glob("*" + RESUME_SUFFIX))]

        for path, data in await trio.to_thread.run_sync(read_all):
            try:
                params = lt.read_resume_data(data)
            except RuntimeError as e:
                log.error("%s: unreadable resume data, ignored: %s", path, e)
                continue
            if params.ti is None or not params.ti.is_valid():
                log.error("%s: resume data without the torrent, ignored", path)
                continue
            ih = str(params.ti.info_hashes().v1)
            params.flags = self._flags(params.flags, seed_mode=None)
            try:
                torrent = await self._add(ih, params.ti.name(), params)
            except TorrentError as e:
                log.error("%s: %s", path, e)
                continue
            log.info("resumed %s (%s) in %s", torrent.name, ih, params.save_path)

    async def _alert_loop(self) -> None:
        # Shielded: when the caller is cancelled (SIGTERM cancels everything
        # above the engine), closing still needs alerts to save resume data.
        # open_engine stops this loop itself, last.
        with self._loops_scope:
            while True:
                self._drain_alert_socket()
                for alert in self._ses.pop_alerts():
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

    def _torrent_of(self, alert: lt.alert) -> _Torrent | None:
        handle = alert.handle
        if not handle.is_valid():
            return None
        torrent = self._torrents.get(str(handle.info_hashes().v1))
        if torrent is not None and torrent.handle is None:
            # its alerts can come before add_torrent returns in the worker thread
            torrent.handle = handle
        return torrent

    def _on_alert(self, alert: lt.alert) -> None:
        if isinstance(alert, lt.listen_succeeded_alert):
            if alert.socket_type == lt.socket_type_t.tcp and not self._listening.is_set():
                self._listen_port = alert.port
                log.info("listening on %s:%d", alert.address, alert.port)
                self._listening.set()
            return
        if isinstance(alert, lt.listen_failed_alert):
            log.error("cannot listen: %s", alert.message())
            if alert.socket_type == lt.socket_type_t.tcp and not self._listening.is_set():
                self._listen_error = alert.message()
                self._listening.set()
            return
        if isinstance(alert, (lt.torrent_removed_alert, lt.torrent_deleted_alert, lt.torrent_delete_failed_alert)):
            ih = str(alert.info_hashes.v1)
            removal = self._removals.get(ih)
            if removal is None:
                return
            delete_files, done = removal
            if isinstance(alert, lt.torrent_delete_failed_alert):
                log.error("%s: cannot delete its file: %s", alert.torrent_name, alert.message())
            elif isinstance(alert, lt.torrent_removed_alert) and delete_files:
                return  # wait for the deletion
            del self._removals[ih]
            done.set()
            return
        if isinstance(alert, lt.peer_blocked_alert):
            self.peers_blocked += 1
            log.info("%s: blocked peer %s (%s)", alert.torrent_name, alert.ip, alert.message())
            return
        if isinstance(alert, (lt.tracker_error_alert,)):
            log.warning("%s", alert.message())
            return
        torrent = self._torrent_of(alert) if hasattr(alert, "handle") else None
        if torrent is None:
            if alert.category() & lt.alert_category.error:
                log.warning("%s", alert.message())
            return
        if isinstance(alert, lt.piece_finished_alert):
            if not torrent.resume_pending and time.monotonic() - torrent.last_resume >= self.settings.resume_interval:
                self._request_resume(torrent)
            return
        if isinstance(alert, lt.save_resume_data_alert):
            data = lt.write_resume_data_buf(alert.params)
            try:
                self._write_send.send_nowait(("write", torrent.info_hash, data))
            except trio.ClosedResourceError:  # closing, after the last save
                torrent.resume_pending = False
            return
        if isinstance(alert, lt.save_resume_data_failed_alert):
            log.warning("%s: cannot save resume data: %s", torrent.name, alert.message())
            torrent.resume_pending = False
            torrent.resume_saves += 1
        elif isinstance(alert, lt.torrent_finished_alert):
            torrent.finished = True
        elif isinstance(alert, lt.state_changed_alert):
            if alert.state in _SEEDING:
                torrent.finished = True
        elif isinstance(alert, lt.torrent_checked_alert):
            torrent.checked = True
        elif isinstance(alert, lt.cache_flushed_alert):
            torrent.flushes += 1
        elif isinstance(alert, lt.hash_failed_alert):
            torrent.hash_failures += 1
            log.warning("%s (%s): piece %d failed its hash check, dropped", torrent.name, torrent.info_hash, alert.piece_index)
        elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert)):
            if torrent.error != alert.message():  # libtorrent repeats it per failed write
                log.error("%s (%s): %s", torrent.name, torrent.info_hash, alert.message())
            torrent.error = alert.message()
            category = alert.error.category().name()
            torrent.error_errno = alert.error.value() if category in ("system", "generic") else 0
        elif isinstance(alert, lt.fastresume_rejected_alert):
            log.warning("%s: resume data rejected, re-checking the file: %s", torrent.name, alert.message())
        else:
            return
        torrent.poke()

    async def _writer_loop(self) -> None:
        """Writes and deletes resume files in order, in a worker thread, so
        that a delete after a remove is never undone by an older write."""
        try:
            with self._writer_scope:  # shielded like the alert loop; ends when the channel closes
                async with self._write_receive:
                    async for kind, ih, data in self._write_receive:
                        await self._write_one(kind, ih, data)
        finally:
            self._writer_done.set()

    async def _write_one(self, kind: str, ih: str, data: bytes | None) -> None:
        path = self._resume_dir / (ih + RESUME_SUFFIX)
        try:
            if kind == "write":
                await trio.to_thread.run_sync(write_atomically, path, data)
            else:
                await trio.to_thread.run_sync(_unlink, path)
        except OSError as e:
            log.error("%s: %s", path, e)
        torrent = self._torrents.get(ih)
        if kind == "write" and torrent is not None:
            torrent.resume_pending = False
            torrent.resume_saves += 1
            torrent.poke()

    def _stop_loops(self) -> None:
        self._loops_scope.cancel()
        self._writer_scope.cancel()

    def _destroy(self) -> None:
        # Runs in a worker thread: the session's destructor waits for the
        # trackers' "stopped" announces (stop_tracker_timeout).
        ses, self._ses = self._ses, None
        if ses is not None:
            ses.pause()
            del ses


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@asynccontextmanager
async def open_engine(settings: EngineSettings) -> AsyncIterator[Engine]:
    """Start a libtorrent session, restore the torrents of its state
    directory, and yield the :class:`Engine`.

    Raises :class:`EngineError` if it cannot listen. On exit (normal, error
    or cancellation) it saves every torrent's resume data (at most
    ``CLOSE_RESUME_TIMEOUT`` seconds), then destroys the session in a worker
    thread. An exception from the ``async with`` body comes out as it is, not
    wrapped in an ExceptionGroup by the engine's internal nursery.
    """
    engine = Engine(settings)
    error: Exception | None = None
    try:
        await engine._start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine._alert_loop)
            nursery.start_soon(engine._writer_loop)
            with trio.move_on_after(LISTEN_TIMEOUT):
                await engine._listening.wait()
            if engine._listen_error or not engine._listening.is_set():
                error = EngineError(
                    f"cannot listen on {settings.listen}: {engine._listen_error or 'no answer from libtorrent'}"
                )
                engine._stop_loops()
                nursery.cancel_scope.cancel()
            else:
                try:
                    await engine._restore()
                    yield engine
                except Exception as e:
                    # re-raised below, outside the nursery, so that callers
                    # can catch it by its own type
                    error = e
                finally:
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(CLOSE_RESUME_TIMEOUT) as timeout:
                            await engine._save_all()
                        if timeout.cancelled_caught:
                            log.warning("closing: resume data not saved within %ss", CLOSE_RESUME_TIMEOUT)
                        engine._closing = True
                        engine._write_send.close()
                        await engine._writer_done.wait()
                    engine._stop_loops()
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(engine._destroy)
        engine._alert_r.close()
        engine._alert_w.close()
    if error is not None:
        raise error
