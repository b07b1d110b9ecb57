"""The selected view: sequence numbers, catching up with other sessions, shared snapshots."""

from __future__ import annotations

from array import array

from caducee.imap.grammar import parse_sequence_set
from caducee.imap.selected import SelectedView, SnapshotCache
from caducee.mailbox.mailstore import Change, FolderInfo


def snapshot() -> tuple:
    folder = FolderInfo(7, "INBOX", None, 1234, 10, 50, 10)
    return folder, array("I", [2, 4, 6, 9]), bytearray([1, 0, 4, 0]), {}, []


def view_of(shot: tuple) -> SelectedView:
    folder, uids, bits, keywords, _ = shot
    return SelectedView(folder.id, folder.name, folder.uidvalidity, False, uids, folder.highestmodseq, bits, keywords, shared=True)


def test_sequence_sets_resolve_to_uids() -> None:
    view = view_of(snapshot())
    assert view.resolve(parse_sequence_set("2:3"), uid=False) == [4, 6]
    assert view.resolve(parse_sequence_set("5:*"), uid=True) == [6, 9]
    assert view.resolve(parse_sequence_set("100:*"), uid=True) == [9]  # "*" is the largest UID, so 100:* holds it
    assert view.sequence_of(9) == 4 and view.sequence_of(5) is None


def test_changes_from_other_sessions_and_copy_on_write() -> None:
    cache = SnapshotCache()
    shot = snapshot()
    cache.put(shot)
    first, second = view_of(cache.get(7, 1234, 50)), view_of(cache.get(7, 1234, 50))  # type: ignore[arg-type]
    assert cache.get(7, 1234, 51) is None  # the folder moved on: a new SELECT reads it again
    out, new = first.apply(
        [Change(4, "\\Seen", 51, False), Change(6, "", 52, True), Change(11, "", 53, False)], allow_expunge=False, condstore=True
    )
    assert out == [b"* 2 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (51))\r\n", b"* 5 EXISTS\r\n"] and new == [11]
    assert first.sequence_of(6) == 3  # not announced yet: numbers hold
    assert first.flush_expunges() == [b"* 3 EXPUNGE\r\n"]
    assert list(first.uids) == [2, 4, 9, 11] and first.modseq == 53
    assert list(second.uids) == [2, 4, 6, 9] and list(second.flags) == [1, 0, 4, 0]  # the other view is untouched
    assert list(shot[1]) == [2, 4, 6, 9]
