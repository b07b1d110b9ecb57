"""Sending notifications to people (login codes) outside the messaging itself.

One interface, two ways: `.eml` files in `<data dir>/outbox/` (the default: a machine with
no mail relay, and what the tests read), or a real SMTP relay when `notify_relay` is set.
A production operator would add an SMS gateway behind the same interface.

A sender that may send the same notification twice (a job queue whose worker died after
the hand-off and before it recorded "sent") passes a stable `message_id`: the outbox keeps
one file per Message-ID (a second send of the same one is a no-op, so the hand-off is
exactly once), and a relay receives the same Message-ID both times, which is what
receiving systems deduplicate on.
"""

from __future__ import annotations

import hashlib
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
    async def send(self, to: str, subject: str, text: str, *, message_id: str | None = None) -> None: ...


def build(sender: str, to: str, subject: str, text: str, message_id: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id or make_msgid(domain=sender.rpartition("@")[2].rstrip(">") or "localhost")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    return message


class OutboxNotifier:
    """Writes each notification as an .eml file, atomically, readable by the owner only."""

    def __init__(self, directory: Path, sender: str) -> None:
        self.directory = directory
        self.sender = sender

    async def send(self, to: str, subject: str, text: str, *, message_id: str | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        if message_id is not None:
            # The file name carries the Message-ID's digest: the rename below is the one
            # moment the notification exists, so seeing it here means it was sent.
            tail = hashlib.sha256(f"{to}\n{message_id}".encode()).hexdigest()[:20]
            if any(self.directory.glob(f"*-{tail}.eml")):
                return
        else:
            tail = uuid.uuid4().hex[:8]
        path = self.directory / f"{stamp}-{tail}.eml"
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(build(self.sender, to, subject, text, message_id).as_bytes())
        os.replace(tmp, path)


class SmtpNotifier:
    """Hands each notification to an SMTP relay (STARTTLS when the relay offers it)."""

    def __init__(self, relay: str, sender: str) -> None:
        host, _, port = relay.rpartition(":")
        self.host, self.port = (host or relay), int(port or 25)
        self.sender = sender

    async def send(self, to: str, subject: str, text: str, *, message_id: str | None = None) -> None:
        await aiosmtplib.send(build(self.sender, to, subject, text, message_id), hostname=self.host, port=self.port, timeout=30)


def notifier_from_settings(settings: Settings) -> Notifier:
    if settings.notify_relay:
        return SmtpNotifier(settings.notify_relay, settings.notify_from)
    return OutboxNotifier(settings.data_dir / "outbox", settings.notify_from)
