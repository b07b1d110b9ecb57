"""The webmail over HTTP, without a browser: login, reading, replying, prescriptions,
lifecycle, the JSON API and hostile requests. The browser scenarios are in
test_webmail_browser.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import RunningGateway, RunningHTTP
from test_gateway_rules import doctor_writes
from webmail_client import form_token, latest_code, login

PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


@dataclasses.dataclass
class Webmail:
    gateway: RunningGateway
    http: RunningHTTP
    outbox: Path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http.base_url, follow_redirects=False, timeout=30)

    def patient(self, key: str) -> dict:  # type: ignore[type-arg]
        return self.gateway.credentials["patients"][key]

    async def logged_in(self, key: str = "adult_1") -> tuple[httpx.AsyncClient, str]:
        client = self.client()
        who = self.patient(key)
        csrf = await login(client, self.outbox, who["ins"], who["password"], who["email"])
        return client, csrf


@pytest.fixture
async def webmail(engine, settings, tmp_path: Path) -> AsyncIterator[Webmail]:  # type: ignore[no-untyped-def]
    from caducee.server import build_app

    # httpx sends no Secure cookie over http://; a patient status change applies within the directory cache
    settings = dataclasses.replace(settings, webmail_cookie_secure=False, directory_cache_seconds=0.5)
    gateway = await RunningGateway(engine, settings, tmp_path).start()
    http = RunningHTTP(build_app(engine, settings, gateway.pipeline))
    await http.start()
    try:
        yield Webmail(gateway, http, settings.data_dir / "outbox")
    finally:
        await http.stop()
        await gateway.stop()


async def conversation_id(client: httpx.AsyncClient) -> int:
    listing = (await client.get("/api/v1/conversations")).json()
    return int(listing["items"][0]["id"])


async def test_login_read_and_reply(webmail: Webmail) -> None:
    patient = webmail.patient("adult_1")
    first, code, _ = await doctor_writes(webmail.gateway, patient["address"], "Résultats de la prise de sang", "Tout est normal.")
    assert code == 250
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        inbox = await client.get("/")
        assert "Résultats de la prise de sang" in inbox.text and "1 non lu" in inbox.text
        assert "Dr Sophie Bernard" in inbox.text and "Médecine générale" in inbox.text
        key = await conversation_id(client)
        page = await client.get(f"/conversations/{key}")
        assert "Tout est normal." in page.text and "Envoyer ma réponse" in page.text
        assert "1 non lu" not in (await client.get("/")).text  # opening it marked it read
        answer = await client.post(f"/conversations/{key}/reponse", data={"csrf": csrf, "texte": "Merci docteur, à bientôt."})
        assert answer.status_code == 303, answer.text[:2000]
        page = await client.get(answer.headers["location"])
        assert "Votre message a été envoyé." in page.text and "Vous avez écrit" in page.text
    doctor_inbox = await webmail.gateway.inbox(webmail.gateway.account("doctor")[0])
    assert b"Merci docteur" in doctor_inbox[-1] and first["Message-ID"].encode() in doctor_inbox[-1]


async def test_reply_after_fin_is_not_offered_and_refused(webmail: Webmail) -> None:
    patient = webmail.patient("adult_1")
    first, _, _ = await doctor_writes(webmail.gateway, patient["address"], "Suivi")
    await doctor_writes(
        webmail.gateway,
        patient["address"],
        "[FIN] Suivi",
        "Je clos notre échange, bonne continuation.",
        headers={"In-Reply-To": first["Message-ID"], "References": first["Message-ID"]},
    )
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        page = await client.get(f"/conversations/{key}")
        assert "bonne continuation" in page.text  # a [FIN] with content is delivered
        assert "a clos cette conversation le" in page.text and "Envoyer ma réponse" not in page.text
        answer = await client.post(f"/conversations/{key}/reponse", data={"csrf": csrf, "texte": "Une dernière question"})
        assert answer.status_code == 400 and "close" in answer.text and "Une dernière question" in answer.text  # nothing typed is lost
        api = (await client.get(f"/api/v1/conversations/{key}")).json()
        assert api["closed"] and not api["reply"]["allowed"] and api["closed_by"] == "Dr Sophie Bernard"


async def test_a_closing_the_patient_did_not_receive_still_shows(webmail: Webmail) -> None:
    """The doctor writes to the patient and the nurse, then closes the conversation with a
    [FIN] to the nurse alone: nothing new reaches the patient's mailbox, yet the list the
    patient already looked at (cached against the mailbox's version) must show it closed."""
    from mail import message
    from test_gateway_rules import smtp_send

    doctor, nurse = webmail.gateway.account("doctor")[0], webmail.gateway.account("nurse")[0]
    patient = webmail.patient("adult_1")["address"]
    first = message(doctor, patient, "Soins à domicile", "L'infirmière passera demain.", headers={"Cc": nurse})
    assert (await asyncio.to_thread(smtp_send, webmail.gateway, first, [patient, nurse]))[0] == 250
    client, _ = await webmail.logged_in()
    async with aclosing(client):
        assert "conversation close" not in (await client.get("/")).text
        fin = message(
            doctor,
            nurse,
            "[FIN] Soins à domicile",
            "Fin du suivi.",
            headers={"In-Reply-To": first["Message-ID"], "References": first["Message-ID"]},
        )
        assert (await asyncio.to_thread(smtp_send, webmail.gateway, fin, [nurse]))[0] == 250
        assert "conversation close" in (await client.get("/")).text
        page = await client.get(f"/conversations/{await conversation_id(client)}")
        assert "a clos cette conversation le" in page.text and "Envoyer ma réponse" not in page.text


async def test_pages_and_smtp_come_back_after_postgresql_drops_every_connection(webmail: Webmail, backend: str) -> None:
    """The pool does not ping connections before use (three round trips per checkout on
    asyncpg): when the server drops them all (a restart, a failover), the first request that
    meets a dead connection fails cleanly, the pool renews itself, and the next one works.
    Over SMTP the failure is a 451: the client keeps the message and retries."""
    if backend != "postgresql":
        pytest.skip("SQLite has no server to lose")
    import asyncpg

    patient = webmail.patient("adult_1")
    client, _ = await webmail.logged_in()
    async with aclosing(client):
        assert (await client.get("/")).status_code == 200
        url = webmail.gateway.engine.url
        admin = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username, database=url.database)
        try:  # from outside the pool, so that every pooled connection is among the dropped ones
            killed = await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed >= 1
        pages = [await client.get("/") for _ in range(3)]
        assert pages[-1].status_code == 200 and all(page.status_code in (200, 500) for page in pages), pages
        for failed in (page for page in pages if page.status_code == 500):  # in French, without the details
            assert "momentanément indisponible" in failed.text and "Traceback" not in failed.text
        codes = []
        for _ in range(3):
            codes.append((await doctor_writes(webmail.gateway, patient["address"], "Après la coupure"))[1])
            if codes[-1] == 250:
                break
        assert codes[-1] == 250 and all(code in (250, 451) for code in codes), codes
        assert "Après la coupure" in (await client.get("/")).text


