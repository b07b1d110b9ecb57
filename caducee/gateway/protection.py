"""The S/MIME stage of the accept pipeline: which form of a message each recipient gets.

Outbound (anything our users send): a message the client already signed or encrypted
passes untouched, end to end. Any other is signed (the sender's own key when Caducée
holds it, else the operator's certificate) and, for recipients who read with their own
keys (other operators' users, our professionals), encrypted to every recipient's
certificate from the annuaire and to the sender's. Mailboxes whose keys Caducée holds
get the signed form, sealed at rest like every body.

Inbound (MX): the signature must verify against the trust anchors (with CRLs) and be the
From address's own or its domain's organisation certificate. Encrypted mail is opened
with a held recipient's key; mail only our professionals' own keys can open is stored as
received, for their client to decrypt and check.

All crypto runs in the process pool; this module only decides and looks things up.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire.service import PartyInfo, certificates_for
from caducee.core.cpu import CpuPool
from caducee.crypto import jobs, smime
from caducee.crypto.material import SmimeMaterial
from caducee.policies import Decision, refuse


class WithoutCertificate(str, enum.Enum):
    """What to do for a recipient with no usable certificate in the annuaire (setting)."""

    REFUSE = "refuse"  # refuse every such recipient (5.7.5)
    REFUSE_REMOTE = "refuse-remote"  # refuse other operators' recipients; ours get at-rest encryption only
    DELIVER = "deliver"  # deliver signed, with at-rest encryption only


class Form(str, enum.Enum):
    AS_RECEIVED = "as-received"
    READABLE = "readable"  # signed (and decrypted, inbound): for mailboxes whose keys we hold
    ENVELOPED = "enveloped"  # signed then encrypted: for recipients who hold their own keys


@dataclass
class Protection:
    """The outcome: the stored forms, each recipient's form, and recipients refused."""

    forms: dict[Form, bytes] = field(default_factory=dict)
    form_of: dict[str, Form] = field(default_factory=dict)
    refused: dict[str, Decision] = field(default_factory=dict)
    worker_pid: int | None = None


def smime_refusal(error: smime.SmimeError) -> Decision:
    """An S/MIME failure as the gateway's refusal (550 with the crypto's 5.7.x code and texts)."""
    return refuse("smime", 550, error.enhanced, error.text_fr, error.text_en)


def no_certificate(recipient: str) -> Decision:
    return refuse(
        "smime",
        550,
        "5.7.5",
        f"aucun certificat de chiffrement n'est publié dans l'annuaire pour {recipient}",
        f"no encryption certificate is published in the annuaire for {recipient}",
    )


class SmimeStage:
    def __init__(
        self,
        engine: AsyncEngine,
        material: SmimeMaterial,
        pool: CpuPool,
        *,
        without_certificate: WithoutCertificate = WithoutCertificate.REFUSE_REMOTE,
        cache_seconds: float = 5.0,
    ) -> None:
        self.engine = engine
        self.material = material
        self.pool = pool
        self.without_certificate = without_certificate
        self.cache_seconds = cache_seconds
        self._certificates: dict[str, tuple[float, list[bytes]]] = {}
        self._held: dict[str, tuple[float, bool]] = {}

    # ---- look-ups (cached like the rest of the annuaire) --------------------------------

    async def certificates(self, addresses: list[str]) -> dict[str, list[bytes]]:
        """Published, currently valid certificates (PEM) per address, newest first."""
        now = time.monotonic()
        missing = [a for a in addresses if a not in self._certificates or now - self._certificates[a][0] >= self.cache_seconds]
        if missing:
            async with self.engine.connect() as conn:
                fresh = await certificates_for(conn, missing)
            if len(self._certificates) > 100_000:
                self._certificates.clear()
            for address in missing:
                self._certificates[address] = (now, [pem.encode("ascii") for pem in fresh.get(address, [])])
        return {a: self._certificates[a][1] for a in addresses}

    def holds_key(self, address: str) -> bool:
        now = time.monotonic()
        cached = self._held.get(address)
        if cached is None or now - cached[0] >= self.cache_seconds:
            cached = (now, self.material.held_pair(address) is not None)
            self._held[address] = cached
        return cached[1]

    # ---- outbound -------------------------------------------------------------------------

    async def protect(self, raw: bytes, sender: str, recipients: list[str], parties: dict[str, PartyInfo]) -> Protection:
        if smime.is_signed(raw) or smime.is_encrypted(raw):  # protected by the sender's client: end to end
            return Protection({Form.AS_RECEIVED: raw}, {r: Form.AS_RECEIVED for r in recipients})
        certificates = await self.certificates([*recipients, sender])
        result = Protection()
        for rcpt in recipients:
            local = parties[rcpt].is_local
            if local and parties[rcpt].mailbox_id is not None and self.holds_key(rcpt):
                result.form_of[rcpt] = Form.READABLE
            elif certificates[rcpt]:
                result.form_of[rcpt] = Form.ENVELOPED
            elif self.without_certificate is WithoutCertificate.DELIVER or (
                local and self.without_certificate is WithoutCertificate.REFUSE_REMOTE
            ):
                result.form_of[rcpt] = Form.READABLE
            else:
                result.refused[rcpt] = no_certificate(rcpt)
        if not result.form_of:
            return result
        envelope_to: list[bytes] = []
        if Form.ENVELOPED in result.form_of.values():
            readers = [r for r in result.form_of if certificates[r]] + ([sender] if certificates[sender] else [])
            envelope_to = [certificates[r][0] for r in readers]
        done = await self.pool.run(jobs.protect, self.material, raw, sender, envelope_to)
        result.forms[Form.READABLE] = done.signed
        if done.enveloped is not None:
            result.forms[Form.ENVELOPED] = done.enveloped
        result.worker_pid = done.pid
        return result

    async def sign(self, raw: bytes, sender: str) -> bytes:
        """Sign once for any number of recipients (a campaign): the sender's held key, else the operator's."""
        if smime.is_signed(raw) or smime.is_encrypted(raw):
            return raw
        done = await self.pool.run(jobs.protect, self.material, raw, sender, [])
        return done.signed

    # ---- inbound --------------------------------------------------------------------------

    async def open(self, raw: bytes, from_address: str, recipients: list[str], parties: dict[str, PartyInfo]) -> Protection:
        """Verify (and decrypt) what another operator sent; raises SmimeError to refuse it."""
        held = [r for r in recipients if parties[r].mailbox_id is not None and self.holds_key(r)]
        opened = await self.pool.run(jobs.open_inbound, self.material, raw, from_address, held)
        result = Protection({Form.AS_RECEIVED: raw}, worker_pid=opened.pid)
        if opened.readable is not None:
            result.forms[Form.READABLE] = opened.readable
        for rcpt in recipients:
            if rcpt in opened.not_encrypted_to:
                result.refused[rcpt] = refuse(
                    "smime",
                    550,
                    "5.7.5",
                    "le message n'est pas chiffré pour ce destinataire",
                    "the message is not encrypted to this recipient",
                )
            elif rcpt in held and opened.readable is not None:
                result.form_of[rcpt] = Form.READABLE
            else:
                result.form_of[rcpt] = Form.AS_RECEIVED
        return result
