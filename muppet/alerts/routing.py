"""Who hears of an incident, and on which channels (docs/alerts.md,
"Who hears of it"). Pure functions of the configuration.

An incident of a pipeline goes to the pipeline's owner, the contacts of the
products it produces and ``[alerts] default_to``; a late product to its
contact, the owners of the pipelines that produce it and ``default_to``; the
daemon's own troubles to ``default_to``. Each stakeholder hears only of the
kinds its ``notify`` names (all when it names none), by mail when it has an
e-mail address and ``[alerts] smtp`` is set, by webhook when it has one.
A destination is ``STAKEHOLDER:mail`` or ``STAKEHOLDER:webhook``.
"""

from __future__ import annotations

from ..model import Config
from .kinds import DAEMON_KINDS, PRODUCT_LATE

MAIL = "mail"
WEBHOOK = "webhook"


def stakeholders(config: Config, kind: str, pipeline: str, subject: str) -> list[str]:
    """The keys of the stakeholders who hear of an incident, each once, in
    that order: owner, product contacts, default_to."""
    keys: list[str] = []
    if kind not in DAEMON_KINDS:
        product = config.products.get(subject) if kind == PRODUCT_LATE else None
        if product is not None and product.contact:
            keys.append(product.contact)
        producers = [p for p in config.pipelines.values() if product is not None and product.slug in p.produces]
        found = config.pipelines.get(pipeline)
        if found is not None and found not in producers:
            producers.insert(0, found)
        for one in producers:
            keys.append(one.owner)
            keys.extend(config.products[slug].contact for slug in one.produces
                        if slug in config.products and config.products[slug].contact)
    keys.extend(config.alerts.default_to)
    seen: list[str] = []
    for key in keys:
        stakeholder = config.stakeholders.get(key)
        if stakeholder is None or key in seen:
            continue
        if stakeholder.notify is not None and kind not in stakeholder.notify:
            continue
        seen.append(key)
    return seen


def destinations(config: Config, kind: str, pipeline: str, subject: str) -> list[str]:
    """``STAKEHOLDER:mail`` and ``STAKEHOLDER:webhook`` of those who hear
    of it and can be reached."""
    found = []
    for key in stakeholders(config, kind, pipeline, subject):
        stakeholder = config.stakeholders[key]
        if stakeholder.email and config.alerts.smtp:
            found.append(f"{key}:{MAIL}")
        if stakeholder.webhook:
            found.append(f"{key}:{WEBHOOK}")
    return found


def split(destination: str) -> tuple[str, str]:
    """``STAKEHOLDER:CHANNEL`` -> (stakeholder, channel)."""
    key, _, channel = destination.rpartition(":")
    return key, channel
