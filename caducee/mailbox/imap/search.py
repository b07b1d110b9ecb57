"""Evaluating SEARCH keys against stored entries.

The session reads every entry of the folder in one streamed query, with only the columns
the keys need: flags, dates, sizes and MODSEQ come from the entry; FROM/TO/CC/BCC/SUBJECT
and SENT* from the stored summary (no body opened); HEADER, BODY and TEXT from the body.
Strings match case-insensitively on the decoded text (RFC 3501 6.4.4).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from email.header import decode_header, make_header

from caducee.mailbox.imap.grammar import Search
from caducee.mailbox.imap.mailstore import FetchRow, flag_list
from caducee.mailbox.imap.structure import header_fields, parse

_FLAG_KEYS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft", "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}
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


@dataclass
class Candidate:
    row: FetchRow
    sequence: int
    largest_sequence: int
    largest_uid: int


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
    if op in ("NEW", "RECENT"):  # \Recent is not kept (IMAP4rev2 dropped it)
        return False
    if op == "OLD":
        return True
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
        needle = _needle(args[0])  # type: ignore[arg-type]
        return row.summary is not None and needle in row.summary.search_headers.get(op.lower(), "")
    if op == "HEADER":
        name, value = args
        header = parse(row.body or b"").header_bytes
        found = header_fields(header, (str(name),), exclude=False)
        if found == b"\r\n":
            return False
        return _needle(value) in _decoded(found.split(b":", 1)[1] if b":" in found else found)  # type: ignore[arg-type]
    if op in ("BODY", "TEXT"):
        root = parse(row.body or b"")
        haystack = root.body_bytes if op == "BODY" else root.raw
        return _needle(args[0]) in haystack.decode("utf-8", "replace").casefold()  # type: ignore[arg-type]
    return False


def _compare_date(op: str, day: dt.date, wanted: dt.date) -> bool:
    return day < wanted if op == "BEFORE" else day == wanted if op == "ON" else day >= wanted


def _needle(value: bytes) -> str:
    return value.decode("utf-8", "replace").casefold()


def _decoded(value: bytes) -> str:
    text = value.decode("utf-8", "replace").replace("\r\n", "")
    try:
        text = str(make_header(decode_header(text)))
    except (ValueError, LookupError):
        pass
    return text.casefold()
