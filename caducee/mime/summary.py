"""What every reader needs of a stored message without opening its body: the summary.

`summarize()` runs once, when a message is stored (from the tree the gateway already
parsed, when it has one). The summary is protocol-neutral: the envelope (date, subject,
addresses, threading ids) and the MIME structure as plain values, the decoded header text
SEARCH compares, the sent date. The webmail reads subjects, senders and attachments from
it; IMAP answers ENVELOPE, BODY and BODYSTRUCTURE from its renderings
(`caducee.mime.imapforms`), computed from the neutral values at the same time and kept
with them so that listing 10,000 messages renders nothing.

Values are `str`; bytes that are not UTF-8 are kept as surrogates (`surrogateescape`), so
a header goes back to IMAP byte for byte. Header values are as written (RFC 2047 words
not decoded); `subject`, `from_name` and friends decode them for people.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import cached_property
from typing import Any, NamedTuple

from caducee.mime import imapforms
from caducee.mime.addresses import Address, parse_addresses, searchable
from caducee.mime.headers import decoded_header, search_text
from caducee.mime.structure import HeaderBlock, Part, parse, transfer_encoding

SEARCHED_HEADERS = ("from", "to", "cc", "bcc", "subject")
_MAGIC = b"\xffS2\x00"  # a summary stored before the neutral form starts with a length (first byte 0)


AddressList = tuple[Address, ...] | None


class Envelope(NamedTuple):
    date: str | None
    subject: str | None
    from_: AddressList
    sender: AddressList
    reply_to: AddressList
    to: AddressList
    cc: AddressList
    bcc: AddressList
    in_reply_to: str | None
    message_id: str | None


class BodyPart(NamedTuple):
    """One MIME entity: type and subtype in upper case, parameters in order, sizes in bytes."""

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...]
    id: str | None
    description: str | None
    encoding: str
    size: int
    lines: int | None  # text parts and encapsulated messages
    md5: str | None
    disposition: tuple[str, tuple[tuple[str, str], ...]] | None
    language: str | None
    location: str | None
    children: tuple[BodyPart, ...] = ()
    message: tuple[Envelope, BodyPart, int] | None = None  # message/rfc822: its envelope, structure, lines

    @property
    def filename(self) -> str | None:
        """The file name the sender gave (disposition's filename, else the type's name), decoded."""
        for key, value in (self.disposition[1] if self.disposition else ()) + self.params:
            if key.lower() in ("filename", "name") and value:
                return decoded_header(value)
        return None

    @property
    def is_attachment(self) -> bool:
        if self.children or (self.type, self.subtype) in _SIGNATURES:
            return False
        if self.disposition is not None and self.disposition[0].lower() == "attachment":
            return True
        return self.filename is not None or self.type not in ("TEXT", "MULTIPART", "MESSAGE")


_SIGNATURES = {("APPLICATION", "PKCS7-SIGNATURE"), ("APPLICATION", "X-PKCS7-SIGNATURE")}


@dataclass(frozen=True)
class AttachmentInfo:
    filename: str | None
    content_type: str  # lower case, as declared
    size: int  # encoded size in the message


class Summary(NamedTuple):
    """The stored summary: IMAP's renderings first (read on every listing, so a tuple of
    bytes sliced out of one buffer), the neutral values as JSON decoded on demand."""

    imap_envelope: bytes
    imap_body: bytes
    imap_bodystructure: bytes
    packed_headers: bytes  # from/to/cc/bcc/subject decoded and case folded, parsed only when searched
    sent_date: str  # ISO date of the Date header, "" if none or unreadable
    neutral: bytes = b""  # JSON [envelope, structure]; b"" in summaries stored before it existed

    def header_text(self, name: str) -> bytes:
        """One searched header's decoded, case-folded text (UTF-8), without unpacking the others."""
        return header_text(self.packed_headers, name)

    @property
    def search_headers(self) -> dict[str, str]:
        headers = {}
        for item in self.packed_headers.decode("utf-8", "replace").split("\x1e"):
            name, _, value = item.partition("\x1f")
            if name:
                headers[name] = value
        return headers

    def pack(self) -> bytes:
        fields = [self.imap_envelope, self.imap_body, self.imap_bodystructure, self.packed_headers, self.sent_date.encode(), self.neutral]
        return _MAGIC + struct.pack("!6I", *map(len, fields)) + b"".join(fields)

    @classmethod
    def unpack(cls, data: bytes) -> Summary:
        if not data.startswith(_MAGIC):  # stored before the neutral form: five fields
            a, b, c, d, e = struct.unpack_from("!5I", data)
            b += a + 20
            c += b
            d += c
            return cls(data[20 : a + 20], data[a + 20 : b], data[b:c], data[c:d], data[d : d + e].decode())
        lengths = struct.unpack_from("!6I", data, len(_MAGIC))
        position = len(_MAGIC) + 24
        fields = []
        for length in lengths:
            fields.append(data[position : position + length])
            position += length
        return cls(fields[0], fields[1], fields[2], fields[3], fields[4].decode(), fields[5])

    # ---- the neutral view -------------------------------------------------------------------

    def view(self) -> SummaryView:
        return SummaryView(self)


