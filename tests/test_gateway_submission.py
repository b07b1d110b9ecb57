"""Submission over real sockets with clients nobody here wrote: smtplib and aiosmtplib."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import ssl
from email.policy import SMTP as SMTP_POLICY

import aiosmtplib
from mail import message


def tls(gateway) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return ssl.create_default_context(cafile=str(gateway.ca.files.cert))


def send_smtplib(gateway, login: tuple[str, str], msg, *, to: list[str] | None = None) -> dict:  # type: ignore[no-untyped-def]
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
        client.starttls(context=tls(gateway))
        client.login(*login)
        return client.send_message(msg, to_addrs=to)


async def test_doctor_writes_to_a_patient_with_smtplib(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    refused = await asyncio.to_thread(send_smtplib, gateway, doctor, message(doctor[0], patient))
    assert refused == {}
    stored = await gateway.inbox(patient)
    assert len(stored) == 1 and b"voici vos r" in stored[0]


async def test_implicit_tls_with_aiosmtplib(gateway) -> None:  # type: ignore[no-untyped-def]
    nurse = gateway.account("nurse")
    doctor = gateway.account("doctor")[0]
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.ports["submissions"], use_tls=True, tls_context=tls(gateway)) as client:
        await client.login(*nurse)
        errors, reply = await client.send_message(message(nurse[0], doctor))
    assert errors == {} and "queued as" in reply
    assert len(await gateway.inbox(doctor)) == 1


async def test_ehlo_advertises_what_is_implemented(gateway) -> None:  # type: ignore[no-untyped-def]
    def ehlo() -> tuple[str, str]:
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
            code, before = client.ehlo()
            client.starttls(context=tls(gateway))
            code, after = client.ehlo()
            return before.decode(), after.decode()

    before, after = await asyncio.to_thread(ehlo)
    assert "STARTTLS" in before and "AUTH" not in before
    assert "AUTH LOGIN PLAIN" in after and "STARTTLS" not in after
    for extension in ("SIZE 26214400", "8BITMIME", "ENHANCEDSTATUSCODES"):
        assert extension in after
    assert "SMTPUTF8" not in after and "PIPELINING" not in after


async def test_auth_before_starttls_and_relay_without_auth_are_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    def attempt() -> tuple[tuple[int, bytes], tuple[int, bytes], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
            client.ehlo()
            auth = client.docmd("AUTH", "PLAIN AGZvbwBiYXI=")
            mail = client.docmd("MAIL", "FROM:<sophie.bernard@demo.mssante.fr>")
            client.starttls(context=tls(gateway))
            client.ehlo()
            no_auth = client.docmd("MAIL", "FROM:<sophie.bernard@demo.mssante.fr>")
            return auth, mail, no_auth

    auth, mail, no_auth = await asyncio.to_thread(attempt)
    assert auth[0] == 530 and b"STARTTLS" in auth[1]
    assert mail[0] == 530
    assert no_auth[0] == 530 and b"5.7.0" in no_auth[1]


async def test_wrong_password_then_lockout(gateway) -> None:  # type: ignore[no-untyped-def]
    address, password = gateway.account("doctor")

    def auth_plain(secret: str) -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
            client.starttls(context=tls(gateway))
            client.ehlo()
            blob = base64.b64encode(f"\0{address}\0{secret}".encode()).decode()
            code, text = client.docmd("AUTH", f"PLAIN {blob}")
            return code, text.decode()

    results = [await asyncio.to_thread(auth_plain, "wrong") for _ in range(5)]
    assert [code for code, _ in results] == [535] * 5
    assert "5.7.8" in results[0][1]
    code, text = await asyncio.to_thread(auth_plain, password)  # even the right password waits now
    assert code == 454 and "4.7.0" in text and "try again in 15 min" in text
    other = gateway.account("nurse")
    assert (await asyncio.to_thread(lambda: _login_ok(gateway, other))) is True  # other accounts unaffected


def _login_ok(gateway, account: tuple[str, str]) -> bool:  # type: ignore[no-untyped-def]
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
        client.starttls(context=tls(gateway))
        client.login(*account)
        return True


async def test_sender_not_owned_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")
    nurse_address = gateway.account("nurse")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]

    def spoof_envelope() -> int:
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
            client.starttls(context=tls(gateway))
            client.login(*doctor)
            return client.docmd("MAIL", f"FROM:<{nurse_address}>")[0]

    assert await asyncio.to_thread(spoof_envelope) == 550
    forged_header = message(nurse_address, patient)

    def send_with_doctor_envelope() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
            client.starttls(context=tls(gateway))
            client.login(*doctor)
            try:
                client.sendmail(doctor[0], [patient], forged_header.as_bytes(policy=SMTP_POLICY))
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error
            return 250, b""

    code, text = await asyncio.to_thread(send_with_doctor_envelope)
    assert code == 550 and b"5.7.1" in text and nurse_address.encode() in text and b"not owned" in text
    assert await gateway.inbox(patient) == []


async def test_unknown_local_recipient_and_outside_trust_space_refused_at_rcpt(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")

    def rcpt(address: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
            client.starttls(context=tls(gateway))
            client.login(*doctor)
            client.mail(doctor[0])
            return client.rcpt(address)

    code, text = await asyncio.to_thread(rcpt, "nobody@demo.mssante.fr")
    assert code == 550 and b"5.1.1" in text
    code, text = await asyncio.to_thread(rcpt, "someone@gmail.com")
    assert code == 550 and b"5.7.1" in text and b"trust space" in text


async def test_a_storage_failure_is_a_temporary_error_and_nothing_is_stored(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")
    patient = gateway.credentials["patients"]["adult_1"]["address"]

    async def broken_writer(plans):  # type: ignore[no-untyped-def]
        raise ConnectionError("database unreachable")

    gateway.pipeline.committer._writer = broken_writer

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
            client.starttls(context=tls(gateway))
            client.login(*doctor)
            try:
                client.sendmail(doctor[0], [patient], message(doctor[0], patient).as_bytes(policy=SMTP_POLICY))
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error
            return 250, b""

    code, text = await asyncio.to_thread(send)
    assert code == 451 and b"4.3.0" in text  # the client keeps the message and retries
    assert await gateway.inbox(patient) == []
