"""What one accepted message must write, and writing many of them in one transaction.

The accept pipeline turns a message into a `DeliveryPlan` (plain data); the group commit
writes a whole batch of plans with set-based statements: one insert each for new
conversations, participants, messages, entries and queue rows, and one UID reservation
per folder. The cost of a commit hardly grows with the number of messages in it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db
from caducee.gateway.models import QueuedRecipient
from caducee.mailbox import store
from caducee.mailbox.models import (
    Conversation,
    ConversationParticipant,
    MailboxEntry,
    Message,
)


@dataclass(frozen=True)
class NewConversation:
    opener: str
    opener_kind: str
    participants: frozenset[str]
    is_campaign: bool = False


@dataclass(frozen=True)
class Notice:
    """A message we generate for a local mailbox (a DSN, a "conversation closed" notice)."""

    mailbox_id: int
    sealed: bytes
    size: int
    sender: str
    summary: bytes | None = None  # sealed IMAP summary (caducee.mailbox.imap.structure)


@dataclass(frozen=True)
class Copy:
    """One stored form of a message and who receives that form.

    Most messages have one form. With S/MIME there can be two: the readable (signed) form
    for mailboxes whose keys we hold, and the enveloped form for everyone else. Each form
    is stored once, whatever the number of its recipients.
    """

    sealed: bytes
    size: int
    local_boxes: list[int] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    summary: bytes | None = None  # sealed IMAP summary, for the mailboxes that hold this form
    sent_boxes: list[int] = field(default_factory=list)  # the sender's own mailbox, "Sent" folder (webmail)


@dataclass
class DeliveryPlan:
    copies: list[Copy]
    sender: str
    message_id_header: str
    conversation_id: int | None = None  # an existing conversation
    new_conversation: NewConversation | None = None
    add_participants: frozenset[str] = frozenset()
    close_by: str | None = None
    notices: list[Notice] = field(default_factory=list)
    queue_lifetime: timedelta = timedelta(days=5)


def write_batch(conn: Connection, plans: list[DeliveryPlan]) -> list[int]:
    """Write every plan in the caller's transaction; the id of each plan's first stored copy, in order."""
    now = datetime.now(UTC)
    creating = [plan for plan in plans if plan.new_conversation is not None]
    new_ids = store.insert_returning_ids(
        conn,
        Conversation.__table__,
        [
            {
                "opener_address": p.new_conversation.opener,
                "opener_kind": p.new_conversation.opener_kind,  # type: ignore[union-attr]
                "state": "open",
                "is_campaign": p.new_conversation.is_campaign,
                "created_at": now,
            }  # type: ignore[union-attr]
            for p in creating
        ],
    )
    conversation_of = {id(plan): conversation for plan, conversation in zip(creating, new_ids, strict=True)}
    participants = set()
    for plan in plans:
        conversation = conversation_of.get(id(plan), plan.conversation_id)
        members = plan.new_conversation.participants if plan.new_conversation is not None else plan.add_participants
        participants |= {(conversation, address) for address in members}
    if participants:
        conn.execute(
            store.insert_ignore(conn, ConversationParticipant.__table__),
            [{"conversation_id": c, "address": a} for c, a in sorted(participants)],
        )

    copies = [(plan, copy) for plan in plans for copy in plan.copies]
    copy_ids = store.insert_returning_ids(
        conn,
        Message.__table__,
        [
            {
                "message_id_header": p.message_id_header[:998],
                "sender": p.sender,
                "size": c.size,
                "conversation_id": conversation_of.get(id(p), p.conversation_id),
                "received_at": now,
                "body": c.sealed,
                "summary": c.summary,
            }
            for p, c in copies
        ],
    )
    notices = [notice for plan in plans for notice in plan.notices]
    notice_ids = store.insert_returning_ids(
        conn,
        Message.__table__,
        [
            {
                "message_id_header": "",
                "sender": n.sender,
                "size": n.size,
                "conversation_id": None,
                "received_at": now,
                "body": n.sealed,
                "summary": n.summary,
            }
            for n in notices
        ],
    )

    # (mailbox, folder, message, flags): inboxes, notices, and the sender's own Sent copy (already read)
    deliveries = [
        (box, "INBOX", message_id, "") for (_, copy), message_id in zip(copies, copy_ids, strict=True) for box in copy.local_boxes
    ]
    deliveries += [(notice.mailbox_id, "INBOX", message_id, "") for notice, message_id in zip(notices, notice_ids, strict=True)]
    deliveries += [
        (box, "Sent", message_id, "\\Seen") for (_, copy), message_id in zip(copies, copy_ids, strict=True) for box in copy.sent_boxes
    ]
    if deliveries:
        store.ensure_folders(conn, sorted({box for box, *_ in deliveries}))
        reserved = store.allocate_uids(conn, dict(Counter((box, folder) for box, folder, *_ in deliveries)))
        next_slot = {key: 0 for key in reserved}
        entries = []
        for box, folder, message_id, flags in deliveries:
            folder_id, first_uid, first_modseq = reserved[(box, folder)]
            offset = next_slot[(box, folder)]
            next_slot[(box, folder)] = offset + 1
            entries.append(
                {
                    "folder_id": folder_id,
                    "uid": first_uid + offset,
                    "message_id": message_id,
                    "modseq": first_modseq + offset,
                    "flags": flags,
                    "received_at": now,
                }
            )
        conn.execute(insert(MailboxEntry.__table__), entries)

    queued = [
        {
            "message_id": message_id,
            "mail_from": plan.sender,
            "rcpt_to": rcpt,
            "domain": rcpt.rpartition("@")[2],
            "state": "scheduled",
            "attempts": 0,
            "next_attempt_at": now,
            "expires_at": now + plan.queue_lifetime,
            "last_error": "",
            "delay_warned": False,
            "created_at": now,
            "updated_at": now,
        }
        for (plan, copy), message_id in zip(copies, copy_ids, strict=True)
        for rcpt in copy.remote
    ]
    if queued:
        conn.execute(insert(QueuedRecipient.__table__), queued)
    for plan in plans:
        if plan.close_by is not None:
            store.close_conversation(conn, conversation_of.get(id(plan), plan.conversation_id), plan.close_by)  # type: ignore[arg-type]
    first_copy: dict[int, int] = {}
    for (plan, _), message_id in zip(copies, copy_ids, strict=True):
        first_copy.setdefault(id(plan), message_id)
    return [first_copy[id(plan)] for plan in plans]


class BatchWriter:
    """Runs `write_batch` in one transaction, the fastest way each backend allows.

    SQLite: one dedicated thread with its own connection runs the whole batch, statements
    and commit, without going back to the event loop between statements (through
    aiosqlite every statement is a round trip between the loop and its thread, and under
    load each one waits behind every other session). SQLite has one writer anyway.
    PostgreSQL: asyncpg is native asyncio; the batch runs through `run_sync`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sync = db.sync_engine_for(engine) if db.is_sqlite(engine) else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer") if self._sync else None

    async def __call__(self, plans: list[DeliveryPlan]) -> list[int]:
        if self._sync is not None:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._write_sqlite, plans)
        async with self.engine.begin() as conn:
            return await conn.run_sync(write_batch, plans)

    def _write_sqlite(self, plans: list[DeliveryPlan]) -> list[int]:
        assert self._sync is not None
        with self._sync.begin() as conn:
            return write_batch(conn, plans)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync is not None:
            self._sync.dispose()
