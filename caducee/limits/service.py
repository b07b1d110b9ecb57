"""The limits' public API: a `FailureStore` in the database (for `core.throttle.LoginThrottle`),
once-per-window claims, and the purge of what no longer counts.

Each operation is one statement (an upsert that counts and locks in the same row update, so
two nodes counting the same key at the same moment both count), which SQLite and PostgreSQL
run alike (`INSERT ... ON CONFLICT ... DO UPDATE`, `RETURNING`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db

_ADD_FAILURE = text(
    """
    INSERT INTO limit_failures (key, failures, first_at, locked_until)
    VALUES (:key, :first_count, :now, :first_lock)
    ON CONFLICT (key) DO UPDATE SET
      failures = CASE
        WHEN limit_failures.failures = 0 OR limit_failures.first_at < :stale THEN :first_count
        WHEN limit_failures.failures + 1 >= :limit THEN 0
        ELSE limit_failures.failures + 1 END,
      first_at = CASE
        WHEN limit_failures.failures = 0 OR limit_failures.first_at < :stale THEN :now
        ELSE limit_failures.first_at END,
      locked_until = CASE
        WHEN (limit_failures.failures = 0 OR limit_failures.first_at < :stale) AND :limit <= 1 THEN :until
        WHEN NOT (limit_failures.failures = 0 OR limit_failures.first_at < :stale) AND limit_failures.failures + 1 >= :limit THEN :until
        ELSE limit_failures.locked_until END
    """
)

_CLAIM = text(
    """
    INSERT INTO limit_windows (key, last_at) VALUES (:key, :now)
    ON CONFLICT (key) DO UPDATE SET last_at = :now WHERE limit_windows.last_at < :stale
    RETURNING key
    """
)


class DatabaseFailures:
    """Failure counters every process and node shares (a `core.throttle.FailureStore`).

    A success clears the account's row only when this process saw one at the check before
    it: most logins have never failed, and an unconditional DELETE would make each of them a
    write transaction (on SQLite, one more turn at the single writer).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.reads = db.autocommit_reads(engine)
        self._seen: set[str] = set()

    async def locked_for(self, keys: Sequence[str]) -> float:
        names = {f"k{n}": key for n, key in enumerate(keys)}
        if not names:
            return 0.0
        placeholders = ", ".join(f":{name}" for name in names)
        async with self.reads.connect() as conn:
            rows = (await conn.execute(text(f"SELECT key, locked_until FROM limit_failures WHERE key IN ({placeholders})"), names)).all()
        if len(self._seen) > 100_000:
            self._seen.clear()
        self._seen.update(row.key for row in rows)
        now = time.time()
        return max((float(row.locked_until) - now for row in rows), default=0.0)

    async def add_failure(self, key: str, limit: int, window: float, lockout: float) -> None:
        now = time.time()
        params = {
            "key": key,
            "now": now,
            "stale": now - window,
            "until": now + lockout,
            "limit": limit,
            "first_count": 0 if limit <= 1 else 1,
            "first_lock": now + lockout if limit <= 1 else 0.0,
        }
        async with self.engine.begin() as conn:
            await conn.execute(_ADD_FAILURE, params)
        self._seen.add(key)

    async def clear(self, key: str) -> None:
        if key not in self._seen:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM limit_failures WHERE key = :key AND locked_until < :now"), {"key": key, "now": time.time()}
            )
        self._seen.discard(key)


class Windows:
    """ "At most once per window" for keys every node shares: who claims a key first within
    the window does the thing; the others are told it is not due."""

    def __init__(self, engine: AsyncEngine, namespace: str) -> None:
        self.engine = engine
        self.namespace = namespace

    async def claim(self, keys: Iterable[str], seconds: float) -> list[str]:
        """The keys that were not claimed within the last `seconds`, now claimed."""
        now = time.time()
        due = []
        async with self.engine.begin() as conn:
            for key in dict.fromkeys(keys):
                row = (await conn.execute(_CLAIM, {"key": f"{self.namespace}|{key}", "now": now, "stale": now - seconds})).first()
                if row is not None:
                    due.append(key)
        return due


async def purge(engine: AsyncEngine, *, older_than: float = 86_400.0) -> int:
    """Delete counters neither locked nor counting within `older_than` seconds, and claims
    older than that: rows that no longer change any decision (the longest window is an hour)."""
    stale = time.time() - older_than
    async with engine.begin() as conn:
        failures = await conn.execute(
            text("DELETE FROM limit_failures WHERE locked_until < :now AND first_at < :stale"), {"now": time.time(), "stale": stale}
        )
        windows = await conn.execute(text("DELETE FROM limit_windows WHERE last_at < :stale"), {"stale": stale})
    return int(failures.rowcount or 0) + int(windows.rowcount or 0)
