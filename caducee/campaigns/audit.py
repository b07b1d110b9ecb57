"""The audit trail of the campaign API: every call, accepted or refused, one row each."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.campaigns.models import AuditEntry


async def record(
    engine: AsyncEngine,
    *,
    action: str,
    status: int,
    token_id: int | None = None,
    sender: str = "",
    client: str = "",
    campaign_id: int | None = None,
    detail: str = "",
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            AuditEntry.__table__.insert().values(
                at=datetime.now(UTC),
                token_id=token_id,
                sender=sender,
                client=client[:64],
                action=action[:64],
                campaign_id=campaign_id,
                status=status,
                detail=detail[:500],
            )
        )
