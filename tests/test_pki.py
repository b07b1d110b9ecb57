"""The test trust space (`caducee pki`), judged by OpenSSL's command line, not by our code."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import demo
from caducee.annuaire import service
from caducee.annuaire.models import MailboxType
from caducee.config import Settings
from caducee.crypto.pki import Issuer, TrustSpace, init_pki, key_passphrase

PASSPHRASE = key_passphrase(b"\x01" * 32)


@pytest.fixture
def space(tmp_path: Path) -> TrustSpace:
    return init_pki(tmp_path / "pki", hostname="mail.demo.mssante.fr", operator="demo.mssante.fr", passphrase=PASSPHRASE)


def openssl_verify(space: TrustSpace, cert: Path, purpose: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [
        "openssl",
        "verify",
        "-CAfile",
        str(space.root),
        "-untrusted",
        str(space.org_ca.cert),
        "-crl_check",
        "-CRLfile",
        str(space.crl),
        str(cert),
    ]
    if purpose:
        command[2:2] = ["-purpose", purpose]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.parametrize(("which", "purpose"), [("server", "sslserver"), ("operator", "sslclient")])
def test_tls_certificates_chain_to_the_root_with_the_crl(space: TrustSpace, which: str, purpose: str) -> None:
    result = openssl_verify(space, getattr(space, which).cert, purpose)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr


def test_mailbox_certificate_shape_and_purposes(space: TrustSpace) -> None:
    pair = Issuer(space, PASSPHRASE).mailbox("sophie.bernard@demo.mssante.fr", "Sophie Bernard", "demo.mssante.fr")
    for purpose in ("smimesign", "smimeencrypt"):
        assert openssl_verify(space, pair.cert, purpose).returncode == 0
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.RFC822Name) == [
        "sophie.bernard@demo.mssante.fr"
    ]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    chain = x509.load_pem_x509_certificate(space.org_ca.cert.read_bytes())
    assert chain.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0


def test_private_keys_are_encrypted_and_private(space: TrustSpace) -> None:
    keys = [space.org_ca.key, space.server.key, space.operator.key, space.directory / "root-ca.key"]
    for key in keys:
        assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    wrong = subprocess.run(["openssl", "pkey", "-in", str(space.server.key), "-passin", "pass:wrong", "-noout"], capture_output=True)
    assert wrong.returncode != 0
    right = subprocess.run(["openssl", "pkey", "-in", str(space.server.key), "-passin", f"pass:{PASSPHRASE.decode()}", "-noout"])
    assert right.returncode == 0


def test_revoked_and_expired_certificates_fail(space: TrustSpace) -> None:
    issuer = Issuer(space, PASSPHRASE)
    first = issuer.mailbox("a@demo.mssante.fr", "A", "demo.mssante.fr")
    second = issuer.mailbox("b@demo.mssante.fr", "B", "demo.mssante.fr")
    for pair in (first, second):
        issuer.revoke(x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number)
        result = openssl_verify(space, pair.cert)
        assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr
    still = openssl_verify(space, first.cert)  # revoking the second kept the first on the CRL
    assert "certificate revoked" in still.stdout + still.stderr
    old = issuer.mailbox("c@demo.mssante.fr", "C", "demo.mssante.fr", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10))
    result = openssl_verify(space, old.cert)
    assert result.returncode != 0 and "expired" in result.stdout + result.stderr


def test_init_keeps_an_existing_trust_space(space: TrustSpace) -> None:
    root = space.root.read_bytes()
    again = init_pki(space.directory, hostname="other", operator="other", passphrase=PASSPHRASE)
    assert again.root.read_bytes() == root
    forced = init_pki(space.directory, hostname="other", operator="other", passphrase=PASSPHRASE, force=True)
    assert forced.root.read_bytes() != root


async def test_demo_publishes_a_certificate_per_mailbox(engine: AsyncEngine, settings: Settings) -> None:
    credentials = await demo.seed(engine, settings)
    assert credentials is not None
    addresses = [p["address"] for p in (*credentials["professionals"].values(), *credentials["patients"].values())]
    async with engine.connect() as conn:
        published = await service.certificates_for(conn, addresses)
        assert set(published) == set(addresses)
        with pytest.raises(service.CertificateError, match="not karim.haddad@demo.mssante.fr"):
            await service.publish_certificate(conn, credentials["professionals"]["nurse"]["address"], published[addresses[0]][0].encode())
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=4000)
        assert await service.certificates_for(conn, addresses, at=later) == {}  # expired ones are not offered


async def test_cli_issue_publishes_and_refuses_unknown_mailboxes(tmp_path: Path, database_url: str, engine: AsyncEngine) -> None:
    env = {**os.environ, "CADUCEE_DATABASE_URL": database_url, "CADUCEE_DATA_DIR": str(tmp_path / "var")}

    async def caducee(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "caducee", *args], env=env, capture_output=True, text=True, timeout=120
        )

    assert "no trust space" in (await caducee("pki", "issue", "x@demo.mssante.fr")).stderr
    created = await caducee("pki", "init")
    assert created.returncode == 0 and "created" in created.stdout
    assert "kept" in (await caducee("pki", "init")).stdout
    unknown = await caducee("pki", "issue", "nobody@demo.mssante.fr")
    assert unknown.returncode == 1 and "no mailbox nobody@demo.mssante.fr" in unknown.stderr
    bad_serial = await caducee("pki", "revoke", "not-hex")
    assert bad_serial.returncode == 2 and "hexadecimal" in bad_serial.stderr

    async with engine.begin() as conn:
        await service.add_mailbox(conn, address="secretariat@demo.mssante.fr", type=MailboxType.ORG, display_name="Secrétariat")
    issued = await caducee("pki", "issue", "Secretariat@demo.mssante.fr")
    assert issued.returncode == 0, issued.stderr
    async with engine.connect() as conn:
        published = await service.certificates_for(conn, ["secretariat@demo.mssante.fr"])
    cert = x509.load_pem_x509_certificate(published["secretariat@demo.mssante.fr"][0].encode())
    space = TrustSpace(tmp_path / "var" / "pki")
    assert openssl_verify(space, space.mailbox("secretariat@demo.mssante.fr").cert, "smimeencrypt").returncode == 0
    revoked = await caducee("pki", "revoke", format(cert.serial_number, "x"))
    assert revoked.returncode == 0
    after = openssl_verify(space, space.mailbox("secretariat@demo.mssante.fr").cert)
    assert after.returncode != 0 and "certificate revoked" in after.stdout + after.stderr
