"""Delivery status notifications (RFC 3464): what the sender gets when relaying fails or lags.

A DSN is a multipart/report with a human part in French (and English), the
message/delivery-status part with one block per recipient, and the original headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime, formatdate, make_msgid


@dataclass(frozen=True)
class RecipientStatus:
    address: str
    action: str  # failed / delayed
    status: str  # enhanced status code, e.g. 5.1.1 or 4.4.1
    diagnostic: str  # the remote reply or what went wrong
    remote_mta: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


def _headers_of(original: bytes) -> bytes:
    end = original.find(b"\r\n\r\n")
    return original if end < 0 else original[: end + 2]


def build_dsn(
    *, reporting_mta: str, postmaster: str, to: str, original: bytes, recipients: list[RecipientStatus], arrival: datetime | None = None
) -> bytes:
    """The DSN as CRLF bytes, ready to store or send."""
    delayed = all(r.action == "delayed" for r in recipients)
    lines_fr = "\n".join(f"  - {r.address} : {r.diagnostic}" for r in recipients)
    if delayed:
        subject = "Remise retardée / Delivery delayed"
        human = (
            "Votre message n'a pas encore pu être remis aux destinataires ci-dessous. Nous réessayons "
            "automatiquement ; vous n'avez rien à faire pour l'instant.\n\n"
            + lines_fr
            + "\n\nThis is a warning only: delivery is still being attempted."
        )
    else:
        subject = "Message non remis / Undelivered mail"
        human = (
            "Votre message n'a pas pu être remis aux destinataires ci-dessous :\n\n"
            + lines_fr
            + "\n\nYour message could not be delivered to the recipients above."
        )
    report = EmailMessage()
    report["From"] = f"Caducée <{postmaster}>"
    report["To"] = to
    report["Subject"] = subject
    report["Date"] = formatdate(localtime=False)
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"
    report.set_content(human)

    def block(fields: list[tuple[str, str]]) -> Message:
        part = Message()
        for name, value in fields:
            part[name] = value
        return part

    per_message = [("Reporting-MTA", f"dns; {reporting_mta}")]
    if arrival is not None:
        per_message.append(("Arrival-Date", format_datetime(arrival)))
    blocks: list[Message | str] = [block(per_message)]
    for r in recipients:
        fields = [("Final-Recipient", f"rfc822; {r.address}"), ("Action", r.action), ("Status", r.status)]
        if r.remote_mta:
            fields.append(("Remote-MTA", f"dns; {r.remote_mta}"))
        fields.append(("Diagnostic-Code", f"smtp; {' '.join(r.diagnostic.split())[:900]}"))
        if r.last_attempt is not None:
            fields.append(("Last-Attempt-Date", format_datetime(r.last_attempt)))
        if r.will_retry_until is not None:
            fields.append(("Will-Retry-Until", format_datetime(r.will_retry_until)))
        blocks.append(block(fields))
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")
    status = EmailMessage()
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)
    report.attach(status)
    headers = EmailMessage()
    headers["Content-Type"] = "text/rfc822-headers"
    headers.set_payload(_headers_of(original).decode("ascii", "replace"))
    report.attach(headers)
    raw = report.as_bytes()
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
