"""Header values for people and for reuse: RFC 2047 words decoded, control characters gone.

A decoded value can hold what the raw header could not (an encoded CR, LF or NUL): every
place that shows a value or writes it into another message (a reply's Subject, a receipt,
a notice) takes it from here, so that no decoded control character reaches a page, a
header we write or a database column.
"""

from __future__ import annotations

import binascii
import re
from email import errors as email_errors
from email.header import decode_header, make_header

_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")
_SPACES = re.compile(r"[\t ]+")


def decoded_header(value: str | bytes | None) -> str:
    """A header value with its RFC 2047 words decoded; as it came if they are malformed.

    Control characters (decoded or raw) become spaces, and runs of blanks one space: the
    result is one printable line.
    """
    if not value:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        text = str(make_header(decode_header(text)))
    except (email_errors.HeaderParseError, UnicodeDecodeError, LookupError, binascii.Error, ValueError):
        pass
    return one_line(text)


def one_line(text: str) -> str:
    """`text` without control characters (each becomes a space), blanks collapsed, trimmed."""
    return _SPACES.sub(" ", _CONTROLS.sub(" ", text)).strip()


def search_text(value: str | bytes | None) -> str:
    """A header value as SEARCH compares it: decoded, case folded."""
    return decoded_header(value).casefold()
