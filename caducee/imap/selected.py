"""The selected folder as one session sees it: sequence numbers, and what is left to announce.

Message sequence numbers belong to the session: they only change when the session tells
its client (RFC 3501 7.4.1). The view keeps the UIDs it has announced, in order, in a
compact array (4 bytes each: 40 KB for 10,000 messages), the highest MODSEQ it has
caught up with, and the expunges it may not announce yet (none may be sent during FETCH,
STORE or SEARCH by sequence number).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field

from caducee.imap.grammar import ParseError, SequenceSet
from caducee.mailbox.mailstore import KEYWORD_BIT, Change, FolderInfo, flag_bits


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

    def apply(self, changes: list[Change], *, allow_expunge: bool, condstore: bool) -> list[bytes]:
        """Untagged responses for changes made elsewhere since `modseq`; the view catches up."""
        out: list[bytes] = []
        last = self.uids[-1] if self.uids else 0
        new: list[int] = []
        for change in changes:
            self.modseq = max(self.modseq, change.modseq)
            if change.expunged:
                if self.sequence_of(change.uid) is not None:
                    self.pending_expunges.add(change.uid)
                continue
            if change.uid > last:
                new.append(change)
                continue
            self.set_flags(change.uid, change.flags)
            if change.modseq in self.own_modseqs:
                continue
            sequence = self.sequence_of(change.uid)
            if sequence is not None and change.uid not in self.pending_expunges:
                modseq = b" MODSEQ (%d)" % change.modseq if condstore else b""
                out.append(b"* %d FETCH (UID %d FLAGS (%s)%s)\r\n" % (sequence, change.uid, change.flags.encode(), modseq))
        if allow_expunge:
            out += self.flush_expunges()
        if new:
            self._own()
            for change in sorted({c.uid: c for c in new}.values(), key=lambda c: c.uid):
                self.uids.append(change.uid)
                self.flags.append(0)
                self.set_flags(change.uid, change.flags)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
        self.own_modseqs = {m for m in self.own_modseqs if m > self.modseq}
        return out

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
    """The last snapshot read of recently selected folders, by folder and HIGHESTMODSEQ.

    A SELECT of a folder nobody changed since the last SELECT in this process reads no
    entry: the views share the snapshot (copy-on-write, see `SelectedView._own`). A
    snapshot read at MODSEQ m may already hold some later changes; a session catching up
    from m then sees them again, which the view takes as no-ops.
    """

    def __init__(self, max_folders: int = 64) -> None:
        self.max_folders = max_folders
        self._by_folder: OrderedDict[int, Snapshot] = OrderedDict()

    def get(self, folder_id: int, highestmodseq: int) -> Snapshot | None:
        snapshot = self._by_folder.get(folder_id)
        if snapshot is None or snapshot[0].highestmodseq != highestmodseq:
            return None
        self._by_folder.move_to_end(folder_id)
        return snapshot

    def put(self, snapshot: Snapshot) -> None:
        self._by_folder[snapshot[0].id] = snapshot
        self._by_folder.move_to_end(snapshot[0].id)
        while len(self._by_folder) > self.max_folders:
            self._by_folder.popitem(last=False)
