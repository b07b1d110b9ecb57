"""Signing a professional in with Pro Santé Connect: the authorization code flow with PKCE,
`state` and `nonce`, as a relying party (authlib's OAuth 2.0 client over HTTP).

`begin` records a sign-in (the SHA-256 of its `state`, the browser it was started from,
the nonce and the PKCE verifier) and gives the provider's URL to send the browser to.
`finish` takes the callback: the `state` must be one we issued to this browser, unused and
recent (the row is deleted as it is read, so a callback works once); the code is redeemed
at the token endpoint with the verifier; the ID token is checked (signature, issuer,
audience, expiry, nonce, acr); userinfo must be about the same person; and the national id
must be an active professional of the annuaire. Every refusal raises SignInRefused with a
reason for the log and a sentence for the page.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import warnings
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.core.clock import utcnow
from caducee.core.throttle import Locked, LoginThrottle
from caducee.identity.models import LoginState
from caducee.identity.professionals import Directory, Principal
from caducee.identity.provider import Provider, ProviderUnavailable
from caducee.identity.tokens import Expectations, TokenRefused, national_id_of

with warnings.catch_warnings():
    # authlib prefers the httpx2 package and warns when it falls back to httpx, which
    # Caducée already uses; the client's behaviour is the same. (authlib's own module sets
    # its warnings to "always" when first imported, hence the order.)
    import authlib.deprecate

    warnings.filterwarnings("ignore", message="The httpx module is deprecated", category=authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

log = logging.getLogger(__name__)

SIGN_IN_MINUTES = 10  # a sign-in not finished by then must start again
MAX_PARAMETER = 2048  # code and state are short; anything longer is hostile

# What the page says for each reason (the log says the reason and its detail).
MESSAGES = {
    "state": "Cette demande de connexion est inconnue, a déjà servi ou a expiré. Recommencez la connexion depuis cette page.",
    "cancelled": "La connexion avec Pro Santé Connect a été annulée ou refusée. Vous pouvez recommencer.",
    "code": "Le code de connexion transmis par Pro Santé Connect a expiré ou a déjà servi. Recommencez la connexion.",
    "acr": "Votre moyen de connexion n'offre pas le niveau de sécurité exigé. Connectez-vous avec votre carte CPS ou l'application e-CPS.",
    "audience": "Pro Santé Connect a délivré une identité destinée à un autre service. Par sécurité, elle est refusée.",
    "issuer": "L'identité reçue n'a pas été délivrée par Pro Santé Connect. Par sécurité, elle est refusée.",
    "expired": "L'identité reçue de Pro Santé Connect a expiré. Recommencez la connexion.",
    "unknown-professional": "Pro Santé Connect vous a bien identifié, mais vous n'êtes pas inscrit dans l'annuaire de Caducée. "
    "Contactez votre établissement ou le support Caducée.",
    "retired-professional": "Votre inscription dans l'annuaire de Caducée n'est plus active : l'accès à l'espace professionnel est fermé. "
    "Contactez le support Caducée si c'est une erreur.",
    "provider-unavailable": "Pro Santé Connect ne répond pas pour le moment. Réessayez dans quelques minutes.",
    "not-configured": "La connexion par Pro Santé Connect n'est pas encore ouverte sur ce service.",
    "too-many": "Trop de connexions ont été commencées depuis votre réseau sans aboutir. Réessayez dans quelques minutes.",
}
STARTS_PER_ADDRESS = 30  # sign-ins a client address may start in START_WINDOW seconds (each writes a row)
START_WINDOW = 600.0
DEFAULT_MESSAGE = (
    "L'identité reçue de Pro Santé Connect n'a pas pu être vérifiée. Par sécurité, elle est refusée. Recommencez la connexion."
)


class SignInRefused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    @property
    def message(self) -> str:
        return MESSAGES.get(self.reason, DEFAULT_MESSAGE)


@dataclass(frozen=True)
class RelyingParty:
    client_id: str
    client_secret: str
    redirect_uri: str
    post_logout_redirect_uri: str
    scopes: tuple[str, ...]
    acr_values: tuple[str, ...]
    national_id_claim: str
    leeway: int = 30
    timeout: float = 10.0


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    provider_session: str


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class ProSignIn:
    def __init__(
        self, engine: AsyncEngine, provider: Provider, directory: Directory, party: RelyingParty, *, starts: LoginThrottle | None = None
    ) -> None:
        """`starts`: how many sign-ins a client address may start (every node counting the
        same ones when its store is the database's)."""
        self.engine = engine
        self.provider = provider
        self.directory = directory
        self.party = party
        self.starts = starts or LoginThrottle(max_failures_per_address=STARTS_PER_ADDRESS, window=START_WINDOW, lockout=START_WINDOW)

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            self.party.client_id,
            self.party.client_secret,
            scope=" ".join(self.party.scopes),
            redirect_uri=self.party.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic",
            timeout=self.party.timeout,
        )

    async def begin(self, address: str = "unknown") -> tuple[str, str]:
        """(the provider's authorization URL, the browser binding to set as a cookie).

        Each start writes a row (the state, nonce and PKCE verifier, until the provider
        sends the browser back): a client address may start only so many."""
        if not self.party.client_id:
            raise SignInRefused("not-configured")
        address_key = f"pro-signin-web:{address}"
        try:
            await self.starts.check(address_key)
        except Locked:
            raise SignInRefused("too-many", address) from None
        await self.starts.attempted(address_key)
        try:
            metadata = await self.provider.metadata()
        except ProviderUnavailable as error:
            raise SignInRefused("provider-unavailable", str(error)) from None
        state, nonce, verifier, browser = (
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(64),
            secrets.token_urlsafe(32),
        )
        moment = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(delete(LoginState).where(LoginState.expires_at < moment))
            await conn.execute(
                insert(LoginState).values(
                    id=digest(state),
                    browser=digest(browser),
                    nonce=nonce,
                    code_verifier=verifier,
                    created_at=moment,
                    expires_at=moment + timedelta(minutes=SIGN_IN_MINUTES),
                )
            )
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                metadata.authorization_endpoint,
                state=state,
                nonce=nonce,
                code_verifier=verifier,
                acr_values=" ".join(self.party.acr_values),
            )
        return url, browser

    async def _take_state(self, state: str, browser: str) -> LoginState:
        """The sign-in `state` names, deleted as it is read; SignInRefused unless it is ours,
        recent, and started from this browser."""
        if not state or len(state) > MAX_PARAMETER:
            raise SignInRefused("state", "missing or oversized state")
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(LoginState.__table__).where(LoginState.id == digest(state)))).first()
            if row is None:
                raise SignInRefused("state", "unknown or already used state")
            deleted = await conn.execute(delete(LoginState).where(LoginState.id == row.id))
        if deleted.rowcount != 1:  # another request took it between our read and our delete
            raise SignInRefused("state", "state used concurrently")
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=utcnow().tzinfo)
        if expires < utcnow():
            raise SignInRefused("state", "expired state")
        if not browser or not secrets.compare_digest(row.browser, digest(browser)):
            raise SignInRefused("state", "state started from another browser")
        return LoginState(id=row.id, browser=row.browser, nonce=row.nonce, code_verifier=row.code_verifier)

    async def finish(self, *, state: str, code: str, error: str, issuer: str, browser: str) -> SignedIn:
        """The professional of a callback; SignInRefused with the reason otherwise."""
        if not self.party.client_id:
            raise SignInRefused("not-configured")
        started = await self._take_state(state, browser)
        if error:
            raise SignInRefused("cancelled", f"provider answered error={error[:64]!r}")
        if issuer and issuer != self.provider.issuer:  # RFC 9207: a response from another provider (mix-up)
            raise SignInRefused("issuer", "iss parameter of the response is another provider")
        if not code or len(code) > MAX_PARAMETER:
            raise SignInRefused("code", "missing or oversized code")
        try:
            metadata = await self.provider.metadata()
            async with self._client() as client:
                token = await client.fetch_token(metadata.token_endpoint, code=code, code_verifier=started.code_verifier)
        except OAuthError as failure:
            raise SignInRefused("code", f"token endpoint answered {failure.error}") from None
        except ProviderUnavailable as failure:
            raise SignInRefused("provider-unavailable", str(failure)) from None
        except Exception as failure:  # noqa: BLE001 - the network, a non-JSON answer: the provider failed us
            raise SignInRefused("provider-unavailable", f"token endpoint: {type(failure).__name__}") from None
        id_token, access_token = token.get("id_token"), token.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise SignInRefused("malformed", "no ID token or access token in the token response")
        expected = Expectations(
            self.provider.issuer,
            (self.party.client_id,),
            self.party.acr_values,
            self.party.leeway,
            nonce=started.nonce,
            authorized_party=self.party.client_id,
            use="id",
        )
        try:
            claims = await self.provider.verify(id_token, expected)
            info = await self.provider.userinfo(access_token, client_id=self.party.client_id)
            if info and info.get("sub") != claims.get("sub"):  # OpenID Connect Core 5.3.2
                raise TokenRefused("userinfo", "userinfo is about another subject")
            national_id = national_id_of({**info, **claims}, self.party.national_id_claim)
            if info.get("SubjectNameID") not in (None, national_id):
                raise TokenRefused("userinfo", "SubjectNameID and the national id claim differ")
            principal = await self.directory.principal(national_id, str(claims.get("acr")))
        except TokenRefused as refused:
            raise SignInRefused(refused.reason, refused.detail) from None
        except ProviderUnavailable as failure:
            raise SignInRefused("provider-unavailable", str(failure)) from None
        return SignedIn(principal, str(claims.get("sid", ""))[:128])

    async def logout_url(self) -> str | None:
        """Where to send the browser to end the session at the provider too (RP-Initiated Logout)."""
        try:
            metadata = await self.provider.metadata()
        except ProviderUnavailable:
            return None
        if not metadata.end_session_endpoint:
            return None
        query = urlencode({"client_id": self.party.client_id, "post_logout_redirect_uri": self.party.post_logout_redirect_uri})
        return f"{metadata.end_session_endpoint}?{query}"


def origin_of(url: str | None) -> str:
    """`scheme://host:port` of a URL ('' for none): the portal's pages let their logout form be
    redirected there (CSP form-action)."""
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
