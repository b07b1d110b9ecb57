"""The MIME structure of a stored message, with byte offsets: what FETCH answers from.

IMAP names parts by number (`BODY[2.1.HEADER]`) and answers with the exact bytes of the
stored message, so the parser here keeps offsets into the raw message rather than
rebuilding it as the `email` package does. The `email` package still parses each header
block (content type, parameters, addresses).

`summarize()` runs once when a message is stored; its result (ENVELOPE, BODY and
BODYSTRUCTURE already in IMAP form, plus the header text SEARCH looks at) is kept beside
the body, so listing a folder never opens a body.

Hostile input is bounded: nesting depth and number of parts. A message that is not valid
MIME still gets a structure (a single text/plain part, as the RFC asks of servers).
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
import struct
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import collapse_rfc2231_value, decode_params, getaddresses, parsedate_to_datetime, unquote
from typing import NamedTuple

from caducee.mailbox.imap.grammar import serialize

MAX_DEPTH = 20
MAX_PARTS = 2_000
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class HeaderBlock:
    """The fields of one header block, unfolded, by lower-case name.

    The `email` package's parser costs about 60 us per block; this does what FETCH needs
    (values, content type and parameters) in a few, on the gateway's path to every message.
    Values are str with undecodable bytes kept as surrogates, so they round-trip to bytes.
    """

    def __init__(self, block: bytes, default_type: str = "text/plain") -> None:
        self._fields: dict[str, list[str]] = {}
        self.default_type = default_type
        name = None
        for line in block.decode("utf-8", "surrogateescape").split("\r\n"):
            if not line:
                continue
            if line[0] in " \t":
                if name is not None:
                    values = self._fields[name]
                    values[-1] += line
                continue
            field_name, colon, value = line.partition(":")
            if not colon:
                name = None
                continue
            name = field_name.strip().lower()
            self._fields.setdefault(name, []).append(value.strip())

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._fields.get(name)
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return self._fields.get(name, [])

    def params(self, name: str) -> tuple[str, list[tuple[str, str]]]:
        """The value before the first ';' (lower case) and the parameters, RFC 2231 decoded."""
        value = self.get(name) or ""
        head, _, rest = value.partition(";")
        pairs = [(key.lower(), raw.strip()) for key, raw in _PARAM.findall(";" + rest)] if rest else []
        try:
            decoded = decode_params([(head, ""), *pairs])[1:]
        except (ValueError, LookupError):
            decoded = pairs
        out = []
        for key, raw in decoded:
            text = collapse_rfc2231_value(raw) if isinstance(raw, tuple) else raw
            out.append((key, unquote(text)))
        return head.strip().lower(), out

    def get_content_type(self) -> str:
        kind = self.params("content-type")[0]
        return kind if kind.count("/") == 1 and all(kind.split("/")) else self.default_type

    def get_boundary(self) -> str | None:
        return dict(self.params("content-type")[1]).get("boundary")


@dataclass
class Part:
    """One entity: [start, body_start) is its header, [body_start, end) its body."""

    raw: bytes
    start: int
    body_start: int
    end: int
    headers: HeaderBlock
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # the encapsulated message of a message/rfc822 part

    @property
    def header_bytes(self) -> bytes:
        return self.raw[self.start : self.body_start]

    @property
    def body_bytes(self) -> bytes:
        return self.raw[self.body_start : self.end]

    @property
    def content_type(self) -> tuple[str, str]:
        maintype, _, subtype = self.headers.get_content_type().partition("/")
        return maintype.upper(), subtype.upper()


def parse(raw: bytes) -> Part:
    """The whole message as a tree of parts."""
    budget = [MAX_PARTS]
    return _parse(raw, 0, len(raw), 0, budget, default_type="text/plain")


def _parse(raw: bytes, start: int, end: int, depth: int, budget: list[int], *, default_type: str) -> Part:
    budget[0] -= 1
    if raw.startswith(b"\r\n", start) or start >= end:
        body_start = min(start + 2, end)
    else:
        blank = raw.find(b"\r\n\r\n", start, end)
        body_start = end if blank < 0 else blank + 4
    headers = HeaderBlock(raw[start:body_start], default_type)
    part = Part(raw, start, body_start, end, headers)
    if depth >= MAX_DEPTH or budget[0] <= 0:
        return part
    maintype, subtype = part.content_type
    if maintype == "MULTIPART":
        boundary = headers.get_boundary()
        if boundary:
            child_default = "message/rfc822" if subtype == "DIGEST" else "text/plain"
            for child_start, child_end in _split(raw, body_start, end, boundary.encode("utf-8", "surrogateescape")):
                if budget[0] <= 0:
                    break
                part.children.append(_parse(raw, child_start, child_end, depth + 1, budget, default_type=child_default))
    elif (maintype, subtype) == ("MESSAGE", "RFC822") and _encoding(headers) in ("7BIT", "8BIT", "BINARY"):
        part.message = _parse(raw, body_start, end, depth + 1, budget, default_type="text/plain")
    return part


def _split(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of each body part between delimiter lines; the CRLF before a delimiter is the delimiter's."""
    delimiter = b"--" + boundary
    spans = []
    position = _delimiter(raw, delimiter, start, end, start)
    while position >= 0 and len(spans) < MAX_PARTS:
        after = position + len(delimiter)
        if raw.startswith(b"--", after):  # the close delimiter
            break
        line_end = raw.find(b"\r\n", after, end)
        if line_end < 0:
            break
        part_start = line_end + 2
        following = _delimiter(raw, delimiter, part_start, end, start)
        if following < 0:  # no close delimiter: the part runs to the end
            spans.append((part_start, end))
            break
        spans.append((part_start, max(part_start, following - 2)))
        position = following
    return spans


