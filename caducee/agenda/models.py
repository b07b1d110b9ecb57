"""Tables of the agenda. Only `caducee.agenda` reads and writes them.

Times are stored in UTC; the zone a time was given in is the patient's (their settings),
or the invitation's own, converted when it arrives. Feed tokens are stored as their
SHA-256, like webmail sessions. The reminder queue and the daily job's chunks are claimed
with a lease, as the relay claims the outbound queue, so that several processes or
nodes share the work and each reminder is sent once.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, Date, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.core.ids import BigId
from caducee.db import Base


class Appointment(Base):
    """One appointment (one occurrence of a recurring invitation) in one patient's agenda."""

    __tablename__ = "agenda_appointments"
    __table_args__ = (
        UniqueConstraint("patient_id", "uid", "recurrence_id"),
        Index("ix_agenda_appointments_patient_starts", "patient_id", "starts_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    all_day: Mapped[bool] = mapped_column(Boolean, default=False)
    title: Mapped[str] = mapped_column(String(200), default="")
    place: Mapped[str] = mapped_column(String(300), default="")
    professional_address: Mapped[str | None] = mapped_column(String(254), nullable=True)  # an annuaire mailbox
    professional_name: Mapped[str] = mapped_column(String(200), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(12), default="patient")  # patient / invitation
    # patient: confirmed; invitation: needs-action / accepted / declined / cancelled
    status: Mapped[str] = mapped_column(String(12), default="confirmed")
    secret: Mapped[bool] = mapped_column(Boolean, default=False)  # a minor's confidential care: hidden from guardians
    uid: Mapped[str | None] = mapped_column(String(255), nullable=True)  # iCalendar UID (invitations)
    recurrence_id: Mapped[str] = mapped_column(String(40), default="")  # the occurrence of a recurring one
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    dtstamp: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    organizer: Mapped[str | None] = mapped_column(String(254), nullable=True)
    attendee: Mapped[str | None] = mapped_column(String(254), nullable=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the stored invitation (mailbox)
    message_id_header: Mapped[str | None] = mapped_column(String(998), nullable=True)
    conversation_key: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PreventionMark(Base):
    """An item of the prevention table marked done on a date, or (no date) not applicable."""

    __tablename__ = "agenda_prevention_marks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    item_key: Mapped[str] = mapped_column(String(64))
    done_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    marked_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Preferences(Base):
    """A patient's reminder choices; no row means the defaults (the day before at 9:00, Paris)."""

    __tablename__ = "agenda_preferences"

    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    reminders: Mapped[bool] = mapped_column(Boolean, default=True)
    lead_days: Mapped[int] = mapped_column(Integer, default=1)
    hour: Mapped[int] = mapped_column(Integer, default=9)
    timezone: Mapped[str] = mapped_column(String(40), default="Europe/Paris")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeedToken(Base):
    """A private calendar feed URL: the SHA-256 of its random token, until revoked."""

    __tablename__ = "agenda_feed_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[int] = mapped_column(Integer)  # the patient id of who created it (a guardian for a minor)
    shows_secret: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Reminder(Base):
    """One reminder email to send: the job queue, claimed with a lease."""

    __tablename__ = "agenda_reminders"
    __table_args__ = (
        UniqueConstraint("patient_id", "kind", "ref", "occurrence"),
        Index(
            "ix_agenda_reminders_due",
            "send_at",
            postgresql_where="state = 'scheduled'",
            sqlite_where="state = 'scheduled'",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    kind: Mapped[str] = mapped_column(String(12))  # appointment / prevention
    ref: Mapped[str] = mapped_column(String(64))  # the appointment id, or the prevention item key
    occurrence: Mapped[str] = mapped_column(String(40))  # what it reminds of: the start (appointment) or due date (item)
    send_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(10), default="scheduled")  # scheduled / sent / cancelled / failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DailyChunk(Base):
    """One range of patient ids the daily job examines for one day, claimed with a lease."""

    __tablename__ = "agenda_daily_chunks"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    first_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer)  # exclusive
    state: Mapped[str] = mapped_column(String(8), default="todo")  # todo / done
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    found: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
