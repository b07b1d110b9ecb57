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
from email.policy import EmailPolicy
from typing import Any

# C0, DEL and C1 (U+0085, NEL, is a line break to the `email` package), and the Unicode
# line and paragraph separators: none may survive into a header we write or a page.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
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


# Fields that hold message identifiers: the gateway threads on them byte for byte.
IDENTIFIER_FIELDS = frozenset({"message-id", "in-reply-to", "references", "original-message-id", "resent-message-id"})


class _MailPolicy(EmailPolicy):
    """SMTP's policy (CRLF, RFC 2047 words for text), except for message identifiers.

    The `email` package encodes any header line longer than 78 characters as RFC 2047
    words; for an identifier that turns `<...@...outlook.com>` into `=?utf-8?q?=3C...?=`,
    which names no message any more (a patient's reply to an Outlook user then threaded
    nowhere and was refused). Identifiers are folded between ids, never encoded.
    """

    def _fold(self, name: str, value: Any, refold_binary: bool = False) -> str:
        if name.lower() not in IDENTIFIER_FIELDS:
            return str(super()._fold(name, value, refold_binary))  # type: ignore[misc]  # not in typeshed
        lines, current = [], f"{name}:"
        for item in str(value).split():
            if len(current) + 1 + len(item) > (self.max_line_length or 998) and current != f"{name}:":
                lines.append(current)
                current = ""
            current += " " + item
        lines.append(current)
        return str(self.linesep).join(lines) + str(self.linesep)


MAIL_POLICY = _MailPolicy(linesep="\r\n")  # the policy of every message Caducée writes
