"""IMAP4rev1 command grammar (RFC 3501 section 9, with LITERAL+, UIDPLUS, MOVE, CONDSTORE).

The connection reader (`read_command`) turns bytes from the socket into one command: the
line, with each literal's bytes collected as it goes (answering "+" to synchronising
literals, refusing ones over the limit before reading them). `parse_command` turns that
into a `Command` with typed arguments, or raises `ParseError` with the text of the BAD
reply. Nothing here touches a mailbox: the session module decides what a command does.

Hostile input is bounded everywhere: line length, literal size, list nesting depth,
number of tokens, sequence-set size, search-key depth.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Union

from caducee.mime.imapforms import quote

MAX_LINE = 64 * 1024  # a command line, literals excluded
MAX_DEPTH = 8  # parenthesised lists inside one another
MAX_TOKENS = 10_000
MAX_RANGES = 10_000  # ranges in one sequence set
MAX_SEARCH_DEPTH = 32
MAX_SMALL_LITERAL = 64 * 1024  # a literal anywhere but APPEND's message
UINT32 = 2**32 - 1

_LITERAL_END = re.compile(rb"\{(\d{1,10})(\+?)\}\r\n$")
_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0, 32)) | {127}  # RFC 3501 atom-specials
_SECTION_ATOMS = {b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"}  # fetch items whose [section] may hold spaces
# Written quoted although an atom could hold them: a client's parser may take "[" in an
# unquoted name for the start of a response code (Dovecot quotes them too).
_QUOTE_IN_NAMES = {0x5B, 0x5D}
_DATE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")
_DATETIME = re.compile(r"^([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class ParseError(Exception):
    """A command that cannot be understood: answered `<tag> BAD <text>` (or untagged)."""

    def __init__(self, text: str, tag: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag


class LineTooLong(ParseError):
    """More than MAX_LINE bytes without CRLF: the connection is closed after BYE."""


class LiteralTooLarge(ParseError):
    """A literal over the limit, refused before its bytes are read."""


# ---- tokens -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Atom:
    value: str


@dataclass(frozen=True)
class String:
    """A quoted string or a literal: bytes, as IMAP strings are."""

    value: bytes

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", "replace")


Token = Union[Atom, String, None, list["Token"]]  # noqa: UP007 (a recursive alias must be a runtime Union)  # None is NIL


# ---- reading one command off the socket -------------------------------------------------


@dataclass
class RawCommand:
    """A command as read: line segments, and the literal that follows each but the last."""

    segments: list[bytes] = field(default_factory=list)
    literals: list[bytes] = field(default_factory=list)

    @property
    def tag(self) -> str | None:
        first = self.segments[0].split(b" ", 1)[0] if self.segments else b""
        try:
            return first.decode("ascii") if first and _is_atom(first) else None
        except UnicodeDecodeError:
            return None


async def read_command(
    reader: asyncio.StreamReader,
    continuation: Callable[[], Awaitable[None]],
    literal_limit: Callable[[RawCommand, int], int],
) -> RawCommand | None:
    """One command, literals included; None at end of stream.

    `continuation` sends "+ " for a synchronising literal; `literal_limit(command so far,
    size)` gives the largest literal allowed there (APPENDLIMIT for APPEND's message).
    """
    command = RawCommand()
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as partial:
            if partial.partial or command.segments:
                raise ParseError("connection closed inside a command") from None
            return None
        except asyncio.LimitOverrunError:
            raise LineTooLong("command line too long") from None
        if sum(len(s) for s in command.segments) + len(line) > MAX_LINE:
            raise LineTooLong("command line too long")
        found = _LITERAL_END.search(line)
        if found is None:
            command.segments.append(line[:-2])
            return command
        size, non_sync = int(found.group(1)), bool(found.group(2))
        command.segments.append(line[: found.start()] + b"{}")
        if size > literal_limit(command, size):
            if non_sync:  # the client sends it anyway: read and drop it to stay in step
                await _discard(reader, size)
            raise LiteralTooLarge(f"literal of {size} bytes is over the limit", tag=command.tag)
        if not non_sync:
            await continuation()
        try:
            command.literals.append(await reader.readexactly(size))
        except asyncio.IncompleteReadError:
            raise ParseError("connection closed inside a literal") from None


async def _discard(reader: asyncio.StreamReader, size: int) -> None:
    while size > 0:
        chunk = await reader.read(min(size, 1 << 16))
        if not chunk:
            return
        size -= len(chunk)


# ---- tokenizing ---------------------------------------------------------------------------


def _is_atom(data: bytes) -> bool:
    return bool(data) and not any(byte in _ATOM_SPECIALS or byte > 127 for byte in data)


class _Tokens:
    """A cursor over the segments of a RawCommand, `{}` standing for the next literal."""

    def __init__(self, raw: RawCommand) -> None:
        self.data = b"".join(segment for segment in raw.segments)
        self.literals = list(raw.literals)
        self.pos = 0
        self.count = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def space(self) -> None:
        if self.peek() != 0x20:
            raise ParseError("expected a space")
        self.pos += 1

    def maybe_space(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def expect_end(self) -> None:
        if not self.at_end():
            raise ParseError(f"unexpected characters: {self.data[self.pos : self.pos + 20]!r}")

    def token(self, depth: int = 0) -> Token:
        self.count += 1
        if self.count > MAX_TOKENS:
            raise ParseError("too many arguments")
        char = self.peek()
        if char is None:
            raise ParseError("missing argument")
        if char == 0x28:  # (
            if depth >= MAX_DEPTH:
                raise ParseError("lists nested too deeply")
            self.pos += 1
            items: list[Token] = []
            while self.peek() != 0x29:
                if self.peek() is None:
                    raise ParseError("unterminated list")
                if items:
                    self.space()
                items.append(self.token(depth + 1))
            self.pos += 1
            return items
        if char == 0x22:  # "
            return String(self.quoted())
        if char == 0x7B:  # { : a literal, whose bytes the reader collected
            if self.data[self.pos : self.pos + 2] != b"{}" or not self.literals:
                raise ParseError("malformed literal")
            self.pos += 2
            return String(self.literals.pop(0))
        return self.atom()

    def quoted(self) -> bytes:
        self.pos += 1
        out = bytearray()
        while True:
            char = self.peek()
            if char is None:
                raise ParseError("unterminated quoted string")
            self.pos += 1
            if char == 0x22:
                return bytes(out)
            if char == 0x5C:  # backslash: only \" and \\ are allowed
                escaped = self.peek()
                if escaped not in (0x22, 0x5C):
                    raise ParseError("bad escape in quoted string")
                self.pos += 1
                out.append(escaped)
            elif char in (0x0D, 0x0A):
                raise ParseError("CR or LF in quoted string")
            else:
                out.append(char)

    def atom(self) -> Atom:
        """An atom; `BODY[...]<...>` fetch items keep their brackets (spaces and lists inside).

        Elsewhere "[" is an ordinary atom character (RFC 3501 9: it is not in atom-specials),
        so a mailbox may be named `a[b` without quotes."""
        start = self.pos
        while (char := self.peek()) is not None:
            if char == 0x5B and self.data[start : self.pos].upper() in _SECTION_ATOMS:  # [ ... ] may hold spaces and parentheses
                end = self.data.find(b"]", self.pos)
                if end < 0:
                    raise ParseError("unterminated [")
                self.pos = end + 1
                continue
            # % and * are list wildcards and `*` a sequence number, ] may close a section,
            # \ starts a flag; 8-bit bytes are read here to be refused with a clear reply.
            if char in _ATOM_SPECIALS and char not in (0x25, 0x2A, 0x5D, 0x5C):
                break
            self.pos += 1
        if self.pos == start:
            raise ParseError(f"unexpected character {chr(self.data[start])!r}" if start < len(self.data) else "missing argument")
        raw = self.data[start : self.pos]
        if any(byte > 127 for byte in raw):
            raise ParseError("8-bit characters in an atom")
        return Atom(raw.decode("ascii"))

    def astring(self) -> bytes:
        token = self.token()
        if isinstance(token, String):
            return token.value
        if isinstance(token, Atom):
            return token.value.encode()
        raise ParseError("expected a string")

    def number(self, *, nonzero: bool = False) -> int:
        value = _number_of(self.token())
        if nonzero and value == 0:
            raise ParseError("expected a non-zero number")
        return value


# ---- sequence sets -----------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceSet:
    """Ranges of message numbers or UIDs; None stands for `*` (the largest in use)."""

    ranges: tuple[tuple[int | None, int | None], ...]

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Concrete (low, high) ranges once `*` is known; a range is unordered in IMAP."""
        out = []
        for low, high in self.ranges:
            a = largest if low is None else low
            b = largest if high is None else high
            out.append((min(a, b), max(a, b)))
        return out

    def contains(self, number: int, largest: int) -> bool:
        return any(low <= number <= high for low, high in self.resolve(largest))


def parse_sequence_set(text: str) -> SequenceSet:
    if not text or len(text) > 100_000:
        raise ParseError("bad sequence set")
    parts = text.split(",")
    if len(parts) > MAX_RANGES:
        raise ParseError("sequence set too long")
    ranges = []
    for part in parts:
        ends = part.split(":")
        if len(ends) > 2 or not all(ends):
            raise ParseError(f"bad sequence set {text[:40]!r}")
        values = [_seq_number(end, text) for end in ends]
        ranges.append((values[0], values[-1]))
    return SequenceSet(tuple(ranges))


def _seq_number(text: str, whole: str) -> int | None:
    if text == "*":
        return None
    if not text.isascii() or not text.isdigit() or text.startswith("0") or int(text) > UINT32:
        raise ParseError(f"bad sequence set {whole[:40]!r}")
    return int(text)


# ---- fetch items -------------------------------------------------------------------------

FETCH_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
SIMPLE_FETCH = {
    "ENVELOPE",
    "FLAGS",
    "INTERNALDATE",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.SIZE",
    "RFC822.TEXT",
    "BODY",
    "BODYSTRUCTURE",
    "UID",
    "MODSEQ",
}
_SECTION = re.compile(r"^(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?$", re.I)
_SECTION_PART = re.compile(r"^(\d+(?:\.\d+)*)?(?:\.?(HEADER|HEADER\.FIELDS|HEADER\.FIELDS\.NOT|TEXT|MIME))?(?: \((.*)\))?$", re.I)


@dataclass(frozen=True)
class FetchItem:
    """One fetch attribute; `section` items carry the part path, the kind and a partial range."""

    name: str  # ENVELOPE, FLAGS, ..., or BODY[] / BINARY[] for sections
    peek: bool = False
    part: tuple[int, ...] = ()
    kind: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    label: str = ""  # how the response names it


def parse_fetch_item(text: str) -> FetchItem:
    upper = text.upper()
    if upper in SIMPLE_FETCH:
        return FetchItem(upper, label=upper)
    found = _SECTION.match(text)
    if found is None:
        raise ParseError(f"unknown fetch item {text[:40]!r}")
    base, section, start, length = found.groups()
    sub = _SECTION_PART.match(section.strip())
    if sub is None:
        raise ParseError(f"bad section {section[:40]!r}")
    path, kind, names = sub.groups()
    kind = (kind or "").upper()
    if names is not None and kind not in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        raise ParseError("a field list only follows HEADER.FIELDS")
    if kind.startswith("HEADER.FIELDS") and not names:
        raise ParseError("HEADER.FIELDS needs a list of field names")
    if kind == "MIME" and not path:
        raise ParseError("MIME needs a part number")
    part = tuple(int(n) for n in path.split(".")) if path else ()
    if any(n == 0 for n in part):
        raise ParseError("part numbers start at 1")
    fields = tuple(name.upper() for name in (names or "").split())
    partial = (int(start), int(length)) if start is not None else None
    label_section = ".".join([*map(str, part), *([kind] if kind else [])])
    if fields:
        label_section += " (" + " ".join(fields) + ")"
    name = base.upper().replace(".PEEK", "")
    label = f"{name}[{label_section}]" + (f"<{partial[0]}>" if partial else "")
    return FetchItem(name + "[]", peek=base.upper().endswith(".PEEK"), part=part, kind=kind, fields=fields, partial=partial, label=label)


# ---- search keys -------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """A search key: `op` and its arguments (AND/OR/NOT hold other Search keys)."""

    op: str
    args: tuple[object, ...] = ()


_NO_ARG = {
    "ALL",
    "ANSWERED",
    "DELETED",
    "DRAFT",
    "FLAGGED",
    "NEW",
    "OLD",
    "RECENT",
    "SEEN",
    "UNANSWERED",
    "UNDELETED",
    "UNDRAFT",
    "UNFLAGGED",
    "UNSEEN",
}
_STRING_ARG = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_ARG = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_NUMBER_ARG = {"LARGER", "SMALLER"}
_FLAG_ARG = {"KEYWORD", "UNKEYWORD"}


def parse_date(text: str) -> dt.date:
    found = _DATE.match(text)
    if found is None or found.group(2).capitalize() not in MONTHS:
        raise ParseError(f"bad date {text[:30]!r}")
    try:
        return dt.date(int(found.group(3)), MONTHS.index(found.group(2).capitalize()) + 1, int(found.group(1)))
    except ValueError:
        raise ParseError(f"bad date {text[:30]!r}") from None


def parse_datetime(text: str) -> dt.datetime:
    found = _DATETIME.match(text)
    if found is None or found.group(2).capitalize() not in MONTHS:
        raise ParseError(f"bad date-time {text[:40]!r}")
    day, month, year, hour, minute, second, sign, zh, zm = found.groups()
    offset = dt.timedelta(hours=int(zh), minutes=int(zm)) * (1 if sign == "+" else -1)
    try:
        return dt.datetime(
            int(year), MONTHS.index(month.capitalize()) + 1, int(day), int(hour), int(minute), int(second), tzinfo=dt.timezone(offset)
        )
    except ValueError:
        raise ParseError(f"bad date-time {text[:40]!r}") from None


def _search_key(tokens: _Tokens, depth: int) -> Search:
    if depth > MAX_SEARCH_DEPTH:
        raise ParseError("search nested too deeply")
    token = tokens.token()
    if isinstance(token, list):
        return Search("AND", tuple(_search_list_from(token, depth + 1)))
    if not isinstance(token, Atom):
        raise ParseError("expected a search key")
    key = token.value.upper()
    if key in _NO_ARG:
        return Search(key)
    if key == "NOT":
        tokens.space()
        return Search("NOT", (_search_key(tokens, depth + 1),))
    if key == "OR":
        tokens.space()
        left = _search_key(tokens, depth + 1)
        tokens.space()
        return Search("OR", (left, _search_key(tokens, depth + 1)))
    if key in _STRING_ARG:
        tokens.space()
        return Search(key, (tokens.astring(),))
    if key == "HEADER":
        tokens.space()
        name = tokens.astring()
        tokens.space()
        return Search(key, (name.decode("ascii", "replace"), tokens.astring()))
    if key in _DATE_ARG:
        tokens.space()
        return Search(key, (parse_date(tokens.astring().decode("ascii", "replace")),))
    if key in _NUMBER_ARG or key == "MODSEQ":
        tokens.space()
        return Search(key, (tokens.number(),))
    if key in _FLAG_ARG:
        tokens.space()
        flag = tokens.token()
        if not isinstance(flag, Atom):
            raise ParseError("expected a keyword")
        return Search(key, (flag.value,))
    if key == "UID":
        tokens.space()
        seq = tokens.token()
        if not isinstance(seq, Atom):
            raise ParseError("expected a sequence set")
        return Search("UID", (parse_sequence_set(seq.value),))
    if key[:1].isdigit() or key[:1] == "*":
        return Search("SEQ", (parse_sequence_set(key),))
    raise ParseError(f"unknown search key {key[:30]!r}")


def _search_list_from(items: list[Token], depth: int) -> list[Search]:
    """Search keys inside a parenthesised group (already tokenized): re-tokenized in place."""
    raw = RawCommand([_serialize_tokens(items)], [t.value for t in _strings(items)])
    inner = _Tokens(raw)
    keys = [_search_key(inner, depth)]
    while inner.maybe_space():
        keys.append(_search_key(inner, depth))
    inner.expect_end()
    return keys


def _strings(items: list[Token]) -> list[String]:
    found: list[String] = []
    for item in items:
        if isinstance(item, String):
            found.append(item)
        elif isinstance(item, list):
            found.extend(_strings(item))
    return found


def _serialize_tokens(items: list[Token]) -> bytes:
    parts = []
    for item in items:
        if isinstance(item, Atom):
            parts.append(item.value.encode())
        elif isinstance(item, String):
            parts.append(b"{}")
        elif item is None:
            parts.append(b"NIL")
        else:
            parts.append(b"(" + _serialize_tokens(item) + b")")
    return b" ".join(parts)


# ---- commands ----------------------------------------------------------------------------


@dataclass
class Arguments:
    """A command's parsed arguments, each with its type; a command sets the ones it takes.

    One record rather than a class per command: the handlers read the few fields their
    command has, and the parser (the only writer) is the place that knows which.
    """

    mailbox: str = ""
    new: str = ""  # RENAME's new name
    user: bytes = b""
    password: bytes = b""
    mechanism: str = ""
    initial: bytes | None = None  # AUTHENTICATE's initial response
    condstore: bool = False
    reference: str = ""
    pattern: str = ""
    selection: list[str] = field(default_factory=list)
    returns: list[str] = field(default_factory=list)
    status_items: list[str] = field(default_factory=list)
    fetch_items: list[FetchItem] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    date: dt.datetime | None = None
    message: bytes = b""
    capabilities: list[str] = field(default_factory=list)
    fields: dict[str | None, str | None] = field(default_factory=dict)
    sequence: SequenceSet | None = None
    changed_since: int | None = None
    unchanged_since: int | None = None
    action: str = ""  # STORE: FLAGS, +FLAGS or -FLAGS
    silent: bool = False
    charset: str | None = None
    keys: Search | None = None


@dataclass
class Command:
    tag: str
    name: str  # upper case; UID commands are "UID FETCH" etc.
    args: Arguments = field(default_factory=Arguments)

    def sequence(self) -> SequenceSet:
        """The sequence set of a command that takes one (the parser guarantees it)."""
        if self.args.sequence is None:
            raise ParseError(f"{self.name} needs a sequence set")
        return self.args.sequence

    def search(self) -> Search:
        if self.args.keys is None:
            raise ParseError("SEARCH needs a key")
        return self.args.keys


NO_ARGS = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "EXPUNGE", "UNSELECT", "IDLE", "NAMESPACE"}
STORE_ACTIONS = {"FLAGS", "+FLAGS", "-FLAGS", "FLAGS.SILENT", "+FLAGS.SILENT", "-FLAGS.SILENT"}


