"""libtorrent's alerts, turned into what the engine knows of its torrents.

libtorrent reports everything (a piece verified, a file error, a listen
socket, resume data ready) as alerts, which the engine pops on the Trio loop
(sync.engine). An alert is only valid until the next pop, so
:meth:`AlertHandler.handle` copies what it needs out of each one at once:
into the :class:`TorrentRecord` of its torrent (waking the tasks waiting on
it), into the handler's own record of the listen socket, removals and
blocked peers, or into an effect the engine carries out (ask for resume
data, write resume data). It reads no clock (the time is an argument) and
calls nothing in libtorrent but the alert's own accessors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import attrs
import libtorrent as lt
import trio

from .torrent_status import SEEDING_STATES

__all__ = [
    "ALERT_MASK",
    "SESSION_COUNTERS",
    "AlertEffect",
    "AlertHandler",
    "RequestResume",
    "TorrentRecord",
    "WriteResume",
]

log = logging.getLogger("muppet.sync.engine")

#: the alert categories the session posts: what handle() reads, and errors
ALERT_MASK = (
    lt.alert_category.error
    | lt.alert_category.status
    | lt.alert_category.storage
    | lt.alert_category.ip_block
    | lt.alert_category.piece_progress
    | lt.alert_category.tracker
)


#: the session's counters that muppet-sync reports on /metrics (see
#: docs/sync.md, "Metrics and health check"), by libtorrent's names
#: ("Session statistics" in its manual): payload bytes sent and received
#: since the session started, peers connected now, pieces that failed their
#: hash check. A session_stats_alert carries them whatever the alert mask says.
SESSION_COUNTERS = (
    "net.sent_payload_bytes",
    "net.recv_payload_bytes",
    "peer.num_peers_connected",
    "ses.num_piece_failed",
)


class TorrentRecord:
    """What the engine tracks per torrent beyond libtorrent (mutable, owned by
    the engine; waiters sleep on ``changed``, which every update replaces)."""

    def __init__(self, info_hash: str, name: str) -> None:
        self.info_hash = info_hash
        self.name = name
        #: None until libtorrent has added the torrent
        self.handle: lt.torrent_handle | None = None
        self.finished = False
        self.checked = False
        #: libtorrent found files of it to check piece by piece (its
        #: checking_files state), which it does only while the torrent runs
        self.full_check = False
        self.removed = False
        self.error: str | None = None
        self.error_errno = 0
        self.hash_failures = 0
        self.flushes = 0
        self.resume_saves = 0  # saves finished (written or failed)
        self.resume_pending = False
        self.last_resume = 0.0
        #: the (host, port) peers a fetch of it dials again every
        #: RECONNECT_INTERVAL (sync.engine): those it started with and those
        #: added while it runs (Engine.add_peers)
        self.peers: set[tuple[str, int]] = set()
        #: a fetch of it is under way (Engine.fetch)
        self.fetching = False
        self.changed = trio.Event()

    def poke(self) -> None:
        """Wake every task waiting on ``changed``."""
        self.changed.set()
        self.changed = trio.Event()


@attrs.frozen
class RequestResume:
    """Time to ask libtorrent for this torrent's resume data (it is downloading
    and its last save is ``resume_interval`` old)."""

    torrent: TorrentRecord


@attrs.frozen
class WriteResume:
    """libtorrent's resume data for this torrent, to be written."""

    torrent: TorrentRecord
    data: bytes


AlertEffect = RequestResume | WriteResume


@attrs.define
class _Removal:
    delete_files: bool
    done: trio.Event = attrs.field(factory=trio.Event)


