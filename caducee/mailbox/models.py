"""Tables of the mailbox store: bodies stored once, small per-mailbox entries, conversations.

A message sent to 10,000 patients is one `messages` row and 10,000 `mailbox_entries` rows.
Bodies are sealed (AES-256-GCM, `caducee.crypto.atrest`); entries carry what IMAP needs
(UID, flags, MODSEQ) and nothing readable about the content.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.core.ids import BigId
from caducee.db import Base

SPECIAL_FOLDERS = (("INBOX", None), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"), ("Archive", "\\Archive"))


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    opener_address: Mapped[str] = mapped_column(String(254))
    opener_kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(8), default="open")
    closed_by: Mapped[str | None] = mapped_column(String(254), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    is_campaign: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ConversationParticipant(Base):
    __tablename__ = "conversation_participants"

    __table_args__ = (
        Index("ix_conversation_participants_address", "address"),
        # The webmail's list version reads max(closed_at) of one address: a look-up here,
        # where counting the closed conversations of a 1,000-conversation patient cost
        # 1.5 ms of database time on every page (migration 0006).
        Index(
            "ix_conversation_participants_closed",
            "address",
            "closed_at",
            postgresql_where="closed_at IS NOT NULL",
            sqlite_where="closed_at IS NOT NULL",
        ),
    )

    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(254), primary_key=True)
    # When the conversation was closed (a copy of conversations.closed_at, per participant).
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Message(Base):
    """One stored message: the sealed raw RFC 5322 bytes and the envelope facts."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id_header: Mapped[str] = mapped_column(String(998), index=True)
    sender: Mapped[str] = mapped_column(String(254))
    size: Mapped[int] = mapped_column(Integer)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), nullable=True, index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    # ENVELOPE, BODY and BODYSTRUCTURE in IMAP form plus what SEARCH needs of the headers,
    # computed once when the message is stored and sealed like the body (it is readable
    # content): `UID FETCH 1:* (ENVELOPE BODYSTRUCTURE)` then opens no body.
    summary: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class Folder(Base):
    """One folder of a mailbox. A folder is identified by (id, uidvalidity): SQLite may give
    a deleted folder's id to the next one created, never its UIDVALIDITY (`UidValidity`)."""

    __tablename__ = "folders"
    __table_args__ = (UniqueConstraint("mailbox_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(Integer)  # annuaire mailboxes.id
    name: Mapped[str] = mapped_column(String(255))
    special_use: Mapped[str | None] = mapped_column(String(16), nullable=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uidnext: Mapped[int] = mapped_column(BigInteger, default=1)
    highestmodseq: Mapped[int] = mapped_column(BigInteger, default=1)
    # The first UID no IMAP session has been told of as \Recent yet (RFC 3501 2.3.2): the
    # session that first learns of a message with a higher UID moves it past that message.
    first_recent_uid: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")
    # Keywords ever set in the folder, space-separated: FLAGS lists them for every session (as
    # Dovecot does), not only those some message carries now, so sessions agree on the list.
    keywords: Mapped[str] = mapped_column(Text, default="", server_default="")


class UidValidity(Base):
    """The last UIDVALIDITY given to a folder, for every mailbox (one row).

    RFC 3501 2.3.1.1: a folder deleted and created again under the same name must get a
    larger UIDVALIDITY, so a client's cache of the old one is dropped. Values are
    max(last + 1, the time in seconds), as Dovecot's are: they grow across folders, across
    deletions and across databases restored from a dump taken earlier.
    """

    __tablename__ = "folder_uidvalidity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)


class Subscription(Base):
    """A subscribed folder name (LSUB, LIST (SUBSCRIBED)): a name, not a folder, since
    RFC 3501 6.3.6 keeps a subscription when its folder is deleted."""

    __tablename__ = "folder_subscriptions"

    mailbox_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # annuaire mailboxes.id
    name: Mapped[str] = mapped_column(String(255), primary_key=True)


class MailboxEntry(Base):
    """A message as one folder of one mailbox holds it."""

    __tablename__ = "mailbox_entries"
    __table_args__ = (
        UniqueConstraint("folder_id", "uid"),
        Index("ix_mailbox_entries_folder_modseq", "folder_id", "modseq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id"))
    uid: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    modseq: Mapped[int] = mapped_column(BigInteger)
    flags: Mapped[str] = mapped_column(String(512), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Set when the entry is expunged (to the MODSEQ of that change): the row stays as a
    # tombstone so that other sessions learn of the EXPUNGE from their last known MODSEQ.
    expunged_modseq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # When it was expunged: the purge job deletes tombstones a day old (every session has
    # announced them by then: none stays silent longer than `imap_timeout`).
    expunged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
