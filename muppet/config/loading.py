"""Loading the configuration: the daemon file, the pipeline files its globs
match, and the checks that span files; ``load_config`` for the daemon,
``validate_paths`` for ``muppet validate``, ``default_config`` for a daemon
without a file.

Two kinds of file (docs/configuration.md is the reference):

* the daemon file (``muppet.toml``): ``[daemon]``, ``[api]``, ``[web]``,
  ``[executors.NAME]``, ``[stakeholders.NAME]``, and the index's
  ``[products.SLUG]``, ``[formats.SLUG]``, ``[backends.SLUG]``, ``[index]``;
  every key has an embedded default, so an empty file is a valid
  configuration;
* pipeline files, found through ``[daemon] pipelines`` globs: one
  ``[pipeline]``, its ``[steps.NAME]`` and more ``[stakeholders.NAME]``.

Validation never stops at the first problem: a pipeline author fixing a file
wants the whole list at once. Every check appends a :class:`Problem` naming the
file, the table and the key, and :func:`load_config` raises one
:class:`ConfigError` holding all of them. The tables themselves are read by
the modules beside this one, one per table family.

Everything here reads files and blocks: under Trio call it from a worker thread
(or before ``trio.run``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..model import ApiConfig, Config, ExecutorConfig, IndexConfig, Pipeline, Product, Stakeholder, Step
from ..tomlcheck import ConfigError, Problem, TomlFile, read_toml, show
from .alerts import alerts_table, check_recipients
from .api import api_table
from .daemon import daemon_table, default_daemon
from .executors import default_executors, executor_tables
from .index import DEFAULT_FORMATS, index_tables, local_backend, stakeholder_tables
from .pipelines import SAMPLE_REFERENCE_TIME, pipeline_file
from .web import web_table

__all__ = ["ConfigError", "Problem", "default_config", "load_config", "validate_paths"]

#: the tables a daemon file may hold
DAEMON_TABLES = (
    "daemon", "api", "executors", "stakeholders", "products", "formats", "backends", "index", "web", "alerts",
)


def default_config() -> Config:
    """The embedded defaults, no pipelines: ``muppet daemon`` without --config."""
    daemon = default_daemon()
    return Config(
        daemon=daemon,
        api=ApiConfig(),
        executors=default_executors(),
        pipelines={},
        stakeholders={},
        formats=DEFAULT_FORMATS,
        backends={"local": local_backend(daemon.output_dir)},
        index=IndexConfig(outputs_backend="local"),
        source="",
    )


@attrs.frozen
class _Loaded:
    """A pipeline read from one file, before the checks that span files."""

    pipeline: Pipeline
    display: str
    #: the file's own checks found nothing, so cross-file checks are meaningful
    clean: bool


class _Loader:
    """What the files read so far hold, and every problem found in them.

    Stakeholders are shared by all files; pipelines are checked one file at a
    time as they are read, then together (:meth:`cross_check`).
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.stakeholders: dict[str, tuple[Stakeholder, str]] = {}
        self.loaded: list[_Loaded] = []
        #: the daemon file's products; None while checking pipeline files alone
        self.products: Mapping[str, Product] | None = None

    def add_stakeholders(self, f: TomlFile, found: list[tuple[Stakeholder, str]]) -> None:
        """Stakeholders of one file; one defined differently before is a problem."""
        for stakeholder, display in found:
            first = self.stakeholders.get(stakeholder.key)
            if first is None:
                self.stakeholders[stakeholder.key] = (stakeholder, display)
            elif first[0] != stakeholder:
                f.problem(
                    f"stakeholders.{stakeholder.key}",
                    "",
                    f"defined differently in {first[1]} (name {show(first[0].name)}, "
                    f"email {show(first[0].email)}); stakeholders are shared by all files",
                )

    def pipeline_file(self, path: str, display: str, data: dict[str, Any] | None = None) -> None:
        """Read (unless ``data`` is given) and check one pipeline file."""
        if data is None:
            data = read_toml(path, display, self.problems)
            if data is None:
                return
        before = len(self.problems)
        f = TomlFile(display, self.problems, self.warnings)
        self.add_stakeholders(f, stakeholder_tables(f, data))
        pipeline = pipeline_file(f, data, os.path.abspath(path))
        self.loaded.append(_Loaded(pipeline, display, clean=len(self.problems) == before))

    def cross_check(self, executors: Mapping[str, ExecutorConfig] | None) -> dict[str, Pipeline]:
        """Checks that span files.

        ``executors`` None: pipeline files checked without their daemon file,
        where owners and executor names may be defined and cannot be checked.
        """
        pipelines: dict[str, Pipeline] = {}
        first_file: dict[str, str] = {}
        destinations: dict[str, tuple[str, str, int]] = {}
        for item in self.loaded:
            f = TomlFile(item.display, self.problems, self.warnings)
            p = item.pipeline
            if p.name:
                if p.name in first_file:
                    f.problem(
                        "pipeline", "name", f"pipeline {show(p.name)} is also defined in {first_file[p.name]}"
                    )
                else:
                    first_file[p.name] = item.display
                    pipelines[p.name] = p
            if p.owner and p.owner not in self.stakeholders and executors is not None:
                known = ", ".join(sorted(self.stakeholders)) or "none"
                f.problem(
                    "pipeline",
                    "owner",
                    f"unknown stakeholder {show(p.owner)}; define [stakeholders.{p.owner}] "
                    f"in this file or another (known: {known})",
                )
            self._products(f, p)
            for step in p.steps.values():
                if executors is not None and step.executor not in executors:
                    f.problem(
                        f"steps.{step.name}",
                        "executor",
                        f"unknown executor {show(step.executor)} (defined: {', '.join(executors)})",
                    )
                if item.clean:
                    self._destinations(f, p, step, destinations)
        return pipelines

    def _products(self, f: TomlFile, p: Pipeline) -> None:
        for key in ("requires", "produces"):
            for slug in getattr(p, key):
                if self.products is not None and slug not in self.products:
                    known = ", ".join(sorted(self.products)) or "none"
                    f.problem(
                        "pipeline", key,
                        f"unknown product {show(slug)}; declare [products.{slug}] in the daemon file (known: {known})",
                    )
        for step in p.steps.values():
            table = f"steps.{step.name}"
            if step.product and step.product not in p.produces:
                produced = ", ".join(p.produces) or "none"
                f.problem(table, "product", f"{show(step.product)} is not in the pipeline's produces ({produced})")
            elif step.outputs and not step.product and len(p.produces) > 1:
                f.problem(
                    table, "product",
                    f"the pipeline produces {len(p.produces)} products; say which one this step's outputs are",
                )

    def _destinations(self, f: TomlFile, p: Pipeline, step: Step, seen: dict[str, tuple[str, str, int]]) -> None:
        # Two jobs writing one destination would replace each other's file.
        # Checked at one sample reference time over the first indices: that
        # catches equal patterns, the usual copy-and-paste mistake.
        for pattern in step.outputs:
            for index in range(min(step.jobs, 1000)):
                dest = os.path.normpath(pattern.format(reference_time=SAMPLE_REFERENCE_TIME, index=index))
                here = (p.name, step.name, index)
                other = seen.setdefault(dest, here)
                if other != here:
                    f.problem(
                        f"steps.{step.name}",
                        "outputs",
                        f"{show(pattern)} gives the same destination {show(dest)} as "
                        f"pipeline {show(other[0])} step {show(other[1])} (index {other[2]})",
                    )
                    break


