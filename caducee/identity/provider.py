"""Pro Santé Connect as Caducée sees it over HTTP: the discovery document, the signing keys,
signature checks, userinfo.

Both documents are fetched on first use and kept `cache_seconds`. Keys rotate at the
provider: a token signed with a key id we do not hold makes us fetch the keys again, once;
refetches are spaced by `refetch_seconds`, so that tokens with made-up key ids cannot make
us hammer the provider.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from caducee.core.singleflight import SingleFlight
from caducee.identity.tokens import ALGORITHMS, Expectations, TokenRefused, check_claims, unverified_parts

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/openid-configuration"
MAX_DOCUMENT = 512 * 1024  # discovery, keys and userinfo are a few KB


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered something unusable (a temporary failure)."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str
    end_session_endpoint: str
    algorithms: tuple[str, ...]


def issuer_of(discovery_url: str) -> str:
    """The issuer a discovery URL belongs to (OpenID Connect Discovery 1.0, section 4)."""
    return discovery_url.removesuffix(WELL_KNOWN).rstrip("/") if discovery_url.endswith(WELL_KNOWN) else discovery_url.rstrip("/")


def _loopback(url: str) -> bool:
    return urlsplit(url).hostname in {"127.0.0.1", "localhost", "::1"}


def _secure(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme == "https" or (scheme == "http" and _loopback(url))


class Provider:
    """One OpenID provider: cached metadata and keys, token signature checks."""

    def __init__(
        self,
        discovery_url: str,
        *,
        timeout: float = 10.0,
        cache_seconds: float = 3600.0,
        refetch_seconds: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.discovery_url = discovery_url
        self.issuer = issuer_of(discovery_url)
        self.cache_seconds = cache_seconds
        self.refetch_seconds = refetch_seconds
        self.http = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False, headers={"User-Agent": "Caducee"})
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._keys: tuple[float, KeySet] | None = None
        self._last_refetch = float("-inf")
        self._flights: SingleFlight[str, Any] = SingleFlight()

    async def close(self) -> None:
        await self.http.aclose()

    async def get_json(self, url: str, **kwargs: Any) -> tuple[str, bytes]:
        """(content type, body) of a GET, bounded in size; ProviderUnavailable on any failure."""
        try:
            async with self.http.stream("GET", url, **kwargs) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise ProviderUnavailable(f"{url}: answer larger than {MAX_DOCUMENT} bytes")
                if response.status_code != 200:
                    raise ProviderUnavailable(f"{url}: HTTP {response.status_code}")
                return response.headers.get("content-type", "").split(";")[0].strip().lower(), body
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"{url}: {type(exc).__name__}") from None

    async def _fetch_metadata(self) -> ProviderMetadata:
        _, body = await self.get_json(self.discovery_url)
        try:
            document = json.loads(body)
        except ValueError:
            raise ProviderUnavailable("discovery document is not JSON") from None
        if not isinstance(document, dict):
            raise ProviderUnavailable("discovery document is not an object")
        if document.get("issuer") != self.issuer:
            # A document claiming another issuer is a misconfiguration or an attack: nothing it says is used.
            raise ProviderUnavailable(f"discovery document names issuer {str(document.get('issuer'))[:200]!r}, expected {self.issuer!r}")
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint", "end_session_endpoint"):
            value = document.get(name) or ""
            if not isinstance(value, str) or (value and not _secure(value)):
                raise ProviderUnavailable(f"discovery document: {name} is not an https URL")
            endpoints[name] = value
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not endpoints[name]:
                raise ProviderUnavailable(f"discovery document has no {name}")
        offered = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = tuple(alg for alg in ALGORITHMS if alg in offered) or ("RS256",)
        return ProviderMetadata(self.issuer, algorithms=algorithms, **endpoints)

    async def metadata(self) -> ProviderMetadata:
        cached = self._metadata
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]

        async def load() -> ProviderMetadata:
            value = await self._fetch_metadata()
            self._metadata = (time.monotonic(), value)
            return value

        return await self._flights.run("metadata", load)

    async def _fetch_keys(self) -> KeySet:
        metadata = await self.metadata()
        _, body = await self.get_json(metadata.jwks_uri)
        try:
            document = json.loads(body)
            keys = [key for key in document["keys"] if isinstance(key, dict) and key.get("use", "sig") == "sig" and "d" not in key]
            keyset = KeySet.import_key_set({"keys": keys})
        except (ValueError, KeyError, TypeError, JoseError):
            raise ProviderUnavailable("the provider's key set is unusable") from None
        self._keys = (time.monotonic(), keyset)
        log.info("PSC keys fetched: %s", ", ".join(str(key.kid) for key in keyset.keys) or "none")
        return keyset

    async def keys(self) -> KeySet:
        cached = self._keys
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        return await self._flights.run("keys", self._fetch_keys)

    async def _key_for(self, kid: str | None) -> Any:
        keyset = await self.keys()
        key = _find(keyset, kid)
        if key is None and time.monotonic() - self._last_refetch >= self.refetch_seconds:
            self._last_refetch = time.monotonic()
            log.info("PSC token signed with unknown key id %r: fetching the keys again", str(kid)[:64])
            keyset = await self._flights.run("keys", self._fetch_keys)
            key = _find(keyset, kid)
        if key is None:
            raise TokenRefused("unknown-key", f"no key {str(kid)[:64]!r} at the provider")
        return key

    async def verify(self, token: str, expected: Expectations, *, now: int | None = None) -> dict[str, Any]:
        """The claims of `token` once its signature and claims hold; TokenRefused otherwise,
        ProviderUnavailable when the keys cannot be had."""
        header, claims = unverified_parts(token)
        # A token of another issuer is refused before any key is looked for (or fetched).
        if claims.get("iss") != expected.issuer:
            raise TokenRefused("issuer", "not the configured issuer")
        algorithm = header.get("alg")
        metadata = await self.metadata()
        if algorithm not in metadata.algorithms:
            raise TokenRefused("algorithm", f"alg {str(algorithm)[:20]!r} is not accepted")
        kid = header.get("kid")
        key = await self._key_for(kid if isinstance(kid, str) else None)
        try:
            verified = jwt.decode(token, key, algorithms=[algorithm])
        except JoseError:
            raise TokenRefused("signature", "the signature does not verify") from None
        check_claims(verified.claims, expected, int(time.time()) if now is None else now)
        return dict(verified.claims)

    async def userinfo(self, access_token: str, *, client_id: str) -> dict[str, Any]:
        """The userinfo claims, whether the provider answers JSON or a signed JWT."""
        metadata = await self.metadata()
        if not metadata.userinfo_endpoint:
            return {}
        content_type, body = await self.get_json(metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"})
        if content_type == "application/jwt":
            header, claims = unverified_parts(body.decode("ascii", "replace").strip())
            algorithm = header.get("alg")
            if algorithm not in metadata.algorithms:
                raise TokenRefused("algorithm", "userinfo signed with an algorithm we do not accept")
            key = await self._key_for(header.get("kid") if isinstance(header.get("kid"), str) else None)
            try:
                claims = dict(jwt.decode(body.decode("ascii").strip(), key, algorithms=[algorithm]).claims)
            except JoseError:
                raise TokenRefused("signature", "the userinfo signature does not verify") from None
            if claims.get("iss") not in (None, self.issuer):
                raise TokenRefused("issuer", "userinfo from another issuer")
            audience = claims.get("aud")
            if audience is not None and client_id not in ([audience] if isinstance(audience, str) else audience):
                raise TokenRefused("audience", "userinfo for another client")
            return claims
        try:
            claims = json.loads(body)
        except ValueError:
            raise ProviderUnavailable("userinfo is neither JSON nor a JWT") from None
        if not isinstance(claims, dict):
            raise ProviderUnavailable("userinfo is not an object")
        return claims


def _find(keyset: KeySet, kid: str | None) -> Any:
    """The key named `kid`; a token without a key id only verifies against a lone key."""
    if kid is None:
        return keyset.keys[0] if len(keyset.keys) == 1 else None
    return next((key for key in keyset.keys if key.kid == kid), None)
