"""The dossier in the professionals' portal, in a real browser: Debian's Chromium driven by
Playwright against `caducee serve --demo` (and the stand-in it starts). The demo doctor's
practice software deposits documents through the API with its own PSC token; professionals
sign in through the stand-in's pages, find the patient by INS, declare consent, open an
emergency access (its banner on every page), or are refused because the patient blocked them
in her webmail. Every page is checked with axe-core at 1280 and 360 px and photographed
(CADUCEE_SCREENSHOTS=docs/screenshots puts the pictures where the README links them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BACKENDS
from psc import Standin, obtain_token
from test_identity_browser import pro_browser, serve_demo, sign_in  # noqa: F401 (fixture)
from test_webmail_browser import check_page
from webmail_client import form_token, latest_code
from xdm_builder import PDF

from caducee import demo

CDA = (
    '<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"><code code="11502-2"/>'
    "<title>Bilan sanguin du 18 novembre</title><component><structuredBody><component><section><title>Hématologie</title>"
    "<text>Hémoglobine : 13,5 g/dL (normale).</text></section></component></structuredBody></component></ClinicalDocument>"
).encode()
NURSE = "Karim Haddad — Infirmier (n° 810000000017)"
PHARMACIST = "Nadia Lefèvre — Pharmacien (n° 810000000025)"
DOCTOR = "Sophie Bernard — Médecin (n° 810000000009)"


@pytest.fixture(scope="module", params=BACKENDS)
def pro_site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    """serve --demo, with documents deposited in Claire's dossier by the doctor's software."""
    directory = tmp_path_factory.mktemp(f"pro-dossier-{request.param}")
    with serve_demo(directory, request.param, request) as (base_url, psc_port):
        token = obtain_token(Standin(None, psc_port, directory), "8" + demo.DOCTOR_RPPS, client_id=demo.PSC_SOFTWARE_CLIENT_ID)  # type: ignore[arg-type]
        documents = [
            ("Compte rendu de consultation du 20 novembre", "11488-4", "2026-11-20", PDF, "cr.pdf", "application/pdf", "false"),
            ("Bilan sanguin du 18 novembre", "11502-2", "2026-11-18", CDA, "bilan.xml", "text/xml", "false"),
            ("Ordonnance de kinésithérapie", "57833-6", "2026-11-20", PDF + b"%k\n", "ordonnance.pdf", "application/pdf", "false"),
            ("Consultation d'addictologie", "11488-4", "2026-10-02", PDF + b"%a\n", "addicto.pdf", "application/pdf", "true"),
        ]
        with httpx.Client(base_url=base_url, headers={"Authorization": "Bearer " + token["access_token"]}, timeout=30) as api:
            for title, code, care, data, name, mime, masked in documents:
                answer = api.post(
                    f"/api/v1/dossier/patients/{demo.ADULT_1_INS}/documents",
                    data={"title": title, "type_code": code, "care_date": care, "masked": masked},
                    files={"file": (name, data, mime)},
                )
                assert answer.status_code == 201, answer.text
        yield base_url, psc_port, directory


def block_in_webmail(base_url: str, directory: Path, national_id: str) -> None:
    """Claire blocks a professional from her webmail's "Qui peut voir mon dossier"."""
    patient = json.loads((directory / "var" / "demo-credentials.json").read_text())["patients"]["adult_1"]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        csrf = form_token(client.get("/connexion").text)
        client.post("/connexion", data={"csrf": csrf, "identifiant": patient["ins"], "mot_de_passe": patient["password"]})
        client.post("/connexion/code", data={"csrf": csrf, "code": latest_code(directory / "var" / "outbox", patient["email"])})
        page = client.get("/dossier/acces")
        assert page.status_code == 200, page.text
        blocked = client.post("/dossier/acces/bloquer", data={"csrf": form_token(page.text), "professionnel": national_id})
        assert blocked.status_code == 303, blocked.text


