"""The agenda in a real browser (Debian's Chromium through Playwright) against
`caducee serve --demo`: a doctor's mail client sends an invitation over SMTP submission,
the patient sees it, accepts it by keyboard, and the doctor's IMAP INBOX receives the
METHOD:REPLY; the patient adds an appointment with a professional found in the annuaire.

Every agenda page is checked with axe-core (no serious or critical violation), at 1280 px,
at 640 px (1280 px at 200 % zoom) and at 360 px (no sideways scrolling), and photographed
(CADUCEE_SCREENSHOTS=docs/screenshots puts the pictures where the README links them).
"""

from __future__ import annotations

import os
import smtplib
import time
from datetime import UTC, datetime, timedelta
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest
from agenda_helpers import ics, invitation_mail
from test_webmail_browser import Site, browser, log_in, page, site  # noqa: F401 - the fixtures

pytest.importorskip("playwright.sync_api")


def check(page: Any, name: str, shots: Path) -> None:  # noqa: F811
    from axe_playwright_python.sync_playwright import Axe

    for width in (1280, 640, 360):
        page.set_viewport_size({"width": width, "height": 900 if width > 400 else 780})
        page.wait_for_timeout(50)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} scrolls sideways at {width} px"
        if width != 640:
            page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    results = Axe().run(page)
    serious = [
        (v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in {"serious", "critical"}
    ]
    assert not serious, f"{name}: {serious}"


def send_invitation(site: Site, calendar: str) -> None:  # noqa: F811
    doctor = site.pro("doctor")
    patient = site.patient("adult_1")
    msg = invitation_mail(doctor["address"], patient["address"], calendar, subject="Invitation : consultation de suivi")
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=60) as client:
        client.starttls(context=site.anchors)
        client.login(doctor["address"], doctor["password"])
        client.sendmail(doctor["address"], [patient["address"]], msg.as_bytes(policy=SMTP_POLICY))


def test_the_agenda_pages_invitation_accepted_and_appointment_added(site: Site, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    shots = Path(os.environ.get("CADUCEE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    patient = site.patient("adult_1")
    start = (datetime.now(UTC) + timedelta(days=9)).strftime("%Y%m%dT143000")
    send_invitation(
        site, ics(organizer=site.pro("doctor")["address"], attendee=patient["address"], start=start, uid=f"suivi-{time.time()}@cabinet")
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR", bypass_csp=True)
    page = context.new_page()  # noqa: F811
    page.set_default_timeout(30_000)
    try:
        log_in(page, site, "adult_1")
        page.get_by_role("link", name="Mon agenda").click()
        page.wait_for_url("**/agenda")
        deadline = time.monotonic() + 30
        while (
            "Consultation de suivi" not in page.content() and time.monotonic() < deadline
        ):  # the agenda reads the invitation after delivery
            page.wait_for_timeout(300)
            page.reload()
        assert "Invitation à confirmer" in page.content()
        # a patient's own appointment, the professional found in the annuaire, without JavaScript
        page.get_by_role("link", name="Ajouter un rendez-vous").first.click()
        page.get_by_label("Nom du professionnel ou de l'établissement").fill("Haddad")
        page.get_by_role("button", name="Chercher dans l'annuaire").click()
        page.get_by_role("link", name="Choisir Karim Haddad").click()
        check(page, "20-agenda-ajout", shots)
        page.get_by_label("Rendez-vous", exact=True).fill("Pansement")
        page.get_by_label("Date").fill((datetime.now(UTC) + timedelta(days=3)).date().isoformat())
        page.get_by_label("Heure (facultatif)").fill("08:45")
        page.get_by_label("Lieu (facultatif)").fill("À domicile")
        page.get_by_role("button", name="Ajouter à mon agenda").click()
        page.wait_for_url("**info=ajoute")
        assert "Le rendez-vous est ajouté" in page.get_by_role("status").inner_text()
        check(page, "21-agenda-rendez-vous", shots)
        page.goto(f"{site.base_url}/agenda")
        check(page, "22-agenda", shots)
        page.get_by_role("link", name="Consultation de suivi").first.click()
        check(page, "23-agenda-invitation", shots)
        page.get_by_role("button", name="Accepter le rendez-vous").focus()  # by keyboard
        page.keyboard.press("Enter")
        page.wait_for_load_state()
        assert "vous avez accepté ce rendez-vous" in page.get_by_role("status").inner_text()
        page.goto(f"{site.base_url}/agenda/mois?mois={start[:4]}-{start[4:6]}")
        check(page, "24-agenda-mois", shots)
        page.goto(f"{site.base_url}/agenda/prevention")
        check(page, "25-agenda-prevention", shots)
        page.get_by_role("link", name="Dépistage du cancer du col de l'utérus : test HPV").click()
        check(page, "26-agenda-prevention-marquer", shots)
        page.goto(f"{site.base_url}/agenda/reglages")
        page.get_by_role("button", name="Créer mon adresse d'abonnement").click()
        assert "/agenda/flux/" in page.get_by_label("Votre adresse d'abonnement").input_value()
        check(page, "27-agenda-rappels-abonnement", shots)
    finally:
        context.close()
    deadline = time.monotonic() + 30
    while True:  # the doctor's own mail client finds the answer in the INBOX
        replies = [raw for raw in site.imap_messages(site.pro("doctor")) if b"Accept" in raw or b"REPLY" in raw]
        if replies or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert replies, "the METHOD:REPLY did not reach the doctor's IMAP INBOX"
