"""Password checks for mail clients (SMTP AUTH, IMAP LOGIN), with lock-out per account and
per client address (`caducee.core.throttle`): the mailbox and its password hash come from
the annuaire's service API."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire.service import resolve_parties
from caducee.core import pseudonyms
from caducee.core.passwords import verify_password
from caducee.core.throttle import Locked, LoginThrottle

log = logging.getLogger(__name__)


class MailboxAuthenticator:
    """Checks a mailbox address and password against the annuaire (argon2, off the loop)."""

    def __init__(
        self, engine: AsyncEngine, local_domains: list[str], throttle: LoginThrottle | None = None, *, concurrent_checks: int = 2
    ) -> None:
        self.engine = engine
        self.local_domains = local_domains
        self.throttle = throttle or LoginThrottle()
        # argon2id uses 64 MiB per check: bounding concurrent checks bounds memory (and
        # they are CPU-bound, so more at once would not be faster).
        self._checks = asyncio.Semaphore(concurrent_checks)

    async def verify(self, login: str, password: str, client_address: str, protocol: str = "mail") -> str | None:
        """The mailbox address on success, None on failure; raises Locked when locked out.
        A failure is one log line (the login pseudonymised if it looks like an INS, never
        the password)."""
        account = login.strip().lower()
        account_key, address_key = f"account:{account}", f"address:{client_address}"
        try:
            await self.throttle.check(account_key, address_key)
        except Locked as locked:
            log.warning("%s login refused (locked %d s): %s from %s", protocol, locked.seconds, pseudonyms.login(account), client_address)
            raise
        async with self.engine.connect() as conn:
            parties = await resolve_parties(conn, [account], local_domains=self.local_domains) if "@" in account else {}
        info = parties.get(account)
        stored = info.password_hash if info is not None and info.mailbox_id is not None and info.mailbox_type != "PAT" else None
        async with self._checks:
            ok = await asyncio.to_thread(verify_password, stored, password)
        if not ok:
            await self.throttle.failed(account_key, address_key)
            log.warning("%s login refused (wrong credentials): %s from %s", protocol, pseudonyms.login(account), client_address)
            return None
        await self.throttle.succeeded(account_key)
        return account