def parse_command(raw: RawCommand) -> Command:
    tokens = _Tokens(raw)
    tag_token = tokens.atom() if tokens.peek() not in (None, 0x20) else None
    if tag_token is None or "+" in tag_token.value:
        raise ParseError("missing or invalid tag")
    tag = tag_token.value
    try:
        tokens.space()
        name = tokens.atom().value.upper()
        uid = name == "UID"
        if uid:
            tokens.space()
            name = tokens.atom().value.upper()
            if name not in {"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE"}:
                raise ParseError(f"UID {name} is not a command")
        args = _arguments(name, tokens, uid)
        tokens.expect_end()
        return Command(tag, f"UID {name}" if uid else name, args)
    except ParseError as error:
        error.tag = tag
        raise


def _mailbox(tokens: _Tokens) -> str:
    """A mailbox name: astring; INBOX is case-insensitive (RFC 3501 5.1)."""
    name = tokens.astring().decode("utf-8", "replace")
    if not name or len(name) > 255 or any(ord(c) < 32 for c in name):
        raise ParseError("bad mailbox name")
    return "INBOX" if name.upper() == "INBOX" else name


def _flags(token: Token) -> list[str]:
    items = token if isinstance(token, list) else [token]
    flags = []
    for item in items:
        if not isinstance(item, Atom):
            raise ParseError("flags are atoms")
        flags.append(item.value)
    return flags


