"""Filing one stored message into millions of mailboxes: the set-based side of delivery.

`delivery.deliver` builds its entries in Python, which is right for the few recipients of
a message but not for a CNAM campaign to 65 million patients. Here the entries are made
by the database: the caller gives the recipients as a query (one column of distinct
mailbox ids, a batch of a few tens of thousands), and one batch is a handful of
statements whatever its size:

1. the batch's mailbox ids into a temporary table (the caller's query runs once);
2. an INBOX for the mailboxes that have none yet (one `INSERT ... SELECT`);
3. PostgreSQL only: the INBOX rows locked in mailbox order (`SELECT ... ORDER BY ... FOR
   UPDATE`), the order `store.reserve_uids_by_name` locks in, so a fan-out and the
   gateway's group commit never deadlock, and no other writer reserves a UID between
   our read of `uidnext` and our bump of it;
4. one entry per mailbox (`INSERT ... SELECT`): the UID is the folder's `uidnext` (one
   entry per folder per batch, so `row_number()` over the folder would always be 1), the
   MODSEQ its `highestmodseq + 1`;
5. the folders bumped by one aggregate `UPDATE`.

The body, its summary and the conversation are stored once beforehand (`deliver` with a
filing that has no target); a campaign costs one message, one conversation, one
participant, and one 60-byte entry per patient. Everything runs in the caller's
transaction: a batch is on disk entirely or not at all, which is what makes a fan-out
killed half way resumable exactly once (the caller marks its batch done in the same
transaction).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Select, bindparam, column, insert, select, table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.core.clock import utcnow
from caducee.mailbox.store import new_uidvalidities

PREVENTION = "$Prevention"  # the keyword of campaign entries: the webmail's "Prévention" label
TARGETS = "mailbox_fanout_targets"
_TARGETS = table(TARGETS, column("mailbox_id"))
SEEN = "(' ' || flags || ' ') LIKE '% \\Seen %' ESCAPE '!'"


async def _targets_table(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        # Not WAL-logged, emptied at each commit: a batch's scratch space.
        await conn.execute(text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {TARGETS} (mailbox_id BIGINT PRIMARY KEY) ON COMMIT DELETE ROWS"))
    else:
        await conn.execute(text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {TARGETS} (mailbox_id INTEGER PRIMARY KEY)"))
        await conn.execute(text(f"DELETE FROM {TARGETS}"))


async def fan_out(
    conn: AsyncConnection, message_id: int, mailboxes: Select, *, flags: str = "", received_at: datetime | None = None
) -> int:
    """File stored message `message_id` into the INBOX of every mailbox `mailboxes` selects.

    `mailboxes` selects one column of mailbox ids (a batch; duplicates are dropped here).
    Returns the number of entries made. Runs in the caller's transaction.
    """
    moment = received_at or datetime.now(UTC)
    await _targets_table(conn)
    batch = mailboxes.subquery("batch")
    await conn.execute(insert(_TARGETS).from_select(["mailbox_id"], select(next(iter(batch.c))).distinct()))
    # INBOXes created here share one new UIDVALIDITY: a folder is (id, UIDVALIDITY), and their ids differ.
    await conn.execute(
        text(
            "INSERT INTO folders (mailbox_id, name, special_use, uidvalidity, uidnext, highestmodseq, first_recent_uid) "
            f"SELECT t.mailbox_id, 'INBOX', NULL, :validity, 1, 1, 1 FROM {TARGETS} t "
            "WHERE NOT EXISTS (SELECT 1 FROM folders f WHERE f.mailbox_id = t.mailbox_id AND f.name = 'INBOX')"
        ),
        {"validity": await conn.run_sync(new_uidvalidities)},
    )
    await conn.execute(
        text(
            f"INSERT INTO folder_subscriptions (mailbox_id, name) SELECT t.mailbox_id, 'INBOX' FROM {TARGETS} t "
            "WHERE NOT EXISTS (SELECT 1 FROM folder_subscriptions s WHERE s.mailbox_id = t.mailbox_id AND s.name = 'INBOX')"
        )
    )
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text(
                "SELECT count(*) FROM (SELECT f.id FROM folders f JOIN "
                f"{TARGETS} t ON t.mailbox_id = f.mailbox_id WHERE f.name = 'INBOX' ORDER BY f.mailbox_id FOR UPDATE OF f) locked"
            )
        )
    filed = await conn.execute(
        text(
            "INSERT INTO mailbox_entries (folder_id, uid, message_id, modseq, flags, received_at) "
            f"SELECT f.id, f.uidnext, :message, f.highestmodseq + 1, :flags, :moment FROM folders f JOIN {TARGETS} t "
            "ON t.mailbox_id = f.mailbox_id WHERE f.name = 'INBOX' ORDER BY f.id"
        ),
        {"message": message_id, "flags": flags, "moment": moment},
    )
    await conn.execute(
        text(
            "UPDATE folders SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 "
            f"WHERE name = 'INBOX' AND mailbox_id IN (SELECT mailbox_id FROM {TARGETS})"
        )
    )
    return int(filed.rowcount or 0)


async def recall(conn: AsyncConnection, message_id: int) -> tuple[int, int]:
    """Take a message back from every mailbox where it is still unread: (removed, already read).

    Each unread entry becomes a tombstone at its folder's next MODSEQ (as an EXPUNGE does,
    so IMAP sessions announce it); entries already read stay, and are only counted.
    """
    unread = f"message_id = :message AND expunged_modseq IS NULL AND NOT {SEEN}"
    read = (
        await conn.execute(
            text(f"SELECT count(*) FROM mailbox_entries WHERE message_id = :message AND expunged_modseq IS NULL AND {SEEN}"),
            {"message": message_id},
        )
    ).scalar_one()
    folders = f"SELECT DISTINCT folder_id FROM mailbox_entries WHERE {unread}"
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text(f"SELECT count(*) FROM (SELECT id FROM folders WHERE id IN ({folders}) ORDER BY mailbox_id, name FOR UPDATE) locked"),
            {"message": message_id},
        )
    await conn.execute(text(f"UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE id IN ({folders})"), {"message": message_id})
    removed = await conn.execute(
        text(
            "UPDATE mailbox_entries SET expunged_modseq = (SELECT f.highestmodseq FROM folders f WHERE f.id = mailbox_entries.folder_id), "
            f"modseq = (SELECT f.highestmodseq FROM folders f WHERE f.id = mailbox_entries.folder_id), expunged_at = :now WHERE {unread}"
        ).bindparams(bindparam("now", type_=DateTime(timezone=True))),
        {"message": message_id, "now": utcnow()},
    )
    return int(removed.rowcount or 0), int(read)


async def reach(conn: AsyncConnection, message_id: int) -> tuple[int, int]:
    """(mailboxes holding the message, of which read): counts only, never who."""
    row = (
        await conn.execute(
            text(
                f"SELECT count(*), coalesce(sum(CASE WHEN {SEEN} THEN 1 ELSE 0 END), 0) FROM mailbox_entries "
                "WHERE message_id = :message AND expunged_modseq IS NULL"
            ),
            {"message": message_id},
        )
    ).one()
    return int(row[0]), int(row[1])
