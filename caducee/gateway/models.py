"""The gateway's tables: the outbound relay queue (one row per remote recipient of a stored
message) and the post-delivery queue (one row per local recipient and consumer that must
still be told of a delivery)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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


class PostDeliveryItem(Base):
    """One consumer (the dossier's XDM intake, the agenda's invitations...) still to be run on
    one stored message received by one local mailbox: written in the group commit that stored
    the message, so a delivery acknowledged with 250 is filed even if the process dies next.

    States: pending (due at `next_attempt_at`), claimed (a process runs it until
    `lease_until`; `next_attempt_at` is pushed to the same moment, so an expired lease is due
    again), done, failed (gave up after the attempts). `message_id` is no foreign key: the
    message may be purged before a retry, which then finds nothing to file."""

    __tablename__ = "post_delivery_queue"
    __table_args__ = (
        Index("ix_post_delivery_queue_due", "state", "next_attempt_at"),
        UniqueConstraint("message_id", "mailbox_id", "consumer", name="uq_post_delivery_queue_message_mailbox_consumer"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(BigInteger)  # the stored form this mailbox holds (mailbox component)
    mailbox_id: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(254))  # the recipient mailbox's address
    mailbox_type: Mapped[str] = mapped_column(String(3))  # PER, CAB, ORG, APP, PAT
    sender: Mapped[str] = mapped_column(String(254))
    sender_kind: Mapped[str] = mapped_column(String(16))  # policies.PartyKind
    channel: Mapped[str] = mapped_column(String(16))  # policies.Channel
    message_id_header: Mapped[str] = mapped_column(String(998))
    consumer: Mapped[str] = mapped_column(String(32))  # "dossier", "agenda"
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claimed_by: Mapped[str] = mapped_column(String(64), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