class SummaryView:
    """The neutral values of a summary, decoded once (the webmail, the dossier)."""

    def __init__(self, summary: Summary) -> None:
        self._summary = summary

    @cached_property
    def _values(self) -> tuple[Envelope, BodyPart]:
        if self._summary.neutral:
            envelope, structure = json.loads(self._summary.neutral)
            return _envelope_from_json(envelope), _part_from_json(structure)
        return _from_imap(self._summary)

    @property
    def envelope(self) -> Envelope:
        return self._values[0]

    @property
    def structure(self) -> BodyPart:
        return self._values[1]

    @property
    def subject(self) -> str:
        return decoded_header(self.envelope.subject)

    @property
    def from_name(self) -> str:
        first = next((a for a in self.envelope.from_ or () if not a.is_group_marker), None)
        return decoded_header(first.name) if first is not None else ""

    @property
    def from_address(self) -> str:
        first = next((a for a in self.envelope.from_ or () if not a.is_group_marker), None)
        return first.address if first is not None else ""

    @property
    def attachments(self) -> list[AttachmentInfo]:
        found: list[AttachmentInfo] = []

        def walk(part: BodyPart) -> None:
            for child in part.children:
                walk(child)
            if part.is_attachment:
                found.append(AttachmentInfo(part.filename, f"{part.type}/{part.subtype}".lower(), part.size))

        walk(self.structure)
        return found


# ---- building a summary -------------------------------------------------------------------------


def _raw(headers: HeaderBlock, name: str) -> str | None:
    return headers.get(name)


def _address_list(headers: HeaderBlock, name: str) -> AddressList:
    """Every address of the header's fields, groups and routes kept (`caducee.mime.addresses`)."""
    return parse_addresses(headers.get_all(name))


def envelope_of(part: Part) -> Envelope:
    headers = part.headers
    return Envelope(
        _raw(headers, "date"),
        _raw(headers, "subject"),
        _address_list(headers, "from"),
        _address_list(headers, "sender"),
        _address_list(headers, "reply-to"),
        _address_list(headers, "to"),
        _address_list(headers, "cc"),
        _address_list(headers, "bcc"),
        _raw(headers, "in-reply-to"),
        _raw(headers, "message-id"),
    )


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def _param_pairs(headers: HeaderBlock, name: str) -> tuple[tuple[str, str], ...]:
    return tuple((key.upper(), value) for key, value in headers.params(name)[1])


