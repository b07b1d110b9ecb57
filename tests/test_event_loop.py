"""The suite runs on the event loop production runs on."""

import asyncio
import os


async def test_tests_run_on_the_serving_loop() -> None:
    loop = type(asyncio.get_running_loop())
    expected = "uvloop" if os.environ.get("CADUCEE_EVENT_LOOP", "uvloop") == "uvloop" else "asyncio"
    assert loop.__module__.split(".")[0] == expected
