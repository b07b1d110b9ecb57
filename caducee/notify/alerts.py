"""Telling a patient by email that a message is waiting in their health messaging.

The alert carries no health information: not the sender, not the subject, only that
something is there and where to read it. At most one per patient per
`notify_new_mail_minutes`, so a conversation of ten messages is one alert. Alerts are
best effort and sent after the message is committed, off the SMTP path: a relay that is
down loses an alert, never a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire import patients
from caducee.config import Settings
from caducee.gateway.hooks import Delivered
from caducee.notify.notifier import Notifier
from caducee.policies import PartyKind

log = logging.getLogger(__name__)


class NewMailAlerts:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        notifier: Notifier,
        muted: Callable[[Iterable[str]], Awaitable[set[str]]] | None = None,
        claim: Callable[[list[str], float], Awaitable[list[str]]] | None = None,
    ) -> None:
        """`muted` says which addresses' owners turned these emails off (the webmail keeps
        that choice; server.py connects it). `claim(addresses, seconds)` returns the addresses
        not alerted within `seconds`, now marked alerted: server.py connects the database's
        (`limits.service.Windows`), so that every node shares the one rhythm; without it,
        this process remembers."""
        self.engine = engine
        self.settings = settings
        self.notifier = notifier
        self.muted = muted
        self.claim = claim
        self._last: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, delivered: Delivered) -> None:
        """A post-delivery consumer of the pipeline: returns at once. Patients only, and
        nothing for a CNAM campaign (the campaign is its own announcement)."""
        if delivered.sender_kind is PartyKind.CNAM:
            return
        addresses = [rcpt.address for rcpt in delivered.patients]
        if not addresses:
            return
        if self.claim is not None:
            due = addresses
        else:
            moment = time.monotonic()
            interval = self.settings.notify_new_mail_minutes * 60
            due = [a for a in addresses if moment - self._last.get(a, -interval) >= interval]
            if not due:
                return
            for address in due:
                self._last[address] = moment
            if len(self._last) > 200_000:
                self._last.clear()
        task = asyncio.get_running_loop().create_task(self._send(due))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, addresses: list[str]) -> None:
        try:
            if self.claim is not None:
                addresses = await self.claim(addresses, self.settings.notify_new_mail_minutes * 60)
                if not addresses:
                    return
            if self.muted is not None:
                off = await self.muted(addresses)
                addresses = [address for address in addresses if address not in off]
                if not addresses:
                    return
            async with self.engine.connect() as conn:
                emails = await patients.emails_of(conn, addresses)
            for email in emails.values():
                await self.notifier.send(
                    email,
                    "Un nouveau message vous attend sur votre messagerie santé",
                    "Bonjour,\n\nUn professionnel de santé vous a écrit sur votre messagerie santé Caducée.\n"
                    f"Pour lire son message, connectez-vous : {self.settings.webmail_url}\n\n"
                    "Pour protéger votre vie privée, ce courriel ne dit ni qui vous a écrit ni à quel sujet.\n"
                    "Caducée ne vous demandera jamais votre mot de passe ni votre code par courriel.\n",
                )
        except Exception:  # best effort: the message itself is safely stored
            log.exception("new-mail alert to %d patient(s) not sent", len(addresses))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
