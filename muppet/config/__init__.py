"""TOML configuration -> the frozen model, with every problem named by file,
table and key (docs/configuration.md is the reference).

The package face: :func:`load_config` (the daemon file and the pipeline files
it lists), :func:`validate_paths` (``muppet validate``), :func:`default_config`
(no file at all), :func:`sqlite_path`, and :class:`ConfigError` holding every
:class:`Problem`. Loading reads files and blocks: under Trio call it from a
worker thread (or before ``trio.run``).

One module per concept:

* ``loading.py``: reading the files, the checks that span files, the entry
  points above;
* ``daemon.py``: ``[daemon]`` (state, outputs, database, pipeline globs);
* ``api.py``: ``[api]``; ``credentials.py``: its tokens file and TLS files;
* ``executors.py``: ``[executors.NAME]``, with resources checked by
  ``muppet.resources`` (the executor's own parser);
* ``index.py``: the index's ``[products]``, ``[formats]``, ``[backends]``,
  ``[index]``, and ``[stakeholders]``;
* ``pipelines.py``: pipeline files, ``[pipeline]`` and ``[steps.NAME]``;
  ``graph.py``: the graph of steps (references, cycles, order);
* ``checks.py``: value checks several tables share (names, choices, paths).

The file reading and the generic value checks are ``muppet.tomlcheck``'s,
shared with muppet-sync's configuration.
"""

from __future__ import annotations

from ..tomlcheck import ConfigError, Problem
from .api import is_loopback
from .daemon import sqlite_path
from .loading import default_config, load_config, validate_paths

__all__ = [
    "ConfigError",
    "Problem",
    "default_config",
    "is_loopback",
    "load_config",
    "sqlite_path",
    "validate_paths",
]
