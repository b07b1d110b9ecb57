"""The operator's administration of the annuaire: professionals with their mailboxes, and
patients, added, changed and retired by hand (`caducee professionals ...`, `caducee patients ...`).

The public files feed most of the directory; these are the people the operator serves
itself (its own mailboxes, source "local", which no import rewrites). Every refusal is an
`AdminError` whose message says what to do, and nothing is deleted: a retired mailbox keeps
its messages and its address (a new person never inherits someone else's mail), a retired
patient's profile is closed, as when the patient closes it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.identifiers import InvalidIdentifier, national_id_for, validate_ins, validate_mailbox_address
from caducee.annuaire.models import Mailbox, MailboxType, Patient, PatientStatus, Professional, Structure
from caducee.annuaire.service import add_mailbox, add_patient, add_professional
from caducee.annuaire.text import fold

# TRE_G15 profession codes the operator is most likely to type, with the directory's labels:
# `--profession 60` is enough; any other code needs its label.
PROFESSIONS = {
    "10": "Médecin",
    "21": "Pharmacien",
    "26": "Audioprothésiste",
    "28": "Opticien-Lunetier",
    "40": "Chirurgien-Dentiste",
    "50": "Sage-Femme",
    "60": "Infirmier",
    "69": "Infirmier psychiatrique",
    "70": "Masseur-Kinésithérapeute",
    "80": "Pédicure-Podologue",
    "91": "Orthophoniste",
    "92": "Orthoptiste",
    "96": "Psychomotricien",
}
SEXES = {"M", "F", "I"}  # as in INSi: masculin, féminin, indéterminé
OWN_TYPES = {MailboxType.PER.value, MailboxType.ORG.value, MailboxType.CAB.value, MailboxType.APP.value}


class AdminError(ValueError):
    """A change the annuaire refuses; the message says why and what to do instead."""


@dataclass(frozen=True)
class ProfessionalView:
    """A professional and their mailboxes, as `caducee professionals show` prints them."""

    national_id: str
    name: str
    profession: str
    active: bool
    in_ps_file: bool
    mailboxes: tuple[tuple[str, str, bool], ...]  # (address, type, active)


@dataclass(frozen=True)
class PatientView:
    id: int
    ins: str
    address: str
    name: str
    birth_date: date
    sex: str
    status: str
    email: str | None


def national_id_of(rpps: str | None, adeli: str | None) -> str:
    """`8` + RPPS or `0` + ADELI, keys checked; exactly one of the two."""
    if bool(rpps) == bool(adeli):
        raise AdminError("give the professional's RPPS number (--rpps) or, for those who have none yet, their ADELI number (--adeli)")
    try:
        return national_id_for("RPPS", rpps) if rpps else national_id_for("ADELI", adeli or "")
    except InvalidIdentifier as exc:
        raise AdminError(str(exc)) from None


def own_address(address: str, local_domains: Collection[str], patient_domain: str) -> str:
    """A professional mailbox address on one of our domains (not the patients' one), normalised."""
    try:
        address = validate_mailbox_address(address)
    except InvalidIdentifier as exc:
        raise AdminError(str(exc)) from None
    domain = address.rpartition("@")[2]
    if domain == patient_domain.lower():
        raise AdminError(
            f"{domain} is the patients' domain: a professional's mailbox is on {', '.join(_pro_domains(local_domains, patient_domain))}"
        )
    if domain not in {d.lower() for d in local_domains}:
        raise AdminError(
            f"{domain} is not one of our domains ({', '.join(_pro_domains(local_domains, patient_domain))}, the `local_domains` setting): "
            "mailboxes of other operators are theirs to create"
        )
    return address


def _pro_domains(local_domains: Collection[str], patient_domain: str) -> list[str]:
    return [d for d in local_domains if d.lower() != patient_domain.lower()]


def profession_label(code: str, label: str | None) -> str:
    if label:
        return label
    if code in PROFESSIONS:
        return PROFESSIONS[code]
    known = ", ".join(f"{c} {name}" for c, name in PROFESSIONS.items())
    raise AdminError(f"profession code {code!r} needs its label (--profession-label); the codes known without one: {known}")


async def _structure_key(conn: AsyncConnection, structure: str) -> str:
    key = structure.strip()
    if ":" not in key:
        raise AdminError(
            f"a structure is named by its key, type:number (for example FINESS:750000010 or SIRET:73282932000074), not {structure!r}"
        )
    kind, _, number = key.partition(":")
    key = f"{kind.upper()}:{number}"
    if (await conn.execute(select(Structure.id).where(Structure.structure_key == key))).first() is None:
        raise AdminError(f"no structure {key} in the annuaire (structures come from the directory files)")
    return key


async def add_professional_mailbox(
    conn: AsyncConnection,
    *,
    national_id: str,
    address: str,
    password_hash: str,
    local_domains: Collection[str],
    patient_domain: str,
    civility: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    profession_code: str | None = None,
    profession: str | None = None,
    specialty: str | None = None,
    structure: str | None = None,
    service: str = "",
    liste_rouge: bool = False,
) -> tuple[str, bool]:
    """Create the professional's PER mailbox at `address`, and the professional when the
    annuaire does not know them yet (then their names and profession are needed). Returns
    the address and whether the professional was created."""
    address = own_address(address, local_domains, patient_domain)
    taken = (await conn.execute(select(Mailbox.active, Mailbox.retired_at).where(Mailbox.address == address))).first()
    if taken is not None:
        if taken.active:
            raise AdminError(f"the mailbox {address} already exists: `caducee professionals change {address}` changes it")
        raise AdminError(
            f"{address} was the address of a mailbox retired on {_day(taken.retired_at)}: its messages stay with it, "
            "so it is not given to anyone else; choose another address"
        )
    known = (await conn.execute(select(Professional.active, Professional.id).where(Professional.national_id == national_id))).first()
    if known is None:
        missing = [
            option
            for option, value in (("--first-name", first_name), ("--last-name", last_name), ("--profession", profession_code))
            if not (value or "").strip()
        ]
        if missing:
            raise AdminError(f"the annuaire does not know {national_id} yet: give {', '.join(missing)} to create them")
        code = (profession_code or "").strip()
        await add_professional(
            conn,
            national_id=national_id,
            civility=(civility or ("Dr" if code == "10" else "")).strip(),
            first_name=(first_name or "").strip(),
            last_name=(last_name or "").strip(),
            profession_code=code,
            profession_label=profession_label(code, profession),
            savoir_faire_label=(specialty or "").strip(),
        )
    else:
        changes = _professional_changes(civility, first_name, last_name, profession_code, profession, specialty)
        if not known.active:
            changes["active"] = True  # added back by the operator, who knows they practise again
        if changes:
            await _update_professional(conn, national_id, changes)
    pro = (await conn.execute(select(Professional).where(Professional.national_id == national_id))).one()
    await add_mailbox(
        conn,
        address=address,
        type=MailboxType.PER,
        display_name=_display_name(pro.civility, pro.first_name, pro.last_name),
        password_hash=password_hash,
        professional=national_id,
        structure=await _structure_key(conn, structure) if structure else None,
        service=service,
        liste_rouge=liste_rouge,
    )
    return address, known is None


def _display_name(civility: str, first_name: str, last_name: str) -> str:
    return " ".join(part for part in (civility, first_name, last_name) if part)


def _day(moment: datetime | None) -> str:
    return moment.date().isoformat() if moment is not None else "an unknown date"


def _professional_changes(
    civility: str | None,
    first_name: str | None,
    last_name: str | None,
    profession_code: str | None,
    profession: str | None,
    specialty: str | None,
) -> dict[str, object]:
    changes: dict[str, object] = {}
    for column, value in (("civility", civility), ("first_name", first_name), ("last_name", last_name), ("savoir_faire_label", specialty)):
        if value is not None:
            changes[column] = value.strip()
    if profession_code is not None:
        changes["profession_code"] = profession_code.strip()
        changes["profession_label"] = profession_label(profession_code.strip(), profession)
    elif profession is not None:
        changes["profession_label"] = profession.strip()
    for column in ("first_name", "last_name"):
        if column in changes and not changes[column]:
            raise AdminError(f"a professional's {column.replace('_', ' ')} cannot be empty")
    return changes


async def _update_professional(conn: AsyncConnection, national_id: str, changes: dict[str, object]) -> None:
    now = datetime.now(UTC)
    await conn.execute(update(Professional).where(Professional.national_id == national_id).values(**changes, updated_at=now))
    pro = (await conn.execute(select(Professional).where(Professional.national_id == national_id))).one()
    await conn.execute(
        update(Professional).where(Professional.national_id == national_id).values(search_name=fold(f"{pro.last_name} {pro.first_name}"))
    )
    for mailbox_id in (
        await conn.execute(select(Mailbox.id).where(Mailbox.professional_national_id == national_id, Mailbox.source == "local"))
    ).scalars():
        await _refresh_mailbox(conn, mailbox_id)


async def _refresh_mailbox(conn: AsyncConnection, mailbox_id: int) -> None:
    """The mailbox's denormalised name and search columns, from its professional and structure."""
    box = (await conn.execute(select(Mailbox).where(Mailbox.id == mailbox_id))).one()
    pro = None
    if box.professional_national_id:
        pro = (await conn.execute(select(Professional).where(Professional.national_id == box.professional_national_id))).first()
    structure = None
    if box.structure_key:
        structure = (await conn.execute(select(Structure).where(Structure.structure_key == box.structure_key))).first()
    display = box.display_name
    parts = [box.service]
    if pro is not None:
        parts += [pro.last_name, pro.first_name]
        if box.type == MailboxType.PER.value:
            display = _display_name(pro.civility, pro.first_name, pro.last_name)
    if structure is not None:
        parts.append(structure.name)
    await conn.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(
            display_name=display,
            search_text=fold(" ".join([display, *parts]))[:800],
            profession_code=pro.profession_code if pro is not None else "",
            postcode=structure.postcode if structure is not None else "",
            city_search=fold(structure.city) if structure is not None else "",
            updated_at=datetime.now(UTC),
        )
    )


