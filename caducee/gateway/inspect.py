"""Inspecting a raw message before anything is stored: hostile input refused, facts extracted.

Every path into the gateway (SMTP, webmail, campaign API) goes through `inspect_message`,
so a bare LF or an 8-bit header is refused the same way whoever sends it.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate, getaddresses

from caducee.mime.headers import decoded_header
from caducee.mime.structure import Part, decoded, parse, walk_parts
from caducee.policies import refuse

MAX_LINE = 998  # RFC 5322 section 2.1.1, without CRLF
# Control characters in raw headers (HTAB aside; CR and LF are checked as line ends): NUL
# cannot be stored in a PostgreSQL text column at all, and none of them means anything in
# a header a person or a mail client reads. Refused the same on both databases.
_EMBEDDED_ADDRESS = re.compile(r"[\w.%+'-]+@[\w-]+(?:\.[\w-]+)+")
_AROUND_AT = re.compile(r"\s*@\s*")


def embedded_addresses(value: str) -> list[str]:
    """Every address a reader would see in a From value: its display names and comments
    decoded, folded to what they look like (NFKC turns a full-width "＠" into "@"), with the
    invisible format characters (zero-width spaces, direction marks) and the blanks around
    "@" removed, as a mail client's rendering hides them."""
    text = unicodedata.normalize("NFKC", decoded_header(value))
    text = _AROUND_AT.sub("@", "".join(ch for ch in text if unicodedata.category(ch) != "Cf"))
    return [found.lower() for found in _EMBEDDED_ADDRESS.findall(text)]


_HEADER_CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_MSG_ID = re.compile(r"<[^<>\s]+>")


class MessageRejected(Exception):
    """The message as a whole is refused; `decision` carries the SMTP codes and texts."""

    def __init__(self, code: int, enhanced: str, text_fr: str, text_en: str) -> None:
        self.decision = refuse("message-syntax", code, enhanced, text_fr, text_en)
        super().__init__(self.decision.smtp_reply)

    def __reduce__(self) -> tuple[type, tuple[int, str, str, str]]:  # crosses the process pool intact
        d = self.decision
        return (MessageRejected, (d.code, d.enhanced, d.text_fr, d.text_en))


@dataclass
class InspectedMessage:
    raw: bytes
    subject: str
    message_id: str
    from_addresses: list[str]
    references: list[str]  # In-Reply-To first, then References newest first
    mss_mes_fin: bool
    has_content: bool
    has_attachment: bool
    mdn_to: str | None
    is_receipt: bool = False  # multipart/report; report-type=disposition-notification
    # Every address the message claims to be from: From, Sender, Resent-From/-Sender, and
    # addresses written inside From's display name (what mail clients show as the sender).
    identity_addresses: list[str] = field(default_factory=list)
    tree: Part | None = None  # the parsed message (`caducee.mime.structure`): parsed once, reused by the summary
    # The content type of every leaf entity ("text/calendar", "application/pkcs7-mime"...), for
    # post-delivery consumers that only care about some: they skip the others without a read.
    content_types: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return len(self.raw)


def _message_ids(value: str | None) -> list[str]:
    return _MSG_ID.findall(value or "")


_SIGNATURE_TYPES = {("APPLICATION", "PKCS7-SIGNATURE"), ("APPLICATION", "X-PKCS7-SIGNATURE")}
_ENCRYPTED_TYPES = {("APPLICATION", "PKCS7-MIME"), ("APPLICATION", "X-PKCS7-MIME")}


def _scan_parts(root: Part) -> tuple[bool, bool]:
    """(has content, has attachment): is there any non-blank text or any attached document?"""
    if not root.children and root.message is None and root.content_type[0] == "TEXT" and not _filename(root):
        return bool(root.body_bytes.strip()), False
    has_content = has_attachment = False
    for part in walk_parts(root):
        if part.children or part.message is not None or part.content_type[0] == "MULTIPART":
            continue
        content_type = part.content_type
        if content_type in _ENCRYPTED_TYPES:
            return True, True  # encrypted end to end: we cannot look inside, assume content
        disposition = part.headers.params("content-disposition")[0]
        if disposition == "attachment" or _filename(part) or content_type[0] in {"APPLICATION", "IMAGE", "AUDIO", "VIDEO"}:
            if content_type not in _SIGNATURE_TYPES:
                has_attachment = has_content = True
            continue
        if content_type[0] == "TEXT" and not has_content:
            payload = decoded(part, part.body_bytes)
            if (payload if payload is not None else part.body_bytes).strip():
                has_content = True
    return has_content, has_attachment


def _leaf_types(root: Part) -> frozenset[str]:
    return frozenset(part.headers.get_content_type().lower() for part in walk_parts(root) if not part.children and part.message is None)


