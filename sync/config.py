"""The seed and fetch TOML files (docs/sync.md, "Keys of both files") -> frozen objects.

``seed.toml`` (producer's storage host)::

    api = "ws://lustre-host:8765"
    state_dir = "/var/lib/muppet-sync"
    listen = "0.0.0.0:6881"           # or "HOST:FIRST-LAST" (a port range)
    trackers = []                     # HTTP tracker URLs, put into the torrents
    utp = false
    [[select]]
    products = ["arome-pp"]
    formats = ["netcdf"]
    backend = "lustre-a"
    recent = 12
    [peers]
    allow = ["10.0.0.0/8"]            # CIDR; empty: everyone
    deny = []
    upload_rate = 0                   # bytes per second, 0 = unlimited
    download_rate = 0
    [metrics]
    listen = "0.0.0.0:8781"           # /metrics and /healthz; "" or no [metrics]: none

``fetch.toml`` (consumer host) has the same keys plus ``data_dir``,
``layout``, ``backend`` (its own service backend) and ``on_complete``.

All problems of a file are reported at once, in one :class:`ConfigError`,
each naming the file, the table and the key (``fetch.toml: [peers] allow:
"10.0.0.0/33" is not a network``; the checks are muppet.tomlcheck's, shared with
the daemon's configuration). Relative paths are relative to the
configuration file's directory. Loading reads a file: under Trio call it from a
worker thread or before ``trio.run``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs

from muppet import tomlcheck
from muppet.tomlcheck import MISSING as _MISSING
from muppet.tomlcheck import Bad as _Bad
from muppet.tomlcheck import Problem, TomlFile
from muppet.tomlcheck import any_string as _any_string
from muppet.tomlcheck import boolean as _bool
from muppet.tomlcheck import integer as _integer
from muppet.tomlcheck import show as _show
from muppet.tomlcheck import string as _string
from muppet.tomlcheck import string_list as _string_list

from .errors import SyncError
from .place import check_layout

__all__ = [
    "DEFAULT_LAYOUT",
    "DEFAULT_LISTEN",
    "ConfigError",
    "FetchConfig",
    "Listen",
    "PeerPolicy",
    "Problem",
    "SeedConfig",
    "Select",
    "load_fetch_config",
    "load_seed_config",
    "load_state_dir",
    "parse_fetch_config",
    "parse_listen",
    "parse_seed_config",
]

DEFAULT_LISTEN = "0.0.0.0:6881"
DEFAULT_LAYOUT = "{product}/{reference_time:%Y/%m/%d}/{filename}"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_Parsed = TypeVar("_Parsed")


class ConfigError(tomlcheck.ConfigError, SyncError):
    """A seed or fetch file with problems; ``problems`` lists all of them, in file order."""


@attrs.frozen
class Listen:
    """Where libtorrent listens: ``host`` (an IP address, or an interface name
    such as ``eth0``), ports ``first_port`` to ``last_port`` (equal for one
    port; libtorrent tries the next one when a port is taken). Port 0 asks the
    system for a free port (tests)."""

    host: str
    first_port: int
    last_port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        ports = str(self.first_port)
        if self.last_port != self.first_port:
            ports += f"-{self.last_port}"
        return f"{host}:{ports}"


@attrs.frozen
class Select:
    """One ``[[select]]`` rule: these products (and formats, and service
    backend, when given), the ``recent`` most recent reference times."""

    products: tuple[str, ...]
    recent: int
    formats: tuple[str, ...] = ()  # empty: every format
    backend: str | None = None  # None: any service backend


@attrs.frozen
class PeerPolicy:
    """``[peers]``: networks allowed (empty: all) and denied (deny wins), and
    rate limits in bytes per second (0: unlimited)."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    upload_rate: int = 0
    download_rate: int = 0


@attrs.frozen
class SeedConfig:
    """A ``muppet-sync seed`` configuration."""

    source: str  # the file it was read from, for messages
    api: str
    state_dir: Path
    listen: Listen
    trackers: tuple[str, ...]
    select: tuple[Select, ...]
    peers: PeerPolicy
    utp: bool = False
    #: "HOST[:PORT]" other peers reach this host at, published in the index
    #: (None: worked out at start, see sync.follow.advertised_peer)
    advertise: str | None = None
    #: ``[metrics] listen``: "HOST:PORT" where /metrics and /healthz are
    #: served, "" for none (sync.web)
    metrics_listen: str = ""


