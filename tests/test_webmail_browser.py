"""The webmail in a real browser: Debian's Chromium driven by Playwright, against
`caducee serve --demo` started as a process (HTTP, SMTP, IMAP, S/MIME on), with mail
sent by smtplib and read back by imaplib.

Every page is checked with axe-core (no serious or critical violation), at 1280 px and at
360 px (no sideways scrolling), and photographed. With CADUCEE_SCREENSHOTS=docs/screenshots
the pictures go where the README links them; otherwise into the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import imaplib
import json
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BACKENDS, _truncate_all, free_port
from mail import message
from webmail_client import latest_code

from caducee import db

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=fr-FR",
]
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


@dataclass
class Site:
    base_url: str
    data_dir: Path
    smtp_port: int
    imap_port: int
    credentials: dict[str, Any]
    anchors: ssl.SSLContext

    @property
    def outbox(self) -> Path:
        return self.data_dir / "outbox"

    def patient(self, key: str) -> dict[str, Any]:
        return self.credentials["patients"][key]

    def pro(self, key: str) -> dict[str, Any]:
        return self.credentials["professionals"][key]

    def send(self, account: dict[str, Any], to: str, subject: str, body: str, headers: dict[str, str] | None = None) -> Any:
        """A professional's mail client: submission with STARTTLS and AUTH."""
        msg = message(account["address"], to, subject, body, headers=headers)
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=60) as client:
            client.starttls(context=self.anchors)
            client.login(account["address"], account.get("password") or account["api_token"])
            client.sendmail(account["address"], [to], msg.as_bytes(policy=SMTP_POLICY))
        return msg

    def imap_messages(self, account: dict[str, Any]) -> list[bytes]:
        with imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=60) as client:
            client.starttls(ssl_context=self.anchors)
            client.login(account["address"], account["password"])
            client.select("INBOX", readonly=True)
            _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
            return [part[1] for part in data if isinstance(part, tuple)]


def _database_for(backend: str, directory: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory / 'caducee.sqlite3'}"
    url = str(request.getfixturevalue("pg_url"))

    async def clean() -> None:
        engine = db.create_engine(url)
        try:
            await _truncate_all(engine)
        finally:
            await engine.dispose()

    asyncio.run(clean())
    return url


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One `caducee serve --demo` per backend for the scenarios of this module."""
    directory = tmp_path_factory.mktemp(f"site-{request.param}")
    data_dir = directory / "var"
    http_port, smtp_port, imap_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(data_dir),
        "CADUCEE_DATABASE_URL": _database_for(request.param, directory, request),
        "CADUCEE_HTTP_PORT": str(http_port),
        "CADUCEE_SUBMISSION_PORT": str(smtp_port),
        "CADUCEE_SUBMISSIONS_PORT": "0",
        "CADUCEE_MX_PORT": "0",
        "CADUCEE_IMAP_PORT": str(imap_port),
        "CADUCEE_IMAPS_PORT": "0",
        "CADUCEE_LOG_LEVEL": "WARNING",
        "CADUCEE_IMAP_POLL_SECONDS": "0.2",
        "CADUCEE_DEMO_PSC_PORT": str(free_port()),  # the demo's Pro Santé Connect stand-in
    }
    log = (directory / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "caducee", "serve", "--demo"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200 and (data_dir / "demo-credentials.json").exists():
                    smtplib.SMTP("127.0.0.1", smtp_port, timeout=5).quit()
                    break
            except (OSError, httpx.HTTPError, smtplib.SMTPException):
                pass
            assert process.poll() is None, (directory / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        credentials = json.loads((data_dir / "demo-credentials.json").read_text())
        anchors = ssl.create_default_context(cafile=str(data_dir / "pki" / "anchors.pem"))
        anchors.check_hostname = False  # the development certificate names mail.demo.mssante.fr, we dial 127.0.0.1
        yield Site(base_url, data_dir, smtp_port, imap_port, credentials, anchors)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    """Started after the site (and stopped before it): Playwright's loop must not be running
    while the next backend's site is prepared with asyncio."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package", pytrace=False)
    with playwright_sync.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, env={**os.environ, "LANG": "fr_FR.UTF-8", "LANGUAGE": "fr"}
        )  # the file picker's words
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR")
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def log_in(page: Any, site: Site, key: str, *, keyboard: bool = False) -> None:
    who = site.patient(key)
    page.goto(f"{site.base_url}/")
    assert page.url.endswith("/connexion")
    if keyboard:  # by keyboard alone: the skip link, then each field in order
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        page.keyboard.type(who["ins"])
        page.keyboard.press("Tab")
        page.keyboard.type(who["password"])
        page.keyboard.press("Enter")
    else:
        page.get_by_label("Numéro INS ou adresse e-mail").fill(who["ins"])
        page.get_by_label("Mot de passe").fill(who["password"])
        page.get_by_role("button", name="Continuer").click()
    page.wait_for_url("**/connexion/code")
    page.get_by_label("Code à 6 chiffres").fill(latest_code(site.outbox, who["email"]))
    if keyboard:
        page.keyboard.press("Enter")
    else:
        page.get_by_role("button", name="Valider").click()
    page.wait_for_url(f"{site.base_url}/")


