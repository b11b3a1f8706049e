"""Sending a message: SMTP (smtplib) and HTTP POST (urllib). Both block:
the alerts task calls them in worker threads (``trio.to_thread.run_sync``),
each with the timeout of ``[alerts] timeout`` on every socket operation, so
that a slow or dead server holds up only its own destination, never the
scheduler (docs/architecture.md, "The rules they keep").

Every failure comes out as ``SendFailed`` with the server's words.
"""

from __future__ import annotations

import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from urllib.parse import urlsplit

from ..model import AlertsConfig


class SendFailed(Exception):
    """The message was not accepted; it is tried again later."""


def send_mail(alerts: AlertsConfig, message: EmailMessage) -> None:
    """Hand ``message`` to ``[alerts] smtp``: TLS from the start (``ssl``),
    or upgraded (``starttls``), or plain; AUTH with ``username`` and the
    password of ``password_file`` when given."""
    host, _, port = alerts.smtp.rpartition(":")
    host = host.strip("[]")
    try:
        client: smtplib.SMTP
        if alerts.security == "ssl":
            client = smtplib.SMTP_SSL(host, int(port), timeout=alerts.timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(host, int(port), timeout=alerts.timeout)
        with client:
            if alerts.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if alerts.username:
                client.login(alerts.username, alerts.password)
            refused = client.send_message(message)
        if refused:
            raise SendFailed(f"SMTP {alerts.smtp} refused {', '.join(refused)}")
    except (smtplib.SMTPException, OSError) as exc:
        raise SendFailed(f"SMTP {alerts.smtp}: {exc}") from exc


def post_json(url: str, body: bytes, timeout: float, user_agent: str = "MUPPET") -> None:
    """POST ``body`` (JSON) to ``url``; any answer but 2xx is a failure.
    Messages name the URL's host only: a chat's webhook URL holds its secret."""
    shown = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}/..."
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": user_agent},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(64 * 1024)
            status = response.status
    except urllib.error.HTTPError as exc:
        raise SendFailed(f"webhook {shown}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SendFailed(f"webhook {shown}: {getattr(exc, 'reason', exc)}") from exc
    if not 200 <= status < 300:
        raise SendFailed(f"webhook {shown}: HTTP {status}")
