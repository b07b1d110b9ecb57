"""Password hashing with argon2id (argon2-cffi), shared by every way of logging in."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; a missing or damaged hash is a refusal, not an error."""
    if not password_hash:
        # Spend the same time as a real check so that unknown accounts are not told apart.
        _HASHER.hash(password)
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def generate_password(length_bytes: int = 15) -> str:
    """A random password for generated accounts (demo, provisioning): ~120 bits."""
    return secrets.token_urlsafe(length_bytes)
