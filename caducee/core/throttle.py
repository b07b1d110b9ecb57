"""Lock-out after repeated failures, per key (an account, a client address).

After `max_failures` failures within `window` seconds of the first, a key is locked for
`lockout` seconds: further attempts get a temporary error that says when to retry, without
the secret even being checked (so guessing gains nothing). Every login path (SMTP, IMAP, the
webmail) keys it on the canonical account and the client address.

The rule is here, the counters are in a `FailureStore`: in memory for a single process (and
the tests of the rule), in the database when several processes or nodes serve the same
accounts (`limits.service.DatabaseFailures`, which `server.py` hands every throttle). With
counters per process, N nodes gave an attacker N times the guesses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from caducee.core import metrics


class Locked(Exception):
    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        super().__init__(f"locked for {seconds} s")


class FailureStore(Protocol):
    """Where failure counters live. Keys arrive already namespaced by the throttle."""

    async def locked_for(self, keys: Sequence[str]) -> float:
        """Seconds until the last of `keys` is unlocked (0 when none is locked)."""
        ...

    async def add_failure(self, key: str, limit: int, window: float, lockout: float) -> None:
        """Count one failure; at `limit` failures within `window` seconds lock for `lockout`."""
        ...

    async def clear(self, key: str) -> None:
        """Forget the key's failures (a success)."""
        ...


@dataclass
class _Failures:
    count: int = 0
    first: float = 0.0
    locked_until: float = 0.0


class MemoryFailures:
    """Counters in this process only: one process, or the tests of the rule."""

    def __init__(self) -> None:
        self._state: dict[str, _Failures] = {}

    async def locked_for(self, keys: Sequence[str]) -> float:
        now = time.monotonic()
        return max((state.locked_until - now for key in keys if (state := self._state.get(key)) is not None), default=0.0)

    async def add_failure(self, key: str, limit: int, window: float, lockout: float) -> None:
        now = time.monotonic()
        state = self._state.setdefault(key, _Failures())
        if state.count == 0 or state.first < now - window:
            state.count, state.first = 0, now
        state.count += 1
        if state.count >= limit:
            state.locked_until = now + lockout
            state.count = 0
        if len(self._state) > 200_000:  # a flood of made-up keys must not grow memory without end
            self._state = {k: v for k, v in self._state.items() if v.locked_until > now}

    async def clear(self, key: str) -> None:
        self._state.pop(key, None)


class LoginThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 900.0,
        lockout: float = 900.0,
        max_failures_per_address: int = 20,
        store: FailureStore | None = None,
        namespace: str = "",
    ) -> None:
        """`namespace` separates throttles sharing one store (mail logins, webmail logins,
        activation codes, password resets)."""
        self.max_failures = max_failures
        self.max_failures_per_address = max_failures_per_address
        self.window = window
        self.lockout = lockout
        self.store: FailureStore = store if store is not None else MemoryFailures()
        self.namespace = namespace

    def _key(self, key: str) -> str:
        return f"{self.namespace}|{key}" if self.namespace else key

    async def check(self, *keys: str) -> None:
        """Raise Locked when any key is locked."""
        seconds = await self.store.locked_for([self._key(key) for key in keys])
        if seconds > 0:
            metrics.login_locked.labels(self.namespace or "default").inc()
            raise Locked(int(seconds) + 1)

    async def failed(self, account_key: str, address_key: str) -> None:
        metrics.login_failures.labels(self.namespace or "default").inc()
        for key, limit in ((account_key, self.max_failures), (address_key, self.max_failures_per_address)):
            await self.store.add_failure(self._key(key), limit, self.window, self.lockout)

    async def attempted(self, address_key: str) -> None:
        """Count something a client may do only so often, failed or not (starting a sign-in
        writes a row: a client starting thousands would fill a table)."""
        await self.store.add_failure(self._key(address_key), self.max_failures_per_address, self.window, self.lockout)

    async def succeeded(self, account_key: str) -> None:
        await self.store.clear(self._key(account_key))