def open_conversation(page: Any, subject: str) -> None:
    page.goto(page.url.split("/conversations")[0].split("/?")[0].rstrip("/") + "/")
    page.get_by_role("link", name=subject).first.click()
    page.wait_for_url("**/conversations/**")


def test_doctor_writes_patient_reads_and_replies(site: Site, page: Any) -> None:
    patient = site.patient("adult_1")
    sent = site.send(site.pro("doctor"), patient["address"], "Résultats de votre bilan", "Bonjour,\nvos résultats sont normaux.\n")
    log_in(page, site, "adult_1", keyboard=True)
    unread = page.locator("#conversations li.unread")
    assert unread.count() >= 1 and "Résultats de votre bilan" in unread.first.inner_text()
    open_conversation(page, "Résultats de votre bilan")
    assert "vos résultats sont normaux." in page.locator("article.message").last.inner_text()  # signed, shown opened
    page.get_by_label("Votre message").fill("Merci docteur, je prends rendez-vous pour le contrôle.")
    page.get_by_role("button", name="Envoyer ma réponse").click()
    page.wait_for_url("**info=envoye**")
    assert page.get_by_role("status").inner_text() == "Votre message a été envoyé."
    deadline = time.monotonic() + 30
    while True:  # the doctor's own mail client finds the reply in the INBOX
        replies = [raw for raw in site.imap_messages(site.pro("doctor")) if sent["Message-ID"].encode() in raw]
        if replies or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert replies, "the reply did not reach the doctor's IMAP INBOX"
    assert b"application/pkcs7-mime" in replies[-1]  # signed and encrypted to the doctor's own certificate


def test_a_reply_after_fin_is_impossible_and_explained(site: Site, page: Any) -> None:
    patient = site.patient("adult_2")
    first = site.send(site.pro("nurse"), patient["address"], "Pansement", "Je passe jeudi refaire le pansement.")
    site.send(
        site.pro("nurse"),
        patient["address"],
        "[FIN] Pansement",
        "La plaie est cicatrisée, je clos notre échange.",
        headers={"In-Reply-To": first["Message-ID"], "References": first["Message-ID"]},
    )
    log_in(page, site, "adult_2")
    open_conversation(page, "Pansement")
    assert "La plaie est cicatrisée" in page.content()  # the closing message is delivered with its content
    assert page.get_by_role("button", name="Envoyer ma réponse").count() == 0
    note = page.get_by_role("note").inner_text()
    assert "a clos cette conversation le" in note and "Karim Haddad" in note


