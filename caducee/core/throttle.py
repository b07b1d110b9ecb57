"""Lock-out after repeated failures, per key (an account, a client address).

After `max_failures` failures within `window` seconds, a key is locked for `lockout`
seconds: further attempts get a temporary error that says when to retry, without the
secret even being checked (so guessing gains nothing). Every login path (SMTP, IMAP, the
webmail) keys it on the canonical account and the client address.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


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
