"""Low-level operations on the mailbox store's tables, each inside the caller's transaction:
threading look-up, closing, folder creation (UIDVALIDITY from one counter that only grows),
the folder keyword list and the one UID/MODSEQ reservation.

Other components do not call these directly: they file messages through
`caducee.mailbox.delivery` and read through `caducee.mailbox.mailstore` and
`caducee.mailbox.conversations`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.core.clock import utcnow
from caducee.core.reseal import Resealer, reseal_table
from caducee.mailbox.models import (
    SPECIAL_FOLDERS,
    Conversation,
    ConversationParticipant,
    Folder,
    MailboxEntry,
    Message,
    Subscription,
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
    senders: frozenset[str] = frozenset()  # who wrote in it


def insert_ignore(conn: Connection | AsyncConnection, table: Table):  # type: ignore[no-untyped-def]
    """INSERT ... ON CONFLICT DO NOTHING, in the connection's dialect."""
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(table).on_conflict_do_nothing()


async def find_conversation(
    conn: AsyncConnection, message_id_headers: list[str], *, sender: str, holder: int | None
) -> ConversationView | None:
    """The conversation of the most recent referenced message the replying party holds.

    A Message-ID is only a claim: anyone can write one, reuse one, or name one they never
    received. A local sender (`holder`: their mailbox) is resolved among the messages filed
    in their own mailbox and the ones they wrote (a mail client keeps its own Sent copy);
    another operator's sender among conversations they take part in.
    So a professional who reuses someone else's Message-ID steers nobody's reply.
    """
    if not message_id_headers:
        return None
    query = (
        select(Conversation)
        .join(Message, Message.conversation_id == Conversation.id)
        .where(Message.message_id_header.in_(message_id_headers))
    )
    if holder is not None:
        held = (
            select(MailboxEntry.message_id)
            .join(Folder, Folder.id == MailboxEntry.folder_id)
            .where(Folder.mailbox_id == holder, MailboxEntry.message_id == Message.id)
        )
        query = query.where(or_(held.exists(), Message.sender == sender))  # received, or written by them
    else:
        member = select(ConversationParticipant.address).where(
            ConversationParticipant.conversation_id == Conversation.id, ConversationParticipant.address == sender
        )
        query = query.where(member.exists())
    row = (await conn.execute(query.order_by(Message.id.desc()).limit(1))).first()
    if row is None:
        return None
    participants = frozenset(
        (await conn.execute(select(ConversationParticipant.address).where(ConversationParticipant.conversation_id == row.id))).scalars()
    )
    senders = frozenset((await conn.execute(select(Message.sender).where(Message.conversation_id == row.id).distinct())).scalars())
    return ConversationView(row.id, row.opener_kind, row.state, participants, row.closed_by, row.closed_at, row.is_campaign, senders)


async def message_id_used_by_other(conn: AsyncConnection, message_id_header: str, sender: str) -> bool:
    """Whether another sender already used this Message-ID (a reused id is refused: threading
    and receipts rely on it naming one message of one sender)."""
    row = await conn.execute(
        select(Message.id).where(Message.message_id_header == message_id_header[:998], Message.sender != sender.lower()).limit(1)
    )
    return row.first() is not None


def message_ids_used_by_others(conn: Connection, wanted: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """`message_id_used_by_other` for many (Message-ID, sender) pairs in one query, inside a
    writing transaction: the pairs whose Message-ID another sender already used."""
    if not wanted:
        return set()
    headers = sorted({header[:998] for header, _ in wanted})
    senders_of: dict[str, set[str]] = {}
    for header, sender in conn.execute(select(Message.message_id_header, Message.sender).where(Message.message_id_header.in_(headers))):
        senders_of.setdefault(header, set()).add(sender)
    return {(header, sender) for header, sender in wanted if senders_of.get(header[:998], set()) - {sender.lower()}}


def close_conversation(conn: Connection, conversation_id: int, closed_by: str) -> None:
    """Close a conversation, and mark each participant's row with the moment, so that a
    participant's conversation list can tell it changed with one index look-up."""
    moment = datetime.now(UTC)
    closed = conn.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.state == "open")
        .values(state="closed", closed_by=closed_by, closed_at=moment)
    )
    if closed.rowcount:
        conn.execute(
            update(ConversationParticipant).where(ConversationParticipant.conversation_id == conversation_id).values(closed_at=moment)
        )


