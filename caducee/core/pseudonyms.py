"""Pseudonyms for patient identifiers in logs: a keyed hash, stable within an operator.

Logs travel further than the database (to a collector, to a support ticket) and an INS is
health data. A line says `pat:3f9c0a1b7e2d` instead: the same patient always gets the same
pseudonym, so a support engineer can follow one person's failures across lines, but the
INS cannot be found from it without the key (an unkeyed hash of a 15-digit INS falls to
enumeration in minutes). `server.py` sets the key from the master key at start; until
then a random per-process key is used, which still shows no identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

_INS_LIKE = re.compile(r"^[0-9][0-9ab]{14}$", re.IGNORECASE)  # 15 characters, Corsica's 2A/2B included

_key = secrets.token_bytes(32)


def configure(master_key: bytes) -> None:
    """Derive the pseudonym key from the operator's master key (the same in every worker)."""
    global _key
    _key = hmac.new(master_key, b"caducee:log-pseudonyms:v1", hashlib.sha256).digest()


def pseudonym(identifier: str) -> str:
    """`pat:` and 12 hex digits of HMAC-SHA-256 of the identifier (lower-cased, trimmed)."""
    digest = hmac.new(_key, identifier.strip().lower().encode("utf-8", "replace"), hashlib.sha256).hexdigest()
    return f"pat:{digest[:12]}"


def address(value: str, patient_domain: str) -> str:
    """A mail address as a log shows it: a patient's (<INS>@patient_domain) pseudonymised,
    any other as it is."""
    local, at, domain = value.strip().lower().rpartition("@")
    if at and domain == patient_domain.lower():
        return f"{pseudonym(local)}@{domain}"
    return value


def login(value: str) -> str:
    """A login name as a log shows it: one that looks like an INS (alone or as the local part
    of an address, whatever the domain: a patient trying a mail client) pseudonymised, a
    professional's address as it is, anything else cut to 64 printable characters."""
    text = "".join(ch for ch in value.strip() if ch.isprintable())[:64]
    local, at, domain = text.lower().rpartition("@")
    candidate = local if at else text.lower()
    if _INS_LIKE.match(candidate.replace(" ", "").replace(".", "").replace("-", "")):
        return f"{pseudonym(candidate)}@{domain}" if at else pseudonym(candidate)
    return text
