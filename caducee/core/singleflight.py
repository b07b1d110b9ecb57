"""One load per key at a time: concurrent callers that miss the same cache entry share it.

Every cache with an expiry has a moment when it expires under load; without this, each of
the requests in flight at that moment runs the same queries at once (25 per worker in the
webmail benchmark), and those requests were the slowest 1 % of pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """`await flights.run(key, load)`: runs `load()` unless a run for `key` is under way,
    in which case it waits for that run's result (or its exception)."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(load())
            self._running[key] = running
            running.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: a caller that goes away (a closed connection) does not cancel the load
        # the others are waiting for.
        return await asyncio.shield(running)

    def _forget(self, key: K, done: asyncio.Future[V]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody waited for is not logged as "never retrieved"

    def __len__(self) -> int:
        return len(self._running)
