"""Building the messages a patient sends from the webmail: replies, prescriptions, receipts.

They are ordinary RFC 5322 messages, handed to the gateway's accept pipeline like any
mail client's: the rules, the signature and the encryption are the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formatdate, make_msgid

from caducee.mime.headers import MAIL_POLICY
from caducee.webmail.uploads import Upload

MAX_TEXT = 20_000  # characters a patient may write in one message
_POLICY = MAIL_POLICY  # CRLF line ends, text headers as RFC 2047 words, identifiers verbatim


def clean_text(text: str) -> str:
    """What the person typed, with line ends normalised and control characters removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or ch >= " ").strip()


def _address(name: str, address: str) -> Address:
    local, _, domain = address.partition("@")
    return Address(display_name=name, username=local, domain=domain)


def _base(
    sender_name: str, sender: str, to: list[tuple[str, str]], subject: str, hostname: str, written_by: tuple[str, str] | None = None
) -> EmailMessage:
    message = EmailMessage(policy=_POLICY)
    message["From"] = _address(sender_name, sender)
    if written_by is not None:  # RFC 5322 3.6.2: the person who wrote it for the profile's owner (a guardian, a carer)
        message["Sender"] = _address(*written_by)
    message["To"] = [_address(name, address) for name, address in to]
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=hostname)
    return message


def _body(message: EmailMessage, text: str) -> None:
    message.set_content(text + "\n", charset="utf-8", cte="quoted-printable")


def _attach(message: EmailMessage, upload: Upload) -> None:
    maintype, _, subtype = upload.content_type.partition("/")
    message.add_attachment(upload.data, maintype=maintype, subtype=subtype, filename=upload.filename)


def reply_subject(subject: str) -> str:
    subject = subject.strip() or "(sans objet)"
    return subject if subject.lower().startswith(("re:", "re :")) else f"Re: {subject}"


def reply(
    *,
    sender_name: str,
    sender: str,
    to: list[tuple[str, str]],
    subject: str,
    in_reply_to: str,
    references: list[str],
    text: str,
    upload: Upload | None,
    hostname: str,
    written_by: tuple[str, str] | None = None,
) -> bytes:
    message = _base(sender_name, sender, to, reply_subject(subject), hostname, written_by)
    message["In-Reply-To"] = in_reply_to
    message["References"] = " ".join([*references[-10:], in_reply_to])
    _body(message, clean_text(text))
    if upload is not None:
        _attach(message, upload)
    return message.as_bytes()


def prescription(
    *,
    sender_name: str,
    sender: str,
    pharmacy_name: str,
    pharmacy: str,
    note: str,
    upload: Upload,
    hostname: str,
    written_by: tuple[str, str] | None = None,
) -> bytes:
    message = _base(sender_name, sender, [(pharmacy_name, pharmacy)], f"Ordonnance de {sender_name}", hostname, written_by)
    text = "Bonjour,\n\nVeuillez trouver ci-joint mon ordonnance."
    note = clean_text(note)
    if note:
        text += f"\n\n{note}"
    signature = sender_name if written_by is None else f"{written_by[0]}, pour {sender_name}"
    _body(message, f"{text}\n\n{signature}")
    _attach(message, upload)
    return message.as_bytes()


def receipt(
    *, sender_name: str, sender: str, to: str, original_message_id: str, original_subject: str, read_at: datetime, hostname: str
) -> bytes:
    """An MDN (RFC 8098): "displayed", sent automatically when the patient opened the message."""
    report = MIMEMultipart("report", report_type="disposition-notification", policy=_POLICY)
    report["From"] = str(_address(sender_name, sender))
    report["To"] = to
    report["Subject"] = f"Accusé de lecture : {original_subject}"
    report["Date"] = formatdate(localtime=False)
    report["Message-ID"] = make_msgid(domain=hostname)
    report["In-Reply-To"] = original_message_id
    report["References"] = original_message_id
    report["Auto-Submitted"] = "auto-replied"
    when = format_datetime(read_at.astimezone(UTC))
    human = MIMEText(
        f"Votre message « {original_subject} » a été affiché par {sender_name} ({sender}) le {when}.\n"
        "Cet accusé ne dit pas que le message a été compris ou accepté.\n",
        "plain",
        "utf-8",
        policy=_POLICY,
    )
    report.attach(human)
    notification = MIMEBase("message", "disposition-notification", policy=_POLICY)
    notification.set_payload(
        f"Reporting-UA: {hostname}; Caducee webmail\r\n"
        f"Original-Recipient: rfc822;{sender}\r\n"
        f"Final-Recipient: rfc822;{sender}\r\n"
        f"Original-Message-ID: {original_message_id}\r\n"
        "Disposition: automatic-action/MDN-sent-automatically; displayed\r\n"
    )
    report.attach(notification)
    return report.as_bytes()