def test_a_prescription_reaches_the_demo_pharmacy(site: Site, page: Any, tmp_path: Path) -> None:
    scan = tmp_path / "mon ordonnance.pdf"
    scan.write_bytes(PDF)
    log_in(page, site, "adult_1")
    page.get_by_role("link", name="Envoyer une ordonnance").click()
    page.get_by_label("Ville ou code postal").fill("75010")
    page.get_by_role("button", name="Rechercher").click()
    page.get_by_role("link", name="Choisir Pharmacie du Canal").first.click()
    page.get_by_label("Votre ordonnance").set_input_files(str(scan))
    page.get_by_label("Un mot pour la pharmacie (facultatif)").fill("Je passerai la chercher demain matin.")
    page.get_by_role("button", name="Envoyer mon ordonnance").click()
    page.wait_for_url("**info=ordonnance**")
    assert "Votre ordonnance a été envoyée" in page.get_by_role("status").inner_text()
    received = [raw for raw in site.imap_messages(site.pro("pharmacy")) if b"Je passerai la chercher demain matin." in raw]
    assert received and b"mon ordonnance.pdf" in received[0]


def test_five_wrong_codes_lock_the_challenge(site: Site, page: Any) -> None:
    who = site.patient("adult_2")
    page.goto(f"{site.base_url}/connexion")
    page.get_by_label("Numéro INS ou adresse e-mail").fill(who["email"])
    page.get_by_label("Mot de passe").fill(who["password"])
    page.get_by_role("button", name="Continuer").click()
    page.wait_for_url("**/connexion/code")
    right = latest_code(site.outbox, who["email"])
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(5):
        page.get_by_label("Code à 6 chiffres").fill(wrong)
        page.get_by_role("button", name="Valider").click()
        page.wait_for_load_state()
    assert "ce code est bloqué" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Code à 6 chiffres").count() == 0  # nothing more to try: only "start again"
    page.get_by_role("link", name="Recommencer la connexion").click()
    page.wait_for_url("**/connexion")


# ---- every page: accessibility, narrow screens, pictures -----------------------------------------