async def _resolve_professional(conn: AsyncConnection, who: str) -> tuple[str, str | None]:
    """(national id, the mailbox address when `who` is one) for an address, `8`+RPPS, `0`+ADELI or a bare RPPS."""
    who = who.strip()
    if "@" in who:
        row = (
            await conn.execute(select(Mailbox.professional_national_id, Mailbox.source, Mailbox.type).where(Mailbox.address == who.lower()))
        ).first()
        if row is None:
            raise AdminError(f"no mailbox {who.lower()} in the annuaire")
        if row.source != "local":
            raise AdminError(f"{who.lower()} comes from the national directory's extraction: it is changed there, not here")
        if row.type not in OWN_TYPES:
            raise AdminError(f"{who.lower()} is a patient's mailbox: use `caducee patients`")
        if not row.professional_national_id:
            raise AdminError(f"{who.lower()} is an organisation's mailbox, attached to no professional")
        return row.professional_national_id, who.lower()
    national_id = "8" + who if len(who) == 11 and who.isdigit() else who
    if (await conn.execute(select(Professional.id).where(Professional.national_id == national_id))).first() is None:
        raise AdminError(f"no professional {national_id} in the annuaire (give a mailbox address, an RPPS number, or 8+RPPS / 0+ADELI)")
    return national_id, None


