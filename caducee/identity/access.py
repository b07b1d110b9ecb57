"""Access tokens of Pro Santé Connect presented to Caducée (JSON APIs, IMAP, SMTP): checked
here once, for every way in.

A token is accepted when the provider's key signed it, it comes from the configured
issuer, names one of our audiences, is live, says the professional signed in at an
accepted level (`acr`), and its national id is an active professional of the annuaire.
Tokens are not kept: they live a few minutes, and each use is checked again.
"""

from __future__ import annotations

from dataclasses import dataclass

from caducee.identity.professionals import Directory, Principal
from caducee.identity.provider import Provider
from caducee.identity.tokens import Expectations, national_id_of


@dataclass(frozen=True)
class TokenPolicy:
    audiences: tuple[str, ...]
    acr_values: tuple[str, ...]
    national_id_claim: str
    scope: str  # what a client should ask for, said in error challenges
    leeway: int = 30


class AccessTokens:
    def __init__(self, provider: Provider, directory: Directory, policy: TokenPolicy) -> None:
        self.provider = provider
        self.directory = directory
        self.policy = policy

    @property
    def expectations(self) -> Expectations:
        return Expectations(self.provider.issuer, self.policy.audiences, self.policy.acr_values, self.policy.leeway)

    async def principal(self, token: str) -> Principal:
        """The professional a bearer token stands for; TokenRefused (with its reason) when the
        token or the professional may not be used, ProviderUnavailable when the keys cannot be had."""
        claims = await self.provider.verify(token, self.expectations)
        national_id = national_id_of(claims, self.policy.national_id_claim)
        return await self.directory.principal(national_id, str(claims.get("acr")))
