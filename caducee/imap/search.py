"""Evaluating SEARCH keys against stored entries.

The session reads every entry of the folder in one streamed query, with only the columns
the keys need: flags, dates, sizes and MODSEQ come from the entry; FROM/TO/CC/BCC/SUBJECT
and SENT* from the stored summary (no body opened); HEADER, BODY and TEXT from the body.
Strings match case-insensitively on the decoded text (RFC 3501 6.4.4).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from email.header import decode_header, make_header
from functools import lru_cache

from caducee.imap.grammar import Search
from caducee.mailbox.mailstore import FLAG_BITS, FetchRow, flag_list
from caducee.mime.structure import header_fields, parse
from caducee.mime.summary import header_text

_FLAG_KEYS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft", "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}
_MEMORY_KEYS = (
    {"AND", "OR", "NOT", "ALL", "NEW", "RECENT", "OLD", "KEYWORD", "UNKEYWORD", "SEQ", "UID"}
    | set(_FLAG_KEYS)
    | {"UN" + name for name in _FLAG_KEYS}
)
_SUMMARY_KEYS = {"FROM", "TO", "CC", "BCC", "SUBJECT", "SENTBEFORE", "SENTON", "SENTSINCE"}
_BODY_KEYS = {"BODY", "TEXT", "HEADER"}


@dataclass(frozen=True)
class Needs:
    summary: bool
    body: bool
    modseq: bool


def needs(key: Search) -> Needs:
    summary = body = modseq = False
    stack = [key]
    while stack:
        item = stack.pop()
        summary |= item.op in _SUMMARY_KEYS
        body |= item.op in _BODY_KEYS
        modseq |= item.op == "MODSEQ"
        stack.extend(arg for arg in item.args if isinstance(arg, Search))
    return Needs(summary, body, modseq)


_HEADER_KEYS = {"FROM", "TO", "CC", "BCC", "SUBJECT"}


def in_memory(key: Search, *, headers: bool = False) -> bool:
    """Whether the selected view (UIDs, numbers, flags) answers the key, with the header
    cache if `headers`: then no query at all, or only one for UIDs not cached yet."""
    allowed = _MEMORY_KEYS | _HEADER_KEYS if headers else _MEMORY_KEYS
    return key.op in allowed and all(in_memory(arg, headers=headers) for arg in key.args if isinstance(arg, Search))


def flags_only(key: Search) -> bool:
    """Whether the answer depends on a message's system flags alone (then a 256-byte table decides it)."""
    allowed = {"AND", "OR", "NOT", "ALL"} | set(_FLAG_KEYS) | {"UN" + name for name in _FLAG_KEYS}  # \\Recent is per session, not a bit
    return key.op in allowed and all(flags_only(arg) for arg in key.args if isinstance(arg, Search))


def flag_table(test: Test) -> bytes:
    """For each possible flag-bits byte, 1 if it matches: `bytes.translate` then applies the key in C."""
    return bytes(1 if test(0, 0, bits, "") else 0 for bits in range(256))


def uses_headers(key: Search) -> bool:
    return key.op in _HEADER_KEYS or any(uses_headers(arg) for arg in key.args if isinstance(arg, Search))


Test = Callable[[int, int, int, str], bool]  # (sequence, uid, flag bits, flags text if keywords) -> match


