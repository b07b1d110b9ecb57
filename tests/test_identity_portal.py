"""The professional portal at /pro/: signing in with Pro Santé Connect (the stand-in, over
real HTTP), the page that shows who is signed in and their mailboxes, logout here and at
the provider, and every refusal with its French page and its logged reason."""

from __future__ import annotations

import html
import logging
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from psc import PORTAL_SECRET, Portal
from sqlalchemy import update

from caducee import demo
from caducee.annuaire.models import Professional

DOCTOR, NURSE, PHARMACIST, UNKNOWN = ("8" + demo.DOCTOR_RPPS, "8" + demo.NURSE_RPPS, "8" + demo.PHARMACIST_RPPS, "8" + demo.UNKNOWN_RPPS)


async def begin(client: httpx.AsyncClient, portal: Portal) -> httpx.Response:
    """/pro/connexion, then the provider's sign-in page it sends the browser to."""
    started = await client.get(f"{portal.base_url}/pro/connexion")
    assert started.status_code == 303, started.text
    return await client.get(started.headers["location"])


async def choose(client: httpx.AsyncClient, page: httpx.Response, national_id: str, means: str = "ecps", fault: str = "") -> httpx.Response:
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    return await client.post(
        str(page.url).split("?")[0] + action, data={"professionnel": national_id, "moyen": means, "anomalie": fault, "action": "connexion"}
    )


async def sign_in(client: httpx.AsyncClient, portal: Portal, national_id: str, *, means: str = "ecps", fault: str = "") -> httpx.Response:
    """The whole sign-in; returns Caducée's answer to the callback."""
    back = await choose(client, await begin(client, portal), national_id, means, fault)
    assert back.status_code == 302 and back.headers["location"].startswith(f"{portal.base_url}/pro/connexion/retour?"), back.text
    return await client.get(back.headers["location"])


def refused(response: httpx.Response, words: str) -> None:
    assert response.status_code in (403, 503), response.text
    assert "<h1>Connexion refusée</h1>" in response.text and words in html.unescape(response.text)
    assert "caducee_pro_session" not in response.headers.get("set-cookie", "")


async def test_a_professional_signs_in_sees_their_mailboxes_and_signs_out_here_and_at_the_provider(portal: Portal) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        home = await client.get(f"{portal.base_url}/pro/")
        assert "Se connecter avec Pro Santé Connect" in home.text and home.headers["cache-control"] == "no-store"
        started = await client.get(f"{portal.base_url}/pro/connexion")
        location = urlsplit(started.headers["location"])
        asked = {key: values[0] for key, values in parse_qs(location.query).items()}
        assert asked["acr_values"] == "eidas1" and asked["scope"] == "openid scope_all" and asked["code_challenge_method"] == "S256"
        assert asked["client_id"] == "caducee-test" and len(asked["state"]) >= 32 and len(asked["nonce"]) >= 32
        cookie = started.headers["set-cookie"]
        assert "caducee_pro_connexion=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/pro/connexion" in cookie
        back = await choose(client, await client.get(started.headers["location"]), DOCTOR)
        done = await client.get(back.headers["location"])
        assert done.status_code == 303 and done.headers["location"] == "/pro/"
        session_cookie = done.headers["set-cookie"]
        assert "caducee_pro_session=" in session_cookie and "Path=/pro" in session_cookie and "HttpOnly" in session_cookie
        page = await client.get(f"{portal.base_url}/pro/")
        text = html.unescape(page.text)
        assert "Bonjour Dr Sophie Bernard" in text and DOCTOR in text and "niveau eidas1" in text
        assert "sophie.bernard@demo.mssante.fr" in text and "cabinet.lilas@demo.mssante.fr" in text and "Boîte de votre cabinet" in text
        assert "pharmacie.canal@demo.mssante.fr" not in text
        assert "form-action 'self' http://127.0.0.1:" in page.headers["content-security-policy"]
        webmail = await client.get(f"{portal.base_url}/")  # the patients' webmail does not see this session
        assert webmail.status_code == 303 and webmail.headers["location"].startswith("/connexion")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        forged = await client.post(f"{portal.base_url}/pro/deconnexion", data={"csrf": "forged"})
        assert forged.status_code == 403
        out = await client.post(f"{portal.base_url}/pro/deconnexion", data={"csrf": csrf})
        assert out.status_code == 303
        end = urlsplit(out.headers["location"])
        assert end.path.endswith("/protocol/openid-connect/logout") and "post_logout_redirect_uri" in end.query
        at_provider = await client.get(out.headers["location"])  # the provider ends its session and sends the browser back
        assert at_provider.status_code == 302 and at_provider.headers["location"] == f"{portal.base_url}/pro/deconnecte"
        assert "Vous êtes déconnecté" in html.unescape((await client.get(at_provider.headers["location"])).text)
        assert "Bonjour" not in (await client.get(f"{portal.base_url}/pro/")).text
        again = await begin(client, portal)  # the provider's own session is gone: it asks who you are again
        assert "Vous êtes déjà connecté" not in html.unescape(again.text)


