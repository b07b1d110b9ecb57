"""The IMAP grammar on its own: commands from RFC 3501's examples, literals off a real
stream, and hostile input (each refused with a BAD text, nothing read past a limit)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from caducee.imap.grammar import (
    MAX_DEPTH,
    Arguments,
    Atom,
    LineTooLong,
    LiteralTooLarge,
    ParseError,
    RawCommand,
    Search,
    SequenceSet,
    format_datetime,
    parse_command,
    parse_sequence_set,
    quote,
    read_command,
    serialize,
)


def parse(line: bytes, *literals: bytes):  # type: ignore[no-untyped-def]
    segments = line.split(b"{}")
    segments = [segment + b"{}" for segment in segments[:-1]] + [segments[-1]]
    return parse_command(RawCommand(segments, list(literals)))


# ---- RFC 3501 examples -----------------------------------------------------------------------

EXAMPLES = [
    (b"a001 CAPABILITY", "CAPABILITY", {}),
    (b"a002 NOOP", "NOOP", {}),
    (b"A023 LOGOUT", "LOGOUT", {}),
    (b"a001 LOGIN SMITH SESAME", "LOGIN", {"user": b"SMITH", "password": b"SESAME"}),
    (b'a001 login "fred" "fo\\"o"', "LOGIN", {"user": b"fred", "password": b'fo"o'}),
    (b"A142 SELECT INBOX", "SELECT", {"mailbox": "INBOX", "condstore": False}),
    (b"A142 SELECT inbox (CONDSTORE)", "SELECT", {"mailbox": "INBOX", "condstore": True}),
    (b"A932 EXAMINE blurdybloop", "EXAMINE", {"mailbox": "blurdybloop", "condstore": False}),
    (b"A003 CREATE owatagusiam/", "CREATE", {"mailbox": "owatagusiam/"}),
    (b"A683 RENAME blurdybloop sarasoop", "RENAME", {"mailbox": "blurdybloop", "new": "sarasoop"}),
    (b'A101 LIST "" ""', "LIST", {"reference": "", "pattern": "", "selection": [], "returns": []}),
    (b"A202 LIST ~/Mail/ %", "LIST", {"reference": "~/Mail/", "pattern": "%", "selection": [], "returns": []}),
    (
        b'A1 LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)',
        "LIST",
        {"reference": "", "pattern": "*", "selection": ["SPECIAL-USE"], "returns": ["SPECIAL-USE"]},
    ),
    (b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)", "STATUS", {"mailbox": "blurdybloop", "status_items": ["UIDNEXT", "MESSAGES"]}),
    (b"A202 EXPUNGE", "EXPUNGE", {}),
    (
        b'A283 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',
        "SEARCH",
        {
            "charset": None,
            "keys": Search(
                "AND", (Search("FLAGGED"), Search("SINCE", (dt.date(1994, 2, 1),)), Search("NOT", (Search("FROM", (b"Smith",)),)))
            ),
        },
    ),
    (b"A285 SEARCH CHARSET UTF-8 TEXT {}", "SEARCH", {"charset": "UTF-8", "keys": Search("AND", (Search("TEXT", (b"XXXXXX",)),))}),
    (
        b"A003 STORE 2:4 +FLAGS (\\Deleted)",
        "STORE",
        {"sequence": SequenceSet(((2, 4),)), "action": "+FLAGS", "silent": False, "flags": ["\\Deleted"], "unchanged_since": None},
    ),
    (
        b"A004 STORE 1 (UNCHANGEDSINCE 12) FLAGS.SILENT (\\Seen $Label1)",
        "STORE",
        {"sequence": SequenceSet(((1, 1),)), "action": "FLAGS", "silent": True, "flags": ["\\Seen", "$Label1"], "unchanged_since": 12},
    ),
    (b"A003 COPY 2:4 MEETING", "COPY", {"sequence": SequenceSet(((2, 4),)), "mailbox": "MEETING"}),
    (b"A999 UID FETCH 4827313:4828442 FLAGS", "UID FETCH", None),
    (b"a UID EXPUNGE 3000:3002", "UID EXPUNGE", {"sequence": SequenceSet(((3000, 3002),))}),
    (b"a MOVE 1:* Trash", "MOVE", {"sequence": SequenceSet(((1, None),)), "mailbox": "Trash"}),
    (b"a ENABLE CONDSTORE", "ENABLE", {"capabilities": ["CONDSTORE"]}),
    (b'a ID ("name" "Thunderbird" "version" "128.0")', "ID", {"fields": {"name": "Thunderbird", "version": "128.0"}}),
    (b"a ID NIL", "ID", {"fields": {}}),
    (b"a IDLE", "IDLE", {}),
    (b"a NAMESPACE", "NAMESPACE", {}),
    (b"a UNSELECT", "UNSELECT", {}),
]


@pytest.mark.parametrize(("line", "name", "args"), EXAMPLES, ids=[e[0].decode()[:40] for e in EXAMPLES])
def test_rfc3501_examples(line: bytes, name: str, args: dict | None) -> None:
    literals = [b"XXXXXX"] if b"{}" in line else []
    command = parse(line, *literals)
    assert command.name == name
    if args is not None:
        assert command.args == Arguments(**args)


def test_fetch_items_and_sections() -> None:
    command = parse(b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)] BODY.PEEK[1.2.MIME] BODY[]<0.2048> UID)")
    items = command.args.fetch_items
    assert [item.label for item in items] == ["FLAGS", "BODY[HEADER.FIELDS (DATE FROM)]", "BODY[1.2.MIME]", "BODY[]<0>", "UID"]
    assert items[1].fields == ("DATE", "FROM") and items[2].peek and items[2].part == (1, 2) and items[3].partial == (0, 2048)
    full = parse(b"A1 UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE) (CHANGEDSINCE 7)")
    assert full.name == "UID FETCH" and full.args.changed_since == 7 and len(full.args.fetch_items) == 6
    assert [i.name for i in parse(b"a FETCH 1 ALL").args.fetch_items] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]


def test_append_with_flags_date_and_literal() -> None:
    command = parse(b'A003 APPEND saved-messages (\\Seen) "05-Jul-1994 02:44:25 -0700" {}', b"Subject: hi\r\n\r\nbody\r\n")
    assert command.args.flags == ["\\Seen"] and command.args.message.startswith(b"Subject: hi")
    assert command.args.date == dt.datetime(1994, 7, 5, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7)))


def test_search_or_groups_uid_and_sequence_sets() -> None:
    keys = parse(b'a SEARCH OR (FROM "a" TO "b") UID 1:5,9 2,4:* HEADER Message-ID "<x@y>"').args.keys
    assert keys.args[0] == Search(
        "OR", (Search("AND", (Search("FROM", (b"a",)), Search("TO", (b"b",)))), Search("UID", (SequenceSet(((1, 5), (9, 9))),)))
    )
    assert keys.args[1] == Search("SEQ", (SequenceSet(((2, 2), (4, None))),))
    assert keys.args[2] == Search("HEADER", ("Message-ID", b"<x@y>"))


def test_sequence_sets_resolve() -> None:
    assert parse_sequence_set("4:2,*").resolve(10) == [(2, 4), (10, 10)]
    assert parse_sequence_set("5:*").contains(7, 9) and not parse_sequence_set("5:*").contains(4, 9)


# ---- reading off a real stream --------------------------------------------------------------


async def _read(data: bytes, limit: int = 1024, sync: list | None = None):  # type: ignore[no-untyped-def]
    reader = asyncio.StreamReader(limit=70 * 1024)
    reader.feed_data(data)
    reader.feed_eof()
    continuations = sync if sync is not None else []

    async def continuation() -> None:
        continuations.append(True)

    return await read_command(reader, continuation, lambda command, size: limit)


async def test_literals_synchronising_and_non_synchronising() -> None:
    continuations: list = []
    raw = await _read(b"a LOGIN {5}\r\nsmith {6+}\r\nsesame\r\n", sync=continuations)
    assert parse_command(raw).args == Arguments(user=b"smith", password=b"sesame")
    assert len(continuations) == 1  # "+" only for the synchronising one (LITERAL+)


async def test_end_of_stream_is_none_and_unterminated_literal_is_an_error() -> None:
    assert await _read(b"") is None
    with pytest.raises(ParseError, match="inside a literal"):
        await _read(b"a APPEND INBOX {100}\r\nonly a few bytes")


async def test_an_enormous_literal_is_refused_before_it_is_read() -> None:
    with pytest.raises(LiteralTooLarge) as caught:
        await _read(b"a7 APPEND INBOX {999999999}\r\n", limit=1024)
    assert caught.value.tag == "a7"


async def test_a_huge_line_is_refused() -> None:
    with pytest.raises(LineTooLong):
        await _read(b"a NOOP " + b"x" * 100_000 + b"\r\n")


# ---- hostile commands ------------------------------------------------------------------------

HOSTILE = [
    (b"a FETCH 1 " + b"(" * (MAX_DEPTH + 2) + b"FLAGS" + b")" * (MAX_DEPTH + 2), "nested too deeply"),
    (b"a FETCH 0 FLAGS", "bad sequence set"),
    (b"a FETCH 1:2:3 FLAGS", "bad sequence set"),
    (b"a FETCH 4294967296 FLAGS", "bad sequence set"),
    (b"a FETCH -1 FLAGS", "bad sequence set"),
    (b"a FETCH 1,,2 FLAGS", "bad sequence set"),
    (b"a FETCH 1 (FLAGS", "unterminated list"),
    (b"a FETCH 1 BODY[HEADER.FIELDS]", "needs a list"),
    (b"a FETCH 1 BODY[0]", "start at 1"),
    (b"a FETCH 1 (RFC822.SMELL)", "unknown fetch item"),
    (b"a SELECT \xc3\xa9t\xc3\xa9", "8-bit"),
    (b'a LOGIN "unterminated', "unterminated quoted"),
    (b'a LOGIN "bad\\escape" x', "bad escape"),
    (b"a SEARCH " + b"NOT " * 40 + b"ALL", "nested too deeply"),
    (b"a SEARCH SINCE 31-Feb-2020", "bad date"),
    (b"a SEARCH CHARSET KOI8-R ALL", "BADCHARSET"),
    (b"a STORE 1 FLAGS.LOUD (\\Seen)", "bad STORE action"),
    (b"a UID LOGIN x y", "is not a command"),
    (b"a FROBNICATE", "unknown command"),
    (b"a NOOP extra", "unexpected characters"),
    (b"+ NOOP", "invalid tag"),
    (b"", "invalid tag"),
]


@pytest.mark.parametrize(("line", "reason"), HOSTILE, ids=[h[1] + ":" + h[0][:24].decode("latin-1") for h in HOSTILE])
def test_hostile_commands_are_bad_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(line)
    assert reason in caught.value.text


# ---- responses ------------------------------------------------------------------------------


def test_serializer_quotes_escapes_and_falls_back_to_literals() -> None:
    assert quote('say "hi"\\') == b'"say \\"hi\\"\\\\"'
    assert quote("Léa") == b"{4}\r\nL\xc3\xa9a"  # 8-bit: a literal, never a raw quoted string
    assert quote(b"two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert serialize([Atom("\\Seen"), None, 3, "x", ["a"]]) == b'(\\Seen NIL 3 "x" ("a"))'
    assert format_datetime(dt.datetime(2026, 11, 2, 9, 5, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == "02-Nov-2026 09:05:00 +0100"


@pytest.mark.parametrize(
    "line",
    [
        b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 9223372036854775808)",
        b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 99999999999999999999)",
        b"a STORE 1 (UNCHANGEDSINCE 9223372036854775808) +FLAGS (\\Seen)",
        b"a SEARCH MODSEQ 9223372036854775808",
        b"a SEARCH LARGER 99999999999999999999",
        "a FETCH \u0661 (FLAGS)".encode(),  # an Arabic-Indic digit one
        "a SEARCH LARGER \u0661\u0662".encode(),
    ],
)
def test_numbers_past_what_a_column_holds_are_bad_commands(line: bytes) -> None:
    """Numbers are ASCII digits and at most 63 bits (RFC 7162's mod-sequences): a bigger one
    reached the database and dropped the session with no BYE."""
    with pytest.raises(ParseError):
        parse(line)
    assert parse(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 9223372036854775807)").args.changed_since == 2**63 - 1
