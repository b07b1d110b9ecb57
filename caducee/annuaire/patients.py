"""The annuaire's service API for patient accounts: login look-up, profiles, lifecycle.

The webmail calls these; it never reads the `patients`, `guardianships` or `delegations`
tables itself. A profile is whose messages a person may see: their own, a minor's they are
the legal guardian of, or a patient's who delegated access to them (a carer).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.identifiers import InvalidIdentifier, validate_ins
from caducee.annuaire.models import Delegation, Guardianship, Mailbox, Patient, PatientStatus
from caducee.annuaire.service import MailboxEntry, _entry, _entry_query

# Scopes a patient can grant a carer. "messages" lets the carer read; "messages:reply"
# lets them answer too (in the patient's name, which the patient's history shows).
SCOPE_READ = "messages"
SCOPE_REPLY = "messages:reply"
# The dossier médical: "dossier" lets the carer read it, "dossier:manage" also add documents,
# mask them and change the dossier's settings.
SCOPE_DOSSIER = "dossier"
SCOPE_DOSSIER_MANAGE = "dossier:manage"


@dataclass(frozen=True)
class PatientAccount:
    id: int
    ins: str
    address: str  # the patient's mailbox address
    mailbox_id: int
    first_names: str
    last_name: str
    birth_date: date
    status: str
    email: str | None
    password_hash: str | None

    @property
    def name(self) -> str:
        return f"{self.first_names.split()[0]} {self.last_name}" if self.first_names else self.last_name


@dataclass(frozen=True)
class Profile:
    """A profile a person may act on, and on what grounds."""

    account: PatientAccount
    relation: str  # "self" / "guardian" / "carer"
    may_reply: bool
    scopes: frozenset[str] = frozenset()  # a carer's delegation scopes

    @property
    def dossier_access(self) -> str:
        """What this profile may do with the dossier: "manage", "read" or "" (nothing)."""
        if self.relation in {"self", "guardian"} or SCOPE_DOSSIER_MANAGE in self.scopes:
            return "manage"
        return "read" if SCOPE_DOSSIER in self.scopes else ""


def _query():  # type: ignore[no-untyped-def]
    return select(
        Patient.id,
        Patient.ins,
        Patient.first_names,
        Patient.last_name,
        Patient.birth_date,
        Patient.status,
        Patient.email,
        Patient.password_hash,
        Mailbox.address,
        Mailbox.id.label("mailbox_id"),
    ).join(Mailbox, Mailbox.patient_id == Patient.id)


def _account(row) -> PatientAccount:  # type: ignore[no-untyped-def]
    return PatientAccount(
        row.id,
        row.ins,
        row.address,
        row.mailbox_id,
        row.first_names,
        row.last_name,
        row.birth_date,
        row.status,
        row.email,
        row.password_hash,
    )


def canonical_identifier(identifier: str) -> str:
    """One spelling per account name, whatever was typed: an email trimmed and lower-cased;
    anything else (an INS) with every separator a person or a word processor puts in (spaces,
    non-breaking spaces, dots, dashes) removed and upper-cased. Lock-outs key on this for
    identifiers that name no account, so that an unknown account is locked exactly as a
    known one would be."""
    text = unicodedata.normalize("NFKC", identifier or "").strip()
    if "@" in text:
        return "email:" + "".join(text.split()).lower()
    return "ins:" + "".join(ch for ch in text if ch.isalnum()).upper()


async def find_for_login(conn: AsyncConnection, identifier: str) -> PatientAccount | None:
    """The account named by an INS (spaces, dots or dashes allowed) or a registered email;
    None if unknown."""
    kind, _, text = canonical_identifier(identifier).partition(":")
    if not text:
        return None
    if kind == "email":
        condition = Patient.email == text
    else:
        try:
            condition = Patient.ins == validate_ins(text)
        except InvalidIdentifier:
            return None
    row = (await conn.execute(_query().where(condition))).first()
    return _account(row) if row else None


async def find_by_ins(conn: AsyncConnection, ins: str) -> PatientAccount | None:
    """The patient whose INS this is (validated, key checked: raises InvalidIdentifier), or None."""
    row = (await conn.execute(_query().where(Patient.ins == validate_ins(ins)))).first()
    return _account(row) if row else None


async def guardians_of(conn: AsyncConnection, minor_id: int) -> list[PatientAccount]:
    """The legal representatives of a minor (none for a minor in the care of the ASE)."""
    rows = await conn.execute(_query().join(Guardianship, Guardianship.guardian_id == Patient.id).where(Guardianship.minor_id == minor_id))
    return [_account(row) for row in rows]


async def get_account(conn: AsyncConnection, patient_id: int) -> PatientAccount | None:
    row = (await conn.execute(_query().where(Patient.id == patient_id))).first()
    return _account(row) if row else None


async def profiles_for(conn: AsyncConnection, patient_id: int) -> list[Profile]:
    """The person's own profile first, then the minors they are guardian of, then delegations."""
    own = await get_account(conn, patient_id)
    if own is None:
        return []
    profiles = [Profile(own, "self", True)]
    minors = await conn.execute(
        _query()
        .join(Guardianship, Guardianship.minor_id == Patient.id)
        .where(Guardianship.guardian_id == patient_id)
        .order_by(Patient.first_names)
    )
    today = date.today()
    # A guardianship is parental authority over a minor: it ends at 18 whether or not the
    # operator has removed the row yet.
    profiles += [Profile(_account(row), "guardian", True) for row in minors if row.birth_date is None or _age(row.birth_date, today) < 18]
    delegated = await conn.execute(
        _query()
        .add_columns(Delegation.scope)
        .join(Delegation, Delegation.patient_id == Patient.id)
        .where(Delegation.carer_id == patient_id)
        .order_by(Patient.last_name)
    )
    for row in delegated:
        scopes = {scope.strip() for scope in row.scope.split(",")}
        if scopes & {SCOPE_READ, SCOPE_REPLY}:
            profiles.append(Profile(_account(row), "carer", SCOPE_REPLY in scopes, frozenset(scopes)))
    return [
        profile
        for profile in profiles
        if profile.account.status in {PatientStatus.ACTIVATED.value, PatientStatus.CREATED.value} or profile.relation == "self"
    ]