def _delimiter(raw: bytes, delimiter: bytes, position: int, end: int, body_start: int) -> int:
    while True:
        found = raw.find(delimiter, position, end)
        if found < 0:
            return -1
        if found == body_start or raw[found - 2 : found] == b"\r\n":
            return found
        position = found + 1


def _encoding(headers: HeaderBlock) -> str:
    return (headers.get("content-transfer-encoding") or "7bit").strip().upper() or "7BIT"


def _value(headers: HeaderBlock, name: str) -> bytes | None:
    """A header's raw value, unfolded, as bytes (8-bit bytes kept as they came)."""
    value = headers.get(name)
    return None if value is None else value.encode("utf-8", "surrogateescape")


def _text(value: bytes | None) -> str:
    """A header value decoded for searching: encoded-words decoded, case folded."""
    if not value:
        return ""
    text = value.decode("utf-8", "replace")
    try:
        text = str(make_header(decode_header(text)))
    except (ValueError, LookupError, binascii.Error):
        pass
    return text.casefold()


# ---- ENVELOPE, BODY, BODYSTRUCTURE ---------------------------------------------------------


def _addresses(headers: HeaderBlock, name: str) -> list[list[bytes | None]] | None:
    values = headers.get_all(name)
    if not values:
        return None
    out = []
    for display, address in getaddresses(values):
        if not display and not address:
            continue
        mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
        encode = lambda text: text.encode("utf-8", "surrogateescape") if text else None  # noqa: E731
        out.append([encode(display), None, encode(mailbox), encode(host) if host else None])
    return out or None


def envelope(part: Part) -> list[object]:
    headers = part.headers
    sender_from = _addresses(headers, "from")
    return [
        _value(headers, "date"),
        _value(headers, "subject"),
        sender_from,
        _addresses(headers, "sender") or sender_from,
        _addresses(headers, "reply-to") or sender_from,
        _addresses(headers, "to"),
        _addresses(headers, "cc"),
        _addresses(headers, "bcc"),
        _value(headers, "in-reply-to"),
        _value(headers, "message-id"),
    ]


