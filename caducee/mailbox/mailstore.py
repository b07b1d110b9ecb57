"""What the IMAP server reads and writes in the mailbox store: one method per IMAP need.

Every method is one transaction and a fixed number of statements whatever the number of
messages concerned (UIDs are passed as ranges, chunked): FETCH, SEARCH, STORE, COPY and
EXPUNGE never issue one query per message.

UIDs and MODSEQs come from `folders.uidnext` / `folders.highestmodseq`, reserved with an
UPDATE whose row lock (PostgreSQL) or write lock (SQLite) is held until commit: ranges
are disjoint across processes and become visible in order, so another session that saw
MODSEQ m has seen every change up to m. An EXPUNGE leaves the entry as a tombstone
(`expunged_modseq`) so that other sessions can still announce it.
"""

from __future__ import annotations

import datetime as dt
from array import array
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, bindparam, or_, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire import service as annuaire
from caducee.core.clock import utcnow
from caducee.crypto.atrest import BodyCipher
from caducee.mailbox import delivery, store
from caducee.mailbox._sqlrun import Runner, Unchanged
from caducee.mailbox.models import Folder, MailboxEntry, Message, Subscription
from caducee.mime.summary import Summary, summarize
from caducee.traces import service as traces
from caducee.traces.service import Trace

RANGES_PER_QUERY = 64
SYSTEM_FLAGS = {f.upper(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
FLAG_BITS = {"\\Seen": 1, "\\Answered": 2, "\\Flagged": 4, "\\Deleted": 8, "\\Draft": 16}
KEYWORD_BIT = 32


def flag_bits(flags: str) -> int:
    """System flags as bits (one byte per message in a selected view); KEYWORD_BIT if any keyword."""
    bits = 0
    for flag in flags.split():
        bits |= FLAG_BITS.get(flag, KEYWORD_BIT)
    return bits


UNSEEN_SQL = "(' ' || flags || ' ') NOT LIKE '% \\Seen %' ESCAPE '!'"


class StoreError(Exception):
    """A request the store refuses: answered NO with this text (and code, if any)."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code


@dataclass(frozen=True)
class FolderInfo:
    """A folder as read at one moment; (id, uidvalidity) is its identity (see `models.Folder`)."""

    id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    first_recent_uid: int
    keywords: str = ""  # every keyword ever set in the folder (`models.Folder.keywords`)


@dataclass(frozen=True)
class FolderState:
    """What a selected session re-reads of its folder before each reply, with the changes."""

    uidvalidity: int
    highestmodseq: int
    first_recent_uid: int
    keywords: str = ""


@dataclass(frozen=True)
class Change:
    uid: int
    flags: str
    modseq: int
    expunged: bool


@dataclass
class FetchRow:
    uid: int
    flags: str
    modseq: int
    received_at: dt.datetime
    size: int
    summary: Summary | None = None
    body: bytes | None = None


def normalise_flags(flags: Iterable[str]) -> list[str]:
    """System flags in their canonical case, keywords as given; no duplicates, sorted."""
    out = {}
    for flag in flags:
        if flag.startswith("\\"):
            canonical = SYSTEM_FLAGS.get(flag.upper())
            if canonical is None:
                raise StoreError(f"flag {flag[:30]} cannot be set")
            out[canonical.upper()] = canonical
        elif flag:
            out[flag.upper()] = flag
    return sorted(out.values())


def flag_list(flags: str) -> list[str]:
    return flags.split() if flags else []


def uid_ranges(uids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted UIDs as (low, high) runs."""
    ranges: list[tuple[int, int]] = []
    for uid in uids:
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], uid)
        elif not ranges or uid > ranges[-1][1]:
            ranges.append((uid, uid))
    return ranges


