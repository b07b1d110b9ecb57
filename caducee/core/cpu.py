"""A process pool for CPU-heavy work: S/MIME, and parsing large messages.

A thread is not enough: pure-Python parsing and long C calls hold the GIL, and with a
few of them at once the event loop waits its turn for hundreds of milliseconds. In
another process they cost the loop only the pickling of their input and result, so no
SMTP or IMAP session waits behind RSA or a 20 MB MIME tree.

Workers come from a forkserver that has already imported the crypto modules: a new
worker is a fork of a warm process, not a fresh interpreter, and never a fork of the
event loop's process (with its threads and sockets). One pool per process is enough;
it is created on first use and shut down at exit. A worker that dies breaks the pool:
the job fails (the pipeline answers 451, the client retries) and the next job gets a
fresh pool.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")

_PRELOAD = ["caducee.crypto.jobs", "caducee.gateway.inspect"]


def ping() -> int:
    """Nothing: warms a worker up (its process started, the preloaded modules imported)."""
    return os.getpid()


class CpuPool:
    """`await pool.run(job, *args)`: the job runs in a worker process."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 2
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(_PRELOAD)
                self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
            return self._executor

    async def run(self, job: Callable[..., T], *args: Any) -> T:
        executor = self._pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(job, *args))
        except BrokenProcessPool:
            with self._lock:
                if self._executor is executor:
                    self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            raise

    async def warm(self) -> list[int]:
        """Start every worker now (imports, key loading) rather than on the first message."""
        return list(await asyncio.gather(*(self.run(ping) for _ in range(self.workers))))

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


_shared: dict[int, CpuPool] = {}


def shared_pool(workers: int = 0) -> CpuPool:
    """The process-wide pool (one per worker count asked for), closed at exit."""
    pool = _shared.get(workers)
    if pool is None:
        pool = _shared[workers] = CpuPool(workers)
        atexit.register(pool.close)
    return pool