async def change_professional(
    conn: AsyncConnection,
    who: str,
    *,
    civility: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    profession_code: str | None = None,
    profession: str | None = None,
    specialty: str | None = None,
    structure: str | None = None,
    service: str | None = None,
    liste_rouge: bool | None = None,
) -> list[str]:
    """Change a professional (names, profession: every one of their local mailboxes shows it)
    and, when `who` is a mailbox address, that mailbox (structure, service, liste rouge).
    Returns notes for the operator (what a later import would undo)."""
    national_id, address = await _resolve_professional(conn, who)
    changes = _professional_changes(civility, first_name, last_name, profession_code, profession, specialty)
    mailbox_changes: dict[str, object] = {}
    if structure is not None:
        mailbox_changes["structure_key"] = (
            None if structure.strip().lower() in {"", "none", "aucune"} else await _structure_key(conn, structure)
        )
    if service is not None:
        mailbox_changes["service"] = service.strip()
    if liste_rouge is not None:
        mailbox_changes["liste_rouge"] = liste_rouge
    if mailbox_changes and address is None:
        raise AdminError("--structure, --service and --liste-rouge change one mailbox: name it by its address")
    if not changes and not mailbox_changes:
        raise AdminError("nothing to change: give at least one of the options (`caducee professionals change --help`)")
    active = (await conn.execute(select(Professional.active, Professional.in_ps_file).where(Professional.national_id == national_id))).one()
    notes = []
    if changes:
        await _update_professional(conn, national_id, changes)
        if active.in_ps_file:
            notes.append("this professional is listed in the PS file: its next import sets their names and profession back to what it says")
    if mailbox_changes and address is not None:
        mailbox_id = (await conn.execute(select(Mailbox.id).where(Mailbox.address == address))).scalar_one()
        await conn.execute(update(Mailbox).where(Mailbox.id == mailbox_id).values(**mailbox_changes))
        await _refresh_mailbox(conn, mailbox_id)
    return notes


