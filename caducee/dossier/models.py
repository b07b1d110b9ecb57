"""The dossier's tables. Document bodies are sealed (AES-256-GCM under the master key) and
stored once per content in `dossier_blobs`; titles and the medical profile are sealed too
(they say as much as the document); the rest is the metadata the list filters and the rules
decide on."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.core.ids import BigId
from caducee.db import Base


class Blob(Base):
    """One document content, sealed, whatever the number of documents (versions, patients) it is."""

    __tablename__ = "dossier_blobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Document(Base):
    __tablename__ = "dossier_documents"
    __table_args__ = (
        Index("ix_dossier_documents_list", "patient_id", "status", "care_date"),
        UniqueConstraint("patient_id", "unique_id", name="uq_dossier_documents_patient_unique_id"),
        CheckConstraint("NOT (masked AND invisible_patient)", name="not_masked_and_invisible"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer)  # annuaire patients.id
    unique_id: Mapped[str] = mapped_column(String(128))  # XDS uniqueId (an OID), ours when the depositor gave none
    lineage: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # id of the first version (None: this is it)
    replaces: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the version this one replaced
    status: Mapped[str] = mapped_column(String(8), default="current")  # current / replaced / deleted
    type_code: Mapped[str] = mapped_column(String(16))  # LOINC
    class_code: Mapped[str] = mapped_column(String(16), default="")
    format: Mapped[str] = mapped_column(String(64))  # application/pdf, text/xml (CDA R2), image/jpeg, image/png
    title: Mapped[bytes] = mapped_column(LargeBinary)  # sealed
    filename: Mapped[str] = mapped_column(String(128))
    care_date: Mapped[date | None] = mapped_column(Date, nullable=True)  # serviceStartTime: the date of care
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # creationTime: when the author wrote it
    deposited_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    author: Mapped[str] = mapped_column(String(64))  # "ps:<national id>" or "patient:<account id>"
    author_name: Mapped[str] = mapped_column(String(256))
    author_structure: Mapped[str] = mapped_column(String(256), default="")
    source: Mapped[str] = mapped_column(String(8))  # api / mail / webmail
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("dossier_blobs.id"))
    masked: Mapped[bool] = mapped_column(Boolean, default=False)  # MASQUE_PS
    invisible_patient: Mapped[bool] = mapped_column(Boolean, default=False)  # INVISIBLE_PATIENT
    invisible_guardians: Mapped[bool] = mapped_column(Boolean, default=False)  # INVISIBLE_REPRESENTANTS_LEGAUX
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DossierSettings(Base):
    __tablename__ = "dossier_settings"

    patient_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    emergency_refused: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(BigInteger, default=0)  # moves on every change of the dossier: the list cache's key
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Block(Base):
    """A professional the patient blocked."""

    __tablename__ = "dossier_blocks"

    patient_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    national_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    blocked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Consent(Base):
    """A professional who declared the patient's consent to read the dossier (authorised)."""

    __tablename__ = "dossier_consents"

    patient_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    national_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    structure: Mapped[str] = mapped_column(String(256), default="")
    declared_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Emergency(Base):
    """An emergency access (bris de glace): who, why, until when."""

    __tablename__ = "dossier_emergencies"
    __table_args__ = (Index("ix_dossier_emergencies_who", "patient_id", "national_id", "expires_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer)
    national_id: Mapped[str] = mapped_column(String(40))
    structure: Mapped[str] = mapped_column(String(256), default="")
    reason: Mapped[str] = mapped_column(String(300))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KnownProfessional(Base):
    """Professionals who already reached this dossier: the patient is told of the first access once."""

    __tablename__ = "dossier_known_professionals"

    patient_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    national_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProfileItem(Base):
    """One line of the medical profile (an allergy, a treatment, a weight...), sealed."""

    __tablename__ = "dossier_profile_items"
    __table_args__ = (Index("ix_dossier_profile_items_patient", "patient_id", "section"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer)
    section: Mapped[str] = mapped_column(String(16))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)  # JSON of the item's fields
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Intake(Base):
    """A delivered message whose IHE_XDM.ZIP was handled: never twice, whatever happens."""

    __tablename__ = "dossier_intakes"

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # the stored message (mailbox component)
    patient_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))  # filed / refused
    documents: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