def structure_of(part: Part) -> BodyPart:
    maintype, subtype = part.content_type
    headers = part.headers
    disposition = None
    if "content-disposition" in headers:
        disposition = (headers.params("content-disposition")[0].upper(), _param_pairs(headers, "content-disposition"))
    common = dict(
        md5=_raw(headers, "content-md5"),
        disposition=disposition,
        language=_raw(headers, "content-language"),
        location=_raw(headers, "content-location"),
    )
    if part.children:
        return BodyPart(
            maintype,
            subtype,
            _param_pairs(headers, "content-type"),
            None,
            None,
            "7BIT",
            0,
            None,
            children=tuple(structure_of(child) for child in part.children),
            **common,  # type: ignore[arg-type]
        )
    if maintype == "MULTIPART":  # no usable boundary: an empty text part stands in
        maintype, subtype = "TEXT", "PLAIN"
    params = _param_pairs(headers, "content-type")
    if maintype == "TEXT" and not params:
        params = (("CHARSET", "US-ASCII"),)  # RFC 2045's default
    body = part.body_bytes
    message = None
    lines = None
    if part.message is not None:
        message = (envelope_of(part.message), structure_of(part.message), _lines(body))
    elif maintype == "TEXT":
        lines = _lines(body)
    return BodyPart(
        maintype,
        subtype,
        params,
        _raw(headers, "content-id"),
        _raw(headers, "content-description"),
        transfer_encoding(headers),
        len(body),
        lines,
        message=message,
        **common,  # type: ignore[arg-type]
    )


def summarize(raw: bytes, root: Part | None = None) -> Summary:
    """The summary of `raw` (from its already parsed tree when the caller has one)."""
    root = root if root is not None else parse(raw)
    sent = ""
    date = root.headers.get("date")
    if date is not None:
        try:
            sent = parsedate_to_datetime(date).date().isoformat()
        except (TypeError, ValueError, IndexError, OverflowError):
            sent = ""
    envelope = envelope_of(root)
    structure = structure_of(root)
    # Address headers are searched as their parsed addresses ("name <mailbox@host>", group
    # names), so comments and folding do not hide a match; the subject as decoded text.
    lists = {"from": envelope.from_, "to": envelope.to, "cc": envelope.cc, "bcc": envelope.bcc}
    searched = {
        name: search_text(searchable(lists[name]) if name in lists else " ".join(root.headers.get_all(name))) for name in SEARCHED_HEADERS
    }
    packed = "\x1e".join(f"{name}\x1f{value}" for name, value in searched.items()).encode("utf-8", "replace")
    neutral = json.dumps([envelope, _part_to_json(structure)], separators=(",", ":")).encode("ascii")
    return Summary(
        imapforms.envelope_form(envelope),
        imapforms.body_form(structure, extensions=False),
        imapforms.body_form(structure, extensions=True),
        packed,
        sent,
        neutral,
    )


def header_text(packed: bytes, name: str) -> bytes:
    """A field of `Summary.packed_headers` ("name\\x1fvalue" items separated by "\\x1e")."""
    key = name.encode() + b"\x1f"
    start = packed.find(key)
    while start > 0 and packed[start - 1 : start] != b"\x1e":
        start = packed.find(key, start + 1)
    if start < 0:
        return b""
    start += len(key)
    end = packed.find(b"\x1e", start)
    return packed[start : end if end >= 0 else len(packed)]


# ---- JSON forms ----------------------------------------------------------------------------------


def _part_to_json(part: BodyPart) -> list[object]:
    message = None
    if part.message is not None:
        envelope, inner, lines = part.message
        message = [envelope, _part_to_json(inner), lines]
    return [*part[:12], [_part_to_json(child) for child in part.children], message]


def _addresses_from_json(value: list[list[str | None]] | None) -> AddressList:
    return tuple(Address(*item) for item in value) if value else None


def _envelope_from_json(value: list[Any]) -> Envelope:
    """The stored JSON is our own (written by `_part_to_json`): its items are trusted in shape."""
    date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = value
    lists = _addresses_from_json
    return Envelope(date, subject, lists(from_), lists(sender), lists(reply_to), lists(to), lists(cc), lists(bcc), in_reply_to, message_id)


