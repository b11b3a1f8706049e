"""The ``[alerts]`` table of the daemon file, and the alerting keys of
``[stakeholders.KEY]`` and ``[products.SLUG]``: how incidents reach
stakeholders by mail and webhook (docs/alerts.md, docs/configuration.md).

Every problem names the file, the table and the key, as everywhere in
``muppet/config/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .. import durations
from ..alerts.kinds import KINDS
from ..model import AlertsConfig, Stakeholder
from ..tomlcheck import Bad, TomlFile, boolean, number, show, string, string_list
from .checks import resolve

__all__ = ["ALERTS_KEYS", "STAKEHOLDER_ALERT_KEYS", "alerts_table", "check_recipients", "expected_after",
           "stakeholder_alert_keys"]

ALERTS_KEYS = (
    "smtp", "starttls", "ssl", "username", "password_file", "from", "digest_seconds", "default_to",
    "remind_seconds", "timeout",
)
STAKEHOLDER_ALERT_KEYS = ("webhook", "notify", "routing_key")


def _host_port(value: Any) -> str:
    text = string(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) <= 65535:
        raise Bad(f"must be HOST:PORT with a port 1-65535 (such as \"smtp.example.org:587\"), got {show(text)}")
    return text


def _address(value: Any) -> str:
    text = string(value)
    if "@" not in text or any(c.isspace() for c in text):
        raise Bad(f"not an e-mail address: {show(text)}")
    return text


def _password(base_dir: str) -> Callable[[Any], tuple[str, str]]:
    """The file's path and the password in it (its first line). Blocks."""

    def check(value: Any) -> tuple[str, str]:
        path = resolve(base_dir, string(value))
        try:
            with open(path, encoding="utf-8") as file:
                secret = file.readline().rstrip("\r\n")
        except OSError as exc:
            raise Bad(f"cannot read {path}: {exc.strerror}") from None
        if not secret:
            raise Bad(f"{path} is empty: its first line is the password")
        return path, secret

    return check


def alerts_table(f: TomlFile, data: Mapping[str, Any], base_dir: str) -> AlertsConfig:
    """``[alerts]``; ``default_to`` is checked against the stakeholders by
    :func:`check_recipients` once every file is read."""
    section = f.table(data, "", "alerts")
    f.unknown(section, "alerts", ALERTS_KEYS)
    default = AlertsConfig()
    smtp = f.get(section, "alerts", "smtp", _host_port, "")
    starttls = f.get(section, "alerts", "starttls", boolean, False)
    ssl = f.get(section, "alerts", "ssl", boolean, False)
    if starttls and ssl:
        f.problem("alerts", "ssl", "give starttls (upgrade a plain connection, port 587) or ssl (TLS from the "
                                   "start, port 465), not both")
    username = f.get(section, "alerts", "username", string, "")
    password_file, password = f.get(section, "alerts", "password_file", _password(base_dir), ("", ""))
    if username and not password_file and "password_file" not in section:
        f.problem("alerts", "password_file", "missing: username is set, so the server needs its password")
    if password_file and not username:
        f.problem("alerts", "username", "missing: password_file is set, but not whom it is the password of")
    sender = f.get(section, "alerts", "from", _address, "")
    if smtp and not sender and "from" not in section:
        f.problem("alerts", "from", "missing: mail needs a From: address (such as \"muppet@example.org\")")
    for key in ("starttls", "ssl", "username", "password_file", "from"):
        if key in section and not smtp and "smtp" not in section:
            f.problem("alerts", key, "has no effect without smtp = \"HOST:PORT\"")
            break
    return AlertsConfig(
        smtp=smtp,
        security="starttls" if starttls else "ssl" if ssl else "",
        username=username,
        password=password,
        password_file=password_file,
        sender=sender,
        digest_seconds=f.get(section, "alerts", "digest_seconds", number(0), default.digest_seconds),
        default_to=f.get(section, "alerts", "default_to", string_list(), ()),
        remind_seconds=f.get(section, "alerts", "remind_seconds", number(0), default.remind_seconds),
        timeout=f.get(section, "alerts", "timeout", number(0.1), default.timeout),
    )


def check_recipients(f: TomlFile, alerts: AlertsConfig, stakeholders: Mapping[str, Stakeholder]) -> None:
    """``default_to`` names stakeholders; a stakeholder with an e-mail
    address gets mail only with ``smtp`` set (a warning: allowed, probably
    not meant)."""
    for key in alerts.default_to:
        if key not in stakeholders:
            known = ", ".join(sorted(stakeholders)) or "none"
            f.problem("alerts", "default_to", f"unknown stakeholder {show(key)} (known: {known})")
    if alerts.default_to and not alerts.smtp:
        mailed = [key for key in alerts.default_to if key in stakeholders and stakeholders[key].email]
        if mailed:
            f.warn("alerts", "smtp", f"not set: {', '.join(mailed)} in default_to will get no mail")


def _webhook(value: Any) -> str:
    url = string(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Bad(f"must be an http:// or https:// URL, got {show(url)}")
    return url


def _kinds(value: Any) -> tuple[str, ...]:
    kinds: tuple[str, ...] = string_list()(value)
    for kind in kinds:
        if kind not in KINDS:
            raise Bad(f"unknown kind {show(kind)} (kinds: {', '.join(KINDS)})")
    return kinds


def stakeholder_alert_keys(f: TomlFile, body: Mapping[str, Any], table: str) -> dict[str, Any]:
    """A stakeholder's ``webhook``, ``notify`` and ``routing_key``, as
    Stakeholder's keyword arguments."""
    webhook = f.get(body, table, "webhook", _webhook, "")
    routing_key = f.get(body, table, "routing_key", string, "")
    if routing_key and not webhook:
        f.problem(table, "routing_key", "has no effect without webhook (PagerDuty's "
                                        "\"https://events.pagerduty.com/v2/enqueue\")")
    return {
        "webhook": webhook,
        "notify": f.get(body, table, "notify", _kinds, None),
        "routing_key": routing_key,
    }


def expected_after(value: Any) -> str:
    """``[products.SLUG] expected_after``: an ISO 8601 duration that does
    not point back ("PT3H")."""
    text = string(value)
    try:
        parsed = durations.parse(text)
    except ValueError as exc:
        raise Bad(str(exc)) from None
    if durations.is_negative(parsed):
        raise Bad(f"must not point back in time, got {show(text)}")
    return text
