"""A process pool for CPU-heavy work: S/MIME, and parsing large messages.

A thread is not enough: pure-Python parsing and long C calls hold the GIL, and with a
few of them at once the event loop waits its turn for hundreds of milliseconds. In
another process they cost the loop only the pickling of their input and result, so no
SMTP or IMAP session waits behind RSA or a 20 MB MIME tree.

Why not `concurrent.futures.ProcessPoolExecutor`: its hand-off (a feeder thread, a result
thread, a call queue and a pickle per call, each handing the GIL back and forth with the
event loop) was a quarter of a serving process's time under SMTP load, and its workers
held both ends of the queue's pipe, so they outlived a killed server (reparented to PID 1).

Here each worker (`caducee.core.cpuworker`) is a child process linked by one socketpair,
which the event loop reads and writes itself: no thread. Jobs that arrive while every
worker is busy wait together and go to the next free worker in one frame (one pickle, one
write, one wake-up for a whole burst: the signatures of one group-commit batch), and the
answers come back in one frame. A worker exits at end of file on its socket and the kernel
kills it when its parent dies (PR_SET_PDEATHSIG), so none survives a stopped or killed
server. A worker that dies fails the jobs it held (`WorkerDied`: the pipeline answers 451,
the client retries); the next job starts a fresh worker.

One pool serves one event loop at a time (a process's loop; tests run one loop after
another, and the pool follows).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from caducee.core.cpuworker import HEADER

T = TypeVar("T")

_PRELOAD = ("caducee.crypto.jobs", "caducee.gateway.inspect")
MAX_BATCH = 64  # jobs in one frame: bounds the latency of the last job behind the others


class WorkerDied(RuntimeError):
    """The worker process holding the job died (killed, out of memory) before answering."""


def ping() -> int:
    """Nothing: warms a worker up (its process started, the preloaded modules imported)."""
    return os.getpid()


@dataclass
class _Job:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


class _Worker:
    """One child process and the parent's end of its socket."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        # The parent's pid lets the child ask to die with it; only from the main thread, since
        # the kernel's "parent" for PR_SET_PDEATHSIG is the thread that forked.
        parent = os.getpid() if threading.current_thread() is threading.main_thread() else 0
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "caducee.core.cpuworker", str(theirs.fileno()), str(parent), ",".join(_PRELOAD)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.fd = ours.fileno()
        self.inflight: list[_Job] | None = None  # the jobs of the frame it is working on
        self.outgoing: list[memoryview] = []  # the part of that frame not yet written
        self.incoming = bytearray()  # the length of the next answer, as far as it has come
        self.frame: bytearray | None = None  # the answer being read, of its announced size
        self.filled = 0
        self.alive = True

    def stop(self, timeout: float) -> None:
        """Close the socket (the child sees end of file and exits), then reap it."""
        self.alive = False
        self.sock.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # cancelled by its caller meanwhile
        return
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except RuntimeError:  # its event loop is closed (a previous test's): nobody waits for it
        pass


