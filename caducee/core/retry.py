"""Retrying a database step until the database answers, within a deadline.

Why: some outcomes must be recorded even across a lost connection. The relay, for one, has
had a peer say "250" for a message: if the state update then fails because PostgreSQL
dropped the connection (a restart, a failover, `pg_terminate_backend`), giving up would
leave the row to wait out its lease and be sent again. The step is retried, on a fresh
connection each time (the pool discards the broken one), for as long as the lease still
protects the row; errors that say the statement itself is wrong are not retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")


def connection_lost(exc: BaseException) -> bool:
    """The database did not answer (connection refused, killed, timed out, read-only after a
    failover), as opposed to refusing the statement (a constraint, a syntax error)."""
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, (OperationalError, InterfaceError)) or _read_only(exc)
    return isinstance(exc, (OSError, TimeoutError))


def _read_only(exc: DBAPIError) -> bool:
    """A standby that was the primary a moment ago answers "read-only transaction" (25006)."""
    return getattr(exc.orig, "sqlstate", None) == "25006" or "read-only transaction" in str(exc.orig)


async def until_answered(
    step: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    what: str,
    first_delay: float = 0.05,
    max_delay: float = 2.0,
) -> T:
    """Run `step` until it returns, retrying while the database does not answer and the
    monotonic `deadline` is ahead; the last error is raised once it has passed (or at once
    for an error that is not a lost connection). `step` must be one transaction that can
    run again (it is rolled back whenever it fails)."""
    delay = first_delay
    failures = 0
    while True:
        try:
            result = await step()
        except Exception as exc:
            if not connection_lost(exc) or time.monotonic() + delay >= deadline:
                raise
            failures += 1
            if failures == 1 or failures % 20 == 0:
                log.warning("%s: the database did not answer (%s); retrying", what, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        if failures:
            log.info("%s: done after %d retries", what, failures)
        return result
