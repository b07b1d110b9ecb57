"""Mail clients signing in with a Pro Santé Connect token: AUTH OAUTHBEARER / XOAUTH2 on
submission and AUTHENTICATE OAUTHBEARER / XOAUTH2 on IMAP, driven by curl, imaplib and
smtplib over real sockets; only after TLS; RFC 7628's JSON error on failure; the token's
professional must own the mailbox; the passwords' lock-out."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import imaplib
import json
import smtplib
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psc import psc_settings, token_for

from caducee import demo
from caducee.annuaire import service
from caducee.annuaire.kinds import MailboxType

DOCTOR, NURSE, PHARMACIST = "8" + demo.DOCTOR_RPPS, "8" + demo.NURSE_RPPS, "8" + demo.PHARMACIST_RPPS
SOPHIE, KARIM, CABINET, PHARMACY = (
    "sophie.bernard@demo.mssante.fr",
    "karim.haddad@demo.mssante.fr",
    "cabinet.lilas@demo.mssante.fr",
    "pharmacie.canal@demo.mssante.fr",
)


@dataclasses.dataclass
class Mail:
    gateway: Any
    smtp_port: int
    imap_port: int
    imaps_port: int
    cafile: str
    standin: Any

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)


@pytest.fixture
async def mail(gateway, engine, settings, standin) -> AsyncIterator[Mail]:  # type: ignore[no-untyped-def]
    """Submission and IMAP with token logins, beside the gateway and sharing its lock-out."""
    from conftest import free_port

    from caducee.gateway.smtp import ListenerConfig, start_listener
    from caducee.identity.runtime import build_identity
    from caducee.imap.server import start_imap

    configured = psc_settings(settings, standin, imap_poll_seconds=0.2)
    identity = build_identity(engine, configured)
    async with engine.begin() as conn:  # an organisation mailbox the annuaire attaches to the pharmacist
        await service.add_mailbox(
            conn, address="officine.garde@demo.mssante.fr", type=MailboxType.ORG, display_name="Garde", professional=PHARMACIST
        )
    throttle = gateway.authenticator.throttle
    config = ListenerConfig("submission", "127.0.0.1", free_port(), gateway.server_context, hostname="localhost")
    smtp = await start_listener(config, gateway.pipeline, gateway.authenticator, tokens=identity.mail(throttle, "SMTP"))
    imap = await start_imap(
        configured,
        engine,
        gateway.cipher,
        gateway.server_context,
        authenticator=gateway.authenticator,
        tokens=identity.mail(throttle, "IMAP"),
        host="127.0.0.1",
        imap_port=free_port(),
        imaps_port=free_port(),
    )
    try:
        yield Mail(
            gateway,
            config.port,
            imap.servers[0].sockets[0].getsockname()[1],
            imap.servers[1].sockets[0].getsockname()[1],
            str(gateway.ca.files.cert),
            standin,
        )
    finally:
        await imap.stop()
        smtp.close()
        await smtp.wait_closed()
        await identity.close()


def oauthbearer(address: str | None, token: str) -> bytes:
    return (f"n,a={address}," if address else "n,,").encode() + b"\x01host=localhost\x01auth=Bearer " + token.encode() + b"\x01\x01"


def xoauth2(address: str, token: str) -> bytes:
    return f"user={address}\x01auth=Bearer {token}\x01\x01".encode()


def curl(mail: Mail, url: str, address: str, token: str, mechanism: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--ssl-reqd", "--cacert", mail.cafile, "--max-time", "30", url, "--user", f"{address}:"]
        + ["--oauth2-bearer", token, "--login-options", f"AUTH={mechanism}", *extra],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
async def test_curl_reads_with_imap_and_sends_with_smtp_using_a_token(mail: Mail, tmp_path, mechanism: str) -> None:  # type: ignore[no-untyped-def]
    token = await token_for(mail.standin, DOCTOR)
    patient = mail.gateway.credentials["patients"]["adult_1"]["address"]
    message = tmp_path / "message.eml"
    message.write_bytes(f"From: {SOPHIE}\r\nTo: {patient}\r\nSubject: jeton {mechanism}\r\n\r\nBonjour.\r\n".encode())
    sent = await asyncio.to_thread(
        curl,
        mail,
        f"smtp://127.0.0.1:{mail.smtp_port}",
        SOPHIE,
        token,
        mechanism,
        "--mail-from",
        SOPHIE,
        "--mail-rcpt",
        patient,
        "--upload-file",
        str(message),
    )
    assert sent.returncode == 0, sent.stderr
    assert any(f"jeton {mechanism}".encode() in raw for raw in await mail.gateway.inbox(patient))
    listed = await asyncio.to_thread(
        curl, mail, f"imap://127.0.0.1:{mail.imap_port}/", CABINET, token, mechanism
    )  # her practice's CAB mailbox
    assert listed.returncode == 0, listed.stderr
    assert "INBOX" in listed.stdout
    implicit = await asyncio.to_thread(
        curl, mail, f"imaps://127.0.0.1:{mail.imaps_port}/INBOX?ALL", SOPHIE, token, mechanism, "--request", "SEARCH ALL"
    )
    assert implicit.returncode == 0 and "SEARCH" in implicit.stdout, implicit.stderr
    refused = await asyncio.to_thread(curl, mail, f"imap://127.0.0.1:{mail.imap_port}/", PHARMACY, token, mechanism)
    assert refused.returncode != 0  # not her mailbox


async def test_imaplib_authenticates_and_a_failure_gets_rfc7628s_json_challenge(mail: Mail) -> None:
    doctor = await token_for(mail.standin, DOCTOR)
    pharmacist = await token_for(mail.standin, PHARMACIST)
    nurse = await token_for(mail.standin, NURSE)

    def script() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", mail.imap_port, timeout=30) as client:
            assert "AUTH=OAUTHBEARER" not in client.capabilities  # before TLS: neither offered...
            typ, data = client._simple_command("AUTHENTICATE", "OAUTHBEARER", base64.b64encode(oauthbearer(SOPHIE, doctor)).decode())
            seen["before_tls"] = (typ, data)  # ...nor accepted
        with imaplib.IMAP4("127.0.0.1", mail.imap_port, timeout=30) as client:
            client.starttls(ssl_context=mail.context())
            assert {"AUTH=OAUTHBEARER", "AUTH=XOAUTH2", "AUTH=PLAIN"} <= set(client.capabilities)
            seen["ok"] = client.authenticate(
                "OAUTHBEARER", lambda _challenge: oauthbearer(None, doctor)
            )  # authzid omitted: her PER mailbox
            seen["select"] = client.select("INBOX")
        with imaplib.IMAP4_SSL("127.0.0.1", mail.imaps_port, ssl_context=mail.context(), timeout=30) as client:
            seen["org"] = client.authenticate("XOAUTH2", lambda _challenge: xoauth2("officine.garde@demo.mssante.fr", pharmacist))
        challenges: list[bytes] = []

        def answer(challenge: bytes) -> bytes:
            challenges.append(challenge)
            return oauthbearer(CABINET, nurse) if len(challenges) == 1 else b"\x01"

        with imaplib.IMAP4_SSL("127.0.0.1", mail.imaps_port, ssl_context=mail.context(), timeout=30) as client:
            try:
                client.authenticate("OAUTHBEARER", answer)
            except imaplib.IMAP4.error as error:
                seen["refused"] = str(error)
        seen["challenges"] = challenges
        return seen

    seen = await asyncio.to_thread(script)
    assert seen["before_tls"][0] == "NO" and b"PRIVACYREQUIRED" in seen["before_tls"][1][0]
    assert seen["ok"][0] == "OK" and seen["select"][0] == "OK" and seen["org"][0] == "OK"
    assert "AUTHENTICATIONFAILED" in seen["refused"]  # the nurse does not own the practice's mailbox
    assert json.loads(seen["challenges"][1]) == {
        "status": "invalid_token",
        "schemes": "bearer",
        "scope": "openid scope_all",
        "openid-configuration": mail.standin.discovery(),
    }


async def test_smtplib_xoauth2_and_the_error_dance(mail: Mail) -> None:
    doctor = await token_for(mail.standin, DOCTOR)
    expired = await token_for(mail.standin, DOCTOR, fault="expired")

    def script() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with smtplib.SMTP("127.0.0.1", mail.smtp_port, timeout=30) as client:
            client.ehlo()
            seen["plain_features"] = client.esmtp_features.get("auth", "")
            seen["before_tls"] = client.docmd("AUTH", "XOAUTH2 " + base64.b64encode(xoauth2(SOPHIE, doctor)).decode())
        with smtplib.SMTP("127.0.0.1", mail.smtp_port, timeout=30) as client:
            client.starttls(context=mail.context())
            client.ehlo()
            seen["features"] = client.esmtp_features["auth"]
            seen["ok"] = client.auth("XOAUTH2", lambda challenge=None: xoauth2(SOPHIE, doctor).decode())
        challenges: list[str] = []

        def answer(challenge: bytes | None = None) -> str:
            if challenge is None:
                return oauthbearer(SOPHIE, expired).decode()
            challenges.append(challenge.decode())
            return "\x01"

        with smtplib.SMTP("127.0.0.1", mail.smtp_port, timeout=30) as client:
            client.starttls(context=mail.context())
            client.ehlo()
            try:
                client.auth("OAUTHBEARER", answer)
            except smtplib.SMTPAuthenticationError as error:
                seen["refused"] = (error.smtp_code, error.smtp_error)
        seen["challenges"] = challenges
        return seen

    seen = await asyncio.to_thread(script)
    assert "XOAUTH2" not in seen["plain_features"] and seen["before_tls"][0] == 530
    assert "OAUTHBEARER" in seen["features"] and "XOAUTH2" in seen["features"]
    assert seen["ok"][0] == 235
    assert seen["refused"][0] == 535 and b"5.7.8" in seen["refused"][1]
    assert json.loads(seen["challenges"][0])["status"] == "invalid_token"


async def test_failed_tokens_lock_the_account_for_passwords_too(mail: Mail) -> None:
    good = await token_for(mail.standin, NURSE)
    address, password = mail.gateway.account("nurse")

    def script() -> list[Any]:
        answers = []
        for n in range(6):
            with imaplib.IMAP4_SSL("127.0.0.1", mail.imaps_port, ssl_context=mail.context(), timeout=30) as client:
                token = "forged.token.value" if n < 5 else good
                try:
                    answers.append(
                        client.authenticate("XOAUTH2", lambda challenge, token=token: xoauth2(address, token) if not challenge else b"")
                    )
                except imaplib.IMAP4.error as error:
                    answers.append(str(error))
        with smtplib.SMTP("127.0.0.1", mail.smtp_port, timeout=30) as client:
            client.starttls(context=mail.context())
            try:
                client.login(address, password)
            except smtplib.SMTPAuthenticationError as error:
                answers.append((error.smtp_code, error.smtp_error))
        return answers

    answers = await asyncio.to_thread(script)
    assert all("AUTHENTICATIONFAILED" in str(answer) for answer in answers[:5])
    assert "UNAVAILABLE" in str(answers[5])  # locked: even the right token waits
    assert answers[6][0] == 454  # and so does the password, on SMTP


async def test_hostile_sasl_input(mail: Mail) -> None:
    def script() -> list[bytes]:
        out = []
        raw = socket.create_connection(("127.0.0.1", mail.imaps_port), timeout=15)
        sock = mail.context().wrap_socket(raw, server_hostname="localhost")
        sock.recv(4096)
        sock.sendall(b"a AUTHENTICATE OAUTHBEARER\r\n")
        out.append(sock.recv(4096))  # "+ "
        sock.sendall(b"A" * 100_000 + b"\r\n")
        out.append(sock.recv(4096))
        sock.close()
        raw = socket.create_connection(("127.0.0.1", mail.imaps_port), timeout=15)
        sock = mail.context().wrap_socket(raw, server_hostname="localhost")
        sock.recv(4096)
        sock.sendall(b"b AUTHENTICATE XOAUTH2 !!notbase64!!\r\n")
        out.append(sock.recv(4096))
        sock.close()
        with smtplib.SMTP("127.0.0.1", mail.smtp_port, timeout=30) as client:
            client.starttls(context=mail.context())
            client.ehlo()
            out.append(str(client.docmd("AUTH", "OAUTHBEARER " + "A" * 13_000)).encode())
            out.append(str(client.docmd("AUTH", "OAUTHBEARER bm90IGEgbWVzc2FnZQ==")).encode())
            out.append(str(client.docmd("AQ==")).encode())  # the dummy ^A answer, base64
            out.append(str(client.noop()).encode())  # the session is still usable
        return out

    out = await asyncio.to_thread(script)
    assert out[0].startswith(b"+")
    assert b"BYE" in out[1]
    assert out[2].startswith(b"b BAD")
    assert b"500" in out[3]
    assert b"334" in out[4] and b"535" in out[5] and b"250" in out[6]


async def test_tokens_are_not_offered_when_psc_is_not_configured(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> tuple[list[str], str]:
        context = ssl.create_default_context(cafile=str(gateway.ca.files.cert))
        with imaplib.IMAP4("127.0.0.1", gateway.ports["imap"], timeout=30) as client:
            client.starttls(ssl_context=context)
            capabilities = list(client.capabilities)
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
            client.starttls(context=context)
            client.ehlo()
            return capabilities, client.esmtp_features["auth"]

    capabilities, auth = await asyncio.to_thread(script)
    assert "AUTH=PLAIN" in capabilities and "AUTH=OAUTHBEARER" not in capabilities
    assert "PLAIN" in auth and "OAUTHBEARER" not in auth and "XOAUTH2" not in auth


async def test_garbage_naming_no_mailbox_locks_only_its_sender(mail: Mail) -> None:
    """An OAUTHBEARER message without authzid (or garbage) names no account: its failures
    count against the sender's address, so an attacker elsewhere cannot lock out every
    client that leaves the authzid out (it is optional, RFC 7628 3.1)."""
    good = await token_for(mail.standin, DOCTOR)

    def script() -> tuple[list[bytes], Any]:
        refused = []
        for _ in range(6):
            raw = socket.create_connection(("127.0.0.1", mail.imaps_port), timeout=15, source_address=("127.0.0.2", 0))
            sock = mail.context().wrap_socket(raw, server_hostname="localhost")
            sock.recv(4096)
            sock.sendall(b"a AUTHENTICATE OAUTHBEARER " + base64.b64encode(b"garbage") + b"\r\n")
            refused.append(sock.recv(4096))
            sock.close()
        with imaplib.IMAP4_SSL("127.0.0.1", mail.imaps_port, ssl_context=mail.context(), timeout=30) as client:
            answer = client.authenticate("OAUTHBEARER", lambda challenge: oauthbearer(None, good) if not challenge else b"")
        return refused, answer

    refused, answer = await asyncio.to_thread(script)
    assert all(b"NO" in line or b"+" in line for line in refused)
    assert answer[0] == "OK"  # the doctor, from another address, is not locked out