class AlertHandler:
    """Reads every alert of one session.

    ``torrents``: the engine's table of its torrents by info-hash (read here,
    never changed); ``resume_interval``: the shortest time between two
    resume-data saves of a downloading torrent.
    """

    def __init__(self, torrents: Mapping[str, TorrentRecord], resume_interval: float) -> None:
        self._torrents = torrents
        self._resume_interval = resume_interval
        self._removals: dict[str, _Removal] = {}
        #: set once libtorrent has reported its TCP listen socket, or failed to
        self.listening = trio.Event()
        self.listen_port = 0
        self.listen_error: str | None = None
        #: connections refused by the [peers] allow/deny filter so far
        self.peers_blocked = 0
        #: SESSION_COUNTERS from the newest session_stats_alert (None before
        #: the first); ``stats_received`` counts those alerts and
        #: ``stats_changed`` wakes the tasks waiting for the next one
        self.session_counters: dict[str, int] | None = None
        self.stats_received = 0
        self.stats_changed = trio.Event()

    def expect_removal(self, info_hash: str, delete_files: bool) -> trio.Event:
        """The event set when libtorrent has removed this torrent (and, with
        ``delete_files``, deleted its file or failed to). Call it before asking
        libtorrent to remove it."""
        removal = self._removals[info_hash] = _Removal(delete_files)
        return removal.done

    def handle(self, alert: lt.alert, now: float) -> AlertEffect | None:
        """Take in one alert (``now``: ``time.monotonic()``); returns what the
        engine must do about it, if anything."""
        if isinstance(alert, lt.listen_succeeded_alert):
            if alert.socket_type == lt.socket_type_t.tcp and not self.listening.is_set():
                self.listen_port = alert.port
                log.info("listening on %s:%d", alert.address, alert.port)
                self.listening.set()
            return None
        if isinstance(alert, lt.listen_failed_alert):
            if alert.socket_type == lt.socket_type_t.tcp and not self.listening.is_set():
                # the engine's opening raises it, naming the address: the
                # command's one line says it, a log line would repeat it
                self.listen_error = alert.error.message() or alert.message()
                self.listening.set()
            else:
                log.error("cannot listen: %s", alert.message())
            return None
        if isinstance(alert, (lt.torrent_removed_alert, lt.torrent_deleted_alert, lt.torrent_delete_failed_alert)):
            self._removed(alert)
            return None
        if isinstance(alert, lt.peer_blocked_alert):
            self.peers_blocked += 1
            log.info("%s: blocked peer %s (%s)", alert.torrent_name, alert.ip, alert.message())
            return None
        if isinstance(alert, lt.session_stats_alert):
            values = alert.values  # every counter, by name: read once, it is built anew each time
            self.session_counters = {name: int(values.get(name, 0)) for name in SESSION_COUNTERS}
            self.stats_received += 1
            self.stats_changed.set()
            self.stats_changed = trio.Event()
            return None
        if isinstance(alert, lt.tracker_error_alert):
            log.warning("%s", alert.message())
            return None
        torrent = self._torrent_of(alert) if isinstance(alert, lt.torrent_alert) else None
        if torrent is None:
            if alert.category() & lt.alert_category.error:
                log.warning("%s", alert.message())
            return None
        return self._torrent_alert(alert, torrent, now)

    def _removed(
        self, alert: lt.torrent_removed_alert | lt.torrent_deleted_alert | lt.torrent_delete_failed_alert
    ) -> None:
        ih = str(alert.info_hashes.v1)
        removal = self._removals.get(ih)
        if removal is None:
            return
        if isinstance(alert, lt.torrent_delete_failed_alert):
            log.error("%s: cannot delete its file: %s", alert.torrent_name, alert.message())
        elif isinstance(alert, lt.torrent_removed_alert) and removal.delete_files:
            return  # wait for the deletion
        del self._removals[ih]
        removal.done.set()

    def _torrent_of(self, alert: lt.torrent_alert) -> TorrentRecord | None:
        handle = alert.handle
        if not handle.is_valid():
            return None
        torrent = self._torrents.get(str(handle.info_hashes().v1))
        if torrent is not None and torrent.handle is None:
            # its alerts can come before add_torrent returns in the worker thread
            torrent.handle = handle
        return torrent

    def _torrent_alert(self, alert: lt.alert, torrent: TorrentRecord, now: float) -> AlertEffect | None:
        if isinstance(alert, lt.piece_finished_alert):
            if not torrent.resume_pending and now - torrent.last_resume >= self._resume_interval:
                return RequestResume(torrent)
            return None
        if isinstance(alert, lt.save_resume_data_alert):
            return WriteResume(torrent, lt.write_resume_data_buf(alert.params))
        if isinstance(alert, lt.save_resume_data_failed_alert):
            log.warning("%s: cannot save resume data: %s", torrent.name, alert.message())
            torrent.resume_pending = False
            torrent.resume_saves += 1
        elif isinstance(alert, lt.torrent_finished_alert):
            torrent.finished = True
        elif isinstance(alert, lt.state_changed_alert):
            if alert.state in SEEDING_STATES:
                torrent.finished = True
            elif alert.state == lt.torrent_status.states.checking_files:
                torrent.full_check = True
        elif isinstance(alert, lt.torrent_checked_alert):
            torrent.checked = True
        elif isinstance(alert, lt.cache_flushed_alert):
            torrent.flushes += 1
        elif isinstance(alert, lt.hash_failed_alert):
            torrent.hash_failures += 1
            log.warning(
                "%s (%s): piece %d failed its hash check, dropped", torrent.name, torrent.info_hash, alert.piece_index
            )
        elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert)):
            if torrent.error != alert.message():  # libtorrent repeats it per failed write
                log.error("%s (%s): %s", torrent.name, torrent.info_hash, alert.message())
            torrent.error = alert.message()
            category = alert.error.category().name()
            torrent.error_errno = alert.error.value() if category in ("system", "generic") else 0
        elif isinstance(alert, lt.fastresume_rejected_alert):
            log.warning("%s: resume data rejected, re-checking the file: %s", torrent.name, alert.message())
        else:
            return None
        torrent.poke()
        return None
