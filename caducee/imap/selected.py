"""The selected folder as one session sees it: sequence numbers, and what is left to announce.

Message sequence numbers belong to the session: they only change when the session tells
its client (RFC 3501 7.4.1). The view keeps the UIDs it has announced, in order, in a
compact array (4 bytes each: 40 KB for 10,000 messages), the highest MODSEQ it has
caught up with, and the expunges it may not announce yet (none may be sent during FETCH,
STORE or SEARCH by sequence number).

It also keeps what only this session knows: which messages are \\Recent for it (RFC 3501
2.3.2: a message is recent in the one session that first learnt of it) and which keywords
it has announced in FLAGS (a client may reject a keyword it was not told of first).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field

from caducee.imap.grammar import ParseError, SequenceSet
from caducee.mailbox.mailstore import KEYWORD_BIT, Change, FolderInfo, flag_bits

SYSTEM_FLAGS = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"


@dataclass
class SelectedView:
    folder_id: int
    name: str
    uidvalidity: int
    read_only: bool
    uids: array
    modseq: int
    flags: bytearray = field(default_factory=bytearray)  # flag bits, parallel to uids (mailstore.flag_bits)
    keywords: dict[int, str] = field(default_factory=dict)  # full flags of the entries that carry keywords
    own_modseqs: set[int] = field(default_factory=set)  # changes this session already reported
    pending_expunges: set[int] = field(default_factory=set)
    shared: bool = False  # uids/flags/keywords are a snapshot other sessions read too: copy before changing
    announced_keywords: dict[str, str] = field(default_factory=dict)  # upper case -> as spelt, told in FLAGS
    recent: list[tuple[int, int]] = field(default_factory=list)  # [low, high) UID ranges recent for this session
    recent_told: int = 0  # the last RECENT count the client was given
    _told_flags: set[str] = field(default_factory=set)  # flag texts already checked for keywords

    def _own(self) -> None:
        """Copy-on-write: sessions that selected the same folder state share one snapshot
        (a thousand clients idling on one 10,000-message INBOX hold it once) until one changes."""
        if self.shared:
            self.uids, self.flags, self.keywords = array("I", self.uids), bytearray(self.flags), dict(self.keywords)
            self.shared = False

    @property
    def exists(self) -> int:
        return len(self.uids)

    def set_flags(self, uid: int, flags: str) -> None:
        sequence = self.sequence_of(uid)
        if sequence is None:
            return
        bits = flag_bits(flags)
        if self.flags[sequence - 1] == bits and (not bits & KEYWORD_BIT or self.keywords.get(uid) == flags):
            return
        self._own()
        self.flags[sequence - 1] = bits
        if bits & KEYWORD_BIT:
            self.keywords[uid] = flags
        else:
            self.keywords.pop(uid, None)

    def sequence_of(self, uid: int) -> int | None:
        index = bisect_left(self.uids, uid)
        return index + 1 if index < len(self.uids) and self.uids[index] == uid else None

    def resolve(self, sequence: SequenceSet, *, uid: bool) -> list[int]:
        """The UIDs a sequence set names, sorted, without duplicates.

        Message numbers out of range are an error (BAD); UIDs that do not exist are
        simply not there (RFC 3501 6.4.8).
        """
        if not self.uids:
            if uid:
                return []
            raise ParseError("le dossier est vide / no messages in this folder")
        chosen: set[int] = set()
        ranges = sequence.resolve(self.uids[-1] if uid else len(self.uids))
        for low, high in ranges:
            if uid:
                start, stop = bisect_left(self.uids, low), bisect_right(self.uids, high)
            else:
                if high > len(self.uids):
                    raise ParseError(f"message {high} n'existe pas / no message {high}")
                start, stop = low - 1, high
            if stop - start > 0:
                chosen.update(self.uids[start:stop])
        return sorted(chosen)

    # ---- \Recent ---------------------------------------------------------------------------

    def add_recent(self, low: int, high: int) -> None:
        """UIDs in [low, high) are recent for this session (it claimed them, or it reads only)."""
        if low >= high:
            return
        if self.recent and self.recent[-1][1] >= low:
            self.recent[-1] = (self.recent[-1][0], max(high, self.recent[-1][1]))
        else:
            self.recent.append((low, high))

    def is_recent(self, uid: int) -> bool:
        return any(low <= uid < high for low, high in self.recent)

    def recent_count(self) -> int:
        return sum(bisect_left(self.uids, high) - bisect_left(self.uids, low) for low, high in self.recent)

    def recent_line(self) -> bytes:
        """`* n RECENT` when the count the client has is no longer right (new messages, expunges)."""
        count = self.recent_count()
        if count == self.recent_told:
            return b""
        self.recent_told = count
        return b"* %d RECENT\r\n" % count

    def flags_text(self, uid: int, flags: str) -> bytes:
        """A message's FLAGS as this session shows them (with \\Recent when it is recent here)."""
        if self.recent and self.is_recent(uid):
            return (flags + " \\Recent" if flags else "\\Recent").encode()
        return flags.encode()

    # ---- keywords announced in FLAGS ---------------------------------------------------------

    def announce(self, keywords: list[str]) -> None:
        """The keywords a SELECT's FLAGS response listed."""
        for keyword in keywords:
            self.announced_keywords.setdefault(keyword.upper(), keyword)

    def learn_keywords(self, keywords: str) -> bool:
        """The folder's keyword list as just read: True if it holds one not announced yet."""
        return self.learn_flags(keywords)

    def learn_flags(self, flags: str) -> bool:
        """Note the keywords in a flag text about to be sent; True if one is new (then the
        client must get FLAGS first: RFC 3501 7.2.6, and imaptest checks it)."""
        if not flags or flags in self._told_flags:
            return False
        new = False
        for flag in flags.split():
            if not flag.startswith("\\") and flag.upper() not in self.announced_keywords:
                self.announced_keywords[flag.upper()] = flag
                new = True
        if len(self._told_flags) < 4096:  # a memo of distinct flag texts: a handful per folder
            self._told_flags.add(flags)
        return new

    def flags_lines(self) -> bytes:
        """FLAGS and PERMANENTFLAGS with every keyword announced so far."""
        flags = " ".join([SYSTEM_FLAGS, *sorted(self.announced_keywords.values())])
        permanent = (
            b"* OK [PERMANENTFLAGS ()] read-only\r\n"
            if self.read_only
            else b"* OK [PERMANENTFLAGS (%s \\*)] flags permitted\r\n" % flags.encode()
        )
        return b"* FLAGS (%s)\r\n" % flags.encode() + permanent

    # ---- catching up -------------------------------------------------------------------------

    def apply(self, changes: list[Change], *, allow_expunge: bool, condstore: bool) -> tuple[list[bytes], list[int]]:
        """Untagged responses for changes made elsewhere since `modseq`, and the UIDs of the
        new messages (the caller decides whether they are recent here, then says RECENT)."""
        out: list[bytes] = []
        last = self.uids[-1] if self.uids else 0
        new: dict[int, Change] = {}
        new_keywords = False
        for change in changes:
            self.modseq = max(self.modseq, change.modseq)
            if change.expunged:
                if self.sequence_of(change.uid) is not None:
                    self.pending_expunges.add(change.uid)
                new.pop(change.uid, None)
                continue
            new_keywords |= self.learn_flags(change.flags)
            if change.uid > last:
                new[change.uid] = change
                continue
            self.set_flags(change.uid, change.flags)
            if change.modseq in self.own_modseqs:
                continue
            sequence = self.sequence_of(change.uid)
            if sequence is not None and change.uid not in self.pending_expunges:
                modseq = b" MODSEQ (%d)" % change.modseq if condstore else b""
                out.append(
                    b"* %d FETCH (UID %d FLAGS (%s)%s)\r\n" % (sequence, change.uid, self.flags_text(change.uid, change.flags), modseq)
                )
        if new_keywords:
            out.insert(0, self.flags_lines())
        if allow_expunge:
            out += self.flush_expunges()
        if new:
            self._own()
            for uid in sorted(new):
                self.uids.append(uid)
                self.flags.append(0)
                self.set_flags(uid, new[uid].flags)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
        self.own_modseqs = {m for m in self.own_modseqs if m > self.modseq}
        return out, sorted(new)

    def flush_expunges(self) -> list[bytes]:
        """EXPUNGE responses for the pending removals, highest number first (so each stays valid)."""
        out = []
        if self.pending_expunges:
            self._own()
        for uid in sorted(self.pending_expunges, reverse=True):
            sequence = self.sequence_of(uid)
            if sequence is not None:
                del self.uids[sequence - 1]
                del self.flags[sequence - 1]
                self.keywords.pop(uid, None)
                out.append(b"* %d EXPUNGE\r\n" % sequence)
        self.pending_expunges.clear()
        return out


