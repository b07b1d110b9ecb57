"""SEARCH keys as a table of cases, each answered by both evaluators.

The session answers flag/UID/number keys from the selected view (a closure, or a 256-byte
table for flag-only keys) and everything else from stored rows; both must agree with the
expected messages on the same folder.
"""

from __future__ import annotations

import datetime as dt

import pytest

from caducee.imap import search
from caducee.imap.grammar import RawCommand, parse_command
from caducee.mailbox.mailstore import FetchRow, flag_bits
from caducee.mime.summary import summarize

DAY = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
FOLDER = [  # (uid, flags, size, internal date, From, Subject)
    (3, "\\Seen", 1200, DAY, "Dr Dupont <dupont@hopital.fr>", "Résultats"),
    (5, "", 80_000, DAY + dt.timedelta(days=1), "Martin <martin@cabinet.fr>", "Ordonnance"),
    (8, "\\Seen \\Flagged", 500, DAY + dt.timedelta(days=2), "Dr Dupont <dupont@hopital.fr>", "Rendez-vous"),
    (9, "$Urgent \\Deleted", 2_000, DAY + dt.timedelta(days=3), "Labo <labo@bio.fr>", "Résultats complémentaires"),
]

CASES = [
    # (search keys, expected UIDs)
    ("ALL", [3, 5, 8, 9]),
    ("SEEN", [3, 8]),
    ("UNSEEN", [5, 9]),
    ("FLAGGED SEEN", [8]),
    ("OR FLAGGED DELETED", [8, 9]),
    ("NOT SEEN NOT DELETED", [5]),
    ("KEYWORD $Urgent", [9]),
    ("UNKEYWORD $urgent", [3, 5, 8]),
    ("UID 4:8", [5, 8]),
    ("UID 9:*", [9]),
    ("2:3", [5, 8]),
    ("* SEEN", []),
    ("NEW", []),
    ("(OR SEEN DELETED) UID 1:8", [3, 8]),
    ("FROM dupont", [3, 8]),
    ("FROM DUPONT UNFLAGGED", [3]),
    ('SUBJECT "résultats"', [3, 9]),
    ("LARGER 1500", [5, 9]),
    ("SMALLER 1000", [8]),
    ("SINCE 21-Nov-2026", [5, 8, 9]),
    ("BEFORE 21-Nov-2026", [3]),
    ("ON 22-Nov-2026", [8]),
    ("SENTON 20-Nov-2026", [3, 5, 8, 9]),
]


def rows() -> list[FetchRow]:
    out = []
    for uid, flags, size, date, sender, subject in FOLDER:
        raw = f"From: {sender}\r\nSubject: {subject}\r\nDate: Fri, 20 Nov 2026 08:00:00 +0000\r\n\r\nbody\r\n".encode()
        out.append(FetchRow(uid, flags, uid * 10, date, size, summarize(raw)))
    return out


def parse(keys: str):  # type: ignore[no-untyped-def]
    return parse_command(RawCommand([f"t SEARCH {keys}".encode()])).search()


@pytest.mark.parametrize(("keys", "expected"), CASES)
def test_search_keys(keys: str, expected: list[int]) -> None:
    key = parse(keys)
    stored = rows()
    largest_sequence, largest_uid = len(stored), stored[-1].uid
    by_rows = [row.uid for n, row in enumerate(stored, 1) if search.matches(key, search.Candidate(row, n, largest_sequence, largest_uid))]
    assert by_rows == expected
    if search.in_memory(key, headers=True):
        headers = {row.uid: row.summary.packed_headers for row in stored}  # type: ignore[union-attr]
        test = search.compile_memory(key, largest_sequence, largest_uid, headers)
        keywords = {row.uid: row.flags for row in stored if "$" in row.flags}
        in_memory = [row.uid for n, row in enumerate(stored, 1) if test(n, row.uid, flag_bits(row.flags), keywords.get(row.uid, ""))]
        assert in_memory == expected
        if search.flags_only(key):
            table = search.flag_table(test)
            assert [row.uid for row in stored if table[flag_bits(row.flags)]] == expected