async def test_cnam_message_cannot_be_answered(webmail: Webmail) -> None:
    from email.policy import SMTP

    from mail import message

    from caducee.gateway.pipeline import Channel, Envelope

    cnam = webmail.gateway.credentials["cnam"]["address"]
    patient = webmail.patient("adult_1")["address"]
    campaign = message(cnam, patient, "Dépistage du cancer colorectal", "Vous avez entre 50 et 74 ans : faites le test.")
    result = await webmail.gateway.pipeline.accept(
        Envelope(cnam, [patient], campaign.as_bytes(policy=SMTP), Channel.API, authenticated=cnam)
    )
    assert result.accepted
    client, _ = await webmail.logged_in()
    async with aclosing(client):
        page = await client.get(f"/conversations/{await conversation_id(client)}")
        assert "Assurance Maladie est une information : on ne peut pas y répondre" in page.text
        assert "Envoyer ma réponse" not in page.text


async def test_a_read_receipt_goes_back_once_when_asked(webmail: Webmail) -> None:
    """Once, whether the message is opened again later or in five tabs at the same moment."""
    doctor = webmail.gateway.account("doctor")[0]
    patient = webmail.patient("adult_1")
    await doctor_writes(webmail.gateway, patient["address"], "Ordonnance renouvelée", headers={"Disposition-Notification-To": doctor})
    client, _ = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        pages = await asyncio.gather(*(client.get(f"/conversations/{key}") for _ in range(5)))
        assert all(page.status_code == 200 for page in pages)
        await client.get(f"/conversations/{key}")
    receipts = [raw for raw in await webmail.gateway.inbox(doctor) if b"disposition-notification" in raw]
    assert len(receipts) == 1
    assert b"Disposition: automatic-action/MDN-sent-automatically; displayed" in receipts[0]


