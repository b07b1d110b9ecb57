"""Provisional codes in bulk, for the letters a population import sends.

Each profile the import creates gets an 8-digit code, kept as an HMAC like every code
(`codes.CodeHasher`), and a line in the letters file the CNAM prints and posts: the code
itself is written nowhere else. The annuaire's import calls `LetterCodes` once per batch
of new profiles, inside its transaction (the wiring connects the two): codes and profiles
are committed together, or neither.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.importing import bulk_insert
from caducee.annuaire.population import NewProfile
from caducee.webmail.codes import CodeHasher
from caducee.webmail.models import ActivationCode

LETTER_COLUMNS = "INS|Nom|Prénoms|Code provisoire|Valable jusqu'au"
_COLUMNS = ("patient_id", "code_hash", "attempts", "created_at", "expires_at")
_CODES = 10**8  # 8 digits
_UNBIASED = 2**64 - 2**64 % _CODES


class LetterCodes:
    """Issue a code per new profile (bulk insert) and hand each letter line to `write`;
    the population import's `OnCreated` (`prepare`, then `write`)."""

    def __init__(self, codes: CodeHasher, write: Callable[[bytes], Any], *, valid_days: int = 90) -> None:
        self.codes = codes
        self.write_letters = write
        self.valid_days = valid_days
        self.issued = 0
        self.write_letters((LETTER_COLUMNS + "\n").encode())

    def prepare(self, dialect: str, profiles: list[NewProfile]) -> tuple[list[tuple[Any, ...]], bytes]:
        """The codes' rows and the letters' lines, without the database (the import runs this
        while the server merges its next range)."""
        now = datetime.now(UTC)
        expires = now + timedelta(days=self.valid_days)
        until = f"{expires:%Y-%m-%d}"
        # On SQLite, the text SQLAlchemy's DateTime writes there (UTC, no offset).
        created_at, expires_at = (now, expires) if dialect == "postgresql" else (t.strftime("%Y-%m-%d %H:%M:%S.%f") for t in (now, expires))
        hash_code = self.codes.hash
        rows = []
        lines = []
        # One read of the system's CSPRNG for the batch, 64 bits a code; a draw from the top
        # sliver of 2**64 that is not a whole number of 10**8 is drawn again, so every code is
        # uniform, as secrets.randbelow would make it (one system call a code, at 66 million).
        for profile, drawn in zip(profiles, memoryview(os.urandom(8 * len(profiles))).cast("Q"), strict=True):
            code = f"{(drawn if drawn < _UNBIASED else secrets.randbelow(_CODES)) % _CODES:08d}"
            rows.append((profile.patient_id, hash_code("activation", profile.patient_id, code), 0, created_at, expires_at))
            lines.append(f"{profile.ins}|{profile.last_name}|{profile.first_names}|{code}|{until}\n")
        return rows, "".join(lines).encode()

    async def write(self, conn: AsyncConnection, prepared: tuple[list[tuple[Any, ...]], bytes]) -> None:
        """Store the hashes, then hand the letters on: both in the import's transaction's order."""
        rows, letters = prepared
        # The driver's bulk path (COPY on PostgreSQL): a national import issues 66 million codes.
        await bulk_insert(conn, ActivationCode.__tablename__, _COLUMNS, rows)
        self.write_letters(letters)
        self.issued += len(rows)

    async def __call__(self, conn: AsyncConnection, profiles: list[NewProfile]) -> None:
        await self.write(conn, self.prepare(conn.dialect.name, profiles))
