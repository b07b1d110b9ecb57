"""Decoded header text of recently searched folders, so a repeated SEARCH FROM/SUBJECT needs no query.

A UID always names the same message in a folder of one UIDVALIDITY, so an entry never
goes stale: new UIDs are loaded when first searched, expunged ones are simply not asked
for. Bounded by a total number of entries across folders, least recently searched folder
evicted first. It holds readable text in memory, as the process does anyway while serving;
nothing of it is written anywhere.
"""

from __future__ import annotations

from collections import OrderedDict


class HeaderCache:
    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._folders: OrderedDict[tuple[int, int], dict[int, bytes]] = OrderedDict()
        self._size = 0

    def folder(self, folder_id: int, uidvalidity: int) -> dict[int, bytes]:
        """The cached {uid: packed header text} of a folder (marked as just used)."""
        key = (folder_id, uidvalidity)  # a folder re-created under a reused id has a new UIDVALIDITY
        entries = self._folders.get(key)
        if entries is None:
            entries = self._folders[key] = {}
        self._folders.move_to_end(key)
        return entries

    def add(self, folder_id: int, uidvalidity: int, found: dict[int, bytes]) -> None:
        entries = self.folder(folder_id, uidvalidity)
        before = len(entries)
        entries.update(found)
        self._size += len(entries) - before
        while self._size > self.max_entries and len(self._folders) > 1:
            _, evicted = self._folders.popitem(last=False)
            self._size -= len(evicted)
