"""Inspecting a raw message before anything is stored: hostile input refused, facts extracted.

Every path into the gateway (SMTP, webmail, campaign API) goes through `inspect_message`,
so a bare LF or an 8-bit header is refused the same way whoever sends it.
"""

from __future__ import annotations

import email.policy
import re
import uuid
from dataclasses import dataclass
from email import errors as email_errors
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import formatdate, getaddresses

from caducee.mime.headers import decoded_header
from caducee.policies import refuse

MAX_LINE = 998  # RFC 5322 section 2.1.1, without CRLF

_MSG_ID = re.compile(r"<[^<>\s]+>")
_SERIOUS_DEFECTS = (
    email_errors.NoBoundaryInMultipartDefect,
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.MultipartInvariantViolationDefect,
    email_errors.MissingHeaderBodySeparatorDefect,
    email_errors.InvalidMultipartContentTransferEncodingDefect,
)
_PARSER = BytesParser(policy=email.policy.compat32)
_HEADER_PARSER = BytesHeaderParser(policy=email.policy.compat32)


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

    @property
    def size(self) -> int:
        return len(self.raw)


def _message_ids(value: str | None) -> list[str]:
    return _MSG_ID.findall(value or "")


def _scan_parts(message: Message) -> tuple[bool, bool]:
    """(has content, has attachment): is there any non-blank text or any attached document?"""
    if not message.is_multipart() and message.get_content_maintype() == "text" and not message.get_filename():
        payload = message.get_payload()
        return bool(isinstance(payload, str) and payload.strip()), False
    has_content = has_attachment = False
    for part in message.walk():
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        if content_type in {"application/pkcs7-mime", "application/x-pkcs7-mime"}:
            return True, True  # encrypted end to end: we cannot look inside, assume content
        if disposition == "attachment" or part.get_filename() or part.get_content_maintype() in {"application", "image", "audio", "video"}:
            if content_type not in {"application/pkcs7-signature", "application/x-pkcs7-signature"}:
                has_attachment = True
                has_content = True
            continue
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True) or b""
            if payload.strip():
                has_content = True
    return has_content, has_attachment


def inspect_message(raw: bytes, *, max_size: int, hostname: str, add_missing_headers: bool) -> InspectedMessage:
    """Check `raw` and extract the facts the rules need; raise MessageRejected if hostile."""
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
    # Most mail is one text part: its headers say all we need. Only a MIME tree is parsed
    # whole (attachments, structure defects), which is most of the cost of inspection.
    message = _HEADER_PARSER.parsebytes(head + b"\r\n")
    if message.get_content_maintype() in {"multipart", "message"}:
        message = _PARSER.parsebytes(raw)
    else:
        message.set_payload(raw[head_end + 4 :].decode("ascii", "surrogateescape") if head_end >= 0 else "")
    serious = [defect for part in message.walk() for defect in part.defects if isinstance(defect, _SERIOUS_DEFECTS)]
    serious += [defect for defect in message.defects if isinstance(defect, _SERIOUS_DEFECTS)]
    if serious:
        name = type(serious[0]).__name__
        raise MessageRejected(554, "5.6.0", f"structure MIME invalide ({name})", f"malformed MIME structure ({name})")
    from_headers = message.get_all("From") or []
    from_addresses = [address.lower() for _name, address in getaddresses(from_headers) if address]
    if len(from_headers) != 1 or not from_addresses:
        raise MessageRejected(
            550, "5.6.0", "le message doit avoir un et un seul en-tête From", "the message must have exactly one From header"
        )
    added: list[str] = []
    message_ids = _message_ids(message.get("Message-ID"))
    if message_ids:
        message_id = message_ids[0]
    elif add_missing_headers:
        message_id = f"<{uuid.uuid4().hex}@{hostname}>"
        added.append(f"Message-ID: {message_id}")
    else:
        raise MessageRejected(550, "5.6.0", "le message n'a pas de Message-ID", "the message has no Message-ID header")
    if add_missing_headers and not message.get("Date"):
        added.append(f"Date: {formatdate(localtime=False)}")
    references = _message_ids(message.get("In-Reply-To")) + list(reversed(_message_ids(" ".join(message.get_all("References") or []))))
    has_content, has_attachment = _scan_parts(message)
    if added:
        raw = "".join(f"{line}\r\n" for line in added).encode("ascii") + raw
    mdn = message.get("Disposition-Notification-To")
    return InspectedMessage(
        raw=raw,
        subject=decoded_header(message.get("Subject")),
        message_id=message_id,
        from_addresses=from_addresses,
        references=references,
        mss_mes_fin=(message.get("X-MSS-MES") or "").strip().upper() == "FIN",
        has_content=has_content,
        has_attachment=has_attachment,
        mdn_to=mdn.strip() if mdn else None,
        is_receipt=message.get_content_type() == "multipart/report"
        and (message.get_param("report-type") or "").lower() == "disposition-notification",
    )
