"""muppet-sync's metrics, in Prometheus's text format on ``[metrics]
listen``'s ``/metrics`` (sync.web; docs/sync.md, "Metrics and health
check", lists each one).

One registry per run, never prometheus_client's global one: the figures
belong to one seed or fetch process (and the tests run several in one).

Two kinds of figure, as in the daemon's muppet/metrics.py:

* counted where they happen, by the fetch command: files placed, the time
  from a file's registration in the index to its placing, SHA-256
  mismatches; and by the run: losses of the index's event stream;
* read at each scrape (a :class:`Sample`, made by
  :meth:`sync.run.SyncRun.sample` before the page is rendered): libtorrent's
  session counters and torrents, the files by state, whether the event
  stream is subscribed.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .state import FILE_STATES
from .torrent_status import TORRENT_STATES

__all__ = ["PLACED_BUCKETS", "EngineFigures", "Sample", "SyncMetrics"]

#: seconds from a file's registration to its placing on a consumer: about
#: 0.3 s to the first byte on a LAN, 17 s for 200 MB at 100 Mbit/s
#: (docs/sync.md, "Measured"); minutes behind a queue or a slow link; hours
#: for the files a consumer catches up on after it was down
PLACED_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


#: libtorrent's session counters that are Prometheus counters here:
#: (metric, help, libtorrent's name; sync.alerts.SESSION_COUNTERS)
_SESSION_COUNTERS = (
    ("muppet_sync_upload_bytes", "Payload (file) bytes sent to peers", "net.sent_payload_bytes"),
    ("muppet_sync_download_bytes", "Payload (file) bytes received from peers", "net.recv_payload_bytes"),
    ("muppet_sync_piece_hash_failures", "Pieces from peers that failed their SHA-1 check (dropped, fetched again)",
     "ses.num_piece_failed"),
)


@attrs.frozen
class EngineFigures:
    """What libtorrent says for one scrape."""

    #: torrents by state (TORRENT_STATES)
    torrents: Mapping[str, int]
    #: connections refused by the [peers] filter since the start
    peers_blocked: int
    #: sync.alerts.SESSION_COUNTERS by name; None when libtorrent did not
    #: answer in time (those figures are left out of the scrape)
    counters: Mapping[str, int] | None


@attrs.frozen
class Sample:
    """What one scrape reads of the running command."""

    #: files in the operator's view by state (FILE_STATES)
    files: Mapping[str, int]
    #: whether the index's event stream is subscribed now
    index_up: bool
    #: None when the engine is closing
    engine: EngineFigures | None


def _version() -> str:
    try:
        return importlib.metadata.version("muppet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class SyncMetrics:
    """One seed or fetch process's metrics and their registry (``registry``,
    for ``prometheus_client.generate_latest``). ``role``: "seed" or "fetch";
    the fetch side's own figures (placing, verification) are only there for
    "fetch". Used from the Trio thread only."""

    def __init__(self, role: str, clock: Callable[[], float] = time.time) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        self.clock = clock
        self.started = clock()
        r = self.registry
        self.index_outages = Counter(
            "muppet_sync_index_outages", "Times the index's event stream was lost after it had been subscribed",
            registry=r)
        self.files_placed: Counter | None = None
        self.placed_after: Histogram | None = None
        self.verification_failures: Counter | None = None
        if role == "fetch":
            self.files_placed = Counter(
                "muppet_sync_files_placed", "Files downloaded, verified and placed under data_dir", registry=r)
            self.placed_after = Histogram(
                "muppet_sync_registration_to_placed_seconds",
                "Time from a file's registration in the index to its placing under data_dir",
                buckets=PLACED_BUCKETS, registry=r)
            self.verification_failures = Counter(
                "muppet_sync_verification_failures",
                "Downloaded files whose SHA-256 differed from the index's (not placed)", registry=r)
        self._live = _Live(self)
        r.register(self._live)

    # --- counted where they happen

    def placed(self, registered: datetime | None, placed: datetime) -> None:
        """A file placed at ``placed``, registered in the index at
        ``registered`` (None: unknown, only counted). Two hosts' clocks
        that disagree cannot make the time negative: it counts as 0."""
        if self.files_placed is not None:
            self.files_placed.inc()
        if self.placed_after is not None and registered is not None:
            self.placed_after.observe(max(0.0, (placed - registered).total_seconds()))

    def verification_failed(self) -> None:
        if self.verification_failures is not None:
            self.verification_failures.inc()

    def index_lost(self) -> None:
        self.index_outages.inc()

    # --- read at each scrape

    def set_sample(self, sample: Sample | None) -> None:
        """What this scrape read of the command (None: nothing yet)."""
        self._live.sample = sample


class _Live(Collector):
    """The figures read at each scrape (see the module docstring)."""

    def __init__(self, metrics: SyncMetrics) -> None:
        self.metrics = metrics
        self.version = _version()
        self.sample: Sample | None = None

    def describe(self) -> list[Metric]:
        # read at every collect; nothing to check at registration
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        info = GaugeMetricFamily(
            "muppet_sync_info", "This muppet-sync process: its role (seed, fetch) and version; always 1",
            labels=["role", "version"])
        info.add_metric([m.role, self.version], 1)
        yield info
        uptime = GaugeMetricFamily("muppet_sync_uptime_seconds", "Seconds since the process started")
        uptime.add_metric([], m.clock() - m.started)
        yield uptime
        sample = self.sample
        if sample is None:
            return
        up = GaugeMetricFamily(
            "muppet_sync_index_up", "1 while the index's event stream is subscribed, 0 while it cannot be")
        up.add_metric([], 1.0 if sample.index_up else 0.0)
        yield up
        files = GaugeMetricFamily(
            "muppet_sync_files", "Files in the operator's view by state (expired: in the last hour)",
            labels=["state"])
        for state in FILE_STATES:
            files.add_metric([state], sample.files.get(state, 0))
        yield files
        if sample.engine is not None:
            yield from _engine_figures(sample.engine)


def _engine_figures(engine: EngineFigures) -> Iterator[Metric]:
    torrents = GaugeMetricFamily("muppet_sync_torrents", "Torrents in libtorrent's session by state", labels=["state"])
    for state in TORRENT_STATES:
        torrents.add_metric([state], engine.torrents.get(state, 0))
    yield torrents
    blocked = CounterMetricFamily(
        "muppet_sync_peers_blocked", "Peer connections refused by the [peers] allow and deny lists")
    blocked.add_metric([], engine.peers_blocked)
    yield blocked
    counters = engine.counters
    if counters is None:
        return
    for name, help_text, key in _SESSION_COUNTERS:
        family = CounterMetricFamily(name, help_text)
        family.add_metric([], counters.get(key, 0))
        yield family
    peers = GaugeMetricFamily("muppet_sync_peers", "Peers connected now, over every torrent")
    peers.add_metric([], counters.get("peer.num_peers_connected", 0))
    yield peers