async def test_prescription_reaches_the_pharmacy(webmail: Webmail) -> None:
    pharmacy = webmail.gateway.account("pharmacy")[0]
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        found = (await client.get("/api/v1/pharmacies", params={"place": "75010"})).json()
        assert [item["address"] for item in found["items"]] == [pharmacy]
        page = await client.get("/ordonnance", params={"nom": "canal"})
        assert "Pharmacie du Canal" in page.text
        refused = await client.post(
            "/ordonnance/envoi",
            data={"csrf": csrf, "pharmacie": pharmacy},
            files={"ordonnance": ("ordonnance.exe", b"MZ\x90\x00 not a pdf", "application/pdf")},
        )
        assert refused.status_code == 400 and "type de fichier n&#39;est pas accepté" in refused.text
        sent = await client.post(
            "/ordonnance/envoi",
            data={"csrf": csrf, "pharmacie": pharmacy, "message": "Je passe demain."},
            files={"ordonnance": ("../../etc/ordonnance.pdf", PDF, "application/octet-stream")},
        )
        assert sent.status_code == 303, sent.text[:2000]
        page = await client.get(sent.headers["location"])
        assert "Votre ordonnance a été envoyée" in page.text and "ordonnance.pdf" in page.text
    received = (await webmail.gateway.inbox(pharmacy))[-1]
    assert b"Je passe demain." in received and b'filename="ordonnance.pdf"' in received and PDF.strip() not in received  # base64


