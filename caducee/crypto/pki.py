"""A test trust space shaped like IGC-Santé: `caducee pki init`.

    AC racine (self-signed, path length 1)
      └── AC organisations (path length 0), which issues
            - the TLS server certificate of the listeners (serverAuth)
            - the operator's client certificate for mutual TLS between operators (clientAuth)
            - the operator's S/MIME signing certificate (dNSName SAN for every local
              domain), which signs for the professionals whose keys Caducée does not hold
            - one S/MIME certificate per mailbox (rfc822Name SAN, digitalSignature +
              keyEncipherment, emailProtection); the key of a mailbox Caducée holds
              (patients, organisations) goes to `mailboxes/`, the key of one whose owner
              keeps it (a professional's mail client) to `handed-out/`
            - a CRL, re-signed by `revoke`

RSA keys: CMS encryption to a recipient is RSA key transport. Private keys are written
encrypted (PKCS#8, with a passphrase derived from the master key), mode 0600; production
points the settings at real IGC-Santé files instead.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from caducee.config import Settings

KEY_BITS = 2048
ROOT_NAME = "Caducee AC Racine IGC-Sante (test)"
ORG_CA_NAME = "Caducee AC Organisations IGC-Sante (test)"


def key_passphrase(master_key: bytes) -> bytes:
    """The passphrase of the PKI's private keys, derived from the master key (never stored)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"caducee pki private keys").derive(master_key).hex().encode()


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TrustSpace:
    """Where `init` put everything; `anchors` is what peers must chain to."""

    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root-ca.crt"

    @property
    def org_ca(self) -> Pair:
        return Pair(self.directory / "org-ca.crt", self.directory / "org-ca.key")

    @property
    def server(self) -> Pair:
        return Pair(self.directory / "server.crt", self.directory / "server.key")

    @property
    def operator(self) -> Pair:
        return Pair(self.directory / "operator.crt", self.directory / "operator.key")

    @property
    def operator_smime(self) -> Pair:
        """The operator's S/MIME certificate: signs mail of mailboxes whose keys we do not hold."""
        return Pair(self.directory / "operator-smime.crt", self.directory / "operator-smime.key")

    @property
    def held_keys(self) -> Path:
        """Certificates and keys of the mailboxes whose keys Caducée holds (`<address>.crt/.key`)."""
        return self.directory / "mailboxes"

    @property
    def crl(self) -> Path:
        return self.directory / "org-ca.crl"

    @property
    def anchors(self) -> Path:
        """Root and organisation CA in one PEM file (what TLS peers load)."""
        return self.directory / "anchors.pem"

    def mailbox(self, address: str) -> Pair:
        return Pair(self.held_keys / f"{address}.crt", self.held_keys / f"{address}.key")

    def handed_out(self, address: str) -> Pair:
        """Where a key Caducée does not keep is left for its owner (demo and tests only)."""
        return Pair(self.directory / "handed-out" / f"{address}.crt", self.directory / "handed-out" / f"{address}.key")

    def exists(self) -> bool:
        return all(path.exists() for path in (self.root, self.org_ca.cert, self.server.cert, self.operator.cert, self.crl))


def _name(common_name: str, organisation: str, email: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if email:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attributes)