def _pairs(value: list[list[str]] | None) -> tuple[tuple[str, str], ...]:
    return tuple((key, item) for key, item in value or ())


def _part_from_json(value: list[Any]) -> BodyPart:
    (kind, subtype, params, part_id, description, encoding, size, lines, md5, disposition, language, location, children, message) = value
    inner = None
    if message is not None:
        envelope, structure, message_lines = message
        inner = (_envelope_from_json(envelope), _part_from_json(structure), message_lines)
    return BodyPart(
        kind,
        subtype,
        _pairs(params),
        part_id,
        description,
        encoding,
        size,
        lines,
        md5,
        (disposition[0], _pairs(disposition[1])) if disposition else None,
        language,
        location,
        tuple(_part_from_json(child) for child in children),
        inner,
    )


# ---- summaries stored before the neutral form ---------------------------------------------------


def _text(value: object) -> str | None:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else None


def _addresses_from_imap(value: object) -> AddressList:
    if not isinstance(value, list):
        return None
    return tuple(Address(*(_text(item) for item in entry[:4])) for entry in value if isinstance(entry, list) and len(entry) >= 4) or None


def _envelope_from_imap(value: object) -> Envelope:
    items = value if isinstance(value, list) and len(value) == 10 else [None] * 10
    from_, sender, reply_to, to, cc, bcc = (_addresses_from_imap(item) for item in items[2:8])
    return Envelope(_text(items[0]), _text(items[1]), from_, sender, reply_to, to, cc, bcc, _text(items[8]), _text(items[9]))


def _from_imap(summary: Summary) -> tuple[Envelope, BodyPart]:
    """Neutral values read back from the IMAP renderings of an old summary (subject, sender,
    and the part tree as far as the webmail needs it: types, parameters, dispositions)."""
    try:
        envelope = _envelope_from_imap(imapforms.parse_value(summary.imap_envelope)[0])
    except (ValueError, IndexError):
        envelope = Envelope(*([None] * 10))
    try:
        structure = _part_from_imap(imapforms.parse_value(summary.imap_bodystructure)[0])
    except (ValueError, IndexError, TypeError):
        structure = BodyPart("TEXT", "PLAIN", (), None, None, "7BIT", 0, 0, None, None, None, None)
    return envelope, structure


def _imap_pairs(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        return ()
    items = [_text(item) or "" for item in value]
    return tuple(zip(items[::2], items[1::2], strict=False))


def _part_from_imap(value: object) -> BodyPart:
    assert isinstance(value, list)
    if value and isinstance(value[0], list):  # multipart: its parts, then the subtype, then extensions
        count = next((index for index, item in enumerate(value) if not isinstance(item, list)), len(value))
        subtype = (_text(value[count]) if count < len(value) else None) or "MIXED"
        children = tuple(_part_from_imap(child) for child in value[:count])
        return BodyPart("MULTIPART", subtype.upper(), (), None, None, "7BIT", 0, None, None, None, None, None, children)
    kind, subtype, params, part_id, description, encoding, size = value[:7]
    disposition = None
    extension = value[8:] if (_text(kind) or "").upper() == "TEXT" else value[7:]
    if len(extension) >= 2 and isinstance(extension[1], list) and extension[1]:
        disposition = ((_text(extension[1][0]) or "").upper(), _imap_pairs(extension[1][1] if len(extension[1]) > 1 else None))
    return BodyPart(
        (_text(kind) or "TEXT").upper(),
        (_text(subtype) or "PLAIN").upper(),
        _imap_pairs(params),
        _text(part_id),
        _text(description),
        (_text(encoding) or "7BIT").upper(),
        size if isinstance(size, int) else 0,
        None,
        None,
        disposition,
        None,
        None,
    )
