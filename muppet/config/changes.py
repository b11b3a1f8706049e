"""What a reload changes: the running configuration and the one just loaded,
compared (docs/operations.md, "Reload").

Pure functions of two loaded ``Config`` objects, no I/O: :func:`compare`
gives the configuration to run from now on and what changed, in the words
an operator reads in the reply of ``muppet reload``, in the daemon's log and
in the reload's operator event.

The configuration to run from now on is the file's, except the settings
that only a restart can change (``RESTART_ONLY``): those keep what the
daemon runs now, and are listed as waiting for a restart until it restarts
(each reload lists them again while they differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from ..model import AlertsConfig, Config

T = TypeVar("T")

#: the settings that only a restart changes (docs/operations.md, "Reload"):
#: what the daemon binds, opens or locks once, at start
RESTART_ONLY = (
    "[daemon] database", "[daemon] state_dir", "[daemon] output_dir",
    "[api] listen", "[api] tls_cert", "[api] tls_key", "[api] open_reads", "[api] max_message_bytes",
    "[api] tokens_file",  # only between none and one: a changed tokens file applies at once
    "[web] listen",
    "[index] outputs_backend",  # only while [daemon] output_dir waits for a restart
)


@attrs.frozen
class Changes:
    """What a reload changes, by name; each tuple sorted."""

    pipelines_added: tuple[str, ...] = ()
    pipelines_changed: tuple[str, ...] = ()
    pipelines_removed: tuple[str, ...] = ()
    executors_added: tuple[str, ...] = ()
    executors_changed: tuple[str, ...] = ()
    executors_removed: tuple[str, ...] = ()
    #: index declarations that are new or changed (a declaration taken out of
    #: the file stays in the index: docs/index.md)
    products: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    #: other settings that apply at once ("[api] tokens_file", "[index]
    #: expiry_interval", "[stakeholders.ops]", ...)
    settings: tuple[str, ...] = ()
    #: settings that changed in the file but wait for a restart
    restart: tuple[str, ...] = ()

    @property
    def applied(self) -> bool:
        """Whether anything applies now (settings waiting for a restart do not)."""
        return any(getattr(self, field.name) for field in attrs.fields(Changes) if field.name != "restart")

    def target(self) -> dict[str, list[str]]:
        """Every field as a JSON list: the reload event's target and the
        reply's (docs/api.md, "daemon.reload")."""
        return {field.name: list(getattr(self, field.name)) for field in attrs.fields(Changes)}

    @classmethod
    def from_target(cls, target: Mapping[str, Any]) -> Changes:
        """The Changes whose ``target()`` is ``target`` (what the API answered)."""
        return cls(**{field.name: tuple(target.get(field.name, ())) for field in attrs.fields(cls)})

    def lines(self) -> list[str]:
        """What changed, one line per kind, for the log and ``muppet reload``."""
        words = (
            ("pipelines_added", "pipelines added", ""),
            ("pipelines_changed", "pipelines changed",
             " (new runs use the new definition; runs in progress finish under their own)"),
            ("pipelines_removed", "pipelines removed", " (no new runs; runs in progress finish under their own)"),
            ("executors_added", "executors added", ""),
            ("executors_changed", "executors changed", ""),
            ("executors_removed", "executors removed", " (the jobs of runs in progress still run on them)"),
            ("products", "products declared or changed", ""),
            ("formats", "formats declared or changed", ""),
            ("backends", "backends declared or changed", ""),
            ("settings", "settings applied", ""),
            ("restart", "waiting for a restart", " (the daemon runs on the old values until it restarts)"),
        )
        return [f"{title}: {', '.join(getattr(self, name))}{note}" for name, title, note in words
                if getattr(self, name)]


@attrs.frozen
class Plan:
    """The configuration to run from now on, and what it changes."""

    config: Config
    changes: Changes


