"""The CPU pool: jobs and their errors cross intact, bursts go in one frame, and no worker
process outlives what started it (closed pool, killed worker, killed or stopped server)."""

from __future__ import annotations

import asyncio
import base64
import operator
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import free_port
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.core.cpu import CpuPool, WorkerDied


def alive(pid: int) -> bool:
    """Running (a zombie waiting for PID 1 to reap it is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, at any depth."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        out = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        children = {int(p) for p in out} - found
        found |= children
        todo.extend(children)
    return found


def cpu_workers(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if b"caducee.core.cpuworker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.add(pid)
        except FileNotFoundError:
            pass
    return out


def wait_gone(pids: set[int], timeout: float = 20) -> set[int]:
    """The pids still alive after `timeout` (empty: all gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {pid for pid in pids if alive(pid)}
        if not left:
            return set()
        time.sleep(0.1)
    return {pid for pid in pids if alive(pid)}


async def test_jobs_results_and_errors_cross_intact() -> None:
    pool = CpuPool(2)
    try:
        pids = await pool.warm()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        assert await pool.run(operator.add, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await pool.run(operator.truediv, 1, 0)
        with pytest.raises((AttributeError, pickle.PicklingError)):  # a job whose arguments cannot be pickled fails alone
            await pool.run(operator.add, lambda: None, 1)
        big = os.urandom(3 * 1024 * 1024)  # larger than any socket buffer: written and read in pieces
        assert await pool.run(operator.add, big, b"!") == big + b"!"
        # A burst: the jobs that wait while both workers are busy go in a few frames, not one each.
        frames_before, jobs_before = pool.frames, pool.jobs
        results = await asyncio.gather(*(pool.run(operator.mul, n, n) for n in range(200)))
        assert results == [n * n for n in range(200)]
        assert pool.jobs - jobs_before == 200
        assert pool.frames - frames_before < 50
        # Errors inside a batch fail their own job only.
        mixed = await asyncio.gather(*(pool.run(operator.floordiv, 10, n % 3) for n in range(30)), return_exceptions=True)
        assert [isinstance(r, ZeroDivisionError) for r in mixed] == [n % 3 == 0 for n in range(30)]
    finally:
        pool.close()
    assert wait_gone(set(pids)) == set()


async def test_a_killed_worker_fails_its_jobs_and_is_replaced() -> None:
    pool = CpuPool(1)
    try:
        (first,) = await pool.warm()
        slow = asyncio.ensure_future(pool.run(time.sleep, 30))
        await asyncio.sleep(0.3)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(WorkerDied):
            await asyncio.wait_for(slow, 20)
        assert not alive(first)
        assert await pool.run(operator.add, 1, 1) == 2  # a fresh worker took the slot
        assert pool.pids and pool.pids != [first]
    finally:
        pool.close()


async def test_the_pool_follows_the_event_loop() -> None:
    """Tests run one loop after another with a process-wide pool: it moves to the new loop."""
    pool = CpuPool(1)
    try:
        await pool.warm()

        def other_loop() -> int:
            return asyncio.run(pool.run(operator.add, 40, 2))

        assert await asyncio.to_thread(other_loop) == 42
        assert await pool.run(operator.add, 1, 2) == 3
    finally:
        pool.close()


PARENT = """
import asyncio, os, sys, time
from caducee.core.cpu import CpuPool

async def main():
    pool = CpuPool(2)
    print(" ".join(map(str, await pool.warm())), flush=True)
    if sys.argv[1] == "busy":  # a worker in the middle of a long job when its parent dies
        asyncio.ensure_future(pool.run(time.sleep, 60))
        await asyncio.sleep(0.5)
        print("busy", flush=True)
    if sys.argv[1] == "exit":  # no close, no atexit: the process just ends
        os._exit(0)
    await asyncio.sleep(120)

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["idle", "busy", "exit"])
def test_no_worker_survives_its_parent(tmp_path: Path, how: str) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT))
    parent = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = {int(p) for p in parent.stdout.readline().split()}
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        if how == "busy":
            assert parent.stdout.readline().strip() == "busy"
        if how != "exit":
            parent.kill()
        parent.wait(timeout=30)
        assert wait_gone(pids) == set(), "CPU workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_no_pool_process_survives_the_server(tmp_path: Path, database_url: str, engine: AsyncEngine) -> None:
    """`caducee serve --workers 2`: a killed serving process takes its CPU workers with it;
    SIGTERM leaves no process of the tree behind."""
    smtp_port = free_port()
    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(tmp_path / "var"),
        "CADUCEE_DATABASE_URL": database_url,
        "CADUCEE_SUBMISSION_PORT": str(smtp_port),
        "CADUCEE_SUBMISSIONS_PORT": "0",
        "CADUCEE_MX_PORT": "0",
        "CADUCEE_IMAP_PORT": "0",
        "CADUCEE_IMAPS_PORT": "0",
        "CADUCEE_HTTP_PORT": str(free_port()),
        "CADUCEE_LOG_LEVEL": "WARNING",
        "CADUCEE_CPU_WORKERS": "2",
        # A PostgreSQL node starts only with an explicit key (and --demo for the test PKI).
        "CADUCEE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    process = subprocess.Popen([sys.executable, "-m", "caducee", "serve", "--demo", "--workers", "2"], env=env, stdout=subprocess.DEVNULL)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(cpu_workers(descendants(process.pid))) < 4:  # the pools are warmed before the listeners open
            assert process.poll() is None, "serve exited"
            assert time.monotonic() < deadline, "the CPU workers did not start"
            time.sleep(0.2)
        seen = descendants(process.pid)
        serving = {pid for pid in seen if b"--worker-process" in Path(f"/proc/{pid}/cmdline").read_bytes()}
        assert len(serving) == 2
        victim = min(serving)
        victims = cpu_workers(descendants(victim))
        assert len(victims) == 2
        os.kill(victim, signal.SIGKILL)
        assert wait_gone(victims) == set(), "the killed worker's CPU processes survived it"
        seen |= descendants(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert wait_gone(seen) == set(), "processes of the server outlived it"
