"""The dossier's JSON API for professionals, over real HTTP with real Pro Santé Connect tokens
(the stand-in's authorization code flow, as practice software does): find a patient by INS,
declare consent or open an emergency access, list and read what the rules allow, deposit,
replace and delete one's own documents; refusals are precise and recorded in the patient's
history."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from psc import Portal, token_for
from xdm_builder import PDF

from caducee import demo
from caducee.history.service import AccessHistory

DOCTOR, NURSE, PHARMACIST = "8" + demo.DOCTOR_RPPS, "8" + demo.NURSE_RPPS, "8" + demo.PHARMACIST_RPPS
CLAIRE = demo.ADULT_1_INS
HTML_AS_PDF = b"<!doctype html><html><body><script>alert(1)</script></body></html>"


class Software:
    """A practice software signed in as one professional."""

    def __init__(self, portal: Portal, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=portal.base_url + "/api/v1/dossier", headers={"Authorization": "Bearer " + token}, timeout=30
        )

    async def deposit(self, ins: str = CLAIRE, data: bytes = PDF, **fields: Any) -> httpx.Response:
        values = {"title": "Compte rendu de consultation", "type_code": "11488-4", "care_date": "2026-11-20", **fields}
        return await self.client.post(
            f"/patients/{ins}/documents", data={k: str(v) for k, v in values.items()}, files={"file": ("cr.pdf", data, "application/pdf")}
        )


@pytest.fixture
async def software(portal: Portal, standin) -> Any:  # type: ignore[no-untyped-def]
    made: list[Software] = []

    async def make(national_id: str) -> Software:
        made.append(Software(portal, await token_for(standin, national_id)))
        return made[-1]

    yield make
    for one in made:
        await one.client.aclose()


async def history(portal: Portal) -> list[Any]:
    from caducee.annuaire import patients

    async with portal.engine.connect() as conn:
        claire = await patients.find_by_ins(conn, CLAIRE)
    assert claire is not None
    app_history: AccessHistory = portal.app.state.dossier.history
    return await app_history.read(claire.id)


async def test_a_professional_finds_a_patient_by_ins_with_its_key_checked(portal: Portal, software) -> None:  # type: ignore[no-untyped-def]
    doctor = await software(DOCTOR)
    found = await doctor.client.get("/patients/2 85 03 75 123 456 88")
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["last_name"] == "Martin" and body["ins"] == CLAIRE and body["birth_date"].startswith("1985-03")
    assert body["access"] == {"blocked": False, "consent_declared": False, "emergency_until": None}
    wrong_key = await doctor.client.get("/patients/285037512345689")
    assert wrong_key.status_code == 400 and "clé" in wrong_key.json()["detail"] and wrong_key.json()["rule"] == "bad-ins"
    unknown = await doctor.client.get("/patients/277017512345660")
    assert unknown.status_code == 404 and unknown.json()["rule"] == "unknown-patient"
    assert (await doctor.client.get("/patients/not-an-ins")).status_code == 400
    anonymous = await httpx.AsyncClient(base_url=portal.base_url).get(f"/api/v1/dossier/patients/{CLAIRE}")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")


async def test_deposit_new_version_delete_by_the_author_only(portal: Portal, software) -> None:  # type: ignore[no-untyped-def]
    doctor, nurse = await software(DOCTOR), await software(NURSE)
    filed = await doctor.deposit(unique_id="1.2.250.1.999.42.1")
    assert filed.status_code == 201, filed.text
    first = filed.json()["id"]
    assert filed.headers["location"].endswith(f"/documents/{first}")
    again = await doctor.deposit(unique_id="1.2.250.1.999.42.1")
    assert again.status_code == 409 and again.json()["rule"] == "duplicate"
    newer = await doctor.client.put(
        f"/patients/{CLAIRE}/documents/{first}",
        data={"title": "Compte rendu corrigé", "type_code": "11488-4"},
        files={"file": ("cr2.pdf", PDF + b"%v2\n", "application/pdf")},
    )
    assert newer.status_code == 201, newer.text
    second = newer.json()["id"]
    # another professional: neither a new version nor a deletion, and the attempt is recorded
    foreign = await nurse.client.put(f"/patients/{CLAIRE}/documents/{second}", files={"file": ("x.pdf", PDF, "application/pdf")})
    assert foreign.status_code == 403 and foreign.json()["rule"] == "only-the-author"
    assert (await nurse.client.delete(f"/patients/{CLAIRE}/documents/{second}")).status_code == 403
    # the replaced version cannot be replaced again
    stale = await doctor.client.put(f"/patients/{CLAIRE}/documents/{first}", files={"file": ("x.pdf", PDF, "application/pdf")})
    assert stale.status_code == 404
    # the author reads their own document without declaring consent
    mine = await doctor.client.get(f"/patients/{CLAIRE}/documents/{second}")
    assert mine.status_code == 200 and mine.json()["title"] == "Compte rendu corrigé" and mine.json()["lineage"] == first
    body = await doctor.client.get(f"/patients/{CLAIRE}/documents/{second}/content")
    assert body.content == PDF + b"%v2\n" and body.headers["content-type"] == "application/pdf"
    # but not the list, which needs consent or an emergency
    listing = await doctor.client.get(f"/patients/{CLAIRE}/documents")
    assert listing.status_code == 403 and listing.json()["rule"] == "consent-or-emergency"
    assert (await doctor.client.delete(f"/patients/{CLAIRE}/documents/{second}")).status_code == 204
    assert (await doctor.client.get(f"/patients/{CLAIRE}/documents/{second}")).status_code == 404
    entries = await history(portal)
    actions = [(entry.action, entry.actor, entry.right) for entry in entries]
    assert ("document-added", "Dr Sophie Bernard", "author") in actions
    assert ("document-replaced", "Dr Sophie Bernard", "author") in actions
    assert ("document-deleted", "Dr Sophie Bernard", "author") in actions
    assert sum(1 for action in actions if action == ("access-refused", "M. Karim Haddad", "refused")) == 2
    structure = next(entry.structure for entry in entries if entry.action == "document-added")
    assert structure == "Cabinet médical des Lilas"


async def test_hostile_or_wrong_deposits_are_refused_precisely(portal: Portal, software) -> None:  # type: ignore[no-untyped-def]
    doctor = await software(DOCTOR)
    html = await doctor.deposit(data=HTML_AS_PDF)
    assert html.status_code == 422 and "HTML" in html.json()["detail"]
    assert (await doctor.deposit(data=b"")).status_code == 422
    assert (await doctor.deposit(type_code="<script>")).json()["rule"] == "bad-field"
    assert (await doctor.deposit(care_date="20/11/2026")).json()["rule"] == "bad-field"
    assert (await doctor.deposit(masked="peut-être")).json()["rule"] == "bad-field"
    both = await doctor.deposit(masked="true", invisible_patient="true")
    assert both.status_code == 403 and both.json()["rule"] == "consistent-flags"
    not_a_form = await doctor.client.post(f"/patients/{CLAIRE}/documents", content=b"{}", headers={"content-type": "application/json"})
    assert not_a_form.status_code == 422 and not_a_form.json()["rule"] == "bad-field"
    missing = await doctor.client.post(f"/patients/{CLAIRE}/documents", data={"title": "sans fichier"})
    assert missing.status_code == 422 and "file" in missing.json()["detail"]
    too_big = await doctor.deposit(data=PDF + b"0" * (portal.settings.dossier_max_document + 1))
    assert too_big.status_code == 413
    assert (await doctor.client.get(f"/patients/{CLAIRE}/documents/99999999")).status_code == 404
    for hostile in ("99999999999999999999", str(2**63), "0", "-1"):
        for answer in (
            await doctor.client.get(f"/patients/{CLAIRE}/documents/{hostile}"),
            await doctor.client.get(f"/patients/{CLAIRE}/documents/{hostile}/content"),
            await doctor.client.delete(f"/patients/{CLAIRE}/documents/{hostile}"),
            await doctor.client.post(f"/patients/{CLAIRE}/documents/{hostile}/reveal"),
        ):
            assert answer.status_code == 404 and answer.json()["rule"] == "not-found", (hostile, answer.text)


async def test_consent_emergency_masking_and_blocking(portal: Portal, software) -> None:  # type: ignore[no-untyped-def]
    doctor, nurse, pharmacist = await software(DOCTOR), await software(NURSE), await software(PHARMACIST)
    plain = (await doctor.deposit(title="Radio du genou")).json()["id"]
    secret = (await doctor.deposit(title="Consultation d'addictologie", masked="true")).json()["id"]
    # the nurse declares the patient's consent: reads what is not masked, the masked one is "not found"
    assert (await nurse.client.post(f"/patients/{CLAIRE}/consent")).status_code == 204
    listing = (await nurse.client.get(f"/patients/{CLAIRE}/documents")).json()
    assert [d["title"] for d in listing["documents"]] == ["Radio du genou"] and listing["right"] == "authorised"
    hidden = await nurse.client.get(f"/patients/{CLAIRE}/documents/{secret}")
    nothing = await nurse.client.get(f"/patients/{CLAIRE}/documents/99999999")
    assert hidden.status_code == nothing.status_code == 404 and hidden.json() == nothing.json()
    # the pharmacist in an emergency: a reason is required, then the emergency right, masked still hidden
    short = await pharmacist.client.post(f"/patients/{CLAIRE}/emergency", json={"reason": "urgence"})
    assert short.status_code == 422 and short.json()["rule"] == "reason-required"
    opened = await pharmacist.client.post(f"/patients/{CLAIRE}/emergency", json={"reason": "Patiente inconsciente à l'officine"})
    assert opened.status_code == 200 and opened.json()["emergency_until"]
    listing = (await pharmacist.client.get(f"/patients/{CLAIRE}/documents")).json()
    assert [d["title"] for d in listing["documents"]] == ["Radio du genou"] and listing["right"] == "emergency"
    read = await pharmacist.client.get(f"/patients/{CLAIRE}/documents/{plain}/content")
    assert read.status_code == 200 and read.content == PDF
    assert (await pharmacist.client.get(f"/patients/{CLAIRE}")).json()["access"]["emergency_until"]
    entries = await history(portal)
    emergency = [(e.action, e.right) for e in entries if e.actor == "Mme Nadia Lefèvre"]
    assert ("emergency-access", "emergency") in emergency and ("document-read", "emergency") in emergency
    assert ("dossier-opened", "emergency") in emergency
    assert "inconsciente" in next(e.detail for e in entries if e.action == "emergency-access")
    # the patient blocks the nurse: every act refused with a clear reason, each attempt recorded
    from caducee.annuaire import patients
    from caducee.dossier.service import PatientSide

    dossier = portal.app.state.dossier
    async with portal.engine.connect() as conn:
        claire = await patients.find_by_ins(conn, CLAIRE)
        assert claire is not None
        profile = next(p for p in await patients.profiles_for(conn, claire.id) if p.account.id == claire.id)
    await dossier.block(PatientSide(profile, claire), NURSE)
    state = (await nurse.client.get(f"/patients/{CLAIRE}")).json()["access"]
    assert state["blocked"] is True
    for answer in (
        await nurse.client.get(f"/patients/{CLAIRE}/documents"),
        await nurse.client.get(f"/patients/{CLAIRE}/documents/{plain}"),
        await nurse.deposit(title="Soins infirmiers"),
        await nurse.client.post(f"/patients/{CLAIRE}/emergency", json={"reason": "Je veux lire quand même"}),
    ):
        assert answer.status_code == 403 and answer.json()["rule"] == "blocked-professional", answer.text
        assert "vous a bloqué" in answer.json()["detail"]
    refused = [e for e in await history(portal) if e.actor == "M. Karim Haddad" and e.action == "access-refused"]
    assert len(refused) == 4
