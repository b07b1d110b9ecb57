"""Bounded memory and time before and after login (issue 18, point 6).

- One IMAP command's literals share a budget (16 KB before login, 1 MB after, APPEND's
  message aside): a client sending one endless command of many small literals is refused
  once the budget is spent, before and after LOGIN.
- A server process's memory returns near its baseline once hostile clients leave.
- Time: the whole DATA content (`smtp_data_timeout`) and a whole IMAP command once begun
  (`imap_command_timeout`) have deadlines, however steadily the bytes trickle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from test_imap_hostile import Raw


def _literal_flood(raw: Raw, tag: bytes, command: bytes, chunk: int, rounds: int) -> tuple[int, bytes]:
    """Send `command` then synchronising literals of `chunk` bytes until the server stops
    asking for them; (bytes it accepted, its answer)."""
    raw.send(tag + b" " + command + b" {%d}\r\n" % chunk)
    accepted = 0
    for _ in range(rounds):
        line = raw.line()
        if not line.startswith(b"+"):
            return accepted, line
        raw.send(b"x" * chunk + b" {%d}\r\n" % chunk)
        accepted += chunk
    return accepted, b""


@pytest.mark.usefixtures("imap")
async def test_many_small_literals_share_one_budget(gateway) -> None:  # type: ignore[no-untyped-def]
    def before_login() -> tuple[int, bytes]:
        raw = Raw(gateway, login=False)
        raw.send(b"s STARTTLS\r\n")
        assert raw.until(b"s ").startswith(b"s OK")
        raw.sock = ssl.create_default_context(cafile=str(gateway.ca.files.cert)).wrap_socket(raw.sock, server_hostname="localhost")
        return _literal_flood(raw, b"a", b"LOGIN", 1024, 1000)

    def after_login() -> tuple[int, bytes]:
        raw = Raw(gateway)
        accepted, answer = _literal_flood(raw, b"b", b"SEARCH TEXT", 60 * 1024, 1000)
        raw.send(b"c NOOP\r\n")  # still in step: the refused literal was never sent
        assert raw.until(b"c ").startswith(b"c OK")
        return accepted, answer

    accepted, answer = await asyncio.to_thread(before_login)
    assert accepted <= 16 * 1024 and answer.startswith(b"a NO [TOOBIG]"), (accepted, answer)
    accepted, answer = await asyncio.to_thread(after_login)
    assert accepted <= 1024 * 1024 and answer.startswith(b"b NO [TOOBIG]"), (accepted, answer)


async def test_an_imap_command_has_a_deadline(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    imap.settings = dataclasses.replace(imap.settings, imap_command_timeout=2)

    def trickle() -> int:
        raw = Raw(gateway)
        for index, byte in enumerate(b"t NOOP and more and more and more and more"):
            try:
                raw.send(bytes([byte]))
            except OSError:
                return index
            time.sleep(0.25)
            raw.sock.settimeout(0.01)
            try:
                if raw.closed():
                    return index
            finally:
                raw.sock.settimeout(15)
        return -1

    sent = await asyncio.to_thread(trickle)
    assert 0 <= sent < 40  # closed (with BYE) before the trickle was over


async def test_data_has_a_deadline(gateway) -> None:  # type: ignore[no-untyped-def]
    from caducee.gateway.smtp import ListenerConfig, start_listener

    config = ListenerConfig(
        "submission", "127.0.0.1", free_port(), gateway.server_context, trusted_networks=["127.0.0.0/8"], data_timeout=2, hostname="t"
    )
    server = await start_listener(config, gateway.pipeline, gateway.authenticator)
    doctor = gateway.account("doctor")[0]

    def trickle() -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", config.port), timeout=15) as sock:
            file = sock.makefile("rb")
            file.readline()
            for line in (b"EHLO t\r\n", f"MAIL FROM:<{doctor}>\r\n".encode(), f"RCPT TO:<{doctor}>\r\n".encode(), b"DATA\r\n"):
                sock.sendall(line)
                while True:
                    reply = file.readline()
                    if reply[3:4] != b"-":
                        break
            for index in range(40):
                try:
                    sock.sendall(b"y")
                except OSError:
                    return index, b""
                sock.settimeout(0.25)
                try:
                    reply = sock.recv(1024)
                    if reply:
                        return index, reply
                except TimeoutError:
                    pass
                finally:
                    sock.settimeout(15)
            return -1, b""

    try:
        sent, reply = await asyncio.to_thread(trickle)
    finally:
        server.close()
        await server.wait_closed()
    assert 0 <= sent < 40 and reply.startswith(b"421 4.4.2"), (sent, reply)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_memory_returns_to_its_baseline_after_hostile_clients(tmp_path: Path) -> None:
    """A real `caducee serve` process: 40 unauthenticated clients each push literals until
    refused, then leave; the process's resident memory ends close to where it started."""
    port, http = free_port(), free_port()
    data_dir = tmp_path / "var"
    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(data_dir),
        "CADUCEE_DATABASE_URL": f"sqlite:///{tmp_path / 'c.sqlite3'}",
        "CADUCEE_IMAP_PORT": str(port),
        "CADUCEE_IMAPS_PORT": "0",
        "CADUCEE_SUBMISSION_PORT": "0",
        "CADUCEE_SUBMISSIONS_PORT": "0",
        "CADUCEE_MX_PORT": "0",
        "CADUCEE_HTTP_PORT": str(http),
        "CADUCEE_LOG_LEVEL": "WARNING",
    }
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen([sys.executable, "-m", "caducee", "serve", "--demo"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)

        def hostile() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                file = sock.makefile("rb")
                file.readline()
                sock.sendall(b"a LOGIN {1024}\r\n")
                for _ in range(200):
                    if not file.readline().startswith(b"+"):
                        return
                    sock.sendall(b"x" * 1024 + b" {1024}\r\n")

        hostile()  # warm up the code paths once
        time.sleep(0.5)
        baseline = _rss(process.pid)
        for _ in range(2):
            threads = [__import__("threading").Thread(target=hostile) for _ in range(40)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        time.sleep(1.0)
        after = _rss(process.pid)
        assert after - baseline < 16 * 1024 * 1024, (baseline, after)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


async def test_the_command_timer_waits_for_data_and_says_421_when_it_fires(gateway) -> None:  # type: ignore[no-untyped-def]
    """The next-command timer (`smtp_timeout`) is shorter than the DATA deadline: it cut a
    message still arriving within its deadline, silently. It now waits while DATA runs, and
    when it fires at an idle client it answers 421 4.4.2 before closing."""
    from caducee.gateway.smtp import ListenerConfig, start_listener

    config = ListenerConfig(
        "submission",
        "127.0.0.1",
        free_port(),
        gateway.server_context,
        trusted_networks=["127.0.0.0/8"],
        timeout=2,
        data_timeout=12,
        hostname="t",
    )
    server = await start_listener(config, gateway.pipeline, gateway.authenticator)
    doctor = gateway.account("doctor")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]

    def slow_message_then_idle() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", config.port), timeout=15) as sock:
            file = sock.makefile("rb")
            file.readline()
            for line in (b"EHLO t\r\n", f"MAIL FROM:<{doctor}>\r\n".encode(), f"RCPT TO:<{patient}>\r\n".encode(), b"DATA\r\n"):
                sock.sendall(line)
                while file.readline()[3:4] == b"-":
                    pass
            head = f"From: {doctor}\r\nTo: {patient}\r\nSubject: lent\r\nMessage-ID: <slow-data@demo.mssante.fr>\r\n\r\n".encode()
            for piece in (head, b"Un message ", b"qui arrive ", b"lentement.\r\n"):
                sock.sendall(piece)
                time.sleep(1.2)  # 4.8 s in all: past the 2 s command timer, well within the 12 s DATA deadline
            sock.sendall(b".\r\n")
            accepted = file.readline()
            idle = file.readline()  # nothing more is sent: the command timer fires
            return accepted, idle

    try:
        accepted, idle = await asyncio.to_thread(slow_message_then_idle)
    finally:
        server.close()
        await server.wait_closed()
    assert accepted.startswith(b"250"), accepted
    assert idle.startswith(b"421 4.4.2"), idle


async def test_logging_in_has_one_deadline_however_the_client_trickles(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """`imap_login_timeout` bounds the whole time before login, not each command: complete
    commands sent slowly one after the other (each within the idle timer) do not hold an
    anonymous connection past it."""
    imap.settings = dataclasses.replace(imap.settings, imap_login_timeout=2, imap_command_timeout=60)

    def slow_commands() -> int:
        raw = Raw(gateway, login=False)
        for index in range(40):
            try:
                raw.send(b"n%d NOOP\r\n" % index)
            except OSError:
                return index
            time.sleep(0.25)
            raw.sock.settimeout(0.01)
            try:
                if raw.closed():
                    return index
            finally:
                raw.sock.settimeout(15)
        return -1

    sent = await asyncio.to_thread(slow_commands)
    assert 0 <= sent < 20, sent  # closed at about 2 s, long before 40 commands
