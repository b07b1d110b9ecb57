"""Lock-out rules of LoginThrottle: per account, per client address, expiry of the lock."""

from __future__ import annotations

import time

import pytest

from caducee.core.throttle import Locked, LoginThrottle


def test_account_is_locked_after_five_failures_and_others_are_not() -> None:
    throttle = LoginThrottle(max_failures=5, lockout=60)
    for _ in range(4):
        throttle.failed("account:a", "address:1.2.3.4")
    throttle.check("account:a", "address:1.2.3.4")
    throttle.failed("account:a", "address:1.2.3.4")
    with pytest.raises(Locked) as caught:
        throttle.check("account:a", "address:9.9.9.9")
    assert 0 < caught.value.seconds <= 61
    throttle.check("account:b", "address:9.9.9.9")


def test_an_address_guessing_many_accounts_is_locked() -> None:
    throttle = LoginThrottle(max_failures=5, max_failures_per_address=20)
    for n in range(20):  # four failures on each of five accounts: no account is locked
        throttle.failed(f"account:user{n % 5}", "address:6.6.6.6")
    with pytest.raises(Locked):
        throttle.check("account:someone-else", "address:6.6.6.6")
    throttle.check("account:user0", "address:7.7.7.7")


def test_success_resets_and_the_lock_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    throttle = LoginThrottle(max_failures=2, lockout=10)
    throttle.failed("account:a", "address:x")
    throttle.succeeded("account:a")
    throttle.failed("account:a", "address:x")
    throttle.check("account:a")  # one failure since the success
    throttle.failed("account:a", "address:x")
    with pytest.raises(Locked):
        throttle.check("account:a")
    later = time.monotonic() + 11
    monkeypatch.setattr(time, "monotonic", lambda: later)
    throttle.check("account:a")
