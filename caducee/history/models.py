"""The table of the access history. Rows are only ever inserted: no code path updates or deletes them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.core.ids import BigId
from caducee.db import Base


class AccessRecord(Base):
    """One access to one patient's data (a message read, an attachment opened, a login)."""

    __tablename__ = "access_history"
    __table_args__ = (Index("ix_access_history_patient_at", "patient_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer)  # whose data was accessed (annuaire patients.id)
    actor: Mapped[str] = mapped_column(String(256))  # who, in words: "Claire Martin", "Claire Martin (tutrice)"
    action: Mapped[str] = mapped_column(String(32))  # login / message-read / attachment-read / profile-closed ...
    detail: Mapped[str] = mapped_column(String(512), default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
