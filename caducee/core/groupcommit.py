"""Group commit: many accepted messages, one durable transaction.

A message is acknowledged ("250") only once the transaction holding it is committed. With
SQLite's synchronous=FULL every commit is an fsync, so committing each message alone caps
the gateway at the disk's fsync rate; here the messages that finish DATA while a commit is
in flight wait together and share the next one, written by a set-based `writer`. If a
batch fails, each of its items is retried alone, so one bad message never takes the
others down with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from caducee.core import metrics

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Writer = Callable[[list[Any]], Awaitable[list[Any]]]  # writes the items in one transaction


@dataclass
class _Pending(Generic[Item]):
    item: Item
    future: asyncio.Future[Any]


class GroupCommitter:
    def __init__(self, writer: Writer, *, max_batch: int = 512) -> None:
        self._writer = writer
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending[Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.items = 0
        self.last_success = 0.0  # time.monotonic() of the last commit that worked / failed:
        self.last_failure = 0.0  # /healthz says unhealthy while the last one failed

    @property
    def failing(self) -> bool:
        """Whether the last transaction failed (a full disk, a database gone read-only...)."""
        return self.last_failure > self.last_success

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, item: Any) -> Any:
        """Write `item` in a shared transaction; return its result once committed."""
        if self._task is None:
            self.start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(RuntimeError("server shutting down"))
                raise
            except Exception as exc:  # a bug must fail these messages, not stop the committer
                log.exception("group commit failed")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)

    async def _commit(self, batch: list[_Pending[Any]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._writer([pending.item for pending in batch])
        except Exception as exc:
            metrics.group_commit_failures.inc()
            self.last_failure = time.monotonic()
            if len(batch) > 1:
                for pending in batch:  # isolate the failing item
                    await self._commit([pending])
                return
            log.exception("transaction failed")
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        metrics.group_commit_seconds.observe(time.perf_counter() - started)
        self.last_success = time.monotonic()
        self.commits += 1
        self.items += len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
