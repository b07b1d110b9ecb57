"""Run each periodic job once per period, on whichever process or node claims it first.

A claim is one conditional UPDATE (due, and no lease running): the database lets exactly one
claimant change the row, on SQLite and PostgreSQL alike, so N nodes polling the same schedule
run a job once. The holder keeps a lease while it runs; a process that dies mid-job leaves
the lease to expire and another takes the job again (jobs are purges: running one twice is
harmless, running it never is not). The jobs themselves are functions of the components
that own the rows (`server.py` lists them); this module knows none of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

_ENSURE = text(
    "INSERT INTO jobs_schedule (name, next_run_at, lease_until, holder, runs, last_finished_at, last_result) "
    "VALUES (:name, 0, 0, '', 0, 0, '') ON CONFLICT (name) DO NOTHING"
)
_CLAIM = text(
    "UPDATE jobs_schedule SET lease_until = :until, holder = :holder WHERE name = :name AND next_run_at <= :now AND lease_until < :now"
)
_DONE = text(
    "UPDATE jobs_schedule SET next_run_at = :next, lease_until = 0, runs = runs + 1, last_finished_at = :now, last_result = :result "
    "WHERE name = :name AND holder = :holder"
)


@dataclass(frozen=True)
class Job:
    name: str
    every: float  # seconds between runs
    run: Callable[[], Awaitable[str]]  # returns what it did, in a few words (kept in the row, logged)
    lease: float = 600.0  # longer than a run takes


class JobRunner:
    def __init__(self, engine: AsyncEngine, jobs: list[Job]) -> None:
        self.engine = engine
        self.jobs = jobs
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._ensured = False

    async def run_once(self) -> list[str]:
        """Run every job that is due and that this process claims; the names of those it ran."""
        if not self._ensured:
            async with self.engine.begin() as conn:
                for job in self.jobs:
                    await conn.execute(_ENSURE, {"name": job.name})
            self._ensured = True
        ran = []
        for job in self.jobs:
            now = time.time()
            async with self.engine.begin() as conn:
                claimed = await conn.execute(_CLAIM, {"name": job.name, "now": now, "until": now + job.lease, "holder": self.holder})
            if claimed.rowcount != 1:
                continue
            try:
                result = await job.run()
            except Exception as exc:  # a failing job is retried at its next period, the others still run
                log.exception("job %s failed", job.name)
                result = f"failed: {type(exc).__name__}"
            else:
                log.info("job %s: %s", job.name, result)
            async with self.engine.begin() as conn:
                await conn.execute(
                    _DONE, {"name": job.name, "holder": self.holder, "now": time.time(), "next": now + job.every, "result": result[:500]}
                )
            ran.append(job.name)
        return ran

    async def run_forever(self, poll: float = 60.0) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away for a moment: try again at the next poll
                log.exception("job runner pass failed")
            await asyncio.sleep(poll)
