"""Who a Pro Santé Connect identity is here: the annuaire's professional with that national
id, and the mailboxes they may open.

Read through the annuaire's service API, kept `cache_seconds` (the gateway's directory
cache): a retirement in the annuaire applies within it, and a mail client that opens ten
IMAP connections at once costs one look-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire.service import ProfessionalInfo, ProfessionalMailbox, find_professional, professional_mailboxes
from caducee.core.singleflight import SingleFlight
from caducee.identity.tokens import TokenRefused


@dataclass(frozen=True)
class Principal:
    """A professional signed in through Pro Santé Connect, as the annuaire knows them."""

    professional: ProfessionalInfo
    mailboxes: tuple[ProfessionalMailbox, ...]
    acr: str

    @property
    def national_id(self) -> str:
        return self.professional.national_id

    @property
    def name(self) -> str:
        pro = self.professional
        return " ".join(part for part in (pro.civility, pro.first_name, pro.last_name) if part)

    def owns(self, address: str) -> bool:
        return address.strip().lower() in {mailbox.address for mailbox in self.mailboxes}


class Directory:
    def __init__(self, engine: AsyncEngine, local_domains: list[str], *, cache_seconds: float = 5.0) -> None:
        self.engine = engine
        self.local_domains = local_domains
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ProfessionalInfo | None, tuple[ProfessionalMailbox, ...]]] = {}
        self._flights: SingleFlight[str, tuple[float, ProfessionalInfo | None, tuple[ProfessionalMailbox, ...]]] = SingleFlight()

    async def _load(self, national_id: str) -> tuple[float, ProfessionalInfo | None, tuple[ProfessionalMailbox, ...]]:
        async with self.engine.connect() as conn:
            info = await find_professional(conn, national_id)
            mailboxes = tuple(await professional_mailboxes(conn, national_id, local_domains=self.local_domains)) if info else ()
        if len(self._cache) > 50_000:
            self._cache.clear()
        entry = (time.monotonic(), info, mailboxes)
        self._cache[national_id] = entry
        return entry

    async def principal(self, national_id: str, acr: str) -> Principal:
        """The active professional with this national id; TokenRefused when unknown or retired."""
        entry = self._cache.get(national_id)
        if entry is None or time.monotonic() - entry[0] > self.cache_seconds:
            entry = await self._flights.run(national_id, lambda: self._load(national_id))
        _, info, mailboxes = entry
        if info is None:
            raise TokenRefused("unknown-professional", f"national id {national_id} is not in the annuaire")
        if not info.active:
            raise TokenRefused("retired-professional", f"national id {national_id} is retired in the annuaire")
        return Principal(info, mailboxes, acr)
