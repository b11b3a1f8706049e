"""The ``[web]`` table of the daemon file: where the daemon serves its web
page, ``/metrics`` and ``/healthz`` (docs/configuration.md, "[web]").

The page holds no data of its own: its JavaScript reads and acts through the
websocket API, with the API's tokens. So the rule for an address reachable
from other hosts is the API's: without ``[api] tokens_file`` it is refused,
since the page would hand everyone a way to steer jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import ApiConfig, WebConfig
from ..tomlcheck import Bad, TomlFile, show, string
from .api import is_loopback

__all__ = ["WEB_KEYS", "web_table"]

WEB_KEYS = ("listen",)


def _listen(value: Any) -> str:
    if value == "":
        return ""  # no web server
    listen = string(value)
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Bad(
            f"must be HOST:PORT with a port 0-65535 (such as \"127.0.0.1:8780\"), or \"\" for no web "
            f"page, got {show(listen)}"
        )
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise Bad(f"an IPv6 address goes in brackets (\"[::1]:8780\"), got {show(listen)}")
    if host.strip("[]") == "" or any(c.isspace() for c in host):
        raise Bad(f"must be HOST:PORT, got {show(listen)}")
    return listen


def web_table(f: TomlFile, data: Mapping[str, Any], api: ApiConfig) -> WebConfig:
    """The ``[web]`` table; ``api`` is the file's ``[api]`` (its tokens)."""
    section = f.table(data, "", "web")
    f.unknown(section, "web", WEB_KEYS)
    default = WebConfig()
    listen = f.get(section, "web", "listen", _listen, default.listen)
    web = WebConfig(listen=listen, explicit="listen" in section)
    if listen and not api.tokens_file and not is_loopback(web.host):
        f.problem(
            "web", "listen",
            f"{show(listen)} is reachable from other hosts, but without [api] tokens_file anyone "
            "could steer jobs from the page; set [api] tokens_file, or listen on 127.0.0.1",
        )
    return web
