"""Running the mail store's statements the cheapest way each backend allows.

Each operation of `mailstore` is written once, as a plain function over a synchronous
SQLAlchemy `Connection`, and run here:

- PostgreSQL: through asyncpg (`run_sync`), on connections this runner keeps checked out:
  taking one from SQLAlchemy's pool and giving it back cost more than the query itself
  (0.85 ms against 0.75 ms for a one-row read on the shared test machine). A connection
  that fails is dropped and a new one opened for the next operation.
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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee import db

T = TypeVar("T")


class Unchanged(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a write that found nothing to change: the transaction is rolled back (so a
    MODSEQ it reserved is given back) and `value` is the operation's result."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value


class _Held:
    """Connections kept checked out of the engine's pool: `size` at most, opened on demand."""

    def __init__(self, engine: AsyncEngine, size: int, *, autocommit: bool) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT") if autocommit else engine
        self.size = size
        self.free: list[AsyncConnection] = []
        self.opened = 0
        self.available = asyncio.Condition()

    async def take(self) -> AsyncConnection:
        async with self.available:
            while not self.free and self.opened >= self.size:
                await self.available.wait()
            if self.free:
                return self.free.pop()
            self.opened += 1
        try:
            return await self.engine.connect()
        except BaseException:
            await self._forget()
            raise

    async def give_back(self, conn: AsyncConnection, *, broken: bool) -> None:
        if broken:
            try:
                await conn.invalidate()
                await conn.close()
            except Exception:  # noqa: BLE001 - it is being dropped anyway
                pass
            await self._forget()
            return
        async with self.available:
            self.free.append(conn)
            self.available.notify()

    async def _forget(self) -> None:
        async with self.available:
            self.opened -= 1
            self.available.notify()

    async def close(self) -> None:
        while self.free:
            await self.free.pop().close()


class Runner:
    """`hold`: keep PostgreSQL connections checked out (a server that lives as long as its
    engine and is closed with `aclose`); otherwise each operation takes one from the pool."""

    def __init__(self, engine: AsyncEngine, *, hold: bool = False) -> None:
        self.engine = engine
        self.hold = hold
        self.reads = db.autocommit_reads(engine)
        self.sqlite = db.is_sqlite(engine)
        self._held_reads: _Held | None = None
        self._held_writes: _Held | None = None
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
            return await self._on_held(False, operation, args)
        if large:
            return await asyncio.get_running_loop().run_in_executor(self._reader, _run_read, self._reader_engine, operation, args)
        return _run_read(self._inline, operation, args)

    async def write(self, operation: Callable[..., T], *args: Any) -> T:
        """`operation(conn, *args)` in one transaction, committed unless it raises (`Unchanged`
        rolls back and returns its value)."""
        try:
            if not self.sqlite:
                return await self._on_held(True, operation, args)
            return await asyncio.get_running_loop().run_in_executor(self._writer, _run_write, self._writer_engine, operation, args)
        except Unchanged as unchanged:
            return unchanged.value  # type: ignore[return-value]

    async def _on_held(self, write: bool, operation: Callable[..., T], args: tuple[Any, ...]) -> T:
        if not self.hold:
            if write:
                async with self.engine.begin() as conn:
                    return await conn.run_sync(operation, *args)
            async with self.reads.connect() as conn:
                return await conn.run_sync(operation, *args)
        if self._held_reads is None or self._held_writes is None:
            self._held_reads = _Held(self.engine, 4, autocommit=True)
            self._held_writes = _Held(self.engine, 4, autocommit=False)
        held = self._held_writes if write else self._held_reads
        conn = await held.take()
        broken = False
        try:
            if not write:
                return await conn.run_sync(operation, *args)
            async with conn.begin():
                return await conn.run_sync(operation, *args)
        except Unchanged:
            raise
        except Exception as error:
            # Refusals (the store's own errors) leave the connection sound; anything from the
            # database or the driver may not.
            broken = not _refusal(error)
            raise
        finally:
            await held.give_back(conn, broken=broken)

    async def aclose(self) -> None:
        for held in (self._held_reads, self._held_writes):
            if held is not None:
                await held.close()
        self.close()

    def close(self) -> None:
        if self.sqlite:
            self._reader.shutdown(wait=True)
            self._writer.shutdown(wait=True)
            for engine in (self._inline, self._reader_engine, self._writer_engine):
                engine.dispose()


def _refusal(error: Exception) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    return not isinstance(error, (SQLAlchemyError, OSError, asyncio.TimeoutError)) and type(error).__module__.startswith("caducee")


def _run_read(engine: Any, operation: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.connect() as conn:
        return operation(conn, *args)


def _run_write(engine: Any, operation: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.begin() as conn:
        return operation(conn, *args)


__all__ = ["Connection", "Runner", "Unchanged"]
