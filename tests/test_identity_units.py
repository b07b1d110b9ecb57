"""The pure parts of the identity component: token claims, SASL messages, error challenges."""

from __future__ import annotations

import base64
import json

import pytest

from caducee.identity.sasl import SaslError, error_challenge, parse_oauthbearer, parse_xoauth2
from caducee.identity.tokens import Expectations, TokenRefused, check_claims, national_id_of, unverified_parts

ISSUER = "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"
EXPECT = Expectations(ISSUER, ("caducee",), ("eidas1",), leeway=30)
NOW = 1_800_000_000
GOOD = {"iss": ISSUER, "aud": "caducee", "exp": NOW + 60, "iat": NOW, "acr": "eidas1", "preferred_username": "810000000009"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"iss": "https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet"}, "issuer"),
        ({"iss": None}, "issuer"),
        ({"aud": "autre-service"}, "audience"),
        ({"aud": ["autre", 3]}, "audience"),
        ({"aud": None}, "audience"),
        ({"exp": NOW - 31}, "expired"),
        ({"exp": None}, "malformed"),
        ({"exp": "demain"}, "malformed"),
        ({"exp": True}, "malformed"),
        ({"iat": NOW + 3600}, "not-yet-valid"),
        ({"nbf": NOW + 3600}, "not-yet-valid"),
        ({"acr": "eidas0"}, "acr"),
        ({"acr": None}, "acr"),
    ],
)
def test_a_token_that_is_not_for_us_or_not_live_is_refused_with_its_reason(change: dict[str, object], reason: str) -> None:
    claims = {key: value for key, value in {**GOOD, **change}.items() if value is not None}
    with pytest.raises(TokenRefused) as refused:
        check_claims(claims, EXPECT, NOW)
    assert refused.value.reason == reason


def test_a_live_token_for_us_passes_within_the_leeway() -> None:
    check_claims(GOOD, EXPECT, NOW)
    check_claims({**GOOD, "exp": NOW - 29, "aud": ["account", "caducee"]}, EXPECT, NOW)


def test_id_token_checks_nonce_and_authorized_party() -> None:
    expect = Expectations(ISSUER, ("caducee",), ("eidas1",), nonce="n-1", authorized_party="caducee")
    check_claims({**GOOD, "nonce": "n-1"}, expect, NOW)
    for claims, reason in (
        ({**GOOD, "nonce": "n-2"}, "nonce"),
        (GOOD, "nonce"),
        ({**GOOD, "nonce": "n-1", "aud": ["caducee", "x"], "azp": "x"}, "audience"),
    ):
        with pytest.raises(TokenRefused) as refused:
            check_claims(claims, expect, NOW)
        assert refused.value.reason == reason


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d.e", "x" * 20_000, "!!!.???.sig", base64.urlsafe_b64encode(b"[1]").decode() + ".e30.sig"],
)
def test_malformed_tokens_are_refused_before_any_key_is_looked_for(token: str) -> None:
    with pytest.raises(TokenRefused) as refused:
        unverified_parts(token)
    assert refused.value.reason == "malformed"


def test_national_id_shape() -> None:
    assert national_id_of({"preferred_username": "810000000009"}, "preferred_username") == "810000000009"
    for bad in (None, "", "8100 0000", "8" * 41, "é10000000009", 810000000009):
        with pytest.raises(TokenRefused):
            national_id_of({"preferred_username": bad}, "preferred_username")


def test_oauthbearer_messages() -> None:
    message = parse_oauthbearer(b"n,a=sophie.bernard@demo.mssante.fr,\x01host=mail\x01port=993\x01auth=Bearer abc.def.ghi\x01\x01")
    assert (message.authzid, message.token) == ("sophie.bernard@demo.mssante.fr", "abc.def.ghi")
    assert parse_oauthbearer(b"n,,\x01auth=bearer t\x01\x01").authzid is None
    assert parse_oauthbearer(b"n,a=a=3Db=2Cc@x,\x01auth=Bearer t\x01\x01").authzid == "a=b,c@x"
    for bad in (
        b"",
        b"n,a=x@y\x01auth=Bearer t\x01\x01",  # GS2 header not closed by a comma
        b"p=tls-unique,,\x01auth=Bearer t\x01\x01",  # channel binding
        b"n,,\x01auth=Basic dXNlcg==\x01\x01",
        b"n,,\x01auth=Bearer t\x01",  # not ^A^A at the end
        b"n,,\x01host=x\x01\x01",  # no auth
        b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",
        b"n,a=x=41@y,\x01auth=Bearer t\x01\x01",
        b"n,a=a b@x,\x01auth=Bearer t\x01\x01",
        b"n,,\x01auth=Bearer " + b"t" * 20_000 + b"\x01\x01",
    ):
        with pytest.raises(SaslError):
            parse_oauthbearer(bad)


def test_xoauth2_messages() -> None:
    message = parse_xoauth2(b"user=Sophie.Bernard@demo.mssante.fr\x01auth=Bearer abc\x01\x01")
    assert (message.authzid, message.token) == ("sophie.bernard@demo.mssante.fr", "abc")
    for bad in (b"user=x@y\x01\x01", b"auth=Bearer t\x01\x01", b"user=x@y\x01auth=Bearer t a\x01\x01"):
        with pytest.raises(SaslError):
            parse_xoauth2(bad)


def test_error_challenges_say_nothing_about_why() -> None:
    bearer = json.loads(
        error_challenge("OAUTHBEARER", scope="openid scope_all", openid_configuration="https://x/.well-known/openid-configuration")
    )
    assert bearer == {
        "status": "invalid_token",
        "schemes": "bearer",
        "scope": "openid scope_all",
        "openid-configuration": "https://x/.well-known/openid-configuration",
    }
    assert json.loads(error_challenge("XOAUTH2", scope="s", openid_configuration=""))["status"] == "401"


def test_psc_settings_are_checked_and_derived(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from caducee.config import SettingsError, load_settings
    from caducee.identity.runtime import redirect_uris

    with pytest.raises(SettingsError, match="psc_discovery_url"):
        load_settings(environ={"CADUCEE_PSC_CLIENT_ID": "c", "CADUCEE_PSC_DISCOVERY_URL": "http://psc.example/x"})
    with pytest.raises(SettingsError, match="psc_acr_values"):
        load_settings(environ={"CADUCEE_PSC_CLIENT_ID": "c", "CADUCEE_PSC_ACR_VALUES": ""})
    settings = load_settings(environ={"CADUCEE_WEBMAIL_URL": "https://mail.example.fr/", "CADUCEE_PSC_AUDIENCES": "caducee,logiciel"})
    assert settings.psc_discovery_url.startswith("https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet/")
    assert settings.psc_audiences == ["caducee", "logiciel"] and settings.psc_acr_values == ["eidas1"]
    assert redirect_uris(settings) == ("https://mail.example.fr/pro/connexion/retour", "https://mail.example.fr/pro/deconnecte")