async def retire_professional(conn: AsyncConnection, who: str) -> list[str]:
    """Retire one mailbox (by its address) or a professional and all their local mailboxes
    (by national id): no login, no mail accepted for them, out of the search; messages kept.
    Returns the addresses retired."""
    national_id, address = await _resolve_professional(conn, who)
    now = datetime.now(UTC)
    condition = Mailbox.address == address if address is not None else Mailbox.professional_national_id == national_id
    retired = list(
        (await conn.execute(select(Mailbox.address).where(condition, Mailbox.source == "local", Mailbox.active.is_(True)))).scalars()
    )
    if address is not None and not retired:
        raise AdminError(f"the mailbox {address} is already retired")
    if retired:
        await conn.execute(
            update(Mailbox).where(Mailbox.address.in_(retired)).values(active=False, retired_at=now, password_hash=None, updated_at=now)
        )
    if address is None:
        pro_active = (await conn.execute(select(Professional.active).where(Professional.national_id == national_id))).scalar_one()
        if not pro_active and not retired:
            raise AdminError(f"the professional {national_id} is already retired, with no active mailbox of ours")
        await conn.execute(update(Professional).where(Professional.national_id == national_id).values(active=False, updated_at=now))
    return retired


async def set_mailbox_password(conn: AsyncConnection, address: str, password_hash: str) -> str:
    """A new password for one of our professional (or organisation) mailboxes; the old one stops working."""
    address = address.strip().lower()
    row = (await conn.execute(select(Mailbox.type, Mailbox.active, Mailbox.source).where(Mailbox.address == address))).first()
    if row is None:
        raise AdminError(f"no mailbox {address} in the annuaire")
    if row.type == MailboxType.PAT.value:
        raise AdminError(f"{address} is a patient's mailbox: patients choose a new password themselves (« Mot de passe oublié »)")
    if row.source != "local":
        raise AdminError(f"{address} is another operator's mailbox (from the national directory): its password is not ours")
    if not row.active:
        raise AdminError(f"the mailbox {address} is retired")
    await conn.execute(update(Mailbox).where(Mailbox.address == address).values(password_hash=password_hash, updated_at=datetime.now(UTC)))
    return address


async def show_professional(conn: AsyncConnection, who: str) -> ProfessionalView:
    national_id, _ = await _resolve_professional(conn, who)
    pro = (await conn.execute(select(Professional).where(Professional.national_id == national_id))).one()
    boxes = (
        await conn.execute(
            select(Mailbox.address, Mailbox.type, Mailbox.active)
            .where(Mailbox.professional_national_id == national_id)
            .order_by(Mailbox.address)
        )
    ).all()
    return ProfessionalView(
        national_id,
        _display_name(pro.civility, pro.first_name, pro.last_name),
        pro.profession_label,
        bool(pro.active),
        bool(pro.in_ps_file),
        tuple((row.address, row.type, bool(row.active)) for row in boxes),
    )


# ---- patients ------------------------------------------------------------------------------


def _ins(value: str) -> str:
    try:
        return validate_ins(value)
    except InvalidIdentifier as exc:
        raise AdminError(str(exc)) from None


def _sex(value: str) -> str:
    sex = value.strip().upper()
    if sex not in SEXES:
        raise AdminError(f"sex is M, F or I (indéterminé), not {value!r}")
    return sex


def _birth_date(value: str) -> date:
    try:
        born = date.fromisoformat(value.strip())
    except ValueError:
        raise AdminError(f"the birth date is written YYYY-MM-DD, not {value!r}") from None
    if born > date.today() or born.year < 1890:
        raise AdminError(f"a birth date of {born.isoformat()} cannot be right")
    return born


