"""The ``[api]`` table of the daemon file: where the websocket API listens,
who may use it, how large a message may be (docs/configuration.md).

The tokens file and the TLS files are read by ``credentials.py``. One rule
spans the two: an API reachable from other hosts needs a tokens file, or
anyone could write to the index and steer jobs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ..model import ApiConfig
from ..tomlcheck import Bad, TomlFile, boolean, integer, show, string
from .credentials import readable_file, tls_pair, tokens_file

__all__ = ["API_KEYS", "api_table", "is_loopback"]

API_KEYS = ("listen", "tokens_file", "open_reads", "tls_cert", "tls_key", "max_message_bytes")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as in ``[api] listen``) only accepts connections from
    this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(value: Any) -> str:
    listen = string(value)
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Bad(f"must be HOST:PORT with a port 0-65535 (such as \"127.0.0.1:8765\"), got {show(listen)}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise Bad(f"an IPv6 address goes in brackets (\"[::1]:8765\"), got {show(listen)}")
    if host.strip("[]") == "" or any(c.isspace() for c in host):
        raise Bad(f"must be HOST:PORT, got {show(listen)}")
    return listen


def api_table(f: TomlFile, data: Mapping[str, Any], base_dir: str) -> ApiConfig:
    """The ``[api]`` table; files it names are relative to ``base_dir``."""
    section = f.table(data, "", "api")
    f.unknown(section, "api", API_KEYS)
    default = ApiConfig()
    listen = f.get(section, "api", "listen", _listen, default.listen)
    tokens_path = f.get(section, "api", "tokens_file", readable_file(base_dir), "")
    tokens = tokens_file(tokens_path, f.problems) if tokens_path else {}
    tls_cert, tls_key = tls_pair(f, section, base_dir)
    api = ApiConfig(
        listen=listen,
        tokens_file=tokens_path,
        tokens=tokens,
        open_reads=f.get(section, "api", "open_reads", boolean, False),
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_message_bytes=f.get(
            section, "api", "max_message_bytes", integer(1024, 1 << 30), default.max_message_bytes
        ),
    )
    if "tokens_file" not in section and not is_loopback(api.host):
        f.problem(
            "api", "listen",
            f"{show(listen)} is reachable from other hosts, but without [api] tokens_file anyone "
            "could write to the index and steer jobs; set tokens_file, or listen on 127.0.0.1",
        )
    return api