async def test_a_patient_cannot_write_to_a_doctor_out_of_the_blue(webmail: Webmail) -> None:
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        doctor = webmail.gateway.account("doctor")[0]
        answer = await client.post(
            "/ordonnance/envoi", data={"csrf": csrf, "pharmacie": doctor}, files={"ordonnance": ("o.pdf", PDF, "application/pdf")}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/ordonnance"  # not a pharmacy: nothing sent
    assert await webmail.gateway.inbox(doctor) == []


async def test_five_wrong_codes_lock_the_challenge(webmail: Webmail) -> None:
    patient = webmail.patient("adult_1")
    async with webmail.client() as client:
        page = await client.get("/connexion")
        csrf = form_token(page.text)
        await client.post("/connexion", data={"csrf": csrf, "identifiant": patient["email"], "mot_de_passe": patient["password"]})
        right = latest_code(webmail.outbox, patient["email"])
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        for remaining in (4, 3, 2, 1):
            answer = await client.post("/connexion/code", data={"csrf": csrf, "code": wrong})
            assert f"Il vous reste {remaining} essai" in answer.text, answer.text[answer.text.find("<main") :][:800]
        answer = await client.post("/connexion/code", data={"csrf": csrf, "code": wrong})
        assert "ce code est bloqué" in answer.text
        answer = await client.post("/connexion/code", data={"csrf": csrf, "code": right})  # even the right one, now
        assert answer.status_code == 400 and "plus valable" in answer.text and "caducee_session" not in answer.headers.get("set-cookie", "")


async def test_a_code_is_single_use_and_bound_to_its_login(webmail: Webmail) -> None:
    patient = webmail.patient("adult_1")
    async with webmail.client() as first, webmail.client() as second:
        for client in (first, second):
            page = await client.get("/connexion")
            await client.post(
                "/connexion", data={"csrf": form_token(page.text), "identifiant": patient["ins"], "mot_de_passe": patient["password"]}
            )
        second_code = latest_code(webmail.outbox, patient["email"])
        csrf = form_token((await first.get("/connexion/code")).text)
        assert (await first.post("/connexion/code", data={"csrf": csrf, "code": second_code})).status_code == 400
        csrf = form_token((await second.get("/connexion/code")).text)
        assert (await second.post("/connexion/code", data={"csrf": csrf, "code": second_code})).status_code == 303
        assert (await second.post("/connexion/code", data={"csrf": csrf, "code": second_code})).status_code == 400


async def test_wrong_password_says_the_same_for_unknown_accounts(webmail: Webmail) -> None:
    async with webmail.client() as client:
        csrf = form_token((await client.get("/connexion")).text)
        known = await client.post("/connexion", data={"csrf": csrf, "identifiant": webmail.patient("adult_1")["ins"], "mot_de_passe": "x"})
        unknown = await client.post("/connexion", data={"csrf": csrf, "identifiant": "nobody@example.org", "mot_de_passe": "x"})
        assert known.status_code == unknown.status_code == 400
        assert "Identifiant ou mot de passe incorrect" in known.text and "Identifiant ou mot de passe incorrect" in unknown.text


async def test_forms_without_the_csrf_token_do_nothing(webmail: Webmail) -> None:
    patient = webmail.patient("adult_1")
    await doctor_writes(webmail.gateway, patient["address"], "Résultats")
    client, _ = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        forged = await client.post(f"/conversations/{key}/reponse", data={"csrf": "forged", "texte": "hello"})
        assert forged.status_code == 403 and "Rien n'a été envoyé" in forged.text
        api = await client.post(f"/api/v1/conversations/{key}/replies", data={"text": "hello"})
        assert api.status_code == 403
    assert len(await webmail.gateway.inbox(webmail.gateway.account("doctor")[0])) == 0


async def test_another_patients_conversation_is_not_found(webmail: Webmail) -> None:
    await doctor_writes(webmail.gateway, webmail.patient("adult_2")["address"], "Pour Paul seulement")
    paul, _ = await webmail.logged_in("adult_2")
    async with aclosing(paul):
        key = await conversation_id(paul)
    # Claire is Paul's... no one: she must not see it, nor its attachments.
    claire, _ = await webmail.logged_in("adult_1")
    async with aclosing(claire):
        assert (await claire.get(f"/conversations/{key}")).status_code == 404
        assert (await claire.get(f"/api/v1/conversations/{key}")).status_code == 404
        assert (await claire.get(f"/conversations/{key}/messages/1/pieces/0")).status_code == 404


async def test_guardian_switches_to_the_minors_profile_and_a_carer_only_reads(webmail: Webmail) -> None:
    minor = webmail.patient("minor")["address"]
    claire_address = webmail.patient("adult_1")["address"]
    await doctor_writes(webmail.gateway, minor, "Vaccin de Léa")
    await doctor_writes(webmail.gateway, claire_address, "Pour Claire")
    client, csrf = await webmail.logged_in("adult_1")
    async with aclosing(client):
        profiles = (await client.get("/api/v1/me")).json()["profiles"]
        lea = next(p for p in profiles if p["relation"] == "guardian")
        answer = await client.post("/profils", data={"csrf": csrf, "profil": str(lea["patient_id"])})
        assert answer.status_code == 303
        inbox = await client.get("/")
        assert "Vaccin de Léa" in inbox.text and "Pour Claire" not in inbox.text and "Léa Martin" in inbox.text
    # Paul was granted reading Claire's messages: he reads, cannot reply, leaves them unread.
    paul, paul_csrf = await webmail.logged_in("adult_2")
    async with aclosing(paul):
        claire = next(p for p in (await paul.get("/api/v1/me")).json()["profiles"] if p["relation"] == "carer")
        assert not claire["may_reply"]
        await paul.post("/profils", data={"csrf": paul_csrf, "profil": str(claire["patient_id"])})
        key = await conversation_id(paul)
        page = await paul.get(f"/conversations/{key}")
        assert "en tant qu&#39;aidant" in page.text and "Envoyer ma réponse" not in page.text
        assert (await paul.get("/api/v1/conversations")).json()["items"][0]["unread"] == 1
        own_history = await paul.get("/historique")  # a carer sees their own history, never the patient's
        assert own_history.status_code == 200 and "Qui a consulté mes données" in own_history.text
        # Posting anyway: the gateway's rule refuses it (the page only offered what the rules allow).
        forced = await paul.post(f"/api/v1/conversations/{key}/replies", data={"text": "Je réponds"}, headers={"X-CSRF-Token": paul_csrf})
        assert forced.status_code in (400, 403, 422) and "aidant" in forced.text


async def test_activation_then_login(webmail: Webmail) -> None:
    waiting = webmail.patient("not_activated")
    async with webmail.client() as client:
        csrf = form_token((await client.get("/activation")).text)
        base = {"csrf": csrf, "ins": waiting["ins"], "code": waiting["activation_code"], "email": "marc.dubois@example.org"}
        weak = await client.post("/activation", data={**base, "mot_de_passe": "court", "confirmation": "court"})
        assert weak.status_code == 400 and "au moins 10 caractères" in weak.text and "marc.dubois@example.org" in weak.text
        wrong = await client.post(
            "/activation", data={**base, "code": "00000000", "mot_de_passe": "bonjour-2026", "confirmation": "bonjour-2026"}
        )
        assert wrong.status_code == 400 and "code provisoire incorrect" in wrong.text
        done = await client.post("/activation", data={**base, "mot_de_passe": "bonjour-2026", "confirmation": "bonjour-2026"})
        assert done.status_code == 303 and done.headers["location"] == "/connexion?info=active"
        await login(client, webmail.outbox, waiting["ins"], "bonjour-2026", "marc.dubois@example.org")


async def test_opposition_and_closing_stop_all_mail(webmail: Webmail) -> None:
    waiting = webmail.patient("not_activated")
    async with webmail.client() as client:
        csrf = form_token((await client.get("/activation")).text)
        opposed = await client.post(
            "/activation", data={"csrf": csrf, "ins": waiting["ins"], "code": waiting["activation_code"], "action": "opposer"}
        )
        assert opposed.status_code == 303
    claire, csrf = await webmail.logged_in("adult_1")
    async with aclosing(claire):
        refused = await claire.post("/compte/fermer", data={"csrf": csrf, "confirmer": "oui", "mot_de_passe": "wrong"})
        assert refused.status_code == 400 and "Mot de passe incorrect" in refused.text
        closed = await claire.post(
            "/compte/fermer", data={"csrf": csrf, "confirmer": "oui", "mot_de_passe": webmail.patient("adult_1")["password"]}
        )
        assert closed.status_code == 303
        assert (await claire.get("/")).status_code == 303  # the session ended with the profile
    await asyncio.sleep(webmail.gateway.settings.directory_cache_seconds + 0.1)
    for key in ("not_activated", "adult_1"):
        _, code, text = await doctor_writes(webmail.gateway, webmail.patient(key)["address"], "Encore là ?")
        assert code == 550 and "5.1.1" in text


async def test_the_json_api_logs_in_with_the_same_two_steps(webmail: Webmail) -> None:
    patient = webmail.patient("adult_1")
    await doctor_writes(webmail.gateway, patient["address"], "Compte rendu")
    async with webmail.client() as client:
        form = await client.post("/api/v1/session/login", data={"identifier": patient["ins"], "password": patient["password"]})
        assert form.status_code in {415, 422}  # JSON only: a cross-site form cannot log anyone in
        started = await client.post("/api/v1/session/login", json={"identifier": patient["ins"], "password": patient["password"]})
        assert started.status_code == 200 and started.json()["code_sent_to"].endswith("@example.org")
        opened = await client.post("/api/v1/session/code", json={"code": latest_code(webmail.outbox, patient["email"])})
        assert opened.status_code == 200
        csrf = opened.json()["csrf_token"]
        items = (await client.get("/api/v1/conversations")).json()["items"]
        assert items[0]["subject"] == "Compte rendu" and items[0]["unread"] == 1
        key = items[0]["id"]
        sent = await client.post(f"/api/v1/conversations/{key}/replies", data={"text": "Merci"}, headers={"X-CSRF-Token": csrf})
        assert sent.status_code == 201, sent.text
        history = (await client.get("/api/v1/history")).json()
        assert [entry["action"] for entry in history][:3] == ["message-sent", "message-read", "login"] or {"message-sent", "login"} <= {
            entry["action"] for entry in history
        }
        assert (await client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})).status_code == 204
        assert (await client.get("/api/v1/conversations")).status_code == 401
    async with webmail.client() as client:
        docs = (await client.get("/openapi.json")).json()
    assert "/api/v1/conversations/{key}/replies" in docs["paths"] and "/api/v1/prescriptions" in docs["paths"]