def _params(headers: HeaderBlock, name: str) -> list[bytes] | None:
    out: list[bytes] = []
    for key, value in headers.params(name)[1]:
        out += [key.upper().encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")]
    return out or None


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def _disposition(headers: HeaderBlock) -> list[object] | None:
    if "content-disposition" not in headers:
        return None
    kind = headers.params("content-disposition")[0]
    return [kind.upper().encode("utf-8", "surrogateescape"), _params(headers, "content-disposition")]


def body_structure(part: Part, *, extensions: bool) -> list[object]:
    """The BODYSTRUCTURE (extensions) or BODY (no extensions) of a part, as nested lists."""
    maintype, subtype = part.content_type
    headers = part.headers
    if part.children:
        out: list[object] = [body_structure(child, extensions=extensions) for child in part.children]
        out.append(subtype.encode())
        if extensions:
            out += [
                _params(headers, "content-type"),
                _disposition(headers),
                _value(headers, "content-language"),
                _value(headers, "content-location"),
            ]
        return out
    if maintype == "MULTIPART":  # no usable boundary: an empty text part stands in
        maintype, subtype = "TEXT", "PLAIN"
    params = _params(headers, "content-type")
    if maintype == "TEXT" and not params:
        params = [b"CHARSET", b"US-ASCII"]
    body = part.body_bytes
    out = [
        maintype.encode(),
        subtype.encode(),
        params,
        _value(headers, "content-id"),
        _value(headers, "content-description"),
        _encoding(headers).encode(),
        len(body),
    ]
    if part.message is not None:
        out += [envelope(part.message), body_structure(part.message, extensions=extensions), _lines(body)]
    elif maintype == "TEXT":
        out.append(_lines(body))
    if extensions:
        out += [
            _value(headers, "content-md5"),
            _disposition(headers),
            _value(headers, "content-language"),
            _value(headers, "content-location"),
        ]
    return out


# ---- the stored summary --------------------------------------------------------------------


class Summary(NamedTuple):
    """What listing and searching a folder need of a message, kept beside its body (a tuple: built 10,000 times per listing)."""

    envelope: bytes
    body: bytes
    bodystructure: bytes
    packed_headers: bytes  # from/to/cc/bcc/subject decoded and case folded, parsed only when searched
    sent_date: str  # ISO date of the Date header, "" if none or unreadable

    @classmethod
    def build(cls, envelope: bytes, body: bytes, bodystructure: bytes, headers: dict[str, str], sent_date: str) -> Summary:
        packed = "\x1e".join(f"{name}\x1f{value}" for name, value in headers.items()).encode("utf-8", "replace")
        return cls(envelope, body, bodystructure, packed, sent_date)

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
        fields = [self.envelope, self.body, self.bodystructure, self.packed_headers, self.sent_date.encode()]
        return struct.pack("!5I", *map(len, fields)) + b"".join(fields)

    @classmethod
    def unpack(cls, data: bytes) -> Summary:
        a, b, c, d, e = struct.unpack_from("!5I", data)
        b += a + 20
        c += b
        d += c
        return cls(data[20 : a + 20], data[a + 20 : b], data[b:c], data[c:d], data[d : d + e].decode())


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


SEARCHED_HEADERS = ("from", "to", "cc", "bcc", "subject")


def summarize(raw: bytes) -> Summary:
    root = parse(raw)
    sent = ""
    date = root.headers.get("date")
    if date is not None:
        try:
            sent = parsedate_to_datetime(date).date().isoformat()
        except (TypeError, ValueError, IndexError):
            sent = ""
    search_headers = {name: _text(" ".join(root.headers.get_all(name)).encode("utf-8", "surrogateescape")) for name in SEARCHED_HEADERS}
    return Summary.build(
        serialize(envelope(root)),
        serialize(body_structure(root, extensions=False)),
        serialize(body_structure(root, extensions=True)),
        search_headers,
        sent,
    )


# ---- sections --------------------------------------------------------------------------------


def find_part(root: Part, path: tuple[int, ...]) -> Part | None:
    """The part a section path names (RFC 3501 6.4.5), or None."""
    node = root
    for index, number in enumerate(path):
        if node.children:
            if number > len(node.children):
                return None
            node = node.children[number - 1]
        elif number != 1:
            return None
        if index < len(path) - 1:
            if node.message is not None:
                node = node.message
            elif not node.children:
                return None
    return node


def header_fields(header: bytes, names: tuple[str, ...], *, exclude: bool) -> bytes:
    """The header lines (with their continuations) whose field name is (not) among `names`."""
    wanted = {name.upper() for name in names}
    out, keep = [], False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").upper()
        keep = (name in wanted) != exclude
        if keep:
            out.append(line)
    return b"".join(line + b"\r\n" for line in out) + b"\r\n"


def section(root: Part, path: tuple[int, ...], kind: str, fields: tuple[str, ...]) -> bytes | None:
    """The bytes of BODY[<path>.<kind>], None when the part does not exist."""
    node = find_part(root, path) if path else root
    if node is None:
        return None
    if kind == "MIME":
        return node.header_bytes
    if kind in ("HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        message = node if not path else node.message
        if message is None:
            return b""
        if kind == "TEXT":
            return message.body_bytes
        if kind == "HEADER":
            return message.header_bytes
        return header_fields(message.header_bytes, fields, exclude=kind.endswith(".NOT"))
    if not path:
        return root.raw[root.start : root.end]
    return node.body_bytes


def decoded(part: Part, data: bytes) -> bytes | None:
    """BINARY[]: a part's content with its transfer encoding undone; None if it cannot be."""
    encoding = _encoding(part.headers)
    try:
        if encoding == "BASE64":
            return base64.b64decode(data, validate=False)
        if encoding == "QUOTED-PRINTABLE":
            return quopri.decodestring(data)
    except (binascii.Error, ValueError):
        return None
    return data if encoding in ("7BIT", "8BIT", "BINARY") else None
