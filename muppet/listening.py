"""Why a listening address cannot be had, in words that say what to do: one
wording for the API's and the web page's ``listen`` (docs/operations.md,
"Start-up errors")."""

from __future__ import annotations

import errno
import socket


def cannot_listen(exc: OSError) -> str:
    """The cause of ``exc`` (from bind or from resolving the host) and what
    to do instead, e.g. "Address already in use (another daemon there?
    choose another address)"."""
    cause = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        return f"{cause} (the host name does not resolve here: give an address, or a name this host resolves)"
    if exc.errno == errno.EADDRINUSE:
        return f"{cause} (another daemon there? choose another address)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{cause} (not an address of this host: give one of its own, or 0.0.0.0 for all of them)"
    if exc.errno == errno.EACCES:
        return f"{cause} (a port below 1024 needs privileges: choose one above 1023)"
    return f"{cause} (choose another address)"
