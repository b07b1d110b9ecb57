"""A message stored once, filed into many mailboxes over time: the campaigns' side of delivery.

A CNAM campaign to 65 million patients is one stored message (the accept pipeline's
`store_once`: one body, one summary, one conversation, one participant). It is not
copied into every inbox when it is sent: the campaigns component files it into a
patient's INBOX when the webmail first opens that inbox (`file_campaigns`, a few
statements for any number of campaigns), so sending costs nothing per patient and a
patient who never opens the webmail never costs an entry (docs/architecture.md gives the
figures). What is filed is an ordinary entry (UID, MODSEQ, the `$Prevention` keyword):
every reader of the store understands it. `recall` and `reach` are set-based over the
entries made so far.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, bindparam, insert, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.core.clock import utcnow
from caducee.mailbox import store
from caducee.mailbox.models import MailboxEntry

PREVENTION = "$Prevention"  # the keyword of campaign entries: the webmail's "Prévention" label
SEEN = "(' ' || flags || ' ') LIKE '% \\Seen %' ESCAPE '!'"


def _file(conn: Connection, messages: dict[int, list[tuple[int, datetime]]], flags: str) -> int:
    wanted = {mailbox_id: sorted(found, key=lambda m: (m[1], m[0])) for mailbox_id, found in messages.items() if found}
    if not wanted:
        return 0
    store.ensure_folders(conn, sorted(wanted))
    # One UPDATE per INBOX reserves its UIDs and MODSEQs and holds the row until commit, in
    # mailbox order: the gateway's group commit and another node filing the same inboxes
    # lock in that order too, and wait their turn.
    reserved = store.reserve_uids_by_name(conn, {(mailbox_id, "INBOX"): len(found) for mailbox_id, found in wanted.items()})
    rows = []
    for mailbox_id, found in wanted.items():
        folder_id, first_uid, first_modseq = reserved[(mailbox_id, "INBOX")]
        rows += [
            {"folder_id": folder_id, "uid": first_uid + i, "message_id": m, "modseq": first_modseq + i, "flags": flags, "received_at": at}
            for i, (m, at) in enumerate(found)
        ]
    for keyword in {k for k in flags.split() if not k.startswith("\\")}:
        # Every keyword ever set in a folder is listed in its FLAGS (`Folder.keywords`): one statement for all the INBOXes.
        conn.execute(
            text(
                "UPDATE folders SET keywords = trim(keywords || ' ' || :k) WHERE id IN :ids "
                "AND (' ' || upper(keywords) || ' ') NOT LIKE :like"
            ).bindparams(bindparam("ids", expanding=True)),
            {"k": keyword, "ids": sorted(r[0] for r in reserved.values()), "like": f"% {keyword.upper()} %"},
        )
    conn.execute(insert(MailboxEntry.__table__), rows)
    return len(rows)


async def file_campaigns(conn: AsyncConnection, messages: dict[int, list[tuple[int, datetime]]], *, flags: str = PREVENTION) -> int:
    """File stored messages into mailboxes' INBOXes: {mailbox id: [(message id, the time to
    show)]}, oldest first in each; the number of entries made. A few statements for any
    number of mailboxes, plus one UID reservation per INBOX. Runs in the caller's
    transaction, so the caller's record that they are filed commits with them (exactly once)."""
    return await conn.run_sync(_file, messages, flags)


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