Snapshot = tuple[FolderInfo, array, bytearray, dict[int, str], list[str]]


class SnapshotCache:
    """The last snapshot read of recently selected folders, by folder identity and HIGHESTMODSEQ.

    A SELECT of a folder nobody changed since the last SELECT in this process reads no
    entry: the views share the snapshot (copy-on-write, see `SelectedView._own`). A
    snapshot read at MODSEQ m may already hold some later changes; a session catching up
    from m then sees them again, which the view takes as no-ops.

    The key holds the UIDVALIDITY as well as the id: a folder deleted and created again may
    get the same id (SQLite gives the last id again), never the same UIDVALIDITY, so a
    snapshot never outlives the folder it was read from.
    """

    def __init__(self, max_folders: int = 64) -> None:
        self.max_folders = max_folders
        self._by_folder: OrderedDict[tuple[int, int], Snapshot] = OrderedDict()

    def get(self, folder_id: int, uidvalidity: int, highestmodseq: int) -> Snapshot | None:
        key = (folder_id, uidvalidity)
        snapshot = self._by_folder.get(key)
        if snapshot is None or snapshot[0].highestmodseq != highestmodseq:
            return None
        self._by_folder.move_to_end(key)
        return snapshot

    def put(self, snapshot: Snapshot) -> None:
        key = (snapshot[0].id, snapshot[0].uidvalidity)
        self._by_folder[key] = snapshot
        self._by_folder.move_to_end(key)
        while len(self._by_folder) > self.max_folders:
            self._by_folder.popitem(last=False)
