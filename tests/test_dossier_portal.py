"""The dossier in the professionals' portal (/pro/dossier), over real HTTP after a real Pro
Santé Connect sign-in (the stand-in): finding a patient by INS, declaring consent, an
emergency access shown on every page of it, a blocked professional's refusal, references
that only work in the session that made them."""

from __future__ import annotations

import html
import re
from contextlib import aclosing
from typing import Any

import httpx
from psc import Portal, token_for
from test_identity_portal import sign_in
from xdm_builder import PDF

from caducee import demo

DOCTOR, NURSE, PHARMACIST = "8" + demo.DOCTOR_RPPS, "8" + demo.NURSE_RPPS, "8" + demo.PHARMACIST_RPPS
CLAIRE = demo.ADULT_1_INS
BANNER = "Accès en urgence (bris de glace)"


def csrf_of(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


async def signed_in(portal: Portal, national_id: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=portal.base_url, timeout=30)
    done = await sign_in(client, portal, national_id)
    assert done.status_code == 303, done.text
    return client


async def find(client: httpx.AsyncClient, ins: str) -> httpx.Response:
    search = await client.get("/pro/dossier")
    assert search.status_code == 200 and "INS du patient" in search.text
    return await client.post("/pro/dossier", data={"csrf": csrf_of(search), "ins": ins})


async def deposit(portal: Portal, standin: Any, title: str, **fields: str) -> int:
    token = await token_for(standin, DOCTOR)
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"Authorization": "Bearer " + token}, timeout=30) as api:
        answer = await api.post(
            f"/api/v1/dossier/patients/{CLAIRE}/documents",
            data={"title": title, "type_code": "11488-4", "care_date": "2026-11-20", **fields},
            files={"file": ("cr.pdf", PDF, "application/pdf")},
        )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def test_consent_then_the_list_and_a_document(portal: Portal, standin: Any) -> None:
    shown = await deposit(portal, standin, "Compte rendu de consultation du 20 novembre")
    hidden = await deposit(portal, standin, "Consultation d'addictologie", masked="true")
    nurse = await signed_in(portal, NURSE)
    async with aclosing(nurse):
        wrong = await find(nurse, "285037512345689")
        assert wrong.status_code == 400 and "clé" in html.unescape(wrong.text) and 'aria-invalid="true"' in wrong.text
        unknown = await find(nurse, "277017512345660")
        assert unknown.status_code == 404 and "Aucun patient" in unknown.text
        found = await find(nurse, "2 85 03 75 123 456 88")
        assert found.status_code == 303
        url = found.headers["location"]
        assert CLAIRE not in url and url.startswith("/pro/dossier/")
        page = await nurse.get(url)
        text = html.unescape(page.text)
        assert "Dossier médical de Claire Martin" in text and "Déclarer l'accord" in text and "Ouvrir un accès en urgence" in text
        assert "Compte rendu" not in text  # nothing read before consent
        csrf = csrf_of(page)
        unticked = await nurse.post(url + "/accord", data={"csrf": csrf})
        assert unticked.status_code == 400 and "Cochez la case" in html.unescape(unticked.text)
        assert (await nurse.post(url + "/accord", data={"csrf": "forged", "atteste": "oui"})).status_code == 403
        declared = await nurse.post(url + "/accord", data={"csrf": csrf, "atteste": "oui"})
        assert declared.status_code == 303
        listing = html.unescape((await nurse.get(declared.headers["location"])).text)
        assert "Compte rendu de consultation du 20 novembre" in listing and "addictologie" not in listing
        assert "avec l'accord du patient" in listing and BANNER not in listing
        document = await nurse.get(f"{url}/documents/{shown}")
        assert document.status_code == 200 and "Dr Sophie Bernard" in html.unescape(document.text)
        assert document.headers["cache-control"] == "no-store" and "script-src 'none'" in document.headers["content-security-policy"]
        body = await nurse.get(f"{url}/documents/{shown}/fichier")
        assert body.content == PDF and body.headers["content-disposition"].startswith("attachment")
        masked = await nurse.get(f"{url}/documents/{hidden}")
        nothing = await nurse.get(f"{url}/documents/99999999")
        assert masked.status_code == nothing.status_code == 404 and masked.text == nothing.text
        for hostile in ("99999999999999999999", str(2**63), "0", "-1"):
            assert (await nurse.get(f"{url}/documents/{hostile}")).status_code == 404, hostile
        for forged in ("1.AAAA", "abc", url.rsplit("/", 1)[1].split(".")[0] + ".x"):
            assert (await nurse.get(f"/pro/dossier/{forged}")).status_code == 404
    doctor = await signed_in(portal, DOCTOR)  # another session: the nurse's reference means nothing here
    async with aclosing(doctor):
        assert (await doctor.get(url)).status_code == 404
    anonymous = await httpx.AsyncClient(base_url=portal.base_url).get(url)
    assert anonymous.status_code == 401 and "Se connecter avec Pro Santé Connect" in anonymous.text


