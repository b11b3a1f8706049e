"""What ``seed`` and ``fetch`` check of their environment before they start.

The configuration file can be right in form and still name things this host
does not have: a host name that does not resolve, an interface it lacks, a
directory it cannot make or write, an ``on_complete`` program that is not
installed. Found at start, each is one line naming the file, the key and the
cause, and the command exits 1 (docs/sync.md, "Start-up errors"); found later
it would be a stack trace from deep inside, or a sync that never happens.

Everything here blocks (name lookups, the file system): call
:func:`check_environment` in a worker thread or before ``trio.run``.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from .config import FetchConfig, SeedConfig, api_hosts
from .errors import StartupError

__all__ = ["check_environment", "resolve_problem"]

#: getaddrinfo's answers that mean "no such name", as opposed to "the
#: resolver did not answer now" (EAI_AGAIN), which is said too but as such
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def check_environment(config: SeedConfig | FetchConfig) -> None:
    """Raise :class:`StartupError` with one line per problem found, in the
    file's key order; make ``state_dir`` (and ``data_dir``) when missing."""
    source = config.source
    problems: list[str] = []
    hosts = [("api", host) for host in api_hosts(config.api)]
    if config.advertise:
        hosts.append(("advertise", _advertised_host(config.advertise)))
    hosts += [("trackers", urlsplit(url).hostname or "") for url in config.trackers]
    for key, host in hosts:
        problem = resolve_problem(host)
        if problem is not None:
            problems.append(f"{source}: {key}: {problem}")
    listen = config.listen.host
    if not _is_ip(listen):
        interfaces = sorted(name for _, name in socket.if_nameindex())
        if listen not in interfaces:
            problems.append(f"{source}: listen: {listen!r} is neither an IP address nor a network interface "
                            f"of this host (it has {', '.join(interfaces)})")
    problems += _writable_directory(source, "state_dir", config.state_dir)
    if isinstance(config, FetchConfig):
        problems += _writable_directory(source, "data_dir", config.data_dir)
        problems += _program(source, "on_complete", config.on_complete)
    if problems:
        raise StartupError(problems)


def resolve_problem(host: str) -> str | None:
    """What is wrong with looking ``host`` up (None: it resolves)."""
    if not host or _is_ip(host):
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        if e.errno in _NO_SUCH_NAME:
            return f"host {host!r} does not resolve ({e.strerror})"
        return f"cannot look up host {host!r} ({e.strerror})"
    return None


def _advertised_host(advertise: str) -> str:
    host, sep, port = advertise.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.endswith("]")):
        host = advertise  # no port: the whole is the host (an IPv6 address unbracketed too)
    return host.strip("[]")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _writable_directory(source: str, key: str, path: Path) -> list[str]:
    """Make ``path`` if missing and check that a file can be made in it:
    the state files, downloads and placed files are all made that way."""
    if path.exists() and not path.is_dir():
        return [f"{source}: {key}: {path} is not a directory"]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return [f"{source}: {key}: cannot make {path}: {e.strerror or e}"]
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".muppet-sync-check-")
    except OSError as e:
        return [f"{source}: {key}: cannot write in {path}: {e.strerror or e}"]
    os.close(fd)
    os.unlink(probe)
    return []


def _program(source: str, key: str, command: str) -> list[str]:
    """The program of a command that is run split like a shell would
    (sync.place.run_on_complete), looked up as it will be."""
    if not command.strip():
        return []
    try:
        program = shlex.split(command)[0]
    except ValueError as e:
        return [f"{source}: {key}: cannot split {command!r} like a shell would: {e}"]
    if "/" in program:
        if not os.path.isfile(program):
            return [f"{source}: {key}: no program {program}"]
        if not os.access(program, os.X_OK):
            return [f"{source}: {key}: {program} is not executable"]
    elif shutil.which(program) is None:
        return [f"{source}: {key}: no program {program!r} on the PATH"]
    return []
