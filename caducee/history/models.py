"""The tables of the access history. Rows of `access_history` are only ever inserted: no code
path updates or deletes them, triggers refuse it in the database, and each row is chained to
the previous one of the same patient (`chain.py`), so that an edit made behind our back is
found by `caducee history verify`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.core.ids import BigId
from caducee.db import Base


class AccessRecord(Base):
    """One access to one patient's data (a message read, a document opened, a login)."""

    __tablename__ = "access_history"
    __table_args__ = (
        Index("ix_access_history_patient_at", "patient_id", "id"),
        UniqueConstraint("patient_id", "seq", name="uq_access_history_patient_seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer)  # whose data was accessed (annuaire patients.id)
    actor: Mapped[str] = mapped_column(String(256))  # who, in words: "Claire Martin", "Dr Sophie Bernard"
    action: Mapped[str] = mapped_column(String(32))  # login / message-read / document-read / access-refused ...
    detail: Mapped[str] = mapped_column(String(512), default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    structure: Mapped[str] = mapped_column(String(256), default="")  # the professional's structure, when one acted
    access_right: Mapped[str] = mapped_column(
        String(16), default=""
    )  # patient / guardian / carer / author / authorised / emergency / refused
    hidden_from_guardians: Mapped[bool] = mapped_column(Boolean, default=False)  # about a minor's secret document
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # 1, 2, 3... per patient; None: recorded before the chain
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    entry_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class HistoryHead(Base):
    """The end of each patient's chain: its last sequence number and hash. Appending moves it
    under a row lock, so that concurrent writers (several processes) never fork a chain."""

    __tablename__ = "access_history_heads"

    patient_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    entry_hash: Mapped[str] = mapped_column(String(64))
