"""S/MIME (RFC 8551): sign then encrypt with `cryptography`, verify with pyHanko, decrypt.

Signing wraps the whole message as message/rfc822 (header protection, RFC 8551 3.1), so
a receiver can check that the outer From/To/Subject are the ones the sender signed.
Verification goes through pyHanko's CMS validation with explicit trust anchors and CRLs
(`cryptography` has no verifier): a chain that does not reach an anchor, a revoked or
expired certificate, or a digest that does not match is a refusal, never a warning.
Every function here is CPU work without I/O, to be run in a process pool.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from caducee.policies.facts import Decision

PROTECTED_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID")
_OUTER_COPY = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "X-MSS-MES",
               "X-MSS-CODECDA", "X-MSS-INS", "Disposition-Notification-To")  # fmt: skip
_BOUNDARY = re.compile(rb'boundary="?([^";\r\n]+)"?', re.I)


class SmimeError(Exception):
    """A message that fails S/MIME checks; `decision` carries the 5.7.x reply and texts."""

    def __init__(self, enhanced: str, text_fr: str, text_en: str) -> None:
        self.decision = Decision(accepted=False, rule="smime", code=550, enhanced=enhanced, text_fr=text_fr, text_en=text_en)
        super().__init__(self.decision.smtp_reply)


@dataclass(frozen=True)
class Signer:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...] = ()


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _split(message: bytes) -> tuple[bytes, bytes]:
    end = message.find(b"\r\n\r\n")
    return (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])


def _outer_headers(message: bytes) -> bytes:
    """The headers a receiver needs outside the protected part, as they were (folding kept)."""
    head, _ = _split(message)
    lines, keep = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if keep:
                lines.append(line)
            continue
        name = line.split(b":", 1)[0].decode("ascii", "replace").strip()
        keep = name.lower() in {h.lower() for h in _OUTER_COPY}
        if keep:
            lines.append(line)
    return b"\r\n".join(lines) + b"\r\n" if lines else b""


def sign(message: bytes, signer: Signer) -> bytes:
    """The message signed (multipart/signed, SHA-256, detached), headers protected."""
    inner = b"Content-Type: message/rfc822\r\n\r\n" + _crlf(message)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(inner).add_signer(signer.cert, signer.key, hashes.SHA256())
    for cert in signer.chain:
        builder = builder.add_certificate(cert)
    signed = _crlf(builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]))
    return _outer_headers(message) + signed


def encrypt(message: bytes, recipients: list[x509.Certificate]) -> bytes:
    """The message enveloped (AES-256-CBC, RSA key transport) to every certificate given."""
    if not recipients:
        raise ValueError("no recipient certificate to encrypt to")
    head, body = _split(_crlf(message))
    mime = [line for line in head.split(b"\r\n") if line.lower().startswith((b"content-type", b"content-transfer-encoding"))]
    entity = b"\r\n".join(mime) + b"\r\n\r\n" + body if mime else _crlf(message)
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(entity).set_content_encryption_algorithm(algorithms.AES256)
    for cert in recipients:
        builder = builder.add_recipient(cert)
    enveloped = _crlf(builder.encrypt(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.Binary]))
    return _outer_headers(message) + enveloped


def sign_and_encrypt(message: bytes, signer: Signer, recipients: list[x509.Certificate]) -> bytes:
    return encrypt(sign(message, signer), recipients)


def is_encrypted(message: bytes) -> bool:
    head, _ = _split(message)
    return b"application/pkcs7-mime" in head.lower() or b"application/x-pkcs7-mime" in head.lower()


def is_signed(message: bytes) -> bool:
    head, _ = _split(message)
    lowered = head.lower()
    return b"multipart/signed" in lowered and b"pkcs7-signature" in lowered


def decrypt(message: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    """The decrypted entity, with the outer headers put back in front of it."""
    try:
        inner = pkcs7.pkcs7_decrypt_smime(_crlf(message), cert, key, [])
    except ValueError as exc:
        raise SmimeError("5.7.5", "le message ne peut pas être déchiffré pour ce destinataire",
                         f"the message cannot be decrypted for this recipient ({exc})") from None  # fmt: skip
    inner = _crlf(inner)
    head, _ = _split(inner)
    outer = _outer_headers(message)
    ours = {line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if b":" in line}
    kept = b"".join(line + b"\r\n" for line in outer.split(b"\r\n") if line and line.split(b":", 1)[0].lower() not in ours)
    return kept + inner


@dataclass(frozen=True)
class Verified:
    """A verified message: who signed it and the protected inner message (or entity)."""

    signer: x509.Certificate
    inner: bytes


def _signed_parts(message: bytes) -> tuple[bytes, bytes]:
    """(signed entity exactly as on the wire, DER signature) of a multipart/signed message."""
    head, body = _split(message)
    found = _BOUNDARY.search(head)
    if not found:
        raise SmimeError("5.7.5", "la signature S/MIME est illisible", "unreadable S/MIME signature (no boundary)")
    delimiter = b"--" + found.group(1)
    parts = body.split(b"\r\n" + delimiter)
    first = body.find(delimiter + b"\r\n")
    if first < 0 or len(parts) < 3:
        raise SmimeError("5.7.5", "la signature S/MIME est illisible", "unreadable S/MIME signature (parts missing)")
    start = first + len(delimiter) + 2
    end = body.find(b"\r\n" + delimiter, start)
    entity = body[start:end]
    signature_part = body[end + 2 + len(delimiter) :]
    _, sig_body = _split(signature_part.lstrip(b"\r\n"))
    sig_body = sig_body.split(b"\r\n" + delimiter)[0]
    try:
        der = base64.b64decode(b"".join(sig_body.split()), validate=True)
    except ValueError:
        raise SmimeError("5.7.5", "la signature S/MIME est illisible", "unreadable S/MIME signature (bad base64)") from None
    return entity, der


def _headers(raw: bytes) -> dict[str, str]:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return {name.lower(): " ".join((parsed.get(name) or "").split()) for name in PROTECTED_HEADERS}


def _addresses(value: str) -> list[str]:
    return sorted(address.lower() for _, address in getaddresses([value]) if address)


async def verify(message: bytes, *, anchors: list[x509.Certificate], crls: list[bytes],
                 intermediates: list[x509.Certificate] = (), at: dt.datetime | None = None) -> Verified:  # type: ignore[assignment]  # fmt: skip
    """Verify a signed message against `anchors` and `crls`; raise SmimeError otherwise."""
    from asn1crypto import cms as asn1_cms
    from asn1crypto import x509 as asn1_x509
    from pyhanko.sign.validation.generic_cms import async_validate_detached_cms
    from pyhanko.sign.validation.settings import KeyUsageConstraints
    from pyhanko_certvalidator import ValidationContext

    message = _crlf(message)
    if not is_signed(message):
        raise SmimeError("5.7.1", "le message n'est pas signé : la signature S/MIME est obligatoire",
                         "the message is not signed: an S/MIME signature is required")  # fmt: skip
    entity, der = _signed_parts(message)
    try:
        signed_data = asn1_cms.ContentInfo.load(der)["content"]
    except ValueError:
        raise SmimeError("5.7.5", "la signature S/MIME est illisible", "unreadable S/MIME signature (bad CMS)") from None

    def as_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))

    der_crls = [x509.load_pem_x509_crl(c).public_bytes(serialization.Encoding.DER) if c.lstrip().startswith(b"-----") else c
                for c in crls]  # fmt: skip
    context = ValidationContext(
        trust_roots=[as_asn1(c) for c in anchors], other_certs=[as_asn1(c) for c in intermediates], crls=der_crls,
        allow_fetching=False, revocation_mode="hard-fail", moment=at,
    )  # fmt: skip
    # S/MIME signing keys assert digitalSignature and emailProtection (pyHanko's default
    # policy is the PDF one, which wants nonRepudiation).
    usage = KeyUsageConstraints(key_usage={"digital_signature"}, extd_key_usage={"email_protection"})
    status = await async_validate_detached_cms(entity, signed_data, signer_validation_context=context, key_usage_settings=usage)
    if not status.intact or not status.valid:
        raise SmimeError("5.7.7", "le message a été modifié après sa signature", "the message was altered after it was signed")
    if status.revoked:
        raise SmimeError("5.7.5", "le certificat de l'expéditeur est révoqué", "the sender's certificate is revoked")
    if not status.trusted:
        reason = str(getattr(status, "trust_problem_indic", "") or "untrusted")
        if "EXPIRED" in reason.upper() or "NOT_YET_VALID" in reason.upper():
            raise SmimeError("5.7.5", "le certificat de l'expéditeur n'est pas en cours de validité",
                             "the sender's certificate is expired or not yet valid")  # fmt: skip
        if "REVOKED" in reason.upper():
            raise SmimeError("5.7.5", "le certificat de l'expéditeur est révoqué", "the sender's certificate is revoked")
        raise SmimeError("5.7.5", "la signature ne remonte pas à une autorité de confiance de l'espace MSSanté",
                         f"the signature does not chain to a trusted anchor ({reason})")  # fmt: skip
    signer_cert = x509.load_der_x509_certificate(status.signing_cert.dump())
    inner = entity
    entity_head, entity_body = _split(entity)
    if b"message/rfc822" in entity_head.lower():
        inner = entity_body
        outer, protected = _headers(_split(message)[0] + b"\r\n"), _headers(_split(inner)[0] + b"\r\n")
        for name in ("from", "to", "cc"):
            if outer[name] and _addresses(outer[name]) != _addresses(protected[name]):
                raise SmimeError("5.7.7", f"l'en-tête {name.capitalize()} diffère de celui qui a été signé",
                                 f"the {name.capitalize()} header differs from the signed one")  # fmt: skip
        if outer["subject"] and outer["subject"] != protected["subject"]:
            raise SmimeError("5.7.7", "l'objet diffère de celui qui a été signé", "the Subject header differs from the signed one")
    return Verified(signer=signer_cert, inner=inner)


def verify_sync(message: bytes, **kwargs: object) -> Verified:
    """`verify` for a worker process (no event loop there)."""
    return asyncio.run(verify(message, **kwargs))  # type: ignore[arg-type]