def _daemon_file(loader: _Loader, path: str, display: str, data: dict[str, Any]) -> tuple[Config, list[str]]:
    """Reads a daemon file and the pipeline files its globs match; returns them too."""
    base_dir = os.path.dirname(os.path.abspath(path))
    f = TomlFile(display, loader.problems, loader.warnings)
    for key, value in data.items():
        if key not in DAEMON_TABLES:
            if key in ("pipeline", "steps"):
                f.problem(key, "", "belongs in a pipeline file, listed by [daemon] pipelines")
            elif isinstance(value, dict):
                f.problem(key, "", f"unknown table (a daemon file has {', '.join(f'[{t}]' for t in DAEMON_TABLES)})")
            else:
                f.problem("", key, "unknown key at the top level (daemon keys go in [daemon])")

    daemon, globs = daemon_table(f, data, base_dir)
    api = api_table(f, data, base_dir)
    web = web_table(f, data, api)
    executors = executor_tables(f, data)
    loader.add_stakeholders(f, stakeholder_tables(f, data))
    files = _pipeline_files(loader, f, globs, base_dir, os.path.dirname(display))

    products, formats, backends, index = index_tables(f, data, daemon.output_dir)
    loader.products = products
    pipelines = loader.cross_check(executors)
    for key, product in products.items():
        if product.contact and product.contact not in loader.stakeholders:
            known = ", ".join(sorted(loader.stakeholders)) or "none"
            f.problem(f"products.{key}", "contact", f"unknown stakeholder {show(product.contact)} (known: {known})")
    alerts = alerts_table(f, data, base_dir)
    check_recipients(f, alerts, {key: s for key, (s, _) in loader.stakeholders.items()})
    config = Config(
        daemon=daemon,
        api=api,
        executors=executors,
        pipelines=pipelines,
        stakeholders={key: s for key, (s, _) in loader.stakeholders.items()},
        products=products,
        formats=formats,
        backends=backends,
        index=index,
        source=os.path.abspath(path),
        web=web,
        alerts=alerts,
    )
    return config, files


