"""Recording and reading the access history.

Records are written through a group commit: a page view waits for its record to be on
disk (an access that is not recorded did not happen), but fifty readers at once share
one transaction instead of fifty fsyncs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.core.groupcommit import GroupCommitter
from caducee.history.models import AccessRecord

ACTION_LABELS = {
    "login": "Connexion",
    "message-read": "Lecture d'une conversation",
    "attachment-read": "Ouverture d'une pièce jointe",
    "message-sent": "Envoi d'un message",
    "profile-closed": "Fermeture du profil",
    "profile-opposed": "Opposition à l'ouverture du profil",
    "activated": "Activation du profil",
    "password-changed": "Changement du mot de passe",
    "password-reset": "Nouveau mot de passe (mot de passe oublié)",
    "email-changed": "Changement de l'adresse e-mail",
    "data-exported": "Téléchargement des messages",
}


@dataclass(frozen=True)
class Access:
    patient_id: int
    actor: str
    action: str
    detail: str = ""


@dataclass(frozen=True)
class AccessEntry:
    at: datetime
    actor: str
    action: str
    label: str
    detail: str


class AccessHistory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._committer = GroupCommitter(self._write)

    async def _write(self, items: list[Access]) -> list[None]:
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(AccessRecord.__table__),
                [
                    {"patient_id": a.patient_id, "actor": a.actor[:256], "action": a.action, "detail": a.detail[:512], "at": now}
                    for a in items
                ],
            )
        return [None] * len(items)

    async def record(self, access: Access) -> None:
        """Append one record; returns once it is committed."""
        await self._committer.submit(access)

    async def read(self, patient_id: int, *, limit: int = 100) -> list[AccessEntry]:
        """The patient's most recent records, newest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(AccessRecord.at, AccessRecord.actor, AccessRecord.action, AccessRecord.detail)
                .where(AccessRecord.patient_id == patient_id)
                .order_by(AccessRecord.id.desc())
                .limit(limit)
            )
            return [AccessEntry(row.at, row.actor, row.action, ACTION_LABELS.get(row.action, row.action), row.detail) for row in rows]

    async def close(self) -> None:
        await self._committer.stop()
