"""IMAP's data syntax (RFC 3501 section 4) for what the store renders once per message.

ENVELOPE, BODY and BODYSTRUCTURE are rendered from the protocol-neutral summary
(`caducee.mime.summary`) when a message is stored, and kept beside it, so that listing a
folder neither opens a body nor renders anything (a 10,000-message FETCH is a
concatenation). The renderer lives here, not in `caducee.imap`, because storing a message
must not need a protocol front-end; IMAP's command grammar builds on `quote` and `render`.

`parse_value` reads back what `render` writes: only for summaries stored before the
neutral form existed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caducee.mime.addresses import Address
    from caducee.mime.summary import BodyPart, Envelope

_NOT_QUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")


def quote(value: bytes | str) -> bytes:
    """A string as a quoted string when it can be one, else as a literal."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(data) < 1024 and _NOT_QUOTABLE.search(data) is None:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def render(value: object) -> bytes:
    """None as NIL, int as a number, str/bytes as a string, list/tuple parenthesised."""
    kind = type(value)
    if kind is bytes or kind is str:
        return quote(value)  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        return b"(" + b" ".join([render(item) for item in value]) + b")"  # type: ignore[attr-defined]
    if value is None:
        return b"NIL"
    if kind is int:
        return str(value).encode()
    raise TypeError(f"no IMAP form for {kind.__name__}")


def _addresses(addresses: tuple[Address, ...] | None) -> bytes:
    """An address list: `1*address`, the addresses side by side with no space (RFC 3501 9)."""
    if not addresses:
        return b"NIL"
    return b"(" + b"".join([render(list(address)) for address in addresses]) + b")"


def envelope_form(envelope: Envelope) -> bytes:
    """RFC 3501 7.4.2 ENVELOPE; Sender and Reply-To default to From, as the RFC asks."""
    sender_from = _addresses(envelope.from_)
    fields = [
        render(envelope.date),
        render(envelope.subject),
        sender_from,
        _addresses(envelope.sender) if envelope.sender else sender_from,
        _addresses(envelope.reply_to) if envelope.reply_to else sender_from,
        _addresses(envelope.to),
        _addresses(envelope.cc),
        _addresses(envelope.bcc),
        render(envelope.in_reply_to),
        render(envelope.message_id),
    ]
    return b"(" + b" ".join(fields) + b")"


def _params(params: tuple[tuple[str, str], ...]) -> list[str] | None:
    out: list[str] = []
    for key, value in params:
        out += [key.upper(), value]
    return out or None


def _disposition(disposition: tuple[str, tuple[tuple[str, str], ...]] | None) -> object:
    if disposition is None:
        return None
    return [disposition[0].upper(), _params(disposition[1])]


def _structure(part: BodyPart, extensions: bool) -> list[object]:
    if part.children:
        out: list[object] = [_structure(child, extensions) for child in part.children]
        out.append(part.subtype)
        if extensions:
            out += [_params(part.params), _disposition(part.disposition), part.language, part.location]
        return out
    params = _params(part.params)
    out = [part.type, part.subtype, params, part.id, part.description, part.encoding, part.size]
    if part.message is not None:
        envelope, inner, lines = part.message
        out += [_RenderedEnvelope(envelope_form(envelope)), _structure(inner, extensions), lines]
    elif part.lines is not None:
        out.append(part.lines)
    if extensions:
        out += [part.md5, _disposition(part.disposition), part.language, part.location]
    return out


class _RenderedEnvelope(bytes):
    """An already rendered ENVELOPE nested in a BODYSTRUCTURE (message/rfc822 parts)."""


def body_form(part: BodyPart, *, extensions: bool) -> bytes:
    """BODYSTRUCTURE (with extension data) or BODY (without) of a part."""
    return _render_nested(_structure(part, extensions))


def _render_nested(value: object) -> bytes:
    if isinstance(value, _RenderedEnvelope):
        return bytes(value)
    if type(value) is list:
        return b"(" + b" ".join([_render_nested(item) for item in value]) + b")"
    return render(value)


def parse_value(data: bytes, position: int = 0) -> tuple[object, int]:
    """One value of `render`'s output and where it ends (strings as bytes, NIL as None)."""
    while data[position : position + 1] == b" ":
        position += 1
    head = data[position : position + 1]
    if head == b"(":
        items: list[object] = []
        position += 1
        while True:
            while data[position : position + 1] == b" ":
                position += 1
            if data[position : position + 1] == b")":
                return items, position + 1
            if position >= len(data):
                raise ValueError("unterminated list")
            item, position = parse_value(data, position)
            items.append(item)
    if head == b'"':
        out = bytearray()
        position += 1
        while position < len(data):
            char = data[position]
            if char == 0x5C:  # backslash
                out.append(data[position + 1])
                position += 2
            elif char == 0x22:
                return bytes(out), position + 1
            else:
                out.append(char)
                position += 1
        raise ValueError("unterminated quoted string")
    if head == b"{":
        close = data.index(b"}", position)
        size = int(data[position + 1 : close])
        start = close + 3  # "}\r\n"
        return data[start : start + size], start + size
    end = position
    while end < len(data) and data[end : end + 1] not in (b" ", b")", b"("):
        end += 1
    atom = data[position:end].decode("ascii", "replace")
    if atom == "NIL":
        return None, end
    return (int(atom) if atom.isdigit() else atom), end