def compile_memory(
    key: Search,
    largest_sequence: int,
    largest_uid: int,
    headers: dict[int, bytes] | None = None,
    recent: Callable[[int], bool] = lambda uid: False,
) -> Test:
    """A key as one Python closure over the view's data, built once per SEARCH; `recent`
    tells whether a UID is \\Recent in this session."""
    op, args = key.op, key.args
    if op == "AND":
        parts = [compile_memory(arg, largest_sequence, largest_uid, headers, recent) for arg in args]  # type: ignore[arg-type]
        if len(parts) == 1:
            return parts[0]
        return lambda s, u, b, k: all(part(s, u, b, k) for part in parts)
    if op == "OR":
        left, right = (compile_memory(arg, largest_sequence, largest_uid, headers, recent) for arg in args)  # type: ignore[arg-type]
        return lambda s, u, b, k: left(s, u, b, k) or right(s, u, b, k)
    if op == "NOT":
        inner = compile_memory(args[0], largest_sequence, largest_uid, headers, recent)  # type: ignore[arg-type]
        return lambda s, u, b, k: not inner(s, u, b, k)
    if op in _HEADER_KEYS:
        assert headers is not None
        needle, name = _needle(args[0]).encode("utf-8"), op.lower()
        return lambda s, u, b, k: needle in header_text(headers.get(u, b""), name)
    if op == "ALL":
        return lambda s, u, b, k: True
    if op == "RECENT":
        return lambda s, u, b, k: recent(u)
    if op == "OLD":
        return lambda s, u, b, k: not recent(u)
    if op == "NEW":  # recent and not seen (RFC 3501 6.4.4)
        return lambda s, u, b, k: recent(u) and not b & FLAG_BITS["\\Seen"]
    if op in _FLAG_KEYS:
        bit = FLAG_BITS[_FLAG_KEYS[op]]
        return lambda s, u, b, k: bool(b & bit)
    if op.startswith("UN") and op[2:] in _FLAG_KEYS:
        bit = FLAG_BITS[_FLAG_KEYS[op[2:]]]
        return lambda s, u, b, k: not b & bit
    if op in ("KEYWORD", "UNKEYWORD"):
        wanted = str(args[0]).upper()
        has = lambda s, u, b, k: bool(k) and wanted in {flag.upper() for flag in k.split()}  # noqa: E731
        return has if op == "KEYWORD" else (lambda s, u, b, k: not has(s, u, b, k))
    ranges = args[0].resolve(largest_sequence if op == "SEQ" else largest_uid)  # type: ignore[attr-defined]
    if op == "SEQ":
        return lambda s, u, b, k: any(low <= s <= high for low, high in ranges)
    return lambda s, u, b, k: any(low <= u <= high for low, high in ranges)


@dataclass
class Candidate:
    row: FetchRow
    sequence: int
    largest_sequence: int
    largest_uid: int
    recent: bool = False


def matches(key: Search, item: Candidate) -> bool:
    op, args, row = key.op, key.args, item.row
    if op == "AND":
        return all(matches(arg, item) for arg in args)  # type: ignore[arg-type]
    if op == "OR":
        return matches(args[0], item) or matches(args[1], item)  # type: ignore[arg-type]
    if op == "NOT":
        return not matches(args[0], item)  # type: ignore[arg-type]
    if op == "ALL":
        return True
    flags = flag_list(row.flags)
    if op in _FLAG_KEYS:
        return _FLAG_KEYS[op] in flags
    if op.startswith("UN") and op[2:] in _FLAG_KEYS:
        return _FLAG_KEYS[op[2:]] not in flags
    if op == "RECENT":
        return item.recent
    if op == "NEW":
        return item.recent and "\\Seen" not in flags
    if op == "OLD":
        return not item.recent
    if op == "KEYWORD":
        return str(args[0]).upper() in {flag.upper() for flag in flags}
    if op == "UNKEYWORD":
        return str(args[0]).upper() not in {flag.upper() for flag in flags}
    if op == "SEQ":
        return args[0].contains(item.sequence, item.largest_sequence)  # type: ignore[attr-defined]
    if op == "UID":
        return args[0].contains(row.uid, item.largest_uid)  # type: ignore[attr-defined]
    if op == "LARGER":
        return row.size > args[0]  # type: ignore[operator]
    if op == "SMALLER":
        return row.size < args[0]  # type: ignore[operator]
    if op == "MODSEQ":
        return row.modseq >= args[0]  # type: ignore[operator]
    if op in ("BEFORE", "ON", "SINCE"):
        return _compare_date(op, row.received_at.date(), args[0])  # type: ignore[arg-type]
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        sent = row.summary.sent_date if row.summary else ""
        return bool(sent) and _compare_date(op[4:], dt.date.fromisoformat(sent), args[0])  # type: ignore[arg-type]
    if op in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        needle = _needle(args[0]).encode("utf-8")
        return row.summary is not None and needle in row.summary.header_text(op.lower())
    if op == "HEADER":
        name, value = args
        header = parse(row.body or b"").header_bytes
        found = header_fields(header, (str(name),), exclude=False)
        if found == b"\r\n":
            return False
        return _needle(value) in _decoded(found.split(b":", 1)[1] if b":" in found else found)
    if op in ("BODY", "TEXT"):
        root = parse(row.body or b"")
        haystack = root.body_bytes if op == "BODY" else root.raw
        return _needle(args[0]) in haystack.decode("utf-8", "replace").casefold()
    return False


def _compare_date(op: str, day: dt.date, wanted: dt.date) -> bool:
    return day < wanted if op == "BEFORE" else day == wanted if op == "ON" else day >= wanted


@lru_cache(maxsize=256)
def _needle(value: bytes) -> str:
    return value.decode("utf-8", "replace").casefold()


def _decoded(value: bytes) -> str:
    text = value.decode("utf-8", "replace").replace("\r\n", "")
    try:
        text = str(make_header(decode_header(text)))
    except (ValueError, LookupError):
        pass
    return text.casefold()
