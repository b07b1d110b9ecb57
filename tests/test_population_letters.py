"""Provisional codes issued in bulk by a population import: one per created profile, kept as
an HMAC, the clear code only in the letters, committed with the profiles."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import DateTime, text

from caducee.annuaire.population import PlainSource, import_population
from caducee.annuaire.synthetic_population import write_population
from caducee.webmail.codes import CodeHasher
from caducee.webmail.letters import LETTER_COLUMNS, LetterCodes


async def test_every_created_profile_gets_one_code_in_the_letters(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hasher = CodeHasher(b"k" * 32)
    letters = io.BytesIO()
    codes = LetterCodes(hasher, letters.write, valid_days=90)
    path = write_population(tmp_path / "population.txt", 1200, opposed_every=40)
    async with engine.begin() as conn:
        report = await import_population(conn, PlainSource(path), patient_domain=settings.patient_domain, on_created=codes)
    lines = letters.getvalue().decode().splitlines()
    assert lines[0] == LETTER_COLUMNS and len(lines) - 1 == codes.issued == report.profiles_for_letters > 1000
    async with engine.connect() as conn:
        stored = {
            r.ins: r
            for r in await conn.execute(
                text(
                    "SELECT p.id, p.ins, c.code_hash, c.attempts, c.expires_at FROM webmail_activation_codes c JOIN patients p ON p.id = c.patient_id"
                ).columns(expires_at=DateTime(timezone=True))
            )
        }
    assert len(stored) == codes.issued
    for line in lines[1:]:
        ins, _, _, code, until = line.split("|")
        row = stored[ins]
        assert hasher.matches(row.code_hash, "activation", int(row.id), code) and code not in row.code_hash and row.attempts == 0
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        assert abs(expires - (datetime.now(UTC) + timedelta(days=90))) < timedelta(minutes=5)
        assert until == f"{expires:%Y-%m-%d}"


def test_the_code_hash_is_the_hmac_sha256_codes_were_always_kept_as() -> None:
    """Codes already issued (letters in the post) must still match after the faster hashing."""
    import hashlib
    import hmac

    hasher = CodeHasher(b"m" * 32)
    key = hmac.new(b"m" * 32, b"caducee:webmail-codes:v1", hashlib.sha256).digest()
    for purpose, owner, code in (("activation", 1, "01234567"), ("login", 66_000_000, " 123456 "), ("reset", 7, "")):
        expected = hmac.new(key, f"{purpose}:{owner}:{code.strip()}".encode(), hashlib.sha256).hexdigest()
        assert hasher.hash(purpose, owner, code) == expected and hasher.matches(expected, purpose, owner, code)
