"""Filing messages into mailboxes: the one way anything enters the mailbox store.

Every origin comes through here: a message the gateway accepted (SMTP, the webmail, the
campaign API), a DSN the relay writes, a notice for a sender, an IMAP APPEND. So every
stored message has its body sealed once and its summary (`caducee.mime.summary`) beside
it, and every entry gets its UID and MODSEQ from the one reservation in `store`.

`deliver` works on a whole batch inside the caller's transaction: the gateway's group
commit adds its queue rows to the same transaction, so a message, its entries, its queue
rows and its conversation change are on disk together or not at all. Statements are
set-based: one insert each for conversations, participants, messages and entries, one
UID reservation per folder, whatever the number of messages in the batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from caducee.crypto.atrest import BodyCipher
from caducee.mailbox import store
from caducee.mailbox.models import Conversation, ConversationParticipant, MailboxEntry, Message
from caducee.mime.summary import Summary, summarize


@dataclass(frozen=True)
class StoredForm:
    """One form of a message as the store keeps it: the sealed bytes and the sealed summary."""

    sealed: bytes
    size: int
    summary: bytes | None  # None only for a form no mailbox holds (relayed to other operators only)


def stored_form(cipher: BodyCipher, raw: bytes, summary: Summary | None = None) -> StoredForm:
    """Seal `raw` and its summary (computed here unless the caller already has it)."""
    return StoredForm(cipher.seal(raw), len(raw), cipher.seal((summary or summarize(raw)).pack()))


def relay_only_form(cipher: BodyCipher, raw: bytes) -> StoredForm:
    """Seal a form that only other operators receive: no mailbox lists it, so no summary."""
    return StoredForm(cipher.seal(raw), len(raw), None)


@dataclass(frozen=True)
class Target:
    """Where one entry goes: a folder of a mailbox (created with the standard ones if new)."""

    mailbox_id: int
    folder: str = "INBOX"
    flags: str = ""


@dataclass(frozen=True)
class Filing:
    """One stored form and the entries that point to it (one body, any number of entries)."""

    form: StoredForm
    targets: list[Target] = field(default_factory=list)


@dataclass(frozen=True)
class NewConversation:
    opener: str
    opener_kind: str
    participants: frozenset[str]
    is_campaign: bool = False


@dataclass(frozen=True)
class Notice:
    """A message we generate for one local mailbox (a DSN, a "conversation closed" notice):
    in no conversation, from `sender`."""

    mailbox_id: int
    form: StoredForm
    sender: str


@dataclass
class Delivery:
    """Everything one message writes into the store."""

    filings: list[Filing]
    sender: str
    message_id_header: str
    conversation_id: int | None = None  # an existing conversation
    new_conversation: NewConversation | None = None
    add_participants: frozenset[str] = frozenset()
    close_by: str | None = None  # the display name of who closes the conversation
    notices: list[Notice] = field(default_factory=list)


def deliver(conn: Connection, deliveries: list[Delivery]) -> list[list[int]]:
    """Write every delivery in the caller's transaction; for each, the ids of its stored forms in order."""
    now = datetime.now(UTC)
    creating = [delivery for delivery in deliveries if delivery.new_conversation is not None]
    new_ids = store.insert_returning_ids(
        conn,
        Conversation.__table__,
        [
            {
                "opener_address": d.new_conversation.opener,  # type: ignore[union-attr]
                "opener_kind": d.new_conversation.opener_kind,  # type: ignore[union-attr]
                "state": "open",
                "is_campaign": d.new_conversation.is_campaign,  # type: ignore[union-attr]
                "created_at": now,
            }
            for d in creating
        ],
    )
    conversation_of = {id(delivery): conversation for delivery, conversation in zip(creating, new_ids, strict=True)}

    def conversation(delivery: Delivery) -> int | None:
        return conversation_of.get(id(delivery), delivery.conversation_id)

    participants = set()
    for delivery in deliveries:
        members = delivery.new_conversation.participants if delivery.new_conversation is not None else delivery.add_participants
        participants |= {(conversation(delivery), address) for address in members}
    if participants:
        conn.execute(
            store.insert_ignore(conn, ConversationParticipant.__table__),
            [{"conversation_id": c, "address": a} for c, a in sorted(participants)],
        )

    filings = [(delivery, filing) for delivery in deliveries for filing in delivery.filings]
    if any(filing.targets and filing.form.summary is None for _, filing in filings):
        raise ValueError("a form filed into a mailbox needs its summary")
    filing_ids = store.insert_returning_ids(
        conn,
        Message.__table__,
        [
            {
                "message_id_header": d.message_id_header[:998],
                "sender": d.sender,
                "size": f.form.size,
                "conversation_id": conversation(d),
                "received_at": now,
                "body": f.form.sealed,
                "summary": f.form.summary,
            }
            for d, f in filings
        ],
    )
    notices = [notice for delivery in deliveries for notice in delivery.notices]
    notice_ids = store.insert_returning_ids(
        conn,
        Message.__table__,
        [
            {
                "message_id_header": "",
                "sender": n.sender,
                "size": n.form.size,
                "conversation_id": None,
                "received_at": now,
                "body": n.form.sealed,
                "summary": n.form.summary,
            }
            for n in notices
        ],
    )
    entries = [(target, message_id) for (_, filing), message_id in zip(filings, filing_ids, strict=True) for target in filing.targets]
    entries += [(Target(notice.mailbox_id), message_id) for notice, message_id in zip(notices, notice_ids, strict=True)]
    file_entries(conn, entries, now)
    for delivery in deliveries:
        if delivery.close_by is not None:
            store.close_conversation(conn, conversation(delivery), delivery.close_by)  # type: ignore[arg-type]
    ids: dict[int, list[int]] = {id(delivery): [] for delivery in deliveries}
    for (delivery, _), message_id in zip(filings, filing_ids, strict=True):
        ids[id(delivery)].append(message_id)
    return [ids[id(delivery)] for delivery in deliveries]


