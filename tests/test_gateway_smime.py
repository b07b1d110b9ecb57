"""S/MIME through the gateway: what users send is signed and encrypted, what other operators
send is verified and decrypted; OpenSSL's command line checks our output and makes our input."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import smtplib
import ssl
import subprocess
import sys
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import aiosmtplib
import pytest
from cryptography import x509
from mail import message

from caducee.crypto import jobs
from caducee.crypto.pki import Issuer, Pair, TrustSpace, development_space, init_pki
from caducee.crypto.tls import client_context

PEER = "dr.durand@autre-operateur.mssante.fr"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def gateway(engine, settings, tmp_path: Path, smime_template: Path):  # type: ignore[no-untyped-def]
    from conftest import RunningGateway

    running = await RunningGateway(engine, settings, tmp_path, smime_template).start(smime=True)
    try:
        yield running
    finally:
        await running.stop()


class Openssl:
    """`openssl cms` on the gateway's trust space."""

    def __init__(self, gateway) -> None:  # type: ignore[no-untyped-def]
        self.space, passphrase = development_space(gateway.settings)
        self.passin = f"pass:{passphrase.decode()}"
        self.issuer = Issuer(self.space, passphrase)

    def run(self, *args: str, stdin: bytes) -> bytes:
        done = subprocess.run(["openssl", "cms", *args], input=stdin, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout

    def fails(self, *args: str, stdin: bytes) -> bool:
        return subprocess.run(["openssl", "cms", *args], input=stdin, capture_output=True).returncode != 0

    def decrypt(self, data: bytes, pair: Pair) -> bytes:
        return self.run("-decrypt", "-recip", str(pair.cert), "-inkey", str(pair.key), "-passin", self.passin, stdin=data)

    def verify(self, data: bytes, signer_out: Path) -> bytes:
        return self.run("-verify", "-CAfile", str(self.space.anchors), "-purpose", "smimesign", "-signer", str(signer_out), stdin=data)

    def sign(self, data: bytes, pair: Pair) -> bytes:
        return self.run(
            "-sign",
            "-signer",
            str(pair.cert),
            "-inkey",
            str(pair.key),
            "-passin",
            self.passin,
            "-certfile",
            str(self.space.org_ca.cert),
            stdin=data,
        )

    def encrypt(self, data: bytes, *certs: Path) -> bytes:
        return self.run("-encrypt", "-aes256", *map(str, certs), stdin=data)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def with_headers(entity: bytes, sender: str, to: str, subject: str = "Compte rendu") -> bytes:
    """What a mail client sends: its own headers in front of the S/MIME entity OpenSSL made."""
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 10:00:00 +0100\r\n"
        f"Message-ID: <{os.urandom(6).hex()}@autre-operateur.mssante.fr>\r\n"
    )
    return head.encode() + crlf(entity)


def submit(gateway, who: str, rcpts: list[str], data: bytes, sender: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    address, password = gateway.account(who)
    context = ssl.create_default_context(cafile=str(gateway.ca.files.cert))
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"]) as client:
        client.starttls(context=context)
        client.login(address, password)
        return client.sendmail(sender or address, rcpts, data)


async def send_mx(gateway, rcpts: list[str], data: bytes, sender: str = PEER):  # type: ignore[no-untyped-def]
    context = client_context(gateway.ca.files.cert, gateway.peer)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.ports["mx"], start_tls=True, tls_context=context) as client:
        return await client.sendmail(sender, rcpts, data)


