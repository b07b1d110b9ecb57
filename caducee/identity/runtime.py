"""The identity component built from the settings: one provider (discovery and key cache),
one directory cache, the access-token checker, the portal's sign-in and sessions.

`server.py` builds one per process and hands its parts to the HTTP app, the SMTP listeners
and IMAP; with no `psc_client_id` the portal says PSC is not open and no listener offers
the token mechanisms.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.config import Settings
from caducee.core.throttle import LoginThrottle
from caducee.identity.access import AccessTokens, TokenPolicy
from caducee.identity.mailtoken import TokenMailAuthenticator
from caducee.identity.professionals import Directory
from caducee.identity.provider import Provider
from caducee.identity.sessions import ProSessions
from caducee.identity.signin import START_WINDOW, STARTS_PER_ADDRESS, ProSignIn, RelyingParty
from caducee.identity.web import IdentityContext
from caducee.limits.service import DatabaseFailures


def redirect_uris(settings: Settings) -> tuple[str, str]:
    """(the sign-in redirect URI, the post-logout one) from the settings."""
    redirect = settings.psc_redirect_uri or urljoin(settings.webmail_url, "/pro/connexion/retour")
    parts = urlsplit(redirect)
    return redirect, f"{parts.scheme}://{parts.netloc}/pro/deconnecte"


@dataclass
class Identity:
    provider: Provider
    directory: Directory
    tokens: AccessTokens | None
    context: IdentityContext

    def mail(self, throttle: LoginThrottle, protocol: str) -> TokenMailAuthenticator | None:
        """The token login of a mail protocol, sharing the passwords' lock-out; None when PSC is off."""
        return TokenMailAuthenticator(self.tokens, throttle, protocol) if self.tokens is not None else None

    async def close(self) -> None:
        await self.provider.close()


def build_identity(engine: AsyncEngine, settings: Settings) -> Identity:
    provider = Provider(settings.psc_discovery_url, timeout=settings.psc_timeout, cache_seconds=settings.psc_cache_seconds)
    directory = Directory(engine, settings.local_domains, cache_seconds=settings.directory_cache_seconds)
    tokens = None
    if settings.psc_client_id:
        policy = TokenPolicy(
            audiences=tuple(settings.psc_audiences) or (settings.psc_client_id,),
            acr_values=tuple(settings.psc_acr_values),
            national_id_claim=settings.psc_national_id_claim,
            scope=" ".join(settings.psc_scopes),
            leeway=settings.psc_leeway_seconds,
        )
        tokens = AccessTokens(provider, directory, policy)
    redirect, after_logout = redirect_uris(settings)
    party = RelyingParty(
        client_id=settings.psc_client_id,
        client_secret=settings.psc_client_secret,
        redirect_uri=redirect,
        post_logout_redirect_uri=after_logout,
        scopes=tuple(settings.psc_scopes),
        acr_values=tuple(settings.psc_acr_values),
        national_id_claim=settings.psc_national_id_claim,
        leeway=settings.psc_leeway_seconds,
        timeout=settings.psc_timeout,
    )
    # Sign-ins started per client address, counted in the database: every node sees the same.
    starts = LoginThrottle(
        max_failures_per_address=STARTS_PER_ADDRESS,
        window=START_WINDOW,
        lockout=START_WINDOW,
        store=DatabaseFailures(engine),
        namespace="pro-signin",
    )
    context = IdentityContext(
        signin=ProSignIn(engine, provider, directory, party, starts=starts),
        sessions=ProSessions(engine, idle_minutes=settings.pro_idle_minutes, session_hours=settings.pro_session_hours),
        directory=directory,
        tokens=tokens,
        cookie_secure=settings.webmail_cookie_secure,
    )
    return Identity(provider, directory, tokens, context)
