"""A patient's webmail preferences (the `webmail_preferences` table): hiding prevention messages."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.webmail.models import Preferences


async def hides_prevention(conn: AsyncConnection, patient_id: int) -> bool:
    found = (await conn.execute(select(Preferences.hide_prevention).where(Preferences.patient_id == patient_id))).scalar_one_or_none()
    return bool(found)


async def set_hide_prevention(conn: AsyncConnection, patient_id: int, hidden: bool) -> None:
    now = datetime.now(UTC)
    changed = await conn.execute(
        update(Preferences).where(Preferences.patient_id == patient_id).values(hide_prevention=hidden, updated_at=now)
    )
    if not changed.rowcount:
        await conn.execute(Preferences.__table__.insert().values(patient_id=patient_id, hide_prevention=hidden, updated_at=now))