def _filename(part: Part) -> bool:
    names = dict(part.headers.params("content-disposition")[1]) | dict(part.headers.params("content-type")[1])
    return bool(names.get("filename") or names.get("name"))


def inspect_message(raw: bytes, *, max_size: int, hostname: str, add_missing_headers: bool) -> InspectedMessage:
    """Check `raw` and extract the facts the rules need; raise MessageRejected if hostile.

    The message is parsed once, here (`caducee.mime.structure`); the tree travels with the
    result, so that the summary stored beside each form reuses it.
    """
    if len(raw) > max_size:
        limit = max_size // (1024 * 1024)
        raise MessageRejected(
            552, "5.3.4", f"le message dépasse la taille maximale de {limit} Mo", f"message exceeds the maximum size of {limit} MB"
        )
    without_crlf = raw.replace(b"\r\n", b"")
    if b"\n" in without_crlf or b"\r" in without_crlf:
        raise MessageRejected(
            554,
            "5.6.0",
            "le message contient un CR ou un LF isolé (RFC 5321, 2.3.8)",
            "message contains a bare CR or LF (RFC 5321 section 2.3.8)",
        )
    if len(raw) > MAX_LINE and max(map(len, raw.split(b"\r\n"))) > MAX_LINE:
        raise MessageRejected(
            554,
            "5.6.0",
            f"une ligne du message dépasse {MAX_LINE} caractères",
            f"a line of the message is longer than {MAX_LINE} characters",
        )
    head_end = raw.find(b"\r\n\r\n")
    head = raw if head_end < 0 else raw[: head_end + 2]
    if not head.isascii():
        raise MessageRejected(
            554,
            "5.6.7",
            "les en-têtes contiennent des caractères non ASCII (encodez-les selon la RFC 2047)",
            "8-bit characters in headers; encode them as RFC 2047 words",
        )
    if _HEADER_CONTROLS.search(head):
        raise MessageRejected(
            554,
            "5.6.0",
            "les en-têtes contiennent un caractère de contrôle (NUL, échappement...)",
            "control characters (NUL, escape...) in headers",
        )
    root = parse(raw)
    if root.problems:
        problem = root.problems[0]
        raise MessageRejected(554, "5.6.0", f"structure MIME refusée ({problem})", f"malformed MIME structure ({problem})")
    headers = root.headers
    from_headers = headers.get_all("from")
    from_addresses = [address.lower() for _name, address in getaddresses(from_headers) if address]
    if len(from_headers) != 1 or not from_addresses:
        raise MessageRejected(
            550, "5.6.0", "le message doit avoir un et un seul en-tête From", "the message must have exactly one From header"
        )
    added: list[str] = []
    message_ids = _message_ids(headers.get("message-id"))
    if message_ids:
        message_id = message_ids[0]
    elif add_missing_headers:
        message_id = f"<{uuid.uuid4().hex}@{hostname}>"
        added.append(f"Message-ID: {message_id}")
    else:
        raise MessageRejected(550, "5.6.0", "le message n'a pas de Message-ID", "the message has no Message-ID header")
    if add_missing_headers and not headers.get("date"):
        added.append(f"Date: {formatdate(localtime=False)}")
    references = _message_ids(headers.get("in-reply-to")) + list(reversed(_message_ids(" ".join(headers.get_all("references")))))
    identity = list(from_addresses)
    for name in ("sender", "resent-from", "resent-sender"):
        identity += [address.lower() for _name, address in getaddresses(headers.get_all(name)) if address]
    for value in from_headers:  # an address written in a display name or a comment, as mail clients show it
        identity += embedded_addresses(value)
    has_content, has_attachment = _scan_parts(root)
    if added:
        prefix = "".join(f"{line}\r\n" for line in added).encode("ascii")
        raw = prefix + raw
        root = parse(raw)  # the headers we added are part of the message now (rare: most clients write both)
    mdn = headers.get("disposition-notification-to")
    content_type, params = headers.params("content-type")
    return InspectedMessage(
        raw=raw,
        subject=decoded_header(headers.get("subject")),
        message_id=message_id,
        from_addresses=from_addresses,
        references=references,
        mss_mes_fin=(headers.get("x-mss-mes") or "").strip().upper() == "FIN",
        has_content=has_content,
        has_attachment=has_attachment,
        mdn_to=mdn.strip() if mdn else None,
        identity_addresses=list(dict.fromkeys(identity)),
        is_receipt=content_type == "multipart/report" and dict(params).get("report-type", "").lower() == "disposition-notification",
        tree=root,
        content_types=_leaf_types(root),
    )
