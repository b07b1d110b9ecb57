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
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

PROTECTED_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID")
_OUTER_COPY = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "X-MSS-MES",
    "X-MSS-CODECDA",
    "X-MSS-INS",
    "Disposition-Notification-To",
)
_BOUNDARY = re.compile(rb'boundary="?([^";\r\n]+)"?', re.I)


class SmimeError(Exception):
    """A message that fails S/MIME checks: the 5.7.x enhanced code and the texts for people
    (the gateway turns it into its refusal; crypto decides nothing about delivery)."""

    def __init__(self, enhanced: str, text_fr: str, text_en: str) -> None:
        self.enhanced = enhanced
        self.text_fr = text_fr
        self.text_en = text_en
        super().__init__(f"{enhanced} {text_en}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # crosses the process pool intact
        return (SmimeError, (self.enhanced, self.text_fr, self.text_en))


@dataclass(frozen=True)
class Signer:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...] = ()


def _crlf(data: bytes) -> bytes:
    """Canonical CRLF line ends; counting first spares two copies of what is already CRLF."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
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


def _base64_lines(der: bytes) -> bytes:
    """Base64 in 76-character CRLF lines (RFC 2045): one C encode, then slicing."""
    encoded = base64.b64encode(der)
    return b"\r\n".join([encoded[i : i + 76] for i in range(0, len(encoded), 76)]) + b"\r\n"


def sign(message: bytes, signer: Signer) -> bytes:
    """The message signed (multipart/signed, SHA-256, detached), headers protected.

    `cryptography` makes the CMS structure (DER); the MIME around it is written here,
    because its S/MIME encoder goes through the `email` package line by line, which costs
    more than the signature itself on a large message.
    """
    inner = b"Content-Type: message/rfc822\r\n\r\n" + _crlf(message)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(inner).add_signer(signer.cert, signer.key, hashes.SHA256())
    for cert in signer.chain:
        builder = builder.add_certificate(cert)
    der = builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])
    boundary = _boundary(inner)
    signed = b"".join(
        [
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg="sha-256"; boundary="',
            boundary,
            b'"\r\n',
            b"\r\nThis is an S/MIME signed message\r\n\r\n--",
            boundary,
            b"\r\n",
            inner,
            b"\r\n--",
            boundary,
            b"\r\n",
            b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\nContent-Transfer-Encoding: base64\r\n',
            b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n',
            _base64_lines(der),
            b"\r\n--",
            boundary,
            b"--\r\n",
        ]
    )
    return _outer_headers(message) + signed


def _boundary(content: bytes) -> bytes:
    while True:
        boundary = b"----=_caducee_" + os.urandom(16).hex().encode()
        if boundary not in content:
            return boundary


def encrypt(message: bytes, recipients: list[x509.Certificate]) -> bytes:
    """The message enveloped (AES-256-CBC, RSA key transport) to every certificate given."""
    return _encrypt(_crlf(message), recipients)


def _encrypt(message: bytes, recipients: list[x509.Certificate]) -> bytes:
    """`encrypt` of a message already in CRLF form."""
    if not recipients:
        raise ValueError("no recipient certificate to encrypt to")
    head, body = _split(message)
    mime = [line for line in head.split(b"\r\n") if line.lower().startswith((b"content-type", b"content-transfer-encoding"))]
    entity = b"\r\n".join(mime) + b"\r\n\r\n" + body if mime else message
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(entity).set_content_encryption_algorithm(algorithms.AES256)
    for cert in recipients:
        builder = builder.add_recipient(cert)
    der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    enveloped = b"".join(
        [
            b'MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n',
            b'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="smime.p7m"\r\n\r\n',
            _base64_lines(der),
        ]
    )
    return _outer_headers(message) + enveloped


def sign_and_encrypt(message: bytes, signer: Signer, recipients: list[x509.Certificate]) -> bytes:
    return _encrypt(sign(message, signer), recipients)  # what `sign` returns is CRLF already


def is_encrypted(message: bytes) -> bool:
    head, _ = _split(message)
    return b"application/pkcs7-mime" in head.lower() or b"application/x-pkcs7-mime" in head.lower()


def is_signed(message: bytes) -> bool:
    head, _ = _split(message)
    lowered = head.lower()
    return b"multipart/signed" in lowered and b"pkcs7-signature" in lowered


def _enveloped_der(message: bytes) -> bytes:
    """The DER of an application/pkcs7-mime body (base64 decoded in C)."""
    _, body = _split(_crlf(message))
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except ValueError:
        raise SmimeError("5.7.5", "le message chiffré est illisible", "unreadable S/MIME enveloped data (bad base64)") from None


def recipient_ids(message: bytes) -> set[tuple[str, object]]:
    """Whom an enveloped message is encrypted to: ("serial", (issuer DER, serial)) or ("ski", bytes).

    Lets the receiver pick the one key of its own that opens the message without trying
    every key it holds.
    """
    from asn1crypto import cms as asn1_cms

    der = _enveloped_der(message)
    try:
        info = asn1_cms.ContentInfo.load(der)
        recipients = info["content"]["recipient_infos"]
        found: set[tuple[str, object]] = set()
        for recipient in recipients:
            if recipient.name != "ktri":
                continue
            rid = recipient.chosen["rid"]
            if rid.name == "issuer_and_serial_number":
                found.add(("serial", (rid.chosen["issuer"].dump(), rid.chosen["serial_number"].native)))
            else:
                found.add(("ski", rid.chosen.native))
        return found
    except (ValueError, KeyError, TypeError):
        raise SmimeError("5.7.5", "le message chiffré est illisible", "unreadable S/MIME enveloped data") from None


def is_recipient(cert: x509.Certificate, ids: set[tuple[str, object]]) -> bool:
    """Whether `cert` is one of the recipients `recipient_ids` found."""
    if ("serial", (cert.issuer.public_bytes(), cert.serial_number)) in ids:
        return True
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return False
    return ("ski", ski) in ids


def may_sign_for(cert: x509.Certificate, address: str) -> bool:
    """Whether a signature by `cert` vouches for mail From `address`.

    The mailbox's own certificate (rfc822Name = the address), or an organisation
    certificate whose dNSName is the address's domain (an operator signing for the
    professionals whose keys it does not hold).
    """
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    address = address.lower()
    domain = address.rpartition("@")[2]
    return address in {n.lower() for n in names.get_values_for_type(x509.RFC822Name)} or domain in {
        n.lower() for n in names.get_values_for_type(x509.DNSName)
    }


def decrypt(message: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    """The decrypted entity, with the outer headers put back in front of it."""
    try:
        inner = pkcs7.pkcs7_decrypt_der(_enveloped_der(message), cert, key, [])
    except ValueError as exc:
        raise SmimeError(
            "5.7.5",
            "le message ne peut pas être déchiffré pour ce destinataire",
            f"the message cannot be decrypted for this recipient ({exc})",
        ) from None
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


async def verify(
    message: bytes,
    *,
    anchors: list[x509.Certificate],
    crls: list[bytes],
    intermediates: Sequence[x509.Certificate] = (),
    at: dt.datetime | None = None,
) -> Verified:
    """Verify a signed message against `anchors` and `crls`; raise SmimeError otherwise."""
    from asn1crypto import cms as asn1_cms
    from asn1crypto import x509 as asn1_x509
    from pyhanko.sign.validation.generic_cms import async_validate_detached_cms
    from pyhanko.sign.validation.settings import KeyUsageConstraints
    from pyhanko_certvalidator import ValidationContext

    message = _crlf(message)
    if not is_signed(message):
        raise SmimeError(
            "5.7.1",
            "le message n'est pas signé : la signature S/MIME est obligatoire",
            "the message is not signed: an S/MIME signature is required",
        )
    entity, der = _signed_parts(message)
    try:
        signed_data = asn1_cms.ContentInfo.load(der)["content"]
    except ValueError:
        raise SmimeError("5.7.5", "la signature S/MIME est illisible", "unreadable S/MIME signature (bad CMS)") from None

    def as_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))

    der_crls = [x509.load_pem_x509_crl(c).public_bytes(serialization.Encoding.DER) if c.lstrip().startswith(b"-----") else c for c in crls]
    context = ValidationContext(
        trust_roots=[as_asn1(c) for c in anchors],
        other_certs=[as_asn1(c) for c in intermediates],
        crls=der_crls,
        allow_fetching=False,
        revocation_mode="hard-fail",
        moment=at,
    )
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
        if any(word in reason.upper() for word in ("EXPIRED", "NOT_YET_VALID", "OUT_OF_BOUNDS")):
            raise SmimeError(
                "5.7.5",
                "le certificat de l'expéditeur n'est pas en cours de validité",
                "the sender's certificate is expired or not yet valid",
            )
        if "REVOKED" in reason.upper():
            raise SmimeError("5.7.5", "le certificat de l'expéditeur est révoqué", "the sender's certificate is revoked")
        raise SmimeError(
            "5.7.5",
            "la signature ne remonte pas à une autorité de confiance de l'espace MSSanté",
            f"the signature does not chain to a trusted anchor ({reason})",
        )
    signer_cert = x509.load_der_x509_certificate(status.signing_cert.dump())
    inner = entity
    entity_head, entity_body = _split(entity)
    if b"message/rfc822" in entity_head.lower():  # RFC 8551 header protection
        inner = entity_body
    # Headers inside the signature (a wrapped message, or a signed entity that carries
    # them itself) must match the outer ones a mail client shows.
    outer, protected = _headers(_split(message)[0] + b"\r\n"), _headers(_split(inner)[0] + b"\r\n")
    for name in ("from", "to", "cc"):
        if outer[name] and protected[name] and _addresses(outer[name]) != _addresses(protected[name]):
            raise SmimeError(
                "5.7.7",
                f"l'en-tête {name.capitalize()} diffère de celui qui a été signé",
                f"the {name.capitalize()} header differs from the signed one",
            )
    if outer["subject"] and protected["subject"] and outer["subject"] != protected["subject"]:
        raise SmimeError("5.7.7", "l'objet diffère de celui qui a été signé", "the Subject header differs from the signed one")
    return Verified(signer=signer_cert, inner=inner)


def verify_sync(message: bytes, **kwargs: object) -> Verified:
    """`verify` for a worker process (no event loop there)."""
    return asyncio.run(verify(message, **kwargs))  # type: ignore[arg-type]
