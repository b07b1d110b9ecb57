"""Group commit: many accepted messages, one durable transaction.

A message is acknowledged ("250") only once the transaction holding it is committed. With
SQLite's synchronous=FULL every commit is an fsync, so committing each message alone caps
the gateway at the disk's fsync rate; here the sessions that finish DATA while a commit is
in flight wait together and share the next one. A job that fails is retried alone, so one
bad message never takes the others of its batch down with it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

Job = Callable[[AsyncConnection], Awaitable[Any]]


@dataclass
class _Pending:
    job: Job
    future: asyncio.Future[Any]


class GroupCommitter:
    def __init__(self, engine: AsyncEngine, *, max_batch: int = 256) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.jobs = 0

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

    async def submit(self, job: Job) -> Any:
        """Run `job` in a shared transaction; return its result once committed."""
        if self._task is None:
            self.start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(job, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit_batch(batch)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(RuntimeError("server shutting down"))
                raise

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        results: list[Any] = []
        try:
            async with self._engine.begin() as conn:
                for pending in batch:
                    results.append(await pending.job(conn))
        except Exception as exc:
            if len(batch) == 1:
                log.exception("transaction failed")
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            for pending in batch:  # isolate the failing job
                await self._commit_batch([pending])
            return
        self.commits += 1
        self.jobs += len(batch)
        for pending, result in zip(batch, results):
            if not pending.future.done():
                pending.future.set_result(result)
