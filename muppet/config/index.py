"""The Productstatus index's tables in the daemon file: ``[products.SLUG]``,
``[formats.SLUG]``, ``[backends.SLUG]``, ``[index]``, and the
``[stakeholders.KEY]`` who own pipelines and are the contacts of products
(docs/configuration.md, docs/index.md).

Stakeholders may also be defined in pipeline files; the loader merges them
across files (``loading.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..model import DataFormat, IndexConfig, Product, ServiceBackend, Stakeholder
from ..tomlcheck import Bad, TomlFile, any_string, boolean, integer, number, show, string, string_list
from .alerts import STAKEHOLDER_ALERT_KEYS, expected_after, stakeholder_alert_keys
from .checks import named_tables

__all__ = [
    "DEFAULT_FORMATS",
    "PRODUCT_METADATA_KEYS",
    "index_tables",
    "local_backend",
    "stakeholder_tables",
]


#: the grid and time-step metadata a product may carry (Productstatus's fields)
PRODUCT_METADATA_KEYS = (
    "projection", "grid_resolution", "grid_resolution_units", "bounding_box",
    "time_steps", "time_step_hours",
)
_PRODUCT_KEYS = (
    "name", "contact", "parents", "file_count", "operational", "lifetime_hours", *PRODUCT_METADATA_KEYS,
    "expected_after",
)

#: formats every daemon knows; [formats.X] may rename them or add more
DEFAULT_FORMATS = {
    "netcdf": DataFormat("netcdf", "NetCDF"),
    "grib": DataFormat("grib", "GRIB"),
}


def _metadata_value(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, list)):
        raise Bad(f"must be a string, a number or a list, got {show(value)}")
    return value


def _url(value: Any) -> str:
    url = string(value)
    parts = urlsplit(url)
    if not parts.scheme or (parts.scheme != "file" and not parts.netloc):
        raise Bad(f"must be a URL such as \"file:///lustre/a\" or \"https://host/path\", got {show(url)}")
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise Bad(f"a file:// URL needs an absolute path, got {show(url)}")
    return url.rstrip("/") or url


def local_backend(output_dir: str) -> ServiceBackend:
    """The service backend the daemon's own outputs are indexed on when
    ``[index] outputs_backend`` names none: the output directory itself."""
    return ServiceBackend("local", "This daemon's output_dir", "file://" + output_dir)


def index_tables(
    f: TomlFile, data: Mapping[str, Any], output_dir: str
) -> tuple[dict[str, Product], dict[str, DataFormat], dict[str, ServiceBackend], IndexConfig]:
    """The products, formats (with the defaults), service backends and
    ``[index]`` settings of the daemon file. ``output_dir`` is ``[daemon]
    output_dir``, which the outputs' backend must be."""
    products = _products(f, data)
    formats = _formats(f, data)
    backends = _backends(f, data)
    return products, formats, backends, _index(f, data, backends, output_dir)


def _products(f: TomlFile, data: Mapping[str, Any]) -> dict[str, Product]:
    products: dict[str, Product] = {}
    for slug, table, body in named_tables(f, data, "products"):
        f.unknown(body, table, _PRODUCT_KEYS)
        metadata = {
            key: f.get(body, table, key, _metadata_value) for key in PRODUCT_METADATA_KEYS if key in body
        }
        products[slug] = Product(
            slug=slug,
            name=f.get(body, table, "name", string, slug, required=True),
            contact=f.get(body, table, "contact", string, ""),
            parents=f.get(body, table, "parents", string_list(), ()),
            file_count=f.get(body, table, "file_count", integer(1, 1_000_000), 1),
            operational=f.get(body, table, "operational", boolean, False),
            lifetime_hours=f.get(body, table, "lifetime_hours", number(0, exclusive=True), None),
            metadata=metadata,
            expected_after=f.get(body, table, "expected_after", expected_after, None),
        )
    for slug, product in products.items():
        for parent in product.parents:
            if parent not in products:
                f.problem(f"products.{slug}", "parents", f"unknown product {show(parent)}")
            elif parent == slug:
                f.problem(f"products.{slug}", "parents", "a product cannot be its own parent")
    return products


def _formats(f: TomlFile, data: Mapping[str, Any]) -> dict[str, DataFormat]:
    formats = dict(DEFAULT_FORMATS)
    for slug, table, body in named_tables(f, data, "formats"):
        f.unknown(body, table, ("name",))
        formats[slug] = DataFormat(slug, f.get(body, table, "name", string, slug, required=True))
    return formats


def _backends(f: TomlFile, data: Mapping[str, Any]) -> dict[str, ServiceBackend]:
    backends: dict[str, ServiceBackend] = {}
    for slug, table, body in named_tables(f, data, "backends"):
        f.unknown(body, table, ("name", "url"))
        backends[slug] = ServiceBackend(
            slug,
            f.get(body, table, "name", string, slug, required=True),
            f.get(body, table, "url", _url, "", required=True),
        )
    return backends


def _index(f: TomlFile, data: Mapping[str, Any], backends: dict[str, ServiceBackend], output_dir: str) -> IndexConfig:
    """``[index]``; adds the default outputs backend to ``backends`` when
    it names none."""
    section = f.table(data, "", "index")
    f.unknown(section, "index", ("outputs_backend", "expiry_interval", "delete_expired_files"))
    outputs_backend = f.get(section, "index", "outputs_backend", string, "")
    if outputs_backend and outputs_backend not in backends:
        known = ", ".join(sorted(backends)) or "none"
        f.problem("index", "outputs_backend", f"unknown backend {show(outputs_backend)} (declared: {known})")
    elif outputs_backend:
        root = backends[outputs_backend].local_root
        # step outputs land in output_dir and are indexed under the backend's
        # URL: the two must name the same directory, or the index lies
        if root is not None and os.path.normpath(root) != os.path.normpath(output_dir):
            f.problem(
                "index", "outputs_backend",
                f"backend {show(outputs_backend)} is the directory {root}, but step outputs go to "
                f"[daemon] output_dir {output_dir}; make them the same",
            )
    if not outputs_backend:
        # the daemon's own outputs are always indexed somewhere: by default on
        # a backend named after what it is, the output directory itself
        outputs_backend = "local"
        backends.setdefault("local", local_backend(output_dir))
    return IndexConfig(
        outputs_backend=outputs_backend,
        expiry_interval=f.get(section, "index", "expiry_interval", number(0.1), 60.0),
        delete_expired_files=f.get(section, "index", "delete_expired_files", boolean, False),
    )


def stakeholder_tables(f: TomlFile, data: Mapping[str, Any]) -> list[tuple[Stakeholder, str]]:
    """Each ``[stakeholders.KEY]`` of one file, with the file's name (the
    loader says where a stakeholder defined twice was first defined)."""
    found = []
    for key, table, body in named_tables(f, data, "stakeholders"):
        f.unknown(body, table, ("name", "email", *STAKEHOLDER_ALERT_KEYS))
        name = f.get(body, table, "name", string, key)
        email = f.get(body, table, "email", any_string, "")
        if email and ("@" not in email or any(c.isspace() for c in email)):
            f.problem(table, "email", f"not an e-mail address: {show(email)}")
        found.append((Stakeholder(key, name, email, **stakeholder_alert_keys(f, body, table)), f.display))
    return found