def find_claire(page: Any, base_url: str, ins: str = demo.ADULT_1_INS) -> None:
    page.get_by_role("link", name="Dossiers patients").click()
    page.wait_for_url(f"{base_url}/pro/dossier")
    page.get_by_label("INS du patient").fill(ins)
    page.get_by_role("button", name="Rechercher le patient").click()


def sign_out(page: Any) -> None:
    page.get_by_role("button", name="Se déconnecter").click()
    page.wait_for_url("**/pro/deconnecte")


def test_find_consent_emergency_and_blocked(pro_site: tuple[str, int, Path], pro_browser: Any, tmp_path: Path) -> None:  # noqa: F811
    base_url, _, directory = pro_site
    shots = Path(os.environ.get("CADUCEE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    context = pro_browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR")
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        # the nurse: a wrong key first, then Claire, her identity to check, consent, the list, a document
        sign_in(page, base_url, NURSE)
        page.wait_for_url(f"{base_url}/pro/")
        find_claire(page, base_url, "2 85 03 75 123 456 89")
        assert "la clé" in page.get_by_role("alert").inner_text()
        assert page.evaluate("document.activeElement.id") == "ins"
        check_page(page, "30-pro-dossier-ins-invalide", shots)
        page.get_by_label("INS du patient").fill("2 85 03 75 123 456 88")
        page.get_by_role("button", name="Rechercher le patient").click()
        page.wait_for_url(f"{base_url}/pro/dossier/**")
        assert demo.ADULT_1_INS not in page.url
        assert page.get_by_role("heading", level=1).inner_text() == "Dossier médical de Claire Martin"
        check_page(page, "31-pro-dossier-accord-ou-urgence", shots)
        page.get_by_label("J'atteste que le patient").check()
        page.get_by_role("button", name="Déclarer l'accord et consulter").click()
        page.wait_for_url("**?info=accord")
        titles = page.locator("ul.documents .who").all_inner_texts()
        assert titles == ["Ordonnance de kinésithérapie", "Compte rendu de consultation du 20 novembre", "Bilan sanguin du 18 novembre"]
        assert page.locator(".emergency").count() == 0
        check_page(page, "32-pro-dossier-documents", shots)
        page.get_by_role("link", name="Bilan sanguin du 18 novembre").click()
        assert "Hémoglobine : 13,5 g/dL" in page.locator(".cda").inner_text()
        check_page(page, "33-pro-dossier-document", shots)
        sign_out(page)

        # the pharmacist in an emergency: the reason asked, then the banner on every page of it
        sign_in(page, base_url, PHARMACIST)
        page.wait_for_url(f"{base_url}/pro/")
        find_claire(page, base_url)
        page.get_by_label("Motif de l'accès en urgence").fill("Malaise à l'officine, recherche d'allergies")
        page.get_by_role("button", name="Ouvrir un accès en urgence").click()
        page.wait_for_url("**?info=urgence")
        banner = page.get_by_role("region", name="Accès en urgence")
        assert "enregistré comme accès en urgence" in banner.inner_text()
        assert len(page.locator("ul.documents .who").all_inner_texts()) == 3  # the masked one is not shown, even now
        check_page(page, "34-pro-dossier-urgence", shots)
        page.get_by_role("link", name="Ordonnance de kinésithérapie").click()
        assert page.get_by_role("region", name="Accès en urgence").count() == 1
        check_page(page, "35-pro-dossier-urgence-document", shots)
        sign_out(page)

        # the doctor, whom Claire blocked in her webmail: told plainly
        block_in_webmail(base_url, directory, "8" + demo.DOCTOR_RPPS)
        sign_in(page, base_url, DOCTOR)
        page.wait_for_url(f"{base_url}/pro/")
        find_claire(page, base_url)
        assert "vous a bloqué" in page.get_by_role("alert").inner_text()
        check_page(page, "36-pro-dossier-bloque", shots)
        sign_out(page)
    finally:
        context.close()
