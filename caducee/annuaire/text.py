"""Text folding for directory search: case- and accent-insensitive, one space between words."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_SEPARATORS = re.compile(r"[\s'’\-]+")


def _build_table() -> dict[int, str]:
    """Map each Latin letter with a diacritic (U+00C0..U+024F) to its base letters, lower case.

    A translate table does in C what NFKD + filtering does per character in Python: the
    importers fold three strings per row of a 535,000-row file.
    """
    table: dict[int, str] = {}
    for code in range(0xC0, 0x250):
        char = chr(code)
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        if base != char and base.isascii():
            table[code] = base.lower()
    table.update({ord("Œ"): "oe", ord("œ"): "oe", ord("Æ"): "ae", ord("æ"): "ae", ord("ß"): "ss"})
    return table


_TABLE = _build_table()


@lru_cache(maxsize=1 << 16)
def fold(text: str) -> str:
    """ "Pharmacie de l'Église" -> "pharmacie de l eglise": what users type must match what
    the directory spells, whatever the accents, case, apostrophes or hyphens.

    Cached (bounded): names of cities and structures repeat across a directory file.
    """
    if not text:
        return ""
    folded = text.translate(_TABLE)
    if not folded.isascii():  # a character outside the table: fall back to full decomposition
        folded = "".join(c for c in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(c))
    return _SEPARATORS.sub(" ", folded).strip().lower()
