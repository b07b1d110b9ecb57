"""Hostile input on the submission listener: each refused precisely, nothing else lost.

These talk raw SMTP over a TLS socket, because friendly clients fix what we want to send
broken (line endings, dot-stuffing)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl

import pytest

from caducee.gateway.inspect import MessageRejected, inspect_message

HEADERS = "From: {sender}\r\nTo: {rcpt}\r\nSubject: test\r\nMessage-ID: <{tag}@demo.mssante.fr>\r\n"


class RawSession:
    """A line-level SMTP client over STARTTLS, authenticated as the doctor."""

    def __init__(self, gateway) -> None:  # type: ignore[no-untyped-def]
        self.gateway = gateway
        self.sender, password = gateway.account("doctor")
        plain = socket.create_connection(("127.0.0.1", gateway.ports["submission"]), timeout=30)
        self.sock: socket.socket = plain
        self.file = plain.makefile("rb")
        self.read()
        self.command("EHLO test")
        self.command("STARTTLS")
        context = ssl.create_default_context(cafile=str(gateway.ca.files.cert))
        self.sock = context.wrap_socket(plain, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.command("EHLO test")
        blob = base64.b64encode(f"\0{self.sender}\0{password}".encode()).decode()
        assert self.command(f"AUTH PLAIN {blob}").startswith("235")

    def read(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode()
            lines.append(line.rstrip("\r\n"))
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read()

    def transaction(self, rcpt: str, data: bytes) -> str:
        assert self.command(f"MAIL FROM:<{self.sender}>").startswith("250")
        assert self.command(f"RCPT TO:<{rcpt}>").startswith("250")
        assert self.command("DATA").startswith("354")
        self.sock.sendall(data)
        return self.read()

    def close(self) -> None:
        self.sock.close()


def body(gateway, tag: str, text: bytes) -> bytes:  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    head = HEADERS.format(sender=gateway.account("doctor")[0], rcpt=patient, tag=tag).encode()
    return head + b"\r\n" + text


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        ("bare-lf", b"line one\nline two\r\n.\r\n", "554 5.6.0"),
        ("bare-cr", b"line one\rline two\r\n.\r\n", "554 5.6.0"),
        (
            "smuggling-lf-dot-crlf",
            b"hello\r\n\n.\r\nMAIL FROM:<x@demo.mssante.fr>\r\nRCPT TO:<y@demo.mssante.fr>\r\nDATA\r\nsmuggled\r\n.\r\n",
            "554 5.6.0",
        ),
        ("smuggling-crlf-dot-lf", b"hello\r\n.\nMAIL FROM:<x@demo.mssante.fr>\r\nDATA\r\nsmuggled\r\n.\r\n", "554 5.6.0"),
        ("line-over-998", b"x" * 1200 + b"\r\n.\r\n", "554 5.6.0"),
        ("dot-stuffed-terminator-lookalike", b"..\r\n.\n\r\n.\r\n", "554 5.6.0"),
    ],
)
async def test_hostile_data_is_refused_and_the_session_goes_on(gateway, name: str, payload: bytes, expected: str) -> None:  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"]["adult_1"]["address"]

    def run() -> tuple[str, str]:
        session = RawSession(gateway)
        try:
            refused = session.transaction(patient, body(gateway, name, payload))
            good = session.transaction(patient, body(gateway, name + "-ok", b"a clean message\r\n.\r\n"))
            return refused, good
        finally:
            session.close()

    refused, good = await asyncio.to_thread(run)
    assert refused.startswith(expected), refused
    assert good.startswith("250 2.0.0")
    stored = await gateway.inbox(patient)
    assert len(stored) == 1 and b"a clean message" in stored[0]  # the smuggled message never exists


def test_inspection_refuses_eight_bit_headers_and_broken_mime() -> None:
    def check(raw: bytes) -> str:
        with pytest.raises(MessageRejected) as caught:
            inspect_message(raw, max_size=1 << 20, hostname="h", add_missing_headers=True)
        return caught.value.decision.smtp_reply

    eight_bit = "From: a@demo.mssante.fr\r\nSubject: résultats\r\n\r\nx\r\n".encode()
    assert check(eight_bit).startswith("554 5.6.7")
    no_boundary = b"From: a@demo.mssante.fr\r\nContent-Type: multipart/mixed\r\n\r\nbody\r\n"
    assert check(no_boundary).startswith("554 5.6.0") and "malformed MIME" in check(no_boundary)
    missing_start = b'From: a@demo.mssante.fr\r\nContent-Type: multipart/mixed; boundary="zz"\r\n\r\nno parts at all\r\n'
    assert check(missing_start).startswith("554 5.6.0")
    two_froms = b"From: a@demo.mssante.fr\r\nFrom: b@demo.mssante.fr\r\n\r\nx\r\n"
    assert "exactly one From" in check(two_froms)
    deep = (
        b"From: a@demo.mssante.fr\r\n"
        + b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level) for level in range(30))
        + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    )
    assert check(deep).startswith("554 5.6.0") and "nested deeper than 20" in check(deep)
    many = b'From: a@demo.mssante.fr\r\nContent-Type: multipart/mixed; boundary="m"\r\n\r\n' + b"--m\r\n\r\nx\r\n" * 2500 + b"--m--\r\n"
    assert check(many).startswith("554 5.6.0") and "more than 2000 MIME parts" in check(many)
    crowded = b"From: a@demo.mssante.fr\r\n" + b"X-Filler: y\r\n" * 600 + b"\r\nbody\r\n"
    assert check(crowded).startswith("554 5.6.0") and "more than 500 header fields" in check(crowded)
    garbage = b"From: a@demo.mssante.fr\r\nthis is not a header\r\n\r\nbody\r\n"
    assert check(garbage).startswith("554 5.6.0") and "without a field name" in check(garbage)
    big = b"From: a@demo.mssante.fr\r\n\r\n" + b"y\r\n" * 600_000
    with pytest.raises(MessageRejected) as caught:
        inspect_message(big, max_size=1 << 20, hostname="h", add_missing_headers=True)
    assert caught.value.decision.smtp_reply.startswith("552 5.3.4")


async def test_size_limit_is_announced_and_enforced(gateway) -> None:  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"]["adult_1"]["address"]

    def run() -> str:
        session = RawSession(gateway)
        try:
            return session.command(f"MAIL FROM:<{session.sender}> SIZE={30 * 1024 * 1024}")
        finally:
            session.close()

    reply = await asyncio.to_thread(run)
    assert reply.startswith("552 5.3.4")
    assert await gateway.inbox(patient) == []


async def test_dot_stuffing_is_undone_and_an_empty_message_is_answered(gateway) -> None:  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"]["adult_1"]["address"]

    def run() -> tuple[str, str]:
        session = RawSession(gateway)
        try:
            # The client stuffs lines that start with a dot: ".a" is sent as "..a".
            stuffed = session.transaction(patient, body(gateway, "dots", b"..a leading dot\r\n...two dots\r\nend\r\n.\r\n"))
            empty = session.transaction(patient, b".\r\n")
            return stuffed, empty
        finally:
            session.close()

    stuffed, empty = await asyncio.to_thread(run)
    assert stuffed.startswith("250 2.0.0")
    assert empty.startswith("550 5.6.0") and "From header" in empty
    stored = await gateway.inbox(patient)
    assert b"\r\n.a leading dot\r\n..two dots\r\nend\r\n" in stored[0]


async def test_one_client_address_cannot_hold_more_than_its_share_of_connections(gateway) -> None:  # type: ignore[no-untyped-def]
    from conftest import free_port

    from caducee.crypto.tls import server_context
    from caducee.gateway.smtp import ListenerConfig, start_listener

    server_cert = gateway.ca.issue("limit", "localhost", "Caducee", server=True, dns=["localhost"], ips=["127.0.0.1"])
    config = ListenerConfig("submission", "127.0.0.1", free_port(), server_context(server_cert), max_connections_per_client=3)
    listener = await start_listener(config, gateway.pipeline, gateway.authenticator)
    try:

        async def greeting() -> tuple[bytes, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", config.port)
            return await reader.readline(), writer

        held = [await greeting() for _ in range(3)]
        assert all(line.startswith(b"220 ") for line, _ in held)
        refused, extra = await greeting()
        assert refused.startswith(b"421 4.7.0 Too many connections")
        extra.close()
        held[0][1].close()
        await held[0][1].wait_closed()
        await asyncio.sleep(0.2)
        again, writer = await greeting()  # a connection that ends frees its place
        assert again.startswith(b"220 ")
        for _, other in [*held[1:], (again, writer)]:
            other.close()
    finally:
        listener.close()
        await listener.wait_closed()
