"""Building test messages with the standard library, as a mail client would."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid


def message(
    sender: str,
    to: str,
    subject: str = "Résultats d'analyse",
    body: str = "Bonjour,\nvoici vos résultats.\n",
    *,
    headers: dict[str, str] | None = None,
    attachment: tuple[str, bytes, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if attachment is not None:
        filename, data, mime = attachment
        maintype, subtype = mime.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg
