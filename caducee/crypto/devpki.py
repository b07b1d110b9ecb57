"""A development trust space: a root CA, TLS server and operator client certificates.

Enough for the listeners and the tests to use real TLS and mutual TLS today; the S/MIME
issue grows it into `caducee pki init` (intermediate CA, per-mailbox certificates, CRL).
Files are PEM; private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Issued(cert_path, key_path)


class DevCA:
    def __init__(self, directory: Path, name: str = "Caducee Dev Root CA", organisation: str = "Caducee") -> None:
        self.directory = Path(directory)
        if (self.directory / "ca.crt").exists() and (self.directory / "ca.key").exists():
            self.cert = x509.load_pem_x509_certificate((self.directory / "ca.crt").read_bytes())
            self.key = serialization.load_pem_private_key((self.directory / "ca.key").read_bytes(), password=None)  # type: ignore[assignment]
            self.files = Issued(self.directory / "ca.crt", self.directory / "ca.key")
            return
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        subject = _name(name, organisation)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.files = _write(self.directory, "ca", self.cert, self.key)

    def issue(self, stem: str, common_name: str, organisation: str, *, server: bool = False, client: bool = False,
              dns: list[str] | None = None, ips: list[str] | None = None) -> Issued:  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in (dns or [])]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (ips or [])]
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name, organisation)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )  # fmt: skip
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(self.directory, stem, builder.sign(self.key, hashes.SHA256()), key)


def ensure_dev_pki(directory: Path, hostname: str, organisation: str = "Caducee") -> dict[str, Issued]:
    """The development trust space in `directory`, created on first use and kept after.

    Several worker processes may start at once: a lock file makes one create it and the
    others read what it wrote.
    """
    import fcntl

    Path(directory).mkdir(parents=True, exist_ok=True)
    with open(Path(directory) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca = DevCA(directory)
        issued = {"ca": ca.files}
        for stem, server, client in (("server", True, False), ("operator", False, True)):
            files = Issued(ca.directory / f"{stem}.crt", ca.directory / f"{stem}.key")
            if not (files.cert.exists() and files.key.exists()):
                files = ca.issue(stem, hostname, organisation, server=server, client=client,
                                 dns=[hostname, "localhost"] if server else None, ips=["127.0.0.1"] if server else None)  # fmt: skip
            issued[stem] = files
    return issued


def server_context(issued: Issued, *, client_ca: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with `client_ca`, a client certificate is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(issued.cert, issued.key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    return context


def client_context(ca: Path, issued: Issued | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ client context trusting `ca`, presenting `issued` when given."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if issued is not None:
        context.load_cert_chain(issued.cert, issued.key)
    return context