def file_entries(conn: Connection, entries: list[tuple[Target, int]], received_at: datetime) -> None:
    """One entry per (target, stored message): folders created if new, UIDs reserved per folder."""
    if not entries:
        return
    store.ensure_folders(conn, sorted({target.mailbox_id for target, _ in entries}))
    reserved = store.reserve_uids_by_name(conn, dict(Counter((target.mailbox_id, target.folder) for target, _ in entries)))
    next_slot = dict.fromkeys(reserved, 0)
    rows = []
    for target, message_id in entries:
        key = (target.mailbox_id, target.folder)
        folder_id, first_uid, first_modseq = reserved[key]
        offset = next_slot[key]
        next_slot[key] = offset + 1
        rows.append(
            {
                "folder_id": folder_id,
                "uid": first_uid + offset,
                "message_id": message_id,
                "modseq": first_modseq + offset,
                "flags": target.flags,
                "received_at": received_at,
            }
        )
    conn.execute(insert(MailboxEntry.__table__), rows)


def append(conn: Connection, folder_id: int, form: StoredForm, *, flags: str, received_at: datetime, sender: str) -> tuple[int, int]:
    """Store one message into one folder (an IMAP APPEND); (UIDVALIDITY, UID)."""
    row = {
        "message_id_header": "",
        "sender": sender,
        "size": form.size,
        "conversation_id": None,
        "received_at": datetime.now(UTC),
        "body": form.sealed,
        "summary": form.summary,
    }
    message_id = store.insert_returning_ids(conn, Message.__table__, [row])[0]
    validity, uid, modseq = store.reserve_uids(conn, folder_id, 1)
    store.define_keywords(conn, folder_id, [flags])
    conn.execute(
        insert(MailboxEntry.__table__).values(
            folder_id=folder_id, uid=uid, message_id=message_id, modseq=modseq, flags=flags, received_at=received_at
        )
    )
    return validity, uid
