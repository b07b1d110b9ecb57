"""Password checks for mail clients, with lock-out per account and per client address.

After `max_failures` failures within `window` seconds, an account (or an address) is
locked for `lockout` seconds: further attempts get a temporary error that says when to
retry, without the password even being checked (so guessing gains nothing). Counters live
in the process; a restart forgets them, which errs on the side of letting people in.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire.service import resolve_parties
from caducee.passwords import verify_password


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class Locked(Exception):
    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        super().__init__(f"locked for {seconds} s")


class LoginThrottle:
    def __init__(self, *, max_failures: int = 5, window: float = 900.0, lockout: float = 900.0, max_failures_per_address: int = 20) -> None:
        self.max_failures = max_failures
        self.max_failures_per_address = max_failures_per_address
        self.window = window
        self.lockout = lockout
        self._state: dict[str, _Failures] = {}

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            state = self._state.get(key)
            if state is not None and state.locked_until > now:
                raise Locked(int(state.locked_until - now) + 1)

    def failed(self, account_key: str, address_key: str) -> None:
        now = time.monotonic()
        for key, limit in ((account_key, self.max_failures), (address_key, self.max_failures_per_address)):
            state = self._state.setdefault(key, _Failures())
            state.times.append(now)
            while state.times and state.times[0] < now - self.window:
                state.times.popleft()
            if len(state.times) >= limit:
                state.locked_until = now + self.lockout
                state.times.clear()

    def succeeded(self, account_key: str) -> None:
        self._state.pop(account_key, None)


class MailboxAuthenticator:
    """Checks a mailbox address and password against the annuaire (argon2, off the loop)."""

    def __init__(
        self, engine: AsyncEngine, local_domains: list[str], throttle: LoginThrottle | None = None, *, concurrent_checks: int = 2
    ) -> None:
        self.engine = engine
        self.local_domains = local_domains
        self.throttle = throttle or LoginThrottle()
        # argon2id uses 64 MiB per check: bounding concurrent checks bounds memory (and
        # they are CPU-bound, so more at once would not be faster).
        self._checks = asyncio.Semaphore(concurrent_checks)

    async def verify(self, login: str, password: str, client_address: str) -> str | None:
        """The mailbox address on success, None on failure; raises Locked when locked out."""
        account = login.strip().lower()
        account_key, address_key = f"account:{account}", f"address:{client_address}"
        self.throttle.check(account_key, address_key)
        async with self.engine.connect() as conn:
            parties = await resolve_parties(conn, [account], local_domains=self.local_domains) if "@" in account else {}
        info = parties.get(account)
        stored = info.password_hash if info is not None and info.mailbox_id is not None and info.mailbox_type != "PAT" else None
        async with self._checks:
            ok = await asyncio.to_thread(verify_password, stored, password)
        if not ok:
            self.throttle.failed(account_key, address_key)
            return None
        self.throttle.succeeded(account_key)
        return account
