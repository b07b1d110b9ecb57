"""Hostile input on the IMAP listener, over a raw socket: each case gets a precise answer,
the connection stays usable where it can, and nothing stored is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl

import pytest
from conftest import free_port


class Raw:
    """A bare IMAP connection: bytes in, lines out (after STARTTLS and LOGIN if asked)."""

    def __init__(self, gateway, *, login: bool = True) -> None:  # type: ignore[no-untyped-def]
        self.sock = socket.create_connection(("127.0.0.1", gateway.ports["imap"]), timeout=15)
        self.buffer = b""
        self.greeting = self.line()
        if login:
            self.send(b"s STARTTLS\r\n")
            assert self.until(b"s ").startswith(b"s OK")
            context = ssl.create_default_context(cafile=str(gateway.ca.files.cert))
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
            address, password = gateway.account("doctor")
            self.send(b'l LOGIN "%s" "%s"\r\n' % (address.encode(), password.encode()))
            assert self.until(b"l ").startswith(b"l OK")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def until(self, prefix: bytes) -> bytes:
        """Lines until one starting with `prefix` (the tagged reply); returns it."""
        while True:
            line = self.line()
            if line.startswith(prefix):
                return line

    def closed(self) -> bool:
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False


CONNECTIONS = 2000

CASES = [
    # (what is sent after LOGIN, the reply line that must come back)
    (b"a1 SELECT INBOX\r\na2 FETCH 0:3 FLAGS\r\n", b"a2 BAD bad sequence set"),
    (b"a1 SELECT INBOX\r\na2 FETCH 1:x FLAGS\r\n", b"a2 BAD bad sequence set"),
    (b"a2 FETCH 1 FLAGS\r\n", b"a2 BAD FETCH is not allowed in the authenticated state"),
    (b"a2 LIST " + b"(" * 50 + b")" * 50 + b' ""\r\n', b"a2 BAD"),
    (b"a2 SEARCH " + b"NOT " * 100 + b"ALL\r\n", b"a2 BAD"),
    (b"a2 SELECT \xc3\xa9t\xc3\xa9\xff\r\n", b"a2 BAD 8-bit characters in an atom"),
    (b'a2 SELECT "Dossier inconnu"\r\n', b"a2 NO [NONEXISTENT]"),
    (b"a2 XYZZY\r\n", b"a2 BAD unknown command"),
    (b"a2 LOGIN a b\r\n", b"a2 BAD LOGIN is not allowed in the authenticated state"),
    (b"a2 STORE 1 +FLAGS (\\Seen)\r\n", b"a2 BAD STORE is not allowed"),
    (b"a2 APPEND INBOX (\\Recent) {5+}\r\nhello\r\n", b"a2 NO flag \\Recent cannot be set"),
    (b"a1 SELECT INBOX\r\na2 UID FETCH 1:* (BODY[0])\r\n", b"a2 BAD part numbers start at 1"),
    (b"\r\n", b"* BAD missing or invalid tag"),
]


@pytest.mark.parametrize(("sent", "expected"), CASES)
async def test_bad_commands_get_precise_answers(gateway, imap, sent: bytes, expected: bytes) -> None:  # type: ignore[no-untyped-def]
    def script() -> tuple[bytes, bytes]:
        client = Raw(gateway)
        client.send(sent)
        reply = client.until(expected[:2])
        client.send(b"z NOOP\r\n")  # the connection is still in step
        return reply, client.until(b"z ")

    reply, after = await asyncio.to_thread(script)
    assert reply.startswith(expected), reply
    assert after.startswith(b"z OK")


async def test_enormous_literal_is_refused_before_it_is_read(gateway, imap, settings) -> None:  # type: ignore[no-untyped-def]
    def script() -> tuple[bytes, bytes, bytes]:
        client = Raw(gateway)
        client.send(b"a1 APPEND INBOX {%d}\r\n" % (settings.max_message_size + 1))
        refused = client.line()  # no "+": the client must not send it
        client.send(b"a2 APPEND INBOX {999999999999}\r\n")
        too_many_digits = client.until(b"a2 ")
        client.send(b"a3 NOOP\r\n")
        return refused, too_many_digits, client.until(b"a3 ")

    refused, digits, after = await asyncio.to_thread(script)
    assert refused.startswith(b"a1 NO [TOOBIG]")
    assert digits.startswith(b"a2 ")  # a 12-digit literal is no literal: the line is BAD, not a 1 TB read
    assert after == b"a3 OK NOOP completed"


async def test_non_synchronising_literal_over_the_limit_is_drained(gateway, imap, settings) -> None:  # type: ignore[no-untyped-def]
    def script() -> tuple[bytes, bytes]:
        client = Raw(gateway)
        size = 70_000  # over the 64 KB limit of a literal outside APPEND
        client.send(b"a1 SELECT {%d+}\r\n" % size + b"x" * size + b"\r\n")
        refused = client.until(b"a1 ")
        client.send(b"a2 NOOP\r\n")
        return refused, client.until(b"a2 ")

    refused, after = await asyncio.to_thread(script)
    assert refused.startswith(b"a1 NO [TOOBIG]")
    assert after == b"a2 OK NOOP completed"


async def test_unterminated_literal_and_huge_line_close_the_connection(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> tuple[bool, bytes, bool]:
        client = Raw(gateway)
        client.send(b"a1 APPEND INBOX {100}\r\n")
        client.line()  # "+ OK"
        client.send(b"only a few bytes")
        client.sock.shutdown(socket.SHUT_WR)
        unterminated = client.closed()
        other = Raw(gateway)
        other.send(b"a1 NOOP " + b"x" * 200_000 + b"\r\n")
        bye = other.line()
        return unterminated, bye, other.closed()

    unterminated, bye, closed = await asyncio.to_thread(script)
    assert unterminated
    assert bye == b"* BYE ligne trop longue / line too long" and closed


async def test_no_message_is_lost_by_a_broken_append(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> bytes:
        client = Raw(gateway)
        client.send(b"a1 APPEND INBOX {5+}\r\nhello\r\n")
        assert client.until(b"a1 ").startswith(b"a1 OK [APPENDUID")
        broken = Raw(gateway)
        broken.send(b"b1 APPEND INBOX {50+}\r\nonly part")
        broken.sock.close()
        client.send(b"a2 STATUS INBOX (MESSAGES)\r\n")
        return client.until(b"* STATUS")

    assert await asyncio.to_thread(script) == b"* STATUS INBOX (MESSAGES 1)"


async def test_starttls_with_pipelined_plaintext_is_refused(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """Commands smuggled after STARTTLS in the same packet must not run inside TLS (CVE-2011-0411 style)."""

    def script() -> tuple[bytes, bool]:
        client = Raw(gateway, login=False)
        client.send(b"s STARTTLS\r\nx LOGIN a b\r\n")
        bye = client.line()
        return bye, client.closed()

    bye, closed = await asyncio.to_thread(script)
    assert bye.startswith(b"* BYE") and closed


async def test_8bit_atoms_and_nul_bytes(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> list[bytes]:
        client = Raw(gateway)
        replies = []
        for line in (b"a1 NOOP\xff\xfe\r\n", b"a2 SELECT IN\x00BOX\r\n", b"\xe9\xe9 NOOP\r\n"):
            client.send(line)
            replies.append(client.line())
        return replies

    replies = await asyncio.to_thread(script)
    assert all(b" BAD " in reply or reply.startswith(b"* BAD") for reply in replies), replies


async def test_idle_connections_are_closed(gateway, engine, settings) -> None:  # type: ignore[no-untyped-def]
    from caducee.imap.server import start_imap

    quick = dataclasses.replace(settings, imap_login_timeout=1, imap_timeout=2)
    server = await start_imap(quick, engine, gateway.cipher, gateway.server_context, host="127.0.0.1", imap_port=free_port(), imaps_port=0)
    gateway.ports["imap"] = server.servers[0].sockets[0].getsockname()[1]
    try:

        def script() -> tuple[bytes, bytes]:
            silent = Raw(gateway, login=False)
            before_login = silent.line()
            idler = Raw(gateway)
            idler.send(b"i1 SELECT INBOX\r\ni2 IDLE\r\n")
            idler.until(b"+ ")
            return before_login, idler.line()

        before_login, in_idle = await asyncio.to_thread(script)
        assert before_login.startswith(b"* BYE") and b"autologout" in before_login
        assert in_idle.startswith(b"* BYE") and b"autologout" in in_idle
    finally:
        await server.stop()


async def test_thousands_of_connections_from_one_address(gateway, engine, settings) -> None:  # type: ignore[no-untyped-def]
    """Past the per-address ceiling a connection gets BYE at once; those inside keep working."""
    from caducee.imap.server import start_imap

    capped = dataclasses.replace(settings, imap_max_connections_per_client=50)
    server = await start_imap(capped, engine, gateway.cipher, gateway.server_context, host="127.0.0.1", imap_port=free_port(), imaps_port=0)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:

        async def one() -> tuple[bytes, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return await reader.readline(), writer

        opened = await asyncio.gather(*(one() for _ in range(CONNECTIONS)))
        greetings = [greeting for greeting, _ in opened]
        assert sum(g.startswith(b"* OK") for g in greetings) == 50
        assert sum(g.startswith(b"* BYE trop de connexions") for g in greetings) == CONNECTIONS - 50
        for _, writer in opened:
            writer.close()
    finally:
        await server.stop()


async def test_expunge_by_another_session_waits_for_a_command_that_allows_it(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH; numbers stay valid until it is sent."""

    def script() -> dict[str, list[bytes]]:
        a, b = Raw(gateway), Raw(gateway)
        a.send(b"a1 APPEND INBOX {5+}\r\nfirst\r\na2 APPEND INBOX {6+}\r\nsecond\r\na3 SELECT INBOX\r\n")
        a.until(b"a3 ")
        b.send(b"b1 SELECT INBOX\r\nb2 STORE 1 +FLAGS.SILENT (\\Deleted)\r\nb3 EXPUNGE\r\n")
        b.until(b"b3 ")
        out: dict[str, list[bytes]] = {}
        for tag, command in ((b"a4", b"FETCH 1:* (UID FLAGS)"), (b"a5", b"SEARCH ALL"), (b"a6", b"NOOP"), (b"a7", b"FETCH 1:* (UID)")):
            a.send(tag + b" " + command + b"\r\n")
            lines = []
            while True:
                line = a.line()
                lines.append(line)
                if line.startswith(tag + b" "):
                    break
            out[tag.decode()] = lines
        return out

    out = await asyncio.to_thread(script)
    assert not any(b"EXPUNGE" in line for line in out["a4"] + out["a5"])
    assert b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))" in out["a4"] and b"* 2 FETCH (UID 2 FLAGS (\\Recent))" in out["a4"]
    assert b"* SEARCH 1 2" in out["a5"]  # the client's numbering still holds
    assert b"* 1 EXPUNGE" in out["a6"]
    assert out["a7"][0] == b"* 1 FETCH (UID 2)"
