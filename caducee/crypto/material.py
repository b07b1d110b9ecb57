"""Where the S/MIME material lives, and loading it once per process.

`SmimeMaterial` holds paths and the key passphrase only: it is what the accept pipeline
sends to a crypto worker process with each job. The worker loads certificates and keys
on first use and keeps them, re-reading a file when it changes on disk (a CRL re-signed
by `caducee pki revoke`, a key issued after start), so no job pays for parsing PEM or for
the key-derivation of an encrypted private key twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

if TYPE_CHECKING:
    from caducee.config import Settings
    from caducee.crypto.smime import Signer


@dataclass(frozen=True)
class SmimeMaterial:
    """Paths to the trust anchors, CRLs, the operator's signing pair and the held keys."""

    anchors: Path
    crls: tuple[Path, ...]
    operator_cert: Path
    operator_key: Path
    held_keys: Path  # <address>.crt and <address>.key for each mailbox whose key Caducée holds
    passphrase: bytes | None

    def held_pair(self, address: str) -> tuple[Path, Path] | None:
        """The certificate and key files of `address` when Caducée holds its key."""
        if not address or "/" in address or address.startswith(".") or "\x00" in address:
            return None
        cert, key = self.held_keys / f"{address}.crt", self.held_keys / f"{address}.key"
        return (cert, key) if key.is_file() and cert.is_file() else None


def material_from_settings(settings: Settings) -> SmimeMaterial:
    """The configured material, or the test trust space of the data directory."""
    from caducee.crypto.pki import development_space

    if settings.smime_cert:
        if not (settings.smime_key and settings.trust_anchors and settings.smime_keys_dir):
            raise ValueError("smime_cert is set: set smime_key, trust_anchors and smime_keys_dir too")
        from caducee.crypto.atrest import load_master_key
        from caducee.crypto.pki import key_passphrase

        return SmimeMaterial(
            Path(settings.trust_anchors),
            tuple(Path(p) for p in settings.crl_files),
            Path(settings.smime_cert),
            Path(settings.smime_key),
            Path(settings.smime_keys_dir),
            key_passphrase(load_master_key(settings.data_dir)),
        )
    space, passphrase = development_space(settings)
    return SmimeMaterial(
        anchors=Path(settings.trust_anchors) if settings.trust_anchors else space.anchors,
        crls=tuple(Path(p) for p in settings.crl_files) or (space.crl,),
        operator_cert=space.operator_smime.cert,
        operator_key=space.operator_smime.key,
        held_keys=Path(settings.smime_keys_dir) if settings.smime_keys_dir else space.held_keys,
        passphrase=passphrase,
    )


class _FileCache:
    """Parsed file contents, re-parsed when the file's mtime or size changes."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Path, str], tuple[tuple[int, int], object]] = {}

    def get(self, path: Path, kind: str, parse: Callable[[bytes], object]) -> object:
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._entries.get((path, kind))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        value = parse(path.read_bytes())
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[(path, kind)] = (stamp, value)
        return value


_files = _FileCache()


def _key(data: bytes, passphrase: bytes | None) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(data, password=passphrase)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("S/MIME keys must be RSA (CMS key transport)")
    return key


def certificates(path: Path) -> list[x509.Certificate]:
    return _files.get(path, "certs", x509.load_pem_x509_certificates)  # type: ignore[return-value]


def anchors_and_intermediates(material: SmimeMaterial) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Self-signed certificates of the anchors file are roots, the others intermediates."""
    loaded = certificates(material.anchors)
    roots = [cert for cert in loaded if cert.issuer == cert.subject]
    return roots or loaded, [cert for cert in loaded if cert.issuer != cert.subject]


def crls(material: SmimeMaterial) -> list[bytes]:
    return [_files.get(path, "crl", bytes) for path in material.crls if path.exists()]  # type: ignore[misc]


def operator_signer(material: SmimeMaterial) -> Signer:
    from caducee.crypto.smime import Signer

    _, intermediates = anchors_and_intermediates(material)
    cert = certificates(material.operator_cert)[0]
    key = _files.get(material.operator_key, "key", lambda data: _key(data, material.passphrase))
    return Signer(cert, key, tuple(intermediates))  # type: ignore[arg-type]


def held_signer(material: SmimeMaterial, address: str) -> Signer | None:
    """The mailbox's own certificate and key, when Caducée holds them."""
    from caducee.crypto.smime import Signer

    pair = material.held_pair(address)
    if pair is None:
        return None
    _, intermediates = anchors_and_intermediates(material)
    key = _files.get(pair[1], "key", lambda data: _key(data, material.passphrase))
    return Signer(certificates(pair[0])[0], key, tuple(intermediates))  # type: ignore[arg-type]