async def set_password(conn: AsyncConnection, patient_id: int, password_hash: str, email: str | None) -> None:
    values: dict[str, object] = {"password_hash": password_hash, "updated_at": datetime.now(UTC)}
    if email:
        values["email"] = email.lower()
    await conn.execute(update(Patient).where(Patient.id == patient_id).values(**values))


async def email_taken(conn: AsyncConnection, email: str, patient_id: int) -> bool:
    count = await conn.execute(
        select(func.count()).select_from(Patient).where(and_(Patient.email == email.lower(), Patient.id != patient_id))
    )
    return bool(count.scalar_one())


async def set_status(conn: AsyncConnection, patient_id: int, status: PatientStatus) -> None:
    """Move a profile along its lifecycle; the gateway applies it within `directory_cache_seconds`."""
    now = datetime.now(UTC)
    values: dict[str, object] = {"status": status.value, "updated_at": now}
    if status is PatientStatus.ACTIVATED:
        values["activated_at"] = now
    await conn.execute(update(Patient).where(Patient.id == patient_id).values(**values))


async def describe(conn: AsyncConnection, addresses: list[str]) -> dict[str, MailboxEntry]:
    """How to present correspondents (name, profession, structure), in one query.

    Unlike the public search this includes liste rouge mailboxes: the patient already
    corresponds with them, nothing is disclosed.
    """
    if not addresses:
        return {}
    rows = await conn.execute(_entry_query().where(Mailbox.address.in_(sorted({a.lower() for a in addresses}))))
    return {row.address: _entry(row) for row in rows}


async def emails_of(conn: AsyncConnection, addresses: list[str]) -> dict[str, str]:
    """The registered email of each activated patient mailbox among `addresses`."""
    rows = await conn.execute(
        select(Mailbox.address, Patient.email)
        .join(Patient, Patient.id == Mailbox.patient_id)
        .where(Mailbox.address.in_(addresses), Patient.email.is_not(None), Patient.status == PatientStatus.ACTIVATED.value)
    )
    return {row.address: row.email for row in rows}


async def set_email(conn: AsyncConnection, patient_id: int, email: str) -> None:
    await conn.execute(update(Patient).where(Patient.id == patient_id).values(email=email.lower(), updated_at=datetime.now(UTC)))