async def test_an_attached_organisation_mailbox_is_listed(portal: Portal) -> None:
    from caducee.annuaire import service
    from caducee.annuaire.kinds import MailboxType

    async with portal.engine.begin() as conn:
        await service.add_mailbox(
            conn, address="officine.garde@demo.mssante.fr", type=MailboxType.ORG, display_name="Officine de garde", professional=PHARMACIST
        )
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await sign_in(client, portal, PHARMACIST)).status_code == 303
        text = html.unescape((await client.get(f"{portal.base_url}/pro/")).text)
    assert "officine.garde@demo.mssante.fr" in text and "Boîte de votre structure" in text


@pytest.mark.parametrize(
    ("national_id", "means", "fault", "reason", "words"),
    [
        (UNKNOWN, "ecps", "", "unknown-professional", "vous n'êtes pas inscrit dans l'annuaire de Caducée"),
        (DOCTOR, "faible", "", "acr", "n'offre pas le niveau de sécurité exigé"),
        (DOCTOR, "ecps", "audience", "audience", "destinée à un autre service"),
        (DOCTOR, "ecps", "issuer", "issuer", "n'a pas été délivrée par Pro Santé Connect"),
        (DOCTOR, "ecps", "expired", "expired", "a expiré"),
        (DOCTOR, "ecps", "code-expired", "code", "a expiré ou a déjà servi"),
    ],
)
async def test_sign_in_refusals(
    portal: Portal, caplog: pytest.LogCaptureFixture, national_id: str, means: str, fault: str, reason: str, words: str
) -> None:
    caplog.set_level(logging.INFO, logger="caducee.identity")
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await sign_in(client, portal, national_id, means=means, fault=fault)
        refused(answer, words)
        assert "Bonjour" not in (await client.get(f"{portal.base_url}/pro/")).text
    logged = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert any(f"refused: {reason}" in line for line in logged), logged
    assert not any("eyJ" in record.getMessage() or PORTAL_SECRET in record.getMessage() for record in caplog.records)  # no token, no secret


async def test_a_retired_professional_is_refused_and_their_session_ends(portal: Portal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="caducee.identity")
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await sign_in(client, portal, NURSE)).status_code == 303
        async with portal.engine.begin() as conn:
            await conn.execute(update(Professional).where(Professional.national_id == NURSE).values(active=False))
        portal_app_directory_wait = portal.settings.directory_cache_seconds
        import asyncio

        await asyncio.sleep(portal_app_directory_wait + 0.1)  # the annuaire is trusted for directory_cache_seconds
        assert "Bonjour" not in (await client.get(f"{portal.base_url}/pro/")).text
        refused(await sign_in(client, portal, NURSE), "n'est plus active")
    assert any("refused: retired-professional" in record.getMessage() for record in caplog.records)