def _uid_condition(ranges: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    """UID ranges as `uid BETWEEN ... OR ...`, padded to a power of two with the last range:
    a statement of another shape is compiled again (a third of a small query's cost), and
    this leaves seven shapes in SQLAlchemy's cache instead of one per number of ranges."""
    padded = list(ranges)
    while len(padded) & (len(padded) - 1):
        padded.append(padded[-1])
    return or_(*(MailboxEntry.uid.between(low, high) for low, high in padded))


def _chunks(ranges: list[tuple[int, int]]) -> Iterable[list[tuple[int, int]]]:
    for start in range(0, len(ranges), RANGES_PER_QUERY):
        yield ranges[start : start + RANGES_PER_QUERY]


class MailStore:
    """The mail store's operations; statements run through `_sqlrun.Runner` (see there why)."""

    def __init__(self, engine: AsyncEngine, cipher: BodyCipher, *, hold_connections: bool = False) -> None:
        """`hold_connections`: a long-lived server (IMAP) keeps its PostgreSQL connections (see `_sqlrun`)."""
        self.engine = engine
        self.cipher = cipher
        self.run = Runner(engine, hold=hold_connections)

    async def close(self) -> None:
        await self.run.aclose()

    # ---- folders ---------------------------------------------------------------------

    async def message(self, mailbox_id: int, message_id: int) -> bytes | None:
        """The body of one stored message, opened, if this mailbox holds it (any folder): how
        other components read what was delivered (the dossier's intake, after the pipeline
        told it which stored message a mailbox received)."""
        async with self.engine.connect() as conn:
            sealed = (
                await conn.execute(
                    select(Message.body)
                    .join(MailboxEntry, MailboxEntry.message_id == Message.id)
                    .join(Folder, Folder.id == MailboxEntry.folder_id)
                    .where(Folder.mailbox_id == mailbox_id, Message.id == message_id)
                    .limit(1)
                )
            ).scalar()
        return None if sealed is None else self.cipher.open(sealed)

    async def mailbox_id(self, address: str) -> int | None:
        async with self.run.reads.connect() as conn:
            return await annuaire.active_mailbox_id(conn, address)

    async def folders(self, mailbox_id: int) -> list[FolderInfo]:
        """Every folder of a mailbox (the standard ones are created on first use)."""
        found = await self.run.read(_folders, mailbox_id)
        if any(folder.name == "INBOX" for folder in found):
            return found
        return await self.run.write(_create_standard_folders, mailbox_id)

    async def folder(self, mailbox_id: int, name: str) -> FolderInfo | None:
        return await self.run.read(_folder, mailbox_id, name)

    async def create(self, mailbox_id: int, name: str) -> None:
        """A new, empty, unsubscribed folder, with a UIDVALIDITY larger than any before."""
        await self.run.write(_create, mailbox_id, name)

    async def delete(self, mailbox_id: int, name: str, *, trace: Trace | None = None) -> None:
        """Delete a folder and what it holds (`trace`: the operator's, in the same transaction)."""
        if name == "INBOX":
            raise StoreError("INBOX ne peut pas être supprimé / INBOX cannot be deleted", "CANNOT")

        def deleted(conn: Connection) -> None:
            count = _delete(conn, mailbox_id, name)
            if trace is not None:
                traces.record_in(conn, [trace.counted(count)])

        await self.run.write(deleted)

    async def rename(self, mailbox_id: int, old: str, new: str) -> None:
        if old == "INBOX":
            raise StoreError("renommer INBOX n'est pas possible / renaming INBOX is not supported", "CANNOT")
        await self.run.write(_rename, mailbox_id, old, new)

    async def subscribe(self, mailbox_id: int, name: str, subscribed: bool) -> None:
        """SUBSCRIBE (to an existing folder: RFC 3501 6.3.6 lets the server check) or UNSUBSCRIBE (any name)."""
        await self.run.write(_subscribe, mailbox_id, name, subscribed)

    async def subscriptions(self, mailbox_id: int) -> set[str]:
        """The subscribed names, whether or not a folder has them now."""
        return await self.run.read(_subscriptions, mailbox_id)

    async def status(self, folder_id: int) -> tuple[FolderInfo, int, int, int, int]:
        """(folder, messages, unseen, recent, total size): what no session has been told of
        as \\Recent yet is recent for STATUS (RFC 3501 6.3.10)."""
        return await self.run.read(_status, folder_id, large=True)

    # ---- the selected folder -----------------------------------------------------------

    async def snapshot(self, folder_id: int) -> tuple[FolderInfo, array, bytearray, dict[int, str], list[str]]:
        """For SELECT: the folder, its live UIDs in order, their flag bits, the flags of
        entries with keywords, and the keywords in use."""
        return await self.run.read(_snapshot, folder_id, large=True)

    async def changes(self, folder_id: int, since: int) -> tuple[FolderState | None, list[Change]]:
        """The folder's state and its entries changed (flags, new, expunged) after MODSEQ
        `since`, in MODSEQ order, in one query; (None, []) if the folder is gone."""
        return await self.run.read(_changes, folder_id, since)

    async def claim_recent(self, folder_id: int, upto: int, seen: int) -> int:
        """Become the session that sees UIDs below `upto` as \\Recent (RFC 3501 2.3.2: one
        session only); the first UID claimed, `upto` if other sessions had them all.

        `seen` is the folder's first_recent_uid as the caller last read it: the UPDATE moves
        it only if it is still that (compare and set), so two sessions cannot both claim a
        message, and a session that lost the race writes nothing (it reads the new bound
        and tries again from there).
        """
        while seen < upto:
            claimed, current = await self.run.write(_claim_recent, folder_id, upto, seen)
            if claimed or current is None:
                return seen if claimed else upto
            seen = current
        return upto

    async def highest_modseqs(self, folder_ids: list[int]) -> dict[int, tuple[int, int]]:
        """{folder id: (UIDVALIDITY, HIGHESTMODSEQ)} of the folders that still exist."""
        return await self.run.read(_highest_modseqs, folder_ids)

    async def fetch(
        self, folder_id: int, uids: list[int], *, summary: bool, body: bool, changed_since: int | None = None, batch: int | None = None
    ) -> AsyncIterator[list[FetchRow]]:
        """Rows for the UIDs (tombstones included: the session has not announced them yet), in batches.

        Bodies are read with a streaming cursor, `batch` rows at a time, so memory does not
        grow with the number of messages fetched.
        """
        batch = batch or (100 if body else 2000)  # bodies: bounded memory; listings: few round trips
        columns = [MailboxEntry.uid, MailboxEntry.flags, MailboxEntry.modseq, MailboxEntry.received_at, Message.size, Message.id]
        if summary:
            columns.append(Message.summary)
        if body:
            columns.append(Message.body)
        for ranges in _chunks(uid_ranges(uids)):
            query = (
                select(*columns)
                .join(Message, Message.id == MailboxEntry.message_id)
                .where(MailboxEntry.folder_id == folder_id, _uid_condition(ranges))
                .order_by(MailboxEntry.uid)
            )
            if changed_since is not None:
                query = query.where(MailboxEntry.modseq > changed_since)
            if len(uids) <= (16 if body else 1000):  # a client's usual FETCH: one read, no cursor (see `_sqlrun`)
                yield await self._rows(await self.run.read(_all_rows, query), summary=summary, body=body)
                continue
            async with self.engine.connect() as conn:
                result = await conn.stream(query.execution_options(yield_per=batch))
                async for partition in result.partitions(batch):
                    yield await self._rows(partition, summary=summary, body=body)

    async def _rows(self, partition: Sequence[Any], *, summary: bool, body: bool) -> list[FetchRow]:
        out = []
        missing: dict[int, FetchRow] = {}
        for row in partition:
            item = FetchRow(row.uid, row.flags, row.modseq, row.received_at, row.size)
            if body:
                item.body = self.cipher.open(row.body)
            if summary:
                if row.summary is not None:
                    item.summary = Summary.unpack(self.cipher.open(row.summary))
                else:
                    missing[row.id] = item
            out.append(item)
        if missing:  # stored before summaries existed (or a notice): computed once, kept
            await self._fill_summaries(missing)
        return out

    async def _fill_summaries(self, missing: dict[int, FetchRow]) -> None:
        bodies = await self.run.read(_bodies, list(missing))
        updates = []
        for message_id, item in missing.items():
            item.summary = summarize(self.cipher.open(bodies[message_id]))
            updates.append({"target": message_id, "summary": self.cipher.seal(item.summary.pack())})
        await self.run.write(_write_summaries, updates)

    # ---- changes ------------------------------------------------------------------------

    async def store_flags(
        self, folder_id: int, uids: list[int], action: str, flags: list[str], unchanged_since: int | None = None
    ) -> tuple[list[Change], list[int]]:
        """Apply FLAGS / +FLAGS / -FLAGS; (changed entries with their new flags, UIDs that failed UNCHANGEDSINCE).

        One MODSEQ for the whole command; one UPDATE per distinct resulting flag set (a
        handful), whatever the number of messages. A STORE that changes nothing takes no
        MODSEQ (a no-op must not look like a change to the next sync).
        """
        if not uids:
            return [], []
        return await self.run.write(_store_flags, folder_id, uids, action, set(normalise_flags(flags)), unchanged_since)

    async def expunge(self, folder_id: int, uids: list[int] | None = None, *, trace: Trace | None = None) -> list[int]:
        """Tombstone the entries flagged \\Deleted (among `uids` if given); their UIDs.

        Expunging nothing changes nothing: HIGHESTMODSEQ stays (every CLOSE of a client's
        sync would otherwise make every folder look changed to its next sync). `trace`: the
        operator's trace of the deletion, written in its transaction with the count expunged."""

        def expunged(conn: Connection) -> list[int]:
            gone = _expunge(conn, folder_id, uids)
            if trace is not None:
                traces.record_in(conn, [trace.counted(len(gone))])
            return gone

        return await self.run.write(expunged)

    async def append(self, folder_id: int, raw: bytes, flags: list[str], internal_date: dt.datetime | None, sender: str) -> tuple[int, int]:
        """Store a message a client appends; (UIDVALIDITY, UID)."""
        form = delivery.stored_form(self.cipher, raw)
        received = internal_date.astimezone(dt.UTC) if internal_date else dt.datetime.now(dt.UTC)  # SQLite keeps no zone: UTC
        joined = " ".join(normalise_flags(flags))
        return await self.run.write(lambda conn: delivery.append(conn, folder_id, form, flags=joined, received_at=received, sender=sender))

    async def copy(self, folder_id: int, uids: list[int], target_id: int) -> tuple[int, list[int], list[int]]:
        """New entries in the target for the same stored messages (bodies are not copied).

        (target UIDVALIDITY, source UIDs, new UIDs), for COPYUID.
        """
        return await self.run.write(_copy, folder_id, uids, target_id)


# ---- the operations, each over one synchronous connection ---------------------------------


def _folders(conn: Connection, mailbox_id: int) -> list[FolderInfo]:
    rows = conn.execute(select(Folder).where(Folder.mailbox_id == mailbox_id).order_by(Folder.name))
    return [_folder_info(row) for row in rows]


def _create_standard_folders(conn: Connection, mailbox_id: int) -> list[FolderInfo]:
    store.ensure_folders(conn, [mailbox_id])
    return _folders(conn, mailbox_id)


def _folder(conn: Connection, mailbox_id: int, name: str) -> FolderInfo | None:
    row = conn.execute(_FOLDER_BY_NAME, {"mailbox": mailbox_id, "name": name}).first()
    return _folder_info(row) if row is not None else None


def _create(conn: Connection, mailbox_id: int, name: str) -> None:
    if _folder(conn, mailbox_id, name) is not None:
        raise StoreError("ce dossier existe déjà / folder exists", "ALREADYEXISTS")
    validity = store.new_uidvalidities(conn)
    conn.execute(
        Folder.__table__.insert().values(
            mailbox_id=mailbox_id, name=name, special_use=None, uidvalidity=validity, uidnext=1, highestmodseq=1, first_recent_uid=1
        )
    )


def _delete(conn: Connection, mailbox_id: int, name: str) -> int:
    """The folder and its entries (how many); its subscription stays (RFC 3501 6.3.6)."""
    folder = _folder(conn, mailbox_id, name)
    if folder is None:
        raise StoreError("dossier inconnu / no such folder", "NONEXISTENT")
    children = conn.execute(select(Folder.id).where(Folder.mailbox_id == mailbox_id, Folder.name.startswith(name + "/")).limit(1))
    if children.first() is not None:
        raise StoreError("ce dossier contient des sous-dossiers / folder has children", "INUSE")
    entries = conn.execute(MailboxEntry.__table__.delete().where(MailboxEntry.folder_id == folder.id))
    conn.execute(Folder.__table__.delete().where(Folder.id == folder.id))
    return int(entries.rowcount or 0)


def _rename(conn: Connection, mailbox_id: int, old: str, new: str) -> None:
    if _folder(conn, mailbox_id, old) is None:
        raise StoreError("dossier inconnu / no such folder", "NONEXISTENT")
    if _folder(conn, mailbox_id, new) is not None:
        raise StoreError("ce dossier existe déjà / folder exists", "ALREADYEXISTS")
    family = or_(Folder.name == old, Folder.name.startswith(old + "/"))
    for folder_id, name in conn.execute(select(Folder.id, Folder.name).where(Folder.mailbox_id == mailbox_id, family)).all():
        conn.execute(update(Folder).where(Folder.id == folder_id).values(name=new + name[len(old) :]))
    # Subscriptions follow the folders renamed (as Dovecot's do): a client that renames a
    # subscribed folder expects it to stay in its folder list.
    subscribed = or_(Subscription.name == old, Subscription.name.startswith(old + "/"))
    for name in conn.execute(select(Subscription.name).where(Subscription.mailbox_id == mailbox_id, subscribed)).scalars().all():
        conn.execute(Subscription.__table__.delete().where(Subscription.mailbox_id == mailbox_id, Subscription.name == name))
        conn.execute(store.insert_ignore(conn, Subscription.__table__).values(mailbox_id=mailbox_id, name=new + name[len(old) :]))


def _subscribe(conn: Connection, mailbox_id: int, name: str, subscribed: bool) -> None:
    if not subscribed:
        conn.execute(Subscription.__table__.delete().where(Subscription.mailbox_id == mailbox_id, Subscription.name == name))
        return
    if _folder(conn, mailbox_id, name) is None:
        raise StoreError("dossier inconnu / no such folder", "NONEXISTENT")
    conn.execute(store.insert_ignore(conn, Subscription.__table__).values(mailbox_id=mailbox_id, name=name))


def _subscriptions(conn: Connection, mailbox_id: int) -> set[str]:
    return set(conn.execute(select(Subscription.name).where(Subscription.mailbox_id == mailbox_id)).scalars())


def _status(conn: Connection, folder_id: int) -> tuple[FolderInfo, int, int, int, int]:
    folder = _folder_info(conn.execute(select(Folder).where(Folder.id == folder_id)).one())
    row = conn.execute(_STATUS, {"folder": folder_id, "recent": folder.first_recent_uid}).one()
    return folder, int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _snapshot(conn: Connection, folder_id: int) -> tuple[FolderInfo, array, bytearray, dict[int, str], list[str]]:
    folder = _folder_info(conn.execute(select(Folder).where(Folder.id == folder_id)).one())
    listed = conn.execute(
        select(MailboxEntry.uid, MailboxEntry.flags)
        .where(MailboxEntry.folder_id == folder_id, MailboxEntry.expunged_modseq.is_(None))
        .order_by(MailboxEntry.uid)
    ).all()
    # Exact-size arrays in one allocation each: they live as long as the session (a
    # thousand sessions growing theirs by appends fragment the heap).
    uids = array("I", [row[0] for row in listed])
    values = [flag_bits(flags) if flags else 0 for _, flags in listed]
    bits = bytearray(values)
    with_keywords: dict[int, str] = {}
    keywords: set[str] = set()
    for (uid, flags), value in zip(listed, values, strict=True):
        if value & KEYWORD_BIT:
            with_keywords[uid] = flags
            keywords.update(flag for flag in flags.split() if not flag.startswith("\\"))
    return folder, uids, bits, with_keywords, sorted(keywords)


def _changes(conn: Connection, folder_id: int, since: int) -> tuple[FolderState | None, list[Change]]:
    rows = conn.execute(_CHANGES, {"folder": folder_id, "since": since}).all()
    if not rows:
        return None, []
    first = rows[0]
    state = FolderState(first[0], first[1], first[2], first[3])
    if first[4] is None:  # the outer join's one row: nothing changed
        return state, []
    return state, [Change(row[4], row[5], row[6], row[7] is not None) for row in rows]


def _claim_recent(conn: Connection, folder_id: int, upto: int, seen: int) -> tuple[bool, int | None]:
    """(claimed, the folder's first_recent_uid now when not)."""
    if conn.execute(_RECENT_CLAIM, {"id": folder_id, "upto": upto, "seen": seen}).rowcount == 1:
        return True, None
    current = conn.execute(select(Folder.first_recent_uid).where(Folder.id == folder_id)).scalar()
    return False, None if current is None else int(current)


def _highest_modseqs(conn: Connection, folder_ids: list[int]) -> dict[int, tuple[int, int]]:
    rows = conn.execute(select(Folder.id, Folder.uidvalidity, Folder.highestmodseq).where(Folder.id.in_(folder_ids)))
    return {row[0]: (row[1], row[2]) for row in rows}


def _all_rows(conn: Connection, query: Select[Any]) -> Sequence[Any]:
    return conn.execute(query).all()


def _bodies(conn: Connection, message_ids: list[int]) -> dict[int, bytes]:
    return dict(conn.execute(select(Message.id, Message.body).where(Message.id.in_(message_ids))).all())


def _write_summaries(conn: Connection, updates: list[dict[str, object]]) -> None:
    conn.execute(update(Message).where(Message.id == bindparam("target")).values(summary=bindparam("summary")), updates)


def _store_flags(
    conn: Connection, folder_id: int, uids: list[int], action: str, wanted: set[str], unchanged_since: int | None
) -> tuple[list[Change], list[int]]:
    modseq = _bump_modseq(conn, folder_id)  # takes the folder's lock first: no lost update
    current: list[tuple[int, str, int]] = []
    for ranges in _chunks(uid_ranges(uids)):
        current += conn.execute(
            select(MailboxEntry.uid, MailboxEntry.flags, MailboxEntry.modseq).where(
                MailboxEntry.folder_id == folder_id, MailboxEntry.expunged_modseq.is_(None), _uid_condition(ranges)
            )
        ).all()
    failed: list[int] = []
    groups: dict[str, list[int]] = {}
    touched: list[str] = []  # flag texts before and after, for the folder's keyword list
    for uid, old_flags, old_modseq in current:
        if unchanged_since is not None and old_modseq > unchanged_since:
            failed.append(uid)
            continue
        old = set(flag_list(old_flags))
        new = wanted if action == "FLAGS" else (old | wanted if action == "+FLAGS" else old - wanted)
        if new != old:
            groups.setdefault(" ".join(sorted(new)), []).append(uid)
            touched.append(old_flags)
    if not groups:
        raise Unchanged(([], sorted(failed)))
    store.define_keywords(conn, folder_id, [*touched, *groups])
    changed: list[Change] = []
    for new_flags, group in groups.items():
        for ranges in _chunks(uid_ranges(sorted(group))):
            conn.execute(
                update(MailboxEntry)
                .where(MailboxEntry.folder_id == folder_id, _uid_condition(ranges))
                .values(flags=new_flags, modseq=modseq)
            )
        changed += [Change(uid, new_flags, modseq, False) for uid in group]
    changed.sort(key=lambda change: change.uid)
    return changed, sorted(failed)


def _expunge(conn: Connection, folder_id: int, uids: list[int] | None) -> list[int]:
    modseq = _bump_modseq(conn, folder_id)
    condition = and_(MailboxEntry.folder_id == folder_id, MailboxEntry.expunged_modseq.is_(None), _DELETED)
    gone: list[int] = []
    for ranges in _chunks(uid_ranges(uids)) if uids is not None else [None]:
        where = condition if ranges is None else and_(condition, _uid_condition(ranges))
        found = conn.execute(select(MailboxEntry.uid).where(where)).scalars().all()
        if found:
            gone += found
            conn.execute(update(MailboxEntry).where(where).values(expunged_modseq=modseq, modseq=modseq, expunged_at=utcnow()))
    if not gone:
        raise Unchanged([])
    return sorted(gone)


def _copy(conn: Connection, folder_id: int, uids: list[int], target_id: int) -> tuple[int, list[int], list[int]]:
    rows: list[Any] = []
    for ranges in _chunks(uid_ranges(uids)):
        rows += conn.execute(
            select(MailboxEntry.uid, MailboxEntry.message_id, MailboxEntry.flags, MailboxEntry.received_at)
            .where(MailboxEntry.folder_id == folder_id, MailboxEntry.expunged_modseq.is_(None), _uid_condition(ranges))
            .order_by(MailboxEntry.uid)
        ).all()
    if not rows:
        return conn.execute(select(Folder.uidvalidity).where(Folder.id == target_id)).scalar_one(), [], []
    validity, first_uid, first_modseq = store.reserve_uids(conn, target_id, len(rows))
    store.define_keywords(conn, target_id, sorted({row.flags for row in rows}))
    conn.execute(
        MailboxEntry.__table__.insert(),
        [
            {
                "folder_id": target_id,
                "uid": first_uid + i,
                "message_id": row.message_id,
                "modseq": first_modseq + i,
                "flags": row.flags,
                "received_at": row.received_at,
            }
            for i, row in enumerate(rows)
        ],
    )
    return validity, [row.uid for row in rows], [first_uid + i for i in range(len(rows))]


def _folder_info(row) -> FolderInfo:  # type: ignore[no-untyped-def]
    return FolderInfo(
        row.id, row.name, row.special_use, row.uidvalidity, row.uidnext, row.highestmodseq, row.first_recent_uid, row.keywords
    )


def _bump_modseq(conn: Connection, folder_id: int) -> int:
    return int(conn.execute(_BUMP, {"id": folder_id}).scalar_one())


_FOLDER_BY_NAME = text(
    "SELECT id, name, special_use, uidvalidity, uidnext, highestmodseq, first_recent_uid, keywords FROM folders "
    "WHERE mailbox_id = :mailbox AND name = :name"
)
_CHANGES = text(
    "SELECT f.uidvalidity, f.highestmodseq, f.first_recent_uid, f.keywords, e.uid, e.flags, e.modseq, e.expunged_modseq "
    "FROM folders f LEFT JOIN mailbox_entries e ON e.folder_id = f.id AND e.modseq > :since "
    "WHERE f.id = :folder ORDER BY e.modseq, e.uid"
)
_STATUS = text(
    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN " + UNSEEN_SQL + " THEN 1 ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN e.uid >= :recent THEN 1 ELSE 0 END), 0), COALESCE(SUM(m.size), 0) "
    "FROM mailbox_entries e JOIN messages m ON m.id = e.message_id "
    "WHERE e.folder_id = :folder AND e.expunged_modseq IS NULL"
)
_RECENT_CLAIM = text("UPDATE folders SET first_recent_uid = :upto WHERE id = :id AND first_recent_uid = :seen")
_BUMP = text("UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE id = :id RETURNING highestmodseq")
_DELETED = text("(' ' || mailbox_entries.flags || ' ') LIKE '% \\Deleted %' ESCAPE '!'")
