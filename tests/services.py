"""What a test does when a service it needs (PostgreSQL, Grid Engine, Slurm,
the host's name resolver, Debian's bash-static) is not there."""

import os
import random
import socket
from pathlib import Path

import pytest

#: a host name that never resolves (RFC 6761: the .invalid domain)
MISSING_HOST = "nosuchhost.invalid"


def service_missing(reason: str) -> None:
    """Skip the test with the reason; under MUPPET_REQUIRE_SERVICES=1 (CI),
    fail it instead, so that a broken set-up cannot pass as green."""
    if os.environ.get("MUPPET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (MUPPET_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def no_such_name() -> str:
    """getaddrinfo's words for a name that does not exist, which the start-up
    errors quote. Where they cannot be had, the test is skipped (failed
    under MUPPET_REQUIRE_SERVICES=1, as CI runs): a resolver that does not
    answer at all (a host with no DNS) gives another error, and one that
    answers for every name (a captive resolver) resolves even .invalid."""
    try:
        socket.getaddrinfo(MISSING_HOST, None)
    except socket.gaierror as e:
        if e.errno != socket.EAI_NONAME:
            service_missing(f"the resolver does not answer here: {e}")
        return str(e.strerror)
    service_missing(f"{MISSING_HOST} resolves here (a resolver that answers for every name)")
    raise AssertionError("unreachable: service_missing skips or fails")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing uses now, for a server a test
    starts later. Picked below the kernel's ephemeral range
    (/proc/sys/net/ipv4/ip_local_port_range): a port that bind(0) gave is
    one the kernel may give again, to any outgoing connection or bind(0),
    before the server binds it (a CI run lost a daemon's web port so)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 10000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port of 127.0.0.1 found below {low}")
