"""What a patient was writing when their session ended: kept, and given back after login.

The session ends after `webmail_idle_minutes` without a request, and typing is not a
request: a patient who takes twenty minutes over a reply used to send it into the login
page and lose it (WCAG 2.2.1). The page warns before the end and offers to extend (see
webmail.js); when the form is sent anyway after the end, its text is kept here, sealed like
a message body, for the person the ended session belonged to (the form's CSRF token must be
that session's). After they sign in again, the page they were on opens with the text back
in the form, and the draft is deleted. Only the text is kept, never an attached file.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.core.reseal import Resealer, reseal_table
from caducee.crypto.atrest import BodyCipher
from caducee.webmail.accounts import now
from caducee.webmail.models import Draft

MAX_DRAFT = 40_000  # characters kept (a reply may have 20,000)


@dataclass(frozen=True)
class KeptDraft:
    acting_patient_id: int
    path: str
    text: str


class Drafts:
    def __init__(self, engine: AsyncEngine, cipher: BodyCipher) -> None:
        self.engine = engine
        self.cipher = cipher

    async def keep(self, patient_id: int, acting_patient_id: int, path: str, text: str) -> None:
        sealed = self.cipher.seal(text[:MAX_DRAFT].encode("utf-8"))
        async with self.engine.begin() as conn:
            await conn.execute(delete(Draft).where(Draft.patient_id == patient_id))
            await conn.execute(
                Draft.__table__.insert().values(
                    patient_id=patient_id, acting_patient_id=acting_patient_id, path=path[:200], sealed_text=sealed, created_at=now()
                )
            )

    async def waiting(self, patient_id: int) -> str | None:
        """The page a kept draft belongs to, if there is one."""
        async with self.engine.connect() as conn:
            return (await conn.execute(select(Draft.path).where(Draft.patient_id == patient_id))).scalar()

    async def take(self, patient_id: int) -> KeptDraft | None:
        """The draft, deleted as it is given back (once)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(select(Draft.acting_patient_id, Draft.path, Draft.sealed_text).where(Draft.patient_id == patient_id))
            ).first()
            if row is None:
                return None
            await conn.execute(delete(Draft).where(Draft.patient_id == patient_id))
        return KeptDraft(row.acting_patient_id, row.path, self.cipher.open(row.sealed_text).decode("utf-8", "replace"))


async def reseal(engine: AsyncEngine, cipher: Resealer) -> int:
    """`caducee keys rotate`: kept drafts under the current sealing key."""
    return await reseal_table(engine, Draft.__table__, ["sealed_text"], cipher)