def _arguments(name: str, tokens: _Tokens, uid: bool) -> Arguments:
    if name in NO_ARGS and not uid:
        return Arguments()
    if name == "LOGIN":
        tokens.space()
        user = tokens.astring()
        tokens.space()
        return Arguments(user=user, password=tokens.astring())
    if name == "AUTHENTICATE":
        tokens.space()
        mechanism = tokens.atom().value.upper()
        initial = None
        if tokens.maybe_space():
            initial = tokens.astring()
        return Arguments(mechanism=mechanism, initial=initial)
    if name in {"SELECT", "EXAMINE"}:
        tokens.space()
        mailbox = _mailbox(tokens)
        condstore = False
        if tokens.maybe_space():
            params = tokens.token()
            if not isinstance(params, list) or [p.value.upper() for p in params if isinstance(p, Atom)] != ["CONDSTORE"]:
                raise ParseError("the only select parameter is (CONDSTORE)")
            condstore = True
        return Arguments(mailbox=mailbox, condstore=condstore)
    if name in {"CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE"}:
        tokens.space()
        return Arguments(mailbox=_mailbox(tokens))
    if name == "RENAME":
        tokens.space()
        old = _mailbox(tokens)
        tokens.space()
        return Arguments(mailbox=old, new=_mailbox(tokens))
    if name in {"LIST", "LSUB"}:
        tokens.space()
        selection: list[str] = []
        if tokens.peek() == 0x28:
            selection = [_atom_value(t) for t in tokens.token()]  # type: ignore[union-attr]
            tokens.space()
        reference = tokens.astring().decode("utf-8", "replace")
        tokens.space()
        pattern = tokens.astring().decode("utf-8", "replace")
        returns: list[str] = []
        if tokens.maybe_space():
            if _atom_value(tokens.token()) != "RETURN":
                raise ParseError("expected RETURN")
            tokens.space()
            returns = [_atom_value(t) for t in _as_list(tokens.token())]
        return Arguments(reference=reference, pattern=pattern, selection=selection, returns=returns)
    if name == "STATUS":
        tokens.space()
        mailbox = _mailbox(tokens)
        tokens.space()
        items = [_atom_value(t) for t in _as_list(tokens.token())]
        allowed = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE"}
        if not items or any(item not in allowed for item in items):
            raise ParseError("bad STATUS item")
        return Arguments(mailbox=mailbox, status_items=items)
    if name == "APPEND":
        tokens.space()
        mailbox = _mailbox(tokens)
        tokens.space()
        flags: list[str] = []
        date = None
        token = tokens.token()
        if isinstance(token, list):
            flags = _flags(token)
            tokens.space()
            token = tokens.token()
        if isinstance(token, String) and tokens.peek() == 0x20:  # a quoted date-time, then the literal
            date = parse_datetime(token.text)
            tokens.space()
            token = tokens.token()
        if not isinstance(token, String):
            raise ParseError("APPEND needs the message as a literal")
        return Arguments(mailbox=mailbox, flags=flags, date=date, message=token.value)
    if name == "ENABLE":
        capabilities = []
        while tokens.maybe_space():
            capabilities.append(_atom_value(tokens.token()))
        if not capabilities:
            raise ParseError("ENABLE needs a capability")
        return Arguments(capabilities=capabilities)
    if name == "ID":
        tokens.space()
        token = tokens.token()
        if isinstance(token, Atom) and token.value.upper() == "NIL":
            return Arguments(fields={})
        if not isinstance(token, list) or len(token) % 2 or len(token) > 60:
            raise ParseError("ID takes NIL or a list of at most 30 field-value pairs")
        return Arguments(fields={_text(k): _text(v) for k, v in zip(token[::2], token[1::2], strict=True)})
    if name == "FETCH":
        tokens.space()
        sequence = parse_sequence_set(tokens.atom().value)
        tokens.space()
        token = tokens.token()
        if isinstance(token, Atom) and token.value.upper() in FETCH_MACROS:
            fetch_items = [parse_fetch_item(n) for n in FETCH_MACROS[token.value.upper()]]
        else:
            fetch_items = [parse_fetch_item(_atom_value(t, keep_case=True)) for t in _as_list(token)]
        if not fetch_items:
            raise ParseError("FETCH needs at least one item")
        changed_since = None
        if tokens.maybe_space():
            modifiers = _as_list(tokens.token())
            if len(modifiers) != 2 or _atom_value(modifiers[0]) != "CHANGEDSINCE":
                raise ParseError("the only fetch modifier is CHANGEDSINCE")
            changed_since = _number_of(modifiers[1])
        return Arguments(sequence=sequence, fetch_items=fetch_items, changed_since=changed_since)
    if name == "STORE":
        tokens.space()
        sequence = parse_sequence_set(tokens.atom().value)
        tokens.space()
        unchanged_since = None
        if tokens.peek() == 0x28:
            modifiers = _as_list(tokens.token())
            if len(modifiers) != 2 or _atom_value(modifiers[0]) != "UNCHANGEDSINCE":
                raise ParseError("the only store modifier is UNCHANGEDSINCE")
            unchanged_since = _number_of(modifiers[1])
            tokens.space()
        action = tokens.atom().value.upper()
        if action not in STORE_ACTIONS:
            raise ParseError(f"bad STORE action {action[:20]!r}")
        tokens.space()
        flags = _flags(tokens.token())
        while tokens.maybe_space():
            flags.extend(_flags(tokens.token()))
        return Arguments(
            sequence=sequence, action=action.split(".")[0], silent=action.endswith(".SILENT"), flags=flags, unchanged_since=unchanged_since
        )
    if name in {"COPY", "MOVE"}:
        tokens.space()
        sequence = parse_sequence_set(tokens.atom().value)
        tokens.space()
        return Arguments(sequence=sequence, mailbox=_mailbox(tokens))
    if name == "EXPUNGE" and uid:
        tokens.space()
        return Arguments(sequence=parse_sequence_set(tokens.atom().value))
    if name == "SEARCH":
        tokens.space()
        charset = None
        if tokens.data[tokens.pos : tokens.pos + 8].upper() == b"CHARSET ":
            tokens.atom()
            tokens.space()
            charset = tokens.astring().decode("ascii", "replace").upper()
            if charset not in ("UTF-8", "US-ASCII"):
                raise ParseError(f"[BADCHARSET (UTF-8 US-ASCII)] charset {charset[:20]} is not supported")
            tokens.space()
        keys = [_search_key(tokens, 0)]
        while tokens.maybe_space():
            keys.append(_search_key(tokens, 0))
        return Arguments(charset=charset, keys=Search("AND", tuple(keys)))
    raise ParseError(f"unknown command {name[:30]}")


