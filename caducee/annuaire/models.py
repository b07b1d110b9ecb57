"""Tables of the annuaire: who is who, which mailbox belongs to whom, whom we trust.

Only `caducee.annuaire` reads and writes these tables; other components go through
`caducee.annuaire.service`.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from caducee.annuaire.kinds import MailboxType as MailboxType  # re-exported: annuaire modules name both from here
from caducee.annuaire.kinds import PatientStatus as PatientStatus
from caducee.core.clock import utcnow
from caducee.db import Base


class Professional(Base):
    __tablename__ = "professionals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    national_id: Mapped[str] = mapped_column(String(40), unique=True)  # 8+RPPS, 0+ADELI, or 3+FINESS/staff id
    id_type: Mapped[str] = mapped_column(String(8))  # RPPS / ADELI / AUTRE
    identifier: Mapped[str] = mapped_column(String(40))
    civility: Mapped[str] = mapped_column(String(16), default="")
    last_name: Mapped[str] = mapped_column(String(128), default="")
    first_name: Mapped[str] = mapped_column(String(128), default="")
    profession_code: Mapped[str] = mapped_column(String(8), default="")
    profession_label: Mapped[str] = mapped_column(String(128), default="")
    category_code: Mapped[str] = mapped_column(String(8), default="")
    savoir_faire_code: Mapped[str] = mapped_column(String(16), default="")
    savoir_faire_label: Mapped[str] = mapped_column(String(256), default="")
    search_name: Mapped[str] = mapped_column(String(260), default="")
    in_ps_file: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last PS-file import that added or changed it: an audit trail (retiring compares with the file, not this).
    seen_in_run: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Structure(Base):
    __tablename__ = "structures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    structure_key: Mapped[str] = mapped_column(String(40), unique=True)  # "<id type>:<identifier>"
    id_type: Mapped[str] = mapped_column(String(12))  # FINESS / SIRET / SIREN / RPPS_RANG / ADELI_RANG
    identifier: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(256), default="")
    trade_name: Mapped[str] = mapped_column(String(256), default="")
    service: Mapped[str] = mapped_column(String(256), default="")
    address_line: Mapped[str] = mapped_column(String(512), default="")
    postcode: Mapped[str] = mapped_column(String(10), default="")
    city: Mapped[str] = mapped_column(String(128), default="")
    city_search: Mapped[str] = mapped_column(String(128), default="")
    department: Mapped[str] = mapped_column(String(8), default="")
    country: Mapped[str] = mapped_column(String(64), default="")
    activity_sector: Mapped[str] = mapped_column(String(8), default="")
    is_officine: Mapped[bool] = mapped_column(Boolean, default=False)
    search_name: Mapped[str] = mapped_column(String(260), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ins: Mapped[str] = mapped_column(String(15), unique=True)
    last_name: Mapped[str] = mapped_column(String(128))
    first_names: Mapped[str] = mapped_column(String(256))
    birth_date: Mapped[date] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(1))  # M / F / I (indéterminé), as in INSi
    status: Mapped[str] = mapped_column(String(16), default=PatientStatus.CREATED.value)
    email: Mapped[str | None] = mapped_column(String(254), unique=True, nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Mailbox(Base):
    __tablename__ = "mailboxes"
    __table_args__ = tuple(
        Index(f"ix_mailboxes_{column}", column, postgresql_where=text(f"{column} <> ''"), sqlite_where=text(f"{column} <> ''"))
        for column in ("postcode", "city_search")
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(254), unique=True)
    type: Mapped[str] = mapped_column(String(3))
    domain: Mapped[str] = mapped_column(String(253))
    # Natural keys, not surrogate ids: an import writes mailboxes without looking ids up, and
    # a re-import that rewrites a professional never breaks the link. No foreign-key
    # constraint: PostgreSQL checks one per row with a trigger, which tripled the import
    # time, and the importer writes the parents first in the same transaction; directory
    # rows are retired, never deleted, so a link cannot dangle. Not indexed: every query goes
    # from a mailbox to its professional or structure (their unique keys), never back, and
    # each index on this 535,000-row table is paid on every import (migration 0005).
    professional_national_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    structure_key: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # A foreign key on SQLite only: on PostgreSQL its per-row trigger cost a population import
    # more than the row (migration annuaire_0001); patients are never deleted.
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), nullable=True, unique=True)
    service: Mapped[str] = mapped_column(String(256), default="")
    display_name: Mapped[str] = mapped_column(String(256), default="")
    liste_rouge: Mapped[bool] = mapped_column(Boolean, default=False)
    dematerialisation: Mapped[bool] = mapped_column(Boolean, default=False)
    # "extraction" (public file), "local" (created here); only extraction rows are retired by imports.
    source: Mapped[str] = mapped_column(String(16), default="local")
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # Denormalised for the directory search, so that it filters one table (see service.search).
    search_text: Mapped[str] = mapped_column(String(800), default="")
    # Not indexed: a few dozen codes, "10" (médecin) on about half the rows; a search by
    # profession is narrowed by the name or the place, whose columns are.
    profession_code: Mapped[str] = mapped_column(String(8), default="")
    # Indexed when not empty (annuaire_0001): a patient's mailbox has neither.
    postcode: Mapped[str] = mapped_column(String(10), default="")
    city_search: Mapped[str] = mapped_column(String(128), default="")
    # The last extraction import that added or changed it: an audit trail (retiring compares with the file, not this).
    seen_in_run: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Guardianship(Base):
    """A legal guardian (a patient with a profile) of a minor's profile.

    The two foreign keys exist on SQLite only (migration annuaire_0001: on PostgreSQL each
    was a trigger and a row lock per guardianship a population import adds)."""

    __tablename__ = "guardianships"

    guardian_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    minor_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Delegation(Base):
    """A carer the patient granted access to part of their space (`scope`, e.g. "messages")."""

    __tablename__ = "delegations"

    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    carer_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(64), default="messages")
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Certificate(Base):
    """A certificate published for a mailbox (S/MIME signature and/or encryption)."""

    __tablename__ = "certificates"
    __table_args__ = (UniqueConstraint("fingerprint_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True)
    usage: Mapped[str] = mapped_column(String(16), default="sign+encrypt")  # sign / encrypt / sign+encrypt
    subject: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(Text)
    serial: Mapped[str] = mapped_column(String(64))
    fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pem: Mapped[str] = mapped_column(Text)


class TrustDomain(Base):
    """A domain of the MSSanté trust space (liste blanche), or one of our own domains."""

    __tablename__ = "trust_domains"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    description: Mapped[str] = mapped_column(String(512), default="")
    # One or more operator certificate DNs, one per line, as published in the whitelist.
    operator_dns: Mapped[str] = mapped_column(Text, default="")
    is_local: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16), default="local")  # whitelist / local
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImportRun(Base):
    """One run of an importer: what it read, what it changed, how many rows were refused."""

    __tablename__ = "annuaire_import_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # extraction / ps / whitelist
    file_name: Mapped[str] = mapped_column(String(512))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    rows_bad: Mapped[int] = mapped_column(Integer, default=0)
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    retired: Mapped[int] = mapped_column(Integer, default=0)
