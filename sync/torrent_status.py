"""One torrent as the engine reports it (:class:`TorrentStatus`), made from
libtorrent's ``torrent_status``; and which of libtorrent's states count as
checking and seeding."""

from __future__ import annotations

import attrs
import libtorrent as lt

__all__ = ["CHECKING_STATES", "SEEDING_STATES", "TORRENT_STATES", "TorrentStatus", "torrent_status_of"]

#: every ``TorrentStatus.state``
TORRENT_STATES = ("queued", "checking", "downloading", "seeding", "error")


@attrs.frozen
class TorrentStatus:
    """One torrent, as :meth:`sync.engine.Engine.status` saw it.

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


_states = lt.torrent_status.states

CHECKING_STATES = frozenset({
    _states.checking_files,
    _states.queued_for_checking,
    _states.checking_resume_data,
    _states.allocating,
})
#: "finished" is libtorrent's word for a torrent complete as far as it wants
#: (every file it downloads is whole): for a single-file torrent, seeding
SEEDING_STATES = frozenset({_states.seeding, _states.finished})


def _state_name(st: lt.torrent_status) -> str:
    if st.errc.value() != 0:
        return "error"
    if st.state in CHECKING_STATES:
        return "checking"
    if st.flags & lt.torrent_flags.paused:
        return "queued"
    if st.state in SEEDING_STATES:
        return "seeding"
    return "downloading"


def torrent_status_of(st: lt.torrent_status) -> TorrentStatus:
    """libtorrent's ``torrent_status`` as a :class:`TorrentStatus`."""
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