async def _email_free(conn: AsyncConnection, email: str, patient_id: int | None) -> str:
    email = email.strip().lower()
    try:
        validate_mailbox_address(email)
    except InvalidIdentifier as exc:
        raise AdminError(str(exc).replace("address:", "email:", 1)) from None
    query = select(func.count()).select_from(Patient).where(Patient.email == email)
    if patient_id is not None:
        query = query.where(Patient.id != patient_id)
    if (await conn.execute(query)).scalar_one():
        raise AdminError(f"{email} is already the email of another profile: each profile has its own")
    return email


async def add_patient_profile(
    conn: AsyncConnection,
    *,
    ins: str,
    last_name: str,
    first_names: str,
    birth_date: str,
    sex: str,
    patient_domain: str,
    email: str | None = None,
) -> int:
    """A created (not yet activated) profile and its mailbox, as the population import makes
    them: the patient activates it with a provisional code, choosing their password."""
    ins = _ins(ins)
    if (await conn.execute(select(Patient.status).where(Patient.ins == ins))).first() is not None:
        raise AdminError(f"a profile with INS {ins} already exists: `caducee patients change {ins}` changes it")
    if not last_name.strip() or not first_names.strip():
        raise AdminError("a patient's last name and first names cannot be empty")
    return await add_patient(
        conn,
        ins=ins,
        last_name=last_name.strip(),
        first_names=" ".join(first_names.split()),
        birth_date=_birth_date(birth_date),
        sex=_sex(sex),
        patient_domain=patient_domain,
        status=PatientStatus.CREATED,
        email=await _email_free(conn, email, None) if email else None,
    )


async def find_patient(conn: AsyncConnection, ins: str) -> PatientView:
    ins = _ins(ins)
    row = (
        await conn.execute(select(Patient, Mailbox.address).join(Mailbox, Mailbox.patient_id == Patient.id).where(Patient.ins == ins))
    ).first()
    if row is None:
        raise AdminError(f"no patient profile with INS {ins}")
    patient = row
    first = patient.first_names.split()[0] if patient.first_names else ""
    return PatientView(
        patient.id,
        patient.ins,
        row.address,
        f"{first} {patient.last_name}".strip(),
        patient.birth_date,
        patient.sex,
        patient.status,
        patient.email,
    )


async def change_patient(
    conn: AsyncConnection,
    ins: str,
    *,
    last_name: str | None = None,
    first_names: str | None = None,
    birth_date: str | None = None,
    sex: str | None = None,
    email: str | None = None,
) -> PatientView:
    """Correct a profile's identity or the email its codes go to (the INS itself never changes:
    it is the profile)."""
    patient = await find_patient(conn, ins)
    changes: dict[str, object] = {}
    if last_name is not None:
        changes["last_name"] = last_name.strip()
    if first_names is not None:
        changes["first_names"] = " ".join(first_names.split())
    if any(key in changes and not changes[key] for key in ("last_name", "first_names")):
        raise AdminError("a patient's last name and first names cannot be empty")
    if birth_date is not None:
        changes["birth_date"] = _birth_date(birth_date)
    if sex is not None:
        changes["sex"] = _sex(sex)
    if email is not None:
        changes["email"] = await _email_free(conn, email, patient.id) if email.strip() else None
    if not changes:
        raise AdminError("nothing to change: give at least one of the options (`caducee patients change --help`)")
    await conn.execute(update(Patient).where(Patient.id == patient.id).values(**changes, updated_at=datetime.now(UTC)))
    if "last_name" in changes or "first_names" in changes:
        row = (await conn.execute(select(Patient.first_names, Patient.last_name).where(Patient.id == patient.id))).one()
        display = f"{row.first_names.split()[0]} {row.last_name}"
        await conn.execute(
            update(Mailbox).where(Mailbox.patient_id == patient.id).values(display_name=display, updated_at=datetime.now(UTC))
        )
    return await find_patient(conn, patient.ins)


async def retire_patient(conn: AsyncConnection, ins: str) -> PatientView:
    """Close the profile (as the patient's own « Fermer mon profil » does): it receives nothing
    from now on (550 5.1.1), nobody signs in to it; its messages and history are kept."""
    patient = await find_patient(conn, ins)
    if patient.status in {PatientStatus.CLOSED.value, PatientStatus.OPPOSED.value}:
        raise AdminError(f"the profile of {patient.name} is already {patient.status}")
    await conn.execute(
        update(Patient).where(Patient.id == patient.id).values(status=PatientStatus.CLOSED.value, updated_at=datetime.now(UTC))
    )
    return await find_patient(conn, patient.ins)
