"""What the dossier does, without HTTP: list, read, feed, mask, block, emergency access, the
medical profile, for the patient side and for professionals.

Every decision is the chain's (`rules.decide`): this module gathers the facts (who asks, the
document's flags, the patient's settings), asks, acts, and records the access in the access
history. Professionals are passed in as an identity (national id, name, structure): how they
authenticated (Pro Santé Connect) is the caller's business. Bodies are sealed at rest and
stored once per content; nothing of a body, nor of a title, is ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee import db
from caducee.annuaire import patients
from caducee.annuaire import service as annuaire
from caducee.annuaire.patients import PatientAccount, Profile
from caducee.config import Settings
from caducee.core.groupcommit import GroupCommitter
from caducee.core.reseal import Resealer, reseal_table
from caducee.crypto.atrest import BodyCipher
from caducee.dossier import kinds, rules
from caducee.dossier._writer import Writer
from caducee.dossier.formats import EXTENSIONS, LABELS, NotAccepted, check_content
from caducee.dossier.models import Blob, Block, Consent, DossierSettings, Emergency, Intake, KnownProfessional, ProfileItem
from caducee.dossier.models import Document as DocumentRow
from caducee.history.service import Access, AccessHistory
from caducee.notify.notifier import Notifier

log = logging.getLogger(__name__)

PAGE_SIZE = 25
TITLES_KEPT = 20_000  # opened titles per process (they never change)
LISTS_KEPT = 500  # decided lists per process (patient, requester, dossier version)
LIST_RECORD_SECONDS = 600.0  # the patient side looking at the list again within this is not recorded again
ROLE_OF = {"self": rules.Role.PATIENT, "guardian": rules.Role.GUARDIAN, "carer": rules.Role.CARER}
RELATION_WORDS = {"self": "", "guardian": " (représentant légal)", "carer": " (aidant)"}


class Refused(Exception):
    """The chain (or a check of the content) said no; `text` is for the person, in French."""

    def __init__(self, text: str, *, rule: str = "", conceal: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.rule = rule
        self.conceal = conceal


@dataclass(frozen=True)
class Professional:
    """Who a professional is, as their identity provider (Pro Santé Connect) says."""

    national_id: str  # "8" + RPPS
    name: str
    structure: str = ""

    @property
    def identity(self) -> str:
        return f"ps:{self.national_id}"


@dataclass(frozen=True)
class PatientSide:
    """A person acting on a dossier: the patient, a minor's guardian, or a carer."""

    profile: Profile  # whose dossier
    actor: PatientAccount  # who is signed in

    @property
    def patient(self) -> PatientAccount:
        return self.profile.account

    @property
    def requester(self) -> rules.Requester:
        access = self.profile.dossier_access
        return rules.Requester(ROLE_OF[self.profile.relation], f"patient:{self.actor.id}", manages=access == "manage", granted=bool(access))

    @property
    def label(self) -> str:
        return f"{self.actor.name}{RELATION_WORDS.get(self.profile.relation, '')}"


@dataclass(frozen=True)
class NewDocument:
    data: bytes
    title: str
    type_code: str
    declared_format: str = ""
    filename: str = ""
    care_date: date | None = None
    created_at: datetime | None = None
    unique_id: str = ""
    class_code: str = ""
    masked: bool = False
    invisible_patient: bool = False
    invisible_guardians: bool = False
    author_name: str = ""  # who wrote it, when not who deposits it (an organisation's mailbox)
    author_structure: str = ""


@dataclass(frozen=True)
class _Filing:
    """Documents to file for one patient, checked, waiting for the group commit."""

    requester: rules.Requester | None
    patient: PatientAccount
    prepared: list[tuple[NewDocument, str, str]]  # (document, format kept as, SHA-256)
    author_name: str
    author_structure: str
    source: str
    actor: str
    actor_structure: str
    replaces: int | None
    intake: int | None
    professional: Professional | None = None  # when set, the requester's facts are read in the filing's transaction


@dataclass(frozen=True)
class DocumentLine:
    id: int
    title: str
    type_code: str
    type_label: str
    format: str
    format_label: str
    filename: str
    care_date: date | None
    deposited_at: datetime
    author_name: str
    author_structure: str
    author: str
    status: str
    size: int
    masked: bool
    invisible_patient: bool
    invisible_guardians: bool
    source: str
    lineage: int

    @property
    def day(self) -> date:
        return self.care_date or self.deposited_at.date()


@dataclass(frozen=True)
class DocumentList:
    lines: list[DocumentLine]
    total: int
    page: int
    pages: int
    types: list[tuple[str, str]]  # (code, label) of the types present, for the filter


@dataclass(frozen=True)
class DossierState:
    emergency_refused: bool
    blocked: list[tuple[str, str, datetime]]  # (national id, name, since)
    consents: list[tuple[str, str, str, datetime]]  # (national id, name, structure, since)


@dataclass(frozen=True)
class ProfileEntry:
    id: int
    section: str
    text: str
    detail: str
    on: str  # a date as typed (YYYY-MM-DD), may be empty
    created_at: datetime


def _insert_ignore(conn: AsyncConnection | Connection, table: Table) -> Any:
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(table).on_conflict_do_nothing()


_LIST_COLUMNS = (
    DocumentRow.id,
    DocumentRow.type_code,
    DocumentRow.format,
    DocumentRow.filename,
    DocumentRow.care_date,
    DocumentRow.deposited_at,
    DocumentRow.author,
    DocumentRow.author_name,
    DocumentRow.author_structure,
    DocumentRow.status,
    DocumentRow.size,
    DocumentRow.masked,
    DocumentRow.invisible_patient,
    DocumentRow.invisible_guardians,
    DocumentRow.source,
    DocumentRow.lineage,
)


def _facts_document(row) -> rules.Document:  # type: ignore[no-untyped-def]
    return rules.Document(row.author, row.masked, row.invisible_patient, row.invisible_guardians, rules.Status(row.status))