def _as_list(token: Token) -> list[Token]:
    return token if isinstance(token, list) else [token]


def _atom_value(token: Token, *, keep_case: bool = False) -> str:
    if not isinstance(token, Atom):
        raise ParseError("expected an atom")
    return token.value if keep_case else token.value.upper()


MAX_MODSEQ = 2**63 - 1  # mod-sequences are 63-bit (RFC 7162 3.1.1); what a column can hold


def _number_of(token: Token) -> int:
    if (
        not isinstance(token, Atom)
        or not token.value.isascii()
        or not token.value.isdigit()
        or len(token.value) > 19
        or int(token.value) > MAX_MODSEQ
    ):
        raise ParseError("expected a number of at most 63 bits")
    return int(token.value)


def _text(token: Token) -> str | None:
    if token is None or (isinstance(token, Atom) and token.value.upper() == "NIL"):
        return None
    if isinstance(token, String):
        return token.text[:1024]
    if isinstance(token, Atom):
        return token.value[:1024]
    raise ParseError("expected a string")


# ---- responses ----------------------------------------------------------------------------


def nstring(value: bytes | str | None) -> bytes:
    return b"NIL" if value is None else quote(value)


def astring(value: str) -> bytes:
    data = value.encode("utf-8")
    return data if _is_atom(data) and not any(byte in _QUOTE_IN_NAMES for byte in data) else quote(data)