def _usage(**flags: bool) -> x509.KeyUsage:
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{name: flags.get(name, False) for name in names})


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, created so from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _save(pair: Pair, cert: x509.Certificate, key: rsa.RSAPrivateKey, passphrase: bytes) -> None:
    pair.cert.parent.mkdir(parents=True, exist_ok=True)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption = serialization.BestAvailableEncryption(passphrase)
    write_private(pair.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def load_key(path: Path, passphrase: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


class Issuer:
    """The organisation CA, loaded from the trust space, issuing and revoking."""

    def __init__(self, space: TrustSpace, passphrase: bytes) -> None:
        self.space = space
        self.passphrase = passphrase
        self.cert = x509.load_pem_x509_certificate(space.org_ca.cert.read_bytes())
        self.key = load_key(space.org_ca.key, passphrase)
        organisation = str(self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)
        self.crl_url = f"http://pki.{organisation}/org-ca.crl"

    def _issue(
        self,
        subject: x509.Name,
        public_key: rsa.RSAPublicKey,
        *,
        days: int,
        extensions: list[tuple[x509.ExtensionType, bool]],
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        start = not_before or now - dt.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            # Where the CRL is published: validators (pyHanko's hard-fail mode among them) only
            # insist on revocation data for certificates that name a source for it.
            .add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier(self.crl_url)], relative_name=None, reasons=None, crl_issuer=None
                        )
                    ]
                ),
                critical=False,
            )
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(self.key, hashes.SHA256())

    def tls(self, pair: Pair, common_name: str, organisation: str, *, server: bool, names: list[str] | None = None) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (_usage(digital_signature=True, key_encipherment=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ]
        if names:
            general: list[x509.GeneralName] = []
            for name in names:
                try:
                    general.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    general.append(x509.DNSName(name))
            extensions.append((x509.SubjectAlternativeName(general), False))
        _save(pair, self._issue(_name(common_name, organisation), key.public_key(), days=825, extensions=extensions), key, self.passphrase)

    def mailbox(
        self,
        address: str,
        display_name: str,
        organisation: str,
        *,
        days: int = 1095,
        not_before: dt.datetime | None = None,
        held: bool = True,
    ) -> Pair:
        """An S/MIME certificate and key for `address` (signature and encryption).

        `held`: Caducée keeps the key (it signs and decrypts for that mailbox); otherwise
        the pair is handed out to the owner's mail client and Caducée never uses the key.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (_usage(digital_signature=True, key_encipherment=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),
            (x509.SubjectAlternativeName([x509.RFC822Name(address)]), False),
        ]
        cert = self._issue(
            _name(display_name, organisation, email=address), key.public_key(), days=days, extensions=extensions, not_before=not_before
        )
        pair = self.space.mailbox(address) if held else self.space.handed_out(address)
        _save(pair, cert, key, self.passphrase)
        if not held:  # a key it used to hold and no longer does
            self.space.mailbox(address).key.unlink(missing_ok=True)
            self.space.mailbox(address).cert.unlink(missing_ok=True)
        return pair

    def operator_smime(self, common_name: str, organisation: str, domains: list[str]) -> None:
        """The operator's S/MIME signing certificate, valid for every address of `domains`.

        A receiver accepts it for a From address when one of its dNSName entries is the
        address's domain (an organisation certificate, as IGC-Santé issues them).
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        names: list[x509.GeneralName] = [x509.DNSName(domain) for domain in dict.fromkeys(d.lower() for d in domains)]
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (_usage(digital_signature=True, key_encipherment=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),
            (x509.SubjectAlternativeName(names), False),
        ]
        cert = self._issue(_name(common_name, organisation), key.public_key(), days=825, extensions=extensions)
        _save(self.space.operator_smime, cert, key, self.passphrase)

    def write_crl(self, revoked: dict[int, dt.datetime] | None = None) -> None:
        """Sign the CRL with `revoked` (serial -> date), valid seven days."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=7))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        )
        for serial, when in sorted((revoked or {}).items()):
            builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
        self.space.crl.write_bytes(builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))

    def issued_serials(self) -> set[int]:
        """The serial numbers of every certificate this trust space holds (CAs, servers,
        mailboxes, handed-out pairs): what `revoke` may be asked to revoke."""
        serials = set()
        for path in self.space.directory.rglob("*"):
            if path.suffix not in {".crt", ".pem"} or not path.is_file():
                continue
            data = path.read_bytes()
            for block in data.split(b"-----END CERTIFICATE-----")[:-1]:
                try:
                    serials.add(x509.load_pem_x509_certificate(block + b"-----END CERTIFICATE-----\n").serial_number)
                except ValueError:
                    continue
        return serials

    def revoke(self, serial: int) -> None:
        """Add `serial` to the CRL (what was revoked before stays revoked)."""
        current = x509.load_pem_x509_crl(self.space.crl.read_bytes())
        revoked = {entry.serial_number: entry.revocation_date_utc for entry in current}
        revoked.setdefault(serial, dt.datetime.now(dt.UTC))
        self.write_crl(revoked)


def init_pki(
    directory: Path, *, hostname: str, operator: str, passphrase: bytes, force: bool = False, domains: list[str] | None = None
) -> TrustSpace:
    """Create the trust space in `directory` (kept as it is when it exists, unless `force`).

    `domains`: the local domains the operator's S/MIME certificate signs for (the operator
    domain when not given). A trust space made before that certificate existed gets it
    added, without touching its CAs.
    A lock file lets several worker processes call this at once: one creates, the others
    find it done.
    """
    space = TrustSpace(Path(directory))
    space.directory.mkdir(parents=True, exist_ok=True)
    smime_domains = domains or [operator]
    with open(space.directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if space.exists() and not force:
            if not space.operator_smime.cert.exists():
                Issuer(space, passphrase).operator_smime(f"Signature {operator}", operator, smime_domains)
            return space
        now = dt.datetime.now(dt.UTC)
        root_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        root_name = _name(ROOT_NAME, operator)
        root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        space.root.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        write_private(
            space.directory / "root-ca.key",
            root_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(passphrase)
            ),
        )
        org_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        org = (
            x509.CertificateBuilder()
            .subject_name(_name(ORG_CA_NAME, operator))
            .issuer_name(root_name)
            .public_key(org_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(org_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        _save(space.org_ca, org, org_key, passphrase)
        issuer = Issuer(space, passphrase)
        issuer.tls(space.server, hostname, operator, server=True, names=[hostname, "localhost", "127.0.0.1"])
        issuer.tls(space.operator, hostname, operator, server=False)
        issuer.operator_smime(f"Signature {operator}", operator, smime_domains)
        issuer.write_crl()
        space.anchors.write_bytes(space.root.read_bytes() + space.org_ca.cert.read_bytes())
        return space


def development_space(settings: Settings, *, force: bool = False) -> tuple[TrustSpace, bytes]:
    """The test trust space of the data directory (created if absent) and its key passphrase."""
    from caducee.crypto.atrest import load_master_key

    passphrase = key_passphrase(load_master_key(settings.data_dir))
    space = init_pki(
        settings.data_dir / "pki",
        hostname=settings.hostname,
        operator=settings.operator_domain,
        passphrase=passphrase,
        force=force,
        domains=settings.local_domains,
    )
    return space, passphrase