class Dossier:
    def __init__(self, engine: AsyncEngine, settings: Settings, cipher: BodyCipher, history: AccessHistory, notifier: Notifier) -> None:
        self.engine = engine
        self.reads = db.autocommit_reads(engine)
        self.settings = settings
        self.cipher = cipher
        self.history = history
        self.notifier = notifier
        self._titles: OrderedDict[int, str] = OrderedDict()
        # Per decided list: the rows the rules let through, the types present, and the lines
        # already built for them (a page view builds only the lines no view built before).
        self._lists: OrderedDict[tuple[object, ...], tuple[list[Any], list[str], dict[int, DocumentLine]]] = OrderedDict()
        self._recorded: dict[tuple[int, int], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer = Writer(engine)
        self._filings = GroupCommitter(self._write_filings)
        self._known: set[tuple[int, str]] = set()  # (patient, professional) pairs already told
        self._structures: dict[str, tuple[float, str]] = {}  # national id -> (when read, structure)

    # ---- facts --------------------------------------------------------------------------------

    async def _settings(self, conn: AsyncConnection, patient: PatientAccount) -> rules.Settings:
        return (await self._settings_and_version(conn, patient))[0]

    async def _settings_and_version(self, conn: AsyncConnection, patient: PatientAccount) -> tuple[rules.Settings, int]:
        """The patient's settings and the dossier's version (it moves on every change of a
        document, a block or a setting: what the list cache is checked against)."""
        row = (
            await conn.execute(
                select(DossierSettings.emergency_refused, DossierSettings.version).where(DossierSettings.patient_id == patient.id)
            )
        ).first()
        settings = rules.Settings(emergency_refused=bool(row and row.emergency_refused), closed=patient.status in {"opposed", "closed"})
        return settings, int(row.version) if row else 0

    async def _professional(self, conn: AsyncConnection, pro: Professional, patient_id: int) -> rules.Requester:
        """The facts about a professional and a dossier (blocked, authorised, in an emergency), in one statement."""
        blocked = select(Block.national_id).where(Block.patient_id == patient_id, Block.national_id == pro.national_id).exists()
        consent = select(Consent.national_id).where(Consent.patient_id == patient_id, Consent.national_id == pro.national_id).exists()
        emergency = (
            select(Emergency.id)
            .where(Emergency.patient_id == patient_id, Emergency.national_id == pro.national_id, Emergency.expires_at > datetime.now(UTC))
            .exists()
        )
        row = (await conn.execute(select(blocked.label("blocked"), consent.label("consent"), emergency.label("emergency")))).one()
        return rules.Requester(
            rules.Role.PROFESSIONAL, pro.identity, blocked=bool(row.blocked), authorised=bool(row.consent), emergency=bool(row.emergency)
        )

    def _title(self, row_id: int, sealed: bytes) -> str:
        title = self._titles.get(row_id)
        if title is None:
            title = self.cipher.open(sealed).decode("utf-8")
            self._titles[row_id] = title
            while len(self._titles) > TITLES_KEPT:
                self._titles.popitem(last=False)
        else:
            self._titles.move_to_end(row_id)
        return title

    def _line(self, row, title: str) -> DocumentLine:  # type: ignore[no-untyped-def]
        return DocumentLine(
            row.id,
            title,
            row.type_code,
            kinds.type_label(row.type_code),
            row.format,
            LABELS.get(row.format, row.format),
            row.filename,
            row.care_date,
            row.deposited_at,
            row.author_name,
            row.author_structure,
            row.author,
            row.status,
            row.size,
            row.masked,
            row.invisible_patient,
            row.invisible_guardians,
            row.source,
            row.lineage or row.id,
        )

    # ---- listing and reading, whoever asks -------------------------------------------------------

    async def _list(
        self, requester: rules.Requester, patient: PatientAccount, *, type_code: str = "", page: int = 1, with_replaced: bool = False
    ) -> DocumentList:
        """What `requester` may see, newest care first, one page of it. The rows the rules let
        through are kept per (patient, requester, dossier version): a page view is then one
        query for the version, however many documents the dossier holds."""
        async with self.reads.connect() as conn:
            settings, version = await self._settings_and_version(conn, patient)
            key = (patient.id, requester, settings, version, with_replaced)
            cached = self._lists.get(key)
            if cached is None:
                statuses = ["current", "replaced"] if with_replaced else ["current"]
                rows = (
                    await conn.execute(select(*_LIST_COLUMNS).where(DocumentRow.patient_id == patient.id, DocumentRow.status.in_(statuses)))
                ).all()
                allowed = [
                    row for row in rows if rules.decide(rules.Facts(requester, rules.Act.READ, settings, _facts_document(row))).allowed
                ]
                allowed.sort(key=lambda row: (row.care_date or row.deposited_at.date(), row.id), reverse=True)
                cached = (allowed, sorted({row.type_code for row in allowed}, key=kinds.type_label), {})
                self._lists[key] = cached
                while len(self._lists) > LISTS_KEPT:
                    self._lists.popitem(last=False)
            else:
                self._lists.move_to_end(key)
            visible, types, built = cached
            if type_code:
                visible = [row for row in visible if row.type_code == type_code]
            pages = max(1, -(-len(visible) // PAGE_SIZE))
            page = max(1, min(page, pages))
            shown = visible[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
            missing = [row.id for row in shown if row.id not in built and row.id not in self._titles]
            sealed = {}
            if missing:
                sealed = dict((await conn.execute(select(DocumentRow.id, DocumentRow.title).where(DocumentRow.id.in_(missing)))).all())
        lines = []
        for row in shown:  # a row's line is the same for every view of this version of the dossier
            line = built.get(row.id)
            if line is None:
                line = built[row.id] = self._line(row, self._title(row.id, sealed.get(row.id, b"")))
            lines.append(line)
        return DocumentList(lines, len(visible), page, pages, [(code, kinds.type_label(code)) for code in types])

    async def _one(self, conn: AsyncConnection, patient_id: int, document_id: int):  # type: ignore[no-untyped-def]
        return (
            await conn.execute(
                select(*_LIST_COLUMNS, DocumentRow.title, DocumentRow.blob_id, DocumentRow.sha256).where(
                    DocumentRow.id == document_id, DocumentRow.patient_id == patient_id
                )
            )
        ).first()

    async def _read(
        self, requester: rules.Requester, patient: PatientAccount, document_id: int
    ) -> tuple[DocumentLine, bytes, rules.Decision]:
        async with self.reads.connect() as conn:
            row = await self._one(conn, patient.id, document_id)
            if row is None:  # another patient's, or none: the same answer
                raise Refused(rules.NOT_FOUND, rule="not-found", conceal=True)
            decision = rules.decide(rules.Facts(requester, rules.Act.READ, await self._settings(conn, patient), _facts_document(row)))
            if not decision.allowed:
                raise Refused(decision.reason, rule=decision.rule, conceal=decision.conceal)
            sealed = (await conn.execute(select(Blob.sealed).where(Blob.id == row.blob_id))).scalar_one()
        data = self.cipher.open(sealed)
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise RuntimeError(f"document {document_id}: stored content does not match its hash")
        return self._line(row, self._title(row.id, row.title)), data, decision

    async def versions(self, side: PatientSide, document_id: int) -> list[DocumentLine]:
        """Every version the patient side may see of the document's lineage, newest first."""
        listing = await self._list(side.requester, side.patient, with_replaced=True, page=1)
        current = next((line for line in listing.lines if line.id == document_id), None)
        if current is None:
            return []
        everything = await self._list_all(side.requester, side.patient)
        return [line for line in everything if line.lineage == current.lineage]

    async def _list_all(self, requester: rules.Requester, patient: PatientAccount) -> list[DocumentLine]:
        first = await self._list(requester, patient, with_replaced=True)
        lines = list(first.lines)
        for number in range(2, first.pages + 1):
            lines += (await self._list(requester, patient, with_replaced=True, page=number)).lines
        return lines

    # ---- the patient side --------------------------------------------------------------------------

    def _ask(self, facts: rules.Facts) -> rules.Decision:
        decision = rules.decide(facts)
        if not decision.allowed:
            raise Refused(decision.reason, rule=decision.rule, conceal=decision.conceal)
        return decision

    async def documents(self, side: PatientSide, *, type_code: str = "", page: int = 1, with_replaced: bool = False) -> DocumentList:
        """ "Mes documents": what this person may see of the dossier, newest care first."""
        self._ask(rules.Facts(side.requester, rules.Act.OPEN))
        listing = await self._list(side.requester, side.patient, type_code=type_code, page=page, with_replaced=with_replaced)
        moment = time.monotonic()
        seen = (side.actor.id, side.patient.id)
        if moment - self._recorded.get(seen, -LIST_RECORD_SECONDS) >= LIST_RECORD_SECONDS:
            self._recorded[seen] = moment
            if len(self._recorded) > 100_000:
                self._recorded.clear()
            await self.history.record(Access(side.patient.id, side.label, "dossier-opened", right=side.requester.role.value))
        return listing

    async def open_document(self, side: PatientSide, document_id: int) -> tuple[DocumentLine, bytes]:
        line, data, decision = await self._read(side.requester, side.patient, document_id)
        await self.history.record(
            Access(
                side.patient.id,
                side.label,
                "document-read",
                _what(line),
                right=decision.right,
                hidden_from_guardians=line.invisible_guardians,
            )
        )
        return line, data

    async def upload(self, side: PatientSide, new: NewDocument) -> int:
        """A document the patient side adds (type checked by content, size limited)."""
        return await self._deposit(side.requester, side.patient, new, side.actor.name, "", "webmail", side.label)

    async def delete(self, side: PatientSide, document_id: int) -> None:
        await self._delete(side.requester, side.patient, document_id, side.label, "")

    async def set_masked(self, side: PatientSide, document_id: int, masked: bool) -> None:
        async with self.engine.begin() as conn:
            row = await self._one(conn, side.patient.id, document_id)
            if row is None:
                raise Refused(rules.NOT_FOUND, rule="not-found", conceal=True)
            decision = self._ask(
                rules.Facts(side.requester, rules.Act.MASK, await self._settings(conn, side.patient), _facts_document(row))
            )
            await conn.execute(update(DocumentRow).where(DocumentRow.id == document_id).values(masked=masked, changed_at=datetime.now(UTC)))
            await self._bump(conn, side.patient.id)
        line = self._line(row, self._title(row.id, row.title))
        await self.history.record(
            Access(
                side.patient.id,
                side.label,
                "document-masked" if masked else "document-unmasked",
                _what(line),
                right=decision.right,
                hidden_from_guardians=row.invisible_guardians,
            )
        )

    async def set_all_masked(self, side: PatientSide, masked: bool) -> int:
        """Mask (or show again) every document this person sees, in one click; their authors still see them."""
        async with self.engine.begin() as conn:
            settings = await self._settings(conn, side.patient)
            rows = (
                await conn.execute(select(*_LIST_COLUMNS).where(DocumentRow.patient_id == side.patient.id, DocumentRow.status != "deleted"))
            ).all()
            ids = [
                row.id
                for row in rows
                if row.masked != masked
                and rules.decide(rules.Facts(side.requester, rules.Act.MASK, settings, _facts_document(row))).allowed
            ]
            if not ids and not rules.decide(rules.Facts(side.requester, rules.Act.MANAGE, settings)).allowed:
                self._ask(rules.Facts(side.requester, rules.Act.MANAGE, settings))
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                await conn.execute(update(DocumentRow).where(DocumentRow.id.in_(chunk)).values(masked=masked, changed_at=datetime.now(UTC)))
            await self._bump(conn, side.patient.id)
        await self.history.record(
            Access(
                side.patient.id,
                side.label,
                "all-masked" if masked else "all-unmasked",
                f"{len(ids)} document(s)",
                right=side.requester.role.value,
            )
        )
        return len(ids)

    async def state(self, side: PatientSide) -> DossierState:
        self._ask(rules.Facts(side.requester, rules.Act.OPEN))
        async with self.reads.connect() as conn:
            settings = await self._settings(conn, side.patient)
            blocked = (
                await conn.execute(
                    select(Block.national_id, Block.name, Block.blocked_at).where(Block.patient_id == side.patient.id).order_by(Block.name)
                )
            ).all()
            consents = (
                await conn.execute(
                    select(Consent.national_id, Consent.name, Consent.structure, Consent.declared_at)
                    .where(Consent.patient_id == side.patient.id)
                    .order_by(Consent.name)
                )
            ).all()
        return DossierState(settings.emergency_refused, [tuple(row) for row in blocked], [tuple(row) for row in consents])  # type: ignore[misc]

    async def find_professionals(self, side: PatientSide, name: str) -> list[annuaire.ProfessionalCard]:
        self._ask(rules.Facts(side.requester, rules.Act.MANAGE))
        async with self.reads.connect() as conn:
            return await annuaire.find_professionals(conn, name)

    async def block(self, side: PatientSide, national_id: str) -> str:
        self._ask(rules.Facts(side.requester, rules.Act.MANAGE))
        async with self.engine.begin() as conn:
            card = (await annuaire.professionals_by_id(conn, [national_id])).get(national_id)
            if card is None:
                raise Refused("Ce professionnel n'est pas dans l'annuaire.", rule="unknown-professional")
            await conn.execute(
                _insert_ignore(conn, Block.__table__),
                [{"patient_id": side.patient.id, "national_id": national_id, "name": card.name, "blocked_at": datetime.now(UTC)}],
            )
            await self._bump(conn, side.patient.id)
        await self.history.record(Access(side.patient.id, side.label, "professional-blocked", card.name, right=side.requester.role.value))
        return card.name

    async def unblock(self, side: PatientSide, national_id: str) -> None:
        self._ask(rules.Facts(side.requester, rules.Act.MANAGE))
        async with self.engine.begin() as conn:
            name = (
                await conn.execute(select(Block.name).where(Block.patient_id == side.patient.id, Block.national_id == national_id))
            ).scalar()
            if name is None:
                return
            await conn.execute(delete(Block).where(Block.patient_id == side.patient.id, Block.national_id == national_id))
            await self._bump(conn, side.patient.id)
        await self.history.record(Access(side.patient.id, side.label, "professional-unblocked", name, right=side.requester.role.value))

    async def set_emergency_refused(self, side: PatientSide, refused: bool) -> None:
        self._ask(rules.Facts(side.requester, rules.Act.MANAGE))
        async with self.engine.begin() as conn:
            await self._bump(conn, side.patient.id, emergency_refused=refused)
        await self.history.record(
            Access(side.patient.id, side.label, "emergency-refused" if refused else "emergency-allowed", right=side.requester.role.value)
        )

    async def _bump(self, conn: AsyncConnection, patient_id: int, **values: object) -> None:
        await conn.execute(
            _insert_ignore(conn, DossierSettings.__table__),
            [{"patient_id": patient_id, "emergency_refused": False, "version": 0, "updated_at": datetime.now(UTC)}],
        )
        await conn.execute(
            update(DossierSettings)
            .where(DossierSettings.patient_id == patient_id)
            .values(version=DossierSettings.version + 1, updated_at=datetime.now(UTC), **values)
        )

    # ---- the medical profile -------------------------------------------------------------------------

    async def medical_profile(self, side: PatientSide) -> dict[str, list[ProfileEntry]]:
        self._ask(rules.Facts(side.requester, rules.Act.OPEN))
        return await self._profile(side.patient.id)

    async def _profile(self, patient_id: int) -> dict[str, list[ProfileEntry]]:
        async with self.reads.connect() as conn:
            rows = (
                await conn.execute(
                    select(ProfileItem.id, ProfileItem.section, ProfileItem.sealed, ProfileItem.created_at)
                    .where(ProfileItem.patient_id == patient_id)
                    .order_by(ProfileItem.id)
                )
            ).all()
        found: dict[str, list[ProfileEntry]] = {section: [] for section in kinds.SECTIONS}
        for row in rows:
            values = json.loads(self.cipher.open(row.sealed))
            found.setdefault(row.section, []).append(
                ProfileEntry(row.id, row.section, values.get("text", ""), values.get("detail", ""), values.get("on", ""), row.created_at)
            )
        return found

    async def add_profile_entry(self, side: PatientSide, section: str, text: str, detail: str = "", on: str = "") -> int:
        self._ask(rules.Facts(side.requester, rules.Act.MANAGE))
        if section not in kinds.SECTIONS:
            raise Refused("Cette rubrique du profil médical n'existe pas.", rule="unknown-section")
        text, detail, on = " ".join(text.split())[:300], detail.strip()[:1000], on.strip()[:10]
        if not text:
            raise Refused("Écrivez ce que vous voulez ajouter.", rule="empty")
        if on:
            try:
                date.fromisoformat(on)
            except ValueError:
                raise Refused("La date doit être de la forme AAAA-MM-JJ.", rule="bad-date") from None
        sealed = self.cipher.seal(json.dumps({"text": text, "detail": detail, "on": on}, ensure_ascii=False).encode("utf-8"))
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(ProfileItem.__table__).values(
                    patient_id=side.patient.id, section=section, sealed=sealed, created_at=datetime.now(UTC)
                )
            )
        await self.history.record(
            Access(side.patient.id, side.label, "medical-profile-changed", kinds.SECTIONS[section], right=side.requester.role.value)
        )
        return db.inserted_id(result)

    async def remove_profile_entry(self, side: PatientSide, entry_id: int) -> None:
        self._ask(rules.Facts(side.requester, rules.Act.MANAGE))
        async with self.engine.begin() as conn:
            section = (
                await conn.execute(select(ProfileItem.section).where(ProfileItem.id == entry_id, ProfileItem.patient_id == side.patient.id))
            ).scalar()
            if section is None:
                raise Refused("Cette ligne du profil médical n'existe pas.", rule="not-found", conceal=True)
            await conn.execute(delete(ProfileItem).where(ProfileItem.id == entry_id))
        await self.history.record(
            Access(
                side.patient.id,
                side.label,
                "medical-profile-changed",
                kinds.SECTIONS.get(section, section),
                right=side.requester.role.value,
            )
        )

    # ---- professionals -----------------------------------------------------------------------------------

    async def patient_by_ins(self, ins: str) -> PatientAccount:
        """The patient of an INS typed by a professional: the key is checked, an unknown INS is
        said to be unknown (the INS is what the professional already holds: nothing leaks)."""
        from caducee.annuaire.identifiers import InvalidIdentifier

        try:
            async with self.reads.connect() as conn:
                account = await patients.find_by_ins(conn, ins)
        except InvalidIdentifier as wrong:
            raise Refused(f"Ce numéro INS n'est pas valide : {_french_ins_error(str(wrong))}", rule="bad-ins") from None
        if account is None:
            raise Refused("Aucun patient n'a ce numéro INS chez nous.", rule="unknown-patient")
        return account

    async def patient(self, patient_id: int) -> PatientAccount | None:
        """A patient by our id (the professionals' portal keeps it in its signed references)."""
        async with self.reads.connect() as conn:
            return await patients.get_account(conn, patient_id)

    async def _pro_decide(
        self, pro: Professional, patient: PatientAccount, act: rules.Act, document: rules.Document | None = None
    ) -> rules.Decision:
        async with self.reads.connect() as conn:
            facts = rules.Facts(await self._professional(conn, pro, patient.id), act, await self._settings(conn, patient), document)
        decision = rules.decide(facts)
        if not decision.allowed and not decision.conceal:
            await self.history.record(Access(patient.id, pro.name, "access-refused", decision.reason[:200], pro.structure, "refused"))
        return decision

    async def access(self, pro: Professional, patient: PatientAccount) -> rules.Requester:
        """What this professional may do with this dossier now (blocked, authorised, in an emergency)."""
        async with self.reads.connect() as conn:
            return await self._professional(conn, pro, patient.id)

    async def declare_consent(self, pro: Professional, patient: PatientAccount) -> None:
        """The professional attests the patient agreed to their reading the dossier."""
        decision = await self._pro_decide(pro, patient, rules.Act.DEPOSIT, rules.Document(pro.identity))  # blocked or closed: refused
        if not decision.allowed:
            raise Refused(decision.reason, rule=decision.rule)
        async with self.engine.begin() as conn:
            await conn.execute(
                _insert_ignore(conn, Consent.__table__),
                [
                    {
                        "patient_id": patient.id,
                        "national_id": pro.national_id,
                        "name": pro.name,
                        "structure": pro.structure,
                        "declared_at": datetime.now(UTC),
                    }
                ],
            )
        await self.history.record(Access(patient.id, pro.name, "consent-declared", structure=pro.structure, right="authorised"))
        await self.first_access(pro, patient)

    async def open_emergency(self, pro: Professional, patient: PatientAccount, reason: str) -> datetime:
        """An emergency access (bris de glace), for `dossier_emergency_minutes`; the reason is required and recorded."""
        reason = " ".join(reason.split())[:300]
        if len(reason) < 10:
            raise Refused("Indiquez le motif de l'accès en urgence (10 caractères au moins).", rule="reason-required")
        decision = await self._pro_decide(pro, patient, rules.Act.EMERGENCY)
        if not decision.allowed:
            raise Refused(decision.reason, rule=decision.rule)
        until = datetime.now(UTC) + timedelta(minutes=self.settings.dossier_emergency_minutes)
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(Emergency.__table__).values(
                    patient_id=patient.id,
                    national_id=pro.national_id,
                    structure=pro.structure,
                    reason=reason,
                    started_at=datetime.now(UTC),
                    expires_at=until,
                )
            )
        await self.history.record(Access(patient.id, pro.name, "emergency-access", f"Motif : {reason}", pro.structure, "emergency"))
        await self.first_access(pro, patient)
        return until

    async def emergency_until(self, pro: Professional, patient: PatientAccount) -> datetime | None:
        """When this professional's emergency access ends (None: they have none)."""
        async with self.reads.connect() as conn:
            until = (
                await conn.execute(
                    select(func.max(Emergency.expires_at)).where(
                        Emergency.patient_id == patient.id,
                        Emergency.national_id == pro.national_id,
                        Emergency.expires_at > datetime.now(UTC),
                    )
                )
            ).scalar()
        return until.replace(tzinfo=UTC) if until is not None and until.tzinfo is None else until

    async def professional_documents(
        self, pro: Professional, patient: PatientAccount, *, type_code: str = "", page: int = 1
    ) -> tuple[DocumentList, rules.Decision]:
        decision = await self._pro_decide(pro, patient, rules.Act.OPEN)
        if not decision.allowed:
            raise Refused(decision.reason, rule=decision.rule)
        async with self.reads.connect() as conn:
            requester = await self._professional(conn, pro, patient.id)
        listing = await self._list(requester, patient, type_code=type_code, page=page)
        await self.history.record(Access(patient.id, pro.name, "dossier-opened", structure=pro.structure, right=decision.right))
        await self.first_access(pro, patient)
        return listing, decision

    async def professional_document(
        self, pro: Professional, patient: PatientAccount, document_id: int
    ) -> tuple[DocumentLine, bytes, rules.Decision]:
        async with self.reads.connect() as conn:
            requester = await self._professional(conn, pro, patient.id)
        try:
            line, data, decision = await self._read(requester, patient, document_id)
        except Refused as refused:
            if not refused.conceal:
                await self.history.record(Access(patient.id, pro.name, "access-refused", refused.text[:200], pro.structure, "refused"))
            raise
        await self.history.record(
            Access(
                patient.id,
                pro.name,
                "document-read",
                _what(line),
                pro.structure,
                decision.right,
                hidden_from_guardians=line.invisible_guardians,
            )
        )
        await self.first_access(pro, patient)
        return line, data, decision

    async def professional_medical_profile(self, pro: Professional, patient: PatientAccount) -> dict[str, list[ProfileEntry]]:
        decision = await self._pro_decide(pro, patient, rules.Act.OPEN)
        if not decision.allowed:
            raise Refused(decision.reason, rule=decision.rule)
        await self.history.record(Access(patient.id, pro.name, "medical-profile-read", structure=pro.structure, right=decision.right))
        return await self._profile(patient.id)

    async def deposit(self, pro: Professional, patient: PatientAccount, new: NewDocument, *, source: str = "api") -> int:
        async with self.reads.connect() as conn:
            requester = await self._professional(conn, pro, patient.id)
        try:
            document_id = await self._deposit(
                requester, patient, new, new.author_name or pro.name, new.author_structure or pro.structure, source, pro.name, pro.structure
            )
        except Refused as refused:
            await self.refused(pro, patient, refused)
            raise
        await self.first_access(pro, patient)
        return document_id

    async def refused(self, pro: Professional, patient: PatientAccount, refused: Refused) -> None:
        """A professional's attempt the chain refused is in the patient's history (unless
        answering it would tell the professional the document exists)."""
        if not refused.conceal:
            await self.history.record(Access(patient.id, pro.name, "access-refused", refused.text[:200], pro.structure, "refused"))

    async def replace(self, pro: Professional, patient: PatientAccount, document_id: int, new: NewDocument) -> int:
        """A new version of the professional's own document; the old one is kept as replaced."""
        async with self.reads.connect() as conn:
            requester = await self._professional(conn, pro, patient.id)
        try:
            document_id = await self._deposit(
                requester,
                patient,
                new,
                new.author_name or pro.name,
                new.author_structure or pro.structure,
                "api",
                pro.name,
                pro.structure,
                replaces=document_id,
            )
        except Refused as refused:
            await self.refused(pro, patient, refused)
            raise
        await self.first_access(pro, patient)
        return document_id

    async def reveal(self, pro: Professional, patient: PatientAccount, document_id: int) -> None:
        """The author lifts "invisible to the patient" (they announced it in person): the
        patient side sees the document from now on."""
        try:
            await self._reveal(pro, patient, document_id)
        except Refused as refused:
            await self.refused(pro, patient, refused)
            raise

    async def _reveal(self, pro: Professional, patient: PatientAccount, document_id: int) -> None:
        async with self.engine.begin() as conn:
            requester = await self._professional(conn, pro, patient.id)
            row = await self._one(conn, patient.id, document_id)
            if row is None:
                raise Refused(rules.NOT_FOUND, rule="not-found", conceal=True)
            decision = rules.decide(rules.Facts(requester, rules.Act.REPLACE, await self._settings(conn, patient), _facts_document(row)))
            if not decision.allowed:
                raise Refused(decision.reason, rule=decision.rule, conceal=decision.conceal)
            await conn.execute(
                update(DocumentRow).where(DocumentRow.id == document_id).values(invisible_patient=False, changed_at=datetime.now(UTC))
            )
            await self._bump(conn, patient.id)
        line = self._line(row, "")
        await self.history.record(
            Access(patient.id, pro.name, "document-revealed", _what(replace(line, invisible_patient=False)), pro.structure, decision.right)
        )

    async def professional_delete(self, pro: Professional, patient: PatientAccount, document_id: int) -> None:
        """The author deletes their document: shown to nobody from now on (the row is kept, marked deleted)."""
        async with self.reads.connect() as conn:
            requester = await self._professional(conn, pro, patient.id)
        try:
            await self._delete(requester, patient, document_id, pro.name, pro.structure)
        except Refused as refused:
            await self.refused(pro, patient, refused)
            raise

    async def professional_of(self, national_id: str, name: str) -> Professional:
        """A professional signed in through Pro Santé Connect, with the structure the annuaire
        names for them (their first mailbox's), kept `directory_cache_seconds`."""
        now = time.monotonic()
        cached = self._structures.get(national_id)
        if cached is None or now - cached[0] > self.settings.directory_cache_seconds:
            async with self.reads.connect() as conn:
                card = (await annuaire.professionals_by_id(conn, [national_id])).get(national_id)
            if len(self._structures) > 50_000:
                self._structures.clear()
            cached = (now, card.structure if card is not None else "")
            self._structures[national_id] = cached
        return Professional(national_id, name, cached[1])

    # ---- writing documents -------------------------------------------------------------------------------

    async def _deposit(
        self,
        requester: rules.Requester,
        patient: PatientAccount,
        new: NewDocument,
        author_name: str,
        author_structure: str,
        source: str,
        actor: str,
        actor_structure: str = "",
        *,
        replaces: int | None = None,
    ) -> int:
        ids = await self.file(requester, patient, [new], author_name, author_structure, source, actor, actor_structure, replaces=replaces)
        return ids[0]

    def _prepare(self, patient: PatientAccount, new: NewDocument) -> tuple[NewDocument, str, str]:
        if not new.data:
            raise Refused("Le fichier est vide.", rule="empty")
        if len(new.data) > self.settings.dossier_max_document:
            raise Refused(f"Le document dépasse {self.settings.dossier_max_document // 1_048_576} Mo.", rule="too-large")
        try:
            kept_as, cda = check_content(new.data, new.declared_format, expected_ins=patient.ins)
        except NotAccepted as refused:
            raise Refused(f"Document refusé : {refused}.", rule="content") from None
        title = " ".join((new.title or (cda.title if cda else "") or kinds.type_label(new.type_code)).split())[:200]
        type_code = (new.type_code or (cda.code if cda else "") or "DOCPAT")[:16]
        return replace(new, title=title, type_code=type_code), kept_as, hashlib.sha256(new.data).hexdigest()

    async def file(
        self,
        requester: rules.Requester | None,
        patient: PatientAccount,
        documents: list[NewDocument],
        author_name: str,
        author_structure: str,
        source: str,
        actor: str,
        actor_structure: str = "",
        *,
        replaces: int | None = None,
        intake: int | None = None,
        professional: Professional | None = None,
    ) -> list[int]:
        """File documents, all or none (each decided by the chain), with their access
        history records, in a transaction shared with whatever else is being filed at the
        same moment (group commit: ten packages arriving together are one fsync, not ten);
        `intake`: the stored message they came in, filed once whatever happens (an empty list
        if it already was). With `professional` (and no `requester`), the professional's facts
        (blocked...) are read in that same transaction: no read before it."""
        prepared = [self._prepare(patient, new) for new in documents]
        plan = _Filing(
            requester, patient, prepared, author_name, author_structure, source, actor, actor_structure, replaces, intake, professional
        )
        result = await self._filings.submit(plan)
        if isinstance(result, Refused):
            raise result
        ids, _recorded_with_them = result
        return ids

    async def _write_filings(self, plans: list[_Filing]) -> list[object]:
        """The group commit's writer: every plan decided, then written, in one transaction
        run without a trip back to the event loop between statements (on SQLite, the write
        lock is held for the statements only, not while other sessions take the loop)."""

        def write(conn: Connection) -> list[object]:
            results: list[object] = [self._file_one(conn, plan) for plan in plans]
            self.history.append(conn, [record for result in results if isinstance(result, tuple) for record in result[1]])
            return results

        return await self._writer.run(write)

    def _file_one(self, conn: Connection, plan: _Filing) -> tuple[list[int], list[Access]] | Refused:
        """One plan in the writer's transaction: everything decided before anything is written."""
        patient = plan.patient
        now = datetime.now(UTC)
        settings = _settings_sync(conn, patient)[0]
        if plan.intake is not None:
            done = conn.execute(_INTAKE_DONE, {"message": plan.intake, "patient": patient.id}).first()
            if done is not None:
                return [], []
        if plan.professional is not None:
            requester = _professional_sync(conn, plan.professional, patient.id, now)
        else:
            assert plan.requester is not None
            requester = plan.requester
        old = None
        if plan.replaces is not None:
            old = _one_sync(conn, patient.id, plan.replaces)
            if old is None or old.status != "current":
                return Refused(rules.NOT_FOUND, rule="not-found", conceal=True)
        decided = []
        unique_ids: set[str] = set()
        for new, kept_as, digest in plan.prepared:  # decide everything before writing anything
            flags = rules.Document(
                old.author if old is not None else requester.identity, new.masked, new.invisible_patient, new.invisible_guardians
            )
            decision = rules.decide(rules.Facts(requester, rules.Act.REPLACE if old is not None else rules.Act.DEPOSIT, settings, flags))
            if not decision.allowed:
                return Refused(decision.reason, rule=decision.rule, conceal=decision.conceal)
            unique_id = (new.unique_id or f"2.25.{int.from_bytes(secrets.token_bytes(16), 'big')}")[:128]
            exists = conn.execute(_UNIQUE_ID_USED, {"patient": patient.id, "unique_id": unique_id}).first()
            if exists is not None or unique_id in unique_ids:
                return Refused("Un document avec cet identifiant unique (uniqueId) est déjà dans ce dossier.", rule="duplicate")
            unique_ids.add(unique_id)
            decided.append((new, kept_as, digest, flags, decision, unique_id))
        if plan.intake is not None:
            conn.execute(
                insert(Intake.__table__).values(
                    message_id=plan.intake, patient_id=patient.id, outcome="filed", documents=len(decided), at=now
                )
            )
        ids: list[int] = []
        records: list[Access] = []
        for new, kept_as, digest, flags, decision, unique_id in decided:
            blob_id = self._blob_sync(conn, new.data, digest)
            result = conn.execute(
                insert(DocumentRow.__table__).values(
                    patient_id=patient.id,
                    unique_id=unique_id,
                    lineage=(old.lineage or old.id) if old is not None else None,
                    replaces=old.id if old is not None else None,
                    status="current",
                    type_code=new.type_code,
                    class_code=new.class_code[:16],
                    format=kept_as,
                    title=self.cipher.seal(new.title.encode("utf-8")),
                    filename=_filename(new.filename, EXTENSIONS.get(kept_as, "bin")),
                    care_date=new.care_date,
                    created_at=new.created_at or now,
                    deposited_at=now,
                    author=flags.author,
                    author_name=plan.author_name[:256],
                    author_structure=plan.author_structure[:256],
                    source=plan.source,
                    size=len(new.data),
                    sha256=digest,
                    blob_id=blob_id,
                    masked=new.masked,
                    invisible_patient=new.invisible_patient,
                    invisible_guardians=new.invisible_guardians,
                    changed_at=now,
                )
            )
            ids.append(db.inserted_id(result))
            what = kinds.type_label(new.type_code) + (f" du {new.care_date:%d/%m/%Y}" if new.care_date else "")
            action = "document-replaced" if old is not None else "document-added"
            records.append(
                Access(
                    patient.id,
                    plan.actor,
                    action,
                    what,
                    plan.actor_structure,
                    decision.right,
                    hidden_from_guardians=new.invisible_guardians,
                )
            )
        if old is not None:
            conn.execute(update(DocumentRow).where(DocumentRow.id == old.id).values(status="replaced", changed_at=now))
        _bump_sync(conn, patient.id)
        return ids, records

    def _blob_sync(self, conn: Connection, data: bytes, digest: str) -> int:
        """The one stored copy of this content: sealed once, the first time it is seen."""
        found = conn.execute(_BLOB_OF, {"sha256": digest}).scalar()
        if found is not None:
            return int(found)
        row = {"sha256": digest, "size": len(data), "sealed": self.cipher.seal(data), "created_at": datetime.now(UTC)}
        conn.execute(_insert_ignore(conn, Blob.__table__), [row])
        return int(conn.execute(_BLOB_OF, {"sha256": digest}).scalar_one())

    async def _blob(self, conn: AsyncConnection, data: bytes, digest: str) -> int:
        """The one stored copy of this content (sealed), created if new."""
        await conn.execute(
            _insert_ignore(conn, Blob.__table__),
            [{"sha256": digest, "size": len(data), "sealed": self.cipher.seal(data), "created_at": datetime.now(UTC)}],
        )
        return int((await conn.execute(select(Blob.id).where(Blob.sha256 == digest))).scalar_one())

    async def _delete(self, requester: rules.Requester, patient: PatientAccount, document_id: int, actor: str, structure: str) -> None:
        async with self.engine.begin() as conn:
            row = await self._one(conn, patient.id, document_id)
            if row is None:
                raise Refused(rules.NOT_FOUND, rule="not-found", conceal=True)
            decision = rules.decide(rules.Facts(requester, rules.Act.DELETE, await self._settings(conn, patient), _facts_document(row)))
            if not decision.allowed:
                raise Refused(decision.reason, rule=decision.rule, conceal=decision.conceal)
            await conn.execute(
                update(DocumentRow)
                .where(and_(DocumentRow.id == document_id, DocumentRow.status != "deleted"))
                .values(status="deleted", changed_at=datetime.now(UTC))
            )
            await self._bump(conn, patient.id)
        line = self._line(row, "")
        await self.history.record(
            Access(
                patient.id, actor, "document-deleted", _what(line), structure, decision.right, hidden_from_guardians=row.invisible_guardians
            )
        )

    # ---- telling the patient of a professional's first access ----------------------------------------------

    async def first_access(self, pro: Professional, patient: PatientAccount) -> None:
        """The first time a professional reaches this dossier, the patient (a minor's
        guardians) get one email; it says neither who nor what (email is not a safe channel)."""
        pair = (patient.id, pro.national_id)
        if pair in self._known:
            return
        async with self.reads.connect() as conn:
            known = (
                await conn.execute(
                    select(KnownProfessional.first_at).where(
                        KnownProfessional.patient_id == patient.id, KnownProfessional.national_id == pro.national_id
                    )
                )
            ).first()
        if known is not None:
            self._remember(pair)
            return
        async with self.engine.begin() as conn:
            inserted = await conn.execute(
                _insert_ignore(conn, KnownProfessional.__table__),
                [{"patient_id": patient.id, "national_id": pro.national_id, "first_at": datetime.now(UTC)}],
            )
            self._remember(pair)
            if not inserted.rowcount:
                return
            to = [patient.email] if patient.email and patient.status == "activated" else []
            minor = patient.birth_date > date.today().replace(year=date.today().year - 18)
            if minor:
                to += [
                    guardian.email
                    for guardian in await patients.guardians_of(conn, patient.id)
                    if guardian.email and guardian.status == "activated"
                ]
        task = asyncio.get_running_loop().create_task(self._tell(sorted(set(to)), patient, minor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell(self, addresses: list[str], patient: PatientAccount, minor: bool) -> None:
        whose = f"le dossier médical de {patient.first_names.split()[0]}" if minor else "votre dossier médical"
        for address in addresses:
            try:
                await self.notifier.send(
                    address,
                    "Un professionnel de santé a consulté votre dossier médical pour la première fois",
                    f"Bonjour,\n\nUn professionnel de santé vient d'accéder pour la première fois à {whose}.\n"
                    f"Pour savoir qui, quand et à quel titre, connectez-vous et ouvrez l'historique des accès : {self.settings.webmail_url}historique\n\n"
                    "Si vous ne connaissez pas ce professionnel, vous pouvez le bloquer depuis la page « Qui peut voir mon dossier ».\n"
                    "Caducée ne vous demandera jamais votre mot de passe ni votre code par courriel.\n",
                )
            except Exception:  # best effort: the access itself is recorded in the history
                log.exception("first-access notice not sent")

    def _remember(self, pair: tuple[int, str]) -> None:
        if len(self._known) > 200_000:
            self._known.clear()
        self._known.add(pair)

    async def close(self) -> None:
        """Wait for the emails in flight (the group commit stops with the process)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        await self.close()
        await self._filings.stop()
        self._writer.close()


# The filing's statements, built once: building a statement and its cache key on every
# filing cost as much as running it (py-spy, bench/dossier.py).
_SETTINGS = select(DossierSettings.emergency_refused, DossierSettings.version).where(DossierSettings.patient_id == bindparam("patient"))
_INTAKE_DONE = select(Intake.outcome).where(Intake.message_id == bindparam("message"), Intake.patient_id == bindparam("patient"))
_UNIQUE_ID_USED = select(DocumentRow.id).where(
    DocumentRow.patient_id == bindparam("patient"), DocumentRow.unique_id == bindparam("unique_id")
)
_BLOB_OF = select(Blob.id).where(Blob.sha256 == bindparam("sha256"))
_FACTS = select(
    select(Block.national_id)
    .where(Block.patient_id == bindparam("patient"), Block.national_id == bindparam("national_id"))
    .exists()
    .label("blocked"),
    select(Consent.national_id)
    .where(Consent.patient_id == bindparam("patient"), Consent.national_id == bindparam("national_id"))
    .exists()
    .label("consent"),
    select(Emergency.id)
    .where(
        Emergency.patient_id == bindparam("patient"),
        Emergency.national_id == bindparam("national_id"),
        Emergency.expires_at > bindparam("now"),
    )
    .exists()
    .label("emergency"),
)


def _professional_sync(conn: Connection, pro: Professional, patient_id: int, now: datetime) -> rules.Requester:
    row = conn.execute(_FACTS, {"patient": patient_id, "national_id": pro.national_id, "now": now}).one()
    return rules.Requester(
        rules.Role.PROFESSIONAL, pro.identity, blocked=bool(row.blocked), authorised=bool(row.consent), emergency=bool(row.emergency)
    )


def _settings_sync(conn: Connection, patient: PatientAccount) -> tuple[rules.Settings, int]:
    row = conn.execute(_SETTINGS, {"patient": patient.id}).first()
    settings = rules.Settings(emergency_refused=bool(row and row.emergency_refused), closed=patient.status in {"opposed", "closed"})
    return settings, int(row.version) if row else 0


def _one_sync(conn: Connection, patient_id: int, document_id: int):  # type: ignore[no-untyped-def]
    return conn.execute(
        select(*_LIST_COLUMNS, DocumentRow.title, DocumentRow.blob_id, DocumentRow.sha256).where(
            DocumentRow.id == document_id, DocumentRow.patient_id == patient_id
        )
    ).first()


def _bump_sync(conn: Connection, patient_id: int) -> None:
    now = datetime.now(UTC)
    conn.execute(
        _insert_ignore(conn, DossierSettings.__table__),
        [{"patient_id": patient_id, "emergency_refused": False, "version": 0, "updated_at": now}],
    )
    conn.execute(
        update(DossierSettings).where(DossierSettings.patient_id == patient_id).values(version=DossierSettings.version + 1, updated_at=now)
    )


def _what(line: DocumentLine) -> str:
    """A document as the history names it: its type and date of care (the title stays sealed)."""
    if line.invisible_patient:
        return "un document"
    return line.type_label + (f" du {line.care_date:%d/%m/%Y}" if line.care_date else "")


def _filename(name: str, extension: str) -> str:
    from caducee.webmail.uploads import safe_filename

    return safe_filename(name, extension)[:128]


def _french_ins_error(text: str) -> str:
    if "wrong key" in text:
        return "la clé (les deux derniers chiffres) ne correspond pas au numéro."
    if "15 characters" in text:
        return "un INS compte 15 caractères."
    return "vérifiez les chiffres."


async def reseal(engine: AsyncEngine, cipher: Resealer) -> int:
    """`caducee keys rotate`: document contents, titles and the medical profile under the current sealing key."""
    changed = await reseal_table(engine, Blob.__table__, ["sealed"], cipher)
    changed += await reseal_table(engine, DocumentRow.__table__, ["title"], cipher)
    return changed + await reseal_table(engine, ProfileItem.__table__, ["sealed"], cipher)
