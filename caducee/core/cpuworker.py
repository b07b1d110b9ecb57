"""One CPU worker process: read a frame of jobs from its socket, run them, write back one frame.

Started by `caducee.core.cpu.CpuPool` as `python -m caducee.core.cpuworker FD PARENT MODULES`,
with FD one end of a socketpair, its only link to the server. It never outlives that server:
it exits when the socket reaches end of file (the server closed it, or died and the kernel
closed it), and when its parent process dies the kernel kills it (PR_SET_PDEATHSIG), even in
the middle of a job.

A frame is an 8-byte big-endian length and a pickle: a list of `(function, args)` one way, a
list of `(ok, value-or-exception)` the other, in the same order. Jobs run one after the
other; a failing job fails alone.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import signal
import socket
import struct
import sys
from typing import Any

HEADER = struct.Struct("!Q")
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: end of file on the socket is enough
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _receive(sock: socket.socket) -> bytearray | None:
    """One whole frame, or None at end of file."""
    header = _exactly(sock, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    return _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            return None
        got += n
    return buffer


def _outcome(job: Any) -> tuple[bool, Any]:
    function, args = job
    try:
        return True, function(*args)
    except Exception as exc:  # noqa: BLE001 - the caller gets the job's own exception
        return False, exc


def _dumps(results: list[tuple[bool, Any]]) -> bytes:
    try:
        return pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - one result that cannot cross must not fail the others
        safe: list[tuple[bool, Any]] = []
        for ok, value in results:
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                safe.append((ok, value))
            except Exception as exc:  # noqa: BLE001
                safe.append((False, RuntimeError(f"the job's {'result' if ok else 'exception'} cannot be pickled: {exc!r}")))
        return pickle.dumps(safe, protocol=pickle.HIGHEST_PROTOCOL)


def serve(sock: socket.socket) -> None:
    """Run frames of jobs until end of file."""
    while True:
        frame = _receive(sock)
        if frame is None:
            return
        try:
            jobs = pickle.loads(frame)
            results = [_outcome(job) for job in jobs]
        except Exception as exc:  # noqa: BLE001 - a frame that does not unpickle: fail it, keep serving
            results = [(False, RuntimeError(f"the jobs could not be read: {exc!r}"))]
        reply = _dumps(results)
        try:
            if len(reply) < 65536:  # one write for the usual small answer
                sock.sendall(HEADER.pack(len(reply)) + reply)
            else:  # no copy of a large one to put its length in front
                sock.sendall(HEADER.pack(len(reply)))
                sock.sendall(reply)
        except OSError:  # the server is gone
            return


def main(argv: list[str]) -> None:
    fd, parent, modules = int(argv[0]), int(argv[1]), argv[2] if len(argv) > 2 else ""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server decides when we stop
    if parent:
        die_with_parent(parent)
    for module in filter(None, modules.split(",")):
        importlib.import_module(module)  # warm: the first job pays no import
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    try:
        serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])