def check_page(page: Any, name: str, shots: Path) -> None:
    from axe_playwright_python.sync_playwright import Axe

    for width in (1280, 360):
        page.set_viewport_size({"width": width, "height": 900 if width > 400 else 780})
        page.wait_for_timeout(50)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} scrolls sideways at {width} px"
        page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    results = Axe().run(page)
    serious = [
        (v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in {"serious", "critical"}
    ]
    assert not serious, f"{name}: {serious}"


def test_header_focus_targets_and_zoom(site: Site, page: Any) -> None:
    """What axe does not see: the focus outline on the blue header (3:1 at least), targets
    of 24 px at 360 px, and a header that leaves most of the screen at 200 % zoom."""
    log_in(page, site, "adult_1")
    link = page.get_by_role("link", name="Mon compte")
    link.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    colour = page.evaluate("getComputedStyle(document.activeElement).outlineColor")
    assert colour in ("rgb(255, 255, 255)",), colour  # white on #0b4f8a: 8.1:1
    page.set_viewport_size({"width": 360, "height": 780})
    heights = page.evaluate(
        "[...document.querySelectorAll('header a, header button, footer a, .folders a')].map(e => e.getBoundingClientRect().height)"
    )
    assert min(heights) >= 24, heights
    page.set_viewport_size({"width": 640, "height": 450})  # 1280 x 900 at 200 % zoom
    header = page.evaluate("document.querySelector('header.site').getBoundingClientRect().height")
    assert header < 450 / 3, header


def test_every_page_is_accessible_and_photographed(site: Site, browser: Any, tmp_path: Path) -> None:
    shots = Path(os.environ.get("CADUCEE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    patient = site.patient("adult_1")
    doctor = site.pro("doctor")
    first = site.send(
        doctor,
        patient["address"],
        "Compte rendu de consultation",
        "Bonjour Madame Martin,\n\nVoici le compte rendu de votre consultation du 20 novembre.\n"
        "Votre tension est bonne. Continuez le traitement.\n\nDr Sophie Bernard",
    )
    site.send(
        doctor,
        patient["address"],
        "[FIN] Compte rendu de consultation",
        "Je clos cet échange. Bonne journée.",
        headers={"In-Reply-To": first["Message-ID"], "References": first["Message-ID"]},
    )
    site.send(
        site.credentials["cnam"],
        patient["address"],
        "Dépistage du cancer colorectal",
        "Vous avez entre 50 et 74 ans : un test simple, à faire chez vous, est pris en charge à 100 %.",
    )
    site.send(site.pro("nurse"), patient["address"], "Prise de sang de lundi", "Je passerai lundi à 8 h pour la prise de sang.")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR", bypass_csp=True)
    page = context.new_page()
    try:
        page.goto(f"{site.base_url}/connexion")
        check_page(page, "01-connexion", shots)
        page.get_by_label("Numéro INS ou adresse e-mail").fill(patient["ins"])
        page.get_by_label("Mot de passe").fill(patient["password"])
        page.get_by_role("button", name="Continuer").click()
        page.wait_for_url("**/connexion/code")
        check_page(page, "02-code", shots)
        page.get_by_label("Code à 6 chiffres").fill(latest_code(site.outbox, patient["email"]))
        page.get_by_role("button", name="Valider").click()
        page.wait_for_url(f"{site.base_url}/")
        check_page(page, "03-messages", shots)
        open_conversation(page, "Prise de sang de lundi")
        check_page(page, "04-conversation", shots)
        open_conversation(page, "Compte rendu de consultation")
        check_page(page, "05-conversation-close", shots)
        open_conversation(page, "Dépistage du cancer colorectal")
        check_page(page, "06-message-assurance-maladie", shots)
        page.goto(f"{site.base_url}/ordonnance?lieu=Paris")
        check_page(page, "07-ordonnance-pharmacie", shots)
        page.get_by_role("link", name="Choisir Pharmacie du Canal").first.click()
        check_page(page, "08-ordonnance-envoi", shots)
        page.goto(f"{site.base_url}/profils")
        check_page(page, "09-profils", shots)
        page.goto(f"{site.base_url}/compte")
        check_page(page, "10-compte", shots)
        page.goto(f"{site.base_url}/historique")
        check_page(page, "11-historique", shots)
        page.goto(f"{site.base_url}/conversations/999999")
        check_page(page, "12-introuvable", shots)
        page.goto(f"{site.base_url}/?recherche=tension")
        check_page(page, "14-recherche", shots)
        open_conversation(page, "Prise de sang de lundi")
        page.get_by_role("button", name="Archiver").click()
        page.wait_for_url("**info=archive**")
        page.goto(f"{site.base_url}/?dossier=archives")
        check_page(page, "15-archives", shots)
        page.get_by_role("link", name="Prise de sang de lundi").first.click()
        page.wait_for_url("**/conversations/**")
        page.get_by_role("link", name="Imprimer").click()
        page.wait_for_url("**/imprimer")
        check_page(page, "16-impression", shots)
        page.goto(f"{site.base_url}/aide")
        check_page(page, "17-aide", shots)
        page.goto(f"{site.base_url}/accessibilite")
        check_page(page, "18-accessibilite", shots)
        page.goto(f"{site.base_url}/mentions-legales")
        check_page(page, "19-mentions-legales", shots)
        page.goto(f"{site.base_url}/compte")  # an error moves the focus to the sentence that says what to correct
        page.get_by_label("Mot de passe actuel").fill("pas-le-bon-2026")
        page.get_by_label("Nouveau mot de passe", exact=True).fill("nouveau-2026-x")
        page.get_by_label("Confirmez le nouveau mot de passe").fill("nouveau-2026-x")
        page.get_by_role("button", name="Changer mon mot de passe").click()
        page.wait_for_load_state()
        assert page.evaluate("document.activeElement.id") == "erreur"
        check_page(page, "20-compte-erreur", shots)
        page.evaluate("document.body.dataset.idleSeconds")  # the warning before the session ends, and its button
        page.evaluate("document.getElementById('fin-session').hidden = false")
        check_page(page, "21-fin-de-session", shots)
        page.get_by_role("button", name="Rester connecté").click()
        page.wait_for_function("document.getElementById('fin-session').hidden", timeout=15000)  # the extension's round trip, however loaded
        page.get_by_role("button", name="Se déconnecter").click()
        page.wait_for_url("**/connexion?info=deconnecte")
        page.goto(f"{site.base_url}/activation")
        check_page(page, "13-activation", shots)
        page.goto(f"{site.base_url}/mot-de-passe-oublie")
        check_page(page, "22-mot-de-passe-oublie", shots)
        page.get_by_label("Numéro INS ou adresse e-mail").fill(patient["email"])
        page.get_by_role("button", name="Recevoir un code").click()
        page.wait_for_url("**/mot-de-passe-oublie/code")
        check_page(page, "23-nouveau-mot-de-passe", shots)
    finally:
        context.close()


def test_a_campaign_shows_under_the_prevention_label_and_can_be_hidden(site: Site, page: Any, tmp_path: Path) -> None:
    """Through the campaign API of the running server (sent at once, filed when the inbox is opened), then in Chromium."""
    shots = Path(os.environ.get("CADUCEE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {site.credentials['cnam']['api_token']}"}
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    created = httpx.post(
        f"{site.base_url}/api/v1/campaigns",
        headers=headers,
        data={
            "subject": "Votre kit de dépistage du cancer colorectal",
            "body": "Bonjour,\n\nVous pouvez commander votre kit gratuitement sur https://monkit.depistage-colorectal.fr\n\nL'Assurance Maladie",
            "criteria": json.dumps({"statuses": ["activated", "created"]}),
        },
        files={"pdf": ("kit-depistage.pdf", pdf, "application/pdf")},
        timeout=60,
    )
    assert created.status_code == 200, created.text
    campaign = created.json()["id"]
    assert httpx.post(f"{site.base_url}/api/v1/campaigns/{campaign}/start", headers=headers, timeout=60).json()["state"] == "sent"
    progress = httpx.get(f"{site.base_url}/api/v1/campaigns/{campaign}", headers=headers, timeout=30).json()
    assert progress["delivered"] == progress["targeted"] >= 3
    log_in(page, site, "adult_1")
    line = page.locator("#conversations li", has_text="Votre kit de dépistage du cancer colorectal")
    assert "Assurance Maladie" in line.inner_text() and "Prévention" in line.inner_text()
    check_page(page, "14-prevention-liste", shots)
    open_conversation(page, "Votre kit de dépistage du cancer colorectal")
    assert page.get_by_role("link", name=re.compile("kit-depistage.pdf")).count() == 1
    assert page.locator("textarea").count() == 0  # no reply offered
    assert "Assurance Maladie" in page.locator("article").first.inner_text()
    check_page(page, "15-prevention-message", shots)
    page.goto(f"{site.base_url}/")
    page.get_by_role("button", name="Masquer les messages de prévention de ma liste").click()
    page.wait_for_url(f"{site.base_url}/")
    assert page.locator("#conversations li", has_text="Votre kit de dépistage").count() == 0
    page.get_by_role("link", name=re.compile("^Prévention")).click()
    page.wait_for_url("**/?libelle=prevention")
    assert page.locator("#conversations li", has_text="Votre kit de dépistage").count() == 1
    check_page(page, "16-prevention-libelle", shots)
    page.get_by_role("button", name="Les afficher dans ma liste").click()
    page.wait_for_url("**/?libelle=prevention")
    page.goto(f"{site.base_url}/")
    assert page.locator("#conversations li", has_text="Votre kit de dépistage").count() == 1
