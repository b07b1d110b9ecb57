"""The professional portal's sessions: a random token in a cookie, stored as its SHA-256,
with its own CSRF token; idle and absolute expiry as the webmail's (separate settings,
separate table, separate cookie: a patient's session never opens the portal)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.core.clock import utcnow
from caducee.identity.models import ProSession

TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class SessionInfo:
    id: str
    national_id: str
    csrf_token: str
    acr: str
    created_at: datetime


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


class ProSessions:
    def __init__(self, engine: AsyncEngine, *, idle_minutes: int, session_hours: int) -> None:
        self.engine = engine
        self.idle = timedelta(minutes=idle_minutes)
        self.lifetime = timedelta(hours=session_hours)

    async def open(self, national_id: str, acr: str, provider_session: str) -> tuple[str, SessionInfo]:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        moment = utcnow()
        session_id = hashlib.sha256(token.encode()).hexdigest()
        async with self.engine.begin() as conn:
            await conn.execute(delete(ProSession).where(ProSession.expires_at < moment))
            await conn.execute(
                insert(ProSession).values(
                    id=session_id,
                    national_id=national_id,
                    csrf_token=csrf,
                    acr=acr,
                    provider_session=provider_session,
                    created_at=moment,
                    last_seen_at=moment,
                    expires_at=moment + self.lifetime,
                )
            )
        return token, SessionInfo(session_id, national_id, csrf, acr, moment)

    async def get(self, token: str) -> SessionInfo | None:
        """The live session of a cookie value; None when unknown, idle too long or too old."""
        if not token or len(token) > 100:
            return None
        session_id = hashlib.sha256(token.encode()).hexdigest()
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ProSession.__table__).where(ProSession.id == session_id))).first()
        if row is None:
            return None
        moment = utcnow()
        last_seen = _aware(row.last_seen_at)
        if _aware(row.expires_at) < moment or last_seen + self.idle < moment:
            await self.close(session_id)
            return None
        if moment - last_seen > TOUCH_EVERY:
            async with self.engine.begin() as conn:
                await conn.execute(update(ProSession).where(ProSession.id == session_id).values(last_seen_at=moment))
        return SessionInfo(row.id, row.national_id, row.csrf_token, row.acr, _aware(row.created_at))

    async def close(self, session_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(ProSession).where(ProSession.id == session_id))


async def purge_expired(engine: AsyncEngine) -> int:
    """Delete portal sessions past their end and sign-ins that never came back (the purge job runs it)."""
    from caducee.identity.models import LoginState

    moment = utcnow()
    async with engine.begin() as conn:
        sessions = await conn.execute(delete(ProSession).where(ProSession.expires_at < moment))
        states = await conn.execute(delete(LoginState).where(LoginState.expires_at < moment))
    return int(sessions.rowcount or 0) + int(states.rowcount or 0)
