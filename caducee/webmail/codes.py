"""Secrets of the login: tokens, one-time codes and how they are kept.

Tokens (session, challenge) are 256-bit random values; the database holds their SHA-256,
so a copy of the database opens no session. Codes are 6 digits; the database holds an
HMAC of each under a key derived from the master key, so a copy of the database does not
give them away to a million offline guesses either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_code(digits: int = 6) -> str:
    return f"{secrets.randbelow(10**digits):0{digits}d}"


class CodeHasher:
    def __init__(self, master_key: bytes) -> None:
        self._key = hmac.new(master_key, b"caducee:webmail-codes:v1", hashlib.sha256).digest()

    def hash(self, purpose: str, owner: int, code: str) -> str:
        """Bound to its purpose and owner: a code for one login cannot open another."""
        message = f"{purpose}:{owner}:{code.strip()}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def matches(self, stored: str, purpose: str, owner: int, code: str) -> bool:
        return hmac.compare_digest(stored, self.hash(purpose, owner, code))


def mask_email(address: str) -> str:
    """c•••••@example.org: enough to recognise one's address, not to learn someone else's."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}{'•' * max(len(local) - 1, 3)}@{domain}"
