"""The annuaire's service API: search, look-ups and the writes other components need.

Other components call these functions and never read the annuaire tables themselves.
Results are plain frozen dataclasses, not ORM objects, so that callers cannot write
through them by accident.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.identifiers import validate_ins, validate_mailbox_address
from caducee.annuaire.models import (
    Delegation,
    Guardianship,
    Mailbox,
    MailboxType,
    Patient,
    PatientStatus,
    Professional,
    Structure,
    TrustDomain,
)
from caducee.annuaire.text import fold
from caducee.db import inserted_id


@dataclass(frozen=True)
class MailboxEntry:
    """A mailbox as the directory shows it."""

    address: str
    type: str
    display_name: str
    civility: str
    first_name: str
    last_name: str
    profession_code: str
    profession_label: str
    savoir_faire_label: str
    structure_name: str
    service: str
    address_line: str
    postcode: str
    city: str
    is_officine: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchPage:
    items: list[MailboxEntry]
    total: int
    page: int
    per_page: int


class SearchError(ValueError):
    """A search request that cannot be answered as asked (the message says why)."""


_ENTRY_COLUMNS = (
    Mailbox.address,
    Mailbox.type,
    Mailbox.display_name,
    Mailbox.service,
    Professional.civility,
    Professional.first_name,
    Professional.last_name,
    Professional.profession_code,
    Professional.profession_label,
    Professional.savoir_faire_label,
    Structure.name,
    Structure.address_line,
    Structure.postcode,
    Structure.city,
    Structure.is_officine,
)


def _entry(row: Any) -> MailboxEntry:
    return MailboxEntry(
        address=row.address,
        type=row.type,
        display_name=row.display_name,
        civility=row.civility or "",
        first_name=row.first_name or "",
        last_name=row.last_name or "",
        profession_code=row.profession_code or "",
        profession_label=row.profession_label or "",
        savoir_faire_label=row.savoir_faire_label or "",
        structure_name=row.name or "",
        service=row.service or "",
        address_line=row.address_line or "",
        postcode=row.postcode or "",
        city=row.city or "",
        is_officine=bool(row.is_officine),
    )


def _entry_query() -> Any:
    return (
        select(*_ENTRY_COLUMNS)
        .select_from(Mailbox)
        .outerjoin(Professional, Professional.national_id == Mailbox.professional_national_id)
        .outerjoin(Structure, Structure.structure_key == Mailbox.structure_key)
    )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search(
    conn: AsyncConnection,
    *,
    name: str | None = None,
    profession_code: str | None = None,
    place: str | None = None,
    mailbox_type: str | None = None,
    officine: bool | None = None,
    page: int = 1,
    per_page: int = 20,
    per_page_max: int = 100,
) -> SearchPage:
    """Published mailboxes matching every given criterion, ordered by name.

    `name` matches every word anywhere in the person's or structure's names (accents and
    case ignored); `place` is a postcode (prefix) or a city (prefix). Liste rouge, retired
    and patient mailboxes are never returned.
    """
    if page < 1:
        raise SearchError("page starts at 1")
    if not 1 <= per_page <= per_page_max:
        raise SearchError(f"per_page must be between 1 and {per_page_max}")
    conditions = [Mailbox.active.is_(True), Mailbox.liste_rouge.is_(False), Mailbox.type != MailboxType.PAT.value]
    words = fold(name or "").split()
    if not words and not profession_code and not place and not mailbox_type and officine is None:
        raise SearchError("give at least one criterion: a name, a profession, a city or postcode, or a type")
    for word in words[:8]:
        conditions.append(Mailbox.search_text.like(f"%{_like_escape(word)}%", escape="\\"))
    if profession_code:
        conditions.append(Mailbox.profession_code == profession_code.strip())
    if place:
        folded = fold(place)
        if folded.replace(" ", "").isdigit():
            conditions.append(Mailbox.postcode.like(f"{_like_escape(folded.replace(' ', ''))}%", escape="\\"))
        else:
            conditions.append(Mailbox.city_search.like(f"{_like_escape(folded)}%", escape="\\"))
    if mailbox_type:
        kind = mailbox_type.strip().upper()
        if kind not in {"PER", "ORG", "APP", "CAB"}:
            raise SearchError("type must be PER, ORG, APP or CAB")
        conditions.append(Mailbox.type == kind)
    query = _entry_query().where(and_(*conditions))
    if officine is not None:
        query = query.where(
            Structure.is_officine.is_(officine) if officine else or_(Structure.is_officine.is_(False), Structure.structure_key.is_(None))
        )
    total = (await conn.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    rows = await conn.execute(query.order_by(Mailbox.search_text, Mailbox.address).limit(per_page).offset((page - 1) * per_page))
    return SearchPage(items=[_entry(row) for row in rows], total=total, page=page, per_page=per_page)


async def get_mailbox(conn: AsyncConnection, address: str, *, published_only: bool = True) -> MailboxEntry | None:
    """The mailbox at `address`; with `published_only`, None for liste rouge or retired ones."""
    try:
        normalised = validate_mailbox_address(address)
    except ValueError:
        return None
    query = _entry_query().where(Mailbox.address == normalised)
    if published_only:
        query = query.where(Mailbox.active.is_(True), Mailbox.liste_rouge.is_(False), Mailbox.type != "PAT")
    row = (await conn.execute(query)).first()
    return _entry(row) if row else None


def patient_address(ins: str, patient_domain: str) -> str:
    return f"{validate_ins(ins)}@{patient_domain}".lower()


# ---- writes used by the demo seed and administration ------------------------------------


async def add_trust_domain(
    conn: AsyncConnection, domain: str, *, description: str = "", operator_dns: list[str] | None = None, is_local: bool = False
) -> None:
    await conn.execute(
        TrustDomain.__table__.insert().values(
            domain=domain.lower(),
            description=description,
            operator_dns="\n".join(operator_dns or []),
            is_local=is_local,
            source="local",
            active=True,
            updated_at=datetime.now(UTC),
        )
    )


async def add_professional(
    conn: AsyncConnection,
    *,
    national_id: str,
    civility: str,
    first_name: str,
    last_name: str,
    profession_code: str,
    profession_label: str,
    savoir_faire_label: str = "",
) -> str:
    """Create a professional; returns the national id mailboxes refer to."""
    id_type = {"8": "RPPS", "0": "ADELI"}.get(national_id[0], "AUTRE")
    await conn.execute(
        Professional.__table__.insert().values(
            national_id=national_id,
            id_type=id_type,
            identifier=national_id[1:],
            civility=civility,
            first_name=first_name,
            last_name=last_name,
            profession_code=profession_code,
            profession_label=profession_label,
            category_code="C",
            savoir_faire_code="",
            savoir_faire_label=savoir_faire_label,
            search_name=fold(f"{last_name} {first_name}"),
            in_ps_file=False,
            active=True,
            updated_at=datetime.now(UTC),
        )
    )
    return national_id


async def add_structure(
    conn: AsyncConnection,
    *,
    id_type: str,
    identifier: str,
    name: str,
    address_line: str,
    postcode: str,
    city: str,
    is_officine: bool = False,
) -> str:
    """Create a structure; returns the structure key mailboxes refer to."""
    await conn.execute(
        Structure.__table__.insert().values(
            structure_key=f"{id_type}:{identifier}",
            id_type=id_type,
            identifier=identifier,
            name=name,
            trade_name="",
            service="",
            address_line=address_line,
            postcode=postcode,
            city=city,
            city_search=fold(city),
            department=postcode[:2],
            country="France",
            activity_sector="SA33" if is_officine else "",
            is_officine=is_officine,
            search_name=fold(name),
            active=True,
            updated_at=datetime.now(UTC),
        )
    )
    return f"{id_type}:{identifier}"


async def add_mailbox(
    conn: AsyncConnection,
    *,
    address: str,
    type: MailboxType,
    display_name: str,
    password_hash: str | None = None,
    professional: str | None = None,
    structure: str | None = None,
    patient_id: int | None = None,
    service: str = "",
    liste_rouge: bool = False,
) -> int:
    """Create one of our own mailboxes (source "local": imports never rewrite it)."""
    address = validate_mailbox_address(address)
    search_parts = [display_name, service]
    profession_code, postcode, city = "", "", ""
    if professional is not None:
        pro = (
            await conn.execute(
                select(Professional.last_name, Professional.first_name, Professional.profession_code).where(
                    Professional.national_id == professional
                )
            )
        ).one()
        search_parts += [pro.last_name, pro.first_name]
        profession_code = pro.profession_code
    if structure is not None:
        st = (
            await conn.execute(select(Structure.name, Structure.postcode, Structure.city).where(Structure.structure_key == structure))
        ).one()
        search_parts.append(st.name)
        postcode, city = st.postcode, st.city
    result = await conn.execute(
        Mailbox.__table__.insert().values(
            address=address,
            type=type.value,
            domain=address.rpartition("@")[2],
            professional_national_id=professional,
            structure_key=structure,
            patient_id=patient_id,
            service=service,
            display_name=display_name,
            liste_rouge=liste_rouge,
            dematerialisation=False,
            source="local",
            password_hash=password_hash,
            search_text=fold(" ".join(search_parts))[:800],
            profession_code=profession_code,
            postcode=postcode,
            city_search=fold(city),
            active=True,
            updated_at=datetime.now(UTC),
        )
    )
    return inserted_id(result)


async def add_patient(
    conn: AsyncConnection,
    *,
    ins: str,
    last_name: str,
    first_names: str,
    birth_date: date,
    sex: str,
    patient_domain: str,
    status: PatientStatus = PatientStatus.CREATED,
    email: str | None = None,
    password_hash: str | None = None,
) -> int:
    """Create a patient profile and its mailbox `<INS>@<patient domain>`."""
    ins = validate_ins(ins)
    now = datetime.now(UTC)
    result = await conn.execute(
        Patient.__table__.insert().values(
            ins=ins,
            last_name=last_name,
            first_names=first_names,
            birth_date=birth_date,
            sex=sex,
            status=status.value,
            email=email.lower() if email else None,
            password_hash=password_hash,
            activated_at=now if status is PatientStatus.ACTIVATED else None,
            updated_at=now,
        )
    )
    patient_id = inserted_id(result)
    await add_mailbox(
        conn,
        address=patient_address(ins, patient_domain),
        type=MailboxType.PAT,
        display_name=f"{first_names.split()[0]} {last_name}",
        patient_id=patient_id,
    )
    return patient_id


async def add_guardianship(conn: AsyncConnection, guardian_id: int, minor_id: int) -> None:
    await conn.execute(Guardianship.__table__.insert().values(guardian_id=guardian_id, minor_id=minor_id, since=datetime.now(UTC)))


async def add_delegation(conn: AsyncConnection, patient_id: int, carer_id: int, scope: str = "messages") -> None:
    await conn.execute(
        Delegation.__table__.insert().values(patient_id=patient_id, carer_id=carer_id, scope=scope, granted_at=datetime.now(UTC))
    )


POSTMASTER = "postmaster"


async def ensure_postmaster(conn: AsyncConnection, operator_domain: str) -> str:
    """The operator's postmaster mailbox (RFC 5321 4.5.1: postmaster@ every domain we serve
    must be accepted and reach the operator); created once, never published. Its address."""
    address = f"{POSTMASTER}@{operator_domain.lower()}"
    exists = (await conn.execute(select(Mailbox.id).where(Mailbox.address == address))).first()
    if exists is None:
        await add_mailbox(conn, address=address, type=MailboxType.ORG, display_name="Postmaster", liste_rouge=True)
    return address


async def active_mailbox_id(conn: AsyncConnection, address: str) -> int | None:
    """The id of the active mailbox at `address` (any type, published or not), or None."""
    return (await conn.execute(select(Mailbox.id).where(Mailbox.address == address.lower(), Mailbox.active.is_(True)))).scalar()


async def is_empty(conn: AsyncConnection) -> bool:
    """True when no mailbox exists yet: the demo seed only fills an empty database."""
    return (await conn.execute(select(func.count()).select_from(Mailbox))).scalar_one() == 0


# ---- professionals as the dossier names them ----------------------------------------------


@dataclass(frozen=True)
class ProfessionalCard:
    """A professional (or, for an organisation mailbox, a structure) by national id."""

    national_id: str  # "8" + RPPS or "0" + ADELI; "" for an organisation mailbox
    name: str  # "Dr Sophie Bernard"
    profession: str
    structure: str
    city: str


def _card(row: Any) -> ProfessionalCard:
    name = " ".join(part for part in (row.civility, row.first_name, row.last_name) if part) if row.national_id else row.display_name
    return ProfessionalCard(row.national_id or "", name, row.profession_label or "", row.name or "", row.city or "")


def _card_query() -> Any:
    return (
        select(
            Mailbox.address,
            Mailbox.display_name,
            Professional.national_id,
            Professional.civility,
            Professional.first_name,
            Professional.last_name,
            Professional.profession_label,
            Structure.name,
            Structure.city,
        )
        .select_from(Mailbox)
        .outerjoin(Professional, Professional.national_id == Mailbox.professional_national_id)
        .outerjoin(Structure, Structure.structure_key == Mailbox.structure_key)
    )


async def professionals_of_addresses(conn: AsyncConnection, addresses: list[str]) -> dict[str, ProfessionalCard]:
    """Who is behind each mailbox address (a professional, or an organisation's structure)."""
    if not addresses:
        return {}
    rows = await conn.execute(_card_query().where(Mailbox.address.in_(sorted({a.lower() for a in addresses}))))
    return {row.address: _card(row) for row in rows}


async def professionals_by_id(conn: AsyncConnection, national_ids: list[str]) -> dict[str, ProfessionalCard]:
    """Each professional by national id (their first mailbox names the structure)."""
    if not national_ids:
        return {}
    rows = await conn.execute(_card_query().where(Professional.national_id.in_(sorted(set(national_ids)))).order_by(Mailbox.id))
    found: dict[str, ProfessionalCard] = {}
    for row in rows:
        found.setdefault(row.national_id, _card(row))
    missing = sorted(set(national_ids) - set(found))
    if missing:
        query = select(
            Professional.national_id, Professional.civility, Professional.first_name, Professional.last_name, Professional.profession_label
        ).where(Professional.national_id.in_(missing))
        for pro in await conn.execute(query):
            name = " ".join(part for part in (pro.civility, pro.first_name, pro.last_name) if part)
            found[pro.national_id] = ProfessionalCard(pro.national_id, name, pro.profession_label, "", "")
    return found


async def find_professionals(conn: AsyncConnection, name: str, *, limit: int = 20) -> list[ProfessionalCard]:
    """Professionals whose name has every word of `name` (accents and case ignored), for a
    patient who wants to block one: people only, liste rouge included (blocking discloses nothing)."""
    words = fold(name).split()
    if not words or all(len(word) < 2 for word in words):
        raise SearchError("give at least two letters of the name")
    query = select(Professional.national_id).where(Professional.active.is_(True))
    for word in words[:5]:
        query = query.where(Professional.search_name.like(f"%{_like_escape(word)}%", escape="\\"))
    ids = (await conn.execute(query.order_by(Professional.last_name, Professional.first_name).limit(limit))).scalars().all()
    cards = await professionals_by_id(conn, list(ids))
    return [cards[national_id] for national_id in ids if national_id in cards]


# ---- look-ups for the gateway ------------------------------------------------------------


@dataclass(frozen=True)
class PartyInfo:
    """What the gateway needs to know about an address to apply the rules."""

    address: str
    mailbox_id: int | None  # set for our own, active mailboxes
    mailbox_type: str | None
    is_local: bool
    domain_trusted: bool
    operator_dns: tuple[str, ...]
    patient_status: str | None
    is_officine: bool
    display_name: str
    password_hash: str | None


async def resolve_parties(conn: AsyncConnection, addresses: list[str], *, local_domains: list[str]) -> dict[str, PartyInfo]:
    """PartyInfo for each address (normalised, lower case), in two queries whatever the count."""
    normalised = sorted({address.lower() for address in addresses})
    local = {domain.lower() for domain in local_domains}
    domains = {address.rpartition("@")[2] for address in normalised}
    trusted: dict[str, tuple[str, ...]] = {domain: () for domain in domains & local}
    rows = await conn.execute(
        select(TrustDomain.domain, TrustDomain.operator_dns, TrustDomain.is_local).where(
            TrustDomain.domain.in_(domains), TrustDomain.active.is_(True)
        )
    )
    for trust in rows:
        trusted[trust.domain] = tuple(line for line in trust.operator_dns.splitlines() if line.strip())
    found: dict[str, Any] = {}
    if normalised:
        query = (
            select(
                Mailbox.id,
                Mailbox.address,
                Mailbox.type,
                Mailbox.display_name,
                Mailbox.password_hash,
                Mailbox.active,
                Patient.status,
                Structure.is_officine,
            )
            .select_from(Mailbox)
            .outerjoin(Patient, Patient.id == Mailbox.patient_id)
            .outerjoin(Structure, Structure.structure_key == Mailbox.structure_key)
            .where(Mailbox.address.in_(normalised))
        )
        found = {row.address: row for row in await conn.execute(query)}
    result = {}
    for address in normalised:
        domain = address.rpartition("@")[2]
        row = found.get(address)
        usable = row if row is not None and row.active else None  # a retired mailbox is no party
        is_local = domain in local
        result[address] = PartyInfo(
            address=address,
            mailbox_id=usable.id if usable is not None and is_local else None,
            mailbox_type=usable.type if usable is not None else None,
            is_local=is_local,
            domain_trusted=domain in trusted,
            operator_dns=trusted.get(domain, ()),
            patient_status=usable.status if usable is not None else None,
            is_officine=bool(usable.is_officine) if usable is not None else False,
            display_name=usable.display_name if usable is not None else address,
            password_hash=usable.password_hash if usable is not None else None,
        )
    return result


# ---- certificates published per mailbox ---------------------------------------------------


class CertificateError(ValueError):
    """A certificate cannot be published for that mailbox (the message says why)."""


async def publish_certificate(conn: AsyncConnection, address: str, pem: bytes, *, usage: str = "sign+encrypt") -> None:
    """Publish `pem` for the mailbox at `address`; its rfc822Name must be that address."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from caducee.annuaire.models import Certificate

    cert = x509.load_pem_x509_certificate(pem)
    try:
        names = [
            name.lower()
            for name in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.RFC822Name)
        ]
    except x509.ExtensionNotFound:
        names = []
    normalised = validate_mailbox_address(address)
    if normalised not in names:
        raise CertificateError(f"the certificate is for {', '.join(names) or 'no e-mail address'}, not {normalised}")
    mailbox_id = (await conn.execute(select(Mailbox.id).where(Mailbox.address == normalised))).scalar_one_or_none()
    if mailbox_id is None:
        raise CertificateError(f"no mailbox {normalised} in the annuaire")
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    exists = (await conn.execute(select(Certificate.id).where(Certificate.fingerprint_sha256 == fingerprint))).first()
    if exists:
        return
    await conn.execute(
        Certificate.__table__.insert().values(
            mailbox_id=mailbox_id,
            usage=usage,
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial=format(cert.serial_number, "x"),
            fingerprint_sha256=fingerprint,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            pem=pem.decode("ascii"),
        )
    )


async def certificates_for(conn: AsyncConnection, addresses: list[str], *, at: datetime | None = None) -> dict[str, list[str]]:
    """The PEM certificates published for each address, within their validity period at `at`."""
    from caducee.annuaire.models import Certificate

    moment = at or datetime.now(UTC)
    rows = await conn.execute(
        select(Mailbox.address, Certificate.pem)
        .join(Certificate, Certificate.mailbox_id == Mailbox.id)
        .where(Mailbox.address.in_([a.lower() for a in addresses]), Certificate.not_before <= moment, Certificate.not_after > moment)
        .order_by(Certificate.not_after.desc())
    )
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row.address, []).append(row.pem)
    return found


# ---- professionals, for the identity component (Pro Santé Connect) -------------------------


@dataclass(frozen=True)
class ProfessionalInfo:
    """A professional as the annuaire knows them, found by national id (8 + RPPS, 0 + ADELI)."""

    national_id: str
    civility: str
    first_name: str
    last_name: str
    profession_code: str
    profession_label: str
    savoir_faire_label: str
    active: bool  # False once the PS file retired them


@dataclass(frozen=True)
class ProfessionalMailbox:
    """A mailbox of ours a professional may open: their PER mailbox, or an ORG/CAB one the
    annuaire attaches to them."""

    address: str
    type: str
    display_name: str


async def find_professional(conn: AsyncConnection, national_id: str) -> ProfessionalInfo | None:
    """The professional with this national id, retired or not; None when unknown."""
    row = (
        await conn.execute(
            select(
                Professional.national_id,
                Professional.civility,
                Professional.first_name,
                Professional.last_name,
                Professional.profession_code,
                Professional.profession_label,
                Professional.savoir_faire_label,
                Professional.active,
            ).where(Professional.national_id == national_id)
        )
    ).first()
    if row is None:
        return None
    return ProfessionalInfo(
        national_id=row.national_id,
        civility=row.civility or "",
        first_name=row.first_name or "",
        last_name=row.last_name or "",
        profession_code=row.profession_code or "",
        profession_label=row.profession_label or "",
        savoir_faire_label=row.savoir_faire_label or "",
        active=bool(row.active),
    )


async def professional_mailboxes(conn: AsyncConnection, national_id: str, *, local_domains: list[str]) -> list[ProfessionalMailbox]:
    """The active mailboxes on our own domains that the annuaire attaches to this professional.

    A mailbox row names its professional (the extraction file's "Identifiant PP"): that is
    the owner of a PER mailbox, and the person attached to an ORG or CAB one. APP mailboxes
    belong to software and PAT mailboxes to patients: a professional never opens those. The
    national file lists every operator's mailboxes; only ours can be opened here.
    """
    rows = await conn.execute(
        select(Mailbox.address, Mailbox.type, Mailbox.display_name)
        .where(
            Mailbox.professional_national_id == national_id,
            Mailbox.active.is_(True),
            Mailbox.type.in_([MailboxType.PER.value, MailboxType.ORG.value, MailboxType.CAB.value]),
            Mailbox.domain.in_([domain.lower() for domain in local_domains]),
        )
        .order_by(Mailbox.type.desc(), Mailbox.address)  # PER first, then ORG, then CAB
    )
    return [ProfessionalMailbox(row.address, row.type, row.display_name) for row in rows]
