"""Running the mail store's statements the cheapest way each backend allows.

Each operation of `mailstore` is written once, as a plain function over a synchronous
SQLAlchemy `Connection`, and run here:

- PostgreSQL: through the async engine (`run_sync`): asyncpg is native asyncio, one round
  trip per statement, nothing else in between.
- SQLite: with the standard driver, not aiosqlite. Through aiosqlite every statement, every
  cursor and every connection return is a hand-off to its thread and back (five for one
  SELECT), and on a loaded machine each hand-off waits for the scheduler: a one-row read
  took 3 to 5 ms. Here a small read runs on the event loop itself (tens of microseconds:
  WAL readers never wait for the writer), a read of a whole folder in a reader thread, and
  a write transaction in one writer thread, statements and commit in one hand-off. The one
  writer thread also queues this process's writers instead of leaving them to SQLite's busy
  handler (which sleeps 1, 2, 5, 10... 100 ms between tries).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db

T = TypeVar("T")


class Unchanged(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a write that found nothing to change: the transaction is rolled back (so a
    MODSEQ it reserved is given back) and `value` is the operation's result."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value


class Runner:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.reads = db.autocommit_reads(engine)
        self.sqlite = db.is_sqlite(engine)
        if self.sqlite:
            self._inline = db.sync_engine_for(engine)  # used on the event loop's thread only
            self._reader_engine = db.sync_engine_for(engine)
            self._writer_engine = db.sync_engine_for(engine)
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailstore-reader")
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailstore-writer")

    async def read(self, operation: Callable[..., T], *args: Any, large: bool = False) -> T:
        """`operation(conn, *args)` outside any transaction; `large` when it reads a whole
        folder (then not on the event loop)."""
        if not self.sqlite:
            async with self.reads.connect() as conn:
                return await conn.run_sync(operation, *args)
        if large:
            return await asyncio.get_running_loop().run_in_executor(self._reader, _run_read, self._reader_engine, operation, args)
        return _run_read(self._inline, operation, args)

    async def write(self, operation: Callable[..., T], *args: Any) -> T:
        """`operation(conn, *args)` in one transaction, committed unless it raises (`Unchanged`
        rolls back and returns its value)."""
        try:
            if not self.sqlite:
                async with self.engine.begin() as conn:
                    return await conn.run_sync(operation, *args)
            return await asyncio.get_running_loop().run_in_executor(self._writer, _run_write, self._writer_engine, operation, args)
        except Unchanged as unchanged:
            return unchanged.value  # type: ignore[return-value]

    def close(self) -> None:
        if self.sqlite:
            self._reader.shutdown(wait=True)
            self._writer.shutdown(wait=True)
            for engine in (self._inline, self._reader_engine, self._writer_engine):
                engine.dispose()


def _run_read(engine: Any, operation: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.connect() as conn:
        return operation(conn, *args)


def _run_write(engine: Any, operation: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.begin() as conn:
        return operation(conn, *args)


__all__ = ["Connection", "Runner", "Unchanged"]
