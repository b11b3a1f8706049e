"""What a libtorrent session is set up with: :class:`EngineSettings` (from a
seed or fetch configuration), the libtorrent ``settings_pack`` made from them
(:func:`session_settings`) and the ``[peers]`` filter (:func:`build_ip_filter`).

Pure: nothing here starts a session or touches the network.

Settings that decide whether it works at all, measured with libtorrent 2.1.1
on loopback and in network namespaces on a 2-core host:

- uTP off unless asked for (``utp``): it crawls on loopback and in LANs
  (7.5 MB/s against 100-400 MB/s over TCP; docs/sync.md, ``utp``).
- Several connections per IP address allowed: every test peer is
  127.0.0.1, and so are NATed consumers; without it a full mesh on one
  address moved nothing in 120 s.
- ``min_reconnect_time`` 1 s: with the default 60 s, a downloader that
  knocked while the seeder was still checking its file was not retried for a
  minute (2 runs of 5 stalled).
- Rate limits apply to local peers too (``ignore_limits_on_local_network``
  off): docs/sync.md promises that ``upload_rate`` and ``download_rate``
  apply on the LAN, and libtorrent's default exempts it (a 5 MB/s limit let
  200 MiB through in 1.3 s).

Left at libtorrent's defaults after measuring the alternatives with 16
consumers (bench/sync.py; docs/sync.md, "Sixteen consumers", has the
figures): ``unchoke_slots_limit`` 8 ("the max number of unchoked peers in
the session", libtorrent's settings_pack reference; 4 changed nothing, 1
halved one consumer's rate, -1 made the seeder send more), the seeder's
``seed_choking_algorithm`` round_robin (``anti_leech``, which "prioritizes
peers who have just started or are just about to finish the download",
and ``fastest_upload`` changed nothing), ``send_buffer_watermark`` and
``send_socket_buffer_size``, the consumers' ``predictive_piece_announce``
(announcing a piece before it is complete changed nothing), and no super
seeding (BEP 16: each piece leaves the seeder about once, but libtorrent
2.1.1 reveals a consumer's first piece only 10 s after it connects, and
one consumer alone fetched at 1.6 MB/s instead of 2.4).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import attrs
import libtorrent as lt

from .alerts import ALERT_MASK
from .config import DEFAULT_LISTEN, FetchConfig, Listen, Network, SeedConfig, parse_listen

__all__ = ["EngineSettings", "build_ip_filter", "session_settings"]


def _listen(value: str | Listen) -> Listen:
    return value if isinstance(value, Listen) else parse_listen(value)


def _networks(value: Iterable[Network]) -> tuple[Network, ...]:
    return tuple(value)


@attrs.frozen
class EngineSettings:
    """What a session needs from a seed or fetch configuration.

    ``listen`` as in the configuration (``Listen`` or "HOST:PORT[-LAST]", port 0:
    any free port; a bad string raises ValueError); rates in bytes per second,
    0 unlimited; ``allow``/``deny`` networks as in ``[peers]``;
    ``resume_interval``: the shortest time between two resume-data saves of a
    downloading torrent.
    """

    state_dir: Path = attrs.field(converter=Path)
    listen: Listen = attrs.field(default=parse_listen(DEFAULT_LISTEN), converter=_listen)
    utp: bool = False
    upload_rate: int = 0
    download_rate: int = 0
    allow: tuple[Network, ...] = attrs.field(default=(), converter=_networks)
    deny: tuple[Network, ...] = attrs.field(default=(), converter=_networks)
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


def session_settings(settings: EngineSettings) -> lt.settings_pack:
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
        "alert_mask": int(ALERT_MASK),
        "alert_queue_size": 100_000,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "stop_tracker_timeout": 1,
        "user_agent": "muppet-sync/libtorrent-" + lt.__version__,
    }
