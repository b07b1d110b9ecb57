"""The campaign message as it is stored once: French plain text (links stay text), an optional PDF."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid

SENDER_NAME = "Assurance Maladie"


def build(sender: str, subject: str, body: str, *, hostname: str, pdf: bytes | None = None, pdf_name: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = formataddr((SENDER_NAME, sender))
    message["To"] = "undisclosed-recipients:;"
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=hostname)
    message["Auto-Submitted"] = "auto-generated"
    message["Content-Language"] = "fr"
    message.set_content(body)
    if pdf is not None:
        message.add_attachment(pdf, maintype="application", subtype="pdf", filename=pdf_name or "document.pdf")
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