def compare(running: Config, loaded: Config) -> Plan:
    """What taking ``loaded`` (the file just read) changes in ``running``
    (what the daemon runs now)."""
    restart: list[str] = []

    def keep(table: str, key: str, old: Any, new: Any) -> None:
        if old != new:
            restart.append(f"[{table}] {key}")

    for key in ("database", "state_dir", "output_dir"):
        keep("daemon", key, getattr(running.daemon, key), getattr(loaded.daemon, key))
    # what is kept and for how long applies at the history task's next pass
    daemon = attrs.evolve(running.daemon, pipeline_globs=loaded.daemon.pipeline_globs,
                          keep_history=loaded.daemon.keep_history, keep_job_dirs=loaded.daemon.keep_job_dirs)
    for key in ("listen", "tls_cert", "tls_key", "open_reads", "max_message_bytes"):
        keep("api", key, getattr(running.api, key), getattr(loaded.api, key))
    api = running.api
    if bool(running.api.tokens_file) != bool(loaded.api.tokens_file):
        keep("api", "tokens_file", running.api.tokens_file, loaded.api.tokens_file)
    elif running.api.tokens_file:
        # the tokens themselves apply at once: a new one works, a revoked
        # one stops working at its next call (muppet/api/context.py)
        api = attrs.evolve(running.api, tokens_file=loaded.api.tokens_file, tokens=loaded.api.tokens)
    keep("web", "listen", running.web.listen, loaded.web.listen)
    index, backends = loaded.index, dict(loaded.backends)
    if "[daemon] output_dir" in restart:
        # outputs are still moved into the running output_dir: they are
        # registered where that one is until the restart
        slug = running.index.outputs_backend
        keep("index", "outputs_backend", (slug, running.backends.get(slug)),
             (loaded.index.outputs_backend, loaded.backends.get(loaded.index.outputs_backend)))
        index = attrs.evolve(loaded.index, outputs_backend=slug)
        if slug in running.backends:
            backends[slug] = running.backends[slug]
    config = attrs.evolve(loaded, daemon=daemon, api=api, web=running.web, index=index, backends=backends)

    settings: list[str] = []
    if daemon.pipeline_globs != running.daemon.pipeline_globs:
        settings.append("[daemon] pipelines")
    for key in ("keep_history", "keep_job_dirs"):
        if getattr(daemon, key) != getattr(running.daemon, key):
            settings.append(f"[daemon] {key}")
    if api.tokens_file != running.api.tokens_file or api.tokens != running.api.tokens:
        settings.append("[api] tokens_file")
    for key in ("outputs_backend", "expiry_interval", "delete_expired_files"):
        if getattr(index, key) != getattr(running.index, key):
            settings.append(f"[index] {key}")
    # the alerts task reads the running configuration at each pass: [alerts]
    # applies at once (docs/alerts.md, "Who hears of it")
    settings += [f"[alerts] {key}" for key in _alerts_changed(running.alerts, config.alerts)]
    added, changed, removed = _delta(running.stakeholders, config.stakeholders)
    settings += [f"[stakeholders.{key}]" for key in sorted(added + changed + removed)]

    pipelines = _delta(running.pipelines, config.pipelines)
    executors = _delta(running.executors, config.executors)
    return Plan(config, Changes(
        pipelines_added=pipelines[0], pipelines_changed=pipelines[1], pipelines_removed=pipelines[2],
        executors_added=executors[0], executors_changed=executors[1], executors_removed=executors[2],
        products=_declared(running.products, config.products),
        formats=_declared(running.formats, config.formats),
        backends=_declared(running.backends, config.backends),
        settings=tuple(settings),
        restart=tuple(sorted(restart)),
    ))


#: the [alerts] keys as the file writes them, by AlertsConfig field
_ALERTS_KEYS = {"sender": "from", "security": "starttls, ssl", "password": "password_file"}


def _alerts_changed(old: AlertsConfig, new: AlertsConfig) -> list[str]:
    keys = [_ALERTS_KEYS.get(f.name, f.name) for f in attrs.fields(AlertsConfig)
            if getattr(old, f.name) != getattr(new, f.name)]
    return sorted(set(keys))


def _delta(old: Mapping[str, T], new: Mapping[str, T]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(added, changed, removed) names."""
    return (
        tuple(sorted(set(new) - set(old))),
        tuple(sorted(name for name in set(new) & set(old) if new[name] != old[name])),
        tuple(sorted(set(old) - set(new))),
    )


def _declared(old: Mapping[str, T], new: Mapping[str, T]) -> tuple[str, ...]:
    """The declarations that are new or changed."""
    return tuple(sorted(slug for slug, value in new.items() if old.get(slug) != value))
