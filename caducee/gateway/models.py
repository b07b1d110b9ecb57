"""The outbound relay queue: one row per remote recipient of a stored message."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.core.ids import BigId
from caducee.db import Base


class QueuedRecipient(Base):
    """Per-recipient delivery state, as in Stalwart's queue: scheduled, delivered,
    temporary failure (retried with backoff), permanent failure or expired (DSN sent)."""

    __tablename__ = "outbound_queue"
    __table_args__ = (Index("ix_outbound_queue_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    mail_from: Mapped[str] = mapped_column(String(254))
    rcpt_to: Mapped[str] = mapped_column(String(254))
    domain: Mapped[str] = mapped_column(String(253))
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(Text, default="")
    delay_warned: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
