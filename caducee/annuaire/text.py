"""Text folding for directory search: case- and accent-insensitive, one space between words."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"[\s'’\-]+")


def fold(text: str) -> str:
    """"Pharmacie de l'Église" -> "pharmacie de l eglise": what users type must match what
    the directory spells, whatever the accents, case, apostrophes or hyphens."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _SPACES.sub(" ", stripped).strip().lower()
