"""The campaign API's tokens: random, 256 bits, kept as their SHA-256, rotated by a command.

A token this long cannot be guessed, so a fast hash is enough at rest (a slow one would
cost every API call tens of milliseconds for nothing); a copy of the database gives no
usable token. Rotating issues a new token and revokes the sender's previous ones at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.campaigns.models import ApiToken


@dataclass(frozen=True)
class Caller:
    token_id: int
    sender: str


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


async def rotate(conn: AsyncConnection, sender: str, token: str | None = None) -> str:
    """A new token for `sender`; every earlier token of that sender stops working now."""
    token = token or secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    await conn.execute(update(ApiToken).where(ApiToken.sender == sender.lower(), ApiToken.revoked_at.is_(None)).values(revoked_at=now))
    await conn.execute(ApiToken.__table__.insert().values(sender=sender.lower(), token_sha256=digest(token), created_at=now))
    return token


async def authenticate(conn: AsyncConnection, token: str) -> Caller | None:
    """Who presents `token`, if it is a live token."""
    if not token or len(token) > 200:
        return None
    wanted = digest(token)
    row = (
        await conn.execute(
            select(ApiToken.id, ApiToken.sender, ApiToken.token_sha256, ApiToken.revoked_at).where(ApiToken.token_sha256 == wanted)
        )
    ).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_sha256, wanted):
        return None
    return Caller(int(row.id), row.sender)