class CpuPool:
    """`await pool.run(job, *args)`: the job runs in a worker process."""

    def __init__(self, workers: int = 0, *, max_batch: int = MAX_BATCH) -> None:
        self.workers = workers or os.cpu_count() or 2
        self.max_batch = max_batch
        self._slots: list[_Worker | None] = [None] * self.workers
        self._pending: collections.deque[_Job] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.frames = 0  # frames sent (jobs / frames: how much the hand-off batched)
        self.jobs = 0

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now."""
        return [w.process.pid for w in self._slots if w is not None and w.alive]

    async def run(self, job: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        self._bind(loop)
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Job(job, args, future))
        self._dispatch()
        return await future

    async def warm(self) -> list[int]:
        """Start every worker now (imports) rather than on the first message; their pids."""
        loop = asyncio.get_running_loop()
        self._bind(loop)
        waiting = []
        for index in range(self.workers):
            worker = self._worker(index)
            job = _Job(ping, (), loop.create_future())
            if worker.inflight is None:
                self._send(worker, [job])
            else:
                self._pending.append(job)
            waiting.append(job.future)
        return list(await asyncio.gather(*waiting))

    def close(self) -> None:
        """Stop every worker and wait for it; jobs not done fail."""
        slots, self._slots = self._slots, [None] * self.workers
        loop, failed = self._loop, RuntimeError("the CPU pool is closed")
        for worker in slots:
            if worker is None:
                continue
            self._unwatch(worker)
            for job in worker.inflight or []:
                _resolve(job.future, False, failed)
            worker.stop(timeout=5)
        while self._pending:
            _resolve(self._pending.popleft().future, False, failed)
        if loop is not None and loop.is_closed():
            self._loop = None

    # ---- workers ------------------------------------------------------------------------

    def _worker(self, index: int) -> _Worker:
        worker = self._slots[index]
        if worker is None or not worker.alive:
            worker = self._slots[index] = _Worker()
            if self._loop is not None:
                self._loop.add_reader(worker.fd, self._readable, worker)
        return worker

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the workers' sockets from `loop` (the previous loop is done with them)."""
        if self._loop is loop:
            return
        old, self._loop = self._loop, loop
        live = [w for w in self._slots if w is not None and w.alive]
        if old is not None and not old.is_closed():
            for worker in live:
                old.remove_reader(worker.fd)
                old.remove_writer(worker.fd)
        self._pending = collections.deque(job for job in self._pending if job.future.get_loop() is loop)
        for worker in live:
            loop.add_reader(worker.fd, self._readable, worker)
            if worker.outgoing:
                loop.add_writer(worker.fd, self._writable, worker)

    def _unwatch(self, worker: _Worker) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(worker.fd)
                loop.remove_writer(worker.fd)
            except (RuntimeError, ValueError, OSError):  # another thread's loop, or already gone
                pass

    def _lost(self, worker: _Worker) -> None:
        """The worker is gone: fail what it held and reap it; its slot restarts on demand."""
        self._unwatch(worker)
        jobs, worker.inflight = worker.inflight or [], None
        worker.alive = False
        worker.sock.close()
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()
        died = WorkerDied(f"CPU worker {worker.process.pid} exited ({worker.process.returncode}) before answering")
        for job in jobs:
            _resolve(job.future, False, died)
        self._dispatch()

    # ---- the hand-off ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give the waiting jobs to the free workers, shared out evenly, one frame each."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        if not self._pending:
            return
        for index in range(self.workers):
            if not self._free(index):
                continue
            free_from_here = sum(1 for later in range(index, self.workers) if self._free(later))
            share = min(self.max_batch, -(-len(self._pending) // free_from_here))
            worker = self._worker(index)
            batch: list[_Job] = []
            while self._pending and len(batch) < share:
                job = self._pending.popleft()
                if not job.future.done():
                    batch.append(job)
            if not batch:
                return
            self._send(worker, batch)
            if not self._pending:
                return

    def _free(self, index: int) -> bool:
        """No worker in the slot yet (or a dead one), or one waiting for work."""
        slot = self._slots[index]
        return slot is None or not slot.alive or slot.inflight is None

    def _send(self, worker: _Worker, batch: list[_Job]) -> None:
        try:
            payload = pickle.dumps([(job.function, job.args) for job in batch], protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - a job whose arguments do not pickle fails alone
            sendable = []
            for job in batch:
                try:
                    pickle.dumps((job.function, job.args), protocol=pickle.HIGHEST_PROTOCOL)
                    sendable.append(job)
                except Exception as exc:  # noqa: BLE001
                    _resolve(job.future, False, exc)
            if not sendable:
                return
            batch = sendable
            payload = pickle.dumps([(job.function, job.args) for job in batch], protocol=pickle.HIGHEST_PROTOCOL)
        worker.inflight = batch
        worker.outgoing = [memoryview(HEADER.pack(len(payload))), memoryview(payload)]  # no copy to join them
        self.frames += 1
        self.jobs += len(batch)
        self._writable(worker)

    def _writable(self, worker: _Worker) -> None:
        try:
            while worker.outgoing:
                sent = worker.sock.sendmsg(worker.outgoing)
                while sent and worker.outgoing:
                    first = worker.outgoing[0]
                    if sent >= len(first):
                        sent -= len(first)
                        worker.outgoing.pop(0)
                    else:
                        worker.outgoing[0] = first[sent:]
                        sent = 0
        except (BlockingIOError, InterruptedError):
            assert self._loop is not None
            self._loop.add_writer(worker.fd, self._writable, worker)
            return
        except OSError:
            self._lost(worker)
            return
        if self._loop is not None:
            self._loop.remove_writer(worker.fd)

    def _readable(self, worker: _Worker) -> None:
        """Read what the socket holds: the length first, then the frame straight into a buffer
        of its size (a 25 MB answer is copied once from the kernel, not grown chunk by chunk)."""
        try:
            if worker.frame is None:
                got = worker.sock.recv(HEADER.size - len(worker.incoming))
                if not got:
                    self._lost(worker)
                    return
                worker.incoming += got
                if len(worker.incoming) < HEADER.size:
                    return
                (size,) = HEADER.unpack(worker.incoming)
                worker.incoming.clear()
                worker.frame, worker.filled = bytearray(size), 0
            view = memoryview(worker.frame)
            while worker.filled < len(view):
                n = worker.sock.recv_into(view[worker.filled :], len(view) - worker.filled)
                if n == 0:
                    view.release()
                    self._lost(worker)
                    return
                worker.filled += n
            view.release()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost(worker)
            return
        frame, worker.frame = worker.frame, None
        self._answered(worker, frame)

    def _answered(self, worker: _Worker, frame: bytearray) -> None:
        jobs, worker.inflight = worker.inflight or [], None
        try:
            results = pickle.loads(frame)
        except Exception as exc:  # noqa: BLE001 - an answer that does not unpickle fails its jobs
            results = [(False, RuntimeError(f"the worker's answer could not be read: {exc!r}"))]
        if len(results) != len(jobs):  # the frame failed as a whole: its one error is every job's
            results = [results[0] if results else (False, RuntimeError("the worker answered nothing"))] * len(jobs)
        for job, (ok, value) in zip(jobs, results, strict=True):
            _resolve(job.future, ok, value)
        self._dispatch()


_shared: dict[int, CpuPool] = {}


def shared_pool(workers: int = 0) -> CpuPool:
    """The process-wide pool (one per worker count asked for), closed at exit."""
    pool = _shared.get(workers)
    if pool is None:
        pool = _shared[workers] = CpuPool(workers)
        atexit.register(pool.close)
    return pool
