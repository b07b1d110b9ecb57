"""The IMAP server driven by clients nobody here wrote: imaplib and aioimaplib."""

from __future__ import annotations

import asyncio
import imaplib
import ssl

from mail import message
from test_gateway_submission import send_smtplib


def tls(gateway) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return ssl.create_default_context(cafile=str(gateway.ca.files.cert))


def connect(gateway, who: str = "doctor") -> imaplib.IMAP4:  # type: ignore[no-untyped-def]
    client = imaplib.IMAP4("127.0.0.1", gateway.ports["imap"], timeout=30)
    client.starttls(ssl_context=tls(gateway))
    client.login(*gateway.account(who))
    return client


async def test_a_message_sent_over_smtp_is_read_over_imap(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    nurse, doctor = gateway.account("nurse"), gateway.account("doctor")
    await asyncio.to_thread(send_smtplib, gateway, nurse, message(nurse[0], doctor[0]))

    def read() -> tuple:
        client = connect(gateway)
        try:
            typ, data = client.select("INBOX")
            assert typ == "OK" and data == [b"1"]
            typ, fetched = client.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
            typ2, body = client.fetch("1", "(BODY[])")
            typ3, flags = client.fetch("1", "(FLAGS)")
            return fetched, body, flags
        finally:
            client.logout()

    fetched, body, flags = await asyncio.to_thread(read)
    print(fetched, body, flags)
    assert b"ENVELOPE" in fetched[0]
    assert b"\\Seen" in flags[0]
