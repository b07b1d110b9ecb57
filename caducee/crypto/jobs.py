"""The S/MIME jobs the crypto process pool runs: protect what we send, open what we receive.

Each job is a plain function of picklable arguments (the material's paths, the message
bytes, certificates as PEM) returning a small frozen result, so that the accept pipeline
can hand it to another process and the event loop never does RSA, hashing or AES.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from caducee.crypto import material as loaded
from caducee.crypto import smime
from caducee.crypto.material import SmimeMaterial

# pyHanko logs every failed validation with a traceback; a refused signature is an
# ordinary outcome here, answered with its reason, not an error of the server.
logging.getLogger("pyhanko").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Protected:
    signed: bytes  # readable, signed: what mailboxes whose keys we hold receive
    enveloped: bytes | None  # signed then encrypted to every certificate given
    signed_by: str  # the signing certificate's subject
    pid: int  # the process that did the work (tests show it is not the event loop's)


@dataclass(frozen=True)
class Opened:
    readable: bytes | None  # decrypted and verified; None when none of our keys opens it
    verified: bool  # the signature was checked (False only when it could not be reached)
    signed_by: str | None
    pid: int
    not_encrypted_to: tuple[str, ...] = ()  # held recipients who cannot read it (none of our keys opens it)


def protect(material: SmimeMaterial, message: bytes, sender: str, recipient_pems: list[bytes]) -> Protected:
    """Sign `message` as `sender` (its own key when held, else the operator's), then
    encrypt it to every certificate in `recipient_pems` (no envelope when empty)."""
    signer = loaded.held_signer(material, sender) or loaded.operator_signer(material)
    signed = smime.sign(message, signer)
    certificates = list(
        {cert.fingerprint(hashes.SHA256()): cert for cert in (x509.load_pem_x509_certificate(p) for p in recipient_pems)}.values()
    )
    enveloped = smime.encrypt(signed, certificates) if certificates else None
    return Protected(signed, enveloped, signer.cert.subject.rfc4514_string(), os.getpid())


def open_inbound(material: SmimeMaterial, message: bytes, from_address: str, held_recipients: list[str]) -> Opened:
    """Decrypt with one of `held_recipients`' keys if encrypted, then verify the signature.

    Raises SmimeError (with its 5.7.x reply) for a signature that is missing, broken,
    untrusted, expired or revoked, for outer headers that differ from the signed ones, for
    a signer that may not sign for `from_address`. Encrypted mail for recipients who keep their own keys cannot be
    opened here: it is returned unopened (`readable` None) for their client to check, and
    `not_encrypted_to` names the held recipients, who could not read it. Once one held key
    opens it, every held recipient gets the readable form.
    """
    current = message
    if smime.is_encrypted(current):
        ids = smime.recipient_ids(current)
        signers = {address: loaded.held_signer(material, address) for address in held_recipients}
        readers = [s for s in signers.values() if s is not None and smime.is_recipient(s.cert, ids)]
        if not readers:  # none of our keys opens it: only recipients with their own keys can read it
            return Opened(None, False, None, os.getpid(), tuple(held_recipients))
        current = smime.decrypt(current, readers[0].cert, readers[0].key)
    return _verified(material, current, from_address)


def _verified(material: SmimeMaterial, current: bytes, from_address: str) -> Opened:
    roots, intermediates = loaded.anchors_and_intermediates(material)
    verified = smime.verify_sync(current, anchors=roots, intermediates=intermediates, crls=loaded.crls(material))
    if not smime.may_sign_for(verified.signer, from_address):
        raise smime.SmimeError(
            "5.7.5",
            "la signature n'est pas celle de l'expéditeur",
            f"the signing certificate ({verified.signer.subject.rfc4514_string()}) is not {from_address}'s",
        )
    return Opened(current, True, verified.signer.subject.rfc4514_string(), os.getpid())
