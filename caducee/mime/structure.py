"""The MIME structure of a message as a tree of byte offsets: the one MIME parser.

Every reader works from this tree: the gateway's inspection, the stored summary
(`caducee.mime.summary`), IMAP's sections (`BODY[2.1.HEADER]` answers with the exact
stored bytes, so the tree keeps offsets into the raw message rather than rebuilding it as
the `email` package does), the webmail's reader and the dossier's intake. Header blocks
are read by `HeaderBlock` (values, content type and parameters, RFC 2231).

Hostile input is bounded: nesting depth, number of parts, header fields per block and
header block size. A message that is not valid MIME still gets a structure (a single
text/plain part, as the RFC asks of servers), and what was wrong is listed in the root's
`problems`: the gateway refuses such a message (5.6.0) before it is stored, so every
reader downstream only ever meets a tree within the limits; a message that reached the
store some other way (an IMAP APPEND) still gets a structure.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass, field
from email.utils import collapse_rfc2231_value, decode_params, unquote

MAX_DEPTH = 20  # entities inside one another (multipart in multipart, message/rfc822)
MAX_PARTS = 2_000  # entities in one message
MAX_HEADER_FIELDS = 500  # fields in one header block (long Received chains are ~50)
MAX_HEADER_BYTES = 256 * 1024  # one header block
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
        self.count = 0  # fields in the block
        self.malformed = False  # a line that is neither a field nor a continuation
        # Unfolded in C first (RFC 5322 2.2.3: a CRLF before a blank is removed): a field's
        # continuation lines cost nothing in the loop below, however many there are
        # (appending each to the value built so far was quadratic: 17 s for 1.6 MB).
        text = block.decode("utf-8", "surrogateescape").replace("\r\n ", " ").replace("\r\n\t", "\t")
        for line in text.split("\r\n"):
            if not line or line[0] in " \t":  # a continuation with no field before it
                continue
            field_name, colon, value = line.partition(":")
            if not colon or not field_name.strip() or " " in field_name.strip():
                self.malformed = True
                continue
            self.count += 1
            self._fields.setdefault(field_name.strip().lower(), []).append(value.strip())

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
    problems: list[str] = field(default_factory=list)  # the root's: what was wrong with the whole message

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


class _Walk:
    """What one parse carries along: the part budget, what was wrong, a subtree to reuse."""

    def __init__(self, reuse: tuple[int, Part] | None) -> None:
        self.budget = MAX_PARTS
        self.problems: list[str] = []
        self.reuse = reuse

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)


def parse(raw: bytes, *, reuse: tuple[int, Part] | None = None) -> Part:
    """The whole message as a tree of parts; what was wrong with it in the root's `problems`.

    `reuse` = (offset, tree of raw[offset:offset + n]): an entity already parsed that `raw`
    carries verbatim at `offset` (a message we just signed wraps the message the gateway
    parsed): its tree is shifted into place instead of being parsed again.
    """
    walk = _Walk(reuse)
    root = _parse(raw, 0, len(raw), 0, walk, default_type="text/plain")
    root.problems = walk.problems
    return root


def _parse(raw: bytes, start: int, end: int, depth: int, walk: _Walk, *, default_type: str) -> Part:
    if walk.reuse is not None and walk.reuse[0] == start and walk.reuse[1].end - walk.reuse[1].start == end - start:
        return _shifted(walk.reuse[1], raw, start - walk.reuse[1].start)
    walk.budget -= 1
    if raw.startswith(b"\r\n", start) or start >= end:
        body_start = min(start + 2, end)
    else:
        blank = raw.find(b"\r\n\r\n", start, end)
        body_start = end if blank < 0 else blank + 4
    header_end = body_start
    if body_start - start > MAX_HEADER_BYTES:
        walk.problem(f"header block over {MAX_HEADER_BYTES // 1024} KB")
        # Stored mail is read whatever it holds; past the limit only the first fields are read.
        header_end = max(start, raw.rfind(b"\r\n", start, start + MAX_HEADER_BYTES) + 2)
    headers = HeaderBlock(raw[start:header_end], default_type)
    if headers.malformed:
        walk.problem("header line without a field name")
    if headers.count > MAX_HEADER_FIELDS:
        walk.problem(f"more than {MAX_HEADER_FIELDS} header fields")
    part = Part(raw, start, body_start, end, headers)
    maintype, subtype = part.content_type
    nests = maintype == "MULTIPART" or (maintype, subtype) == ("MESSAGE", "RFC822")
    if nests and depth >= MAX_DEPTH:
        walk.problem(f"MIME nested deeper than {MAX_DEPTH} levels")
        return part
    if walk.budget <= 0:
        walk.problem(f"more than {MAX_PARTS} MIME parts")
        return part
    if maintype == "MULTIPART":
        boundary = headers.get_boundary()
        if transfer_encoding(headers) not in ("7BIT", "8BIT", "BINARY"):
            walk.problem("a multipart entity with a content transfer encoding")
        if not boundary:
            walk.problem("multipart without a boundary")
        else:
            child_default = "message/rfc822" if subtype == "DIGEST" else "text/plain"
            spans = _split(raw, body_start, end, boundary.encode("utf-8", "surrogateescape"))
            if not spans:
                walk.problem("multipart boundary not found")
            for child_start, child_end in spans:
                if walk.budget <= 0:
                    walk.problem(f"more than {MAX_PARTS} MIME parts")
                    break
                part.children.append(_parse(raw, child_start, child_end, depth + 1, walk, default_type=child_default))
    elif (maintype, subtype) == ("MESSAGE", "RFC822") and transfer_encoding(headers) in ("7BIT", "8BIT", "BINARY"):
        part.message = _parse(raw, body_start, end, depth + 1, walk, default_type="text/plain")
    return part


def _shifted(part: Part, raw: bytes, delta: int) -> Part:
    """`part` and its subtree moved by `delta` bytes into `raw` (header blocks shared, not re-read)."""
    moved = Part(raw, part.start + delta, part.body_start + delta, part.end + delta, part.headers)
    moved.children = [_shifted(child, raw, delta) for child in part.children]
    moved.message = _shifted(part.message, raw, delta) if part.message is not None else None
    return moved


def walk_parts(root: Part) -> list[Part]:
    """Every entity of the tree, depth first (encapsulated messages included)."""
    out: list[Part] = []
    pending = [root]
    while pending:
        part = pending.pop()
        out.append(part)
        pending.extend(reversed(part.children))
        if part.message is not None:
            pending.append(part.message)
    return out


def _split(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of each body part between delimiter lines; the CRLF before a delimiter is the delimiter's."""
    delimiter = b"--" + boundary
    spans: list[tuple[int, int]] = []
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
    """The next delimiter line: at the start of a line, then "--" (the close delimiter) or only
    blanks up to the line's end (RFC 2046 5.1.1), so "--b1" is not found inside "--b10"."""
    while True:
        found = raw.find(delimiter, position, end)
        if found < 0:
            return -1
        if found == body_start or raw[found - 2 : found] == b"\r\n":
            after = found + len(delimiter)
            if raw.startswith(b"--", after):
                return found
            line_end = raw.find(b"\r\n", after, end)
            rest = raw[after : line_end if line_end >= 0 else end]
            if not rest.strip(b" \t"):
                return found
        position = found + 1


def transfer_encoding(headers: HeaderBlock) -> str:
    return (headers.get("content-transfer-encoding") or "7bit").strip().upper() or "7BIT"


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
    encoding = transfer_encoding(part.headers)
    try:
        if encoding == "BASE64":
            return base64.b64decode(data, validate=False)
        if encoding == "QUOTED-PRINTABLE":
            return quopri.decodestring(data)
    except (binascii.Error, ValueError):
        return None
    return data if encoding in ("7BIT", "8BIT", "BINARY") else None
