"""Answers that take the same time whatever they found.

A page that answers "if this account exists, a code was sent" in 2 ms when it does not
and in 15 ms when it does (a row written, a mail handed to the relay) tells with a
stopwatch what its words hide. Doing the same work in both branches is not always
possible (there is no account to write a code for), so the answers whose words hide
something are held until a floor, the same in every branch, chosen above what the slower
branch normally takes; a branch slower than its floor is logged, as the floor then no
longer hides it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

log = logging.getLogger(__name__)


@asynccontextmanager
async def no_sooner_than(seconds: float, what: str) -> AsyncIterator[None]:
    """Run the block, then wait until `seconds` (plus up to 10% of random jitter) have
    passed since it began, whether it returned or raised."""
    began = time.monotonic()
    try:
        yield
    finally:
        floor = seconds * (1 + secrets.randbelow(1000) / 10_000)
        left = began + floor - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        else:
            log.warning(
                "%s took %.0f ms, more than its %.0f ms floor: its timing may tell what it hides",
                what,
                -left * 1000 + floor * 1000,
                floor * 1000,
            )