async def test_hostile_requests(webmail: Webmail) -> None:
    await doctor_writes(webmail.gateway, webmail.patient("adult_1")["address"], "Résultats")
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        huge = await client.post(
            f"/conversations/{key}/reponse",
            data={"csrf": csrf, "texte": "x"},
            files={"piece": ("big.pdf", b"%PDF-" + b"0" * (12 * 1024 * 1024), "application/pdf")},
        )
        assert huge.status_code == 413 and "trop lourd" in huge.text
        assert (await client.get("/conversations/not-a-number")).status_code == 404
        assert (await client.get(f"/conversations/{key}/messages/999999/pieces/0")).status_code == 404
        assert (await client.get("/?page=-4")).status_code == 200
        long_text = "Docteur, " + "x" * 25_000
        too_long = await client.post(f"/conversations/{key}/reponse", data={"csrf": csrf, "texte": long_text})
        assert too_long.status_code == 400 and "trop long" in too_long.text and long_text in too_long.text  # kept, not cut
        script = await client.post(f"/conversations/{key}/reponse", data={"csrf": csrf, "texte": "<script>alert(1)</script>"})
        assert script.status_code == 303
        page = await client.get(f"/conversations/{key}")
        assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"] and page.headers["cache-control"] == "no-store"
    async with webmail.client() as anonymous:
        assert (await anonymous.get("/")).headers["location"] == "/connexion"
        assert (await anonymous.get("/api/v1/conversations")).status_code == 401
        forged = await anonymous.post("/connexion", data={"identifiant": "x", "mot_de_passe": "y"})
        assert forged.status_code == 403


