"""The dossier's patient pages in a real browser: Debian's Chromium driven by Playwright,
against `caducee serve --demo` (documents sent by the demo doctor's mail client as
IHE_XDM.ZIP over SMTP), every page checked with axe-core at 1280 and 360 px and
photographed (CADUCEE_SCREENSHOTS=docs/screenshots puts the pictures where the README
links them), by keyboard and without JavaScript."""

from __future__ import annotations

import os
import smtplib
import time
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import httpx
from test_webmail_browser import Site, browser, check_page, log_in, site  # noqa: F401 (fixtures)
from xdm_builder import PDF, Doc, package, xdm_mail

CDA = (
    '<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"><code code="11502-2"/>'
    "<title>Bilan sanguin du 18 novembre</title><component><structuredBody><component><section><title>Hématologie</title>"
    "<text>Hémoglobine : 13,5 g/dL (normale).\nLeucocytes : 6 200 /mm3 (normal).</text></section></component>"
    "<component><section><title>Biochimie</title><text>Glycémie à jeun : 0,92 g/L (normale).</text></section></component>"
    "</structuredBody></component></ClinicalDocument>"
).encode()


def send_documents(where: Site, to_key: str = "adult_1") -> None:
    """The demo doctor's practice software mails three documents to the patient."""
    patient = where.patient(to_key)
    doctor = where.pro("doctor")
    docs = [
        Doc(title="Compte rendu de consultation du 20 novembre", care="20261120", unique_id="1.2.250.1.999.7.1"),
        Doc(
            name="DOC0002.XML",
            data=CDA,
            mime="text/xml",
            type_code="11502-2",
            title="Bilan sanguin du 18 novembre",
            care="20261118",
            unique_id="1.2.250.1.999.7.2",
        ),
        Doc(name="DOC0003.PDF", type_code="57833-6", title="Ordonnance de kinésithérapie", care="20261120", unique_id="1.2.250.1.999.7.3"),
    ]
    msg = xdm_mail(doctor["address"], patient["address"], package(docs, patient["ins"]), codes="11502-2")
    with smtplib.SMTP("127.0.0.1", where.smtp_port, timeout=60) as client:
        client.starttls(context=where.anchors)
        client.login(doctor["address"], doctor["password"])
        client.sendmail(doctor["address"], [patient["address"]], msg.as_bytes(policy=SMTP_POLICY))


def wait_for_documents(page: Any, where: Site, count: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        page.goto(f"{where.base_url}/dossier")
        if page.locator("ul.documents > li").count() >= count or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert page.locator("ul.documents > li").count() >= count, "the documents mailed were not filed"


def test_the_dossier_pages_are_accessible_usable_and_photographed(site: Site, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    shots = Path(os.environ.get("CADUCEE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    send_documents(site)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR", bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        log_in(page, site, "adult_1")
        for _ in range(12):  # by keyboard: Tab to "Mon dossier médical", Enter
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.textContent") == "Mon dossier médical":
                break
        page.keyboard.press("Enter")
        page.wait_for_url("**/dossier")
        wait_for_documents(page, site, 3)
        check_page(page, "14-dossier-documents", shots)
        assert "Dr Sophie Bernard" in page.locator("ul.documents").inner_text()
        page.get_by_label("Type de document").select_option(label="Compte rendu d'examen biologique")
        page.get_by_role("button", name="Filtrer").click()
        assert page.locator("ul.documents > li").count() == 1
        page.get_by_role("link", name="Bilan sanguin du 18 novembre").click()
        page.wait_for_url("**/dossier/documents/**")
        assert "Glycémie à jeun : 0,92 g/L" in page.locator("section.cda").inner_text()  # the CDA read as text
        check_page(page, "15-dossier-document", shots)
        page.get_by_role("button", name="Masquer aux professionnels").click()
        page.wait_for_url("**info=masque**")
        assert "masqué" in page.get_by_role("status").inner_text()
        with page.expect_download() as download:
            page.get_by_role("link", name="Télécharger").click()
        assert download.value.suggested_filename.endswith(".xml")

        page.get_by_role("link", name="← Mes documents").click()
        page.get_by_role("link", name="Ajouter un document").click()
        scan = tmp_path / "analyse de mars.pdf"
        scan.write_bytes(PDF)
        page.get_by_label("Le document").set_input_files(str(scan))
        page.get_by_label("Titre (facultatif)").fill("Analyse de sang de mars")
        page.get_by_label("Type de document").select_option(label="Compte rendu d'examen biologique")
        check_page(page, "16-dossier-ajouter", shots)
        page.get_by_role("button", name="Ajouter à mon dossier").click()
        page.wait_for_url("**info=ajoute**")
        assert "Analyse de sang de mars" in page.locator("ul.documents").inner_text()

        page.get_by_role("link", name="Qui peut voir mon dossier").click()
        page.get_by_label("Nom du professionnel").fill("haddad")
        page.get_by_role("button", name="Chercher").click()
        page.get_by_role("button", name="Bloquer M. Karim Haddad").click()
        page.wait_for_url("**info=bloque**")
        page.get_by_role("button", name="Refuser l'accès en urgence").click()
        page.wait_for_url("**info=urgence-refusee**")
        check_page(page, "17-dossier-acces", shots)
        assert "Débloquer M. Karim Haddad" in page.content()

        page.get_by_role("link", name="Profil médical").click()
        page.locator("#allergy summary").click()
        page.locator("#allergy").get_by_label("Intitulé").fill("Pénicilline")
        page.locator("#allergy").get_by_label("Précision (facultatif)").fill("Urticaire géant en 2019")
        page.locator("#allergy").get_by_role("button", name="Enregistrer").click()
        page.wait_for_url("**info=profil**")
        page.locator("#measure summary").click()
        page.locator("#measure").get_by_label("Valeur").fill("62,5")
        page.locator("#measure").get_by_role("button", name="Enregistrer").click()
        page.wait_for_url("**info=profil**")
        assert "Pénicilline" in page.content() and "Poids : 62.5 kg" in page.content()
        check_page(page, "18-dossier-profil", shots)

        page.goto(f"{site.base_url}/historique")
        history = page.locator("table.history").inner_text()
        assert "Ajout d'un document" in history and "Auteur du document" in history and "Professionnel bloqué" in history
        check_page(page, "19-dossier-historique", shots)
    finally:
        context.close()


def test_a_guardian_sees_the_minors_dossier_and_the_pages_work_without_javascript(site: Site, browser: Any) -> None:  # noqa: F811
    send_documents(site, "minor")
    context = browser.new_context(viewport={"width": 360, "height": 780}, locale="fr-FR", java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        log_in(page, site, "adult_1")
        page.goto(f"{site.base_url}/profils")
        page.get_by_label("Léa Martin", exact=False).check()
        page.get_by_role("button", name="Consulter ce profil").click()
        page.wait_for_url("**info=profil**")
        wait_for_documents(page, site, 3)
        assert "Documents de Léa Martin" in page.content() and "Vous consultez le dossier médical de" in page.content()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
    finally:
        context.close()


def test_the_dossier_asks_to_sign_in(site: Site) -> None:  # noqa: F811
    with httpx.Client(base_url=site.base_url, timeout=30) as client:
        answer = client.get("/dossier", follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/connexion"
