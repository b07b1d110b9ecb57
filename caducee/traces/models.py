"""The trace component's one table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.ids import BigId
from caducee.db import Base


class MailboxTrace(Base):
    """One action on a mailbox and its answer. Written in the same transaction as what it
    records when there is one (an accepted message, an expunge): a trace line exists exactly
    when the action happened."""

    __tablename__ = "mailbox_traces"
    __table_args__ = (Index("ix_mailbox_traces_mailbox_at", "mailbox", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    mailbox: Mapped[str] = mapped_column(String(320))  # the mailbox acted on (a sender's, or the one expunged)
    actor: Mapped[str] = mapped_column(String(320), default="")  # who signed in (a guardian for a child), or the peer's DN
    client: Mapped[str] = mapped_column(String(64), default="")  # the client's IP address, when there is a socket
    channel: Mapped[str] = mapped_column(String(16))  # submission, mx, trusted, webmail, api, imap
    action: Mapped[str] = mapped_column(String(32))  # send, refuse, expunge, delete-folder, move
    items: Mapped[int] = mapped_column(Integer, default=1)  # how many messages the action concerned
    answer: Mapped[str] = mapped_column(String(300), default="")  # the reply given ("250 2.0.0 ...", "550 5.7.1 ...")
    message_id: Mapped[str] = mapped_column(String(255), default="")  # the Message-ID header, when one message
    detail: Mapped[str] = mapped_column(String(2000), default="")  # recipients, a folder's name
