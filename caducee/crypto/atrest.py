"""Encryption at rest of message bodies: AES-256-GCM under one master key.

The key comes from `CADUCEE_MASTER_KEY` (base64 of 32 bytes) or from `<data dir>/master.key`,
created on first use with mode 0600. It is never stored in the database. Each body gets a
random 96-bit nonce; the stored form is `version byte || nonce || ciphertext+tag`.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"
_AAD = b"caducee:message-body:v1"


class MasterKeyError(RuntimeError):
    """The master key is missing or malformed: nothing can be read or written."""


def load_master_key(data_dir: Path, environ_value: str | None = None) -> bytes:
    """The 32-byte master key from the environment value, or the data dir (created if absent)."""
    value = environ_value if environ_value is not None else os.environ.get("CADUCEE_MASTER_KEY")
    if value:
        try:
            key = base64.b64decode(value, validate=True)
        except ValueError:
            raise MasterKeyError("CADUCEE_MASTER_KEY is not valid base64") from None
        if len(key) != 32:
            raise MasterKeyError(f"CADUCEE_MASTER_KEY must decode to 32 bytes, not {len(key)}")
        return key
    path = Path(data_dir) / "master.key"
    if path.exists():
        key = path.read_bytes()
        if len(key) != 32:
            raise MasterKeyError(f"{path} must hold exactly 32 bytes")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_master_key(data_dir, environ_value="")
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key


class BodyCipher:
    """Seal and open message bodies with the master key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, body: bytes) -> bytes:
        nonce = os.urandom(12)
        return VERSION + nonce + self._aead.encrypt(nonce, body, _AAD)

    def open(self, sealed: bytes) -> bytes:
        if sealed[:1] != VERSION:
            raise ValueError("unknown body encryption version")
        return self._aead.decrypt(sealed[1:13], sealed[13:], _AAD)
