"""Encryption at rest of message bodies: AES-256-GCM under the sealing key.

The master key comes from `CADUCEE_MASTER_KEY` (base64 of 32 bytes) or from
`<data dir>/master.key`, created on first use with mode 0600 (SQLite and `--demo` only: a
PostgreSQL node refuses to start without the variable). It is never stored in the database.
It is the root the HMAC keys are derived from (history chain, codes, log pseudonyms, the test
PKI's passphrase), and it seals bodies unless sealing keys are given.

Sealing keys can be rotated: `CADUCEE_SEALING_KEYS` is a comma-separated list of base64 keys,
the first seals, every one (and the master key) opens. Each sealed form carries the id of its
key, `0x02 || key id (8 bytes) || nonce (12) || ciphertext+tag`, so opening needs no trial;
forms of the first version (`0x01 || nonce || ciphertext+tag`, before key ids) are opened by
trying the known keys. `caducee keys rotate` re-seals what is not under the first key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x02"
LEGACY = b"\x01"
_AAD = b"caducee:message-body:v1"
KEY_ID_BYTES = 8


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


def key_id(key: bytes) -> bytes:
    """Eight bytes naming a key without revealing it (a hash of it under a fixed label)."""
    return hashlib.sha256(b"caducee:sealing-key-id:" + key).digest()[:KEY_ID_BYTES]


def sealing_keys_from_environment(environ_value: str | None = None) -> list[bytes]:
    """The keys of `CADUCEE_SEALING_KEYS`, first the one that seals; empty when unset."""
    value = environ_value if environ_value is not None else os.environ.get("CADUCEE_SEALING_KEYS", "")
    keys = []
    for n, part in enumerate(p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            key = base64.b64decode(part, validate=True)
        except ValueError:
            raise MasterKeyError(f"CADUCEE_SEALING_KEYS: key {n + 1} is not valid base64") from None
        if len(key) != 32:
            raise MasterKeyError(f"CADUCEE_SEALING_KEYS: key {n + 1} must decode to 32 bytes, not {len(key)}")
        keys.append(key)
    return keys


class BodyCipher:
    """Seal with the current key, open with any known one (found by the form's key id)."""

    def __init__(self, key: bytes, sealing_keys: list[bytes] | None = None) -> None:
        """`key` is the master key; `sealing_keys` default to `CADUCEE_SEALING_KEYS`."""
        keys = sealing_keys if sealing_keys is not None else sealing_keys_from_environment()
        ordered = list(dict.fromkeys([*keys, key]))  # the first seals; the master key always opens
        self._by_id = {key_id(k): AESGCM(k) for k in ordered}
        self.current_id = key_id(ordered[0])
        self._aead = self._by_id[self.current_id]
        self._legacy = [self._by_id[key_id(k)] for k in ordered]

    def seal(self, body: bytes) -> bytes:
        nonce = os.urandom(12)
        return VERSION + self.current_id + nonce + self._aead.encrypt(nonce, body, _AAD)

    def open(self, sealed: bytes) -> bytes:
        version = sealed[:1]
        if version == VERSION:
            aead = self._by_id.get(sealed[1 : 1 + KEY_ID_BYTES])
            if aead is None:
                raise ValueError("sealed under a key this process does not know (CADUCEE_SEALING_KEYS)")
            start = 1 + KEY_ID_BYTES
            return aead.decrypt(sealed[start : start + 12], sealed[start + 12 :], _AAD)
        if version == LEGACY:
            for aead in self._legacy:
                try:
                    return aead.decrypt(sealed[1:13], sealed[13:], _AAD)
                except InvalidTag:
                    continue
            raise ValueError("sealed under a key this process does not know (CADUCEE_SEALING_KEYS)")
        raise ValueError("unknown body encryption version")

    def is_current(self, sealed: bytes) -> bool:
        """Whether `sealed` is under the key that seals now (nothing to re-seal)."""
        return sealed[:1] == VERSION and sealed[1 : 1 + KEY_ID_BYTES] == self.current_id

    def reseal(self, sealed: bytes) -> bytes:
        """The same content under the current key."""
        return self.seal(self.open(sealed))