def subject_of(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()


# ---- outbound: what our users send -----------------------------------------------------------


async def test_plain_mail_is_signed_for_held_keys_and_encrypted_for_own_keys(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tools = Openssl(gateway)
    doctor, nurse = gateway.account("doctor")[0], gateway.account("nurse")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    text = message(doctor, f"{patient}, {nurse}", "Compte rendu", "Le compte rendu de consultation est joint.\n")
    await asyncio.to_thread(submit, gateway, "doctor", [patient, nurse], text.as_bytes(policy=SMTP_POLICY))

    # The patient's key is ours: the stored form is signed and readable (sealed at rest).
    [for_patient] = await gateway.inbox(patient)
    verified = tools.verify(for_patient, tmp_path / "signer.pem")
    assert b"Le compte rendu de consultation" in verified
    # The doctor keeps her own key: the operator's certificate signed for her.
    assert subject_of(tmp_path / "signer.pem") == subject_of(tools.space.operator_smime.cert)

    # The nurse keeps his own key: encrypted to him, and to the doctor for her own records.
    [for_nurse] = await gateway.inbox(nurse)
    assert b"compte rendu de consultation" not in for_nurse.lower() and b"application/pkcs7-mime" in for_nurse
    assert b"Subject: Compte rendu" in for_nurse  # the outer headers stay readable
    for reader in ("karim.haddad", "sophie.bernard"):
        decrypted = tools.decrypt(for_nurse, tools.space.handed_out(f"{reader}@demo.mssante.fr"))
        assert b"Le compte rendu de consultation" in tools.verify(decrypted, tmp_path / "signer2.pem")


async def test_an_organisation_mailbox_signs_with_its_own_certificate(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tools = Openssl(gateway)
    pharmacy, doctor = gateway.account("pharmacy")[0], gateway.account("doctor")[0]
    text = message(pharmacy, doctor, "Ordonnance prête", "L'ordonnance de Mme Martin est prête.\n")
    await asyncio.to_thread(submit, gateway, "pharmacy", [doctor], text.as_bytes(policy=SMTP_POLICY))
    [stored] = await gateway.inbox(doctor)
    decrypted = tools.decrypt(stored, tools.space.handed_out(doctor))
    assert b"ordonnance de Mme Martin" in tools.verify(decrypted, tmp_path / "signer.pem")
    signer = x509.load_pem_x509_certificate((tmp_path / "signer.pem").read_bytes())
    assert signer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.RFC822Name) == [pharmacy]


async def test_mail_the_client_already_protected_passes_untouched(gateway) -> None:  # type: ignore[no-untyped-def]
    tools = Openssl(gateway)
    nurse = gateway.account("nurse")[0]
    patient = gateway.credentials["patients"]["adult_2"]["address"]
    entity = tools.sign(b"Content-Type: text/plain; charset=utf-8\r\n\r\nPansement a refaire jeudi.\r\n", tools.space.handed_out(nurse))
    sent = with_headers(entity, nurse, patient)
    await asyncio.to_thread(submit, gateway, "nurse", [patient], sent)
    assert await gateway.inbox(patient) == [sent]


async def test_a_remote_recipient_without_certificate_is_refused_by_default(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    text = message(doctor, PEER, "Avis", "Pouvez-vous voir ce patient ?\n").as_bytes(policy=SMTP_POLICY)
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await asyncio.to_thread(submit, gateway, "doctor", [PEER], text)
    assert caught.value.smtp_code == 550 and b"5.7.5" in caught.value.smtp_error and b"certificat" in caught.value.smtp_error
    # With another recipient that can be served, the message goes there and the doctor is told.
    text = message(doctor, f"{PEER}, {patient}", "Avis", "Pouvez-vous voir ce patient ?\n").as_bytes(policy=SMTP_POLICY)
    await asyncio.to_thread(submit, gateway, "doctor", [PEER, patient], text)
    assert len(await gateway.inbox(patient)) == 1
    [notice] = await gateway.inbox(doctor)
    assert PEER.encode() in notice and b"5.7.5" in notice


async def test_the_deliver_setting_sends_signed_only(engine, settings, tmp_path: Path, smime_template: Path) -> None:  # type: ignore[no-untyped-def]
    from conftest import RunningGateway
    from sqlalchemy import select

    from caducee.gateway.models import QueuedRecipient

    gateway = await RunningGateway(engine, settings, tmp_path, smime_template).start(smime=True, without_certificate="deliver")
    try:
        doctor = gateway.account("doctor")[0]
        text = message(doctor, PEER, "Avis", "Pouvez-vous voir ce patient ?\n").as_bytes(policy=SMTP_POLICY)
        await asyncio.to_thread(submit, gateway, "doctor", [PEER], text)
        async with engine.connect() as conn:
            assert [row.rcpt_to for row in await conn.execute(select(QueuedRecipient))] == [PEER]
    finally:
        await gateway.stop()


# ---- inbound: what other operators send ------------------------------------------------------


class Peer:
    """A professional of the other operator, certified by the same IGC-Santé CA."""

    def __init__(self, gateway) -> None:  # type: ignore[no-untyped-def]
        self.tools = Openssl(gateway)
        self.pair = self.tools.issuer.mailbox(PEER, "Dr Durand", "autre-operateur.mssante.fr", held=False)
        self.patient = gateway.credentials["patients"]["adult_2"]["address"]
        self.patient_cert = self.tools.space.mailbox(self.patient).cert
        self.other_patient_cert = self.tools.space.mailbox(gateway.credentials["patients"]["adult_1"]["address"]).cert

    def signed(
        self, text: bytes = b"Vos examens sont normaux.", *, subject: str = "Examens", pair: Pair | None = None, to: str | None = None
    ) -> bytes:
        inner = with_headers(b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"\r\n", PEER, to or self.patient, subject)
        return with_headers(self.tools.sign(inner, pair or self.pair), PEER, to or self.patient, subject)

    def signed_and_encrypted(self, *certs: Path, to: str | None = None) -> bytes:
        signed = self.signed(to=to)
        return with_headers(self.tools.encrypt(signed, *(certs or (self.patient_cert,))), PEER, to or self.patient, "Examens")


async def test_signed_and_encrypted_mail_from_another_operator_is_verified_and_decrypted(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    peer = Peer(gateway)
    errors, _ = await send_mx(gateway, [peer.patient], peer.signed_and_encrypted())
    assert errors == {}
    [stored] = await gateway.inbox(peer.patient)
    assert b"application/pkcs7-mime" not in stored.split(b"\r\n\r\n")[0]  # decrypted for the patient, whose key we hold
    assert b"Vos examens sont normaux." in peer.tools.verify(stored, tmp_path / "signer.pem")


async def test_mail_for_a_professional_with_own_key_is_stored_as_received(gateway) -> None:  # type: ignore[no-untyped-def]
    peer = Peer(gateway)
    doctor = gateway.account("doctor")[0]
    sent = peer.signed_and_encrypted(peer.tools.space.handed_out(doctor).cert, to=doctor)
    await send_mx(gateway, [doctor], sent)
    assert await gateway.inbox(doctor) == [sent]
    assert b"Vos examens" in peer.tools.decrypt(sent, peer.tools.space.handed_out(doctor))


def _tamper_body(peer: Peer) -> bytes:
    return peer.signed().replace(b"Vos examens sont normaux.", b"Vos examens sont graves!!")


def _outer_subject(peer: Peer) -> bytes:
    signed = peer.signed(subject="Examens")
    head, _, rest = signed.partition(b"\r\n\r\n")
    return head.replace(b"Subject: Examens", b"Subject: Facture a payer", 1) + b"\r\n\r\n" + rest


def _foreign_ca(peer: Peer) -> bytes:
    directory = Path(peer.tools.space.directory).parent / "foreign"
    foreign = init_pki(directory, hostname="x", operator="Faux", passphrase=peer.tools.passin[5:].encode())
    pair = Issuer(TrustSpace(foreign.directory), peer.tools.passin[5:].encode()).mailbox(PEER, "Imposteur", "Faux")
    return peer.signed(pair=pair)


def _someone_else(peer: Peer) -> bytes:
    other = peer.tools.issuer.mailbox("dr.autre@autre-operateur.mssante.fr", "Dr Autre", "autre-operateur.mssante.fr", held=False)
    return peer.signed(pair=other)


def _revoked(peer: Peer) -> bytes:
    peer.tools.issuer.revoke(x509.load_pem_x509_certificate(peer.pair.cert.read_bytes()).serial_number)
    return peer.signed()


def _expired(peer: Peer) -> bytes:
    old = peer.tools.issuer.mailbox(
        PEER,
        "Dr Durand",
        "autre-operateur.mssante.fr",
        held=False,
        days=1,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
    )
    return peer.signed(pair=old)


def _encrypted_to_someone_else(peer: Peer) -> bytes:
    return peer.signed_and_encrypted(peer.other_patient_cert)


REFUSALS = [
    ("unsigned", lambda peer: message(PEER, peer.patient).as_bytes(policy=SMTP_POLICY), "5.7.1", "not signed"),
    ("tampered body", _tamper_body, "5.7.7", "altered"),
    ("outer Subject differs", _outer_subject, "5.7.7", "Subject header differs"),
    ("foreign CA", _foreign_ca, "5.7.5", "trusted anchor"),
    ("signer is not the From", _someone_else, "5.7.5", "is not dr.durand"),
    ("revoked certificate", _revoked, "5.7.5", "revoked"),
    ("expired certificate", _expired, "5.7.5", "expired"),
    ("encrypted to another patient", _encrypted_to_someone_else, "5.7.5", "not encrypted to this recipient"),
]


@pytest.mark.parametrize(("case", "make", "enhanced", "reason"), REFUSALS, ids=[case for case, *_ in REFUSALS])
async def test_bad_signatures_from_another_operator_are_refused(gateway, case, make, enhanced, reason) -> None:  # type: ignore[no-untyped-def]
    peer = Peer(gateway)
    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        await send_mx(gateway, [peer.patient], make(peer))
    assert caught.value.code == 550 and enhanced in caught.value.message and reason in caught.value.message, caught.value.message
    assert await gateway.inbox(peer.patient) == []


# ---- off the event loop ----------------------------------------------------------------------


async def test_crypto_runs_in_worker_processes(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")[0]
    nurse = gateway.account("nurse")[0]
    parties = await gateway.pipeline._parties([doctor, nurse])
    raw = message(doctor, nurse).as_bytes(policy=SMTP_POLICY)
    protection = await gateway.smime.protect(raw, doctor, [nurse], parties)
    assert protection.worker_pid not in (None, os.getpid())


async def test_a_session_stays_responsive_while_large_messages_are_signed(gateway) -> None:  # type: ignore[no-untyped-def]
    """NOOP round trips on one session while other sessions send four 12 MB messages to be
    signed and encrypted. Protected on the event loop's own thread, each would stall the loop
    for at least what one costs in-line, and the probe, polling all along, would spend four
    times that in its round trips; with the pool the stalls are short. The time spent in long
    round trips (over half the in-line cost) must stay under two in-line costs: a stall or two
    from a loaded machine pass, protecting on the loop does not."""
    doctor, password = gateway.account("doctor")
    nurse = gateway.account("nurse")[0]
    big = message(doctor, nurse, "Imagerie", "Clichés joints.\n", attachment=("irm.dcm", os.urandom(12 * 1024 * 1024), "application/dicom"))
    raw = big.as_bytes(policy=SMTP_POLICY)
    loop = asyncio.get_running_loop()
    certificate = [gateway.material.operator_cert.read_bytes()]
    jobs.protect(gateway.material, raw, doctor, certificate)  # loads the key once, as a warm worker has
    started = loop.time()
    jobs.protect(gateway.material, raw, doctor, certificate)  # what one message costs in-line
    inline = loop.time() - started

    context = ssl.create_default_context(cafile=str(gateway.ca.files.cert))

    message_file = Path(gateway.directory) / "big.eml"
    message_file.write_bytes(raw)
    sender_script = (
        "import smtplib, ssl, sys\n"
        "host, port, ca, user, password, sender, rcpt, path = sys.argv[1:]\n"
        "with smtplib.SMTP(host, int(port)) as client:\n"
        "    client.starttls(context=ssl.create_default_context(cafile=ca))\n"
        "    client.login(user, password)\n"
        "    client.sendmail(sender, [rcpt], open(path, 'rb').read())\n"
    )

    async def send_big() -> asyncio.subprocess.Process:  # another process: the client's work stays off the loop under test
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            sender_script,
            "127.0.0.1",
            str(gateway.ports["submission"]),
            str(gateway.ca.files.cert),
            doctor,
            password,
            doctor,
            nurse,
            str(message_file),
        )

    round_trips: list[float] = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.ports["submission"], start_tls=True, tls_context=context) as probe:
        processes = [await send_big() for _ in range(4)]  # forking is the test's own cost: done before probing
        senders = asyncio.gather(*(process.wait() for process in processes))
        while not senders.done():
            before = loop.time()
            await probe.noop()
            round_trips.append(loop.time() - before)
            await asyncio.sleep(0.005)
        assert await senders == [0, 0, 0, 0]
    assert len(await gateway.inbox(nurse)) == 4
    assert len(round_trips) > 10
    stalled = sum(trip for trip in round_trips if trip > inline / 2)
    print(f"inline {inline:.3f}s, longest round trip {max(round_trips):.3f}s over {len(round_trips)}, stalled {stalled:.3f}s")
    assert stalled < 2 * inline, (stalled, inline, sorted(round_trips)[-5:])


# ---- between two operators -------------------------------------------------------------------


async def test_two_operators_exchange_signed_and_encrypted_mail(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The doctor writes to a colleague at the other operator, which holds his key: our side
    signs and encrypts to the certificate the annuaire publishes, theirs verifies against the
    same IGC-Santé anchors and decrypts."""
    from dataclasses import replace

    from sqlalchemy import select
    from test_gateway_relay import REMOTE, OtherOperator, worker_for

    from caducee.annuaire import service
    from caducee.annuaire.models import MailboxType
    from caducee.core.cpu import shared_pool
    from caducee.gateway.protection import SmimeStage
    from caducee.mailbox.models import Message

    tools = Openssl(gateway)
    colleague = tools.issuer.mailbox(REMOTE, "Dr Durand", "autre-operateur.mssante.fr")  # issued by the common CA...
    their_keys = tmp_path / "their-keys"
    their_keys.mkdir()
    for source, name in ((colleague.cert, f"{REMOTE}.crt"), (colleague.key, f"{REMOTE}.key")):
        source.rename(their_keys / name)  # ...and the key lives at their operator, not ours
    async with gateway.engine.begin() as conn:  # the national annuaire lists their mailbox and its certificate
        await service.add_mailbox(conn, address=REMOTE, type=MailboxType.PER, display_name="Dr Durand")
        await service.publish_certificate(conn, REMOTE, (their_keys / f"{REMOTE}.crt").read_bytes())
    theirs = replace(gateway.material, held_keys=their_keys)
    other = await OtherOperator().start(gateway, tmp_path, smime=lambda engine: SmimeStage(engine, theirs, shared_pool(2)))
    try:
        doctor = gateway.account("doctor")[0]
        text = message(doctor, REMOTE, "Avis", "Pouvez-vous recevoir Mme Martin ?\n").as_bytes(policy=SMTP_POLICY)
        await asyncio.to_thread(submit, gateway, "doctor", [REMOTE], text)
        worker = worker_for(gateway, {"autre-operateur.mssante.fr": f"127.0.0.1:{other.port}"})
        assert await worker.run_once() == 1
        async with other.engine.connect() as conn:
            [stored] = [other.cipher.open(body) for body in (await conn.execute(select(Message.body))).scalars()]
        assert b"application/pkcs7-mime" not in stored and b"Pouvez-vous recevoir Mme Martin" in stored
        assert b"Pouvez-vous recevoir Mme Martin" in tools.verify(stored, tmp_path / "signer.pem")
    finally:
        await other.stop()