async def test_an_emergency_access_asks_a_reason_and_says_so_on_every_page(portal: Portal, standin: Any) -> None:
    shown = await deposit(portal, standin, "Bilan d'allergies")
    pharmacist = await signed_in(portal, PHARMACIST)
    async with aclosing(pharmacist):
        url = (await find(pharmacist, CLAIRE)).headers["location"]
        page = await pharmacist.get(url)
        short = await pharmacist.post(url + "/urgence", data={"csrf": csrf_of(page), "motif": "vite"})
        assert short.status_code == 400 and "10 caractères" in html.unescape(short.text) and "vite" in short.text
        opened = await pharmacist.post(url + "/urgence", data={"csrf": csrf_of(page), "motif": "Malaise à l'officine, allergies ?"})
        assert opened.status_code == 303
        for address in (opened.headers["location"], f"{url}/documents/{shown}"):
            text = html.unescape((await pharmacist.get(address)).text)
            assert BANNER in text and "enregistré comme accès en urgence" in text, address
        assert "Bilan d'allergies" in text
    entries = await portal.app.state.dossier.history.read((await portal.app.state.dossier.patient_by_ins(CLAIRE)).id)
    rights = {(e.action, e.right) for e in entries if e.actor == "Mme Nadia Lefèvre"}
    assert {("emergency-access", "emergency"), ("dossier-opened", "emergency"), ("document-read", "emergency")} <= rights


async def test_a_blocked_professional_is_told_plainly_and_the_attempt_recorded(portal: Portal, standin: Any) -> None:
    from caducee.annuaire import patients
    from caducee.dossier.service import PatientSide

    dossier = portal.app.state.dossier
    claire = await dossier.patient_by_ins(CLAIRE)
    async with portal.engine.connect() as conn:
        profile = next(p for p in await patients.profiles_for(conn, claire.id) if p.account.id == claire.id)
    await dossier.block(PatientSide(profile, claire), NURSE)
    nurse = await signed_in(portal, NURSE)
    async with aclosing(nurse):
        url = (await find(nurse, CLAIRE)).headers["location"]
        page = await nurse.get(url)
        assert page.status_code == 403 and "vous a bloqué" in html.unescape(page.text) and 'role="alert"' in page.text
        csrf = csrf_of(page)
        for step in ("/accord", "/urgence"):
            refused = await nurse.post(url + step, data={"csrf": csrf, "atteste": "oui", "motif": "Patiente inconsciente ce matin"})
            assert refused.status_code == 403 and "vous a bloqué" in html.unescape(refused.text)
    attempts = [e for e in await dossier.history.read(claire.id) if e.actor == "M. Karim Haddad"]
    assert len(attempts) == 3 and all(e.action == "access-refused" and e.right == "refused" for e in attempts)