async def test_a_replayed_callback_a_tampered_state_and_a_foreign_browser_are_refused(
    portal: Portal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="caducee.identity")
    async with httpx.AsyncClient(timeout=30) as client:
        back = await choose(client, await begin(client, portal), DOCTOR)
        callback = back.headers["location"]
        assert (await client.get(callback)).status_code == 303
        refused(await client.get(callback), "a déjà servi")  # the same state and code again: state used
        # The code alone replayed with a fresh state of this browser: the provider says the code is spent.
        code = parse_qs(urlsplit(callback).query)["code"][0]
        fresh = urlsplit((await client.get(f"{portal.base_url}/pro/connexion")).headers["location"])
        state = parse_qs(fresh.query)["state"][0]
        refused(
            await client.get(f"{portal.base_url}/pro/connexion/retour", params={"code": code, "state": state}), "a expiré ou a déjà servi"
        )

        page = await begin(client, portal)
        back = await choose(client, page, DOCTOR)
        params = parse_qs(urlsplit(back.headers["location"]).query)
        tampered = params["state"][0][:-2] + ("AA" if not params["state"][0].endswith("AA") else "BB")
        refused(
            await client.get(f"{portal.base_url}/pro/connexion/retour", params={"code": params["code"][0], "state": tampered}), "inconnue"
        )
        refused(await client.get(f"{portal.base_url}/pro/connexion/retour", params={"code": "x" * 5000, "state": "y" * 5000}), "inconnue")

        back = await choose(client, await begin(client, portal), DOCTOR)
    async with httpx.AsyncClient(timeout=30) as other:  # a victim's browser given the attacker's callback (login CSRF)
        refused(await other.get(back.headers["location"]), "inconnue")
    reasons = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert any("already used state" in line for line in reasons) and any("invalid_grant" in line for line in reasons)
    assert any("another browser" in line for line in reasons)


async def test_cancelling_at_the_provider(portal: Portal) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        page = await begin(client, portal)
        action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
        back = await client.post(str(page.url).split("?")[0] + action, data={"action": "annuler"})
        refused(await client.get(back.headers["location"]), "annulée")


async def test_provider_unreachable_or_not_configured(engine: Any, settings: Any, standin: Any) -> None:
    import dataclasses

    from conftest import RunningHTTP

    from caducee.server import build_app

    for changes, words in (
        (
            {"psc_client_id": "caducee-test", "psc_discovery_url": "http://127.0.0.1:9/auth/realms/x/.well-known/openid-configuration"},
            "ne répond pas",
        ),
        ({"psc_client_id": ""}, "pas encore ouverte"),
    ):
        running = RunningHTTP(build_app(engine, dataclasses.replace(settings, **changes)))
        await running.start()
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.get(f"{running.base_url}/pro/connexion")
                assert answer.status_code == 503 and words in html.unescape(answer.text)
        finally:
            await running.stop()


async def test_userinfo_as_a_signed_jwt(engine: Any, settings: Any, tmp_path: Any) -> None:
    """PSC may answer userinfo as a signed JWT (application/jwt): its signature, issuer and
    audience are checked like a token's, and the sign-in goes through."""
    import asyncio

    from conftest import RunningHTTP
    from psc import psc_settings, standin_config, start_standin

    from caducee.server import build_app

    jwt_standin = await asyncio.to_thread(start_standin, tmp_path, standin_config(userinfo_format="jwt"))
    running = RunningHTTP(None)
    configured = psc_settings(settings, jwt_standin, psc_redirect_uri=f"{running.base_url}/pro/connexion/retour")
    await demo.seed(engine, configured, certificates=False)
    running.server.config.app = build_app(engine, configured)
    await running.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            token_page = await sign_in(client, Portal(running.base_url, configured, engine, {}), DOCTOR)
            assert token_page.status_code == 303
            text = html.unescape((await client.get(f"{running.base_url}/pro/")).text)
            assert "Bonjour Dr Sophie Bernard" in text
    finally:
        await running.stop()
        await asyncio.to_thread(jwt_standin.stop)


async def test_a_client_address_may_start_only_so_many_sign_ins(portal: Portal) -> None:
    """Each start writes a row (state, nonce, verifier): a client starting thousands would
    fill the table; past the limit it gets a French page and nothing is written."""
    from sqlalchemy import func, select

    from caducee.identity.models import LoginState
    from caducee.identity.signin import STARTS_PER_ADDRESS

    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(STARTS_PER_ADDRESS):
            assert (await client.get(f"{portal.base_url}/pro/connexion")).status_code == 303
        stopped = await client.get(f"{portal.base_url}/pro/connexion")
    assert stopped.status_code == 429 and "Trop de connexions" in html.unescape(stopped.text)
    async with portal.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(LoginState))).scalar() == STARTS_PER_ADDRESS