def test_the_operator_issues_a_provisional_code(database_url: str, engine, settings) -> None:  # type: ignore[no-untyped-def]
    """`caducee patients activation-code INS`: a new code replaces the old one; only created profiles get one."""
    import os
    import subprocess
    import sys

    from caducee import demo

    async def seed() -> dict:  # type: ignore[type-arg]
        fresh = __import__("caducee.db", fromlist=["create_engine"]).create_engine(database_url)
        try:
            return await demo.seed(fresh, settings, certificates=False)  # type: ignore[return-value]
        finally:
            await fresh.dispose()

    credentials = asyncio.run(seed())
    env = {**os.environ, "CADUCEE_DATABASE_URL": database_url, "CADUCEE_DATA_DIR": str(settings.data_dir)}

    def run(ins: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "caducee", "patients", "activation-code", ins], env=env, capture_output=True, text=True, timeout=60
        )

    issued = run(credentials["patients"]["not_activated"]["ins"])
    assert issued.returncode == 0 and "provisional code" in issued.stdout
    assert run(credentials["patients"]["adult_1"]["ins"]).returncode == 1  # activated already
    wrong = run("285037512345689")  # a wrong key
    assert wrong.returncode == 1 and "no patient profile" in wrong.stderr


async def test_an_attachment_downloads_with_a_safe_name_and_its_checked_type(webmail: Webmail) -> None:
    from mail import message
    from test_gateway_rules import smtp_send

    patient = webmail.patient("adult_1")["address"]
    msg = message(
        webmail.gateway.account("doctor")[0],
        patient,
        "Compte rendu",
        "Le compte rendu est joint.",
        attachment=("../../Compte rendu.pdf", PDF, "application/pdf"),
    )
    assert (await asyncio.to_thread(smtp_send, webmail.gateway, msg, [patient]))[0] == 250
    client, _ = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        view = (await client.get(f"/api/v1/conversations/{key}")).json()
        piece = view["messages"][0]["attachments"][0]
        assert (piece["filename"], piece["content_type"]) == ("Compte rendu.pdf", "application/pdf")
        download = await client.get(piece["url"])
        assert download.content == PDF and download.headers["content-type"] == "application/pdf"
        assert download.headers["content-disposition"].startswith('attachment; filename="Compte rendu.pdf"')
        assert "sandbox" in download.headers["content-security-policy"]
        page = await client.get(f"/conversations/{key}")
        assert f"/conversations/{key}/messages/{view['messages'][0]['id']}/pieces/0" in page.text
        history = (await client.get("/api/v1/history")).json()
        assert any(entry["action"] == "attachment-read" and entry["detail"] == "Compte rendu.pdf" for entry in history)


