"""Token logins for mail clients (SMTP AUTH and IMAP AUTHENTICATE OAUTHBEARER / XOAUTH2).

The protocol front-ends only move bytes: they hand the decoded SASL message here and get
back the mailbox address, or a failure to answer with the mechanism's error challenge.
The lock-out is the passwords' one (the same `LoginThrottle`, the same keys: the account
asked for and the client's address), so switching from guessing passwords to guessing
tokens gains nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from caducee.core.throttle import LoginThrottle
from caducee.identity.access import AccessTokens
from caducee.identity.provider import ProviderUnavailable
from caducee.identity.sasl import SaslError, error_challenge, parse
from caducee.identity.tokens import TokenRefused

log = logging.getLogger(__name__)


class TokenLoginFailed(Exception):
    """The exchange fails: send `challenge` (RFC 7628's JSON error), then refuse.

    `temporary` is set when the provider could not be reached: the client should try again
    later, and the failure does not count towards the lock-out.
    """

    def __init__(self, reason: str, challenge: bytes, *, temporary: bool = False) -> None:
        self.reason = reason
        self.challenge = challenge
        self.temporary = temporary
        super().__init__(reason)


@dataclass
class TokenMailAuthenticator:
    tokens: AccessTokens
    throttle: LoginThrottle
    protocol: str = "mail"  # for the log only

    def challenge(self, mechanism: str) -> bytes:
        return error_challenge(mechanism, scope=self.tokens.policy.scope, openid_configuration=self.tokens.provider.discovery_url)

    async def verify(self, mechanism: str, message: bytes, client_address: str) -> str:
        """The mailbox address the token opens; raises Locked (lock-out) or TokenLoginFailed."""
        try:
            parsed = parse(mechanism, message)
        except SaslError as error:
            parsed = None
            syntax = str(error)
        requested = parsed.authzid if parsed is not None else None
        # Before the token is checked, a message naming no mailbox (OAUTHBEARER without
        # authzid, or garbage) belongs to no account: its failures count against the client's
        # address only (a bucket of its own per address), never against a key every such
        # client shares, which five packets every quarter of an hour would keep locked.
        address_key = f"address:{client_address}"
        account_key = f"account:{requested.lower()}" if requested else f"account:?{client_address}"
        await self.throttle.check(account_key, address_key)
        if parsed is None:
            await self.throttle.failed(account_key, address_key)
            log.warning("%s %s from %s refused: malformed (%s)", self.protocol, mechanism, client_address, syntax)
            raise TokenLoginFailed("malformed", self.challenge(mechanism))
        try:
            principal = await self.tokens.principal(parsed.token)
        except ProviderUnavailable as error:
            log.error("%s %s from %s: Pro Santé Connect unavailable (%s)", self.protocol, mechanism, client_address, error)
            raise TokenLoginFailed("provider-unavailable", self.challenge(mechanism), temporary=True) from None
        except TokenRefused as refused:
            await self.throttle.failed(account_key, address_key)
            log.warning("%s %s from %s for %s refused: %s", self.protocol, mechanism, client_address, requested, refused)
            raise TokenLoginFailed(refused.reason, self.challenge(mechanism)) from None
        address = requested
        if address is None:  # OAUTHBEARER without authzid: the professional's own (PER) mailbox, if there is just one
            personal = [box.address for box in principal.mailboxes if box.type == "PER"]
            address = personal[0] if len(personal) == 1 else None
        if address is not None and not requested:
            await self.throttle.check(f"account:{address.lower()}")  # the mailbox it resolved to may be locked
        if address is None or not principal.owns(address):
            await self.throttle.failed(account_key, address_key)
            log.warning(
                "%s %s from %s refused: %s (%s) may not open %s",
                self.protocol,
                mechanism,
                client_address,
                principal.name,
                principal.national_id,
                requested or "(no mailbox named)",
            )
            raise TokenLoginFailed("not-owner", self.challenge(mechanism))
        await self.throttle.succeeded(account_key)
        log.info("%s %s login: %s (%s) opens %s", self.protocol, mechanism, principal.name, principal.national_id, address)
        return address
