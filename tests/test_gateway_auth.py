"""Lock-out rules of LoginThrottle: per account, per client address, expiry of the lock; the
same rules whether the counters are in this process or in the database (limits.service)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.core.throttle import FailureStore, Locked, LoginThrottle, MemoryFailures
from caducee.limits.service import DatabaseFailures, Windows, purge


@pytest.fixture(params=["memory", "database"])
async def store(request: pytest.FixtureRequest, engine: AsyncEngine) -> AsyncIterator[FailureStore]:
    yield MemoryFailures() if request.param == "memory" else DatabaseFailures(engine)


async def test_account_is_locked_after_five_failures_and_others_are_not(store: FailureStore) -> None:
    throttle = LoginThrottle(max_failures=5, lockout=60, store=store)
    for _ in range(4):
        await throttle.failed("account:a", "address:1.2.3.4")
    await throttle.check("account:a", "address:1.2.3.4")
    await throttle.failed("account:a", "address:1.2.3.4")
    with pytest.raises(Locked) as caught:
        await throttle.check("account:a", "address:9.9.9.9")
    assert 0 < caught.value.seconds <= 61
    await throttle.check("account:b", "address:9.9.9.9")


async def test_an_address_guessing_many_accounts_is_locked(store: FailureStore) -> None:
    throttle = LoginThrottle(max_failures=5, max_failures_per_address=20, store=store)
    for n in range(20):  # four failures on each of five accounts: no account is locked
        await throttle.failed(f"account:user{n % 5}", "address:6.6.6.6")
    with pytest.raises(Locked):
        await throttle.check("account:someone-else", "address:6.6.6.6")
    await throttle.check("account:user0", "address:7.7.7.7")


async def test_success_resets_and_the_lock_expires(store: FailureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    throttle = LoginThrottle(max_failures=2, lockout=10, store=store)
    await throttle.failed("account:a", "address:x")
    await throttle.check("account:a")
    await throttle.succeeded("account:a")
    await throttle.failed("account:a", "address:x")
    await throttle.check("account:a")  # one failure since the success
    await throttle.failed("account:a", "address:x")
    with pytest.raises(Locked):
        await throttle.check("account:a")
    later_monotonic, later_wall = time.monotonic() + 11, time.time() + 11
    monkeypatch.setattr(time, "monotonic", lambda: later_monotonic)
    monkeypatch.setattr(time, "time", lambda: later_wall)
    await throttle.check("account:a")


async def test_namespaces_do_not_share_counters(store: FailureStore) -> None:
    mail = LoginThrottle(max_failures=1, store=store, namespace="mail")
    webmail = LoginThrottle(max_failures=1, store=store, namespace="webmail")
    await mail.failed("account:a", "address:x")
    with pytest.raises(Locked):
        await mail.check("account:a")
    await webmail.check("account:a", "address:x")


async def test_two_processes_sharing_the_database_count_together(engine: AsyncEngine) -> None:
    """Two stores on one database stand for two nodes: failures on either add up."""
    first = LoginThrottle(max_failures=5, store=DatabaseFailures(engine), namespace="mail")
    second = LoginThrottle(max_failures=5, store=DatabaseFailures(engine), namespace="mail")
    for n in range(5):
        await (first if n % 2 else second).failed("account:a", f"address:{n}")
    for throttle in (first, second):
        with pytest.raises(Locked):
            await throttle.check("account:a")


async def test_window_claims_once_per_window_across_processes(engine: AsyncEngine) -> None:
    one, other = Windows(engine, "alert"), Windows(engine, "alert")
    assert await one.claim(["a", "b"], 60) == ["a", "b"]
    assert await other.claim(["a", "b", "c"], 60) == ["c"]
    assert await other.claim(["a"], 0) == ["a"]  # a window already over
    assert await purge(engine, older_than=-1) >= 3
    assert await one.claim(["b"], 60) == ["b"]
