"""SingleFlight: concurrent misses of one cache entry share one load."""

from __future__ import annotations

import asyncio

import pytest

from caducee.core.singleflight import SingleFlight


async def test_concurrent_callers_share_one_load_and_a_later_call_loads_again() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    loads = 0
    release = asyncio.Event()

    async def load() -> int:
        nonlocal loads
        loads += 1
        await release.wait()
        return loads

    waiting = [asyncio.ensure_future(flights.run("k", load)) for _ in range(25)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 25 and loads == 1 and len(flights) == 0
    assert await flights.run("k", load) == 2  # done loads are not cached here: the caller's cache does that


async def test_other_keys_load_on_their_own() -> None:
    flights: SingleFlight[int, int] = SingleFlight()

    async def double(value: int) -> int:
        await asyncio.sleep(0)
        return 2 * value

    assert await asyncio.gather(*(flights.run(n, lambda n=n: double(n)) for n in range(5))) == [0, 2, 4, 6, 8]


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def broken() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ConnectionError("database went away")

    results = await asyncio.gather(*(flights.run("k", broken) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results) and calls == 1
    with pytest.raises(ConnectionError):
        await flights.run("k", broken)
    assert calls == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_others_load() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    first = asyncio.ensure_future(flights.run("k", slow))
    second = asyncio.ensure_future(flights.run("k", slow))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "done"
    with pytest.raises(asyncio.CancelledError):
        await first