def serialize(value: object) -> bytes:
    """Python values as IMAP data: None NIL, int number, Atom as is, str/bytes string, list/tuple parenthesised."""
    kind = type(value)
    if kind is bytes or kind is str:
        return quote(value)  # type: ignore[arg-type]
    if kind is list:
        return b"(" + b" ".join([serialize(item) for item in value]) + b")"  # type: ignore[attr-defined]
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        raise TypeError("booleans have no IMAP form")
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, Atom):
        return value.value.encode()
    if isinstance(value, (str, bytes)):
        return quote(value)
    if isinstance(value, (list, tuple)):
        return b"(" + b" ".join(serialize(item) for item in value) + b")"
    raise TypeError(f"no IMAP form for {type(value).__name__}")


def format_datetime(moment: dt.datetime) -> str:
    """INTERNALDATE form: "22-Nov-2026 10:00:00 +0000" (hot: once per message of a listing)."""
    offset = moment.utcoffset() if moment.tzinfo else None
    minutes = int(offset.total_seconds() // 60) if offset else 0
    sign = "+" if minutes >= 0 else "-"
    return "%02d-%s-%04d %02d:%02d:%02d %s%02d%02d" % (  # noqa: UP031 (kept as written: once per message of a listing)
        moment.day,
        MONTHS[moment.month - 1],
        moment.year,
        moment.hour,
        moment.minute,
        moment.second,
        sign,
        abs(minutes) // 60,
        abs(minutes) % 60,
    )