async def test_an_idle_session_ends(webmail: Webmail) -> None:
    from sqlalchemy import update

    from caducee.webmail.accounts import SESSION_RECHECK_SECONDS
    from caducee.webmail.models import WebSession

    client, _ = await webmail.logged_in()
    async with aclosing(client):
        assert (await client.get("/")).status_code == 200
        async with webmail.gateway.engine.begin() as conn:
            await conn.execute(update(WebSession).values(last_seen_at=datetime(2020, 1, 1, tzinfo=UTC)))
        await asyncio.sleep(SESSION_RECHECK_SECONDS + 0.2)  # what this process remembers of the session is re-read
        gone = await client.get("/")
        assert gone.status_code == 303 and gone.headers["location"] == "/connexion?info=expire"
        expired = (await client.get(gone.headers["location"])).text
        assert "Votre session a pris fin" in expired
        assert '<p class="warning" role="status">Votre session a pris fin' in expired  # a warning, not styled as a success
        assert (await client.get("/api/v1/me")).status_code == 401


async def test_codes_go_through_an_smtp_relay_when_one_is_configured(tmp_path: Path) -> None:
    """The notifier's relay path against a real SMTP server (aiosmtpd)."""
    from aiosmtpd.controller import Controller
    from conftest import free_port

    from caducee.notify.notifier import SmtpNotifier

    received: list[bytes] = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            received.append(envelope.content)
            return "250 OK"

    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        await SmtpNotifier(f"127.0.0.1:{port}", "Caducée <ne-pas-repondre@demo.mssante.fr>").send(
            "claire.martin@example.org", "Votre code de connexion Caducée", "Votre code de connexion est : 123456"
        )
    finally:
        controller.stop()
    assert len(received) == 1 and b"123456" in received[0] and b"To: claire.martin@example.org" in received[0]


async def test_a_patient_is_told_a_message_waits_without_what_it_says(webmail: Webmail) -> None:
    import email
    import email.policy

    from caducee.notify.alerts import NewMailAlerts
    from caducee.notify.notifier import OutboxNotifier

    alerts = NewMailAlerts(webmail.gateway.engine, webmail.gateway.settings, OutboxNotifier(webmail.outbox, "Caducée <n@demo.mssante.fr>"))
    webmail.gateway.pipeline.on_delivered.append(alerts.delivered)
    patient = webmail.patient("adult_1")
    for subject in ("Résultats de biopsie", "Résultats de biopsie (suite)"):
        await doctor_writes(webmail.gateway, patient["address"], subject, "Le détail est dans le compte rendu.")
    await alerts.close()
    sent = [email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in sorted(webmail.outbox.glob("*.eml"))]
    assert [m["To"] for m in sent] == [patient["email"]]  # one alert for two messages within the hour
    text = sent[0].get_content()
    assert "connectez-vous" in text and "biopsie" not in text and "Bernard" not in text and "biopsie" not in sent[0]["Subject"]
