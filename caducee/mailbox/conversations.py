"""Reading a mailbox as conversations: what the webmail lists and shows.

A conversation's key is its id; a message that belongs to none (a notice) is a
conversation of its own, keyed by minus its message id. Every function takes the
mailbox the reader may see and never returns anything outside it: a conversation
someone else takes part in is simply not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import and_, bindparam, case, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.mailbox.models import Conversation, ConversationParticipant, Folder, MailboxEntry, Message

HIDDEN_FOLDERS = ("Trash",)  # what the patient deleted is not listed


@dataclass(frozen=True)
class ConversationRow:
    """One line of the conversation list."""

    key: int
    last_message_id: int
    last_at: datetime
    messages: int
    unread: int
    sealed_summary: bytes | None  # of the latest message: its subject and sender
    last_sender: str
    state: str  # open / closed
    closed_by: str | None
    closed_at: datetime | None
    is_campaign: bool
    participants: frozenset[str]


@dataclass(frozen=True)
class StoredMessage:
    """One message of a conversation as this mailbox holds it."""

    id: int
    folder_id: int
    folder: str
    uid: int
    flags: str
    sender: str
    received_at: datetime
    message_id_header: str
    sealed_body: bytes | None  # read only when needed (`sealed_bodies`)

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags.split()


def _visible(mailbox_id: int, only: tuple[str, ...] | None = None, leave_out: tuple[str, ...] = HIDDEN_FOLDERS):  # type: ignore[no-untyped-def]
    folders = Folder.name.in_(only) if only is not None else Folder.name.notin_(leave_out)
    return and_(Folder.mailbox_id == mailbox_id, folders, MailboxEntry.expunged_modseq.is_(None))


def _key():  # type: ignore[no-untyped-def]
    return func.coalesce(Message.conversation_id, literal(0) - Message.id)


def _keyword(keyword: str):  # type: ignore[no-untyped-def]
    return (literal(" ") + MailboxEntry.flags + literal(" ")).like(f"% {keyword} %")


async def list_conversations(
    conn: AsyncConnection,
    mailbox_id: int,
    *,
    offset: int = 0,
    limit: int = 20,
    unread_only: bool = False,
    keyword: str | None = None,
    without_keyword: str | None = None,
    only: tuple[str, ...] | None = None,
    leave_out: tuple[str, ...] = HIDDEN_FOLDERS,
) -> tuple[list[ConversationRow], int]:
    """A page of conversations, most recent activity first, and how many there are in all.

    `keyword` lists only the entries carrying that IMAP keyword (a label: "$Prevention"
    for the CNAM's campaigns), `without_keyword` all the others. `only` lists the folders
    to read (the webmail's "Archives" and "Corbeille" views); otherwise every folder but
    `leave_out` (Trash, and Archive for the main list)."""
    key = _key().label("key")
    unseen = case(((literal(" ") + MailboxEntry.flags + literal(" ")).like("% \\Seen %", escape="!"), 0), else_=1)
    grouped = (
        select(
            key,
            func.max(Message.id).label("last_id"),
            func.max(MailboxEntry.received_at).label("last_at"),
            func.count().label("messages"),
            func.sum(unseen).label("unread"),
        )
        .select_from(MailboxEntry)
        .join(Folder, Folder.id == MailboxEntry.folder_id)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(_visible(mailbox_id, only, leave_out))
        .group_by(key)
    )
    if keyword is not None:
        grouped = grouped.where(_keyword(keyword))
    if without_keyword is not None:
        grouped = grouped.where(~_keyword(without_keyword))
    if unread_only:
        grouped = grouped.having(func.sum(unseen) > 0)
    total = (await conn.execute(select(func.count()).select_from(grouped.subquery()))).scalar_one()
    rows = (await conn.execute(grouped.order_by(func.max(Message.id).desc()).limit(limit).offset(offset))).all()
    if not rows:
        return [], total
    keys = [row.key for row in rows if row.key > 0]
    conversations = {row.id: row for row in await conn.execute(select(Conversation).where(Conversation.id.in_(keys)))} if keys else {}
    members: dict[int, set[str]] = {}
    if keys:
        for conversation_id, address in await conn.execute(
            select(ConversationParticipant.conversation_id, ConversationParticipant.address).where(
                ConversationParticipant.conversation_id.in_(keys)
            )
        ):
            members.setdefault(conversation_id, set()).add(address)
    latest = {
        row.id: row
        for row in await conn.execute(
            select(Message.id, Message.summary, Message.sender).where(Message.id.in_([row.last_id for row in rows]))
        )
    }
    result = []
    for row in rows:
        conversation = conversations.get(row.key)
        last = latest[row.last_id]
        result.append(
            ConversationRow(
                key=row.key,
                last_message_id=row.last_id,
                last_at=row.last_at,
                messages=row.messages,
                unread=int(row.unread or 0),
                sealed_summary=last.summary,
                last_sender=last.sender,
                state=conversation.state if conversation else "open",
                closed_by=conversation.closed_by if conversation else None,
                closed_at=conversation.closed_at if conversation else None,
                is_campaign=bool(conversation.is_campaign) if conversation else False,
                participants=frozenset(members.get(row.key, ())),
            )
        )
    return result, total


async def unread_count(conn: AsyncConnection, mailbox_id: int) -> int:
    """Unread messages in the mailbox (what the page title and the profile switcher show)."""
    count = await conn.execute(
        select(func.count())
        .select_from(MailboxEntry)
        .join(Folder, Folder.id == MailboxEntry.folder_id)
        .where(_visible(mailbox_id), (literal(" ") + MailboxEntry.flags + literal(" ")).notlike("% \\Seen %", escape="!"))
    )
    return int(count.scalar_one())


def _messages_query(condition, *, with_state: bool = False):  # type: ignore[no-untyped-def]
    query = (
        select(
            Message.id,
            MailboxEntry.folder_id,
            Folder.name,
            MailboxEntry.uid,
            MailboxEntry.flags,
            Message.sender,
            MailboxEntry.received_at,
            Message.message_id_header,
        )
        .select_from(MailboxEntry)
        .join(Folder, Folder.id == MailboxEntry.folder_id)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(Folder.mailbox_id == bindparam("box"), Folder.name.notin_(HIDDEN_FOLDERS), MailboxEntry.expunged_modseq.is_(None), condition)
        .order_by(Message.id, Folder.name)
    )
    if with_state:  # the conversation's state on every row: one round trip for the whole page
        query = query.add_columns(Conversation.state, Conversation.closed_by, Conversation.closed_at, Conversation.is_campaign).outerjoin(
            Conversation, Conversation.id == Message.conversation_id
        )
    return query


# Built once: every conversation page runs one of these, and building a select costs more
# than running it.
_IN_CONVERSATION = _messages_query(Message.conversation_id == bindparam("key"))
_IN_CONVERSATION_WITH_STATE = _messages_query(Message.conversation_id == bindparam("key"), with_state=True)
_ALONE = _messages_query(Message.id == bindparam("key"))


async def conversation_entries(conn: AsyncConnection, mailbox_id: int, key: int) -> list[StoredMessage]:
    """Every entry of one conversation in this mailbox, Trash included, one per folder (what
    moving a conversation between folders works on)."""
    condition = Message.conversation_id == key if key > 0 else Message.id == -key
    rows = await conn.execute(
        select(
            Message.id,
            MailboxEntry.folder_id,
            Folder.name,
            MailboxEntry.uid,
            MailboxEntry.flags,
            Message.sender,
            MailboxEntry.received_at,
            Message.message_id_header,
        )
        .select_from(MailboxEntry)
        .join(Folder, Folder.id == MailboxEntry.folder_id)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(Folder.mailbox_id == mailbox_id, MailboxEntry.expunged_modseq.is_(None), condition)
        .order_by(Message.id, Folder.name)
    )
    return [
        StoredMessage(row.id, row.folder_id, row.name, row.uid, row.flags, row.sender, row.received_at, row.message_id_header, None)
        for row in rows
    ]


def _stored(rows) -> list[StoredMessage]:  # type: ignore[no-untyped-def]
    seen_ids: set[int] = set()
    messages = []
    for row in rows:
        if row.id in seen_ids:  # the same message filed twice (a copy in Archive): show it once
            continue
        seen_ids.add(row.id)
        messages.append(
            StoredMessage(row.id, row.folder_id, row.name, row.uid, row.flags, row.sender, row.received_at, row.message_id_header, None)
        )
    return messages


async def conversation_messages(conn: AsyncConnection, mailbox_id: int, key: int) -> list[StoredMessage]:
    """The messages of one conversation this mailbox holds, oldest first; [] if it holds none.

    Bodies are not read (`sealed_body` is None): a page shows what it has already opened,
    and asks `sealed_bodies` for the rest.
    """
    statement, value = (_IN_CONVERSATION, key) if key > 0 else (_ALONE, -key)
    return _stored(await conn.execute(statement, {"box": mailbox_id, "key": value}))


async def conversation_with_state(
    conn: AsyncConnection, mailbox_id: int, key: int
) -> tuple[list[StoredMessage], ConversationStatus | None]:
    """`conversation_messages` and `conversation_state` in one statement (the page needs both)."""
    if key <= 0:
        return await conversation_messages(conn, mailbox_id, key), None
    rows = (await conn.execute(_IN_CONVERSATION_WITH_STATE, {"box": mailbox_id, "key": key})).all()
    if not rows:
        return [], None
    first = rows[0]
    return _stored(rows), ConversationStatus(first.state, first.closed_by, first.closed_at, bool(first.is_campaign))


async def sealed_bodies(conn: AsyncConnection, message_ids: list[int]) -> dict[int, bytes]:
    """The sealed bodies of messages the caller already found in a mailbox it may read."""
    if not message_ids:
        return {}
    return {row.id: row.body for row in await conn.execute(select(Message.id, Message.body).where(Message.id.in_(message_ids)))}


class ConversationStatus(NamedTuple):
    state: str  # open / closed
    closed_by: str | None
    closed_at: datetime | None
    is_campaign: bool

    @property
    def closed(self) -> bool:
        return self.state == "closed"


async def conversation_of_message(conn: AsyncConnection, message_id: int) -> int | None:
    return (await conn.execute(select(Message.conversation_id).where(Message.id == message_id))).scalar_one_or_none()


_VERSION = text(
    "SELECT (SELECT coalesce(sum(highestmodseq), 0) FROM folders WHERE mailbox_id = :box), "
    "(SELECT max(closed_at) FROM conversation_participants WHERE address = :address AND closed_at IS NOT NULL)"
)


async def list_version(conn: AsyncConnection, mailbox_id: int, address: str) -> tuple[int, str]:
    """Changes whenever the conversation list of this mailbox can change: a message filed,
    a flag changed, an entry expunged (each bumps a folder's MODSEQ), or a conversation
    closed, even by a message this mailbox did not receive (the latest closing among its
    conversations). Two index look-ups: a cached list is checked against it."""
    row = (await conn.execute(_VERSION, {"box": mailbox_id, "address": address})).one()
    return int(row[0]), str(row[1])