async def ids_of(conn: AsyncConnection, addresses: list[str]) -> dict[str, int]:
    """The patient id behind each patient mailbox address among `addresses`."""
    if not addresses:
        return {}
    rows = await conn.execute(
        select(Mailbox.address, Mailbox.patient_id).where(Mailbox.address.in_(addresses), Mailbox.patient_id.is_not(None))
    )
    return {row.address: row.patient_id for row in rows}


# ---- for the agenda ------------------------------------------------------------------


@dataclass(frozen=True)
class Demographics:
    """What the prevention calendar needs of a patient: who, born when, of which INS sex."""

    id: int
    birth_date: date
    sex: str


async def activated_demographics(
    conn: AsyncConnection,
    first_id: int,
    last_id: int,
    *,
    limit: int,
    born_on: Collection[date] = (),
    born_by: date | None = None,
    ids: Collection[int] = (),
) -> list[Demographics]:
    """Activated patients with `first_id <= id < last_id`, by id, at most `limit`: the daily
    reminder job walks every patient this way, one index range at a time. With filters,
    only those born on one of `born_on`, or by `born_by`, or among `ids`: the database
    drops everyone else before a row is sent."""
    query = select(Patient.id, Patient.birth_date, Patient.sex).where(
        Patient.id >= first_id, Patient.id < last_id, Patient.status == PatientStatus.ACTIVATED.value
    )
    if born_on or born_by is not None or ids:
        wanted: list[ColumnElement[bool]] = []
        if born_on:
            wanted.append(Patient.birth_date.in_(sorted(born_on)))
        if born_by is not None:
            wanted.append(Patient.birth_date <= born_by)
        if ids:
            wanted.append(Patient.id.in_(sorted(ids)))
        query = query.where(or_(*wanted))
    rows = await conn.execute(query.order_by(Patient.id).limit(limit))
    return [Demographics(row.id, row.birth_date, row.sex) for row in rows]


async def highest_patient_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.max(Patient.id)))).scalar_one() or 0)


@dataclass(frozen=True)
class ReminderContact:
    """Where a reminder about a patient's agenda goes: their own email when their profile
    is activated, and for a minor their activated guardians' emails."""

    patient_id: int
    name: str
    status: str
    birth_date: date
    emails: tuple[str, ...]


async def reminder_contacts(conn: AsyncConnection, patient_ids: list[int], today: date) -> dict[int, ReminderContact]:
    if not patient_ids:
        return {}
    wanted = sorted(set(patient_ids))
    rows = (await conn.execute(select(Patient).where(Patient.id.in_(wanted)))).all()
    guardians: dict[int, list[str]] = {}
    minors = [row.id for row in rows if _age(row.birth_date, today) < 18]
    if minors:
        found = await conn.execute(
            select(Guardianship.minor_id, Patient.email)
            .join(Patient, Patient.id == Guardianship.guardian_id)
            .where(Guardianship.minor_id.in_(minors), Patient.status == PatientStatus.ACTIVATED.value, Patient.email.is_not(None))
        )
        for minor_id, email in found:
            if email is not None:  # the query keeps only guardians with an email
                guardians.setdefault(minor_id, []).append(email)
    contacts = {}
    for row in rows:
        own = [row.email] if row.email and row.status == PatientStatus.ACTIVATED.value else []
        name = f"{row.first_names.split()[0]} {row.last_name}" if row.first_names else row.last_name
        emails = tuple(dict.fromkeys([*own, *sorted(guardians.get(row.id, []))]))
        contacts[row.id] = ReminderContact(row.id, name, row.status, row.birth_date, emails)
    return contacts


def _age(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


async def demographics_of(conn: AsyncConnection, patient_id: int) -> Demographics | None:
    row = (await conn.execute(select(Patient.id, Patient.birth_date, Patient.sex).where(Patient.id == patient_id))).first()
    return Demographics(row.id, row.birth_date, row.sex) if row else None


async def account_for_address(conn: AsyncConnection, address: str) -> PatientAccount | None:
    """The patient whose mailbox this is (the agenda files an invitation to its patient)."""
    row = (await conn.execute(_query().where(Mailbox.address == address.lower()))).first()
    return _account(row) if row else None
