"""S/MIME interoperability with OpenSSL's command line, and every way a message must fail."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from caducee.crypto import smime
from caducee.crypto.devpki import DevCA
from caducee.crypto.pki import (
    Issuer,
    Pair,
    TrustSpace,
    init_pki,
    key_passphrase,
    load_key,
)

PASSPHRASE = key_passphrase(b"\x02" * 32)
DOCTOR = "sophie.bernard@demo.mssante.fr"
PATIENT = "285037512345688@patient.mssante.fr"
MESSAGE = (
    f"From: Dr Sophie Bernard <{DOCTOR}>\r\nTo: {PATIENT}\r\nSubject: Resultats d'analyse\r\n"
    "Message-ID: <r1@demo.mssante.fr>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    "Vos resultats sont normaux.\r\n"
).encode()


class World:
    def __init__(self, directory: Path) -> None:
        self.space = init_pki(directory / "pki", hostname="mail.demo.mssante.fr", operator="demo.mssante.fr", passphrase=PASSPHRASE)
        self.issuer = Issuer(self.space, PASSPHRASE)
        self.doctor = self.issuer.mailbox(DOCTOR, "Sophie Bernard", "demo.mssante.fr")
        self.patient = self.issuer.mailbox(PATIENT, "Claire Martin", "demo.mssante.fr")
        self.root = x509.load_pem_x509_certificate(self.space.root.read_bytes())
        self.org = x509.load_pem_x509_certificate(self.space.org_ca.cert.read_bytes())
        self.directory = directory

    def cert(self, pair: Pair) -> x509.Certificate:
        return x509.load_pem_x509_certificate(pair.cert.read_bytes())

    def signer(self, pair: Pair) -> smime.Signer:
        return smime.Signer(self.cert(pair), load_key(pair.key, PASSPHRASE), (self.org,))

    async def verify(self, message: bytes, **kwargs) -> smime.Verified:  # type: ignore[no-untyped-def]
        return await smime.verify(message, anchors=[self.root], crls=[self.space.crl.read_bytes()], intermediates=[self.org], **kwargs)

    def openssl(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["openssl", "cms", *args], input=stdin, capture_output=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("smime"))


def test_what_caducee_produces_decrypts_and_verifies_with_openssl(world: World) -> None:
    protected = smime.sign_and_encrypt(MESSAGE, world.signer(world.doctor), [world.cert(world.patient), world.cert(world.doctor)])
    assert b"Subject: Resultats d'analyse" in protected  # outer headers stay readable
    assert b"Vos resultats" not in protected
    for reader in (world.patient, world.doctor):  # every recipient and the sender can read it
        decrypted = world.openssl(
            "-decrypt", "-recip", str(reader.cert), "-inkey", str(reader.key), "-passin", f"pass:{PASSPHRASE.decode()}", stdin=protected
        )
        assert decrypted.returncode == 0, decrypted.stderr
        verified = world.openssl("-verify", "-CAfile", str(world.space.anchors), "-purpose", "smimesign", stdin=decrypted.stdout)
        assert verified.returncode == 0, verified.stderr
        assert b"Vos resultats sont normaux." in verified.stdout


async def test_what_openssl_signs_and_encrypts_is_verified_and_decrypted(world: World) -> None:
    signed = world.openssl(
        "-sign",
        "-signer",
        str(world.doctor.cert),
        "-inkey",
        str(world.doctor.key),
        "-passin",
        f"pass:{PASSPHRASE.decode()}",
        "-certfile",
        str(world.space.org_ca.cert),
        stdin=MESSAGE,
    )
    assert signed.returncode == 0, signed.stderr
    encrypted = world.openssl("-encrypt", "-aes256", str(world.patient.cert), stdin=signed.stdout)
    assert encrypted.returncode == 0, encrypted.stderr
    decrypted = smime.decrypt(encrypted.stdout, world.cert(world.patient), load_key(world.patient.key, PASSPHRASE))
    verified = await world.verify(decrypted)
    assert verified.signer.subject == world.cert(world.doctor).subject
    assert b"Vos resultats sont normaux." in verified.inner


async def test_caducee_round_trip(world: World) -> None:
    protected = smime.sign_and_encrypt(MESSAGE, world.signer(world.doctor), [world.cert(world.patient)])
    decrypted = smime.decrypt(protected, world.cert(world.patient), load_key(world.patient.key, PASSPHRASE))
    verified = await world.verify(decrypted)
    assert verified.inner.endswith(b"Vos resultats sont normaux.\r\n")
    assert b"Subject: Resultats d'analyse" in verified.inner  # the protected headers


async def test_a_tampered_body_is_refused(world: World) -> None:
    signed = smime.sign(MESSAGE, world.signer(world.doctor))
    tampered = signed.replace(b"sont normaux", b"sont graves!")
    with pytest.raises(smime.SmimeError) as caught:
        await world.verify(tampered)
    assert caught.value.enhanced == "5.7.7" and "altered" in caught.value.text_en


@pytest.mark.parametrize(
    ("header", "forged", "name"),
    [
        (b"Subject: Resultats d'analyse", b"Subject: Facture a regler", "Subject"),
        (f"From: Dr Sophie Bernard <{DOCTOR}>".encode(), b"From: Dr Sophie Bernard <escroc@demo.mssante.fr>", "From"),
    ],
)
async def test_outer_headers_that_differ_from_the_signed_ones_are_refused(world: World, header: bytes, forged: bytes, name: str) -> None:
    signed = smime.sign(MESSAGE, world.signer(world.doctor))
    head, _, rest = signed.partition(b"\r\n\r\n")
    with pytest.raises(smime.SmimeError) as caught:
        await world.verify(head.replace(header, forged) + b"\r\n\r\n" + rest)
    assert caught.value.enhanced == "5.7.7" and f"{name} header differs" in caught.value.text_en


def test_a_wrong_recipient_cannot_decrypt(world: World) -> None:
    protected = smime.sign_and_encrypt(MESSAGE, world.signer(world.doctor), [world.cert(world.patient)])
    with pytest.raises(smime.SmimeError) as caught:
        smime.decrypt(protected, world.cert(world.doctor), load_key(world.doctor.key, PASSPHRASE))
    assert caught.value.enhanced == "5.7.5"


async def test_an_expired_certificate_is_refused(world: World) -> None:
    old = world.issuer.mailbox(
        "ancien@demo.mssante.fr", "Ancien", "demo.mssante.fr", days=2, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    )
    signed = smime.sign(MESSAGE.replace(DOCTOR.encode(), b"ancien@demo.mssante.fr"), world.signer(old))
    with pytest.raises(smime.SmimeError) as caught:
        await world.verify(signed)
    assert caught.value.enhanced == "5.7.5"
    assert "expired" in caught.value.text_en or "trusted anchor" in caught.value.text_en


async def test_a_revoked_certificate_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path)  # its own CRL
    signed = smime.sign(MESSAGE, world.signer(world.doctor))
    await world.verify(signed)
    world.issuer.revoke(world.cert(world.doctor).serial_number)
    with pytest.raises(smime.SmimeError) as caught:
        await world.verify(signed)
    assert caught.value.enhanced == "5.7.5" and "revoked" in caught.value.text_en


async def test_a_foreign_ca_is_refused_and_unsigned_mail_too(world: World, tmp_path: Path) -> None:
    foreign = TrustSpace(init_pki(tmp_path / "foreign", hostname="x", operator="Autre", passphrase=PASSPHRASE).directory)
    stranger = Issuer(foreign, PASSPHRASE).mailbox(DOCTOR, "Faux Docteur", "Autre")
    signed = smime.sign(
        MESSAGE, smime.Signer(x509.load_pem_x509_certificate(stranger.cert.read_bytes()), load_key(stranger.key, PASSPHRASE))
    )
    with pytest.raises(smime.SmimeError) as caught:
        await world.verify(signed)
    assert caught.value.enhanced == "5.7.5" and "trusted anchor" in caught.value.text_en
    with pytest.raises(smime.SmimeError) as caught:
        await world.verify(MESSAGE)
    assert caught.value.enhanced == "5.7.1" and "not signed" in caught.value.text_en
    assert DevCA  # the tests' throw-away CA stays importable beside the trust space