_UIDVALIDITY = text(
    "INSERT INTO folder_uidvalidity (id, last) VALUES (1, CAST(:candidate AS BIGINT)) "
    "ON CONFLICT (id) DO UPDATE SET last = CASE WHEN folder_uidvalidity.last + CAST(:n AS BIGINT) > excluded.last "
    "THEN folder_uidvalidity.last + CAST(:n AS BIGINT) ELSE excluded.last END RETURNING last"
)
MAX_UIDVALIDITY = 2**32 - 1


def new_uidvalidities(conn: Connection, count: int = 1) -> int:
    """The first of `count` UIDVALIDITY values larger than any given before (`UidValidity`).

    One upsert on a single row, whose lock is held until commit: concurrent creators get
    disjoint values, in commit order. Values follow the clock (as Dovecot's do) when it is
    ahead, so they also grow after a database is restored from an older dump.
    """
    now = int(utcnow().timestamp())
    last = int(conn.execute(_UIDVALIDITY, {"candidate": now + count - 1, "n": count}).scalar_one())
    if last > MAX_UIDVALIDITY:
        raise RuntimeError("UIDVALIDITY values are exhausted")
    return last - count + 1


# ---- set-based forms, used by the gateway's group commit --------------------------------


def insert_returning_ids(conn: Connection, table, rows: list[dict]) -> list[int]:  # type: ignore[no-untyped-def]
    """Insert many rows in as few statements as the driver allows; ids in the rows' order.

    Asking SQLAlchemy to sort RETURNING rows by parameter order makes it fall back to one
    INSERT per row on SQLite. It is not needed: a multi-row INSERT assigns ids in VALUES
    order (SQLite's rowid is max + 1 per row under the write lock; PostgreSQL's nextval
    runs row by row, and concurrent sessions only leave gaps), and batches run in order,
    so the ascending ids are the rows' ids in order.
    """
    if not rows:
        return []
    ids = sorted(int(row[0]) for row in conn.execute(insert(table).returning(table.c.id), rows))
    if len(ids) != len(rows):
        raise RuntimeError(f"inserted {len(rows)} rows into {table.name} but got {len(ids)} ids")
    return ids


def ensure_folders(conn: Connection, mailbox_ids: list[int]) -> None:
    """Create the standard folders a mailbox lacks (idempotent).

    A mailbox may have its INBOX alone: a campaign fan-out creates only that one for the
    millions of patients who never received anything before (`fanout`).
    """
    if not mailbox_ids:
        return
    names = [name for name, _ in SPECIAL_FOLDERS]
    have = set(
        conn.execute(
            select(Folder.mailbox_id)
            .where(Folder.mailbox_id.in_(mailbox_ids), Folder.name.in_(names))
            .group_by(Folder.mailbox_id)
            .having(func.count() == len(names))
        ).scalars()
    )
    missing = sorted(set(mailbox_ids) - have)
    if not missing:
        return
    wanted = [(mailbox_id, name, special) for mailbox_id in missing for name, special in SPECIAL_FOLDERS]
    first = new_uidvalidities(conn, len(wanted))
    rows = [
        {"mailbox_id": mailbox_id, "name": name, "special_use": special, "uidvalidity": first + i, "uidnext": 1, "highestmodseq": 1}
        for i, (mailbox_id, name, special) in enumerate(wanted)
    ]
    conn.execute(insert_ignore(conn, Folder.__table__), rows)
    # The standard folders start subscribed (a folder a client creates does not: RFC 3501 6.3.3).
    conn.execute(insert_ignore(conn, Subscription.__table__), [{"mailbox_id": m, "name": n} for m, n, _ in wanted])


_RESERVE = (
    "UPDATE folders SET uidnext = uidnext + :n, highestmodseq = highestmodseq + :n WHERE {where} "
    "RETURNING id, uidvalidity, uidnext - :n, highestmodseq - :n + 1"
)
_RESERVE_BY_NAME = text(_RESERVE.format(where="mailbox_id = :mailbox AND name = :name"))
_RESERVE_BY_ID = text(_RESERVE.format(where="id = :id"))


