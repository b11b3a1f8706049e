"""The API's credentials: the tokens file (``[api] tokens_file``) and the TLS
certificate and key (``[api] tls_cert``, ``tls_key``); docs/configuration.md.

The tokens file holds ``[tokens.NAME]`` tables with a role and the SHA-256 of
the secret, never the secret itself: the daemon compares digests, and a leaked
file gives nobody a token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..model import ROLES, Token
from ..tomlcheck import Bad, Problem, TomlFile, read_toml, show, string
from .checks import choice, resolve

__all__ = ["readable_file", "tls_pair", "tokens_file"]

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def readable_file(base_dir: str) -> Callable[[Any], str]:
    """A file that exists and can be read now, resolved against ``base_dir``.
    Blocks (it looks at the file)."""

    def check(value: Any) -> str:
        path = resolve(base_dir, string(value))
        if not os.path.isfile(path):
            raise Bad(f"no such file: {path}")
        if not os.access(path, os.R_OK):
            raise Bad(f"cannot read {path}")
        return path

    return check


def tokens_file(path: str, problems: list[Problem]) -> dict[str, Token]:
    """The ``[tokens.NAME]`` tables of a tokens file, by secret digest;
    problems of the file are appended to ``problems``. Blocks."""
    data = read_toml(path, path, problems)
    if data is None:
        return {}
    f = TomlFile(path, problems)
    f.unknown(data, "", ("tokens",))
    tokens: dict[str, Token] = {}
    for name, body in f.table(data, "", "tokens").items():
        table = f"tokens.{name}"
        if not isinstance(body, dict):
            f.problem("tokens", name, f"must be a table [{table}], got {show(body)}")
            continue
        f.unknown(body, table, ("role", "sha256"))
        role = f.get(body, table, "role", choice(*ROLES), None, required=True)
        digest = f.get(body, table, "sha256", string, None, required=True)
        if digest is not None and not _SHA256.match(digest.lower()):
            f.problem(
                table, "sha256",
                "must be 64 hexadecimal digits: the SHA-256 of the secret (sha256sum), never the secret itself",
            )
            continue
        if role is None or digest is None:
            continue
        digest = digest.lower()
        if digest in tokens:
            f.problem(table, "sha256", f"the same secret as [tokens.{tokens[digest].name}]")
            continue
        tokens[digest] = Token(name, role, digest)
    return tokens


def tls_pair(f: TomlFile, section: Mapping[str, Any], base_dir: str) -> tuple[str, str]:
    """``[api] tls_cert`` and ``tls_key`` (both "" without TLS): one without
    the other is a problem."""
    tls_cert: str = f.get(section, "api", "tls_cert", readable_file(base_dir), "")
    tls_key: str = f.get(section, "api", "tls_key", readable_file(base_dir), "")
    if bool(tls_cert) != bool(tls_key) and not (("tls_cert" in section) and ("tls_key" in section)):
        f.problem("api", "tls_key" if tls_cert else "tls_cert", "tls_cert and tls_key go together")
    return tls_cert, tls_key
