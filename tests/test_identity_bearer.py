"""Bearer tokens on the JSON APIs: a practice software's PSC access token, checked by the
provider's keys (fetched over HTTP from the stand-in), issuer, audience, expiry and acr,
mapped to the annuaire's professional; a 401 with WWW-Authenticate otherwise."""

from __future__ import annotations

import base64
import json
import logging

import httpx
import pytest
from psc import OTHER_REALM, OTHER_SERVICE, Portal, token_for
from sqlalchemy import update

from caducee import demo
from caducee.annuaire.models import Professional

DOCTOR, NURSE, UNKNOWN = "8" + demo.DOCTOR_RPPS, "8" + demo.NURSE_RPPS, "8" + demo.UNKNOWN_RPPS


async def me(portal: Portal, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(f"{portal.base_url}/api/v1/pro/me", headers=headers)


async def test_a_practice_software_token_identifies_the_professional(portal: Portal, standin) -> None:  # type: ignore[no-untyped-def]
    answer = await me(portal, "Bearer " + await token_for(standin, DOCTOR))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["national_id"] == DOCTOR and body["last_name"] == "Bernard" and body["acr"] == "eidas1"
    assert [box["address"] for box in body["mailboxes"]] == ["sophie.bernard@demo.mssante.fr", "cabinet.lilas@demo.mssante.fr"]


async def test_no_token_or_not_a_bearer_token(portal: Portal) -> None:
    missing = await me(portal, None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="caducee"'
    assert "Pro Santé Connect" in missing.json()["detail"]
    for header in ("Basic c29waGllOnNlY3JldA==", "Bearer", "Bearer a b", "Bearer " + "x" * 20_000):
        answer = await me(portal, header)
        assert answer.status_code == 401 and 'error="invalid_request"' in answer.headers["www-authenticate"], header[:20]


@pytest.mark.parametrize(
    ("who", "kwargs", "error", "reason"),
    [
        (DOCTOR, {"client_id": OTHER_SERVICE}, "invalid_token", "audience"),
        (DOCTOR, {"realm": OTHER_REALM}, "invalid_token", "issuer"),
        (DOCTOR, {"fault": "issuer"}, "invalid_token", "issuer"),
        (DOCTOR, {"fault": "expired"}, "invalid_token", "expired"),
        (DOCTOR, {"means": "faible"}, "insufficient_user_authentication", "acr"),
        (UNKNOWN, {}, "invalid_token", "unknown-professional"),
    ],
)
async def test_tokens_that_may_not_be_used(portal: Portal, standin, caplog, who, kwargs, error, reason) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="caducee.identity")
    token = await token_for(standin, who, **kwargs)
    answer = await me(portal, "Bearer " + token)
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="caducee", ') and f'error="{error}"' in challenge
    if reason == "acr":
        assert 'acr_values="eidas1"' in challenge
    assert answer.json()["detail"]
    assert any(f"refused on /api/v1/pro/me: {reason}" in record.getMessage() for record in caplog.records)
    assert not any(token[:40] in record.getMessage() for record in caplog.records)


async def test_a_retired_professional_and_a_forged_signature(portal: Portal, standin) -> None:  # type: ignore[no-untyped-def]
    token = await token_for(standin, NURSE)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["preferred_username"] = DOCTOR  # the nurse's token made to say it is the doctor
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    answer = await me(portal, f"Bearer {header}.{forged}.{signature}")
    assert answer.status_code == 401 and "signature" in answer.headers["www-authenticate"]
    none = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert (await me(portal, f"Bearer {none}.{payload}.")).status_code == 401
    async with portal.engine.begin() as conn:
        await conn.execute(update(Professional).where(Professional.national_id == NURSE).values(active=False))
    import asyncio

    await asyncio.sleep(portal.settings.directory_cache_seconds + 0.1)
    answer = await me(portal, "Bearer " + token)
    assert answer.status_code == 401 and "retired-professional" in answer.headers["www-authenticate"]


async def test_a_rotated_key_is_fetched_once_and_the_previous_one_still_verifies(portal: Portal, standin, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="caducee.identity")
    before = await token_for(standin, DOCTOR)
    assert (await me(portal, "Bearer " + before)).status_code == 200
    standin.rotate_keys()
    after = await token_for(standin, DOCTOR)
    assert (
        json.loads(base64.urlsafe_b64decode(after.split(".")[0] + "=="))["kid"]
        != json.loads(base64.urlsafe_b64decode(before.split(".")[0] + "=="))["kid"]
    )
    for _ in range(3):
        assert (await me(portal, "Bearer " + after)).status_code == 200
    assert (await me(portal, "Bearer " + before)).status_code == 200
    refetches = [record for record in caplog.records if "fetching the keys again" in record.getMessage()]
    assert len(refetches) == 1


async def test_an_id_token_is_never_a_bearer_token(standin) -> None:  # type: ignore[no-untyped-def]
    """The same keys sign both kinds for overlapping audiences (an operator who adds a
    practice software's client id to `psc_audiences` makes its ID tokens' audience ours):
    the kind is read from the token, and only an access token opens the APIs and mail."""
    import asyncio
    import time

    from psc import SOFTWARE_CLIENT, obtain_token

    from caducee.identity.tokens import Expectations, TokenRefused, check_claims, unverified_parts

    answer = await asyncio.to_thread(obtain_token, standin, DOCTOR)
    _, id_claims = unverified_parts(answer["id_token"])
    _, access_claims = unverified_parts(answer["access_token"])
    issuer = id_claims["iss"]
    now = int(time.time())
    wide = Expectations(
        issuer, (SOFTWARE_CLIENT, *([access_claims["aud"]] if isinstance(access_claims["aud"], str) else access_claims["aud"])), ("eidas1",)
    )
    with pytest.raises(TokenRefused) as refused:
        check_claims(id_claims, wide, now)
    assert refused.value.reason == "token-type"
    check_claims(access_claims, wide, now)  # the access token of the same sign-in is one
    for forged in ({**access_claims, "typ": "ID"}, {**access_claims, "at_hash": "x"}, {**access_claims, "typ": "Refresh"}):
        with pytest.raises(TokenRefused, match="token-type"):
            check_claims(forged, wide, now)
    with pytest.raises(TokenRefused, match="token-type"):  # and the other way: an access token is no sign-in
        check_claims(access_claims, Expectations(issuer, wide.audiences, ("eidas1",), use="id"), now)
