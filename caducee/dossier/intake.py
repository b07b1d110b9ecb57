"""Documents by mail: a message to a patient carrying IHE_XDM.ZIP files its documents into
that patient's dossier; the message itself is delivered as any other.

The gateway knows nothing of this: `server.py` makes it a durable post-delivery consumer
(`caducee.gateway.postdelivery`). `wants_package`, pure and cheap, tells the pipeline on
the accept path which patients of a message may receive a package (a professional's or an
organisation's message with an IHE_XDM.ZIP attachment, or one we cannot look into): a row
is written for each in the message's own commit, and `XdmIntake.file` runs it after the
commit, on a node with the `http` role, again after a crash. The message is read back from
the store through the mailbox component (`MailStore.message`, opened as the readers open
it) and its MIME tree through `caducee.mime.structure`. A package is filed whole or refused
whole; a refusal is told to the sender (a notice in their mailbox, or a message relayed to
another operator's sender) with the reason, once: each delivered message is claimed in
`dossier_intakes` (per message and patient) in the filing's transaction, so a row run again
files nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire import patients
from caducee.annuaire import service as annuaire
from caducee.config import Settings
from caducee.crypto.atrest import BodyCipher
from caducee.dossier import rules, xdm
from caducee.dossier.service import Dossier, NewDocument, Professional, Refused, _insert_ignore
from caducee.gateway.hooks import OPAQUE_TYPES, Delivered, DeliveredTo
from caducee.history.service import Access
from caducee.mailbox.delivery import Delivery, Notice, deliver, stored_form
from caducee.mailbox.mailstore import MailStore
from caducee.mime.headers import decoded_header
from caducee.mime.structure import Part, decoded, parse
from caducee.policies import PartyKind

log = logging.getLogger(__name__)

ARCHIVE_NAME = "IHE_XDM.ZIP"
CONCURRENT = 16  # packages read at once per process: bounded memory whatever arrives
PACKAGERS = frozenset({PartyKind.PROFESSIONAL, PartyKind.ORGANISATION})  # who may deposit by mail


def find_packages(raw: bytes, tree: Part | None = None) -> tuple[list[bytes], list[str], str]:
    """(the IHE_XDM.ZIP attachments, the X-MSS-CODECDA codes, the subject) of a message,
    looking inside signed wrappers and encapsulated messages; `tree`: its MIME tree, when the
    pipeline already parsed it (then nothing is parsed here)."""
    archives: list[bytes] = []
    codes: list[str] = []
    subject = ""

    def walk(part: Part, depth: int) -> None:
        nonlocal subject
        if depth > 12:
            return
        if part.children:
            for child in part.children:
                walk(child, depth + 1)
            return
        if part.message is not None:
            visit_headers(part.message)
            walk(part.message, depth + 1)
            return
        if _is_package(part):
            data = decoded(part, part.body_bytes)
            if data is not None:
                archives.append(data)

    def visit_headers(message: Part) -> None:
        nonlocal subject
        for value in message.headers.get_all("x-mss-codecda"):
            codes.extend(code.strip() for code in value.replace(";", ",").split(",") if code.strip())
        if message.headers.get("subject") and (not subject or message.headers.get("from")):
            subject = decoded_header(message.headers.get("subject"))

    root = tree if tree is not None else parse(raw)
    visit_headers(root)
    walk(root, 0)
    return archives, codes, subject


def wants_package(delivered: Delivered) -> list[DeliveredTo]:
    """The patients of `delivered` whose dossier may receive a package from it: a professional's
    or an organisation's message with an IHE_XDM.ZIP attachment (or one we cannot look into:
    encrypted, or not parsed here). Pure, on the accept path before the commit: most mail is
    refused by its first tests, and the walk reads only leaf headers of a tree already parsed."""
    if not delivered.has_attachment or delivered.sender_kind not in PACKAGERS:
        return []
    patients_of = delivered.patients
    if not patients_of or delivered.tree is None or (delivered.content_types or frozenset()) & OPAQUE_TYPES:
        return patients_of
    return patients_of if _names_a_package(delivered.tree, 0) else []


def _names_a_package(part: Part, depth: int) -> bool:
    """Whether a leaf of this tree (signed wrappers and attached messages opened, as
    `find_packages` does) is named IHE_XDM.ZIP."""
    if depth > 12:
        return False
    if part.children:
        return any(_names_a_package(child, depth + 1) for child in part.children)
    if part.message is not None:
        return _names_a_package(part.message, depth + 1)
    return _is_package(part)


def _is_package(leaf: Part) -> bool:
    """A leaf entity named IHE_XDM.ZIP (by its disposition's filename or its type's name)."""
    disposition = dict(leaf.headers.params("content-disposition")[1])
    content_type = dict(leaf.headers.params("content-type")[1])
    name = decoded_header(disposition.get("filename") or content_type.get("name") or "").strip()
    return name.rsplit("/", 1)[-1].upper() == ARCHIVE_NAME


def _read_all(archives: list[bytes], ins: str, limits: xdm.Limits) -> list[xdm.XdmDocument]:
    """Every package of a message read (unzipped, METADATA.XML parsed, each document checked), off the loop in one hop."""
    documents: list[xdm.XdmDocument] = []
    for archive in archives:
        documents += xdm.read_package(archive, ins, limits)
    return documents


class XdmIntake:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        cipher: BodyCipher,
        dossier: Dossier,
        relay_notice: Callable[[str, bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.cipher = cipher
        self.dossier = dossier
        self.mail = MailStore(engine, cipher)
        self.relay_notice = relay_notice  # how a notice reaches another operator's sender (the pipeline, wired by server.py)
        self.limits = xdm.Limits(entry=settings.dossier_max_document)
        self._slots = asyncio.Semaphore(CONCURRENT)
        self._directory: dict[tuple[str, str], tuple[float, patients.PatientAccount | None, annuaire.ProfessionalCard | None]] = {}

    async def file(self, delivered: Delivered) -> None:
        """The post-delivery runner: file the packages of the stored message each recipient
        holds. Raises when it could not (the queue tries again); a refusal is an outcome."""
        for recipient in delivered.patients:
            async with self._slots:
                await self.take(delivered.sender, recipient)

    async def _parties(self, patient_address: str, sender: str) -> tuple[patients.PatientAccount | None, annuaire.ProfessionalCard | None]:
        """The patient and the sender, from a cache as short as the gateway's own view of the
        annuaire (`directory_cache_seconds`): a practice sends many documents in a row."""
        now = time.monotonic()
        key = (patient_address.lower(), sender.lower())
        cached = self._directory.get(key)
        if cached is not None and now - cached[0] < self.settings.directory_cache_seconds:
            return cached[1], cached[2]
        async with self.engine.connect() as conn:
            patient = await patients.find_by_ins(conn, patient_address.partition("@")[0])
            card = (await annuaire.professionals_of_addresses(conn, [sender])).get(sender.lower())
        if len(self._directory) > 10_000:
            self._directory.clear()
        self._directory[key] = (now, patient, card)
        return patient, card

    async def take(self, sender: str, recipient: DeliveredTo) -> list[int]:
        """File the packages of one delivered message, read from the store; the ids of the
        documents filed (none when it holds no package, or was filed already)."""
        raw = await self.mail.message(recipient.mailbox_id, recipient.message_id)
        if raw is None:
            return []  # expunged and purged since: nothing left to file
        archives, codes, subject = await asyncio.to_thread(find_packages, raw)
        if not archives:
            return []  # a PDF attached as such is a message's attachment, not a dossier document
        patient, card = await self._parties(recipient.address, sender)
        if patient is None:
            return []
        try:
            documents = await asyncio.to_thread(_read_all, archives, patient.ins, self.limits)
            pro = self._depositor(sender, card, documents)
            fallback_code = codes[0] if len(codes) == 1 else ""
            news = [
                NewDocument(
                    data=document.data,
                    title=document.title,
                    type_code=document.type_code or fallback_code,
                    declared_format=document.format,
                    filename=document.filename,
                    care_date=document.care_date,
                    created_at=document.created_at,
                    unique_id=document.unique_id,
                    class_code=document.class_code,
                    masked=document.masked,
                    invisible_patient=document.invisible_patient,
                    invisible_guardians=document.invisible_guardians,
                )
                for document in documents
            ]
            named = card is not None and bool(card.national_id)  # the annuaire names the sender: it is the authority
            author_name = pro.name if named else next((d.author_name for d in documents if d.author_name), pro.name)
            author_structure = (pro.structure if named else "") or next(
                (d.author_structure for d in documents if d.author_structure), pro.structure
            )
            filed = await self.dossier.file(
                None,
                patient,
                news,
                author_name,
                author_structure,
                "mail",
                pro.name,
                pro.structure,
                intake=recipient.message_id,
                professional=pro,  # blocked, closed...: decided in the filing's own transaction
            )
        except (xdm.XdmRefused, Refused) as refused:
            who = card.name if card is not None else sender
            await self._refused(sender, who, card.structure if card is not None else "", patient, recipient, subject, refused.text)
            return []
        if filed:
            await self.dossier.first_access(pro, patient)
        return filed

    def _depositor(self, sender: str, card: annuaire.ProfessionalCard | None, documents: list[xdm.XdmDocument]) -> Professional:
        """Who deposits: the sender's professional, who must be the documents' author; for an
        organisation's mailbox, the author the metadata names (else the organisation)."""
        authors = {document.author_national_id for document in documents if document.author_national_id}
        if card is not None and card.national_id:
            if authors - {card.national_id}:
                raise xdm.XdmRefused("l'auteur des documents déclaré dans METADATA.XML n'est pas l'expéditeur du message")
            return Professional(card.national_id, card.name, card.structure)
        structure = card.structure or card.name if card is not None else sender
        if len(authors) == 1:
            author = next(iter(authors))
            name = next((d.author_name for d in documents if d.author_national_id == author and d.author_name), author)
            return Professional(author, name, structure)
        return Professional(f"org:{sender.lower()}", card.name if card is not None else sender, structure)

    async def _refused(
        self, sender: str, who: str, structure: str, patient: patients.PatientAccount, recipient: DeliveredTo, subject: str, reason: str
    ) -> None:
        """Claim the message as refused (once), record it in the patient's history, tell the sender."""
        from datetime import UTC, datetime

        from caducee.dossier.models import Intake

        async with self.engine.begin() as conn:
            claimed = await conn.execute(
                _insert_ignore(conn, Intake.__table__),
                [
                    {
                        "message_id": recipient.message_id,
                        "patient_id": patient.id,
                        "outcome": "refused",
                        "documents": 0,
                        "at": datetime.now(UTC),
                    }
                ],
            )
        if not claimed.rowcount:
            return
        log.info("dossier package from %s to patient %d refused: %s", sender, patient.id, reason)
        await self.dossier.history.record(Access(patient.id, who, "intake-refused", reason[:300], structure, "refused"))
        notice = self._notice(sender, subject, reason)
        async with self.engine.connect() as conn:
            parties = await annuaire.resolve_parties(conn, [sender], local_domains=self.settings.local_domains)
        mailbox_id = parties[sender.lower()].mailbox_id
        postmaster = f"postmaster@{self.settings.operator_domain}"
        if mailbox_id is not None:
            delivery = Delivery(
                [], sender=postmaster, message_id_header="", notices=[Notice(mailbox_id, stored_form(self.cipher, notice), postmaster)]
            )
            async with self.engine.begin() as conn:
                await conn.run_sync(deliver, [delivery])
        elif self.relay_notice is not None:
            await self.relay_notice(sender, notice)

    def _notice(self, to: str, subject: str, reason: str) -> bytes:
        message = EmailMessage()
        message["From"] = f"Caducée <postmaster@{self.settings.operator_domain}>"
        message["To"] = to
        message["Subject"] = f"Documents non versés au dossier : {subject}"[:200]
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self.settings.hostname)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(
            f"Votre message « {subject} » a bien été remis au patient, mais les documents de sa pièce jointe "
            f"IHE_XDM.ZIP n'ont pas été versés à son dossier médical :\n\n  {reason}\n\n"
            "Aucun document de cette archive n'a été versé. Corrigez l'archive et renvoyez-la.\n\n"
            f"Your message was delivered, but the documents of its IHE_XDM.ZIP were not filed in the patient's dossier: {reason}\n"
        )
        return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


__all__ = ["XdmIntake", "find_packages", "rules", "wants_package"]
