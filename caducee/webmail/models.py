"""Tables of the webmail: login challenges, sessions, provisional activation codes.

Secrets never sit in these tables in usable form: session and challenge tokens are stored
as their SHA-256, codes as an HMAC under a key derived from the master key (a 6-digit code
hashed without a key would fall to a million guesses offline).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.db import Base


class LoginChallenge(Base):
    """The second step of a login: a 6-digit code sent to the patient, single use, few tries."""

    __tablename__ = "webmail_login_challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the browser's token
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    sent_to: Mapped[str] = mapped_column(String(254))  # masked form, for the page
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(8), default="pending")  # pending / used / locked
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebSession(Base):
    __tablename__ = "webmail_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie value
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)  # who logged in
    acting_patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))  # whose messages are shown
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ActivationCode(Base):
    """The provisional code a patient receives (by post) to activate a created profile."""

    __tablename__ = "webmail_activation_codes"

    # A foreign key on SQLite only (migration wa002: on PostgreSQL its trigger cost more than
    # the row, for 66 million codes issued by COPY); patients are never deleted.
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Preferences(Base):
    """What a patient chose for their webmail: hiding prevention messages from the list
    (they stay under the "Prévention" label)."""

    __tablename__ = "webmail_preferences"

    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    hide_prevention: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AlertSettings(Base):
    """Whether a patient wants the "a message is waiting" emails (on unless they said no)."""

    __tablename__ = "webmail_alert_settings"

    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    new_mail_alerts: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PasswordReset(Base):
    """A forgotten-password request: a 6-digit code sent to the registered email, single
    use, few tries. Made only for an account that exists; the page says the same either way."""

    __tablename__ = "webmail_password_resets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the browser's token
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(8), default="pending")  # pending / used / locked
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EmailChange(Base):
    """A new email for the codes, waiting for the code sent to it (one per patient)."""

    __tablename__ = "webmail_email_changes"

    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    new_email: Mapped[str] = mapped_column(String(254))
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Draft(Base):
    """What a patient was writing when their session ended, sealed (AES-GCM under the master
    key, like message bodies), given back once after they sign in again, then deleted."""

    __tablename__ = "webmail_drafts"

    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)  # who was signed in
    acting_patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))  # whose profile they were writing from
    path: Mapped[str] = mapped_column(String(200))  # the page the form was on
    sealed_text: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
