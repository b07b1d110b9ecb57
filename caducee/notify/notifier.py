"""Sending notifications to people (login codes) outside the messaging itself.

One interface, two ways: `.eml` files in `<data dir>/outbox/` (the default: a machine with
no mail relay, and what the tests read), or a real SMTP relay when `notify_relay` is set.
A production operator would add an SMS gateway behind the same interface.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Protocol

import aiosmtplib

from caducee.config import Settings


class Notifier(Protocol):
    async def send(self, to: str, subject: str, text: str) -> None: ...


def build(sender: str, to: str, subject: str, text: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].rstrip(">") or "localhost")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    return message


class OutboxNotifier:
    """Writes each notification as an .eml file, atomically, readable by the owner only."""

    def __init__(self, directory: Path, sender: str) -> None:
        self.directory = directory
        self.sender = sender

    async def send(self, to: str, subject: str, text: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(build(self.sender, to, subject, text).as_bytes())
        os.replace(tmp, path)


class SmtpNotifier:
    """Hands each notification to an SMTP relay (STARTTLS when the relay offers it)."""

    def __init__(self, relay: str, sender: str) -> None:
        host, _, port = relay.rpartition(":")
        self.host, self.port = (host or relay), int(port or 25)
        self.sender = sender

    async def send(self, to: str, subject: str, text: str) -> None:
        await aiosmtplib.send(build(self.sender, to, subject, text), hostname=self.host, port=self.port, timeout=30)


def notifier_from_settings(settings: Settings) -> Notifier:
    if settings.notify_relay:
        return SmtpNotifier(settings.notify_relay, settings.notify_from)
    return OutboxNotifier(settings.data_dir / "outbox", settings.notify_from)
