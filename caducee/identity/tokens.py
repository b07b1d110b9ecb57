"""Checking the claims of a token Pro Santé Connect signed: pure, no I/O, no clock of its own.

Signature checking needs the provider's keys and lives in `provider`; everything a token
must say once its signature holds is decided here, each refusal with a short reason for
the log (never the token itself) and a French sentence for the person.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from typing import Any

# A PSC access token is 1-3 KB. Anything much larger is refused before it is decoded.
MAX_TOKEN_LENGTH = 16 * 1024
# Asymmetric algorithms only: "none" and the HMAC family (a public key used as a shared
# secret) are never accepted, whatever the header says.
ALGORITHMS = ("RS256", "PS256", "ES256", "RS384", "RS512", "PS384", "PS512", "ES384")


class TokenRefused(Exception):
    """A token that may not be used; `reason` is a short code for the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Expectations:
    """What a token must say: who issued it, for whom, how strongly the person signed in."""

    issuer: str
    audiences: tuple[str, ...]
    acr_values: tuple[str, ...]
    leeway: int = 30
    nonce: str | None = None  # ID tokens: the nonce sent with the sign-in
    authorized_party: str | None = None  # ID tokens: `azp` when there are several audiences
    use: str = "access"  # "access" (a bearer token for our APIs and mail) or "id" (the sign-in's ID token)


# An ID token says who signed in, to the client that asked; it is not a credential for
# anything. Both kinds are signed by the same keys for overlapping audiences, so the kind
# must be read from the token: Keycloak (PSC) writes `typ` "Bearer" or "ID" in the claims,
# and only ID tokens carry `at_hash` / `c_hash` (OpenID Connect Core 3.1.3.6, 3.3.2.11).
_ID_TOKEN_CLAIMS = ("at_hash", "c_hash")


def _check_use(claims: dict[str, Any], use: str) -> None:
    kind = str(claims.get("typ", "")).lower()
    if use == "access" and (kind == "id" or any(name in claims for name in _ID_TOKEN_CLAIMS)):
        raise TokenRefused("token-type", "an ID token is not an access token")
    if use == "access" and kind not in ("", "bearer", "at+jwt"):
        raise TokenRefused("token-type", f"typ {kind[:20]!r} is not an access token")
    if use == "id" and kind not in ("", "id"):
        raise TokenRefused("token-type", "not an ID token")


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, not yet verified (to choose the key, and to
    refuse a foreign issuer without asking for keys)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenRefused("malformed", "empty or too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise TokenRefused("malformed", "not a signed JWT")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TokenRefused("malformed", "undecodable header or claims") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenRefused("malformed", "header or claims not an object")
    return header, claims


def _number(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenRefused("malformed", f"{name} is not a number")
    return int(value)


def check_claims(claims: dict[str, Any], expected: Expectations, now: int) -> None:
    """Raise TokenRefused unless the claims are those of a live token for us, of the kind asked."""
    if claims.get("iss") != expected.issuer:
        raise TokenRefused("issuer", "not the configured issuer")
    _check_use(claims, expected.use)
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if not any(isinstance(item, str) and item in expected.audiences for item in audiences):
        raise TokenRefused("audience", "not issued for Caducée")
    if expected.authorized_party is not None and len(audiences) > 1 and claims.get("azp") != expected.authorized_party:
        raise TokenRefused("audience", "azp is another client")
    expires = _number(claims, "exp")
    if expires is None:
        raise TokenRefused("malformed", "no exp")
    if now > expires + expected.leeway:
        raise TokenRefused("expired", f"expired {now - expires} s ago")
    not_before = _number(claims, "nbf")
    if not_before is not None and not_before > now + expected.leeway:
        raise TokenRefused("not-yet-valid", "nbf in the future")
    issued = _number(claims, "iat")
    if issued is not None and issued > now + expected.leeway:
        raise TokenRefused("not-yet-valid", "iat in the future")
    if claims.get("acr") not in expected.acr_values:
        raise TokenRefused("acr", f"acr {str(claims.get('acr'))[:40]!r} is not accepted")
    if expected.nonce is not None:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), expected.nonce.encode()):
            raise TokenRefused("nonce", "nonce differs from the sign-in's")


def national_id_of(claims: dict[str, Any], claim: str) -> str:
    """The professional's national id in `claim` (8 + RPPS, 0 + ADELI), checked for shape."""
    value = claims.get(claim)
    if not isinstance(value, str) or not 2 <= len(value) <= 40 or not value.isascii() or not value.isalnum():
        raise TokenRefused("no-national-id", f"no usable {claim}")
    return value
