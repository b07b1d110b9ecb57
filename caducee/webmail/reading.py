"""Turning a stored message into what a patient reads: plain text and a list of documents.

The sender's HTML is never rendered: a health message must not run anyone's scripts, load
trackers or hide text, so HTML-only mail is shown as its text. Signed messages are opened
(the protected inner message is what we show); an encrypted message we hold no key for is
said to be unreadable here rather than shown as gibberish.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parseaddr, parsedate_to_datetime
from html.parser import HTMLParser

from caducee.mime.headers import decoded_header
from caducee.mime.summary import Summary
from caducee.webmail.uploads import safe_filename, sniff

_PARSER = BytesParser(policy=email.policy.default)
SIGNATURE_TYPES = {"application/pkcs7-signature", "application/x-pkcs7-signature"}
ENCRYPTED_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
SERVED_AS_IS = {"application/pdf", "image/png", "image/jpeg"}  # checked by content before being served with their type


@dataclass(frozen=True)
class Attachment:
    index: int
    filename: str  # safe for a download and for display
    content_type: str  # the type it is served with
    size: int


@dataclass
class Readable:
    subject: str
    from_name: str
    from_address: str
    date: datetime | None
    text: str
    attachments: list[Attachment] = field(default_factory=list)
    message_id: str = ""
    references: list[str] = field(default_factory=list)
    mdn_to: str | None = None
    encrypted: bool = False  # end-to-end encrypted to keys we do not hold
    signed: bool = False


def decode_words(value: str | bytes | None) -> str:
    """A header value for display: RFC 2047 words decoded, no control character."""
    return decoded_header(value)


@dataclass(frozen=True)
class Heading:
    """What a list shows of a message, from its stored summary (no body opened)."""

    subject: str
    from_name: str
    from_address: str


def heading(packed_summary: bytes) -> Heading:
    view = Summary.unpack(packed_summary).view()
    return Heading(view.subject, view.from_name, view.from_address)


class _TextOfHtml(HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style", "head", "title"}:
            self.skip += 1
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style", "head", "title"}:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_to_text(html: str) -> str:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.out).splitlines()]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def parse(raw: bytes) -> EmailMessage:
    return _PARSER.parsebytes(raw)  # type: ignore[return-value]


def open_signed(message: Message) -> tuple[Message, bool]:
    """The protected message inside S/MIME signatures (and message/rfc822 wrappers)."""
    signed = False
    for _ in range(4):
        if message.get_content_type() == "multipart/signed":
            parts = message.get_payload()
            if not isinstance(parts, list) or not parts:
                break
            message, signed = parts[0], True
            continue
        if message.get_content_type() == "message/rfc822" and signed:
            inner = message.get_payload()
            if isinstance(inner, list) and inner:
                message = inner[0]
                continue
        break
    return message, signed


def _is_attachment(part: Message) -> bool:
    if part.get_content_type() in SIGNATURE_TYPES:
        return False
    disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    return disposition == "attachment" or bool(part.get_filename()) or part.get_content_maintype() not in {"text", "multipart", "message"}


def _leaves(message: Message) -> list[Message]:
    out = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_type() in SIGNATURE_TYPES:
            continue
        out.append(part)
    return out


def _payload(part: Message) -> bytes:
    try:
        return part.get_payload(decode=True) or b""
    except (ValueError, TypeError, AssertionError):
        return b""


def _text_of(part: Message) -> str:
    data = _payload(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def attachments_of(message: Message) -> list[tuple[Attachment, Message]]:
    found = []
    for part in _leaves(message):
        if not _is_attachment(part):
            continue
        data = _payload(part)
        sniffed = sniff(data)
        declared = part.get_content_type()
        served = (
            declared
            if sniffed is not None and sniffed[0] == declared and declared in SERVED_AS_IS
            else (sniffed[0] if sniffed is not None else "application/octet-stream")
        )
        name = decode_words(part.get_filename()) or None
        declared_extension = "".join(ch for ch in (name or "").rpartition(".")[2] if ch.isalnum())[:8] if name and "." in name else ""
        extension = sniffed[1] if sniffed else (declared_extension or "bin")
        attachment = Attachment(len(found), safe_filename(name, extension), served, len(data))
        found.append((attachment, part))
    return found


def read(raw: bytes) -> Readable:
    outer = parse(raw)
    message, signed = open_signed(outer)
    headers = message if message.get("From") else outer
    name, address = parseaddr(str(headers.get("From", "")))
    try:
        date = parsedate_to_datetime(str(headers.get("Date"))) if headers.get("Date") else None
    except (TypeError, ValueError):
        date = None
    references = str(headers.get("References", "")).split()
    readable = Readable(
        subject=decode_words(headers.get("Subject")),
        from_name=decode_words(name),
        from_address=address.lower(),
        date=date,
        text="",
        message_id=str(headers.get("Message-ID", "")).strip(),
        references=references,
        mdn_to=str(outer.get("Disposition-Notification-To") or headers.get("Disposition-Notification-To") or "").strip() or None,
        signed=signed,
    )
    if message.get_content_type() in ENCRYPTED_TYPES:
        readable.encrypted = True
        return readable
    plain = html = None
    for part in _leaves(message):
        if _is_attachment(part):
            continue
        if part.get_content_type() == "text/plain" and plain is None:
            plain = _text_of(part)
        elif part.get_content_type() == "text/html" and html is None:
            html = _text_of(part)
    text = plain if plain is not None else html_to_text(html) if html is not None else ""
    readable.text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    readable.attachments = [attachment for attachment, _ in attachments_of(message)]
    return readable


def attachment_data(raw: bytes, index: int) -> tuple[Attachment, bytes] | None:
    message, _ = open_signed(parse(raw))
    for attachment, part in attachments_of(message):
        if attachment.index == index:
            return attachment, _payload(part)
    return None


def parseaddr_lower(value: str) -> str:
    return parseaddr(value)[1].lower()