def _pipeline_files(
    loader: _Loader, f: TomlFile, globs: Sequence[str], base_dir: str, display_dir: str
) -> list[str]:
    """Reads the pipeline files the ``[daemon] pipelines`` globs match, each
    once, in sorted order per glob; returns their real paths."""
    files: list[str] = []
    seen: set[str] = set()
    for pattern in globs:
        expanded = os.path.expanduser(pattern)
        if os.path.isabs(expanded):
            matches = [(m, m) for m in sorted(glob.glob(expanded, recursive=True))]
        else:
            matches = [
                (os.path.join(base_dir, m), os.path.join(display_dir, m))
                for m in sorted(glob.glob(expanded, root_dir=base_dir, recursive=True))
            ]
        if not matches and not any(c in expanded for c in "*?["):
            # A literal file name that is not there is a mistake; a pattern
            # that matches nothing is an empty directory of pipelines.
            f.problem("daemon", "pipelines", f"{show(pattern)}: no such file (relative to {base_dir})")
        for full, shown in matches:
            real = os.path.realpath(full)
            if real in seen or os.path.isdir(full):
                continue
            seen.add(real)
            files.append(real)
            loader.pipeline_file(full, shown)
    return files


def _is_pipeline_file(data: Mapping[str, Any]) -> bool:
    return "pipeline" in data or "steps" in data


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a daemon file and every pipeline file its globs match.

    Relative paths (``state_dir``, ``output_dir``, ``sqlite:///relative.db``,
    the pipeline globs) are relative to the file's directory. Raises
    :class:`ConfigError` with every problem found, in every file. Blocks.
    """
    display = os.fspath(path)
    loader = _Loader()
    data = read_toml(display, display, loader.problems)
    if data is None:
        raise ConfigError(loader.problems)
    if "pipeline" in data and not any(k in data for k in ("daemon", "api", "executors")):
        raise ConfigError(
            [Problem(display, "", "", "this is a pipeline file; give the daemon file (muppet.toml) that lists it")]
        )
    config, _ = _daemon_file(loader, display, display, data)
    if loader.problems:
        raise ConfigError(loader.problems)
    return attrs.evolve(config, warnings=tuple(str(w) for w in loader.warnings))


def validate_paths(paths: Sequence[str]) -> list[Problem]:
    """Every problem in the given files, for ``muppet validate PATH...``.

    A file with a ``[pipeline]`` (or ``[steps]``) table is a pipeline file;
    any other file is a daemon file, validated with all the pipeline files it
    lists, exactly as :func:`load_config` would. Pipeline files given that no
    given daemon file lists are validated together, on their own: everything
    in them is checked, stakeholders are shared among them, pipeline names must
    differ, but an owner defined in none of them and executor names are not
    reported, since they live in the daemon file. Validate the daemon file to
    check those. An empty list means all is well.
    """
    problems: list[Problem] = []
    covered: set[str] = set()
    lone: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        data = read_toml(path, path, problems)
        if data is None:
            continue
        if _is_pipeline_file(data):
            lone.append((path, data))
            continue
        loader = _Loader()
        _, files = _daemon_file(loader, path, path, data)
        covered.update(files)
        problems.extend(loader.problems + loader.warnings)

    loader = _Loader()
    for path, data in lone:
        if os.path.realpath(path) not in covered:
            loader.pipeline_file(path, path, data)
    loader.cross_check(None)
    problems.extend(loader.problems + loader.warnings)

    unique: list[Problem] = []
    for problem in problems:  # a file given twice reports once
        if problem not in unique:
            unique.append(problem)
    return unique
