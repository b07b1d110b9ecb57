"""Turning a stored message into what a patient reads: text (or safe HTML) and documents.

An HTML-only message is shown through a sanitiser (nh3, the Rust `ammonia` library): a
short list of tags that carry structure (paragraphs, line breaks, lists, tables, emphasis,
links), no attribute but a link's address (http, https, mailto; opened with
`rel="noopener noreferrer nofollow"`) and a table cell's span, no image, style, script or
form. It is shown inside the page's strict CSP, which would block anything that slipped
through anyway. Its text form (the JSON API, search) keeps line breaks, separates table
cells and writes each link's address after its words. Signed messages are opened
(the protected inner message is what we show); an encrypted message we hold no key for is
said to be unreadable here rather than shown as gibberish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr, parsedate_to_datetime
from html.parser import HTMLParser

import nh3

from caducee.mime.headers import decoded_header, one_line
from caducee.mime.structure import Part, decoded, parse, walk_parts
from caducee.mime.summary import Summary
from caducee.webmail.uploads import safe_filename, sniff

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
    html: str | None = None  # the sanitised HTML of an HTML-only message
    sender_name: str = ""  # the Sender: of a message written on someone's behalf (a guardian)


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


SAFE_TAGS = {
    "p", "br", "div", "span", "b", "strong", "i", "em", "u", "s", "small", "sub", "sup", "ul", "ol", "li", "dl", "dt", "dd",
    "table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption", "blockquote", "pre", "code", "hr", "a", "h1", "h2", "h3",
    "h4", "h5", "h6",
}  # fmt: skip
SAFE_ATTRIBUTES = {"a": {"href", "title"}, "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan", "scope"}}


def safe_html(html: str) -> str:
    """The sender's HTML reduced to structure and links (see the module's docstring)."""
    return nh3.clean(
        html,
        tags=SAFE_TAGS,
        clean_content_tags={"script", "style", "head", "title", "noscript", "template", "iframe", "object", "svg", "math"},
        attributes=SAFE_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    ).strip()


class _TextOfHtml(HTMLParser):
    BLOCKS = {"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "pre", "dt", "dd", "hr"}
    CELLS = {"td", "th"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style", "head", "title"}:
            self.skip += 1
        elif tag == "br" or tag in self.BLOCKS:
            self.out.append("\n")
        elif tag in self.CELLS:
            self.out.append(" ")
        elif tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style", "head", "title"}:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n")
        elif tag in self.CELLS:
            self.out.append(" ")
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href and href.startswith(("http://", "https://", "mailto:")) and not self.skip:
                shown = href.removeprefix("mailto:")
                if shown not in "".join(self.out[-3:]):
                    self.out.append(f" ({shown})")

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


def _content_type(part: Part) -> str:
    maintype, subtype = part.content_type
    return f"{maintype}/{subtype}".lower()


def open_signed(part: Part) -> tuple[Part, bool]:
    """The protected message inside S/MIME signatures (and message/rfc822 wrappers)."""
    signed = False
    for _ in range(4):
        kind = _content_type(part)
        if kind == "multipart/signed" and part.children:
            part, signed = part.children[0], True
            continue
        if kind == "message/rfc822" and signed and part.message is not None:
            part = part.message
            continue
        break
    return part, signed


def _filename(part: Part) -> str | None:
    for name in ("content-disposition", "content-type"):
        params = dict(part.headers.params(name)[1])
        value = params.get("filename") or params.get("name")
        if value:
            return value
    return None


def _is_attachment(part: Part) -> bool:
    kind = _content_type(part)
    if kind in SIGNATURE_TYPES:
        return False
    disposition = part.headers.params("content-disposition")[0]
    return disposition == "attachment" or bool(_filename(part)) or part.content_type[0] not in {"TEXT", "MULTIPART", "MESSAGE"}


def _leaves(root: Part) -> list[Part]:
    """The entities with content, in order: containers and signatures left out."""
    return [
        part
        for part in walk_parts(root)
        if not part.children and part.message is None and part.content_type[0] != "MULTIPART" and _content_type(part) not in SIGNATURE_TYPES
    ]


def _payload(part: Part) -> bytes:
    data = decoded(part, part.body_bytes)
    return data if data is not None else part.body_bytes


def _text_of(part: Part) -> str:
    data = _payload(part)
    charset = dict(part.headers.params("content-type")[1]).get("charset") or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def attachments_of(root: Part) -> list[tuple[Attachment, Part]]:
    found: list[tuple[Attachment, Part]] = []
    for part in _leaves(root):
        if not _is_attachment(part):
            continue
        data = _payload(part)
        sniffed = sniff(data)
        declared = _content_type(part)
        served = (
            declared
            if sniffed is not None and sniffed[0] == declared and declared in SERVED_AS_IS
            else (sniffed[0] if sniffed is not None else "application/octet-stream")
        )
        name = decode_words(_filename(part)) or None
        declared_extension = (
            "".join(ch for ch in (name or "").rpartition(".")[2] if ch.isascii() and ch.isalnum())[:8] if name and "." in name else ""
        )
        extension = sniffed[1] if sniffed else (declared_extension or "bin")
        attachment = Attachment(len(found), safe_filename(name, extension), served, len(data))
        found.append((attachment, part))
    return found


def read(raw: bytes) -> Readable:
    """What a patient reads of a stored message (parsed with the one MIME parser, which gives
    every message the gateway accepted a structure within its limits)."""
    outer = parse(raw)
    message, signed = open_signed(outer)
    headers = message.headers if "from" in message.headers else outer.headers
    name, address = parseaddr(headers.get("from") or "")
    try:
        date = parsedate_to_datetime(headers.get("date") or "") if headers.get("date") else None
    except (TypeError, ValueError, IndexError, OverflowError):
        date = None
    mdn = outer.headers.get("disposition-notification-to") or headers.get("disposition-notification-to") or ""
    readable = Readable(
        subject=decode_words(headers.get("subject")),
        from_name=decode_words(name),
        from_address=address.lower(),
        date=date,
        text="",
        message_id=one_line(headers.get("message-id") or ""),
        references=one_line(headers.get("references") or "").split(),
        mdn_to=one_line(mdn) or None,
        signed=signed,
        sender_name=decode_words(parseaddr(headers.get("sender") or "")[0]) if headers.get("sender") else "",
    )
    if _content_type(message) in ENCRYPTED_TYPES:
        readable.encrypted = True
        return readable
    plain = html = None
    for part in _leaves(message):
        if _is_attachment(part):
            continue
        kind = _content_type(part)
        if kind == "text/plain" and plain is None:
            plain = _text_of(part)
        elif kind == "text/html" and html is None:
            html = _text_of(part)
    text = plain if plain is not None else html_to_text(html) if html is not None else ""
    if plain is None and html is not None:
        readable.html = safe_html(html) or None
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