@attrs.frozen
class FetchConfig:
    """A ``muppet-sync fetch`` configuration."""

    source: str
    api: str
    state_dir: Path
    listen: Listen
    trackers: tuple[str, ...]
    data_dir: Path
    layout: str
    backend: str  # the consumer's own service backend in the index
    on_complete: str
    select: tuple[Select, ...]
    peers: PeerPolicy
    utp: bool = False
    advertise: str | None = None
    metrics_listen: str = ""


# --- value checks --------------------------------------------------------------


def _api(value: Any) -> str:
    """One daemon's API, or several (an active daemon and its standbys:
    a list, or comma-separated), kept comma-separated as the API client
    takes them (docs/operations.md, "Running a standby")."""
    urls = _string_list()(value) if isinstance(value, list) else [u.strip() for u in _string(value).split(",")]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise _Bad(f"must be the index's WebSocket URL (ws://HOST:PORT or wss://...), got {_show(url)}")
    if not urls:
        raise _Bad("must name the index's WebSocket URL (ws://HOST:PORT)")
    return ",".join(urls)


def api_hosts(api: str) -> list[str]:
    """The host names of an ``api`` value (one URL or comma-separated)."""
    return [urlsplit(url.strip()).hostname or "" for url in api.split(",")]


def _tracker(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "udp") or not parts.hostname:
        raise _Bad(f"{_show(value)} is not a tracker URL (http://HOST:PORT/announce, https:// or udp://)")


def _trackers(value: Any) -> tuple[str, ...]:
    urls = _string_list()(value)
    for url in urls:
        _tracker(url)
    return urls


_INTERFACE = re.compile(r"[A-Za-z0-9_.-]+\Z")


