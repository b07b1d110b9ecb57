"""The two SASL mechanisms mail clients send OAuth 2.0 tokens with: parsing and the error
challenge, shared by SMTP AUTH and IMAP AUTHENTICATE (pure: bytes in, values out).

- OAUTHBEARER (RFC 7628): `n,a=<authzid>,` ^A `auth=Bearer <token>` ^A [`host=...` ^A ...] ^A.
  On failure the server sends a JSON error as a challenge, the client answers a lone ^A,
  then the server fails the exchange (section 3.2.3).
- XOAUTH2 (Google's, which most clients speak): `user=<address>` ^A `auth=Bearer <token>` ^A ^A;
  failure is the same dance with a JSON error and an empty answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MECHANISMS = ("OAUTHBEARER", "XOAUTH2")
MAX_MESSAGE = 16 * 1024  # a SASL message holding a 1-3 KB token; larger is refused unread
_SEP = b"\x01"


class SaslError(ValueError):
    """A message that is not the mechanism's syntax (the client is broken or hostile)."""


@dataclass(frozen=True)
class TokenMessage:
    authzid: str | None  # the mailbox the client asks for; None when OAUTHBEARER omits it
    token: str


def _bearer(value: bytes) -> str:
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        raise SaslError("auth is not 'Bearer <token>'")
    try:
        text = token.strip().decode("ascii")
    except UnicodeDecodeError:
        raise SaslError("token is not ASCII") from None
    if any(ch.isspace() for ch in text):
        raise SaslError("token holds spaces")
    return text


def _address(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("user is not UTF-8") from None
    if not text or len(text) > 254 or any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise SaslError("user is not an address")
    return text.lower()


def _pairs(body: bytes) -> dict[bytes, bytes]:
    if not body.endswith(_SEP + _SEP):
        raise SaslError("message does not end with ^A^A")
    pairs: dict[bytes, bytes] = {}
    for item in body[:-2].split(_SEP):
        if not item:
            continue
        key, equals, value = item.partition(b"=")
        if not equals or not key.isalpha():
            raise SaslError("key=value pair expected")
        if key in pairs:
            raise SaslError("repeated key")
        pairs[key] = value
    return pairs


def parse_oauthbearer(message: bytes) -> TokenMessage:
    if len(message) > MAX_MESSAGE:
        raise SaslError("message too long")
    header, sep, body = message.partition(_SEP)
    if not sep:
        raise SaslError("no ^A after the GS2 header")
    parts = header.split(b",")
    if len(parts) != 3 or parts[2] != b"":
        raise SaslError("GS2 header is not 'n,a=...,'")
    if parts[0] not in (b"n", b"y"):  # "p=..." asks for channel binding, which OAUTHBEARER does not define
        raise SaslError("channel binding is not supported")
    authzid: str | None = None
    if parts[1]:
        if not parts[1].startswith(b"a="):
            raise SaslError("authzid is not 'a=...'")
        raw = parts[1][2:]
        if b"=" in raw.replace(b"=2C", b"").replace(b"=3D", b""):
            raise SaslError("bad escape in authzid")
        authzid = _address(raw.replace(b"=2C", b",").replace(b"=3D", b"="))
    pairs = _pairs(_SEP + body)
    if b"auth" not in pairs:
        raise SaslError("no auth=")
    return TokenMessage(authzid, _bearer(pairs[b"auth"]))


def parse_xoauth2(message: bytes) -> TokenMessage:
    if len(message) > MAX_MESSAGE:
        raise SaslError("message too long")
    pairs = _pairs(message)
    if b"user" not in pairs or b"auth" not in pairs:
        raise SaslError("user= and auth= are both required")
    return TokenMessage(_address(pairs[b"user"]), _bearer(pairs[b"auth"]))


def parse(mechanism: str, message: bytes) -> TokenMessage:
    if mechanism == "OAUTHBEARER":
        return parse_oauthbearer(message)
    if mechanism == "XOAUTH2":
        return parse_xoauth2(message)
    raise SaslError(f"unknown mechanism {mechanism[:20]}")


def error_challenge(mechanism: str, *, scope: str, openid_configuration: str) -> bytes:
    """The JSON a failed exchange sends as its last challenge (RFC 7628 section 3.2.2).

    `status` is OAUTHBEARER's error code; XOAUTH2 clients expect an HTTP-like status.
    Nothing in it says why the token failed: that goes to our log, not to the client.
    """
    status = "invalid_token" if mechanism == "OAUTHBEARER" else "401"
    document = {"status": status, "schemes": "bearer", "scope": scope}
    if openid_configuration:
        document["openid-configuration"] = openid_configuration
    return json.dumps(document, separators=(",", ":")).encode()