def reserve_uids_by_name(conn: Connection, counts: dict[tuple[int, str], int]) -> dict[tuple[int, str], tuple[int, int, int]]:
    """Reserve `count` consecutive UIDs and MODSEQs in each (mailbox, folder name).

    Returns {(mailbox, folder): (folder id, first uid, first modseq)}: one UPDATE per
    folder whatever the number of messages; the row lock (PostgreSQL) or write lock
    (SQLite) is held until commit, so ranges are disjoint across concurrent writers and
    become visible in order; the sorted order avoids deadlocks between writers.
    """
    reserved = {}
    for (mailbox_id, folder), count in sorted(counts.items()):
        row = conn.execute(_RESERVE_BY_NAME, {"n": count, "mailbox": mailbox_id, "name": folder}).one()
        reserved[(mailbox_id, folder)] = (int(row[0]), int(row[2]), int(row[3]))
    return reserved


def reserve_uids(conn: Connection, folder_id: int, count: int) -> tuple[int, int, int]:
    """(UIDVALIDITY, first UID, first MODSEQ) of `count` new entries in one folder."""
    row = conn.execute(_RESERVE_BY_ID, {"n": count, "id": folder_id}).one()
    return int(row[1]), int(row[2]), int(row[3])


def define_keywords(conn: Connection, folder_id: int, flag_texts: list[str]) -> None:
    """Add the keywords in `flag_texts` to the folder's list (`Folder.keywords`), if any is new."""
    wanted = {flag for flags in flag_texts for flag in flags.split() if not flag.startswith("\\")}
    if not wanted:
        return
    current = conn.execute(select(Folder.keywords).where(Folder.id == folder_id)).scalar()
    if current is None:
        return
    known = {keyword.upper() for keyword in current.split()}
    new = sorted(keyword for keyword in wanted if keyword.upper() not in known)
    if new:
        conn.execute(update(Folder).where(Folder.id == folder_id).values(keywords=" ".join([*current.split(), *new])))


async def sealed_body(conn: AsyncConnection, message_id: int) -> bytes:
    """The sealed body of one stored message (the relay sends it as it is stored)."""
    return (await conn.execute(select(Message.body).where(Message.id == message_id))).scalar_one()


async def reseal(engine: AsyncEngine, cipher: Resealer) -> int:
    """`caducee keys rotate`: bodies and summaries under the current sealing key."""
    return await reseal_table(engine, Message.__table__, ["body", "summary"], cipher)


async def purge_tombstones(engine: AsyncEngine, older_than: timedelta) -> int:
    """Delete entries expunged more than `older_than` ago (and those expunged before their
    time was kept): every IMAP session has announced them long since."""
    before = utcnow() - older_than
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(MailboxEntry).where(
                MailboxEntry.expunged_modseq.is_not(None), or_(MailboxEntry.expunged_at.is_(None), MailboxEntry.expunged_at < before)
            )
        )
    return int(result.rowcount or 0)


async def purge_orphan_messages(
    engine: AsyncEngine, older_than: timedelta, keep: Callable[[AsyncConnection, list[int]], Awaitable[set[int]]], *, batch: int = 500
) -> int:
    """Delete messages (bodies) no entry references any more, received more than `older_than`
    ago, except those `keep` names (other components' references, which the wiring asks:
    the relay queue's rows, campaigns' stored-once messages)."""
    before = utcnow() - older_than
    removed = 0
    last = 0
    while True:
        async with engine.begin() as conn:
            unreferenced = ~select(MailboxEntry.id).where(MailboxEntry.message_id == Message.id).exists()
            ids = list(
                (
                    await conn.execute(
                        select(Message.id)
                        .where(Message.id > last, Message.received_at < before, unreferenced)
                        .order_by(Message.id)
                        .limit(batch)
                    )
                ).scalars()
            )
            if not ids:
                return removed
            last = ids[-1]
            doomed = sorted(set(ids) - await keep(conn, ids))
            if doomed:
                result = await conn.execute(delete(Message).where(Message.id.in_(doomed), unreferenced))
                removed += int(result.rowcount or 0)
