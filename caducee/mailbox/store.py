"""Operations on the mailbox store, each inside the caller's transaction.

The gateway calls these from its group commit, so a message, all its entries, its queue
rows and its conversation change are one transaction: on disk together or not at all.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.mailbox.models import (
    SPECIAL_FOLDERS,
    Conversation,
    ConversationParticipant,
    Folder,
    MailboxEntry,
    Message,
)


@dataclass(frozen=True)
class ConversationView:
    id: int
    opener_kind: str
    state: str
    participants: frozenset[str]
    closed_by: str | None
    closed_at: datetime | None
    is_campaign: bool


def _insert_ignore(conn: AsyncConnection, table):  # type: ignore[no-untyped-def]
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(table).on_conflict_do_nothing()


async def ensure_folders(conn: AsyncConnection, mailbox_ids: list[int]) -> None:
    """Create the standard folders of mailboxes that have none yet (idempotent)."""
    if not mailbox_ids:
        return
    have = set(
        (await conn.execute(select(Folder.mailbox_id).where(Folder.mailbox_id.in_(mailbox_ids), Folder.name == "INBOX"))).scalars()
    )
    missing = [mailbox_id for mailbox_id in set(mailbox_ids) if mailbox_id not in have]
    if not missing:
        return
    validity = int(datetime.now(timezone.utc).timestamp()) & 0x7FFFFFFF
    rows = [
        {"mailbox_id": mailbox_id, "name": name, "special_use": special, "uidvalidity": validity,
         "uidnext": 1, "highestmodseq": 1}  # fmt: skip
        for mailbox_id in missing
        for name, special in SPECIAL_FOLDERS
    ]
    await conn.execute(_insert_ignore(conn, Folder.__table__), rows)


async def store_message(
    conn: AsyncConnection, *, sealed_body: bytes, size: int, sender: str, message_id_header: str, conversation_id: int | None
) -> int:
    result = await conn.execute(
        insert(Message.__table__).values(
            message_id_header=message_id_header[:998], sender=sender, size=size, conversation_id=conversation_id,
            received_at=datetime.now(timezone.utc), body=sealed_body,
        )  # fmt: skip
    )
    return int(result.inserted_primary_key[0])


async def append_entry(conn: AsyncConnection, mailbox_id: int, folder: str, message_id: int, flags: str = "") -> tuple[int, int]:
    """Give the message the folder's next UID and MODSEQ; returns (uid, modseq).

    The UPDATE ... RETURNING takes the folder row's lock, so concurrent appends to one
    folder get distinct, increasing UIDs on PostgreSQL as on SQLite.
    """
    row = (
        await conn.execute(
            text(
                "UPDATE folders SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 "
                "WHERE mailbox_id = :mailbox AND name = :name RETURNING id, uidnext - 1, highestmodseq"
            ),
            {"mailbox": mailbox_id, "name": folder},
        )
    ).one()
    folder_id, uid, modseq = row
    await conn.execute(
        insert(MailboxEntry.__table__).values(
            folder_id=folder_id, uid=uid, message_id=message_id, modseq=modseq, flags=flags,
            received_at=datetime.now(timezone.utc),
        )  # fmt: skip
    )
    return int(uid), int(modseq)


async def find_conversation(conn: AsyncConnection, message_id_headers: list[str]) -> ConversationView | None:
    """The conversation of the most recent of the referenced messages we hold."""
    if not message_id_headers:
        return None
    row = (
        await conn.execute(
            select(Conversation)
            .join(Message, Message.conversation_id == Conversation.id)
            .where(Message.message_id_header.in_(message_id_headers))
            .order_by(Message.id.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    participants = frozenset(
        (await conn.execute(select(ConversationParticipant.address).where(ConversationParticipant.conversation_id == row.id))).scalars()
    )
    return ConversationView(row.id, row.opener_kind, row.state, participants, row.closed_by, row.closed_at, row.is_campaign)


async def create_conversation(conn: AsyncConnection, *, opener: str, opener_kind: str, participants: set[str], is_campaign: bool = False) -> int:
    result = await conn.execute(
        insert(Conversation.__table__).values(
            opener_address=opener, opener_kind=opener_kind, state="open", is_campaign=is_campaign,
            created_at=datetime.now(timezone.utc),
        )  # fmt: skip
    )
    conversation_id = int(result.inserted_primary_key[0])
    await add_participants(conn, conversation_id, participants)
    return conversation_id


async def add_participants(conn: AsyncConnection, conversation_id: int, addresses: set[str]) -> None:
    if addresses:
        await conn.execute(
            _insert_ignore(conn, ConversationParticipant.__table__),
            [{"conversation_id": conversation_id, "address": address} for address in sorted(addresses)],
        )


async def close_conversation(conn: AsyncConnection, conversation_id: int, closed_by: str) -> None:
    await conn.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.state == "open")
        .values(state="closed", closed_by=closed_by, closed_at=datetime.now(timezone.utc))
    )


async def deliver_local(conn: AsyncConnection, *, mailbox_id: int, sealed_body: bytes, size: int, sender: str,
                        message_id_header: str = "") -> int:  # fmt: skip
    """Store a message we generate (notice, DSN) straight into one local INBOX."""
    message_id = await store_message(conn, sealed_body=sealed_body, size=size, sender=sender,
                                     message_id_header=message_id_header, conversation_id=None)  # fmt: skip
    await ensure_folders(conn, [mailbox_id])
    await append_entry(conn, mailbox_id, "INBOX", message_id)
    return message_id


def new_uidvalidity() -> int:
    return secrets.randbelow(0x7FFFFFFF) + 1
