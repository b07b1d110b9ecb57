"""Running a write transaction without going back to the event loop between its statements.

Through aiosqlite every statement is a round trip between the loop and the driver's thread,
and SQLite's write lock is held across all of them, while the loop serves SMTP sessions:
the gateway's own writer then waits for the lock. So, as the gateway's group commit does,
SQLite gets one thread with its own connection that runs the whole transaction; PostgreSQL
(asyncpg is native asyncio) runs it through `run_sync`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db

Result = TypeVar("Result")


class Writer:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sync = db.sync_engine_for(engine) if db.is_sqlite(engine) else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dossier-writer") if self._sync else None

    async def run(self, work: Callable[[Connection], Result]) -> Result:
        """`work(connection)` in one transaction, committed when it returns."""
        if self._sync is not None:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._in_thread, work)
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    def _in_thread(self, work: Callable[[Connection], Result]) -> Result:
        assert self._sync is not None
        with self._sync.begin() as conn:
            return work(conn)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync is not None:
            self._sync.dispose()
