"""Issue 21, the patient's side, over HTTP on a loopback socket (both databases): an account
they can manage, text that survives a session's end, guardian and carer views that act on
the profile shown and say who wrote, messages they can find, file, print and take away."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import re
import zipfile
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import RunningGateway, RunningHTTP
from sqlalchemy import text
from test_gateway_rules import doctor_writes, smtp_send
from test_webmail import PDF, Webmail, conversation_id
from webmail_client import form_token, latest_code, login

from caducee.annuaire.identifiers import nir_key

UNKNOWN_INS = f"1990175123456{nir_key('1990175123456'):02d}"  # a valid INS nobody has


@pytest.fixture
async def webmail(engine, settings, tmp_path: Path) -> AsyncIterator[Webmail]:  # type: ignore[no-untyped-def]
    import dataclasses

    from caducee.server import build_app

    settings = dataclasses.replace(settings, webmail_cookie_secure=False, directory_cache_seconds=0.5)
    gateway = await RunningGateway(engine, settings, tmp_path).start()
    http = RunningHTTP(build_app(engine, settings, gateway.pipeline))
    await http.start()
    try:
        yield Webmail(gateway, http, settings.data_dir / "outbox")
    finally:
        await http.stop()
        await gateway.stop()


def mails_to(outbox: Path, to: str) -> list[email.message.EmailMessage]:
    found = []
    for path in sorted(outbox.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == to:
            found.append(message)  # type: ignore[arg-type]
    return found


def code_in(message: email.message.EmailMessage) -> str:
    found = re.search(r"\b(\d{6})\b", message.get_content())
    assert found
    return found.group(1)


async def test_a_forgotten_password_is_reset_without_telling_who_exists(webmail: Webmail) -> None:
    claire = webmail.patient("adult_1")
    async with webmail.client() as client:
        csrf = form_token((await client.get("/mot-de-passe-oublie")).text)
        pages = []
        for identifier in (claire["email"], "personne@example.org", " ".join(claire["ins"]), UNKNOWN_INS):
            asked = await client.post("/mot-de-passe-oublie", data={"csrf": csrf, "identifiant": identifier})
            assert asked.status_code == 303 and asked.headers["location"] == "/mot-de-passe-oublie/code"
            page = await client.get("/mot-de-passe-oublie/code")
            pages.append(page.text.replace(form_token(page.text), ""))
        assert len(set(pages)) == 1 and "Si un profil correspond" in pages[0]  # the same page, known or not
        resets = [m for m in mails_to(webmail.outbox, claire["email"]) if "nouveau mot de passe" in m["Subject"]]
        assert len(resets) == 2  # only the known account got codes
        assert mails_to(webmail.outbox, "personne@example.org") == []
        third = await client.post("/mot-de-passe-oublie", data={"csrf": csrf, "identifiant": claire["ins"]})
        assert third.status_code == 303
        throttled = await client.post("/mot-de-passe-oublie", data={"csrf": csrf, "identifiant": claire["email"].upper()})
        assert throttled.status_code == 429 and "Trop d&#39;essais" in throttled.text  # 3 requests per account and hour
    old_session, _ = await webmail.logged_in("adult_1")
    async with webmail.client() as client:
        csrf = form_token((await client.get("/mot-de-passe-oublie")).text)
        client.cookies.set("caducee_csrf", csrf)
        await client.post("/mot-de-passe-oublie", data={"csrf": csrf, "identifiant": "autre@example.org"})
        # the browser that asked last holds a token with no code: even Claire's real code opens nothing there
        wrong = await client.post(
            "/mot-de-passe-oublie/code",
            data={"csrf": csrf, "code": code_in(resets[-1]), "mot_de_passe": "nouveau-mot-2026", "confirmation": "nouveau-mot-2026"},
        )
        assert wrong.status_code == 400 and "Code incorrect ou plus valable" in wrong.text
    async with webmail.client() as client:  # a fresh request, its own code
        await asyncio.sleep(0)
        csrf = form_token((await client.get("/mot-de-passe-oublie")).text)
        async with webmail.http.server.config.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(text("DELETE FROM limit_failures WHERE key LIKE 'reset|%'"))  # the hour has passed
        await client.post("/mot-de-passe-oublie", data={"csrf": csrf, "identifiant": claire["email"]})
        code = code_in([m for m in mails_to(webmail.outbox, claire["email"]) if "nouveau mot de passe" in m["Subject"]][-1])
        weak = await client.post(
            "/mot-de-passe-oublie/code", data={"csrf": csrf, "code": code, "mot_de_passe": "court", "confirmation": "court"}
        )
        assert weak.status_code == 400 and "au moins 10 caractères" in weak.text
        done = await client.post(
            "/mot-de-passe-oublie/code",
            data={"csrf": csrf, "code": code, "mot_de_passe": "nouveau-mot-2026", "confirmation": "nouveau-mot-2026"},
        )
        assert done.status_code == 303 and done.headers["location"] == "/connexion?info=mdp-oublie"
        again = await client.post(
            "/mot-de-passe-oublie/code",
            data={"csrf": csrf, "code": code, "mot_de_passe": "autre-mot-2026", "confirmation": "autre-mot-2026"},
        )
        assert again.status_code == 400  # single use
    await asyncio.sleep(2.2)  # the ended sessions are re-read
    assert (await old_session.get("/")).status_code == 303  # every session of the account ended
    await old_session.aclose()
    async with webmail.client() as client:
        await login(client, webmail.outbox, claire["ins"], "nouveau-mot-2026", claire["email"])
    assert any("mot de passe a été changé" in m["Subject"] for m in mails_to(webmail.outbox, claire["email"]))


def code_in_or_none(message) -> str | None:  # type: ignore[no-untyped-def]
    try:
        return code_in(message)
    except AssertionError:
        return None


async def test_password_and_email_changes_and_alert_settings(webmail: Webmail) -> None:
    claire = webmail.patient("adult_1")
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        wrong = await client.post(
            "/compte/mot-de-passe", data={"csrf": csrf, "actuel": "faux-2026-x", "nouveau": "abc-2026-xyz", "confirmation": "abc-2026-xyz"}
        )
        assert wrong.status_code == 400 and "Mot de passe actuel incorrect" in wrong.text and 'id="erreur"' in wrong.text
        changed = await client.post(
            "/compte/mot-de-passe",
            data={"csrf": csrf, "actuel": claire["password"], "nouveau": "abc-2026-xyz", "confirmation": "abc-2026-xyz"},
        )
        assert changed.status_code == 303 and (await client.get("/compte?info=mdp")).status_code == 200  # this session goes on
        taken = await client.post(
            "/compte/email", data={"csrf": csrf, "email": webmail.patient("adult_2")["email"], "mot_de_passe": "abc-2026-xyz"}
        )
        # Another profile's address: the same answer as a free one (no patient learns who else
        # is registered); its owner is told, no code is sent, the change cannot finish.
        assert taken.status_code == 303 and taken.headers["location"] == "/compte/email/code"
        paul_mails = mails_to(webmail.outbox, webmail.patient("adult_2")["email"])
        assert "Votre adresse e-mail et Caducée" in paul_mails[-1]["Subject"] and code_in_or_none(paul_mails[-1]) is None
        started = await client.post(
            "/compte/email", data={"csrf": csrf, "email": "Claire.Nouvelle@Example.org", "mot_de_passe": "abc-2026-xyz"}
        )
        assert started.status_code == 303 and started.headers["location"] == "/compte/email/code"
        code = code_in(mails_to(webmail.outbox, "claire.nouvelle@example.org")[-1])
        assert (
            await client.post("/compte/email/code", data={"csrf": csrf, "code": "000000" if code != "000000" else "111111"})
        ).status_code == 400
        assert (await client.post("/compte/email/code", data={"csrf": csrf, "code": code})).status_code == 303
        assert "claire.nouvelle@example.org" in (await client.get("/compte")).text
        assert any("adresse e-mail a été changée" in m["Subject"] for m in mails_to(webmail.outbox, claire["email"]))
        off = await client.post("/compte/notifications", data={"csrf": csrf, "alertes": "non"})
        assert off.status_code == 303
    async with webmail.client() as client:  # the codes now go to the new address
        await login(client, webmail.outbox, claire["ins"], "abc-2026-xyz", "claire.nouvelle@example.org")
    from caducee.notify.alerts import NewMailAlerts
    from caducee.notify.notifier import OutboxNotifier
    from caducee.webmail.selfservice import muted_addresses

    engine = webmail.gateway.engine
    alerts = NewMailAlerts(
        engine, webmail.gateway.settings, OutboxNotifier(webmail.outbox, "n@demo.mssante.fr"), muted=lambda a: muted_addresses(engine, a)
    )
    webmail.gateway.pipeline.on_delivered.append(alerts.delivered)
    before = len(list(webmail.outbox.glob("*.eml")))
    await doctor_writes(webmail.gateway, claire["address"], "Résultats")
    await doctor_writes(webmail.gateway, webmail.patient("adult_2")["address"], "Résultats")
    await alerts.close()
    sent = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"] for p in sorted(webmail.outbox.glob("*.eml"))[before:]
    ]
    assert sent == [webmail.patient("adult_2")["email"]]  # Claire turned them off, Paul did not


async def test_a_reply_typed_while_the_session_ended_comes_back_after_login(webmail: Webmail) -> None:
    from sqlalchemy import update

    from caducee.webmail.accounts import SESSION_RECHECK_SECONDS
    from caducee.webmail.models import WebSession

    claire = webmail.patient("adult_1")
    await doctor_writes(webmail.gateway, claire["address"], "Votre traitement")
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        page = await client.get(f"/conversations/{key}")
        assert 'data-idle-seconds="900"' in page.text and "Rester connecté" in page.text  # the warning and the way to extend
        async with webmail.gateway.engine.begin() as conn:
            await conn.execute(update(WebSession).values(last_seen_at=datetime.now(UTC) - timedelta(minutes=20)))  # 15 idle minutes passed
        await asyncio.sleep(SESSION_RECHECK_SECONDS + 0.2)
        typed = "Bonjour docteur,\nje voulais vous dire que le traitement me fatigue beaucoup le soir."
        late = await client.post(f"/conversations/{key}/reponse", data={"csrf": csrf, "texte": typed})
        assert late.status_code == 303 and late.headers["location"] == "/connexion?info=brouillon"
        notice = await client.get(late.headers["location"])
        assert "votre texte a été gardé" in notice.text and 'class="warning"' in notice.text
        forged = await client.post(f"/conversations/{key}/reponse", data={"csrf": "pas-le-bon", "texte": "autre chose"})
        assert forged.headers["location"] in ("/connexion", "/connexion?info=expire")  # nothing kept without the session's own token
    assert await webmail.gateway.inbox(webmail.gateway.account("doctor")[0]) == []  # nothing was sent
    async with webmail.client() as client:
        page = await client.get("/connexion")
        await client.post(
            "/connexion", data={"csrf": form_token(page.text), "identifiant": claire["ins"], "mot_de_passe": claire["password"]}
        )
        page = await client.get("/connexion/code")
        opened = await client.post(
            "/connexion/code", data={"csrf": form_token(page.text), "code": latest_code(webmail.outbox, claire["email"])}
        )
        assert opened.status_code == 303 and opened.headers["location"] == f"/conversations/{key}?brouillon=1"
        back = await client.get(opened.headers["location"])
        assert "le traitement me fatigue beaucoup le soir." in back.text and "Votre texte a été gardé" in back.text
        assert "le traitement me fatigue" not in (await client.get(f"/conversations/{key}?brouillon=1")).text  # given back once
        csrf = form_token(back.text)
        assert (await client.post("/api/v1/session/extend", headers={"X-CSRF-Token": csrf})).status_code == 204


async def test_a_guardian_acts_on_the_childs_profile_and_says_so(webmail: Webmail) -> None:
    lea = webmail.patient("minor")
    first, _, _ = await doctor_writes(webmail.gateway, lea["address"], "Vaccin de Léa")
    client, csrf = await webmail.logged_in("adult_1")
    async with aclosing(client):
        profiles = (await client.get("/api/v1/me")).json()["profiles"]
        child = next(p for p in profiles if p["relation"] == "guardian")
        await client.post("/profils", data={"csrf": csrf, "profil": str(child["patient_id"])})
        account = await client.get("/compte")
        assert "votre propre compte" in account.text and "Fermer mon profil" not in account.text.split("</nav>", 1)[1].split("<footer")[
            0
        ].replace("Pour fermer votre propre profil", "")
        refused = await client.post(
            "/compte/fermer", data={"csrf": csrf, "confirmer": "oui", "mot_de_passe": webmail.patient("adult_1")["password"]}
        )
        assert refused.status_code == 303 and refused.headers["location"] == "/compte"  # nothing closed from the child's profile
        key = await conversation_id(client)
        page = await client.get(f"/conversations/{key}")
        assert "pour Léa Martin" in page.text
        sent = await client.post(f"/conversations/{key}/reponse", data={"csrf": csrf, "texte": "Elle sera là mardi."})
        assert sent.status_code == 303 and sent.headers["location"].endswith("#confirmation")
        page = await client.get(sent.headers["location"])
        assert "Claire Martin (parent ou tuteur) a écrit pour Léa Martin" in page.text
        assert page.text.index('id="confirmation"') > page.text.index("Elle sera là mardi.")  # the confirmation next to what was sent
        history = await client.get("/historique")
        assert "Qui a consulté les données de Léa Martin" in history.text and "Claire Martin (parent ou tuteur)" in history.text
        own = await client.get("/historique?de=moi")
        assert "Qui a consulté mes données" in own.text and ">Vous<" not in own.text
    received = (await webmail.gateway.inbox(webmail.gateway.account("doctor")[0]))[-1]
    parsed = email.message_from_bytes(received, policy=email.policy.default)
    assert (
        lea["address"] in parsed["From"]
        and webmail.patient("adult_1")["address"] in parsed["Sender"]
        and first["Message-ID"] in parsed["In-Reply-To"]
    )


async def test_ones_own_prescription_is_not_called_an_automatic_message(webmail: Webmail) -> None:
    pharmacy = webmail.gateway.account("pharmacy")[0]
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        sent = await client.post(
            "/ordonnance/envoi", data={"csrf": csrf, "pharmacie": pharmacy}, files={"ordonnance": ("o.pdf", PDF, "application/pdf")}
        )
        page = await client.get(sent.headers["location"])
        assert "information automatique" not in page.text and "Vous avez envoyé ce message" in page.text


HTML_MAIL = """<html><head><style>p{color:red}</style><script>alert(1)</script></head><body>
<p>Bonjour,<br>voici vos résultats :</p>
<table><tr><td>Glycémie</td><td>0,95 g/L</td></tr><tr><td>Cholestérol</td><td>1,8 g/L</td></tr></table>
<p>Le détail est sur <a href="https://labo.example.fr/resultats?id=42" onclick="steal()">le site du laboratoire</a>.</p>
<img src="https://tracker.example/pixel.gif"><a href="javascript:alert(2)">piège</a>
<form action="https://evil.example"><input name="x"></form></body></html>"""


async def test_html_mail_keeps_its_breaks_and_links_and_nothing_dangerous(webmail: Webmail) -> None:
    from mail import message

    patient = webmail.patient("adult_1")["address"]
    msg = message(webmail.gateway.account("doctor")[0], patient, "Vos résultats", "x")
    msg.set_content(HTML_MAIL, subtype="html")
    assert (await asyncio.to_thread(smtp_send, webmail.gateway, msg, [patient]))[0] == 250
    client, _ = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        page = (await client.get(f"/conversations/{key}")).text
        assert "<td>Glycémie</td><td>0,95 g/L</td>" in page and "<br>" in page
        assert '<a href="https://labo.example.fr/resultats?id=42" rel="noopener noreferrer nofollow">le site du laboratoire</a>' in page
        for bad in ("<script>alert(1)", "onclick", "tracker.example", "javascript:", "<form action", "color:red"):
            assert bad not in page, bad
        text = (await client.get(f"/api/v1/conversations/{key}")).json()["messages"][0]["text"]
        assert "Glycémie 0,95 g/L" in text and "(https://labo.example.fr/resultats?id=42)" in text and "Bonjour,\nvoici" in text


async def test_search_archive_trash_print_and_download(webmail: Webmail) -> None:
    patient = webmail.patient("adult_1")["address"]
    await doctor_writes(webmail.gateway, patient, "Compte rendu d'échographie", "L'échographie abdominale est normale.")
    await doctor_writes(webmail.gateway, patient, "Rendez-vous", "Je vous propose jeudi.")
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        found = await client.get("/", params={"recherche": "ABDOMINALE"})  # in the text, case and accents aside
        assert "Compte rendu d&#39;échographie" in found.text and "Rendez-vous" not in found.text.split("<main", 1)[1]
        assert [item["subject"] for item in (await client.get("/api/v1/conversations", params={"q": "echographie"})).json()["items"]] == [
            "Compte rendu d'échographie"
        ]
        items = (await client.get("/api/v1/conversations")).json()["items"]
        echo = next(item["id"] for item in items if item["subject"].startswith("Compte rendu"))
        meeting = next(item["id"] for item in items if item["subject"] == "Rendez-vous")
        printed = await client.get(f"/conversations/{echo}/imprimer")
        assert printed.status_code == 200 and "L&#39;échographie abdominale est normale." in printed.text and "Ctrl et P" in printed.text
        assert (await client.post(f"/conversations/{echo}/archiver", data={"csrf": csrf})).status_code == 303
        assert "Rendez-vous" in (await client.get("/")).text and "échographie" not in (await client.get("/")).text.split("<main", 1)[1]
        assert "échographie" in (await client.get("/?dossier=archives")).text
        assert "Sortir des archives" in (await client.get(f"/conversations/{echo}")).text
        assert (await client.delete(f"/api/v1/conversations/{meeting}", headers={"X-CSRF-Token": csrf})).status_code == 204
        trash = await client.get("/?dossier=corbeille")
        assert "Rendez-vous" in trash.text and (await client.get(f"/conversations/{meeting}")).status_code == 404
        assert (await client.post(f"/conversations/{meeting}/restaurer", data={"csrf": csrf})).status_code == 303
        assert "Rendez-vous" in (await client.get("/")).text
        download = await client.get("/compte/export")
        assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(download.content))
        emls = [name for name in archive.namelist() if name.endswith(".eml")]
        assert len(emls) == 2 and b"abdominale" in b"".join(archive.read(name) for name in emls)
        assert "LISEZMOI.txt" in archive.namelist()
        history = (await client.get("/api/v1/history")).json()
        assert any(entry["action"] == "data-exported" for entry in history)
    paul, paul_csrf = await webmail.logged_in("adult_2")  # a carer reads, files nothing
    async with aclosing(paul):
        claire = next(p for p in (await paul.get("/api/v1/me")).json()["profiles"] if p["relation"] == "carer")
        await paul.post("/profils", data={"csrf": paul_csrf, "profil": str(claire["patient_id"])})
        page = await paul.get(f"/conversations/{meeting}")
        assert "Mettre à la corbeille" not in page.text
        assert (await paul.post(f"/conversations/{meeting}/supprimer", data={"csrf": paul_csrf})).status_code == 404
        assert (await paul.get("/compte/export")).status_code == 404


async def test_login_errors_say_what_to_correct(webmail: Webmail) -> None:
    async with webmail.client() as client:
        csrf = form_token((await client.get("/connexion")).text)
        answers = {}
        for identifier, password in (("", "x"), ("285037512345689", "x"), ("2850375", "x"), (webmail.patient("adult_1")["ins"], "")):
            answer = await client.post("/connexion", data={"csrf": csrf, "identifiant": identifier, "mot_de_passe": password})
            answers[identifier] = answer.text.split('role="alert"', 1)[1][:300]
            assert answer.status_code == 400 and "autofocus" in answer.text.split('role="alert"', 1)[1][:120]
        assert "Indiquez votre numéro INS" in answers[""]
        assert "un chiffre est sans doute faux" in answers["285037512345689"]
        assert "15 caractères" in answers["2850375"]
        assert "Indiquez votre mot de passe" in answers[webmail.patient("adult_1")["ins"]]
        for path in ("/aide", "/mentions-legales", "/accessibilite", "/connexion", "/mot-de-passe-oublie"):
            page = await client.get(path)
            assert page.status_code == 200 and all(
                link in page.text for link in ('href="/aide"', 'href="/mentions-legales"', 'href="/accessibilite"')
            )
        assert (
            "non conforme" in (await client.get("/accessibilite")).text
            and "Défenseur des droits" in (await client.get("/accessibilite")).text
        )


async def test_docs_are_served_without_a_cdn(webmail: Webmail) -> None:
    async with httpx.AsyncClient(base_url=webmail.http.base_url) as client:
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "cdn" not in docs.text.lower() and "/docs-assets/swagger-ui-bundle.js" in docs.text
        for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
            assert (await client.get(asset)).status_code == 200
        spec = (await client.get("/openapi.json")).json()
    untyped = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = operation["responses"]
            ok = next((codes[code] for code in ("200", "201", "204") if code in codes), None)
            if ok is None:
                untyped.append((method, path, "no success answer"))
                continue
            content = ok.get("content", {})
            if "204" not in codes and not content:
                untyped.append((method, path, "no content"))
            schema = content.get("application/json", {}).get("schema")
            if "application/json" in content and (not schema or schema.get("additionalProperties") is True):
                untyped.append((method, path, "untyped JSON"))
    assert not untyped, untyped
