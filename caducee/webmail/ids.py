"""Ids taken from URLs: parsed strictly, bounded to what the columns can hold.

A route declares its ids as text and parses them here. Python's `int()` takes "+1",
"1_000", " 1", full-width and Arabic-Indic digits, and numbers of any size; a number
beyond a column's range makes the database driver raise (asyncpg: "value out of int64
range"; SQLite: an OverflowError) and the person got a 500. Anything that is not a plain
decimal number within the column's range names nothing we hold: the caller answers 404.
"""

from __future__ import annotations

import re

_SIGNED = re.compile(r"-?[0-9]{1,19}")
_UNSIGNED = re.compile(r"[0-9]{1,19}")
INT64_MAX = 2**63 - 1  # BigId columns (messages, entries, conversations)
INDEX_MAX = 10_000  # a document's position in a message: the MIME parser allows far fewer parts


def conversation_key(text: str) -> int | None:
    """A conversation's key: its id, or minus the entry id of a message alone (never 0)."""
    if not _SIGNED.fullmatch(text):
        return None
    value = int(text)
    return value if value != 0 and -INT64_MAX <= value <= INT64_MAX else None


def row_id(text: str) -> int | None:
    """A stored row's id (a message): 1 to 2^63 - 1."""
    if not _UNSIGNED.fullmatch(text):
        return None
    value = int(text)
    return value if 1 <= value <= INT64_MAX else None


def index(text: str) -> int | None:
    """A position in a list: 0 to `INDEX_MAX`."""
    if not _UNSIGNED.fullmatch(text) or len(text) > 5:
        return None
    value = int(text)
    return value if value <= INDEX_MAX else None