def _listen(value: Any) -> Listen:
    value = _string(value)
    rule = 'must be HOST:PORT or HOST:FIRST-LAST (such as "0.0.0.0:6881" or "[::]:6881-6889")'
    host, sep, ports = value.rpartition(":")
    if not sep or not host:
        raise _Bad(f"{rule}, got {_show(value)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise _Bad(f'an IPv6 address goes in brackets ("[::]:6881"), got {_show(value)}')
    elif not _INTERFACE.match(host):
        raise _Bad(f"{host!r} is neither an IP address nor an interface name")
    first, dash, last = ports.partition("-")
    if not first.isdigit() or (dash and not last.isdigit()):
        raise _Bad(f"{rule}, got {_show(value)}")
    first_port = int(first)
    last_port = int(last) if dash else first_port
    if not 0 <= first_port <= 65535 or not 0 <= last_port <= 65535:
        raise _Bad(f"ports must be 0-65535, got {_show(value)}")
    if dash and (first_port == 0 or last_port < first_port):
        raise _Bad(f"a port range goes from a lower to a higher port, neither 0, got {_show(value)}")
    return Listen(host, first_port, last_port)


def parse_listen(text: str) -> Listen:
    """A ``listen`` value ("HOST:PORT" or "HOST:FIRST-LAST") as a Listen, for
    settings made without a file (tests, benchmarks). Raises ValueError
    saying what is wrong, as the file's check would."""
    try:
        return _listen(text)
    except _Bad as e:
        raise ValueError(f"listen: {e}") from None


def _advertise(value: Any) -> str:
    address = _string(value)
    rule = 'must be HOST or HOST:PORT, the address other peers reach this host at (such as "10.0.0.5:6881")'
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or (port and not (port.isdigit() and 0 < int(port) <= 65535)):
        raise _Bad(f"{rule}, got {_show(address)}")
    return address


def _metrics_listen(value: Any) -> str:
    if value == "":
        return ""  # no /metrics and /healthz
    listen = _string(value)
    rule = 'must be HOST:PORT (such as "0.0.0.0:8781" or "[::]:8781"), or "" for none'
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _Bad(f"{rule}, got {_show(listen)}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _Bad(f"{host[1:-1]!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise _Bad(f'an IPv6 address goes in brackets ("[::]:8781"), got {_show(listen)}')
    elif any(c.isspace() for c in host):
        raise _Bad(f"{rule}, got {_show(listen)}")
    return listen


def _networks(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise _Bad(f"must be a list of networks in CIDR notation (\"10.0.0.0/8\"), got {_show(value)}")
    networks = []
    bad = []
    for item in value:
        try:
            if not isinstance(item, str):
                raise ValueError
            # strict=False: "10.1.2.3/8" means 10.0.0.0/8, as in iptables
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            bad.append(item)
    if bad:
        raise _Bad("; ".join(f"{_show(item)} is not a network" for item in bad))
    return tuple(networks)


# --- the files -------------------------------------------------------------------

_COMMON_KEYS = ("api", "state_dir", "listen", "advertise", "trackers", "utp", "select", "peers", "metrics")
_SEED_KEYS = _COMMON_KEYS
_FETCH_KEYS = (*_COMMON_KEYS, "data_dir", "layout", "backend", "on_complete")
_SELECT_KEYS = ("products", "formats", "backend", "recent")
_PEERS_KEYS = ("allow", "deny", "upload_rate", "download_rate")
_METRICS_KEYS = ("listen",)


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, TomlFile]:
    file = TomlFile(os.fspath(path))
    return tomlcheck.read_toml(os.fspath(path), file.display, file.problems), file


def _path(base_dir: Path) -> Callable[[Any], Path]:
    def check(value: Any) -> Path:
        return base_dir / os.path.expanduser(_string(value))

    return check


def _common(data: Mapping[str, Any], file: TomlFile, base_dir: Path) -> dict[str, Any]:
    get = file.get
    common = {
        "api": get(data, "", "api", _api, required="the index's ws:// URL"),
        "state_dir": get(data, "", "state_dir", _path(base_dir), required="where resume data is kept"),
        "listen": get(data, "", "listen", _listen, _listen(DEFAULT_LISTEN)),
        "advertise": get(data, "", "advertise", _advertise, None),
        "trackers": get(data, "", "trackers", _trackers, ()),
        "utp": get(data, "", "utp", _bool, False),
        "select": _selects(data, file),
        "peers": _peers(data, file),
        "metrics_listen": _metrics(data, file),
    }
    return common


def _selects(data: Mapping[str, Any], file: TomlFile) -> tuple[Select, ...]:
    raw = data.get("select", _MISSING)
    if raw is _MISSING:
        file.problem("", "[[select]]", "missing: at least one [[select]] table saying which products to sync")
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        file.problem("", "select", "must be [[select]] tables")
        return ()
    if not raw:
        file.problem("", "[[select]]", "at least one is needed")
    selects = []
    for number, item in enumerate(raw, 1):
        table = f"[[select]] #{number}"
        before = len(file.problems)
        file.unknown(item, table, _SELECT_KEYS)
        products = file.get(item, table, "products", _string_list(non_empty=True), required="the product names")
        recent = file.get(item, table, "recent", _integer(1), required="how many most recent reference times")
        formats = file.get(item, table, "formats", _string_list(), ())
        backend = file.get(item, table, "backend", _string, None)
        if len(file.problems) == before:
            selects.append(Select(products=products, recent=recent, formats=formats, backend=backend))
    return tuple(selects)


def _peers(data: Mapping[str, Any], file: TomlFile) -> PeerPolicy:
    raw = data.get("peers", {})
    if not isinstance(raw, dict):
        file.problem("", "peers", "must be a [peers] table")
        return PeerPolicy()
    table = "peers"
    file.unknown(raw, table, _PEERS_KEYS)
    return PeerPolicy(
        allow=file.get(raw, table, "allow", _networks, ()),
        deny=file.get(raw, table, "deny", _networks, ()),
        upload_rate=file.get(raw, table, "upload_rate", _integer(0), 0),
        download_rate=file.get(raw, table, "download_rate", _integer(0), 0),
    )


def _metrics(data: Mapping[str, Any], file: TomlFile) -> str:
    # Default: none. muppet-sync runs on hosts that are not MUPPET's own (a
    # THREDDS server, the MET API), sometimes more than one on a host (a seed
    # and a fetch): a port opened there unasked, or two processes fighting
    # over one built-in port, would cost more than the line that asks for it
    # (docs/sync.md, "Metrics and health check").
    raw = file.table(data, "", "metrics")
    file.unknown(raw, "metrics", _METRICS_KEYS)
    listen: str = file.get(raw, "metrics", "listen", _metrics_listen, "")
    return listen


def parse_seed_config(data: Mapping[str, Any], source: str, base_dir: Path | None = None) -> SeedConfig:
    """A seed configuration from parsed TOML; ``source`` names the file in
    messages, ``base_dir`` resolves relative paths (default: the current
    directory). Raises :class:`ConfigError` with every problem."""
    file = TomlFile(source)
    config = _parse_seed(data, file, base_dir or Path.cwd())
    if config is None or file.problems:
        raise ConfigError(file.problems)
    return config


def _parse_seed(data: Mapping[str, Any], file: TomlFile, base_dir: Path) -> SeedConfig | None:
    """None when the file has problems (they are in ``file.problems``)."""
    file.unknown(data, "", _SEED_KEYS)
    common = _common(data, file, base_dir)
    if file.problems:
        return None
    return SeedConfig(source=file.display, **common)


def parse_fetch_config(data: Mapping[str, Any], source: str, base_dir: Path | None = None) -> FetchConfig:
    """A fetch configuration from parsed TOML (see :func:`parse_seed_config`)."""
    file = TomlFile(source)
    config = _parse_fetch(data, file, base_dir or Path.cwd())
    if config is None or file.problems:
        raise ConfigError(file.problems)
    return config


def _layout(value: Any) -> str:
    layout = _string(value)
    problems = check_layout(layout)
    if problems:
        raise _Bad("; ".join(problems))
    return layout


def _parse_fetch(data: Mapping[str, Any], file: TomlFile, base_dir: Path) -> FetchConfig | None:
    """None when the file has problems (they are in ``file.problems``)."""
    file.unknown(data, "", _FETCH_KEYS)
    common = _common(data, file, base_dir)
    get = file.get
    data_dir = get(data, "", "data_dir", _path(base_dir), required="where fetched files are placed")
    layout = get(data, "", "layout", _layout, DEFAULT_LAYOUT)
    backend = get(data, "", "backend", _string, required="this host's own service backend in the index")
    on_complete = get(data, "", "on_complete", _any_string, "")
    if file.problems:
        return None
    return FetchConfig(
        source=file.display,
        data_dir=data_dir,
        layout=layout,
        backend=backend,
        on_complete=on_complete,
        **common,
    )


def _load(
    path: str | os.PathLike[str], parse: Callable[[Mapping[str, Any], TomlFile, Path], _Parsed | None]
) -> _Parsed:
    data, file = _read(path)
    # data None: not read or not TOML, and read_toml has said why in file.problems
    config = None if data is None else parse(data, file, Path(path).parent.absolute())
    if config is None or file.problems:
        raise ConfigError(file.problems)
    return config


def load_seed_config(path: str | os.PathLike[str]) -> SeedConfig:
    """Read and check a seed.toml. Raises :class:`ConfigError`. Blocks."""
    return _load(path, _parse_seed)


def load_fetch_config(path: str | os.PathLike[str]) -> FetchConfig:
    """Read and check a fetch.toml. Raises :class:`ConfigError`. Blocks."""
    return _load(path, _parse_fetch)


def load_state_dir(path: str | os.PathLike[str]) -> Path:
    """Only the ``state_dir`` of a seed or fetch file, resolved as the
    commands resolve it (``muppet-sync status``). Raises :class:`ConfigError`."""

    def parse(data: Mapping[str, Any], file: TomlFile, base_dir: Path) -> Path | None:
        state_dir: Path | None = file.get(data, "", "state_dir", _path(base_dir), required="where resume data is kept")
        return state_dir

    return _load(path, parse)
