"""Password hashing with argon2id (argon2-cffi), shared by every way of logging in.

A check costs argon2id's 64 MiB and tens of milliseconds of CPU, on purpose. Mail clients
log in again and again with the same password (a connection per folder, one per sync,
reconnections after each LOGOUT): every successful check is remembered for a few minutes,
as a keyed digest of the stored hash and the password, so the same pair verifies again in
microseconds. Only successes are remembered; a digest is useless without the process's
random key and matches only the stored hash it was checked against, so a changed password
(a new stored hash) is checked by argon2 again, and nothing of it outlives the process.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
VERIFIED_SECONDS = 600.0  # how long a successful check is remembered
VERIFIED_MAX = 10_000  # remembered pairs (about 100 bytes each)
_KEY = secrets.token_bytes(32)
_verified: OrderedDict[bytes, float] = OrderedDict()
_lock = threading.Lock()  # checks run in worker threads


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def _digest(password_hash: str, password: str) -> bytes:
    return hashlib.blake2b(password_hash.encode() + b"\0" + password.encode("utf-8", "surrogatepass"), key=_KEY, digest_size=32).digest()


def _recently_verified(digest: bytes) -> bool:
    with _lock:
        expires = _verified.get(digest)
        if expires is None:
            return False
        if expires < time.monotonic():
            del _verified[digest]
            return False
        return True


def _remember(digest: bytes) -> None:
    with _lock:
        _verified[digest] = time.monotonic() + VERIFIED_SECONDS
        _verified.move_to_end(digest)
        while len(_verified) > VERIFIED_MAX:
            _verified.popitem(last=False)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; a missing or damaged hash is a refusal, not an error."""
    if not password_hash:
        # Spend the same time as a real check so that unknown accounts are not told apart.
        _HASHER.hash(password)
        return False
    digest = _digest(password_hash, password)
    if _recently_verified(digest):
        return True
    try:
        ok = _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    if ok:
        _remember(digest)
    return ok


def forget_verified() -> None:
    """Drop every remembered check (tests; an operator's emergency)."""
    with _lock:
        _verified.clear()


def generate_password(length_bytes: int = 15) -> str:
    """A random password for generated accounts (demo, provisioning): ~120 bits."""
    return secrets.token_urlsafe(length_bytes)
