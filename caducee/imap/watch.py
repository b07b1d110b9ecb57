"""Waking sessions in IDLE when their folder changes.

Changes made by this process's IMAP sessions wake the others at once (`touched`). Changes
made elsewhere (the gateway's group commit, another worker process) are found by one
query per `interval` for the whole process, whatever the number of idling sessions: the
UIDVALIDITY and HIGHESTMODSEQ of every watched folder, compared with the last ones seen. A
folder that is gone, or whose UIDVALIDITY changed (deleted, and its id given to a new
folder), wakes its sessions too: they tell their clients it was deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

State = tuple[int, int]  # (UIDVALIDITY, HIGHESTMODSEQ)
Reader = Callable[[list[int]], Awaitable[dict[int, State]]]


class FolderWatch:
    def __init__(self, read_modseqs: Reader, interval: float = 1.0) -> None:
        self._read = read_modseqs
        self.interval = interval
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._seen: dict[int, State] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, folder_id: int, event: asyncio.Event, uidvalidity: int, known_modseq: int) -> None:
        """Set `event` when the folder's HIGHESTMODSEQ moves past what the session knows (or the folder goes)."""
        self._waiters.setdefault(folder_id, set()).add(event)
        seen = self._seen.setdefault(folder_id, (uidvalidity, known_modseq))
        if seen[0] != uidvalidity or seen[1] > known_modseq:
            event.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="imap-folder-watch")

    def unwatch(self, folder_id: int, event: asyncio.Event) -> None:
        waiters = self._waiters.get(folder_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[folder_id]
                self._seen.pop(folder_id, None)

    def touched(self, folder_id: int) -> None:
        for event in self._waiters.get(folder_id, ()):
            event.set()

    async def _poll(self) -> None:
        while self._waiters:
            await asyncio.sleep(self.interval)
            folders = list(self._waiters)
            try:
                current: dict[int, State] = {}
                for start in range(0, len(folders), 500):
                    current.update(await self._read(folders[start : start + 500]))
            except Exception:  # a database hiccup must not end the watch: try again next round
                log.exception("reading folder MODSEQs failed")
                continue
            for folder_id in folders:
                state = current.get(folder_id)
                before = self._seen.get(folder_id)
                if state is None:  # deleted: its sessions find out when they look
                    self.touched(folder_id)
                    continue
                self._seen[folder_id] = state
                if before is not None and state != before:
                    self.touched(folder_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
