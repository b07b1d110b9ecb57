"""The dossier end to end: documents by mail (IHE_XDM.ZIP over SMTP), the patient's pages over
HTTP, professionals through the service (the identity of Pro Santé Connect passed in), the
access history, first-access emails, storage sealed at rest."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
from dossier_client import DOCTOR, EMERGENCY_DOCTOR, NURSE, World, running_world
from webmail_client import form_token
from xdm_builder import PDF, Doc, package, xdm_mail

from caducee.dossier.service import NewDocument, Refused

CDA = (
    '<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"><code code="11502-2"/>'
    '<title>Bilan sanguin</title><recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="285037512345688"/>'
    "</patientRole></recordTarget><component><structuredBody><component><section><title>Résultats</title>"
    "<text>Hémoglobine 13,5 g/dL, normale.</text></section></component></structuredBody></component></ClinicalDocument>"
).encode()


@pytest.fixture
async def world(engine, settings, tmp_path: Path) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(settings, webmail_cookie_secure=False, directory_cache_seconds=0.5)
    async with running_world(engine, settings, tmp_path) as world:
        yield world


def notices(raw_messages: list[bytes]) -> list[str]:
    out = []
    for raw in raw_messages:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        if str(message["Subject"]).startswith("Documents non versés"):
            out.append(message.get_content())
    return out


async def test_a_mail_with_ihe_xdm_files_its_documents_and_is_delivered(world: World) -> None:
    claire = world.patient("adult_1")
    archive = package(
        [Doc(), Doc(name="DOC0002.XML", data=CDA, mime="text/xml", type_code="11502-2", title="Bilan sanguin")], claire["ins"]
    )
    await world.send(xdm_mail(world.gateway.account("doctor")[0], claire["address"], archive, codes="11502-2"))
    assert any(b"IHE_XDM.ZIP" in raw for raw in await world.gateway.inbox(claire["address"]))  # the message itself, as ever
    client, _ = await world.logged_in()
    async with aclosing(client):
        listing = await client.get("/dossier")
        assert listing.status_code == 200
        assert "Compte rendu de consultation du 20 novembre" in listing.text and "Bilan sanguin" in listing.text
        assert "Dr Sophie Bernard" in listing.text and "Compte rendu d&#39;examen biologique" in listing.text
        ids = [int(part.split('"')[0]) for part in listing.text.split('href="/dossier/documents/')[1:]]
        pages = {i: await client.get(f"/dossier/documents/{i}") for i in ids}
        cda_id = next(i for i, p in pages.items() if "Bilan sanguin" in p.text)
        assert "Hémoglobine 13,5 g/dL, normale." in pages[cda_id].text  # the CDA's words, as text
        pdf_id = next(i for i in ids if i != cda_id)
        download = await client.get(f"/dossier/documents/{pdf_id}/fichier")
        assert download.content == PDF and download.headers["content-type"] == "application/pdf"
        assert (
            download.headers["content-disposition"].startswith("attachment;") and "sandbox" in download.headers["content-security-policy"]
        )
        cda = await client.get(f"/dossier/documents/{cda_id}/fichier?voir=1")
        assert cda.headers["content-type"] == "application/octet-stream" and cda.headers["content-disposition"].startswith("attachment;")
        history = await client.get("/historique")
        assert (
            "Ajout d&#39;un document" in history.text
            and "Cabinet médical des Lilas" in history.text
            and "Auteur du document" in history.text
        )


async def test_a_pdf_attached_as_such_is_not_filed(world: World) -> None:
    from mail import message

    claire = world.patient("adult_1")
    msg = message(
        world.gateway.account("doctor")[0], claire["address"], "Ordonnance", attachment=("ordonnance.pdf", PDF, "application/pdf")
    )
    await world.send(msg)
    client, _ = await world.logged_in()
    async with aclosing(client):
        assert "aucun document" in (await client.get("/dossier")).text


async def test_the_first_access_of_each_professional_is_told_once(world: World) -> None:
    claire = world.patient("adult_1")
    for n in range(2):
        archive = package([Doc(title=f"Compte rendu {n}", unique_id=f"1.2.3.{n}")], claire["ins"])
        await world.send(xdm_mail(world.gateway.account("doctor")[0], claire["address"], archive))
    patient = await world.account("adult_1")
    await world.dossier.declare_consent(NURSE, patient)
    await world.dossier.professional_documents(NURSE, patient)
    await world.settle()
    sent = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in sorted(world.outbox.glob("*.eml"))]
    first = [m for m in sent if "pour la première fois" in str(m["Subject"])]
    assert [m["To"] for m in first] == [claire["email"], claire["email"]]  # the doctor once, the nurse once
    assert "Bernard" not in first[0].get_content() and "Haddad" not in first[1].get_content()  # email says neither who nor what


async def test_a_refused_package_tells_the_sender_why_and_files_nothing(world: World) -> None:
    claire, paul = world.patient("adult_1"), world.patient("adult_2")
    doctor = world.gateway.account("doctor")[0]
    archive = package([Doc()], paul["ins"])  # documents about Paul, mailed to Claire
    await world.send(xdm_mail(doctor, claire["address"], archive, subject="Compte rendu de M. Rossi"))
    told = notices(await world.gateway.inbox(doctor))
    assert len(told) == 1 and "n'est pas l'INS du patient destinataire" in told[0] and "a bien été remis" in told[0]
    assert any(b"IHE_XDM.ZIP" in raw for raw in await world.gateway.inbox(claire["address"]))  # delivered all the same
    for key in ("adult_1", "adult_2"):
        listing = await world.dossier.documents(await side_of(world, key))
        assert listing.total == 0
    history = await world.dossier.history.read((await world.account("adult_1")).id)
    refused = next(entry for entry in history if entry.action == "intake-refused")
    assert refused.right == "refused" and refused.actor == "Dr Sophie Bernard"


async def side_of(world: World, key: str, relation: str = "self", of: str | None = None):  # type: ignore[no-untyped-def]
    """The patient side as the webmail builds it: `key` acting on `of`'s dossier."""
    from caducee.annuaire import patients

    async with world.gateway.engine.connect() as conn:
        actor = await patients.get_account(conn, (await world.account(key)).id)
        profiles = await patients.profiles_for(conn, actor.id)
    from caducee.dossier.service import PatientSide

    wanted = (await world.account(of or key)).id
    profile = next(p for p in profiles if p.account.id == wanted)
    return PatientSide(profile, actor)


async def deposit(world: World, key: str = "adult_1", pro=DOCTOR, **flags) -> int:  # type: ignore[no-untyped-def]
    title = flags.pop("title", "Compte rendu")
    return await world.dossier.deposit(
        pro, await world.account(key), NewDocument(PDF, title, "11488-4", "application/pdf", "cr.pdf", **flags)
    )


async def test_masking_hides_a_document_from_other_professionals_even_in_an_emergency(world: World) -> None:
    patient = await world.account("adult_1")
    plain, secret = await deposit(world, title="Radio du genou"), await deposit(world, title="Consultation d'addictologie")
    claire = await side_of(world, "adult_1")
    await world.dossier.set_masked(claire, secret, True)
    await world.dossier.declare_consent(NURSE, patient)
    listing, _ = await world.dossier.professional_documents(NURSE, patient)
    assert [line.title for line in listing.lines] == ["Radio du genou"]
    with pytest.raises(Refused) as refused:
        await world.dossier.professional_document(NURSE, patient, secret)
    assert refused.value.conceal  # as if it did not exist
    await world.dossier.open_emergency(EMERGENCY_DOCTOR, patient, "Patiente inconsciente aux urgences")
    listing, decision = await world.dossier.professional_documents(EMERGENCY_DOCTOR, patient)
    assert [line.title for line in listing.lines] == ["Radio du genou"] and decision.right == "emergency"
    line, data, _ = await world.dossier.professional_document(DOCTOR, patient, secret)  # its author still reads it
    assert data == PDF and line.masked
    assert await world.dossier.set_all_masked(claire, True) == 1  # the other one; the masked one already was
    assert (await world.dossier.professional_documents(NURSE, patient))[0].total == 0
    assert await world.dossier.set_all_masked(claire, False) == 2
    assert (await world.dossier.professional_documents(NURSE, patient))[0].total == 2
    del plain


async def test_emergency_access_asks_a_reason_and_the_patient_may_refuse_it(world: World) -> None:
    patient = await world.account("adult_1")
    await deposit(world)
    with pytest.raises(Refused, match="motif"):
        await world.dossier.open_emergency(EMERGENCY_DOCTOR, patient, "urgence")
    with pytest.raises(Refused, match="déclarez l'accord du patient"):
        await world.dossier.professional_documents(EMERGENCY_DOCTOR, patient)
    await world.dossier.set_emergency_refused(await side_of(world, "adult_1"), True)
    with pytest.raises(Refused, match="refusé l'accès en urgence"):
        await world.dossier.open_emergency(EMERGENCY_DOCTOR, patient, "Patiente inconsciente, recherche d'allergies")
    await world.dossier.set_emergency_refused(await side_of(world, "adult_1"), False)
    until = await world.dossier.open_emergency(EMERGENCY_DOCTOR, patient, "Patiente inconsciente, recherche d'allergies")
    assert await world.dossier.emergency_until(EMERGENCY_DOCTOR, patient) == until
    listing, decision = await world.dossier.professional_documents(EMERGENCY_DOCTOR, patient)
    assert listing.total == 1 and decision.right == "emergency"
    entries = await world.dossier.history.read(patient.id)
    rights = [(entry.action, entry.right) for entry in entries if entry.actor == "Dr Urgentiste"]
    assert ("emergency-access", "emergency") in rights and ("dossier-opened", "emergency") in rights
    assert ("access-refused", "refused") in rights
    reason = next(entry for entry in entries if entry.action == "emergency-access")
    assert "recherche d'allergies" in reason.detail and reason.structure == "SAMU 75"


async def test_a_blocked_professional_can_neither_read_nor_add_and_the_attempt_is_recorded(world: World) -> None:
    claire = world.patient("adult_1")
    patient = await world.account("adult_1")
    client, csrf = await world.logged_in()
    async with aclosing(client):
        found = await client.get("/dossier/acces", params={"nom": "bernard"})
        assert "Bloquer Dr Sophie Bernard" in found.text
        blocked = await client.post("/dossier/acces/bloquer", data={"csrf": csrf, "professionnel": DOCTOR.national_id})
        assert blocked.status_code == 303
        assert "Dr Sophie Bernard" in (await client.get("/dossier/acces")).text
    with pytest.raises(Refused, match="vous a bloqué"):
        await world.dossier.professional_documents(DOCTOR, patient)
    with pytest.raises(Refused, match="vous a bloqué"):
        await deposit(world)
    await world.send(xdm_mail(world.gateway.account("doctor")[0], claire["address"], package([Doc()], claire["ins"])))
    told = notices(await world.gateway.inbox(world.gateway.account("doctor")[0]))
    assert len(told) == 1 and "vous a bloqué" in told[0]
    entries = await world.dossier.history.read(patient.id)
    assert [e.action for e in entries if e.actor == "Dr Sophie Bernard"][:3] == ["intake-refused", "access-refused", "access-refused"]
    async with aclosing(world.client()) as client:
        client, csrf = await world.logged_in()
        await client.post("/dossier/acces/debloquer", data={"csrf": csrf, "professionnel": DOCTOR.national_id})
    await deposit(world)  # unblocked: feeding works again


async def test_a_guardian_sees_a_minors_dossier_but_not_their_secret_documents(world: World) -> None:
    lea = await world.account("minor")
    await world.dossier.declare_consent(DOCTOR, lea)
    await deposit(world, "minor", title="Vaccin DTP")
    secret = await deposit(world, "minor", title="Consultation confidentielle", invisible_guardians=True)
    client, _ = await world.logged_in()
    async with aclosing(client):
        page = await client.get("/profils")
        csrf = form_token(page.text)
        await client.post("/profils", data={"csrf": csrf, "profil": str(lea.id)})
        listing = await client.get("/dossier")
        assert "Vaccin DTP" in listing.text and "Consultation confidentielle" not in listing.text
        assert "Vous consultez le dossier médical de" in listing.text
        assert (await client.get(f"/dossier/documents/{secret}")).status_code == 404
        history = await client.get("/historique")
        assert history.text.count("Ajout d&#39;un document") == 1  # the secret one's trace is hidden too
    listing, _ = await world.dossier.professional_documents(DOCTOR, lea)
    assert listing.total == 2  # professionals see both


async def test_a_carer_sees_what_was_granted_and_changes_nothing(world: World) -> None:
    await deposit(world, title="Bilan cardiologique")
    paul_side = await side_of(world, "adult_2", of="adult_1")  # Paul is Claire's carer: messages and dossier, read only
    assert (await world.dossier.documents(paul_side)).lines[0].title == "Bilan cardiologique"
    with pytest.raises(Refused, match="aidant"):
        await world.dossier.upload(paul_side, NewDocument(PDF, "Scan", "DOCPAT", "application/pdf", "scan.pdf"))
    with pytest.raises(Refused, match="aidant"):
        await world.dossier.set_all_masked(paul_side, True)
    async with world.gateway.engine.begin() as conn:  # without the dossier scope: nothing
        from sqlalchemy import text

        await conn.execute(text("UPDATE delegations SET scope = 'messages'"))
    await world.dossier.close()
    paul_side = await side_of(world, "adult_2", of="adult_1")
    with pytest.raises(Refused):
        await world.dossier.documents(paul_side)


async def test_an_ase_minor_has_a_dossier_no_adult_account_reaches(world: World) -> None:
    from caducee.annuaire import patients

    noah = await world.account("ase_minor")
    await world.dossier.declare_consent(DOCTOR, noah)
    await deposit(world, "ase_minor", title="Bilan de santé de l'enfant")
    listing, _ = await world.dossier.professional_documents(DOCTOR, noah)
    assert [line.title for line in listing.lines] == ["Bilan de santé de l'enfant"]
    async with world.gateway.engine.connect() as conn:
        for key in ("adult_1", "adult_2"):
            profiles = await patients.profiles_for(conn, (await world.account(key)).id)
            assert noah.id not in {p.account.id for p in profiles}
        assert await patients.guardians_of(conn, noah.id) == []


async def test_another_patients_document_is_not_found_like_one_that_does_not_exist(world: World) -> None:
    claires = await deposit(world, "adult_1", title="Compte rendu de Claire")
    paul, _ = await world.logged_in("adult_2")
    async with aclosing(paul):
        await paul.post(
            "/profils", data={"csrf": form_token((await paul.get("/profils")).text), "profil": str((await world.account("adult_2")).id)}
        )
        theirs = await paul.get(f"/dossier/documents/{claires}")
        nothing = await paul.get("/dossier/documents/99999999")
        assert theirs.status_code == nothing.status_code == 404 and theirs.text == nothing.text
        assert (await paul.get(f"/dossier/documents/{claires}/fichier")).text == nothing.text


async def test_the_patient_uploads_documents_checked_by_content(world: World) -> None:
    client, csrf = await world.logged_in()
    async with aclosing(client):
        html = b"<!doctype html><html><script>alert(1)</script></html>"
        refused = await client.post(
            "/dossier/ajouter", data={"csrf": csrf, "type": "DOCPAT"}, files={"fichier": ("resultat.pdf", html, "application/pdf")}
        )
        assert refused.status_code == 400 and "en réalité du HTML" in refused.text
        too_big = await client.post(
            "/dossier/ajouter",
            data={"csrf": csrf, "type": "DOCPAT"},
            files={"fichier": ("scan.pdf", PDF + b"0" * (10 * 1024 * 1024), "application/pdf")},
        )
        assert too_big.status_code in (400, 413) and "lourd" in too_big.text
        added = await client.post(
            "/dossier/ajouter",
            data={"csrf": csrf, "type": "11502-2", "titre": "Prise de sang de mars", "date": "2026-03-02"},
            files={"fichier": ("../../prise-de-sang.pdf", PDF, "application/octet-stream")},
        )
        assert added.status_code == 303, added.text[:2000]
        listing = await client.get("/dossier")
        assert "Prise de sang de mars" in listing.text and "02/03/2026" in listing.text
        document = int(listing.text.split('href="/dossier/documents/')[1].split('"')[0])
        page = await client.get(f"/dossier/documents/{document}")
        assert "Supprimer ce document" in page.text  # hers: she may delete it
        forged = await client.post(f"/dossier/documents/{document}/supprimer", data={"csrf": "forged"})
        assert forged.status_code == 403
        assert (await client.post(f"/dossier/documents/{document}/supprimer", data={"csrf": csrf})).status_code == 303
        assert "Prise de sang de mars" not in (await client.get("/dossier")).text


async def test_only_the_author_replaces_or_deletes_and_versions_are_kept(world: World) -> None:
    patient = await world.account("adult_1")
    first = await deposit(world, title="Compte rendu v1")
    newer = await world.dossier.replace(DOCTOR, patient, first, NewDocument(PDF + b"%v2", "Compte rendu v2", "11488-4", "application/pdf"))
    with pytest.raises(Refused, match="Seul l'auteur"):
        await world.dossier.replace(NURSE, patient, newer, NewDocument(PDF, "Par un autre", "11488-4"))
    with pytest.raises(Refused, match="Seul l'auteur"):
        await world.dossier.delete(await side_of(world, "adult_1"), newer)
    claire = await side_of(world, "adult_1")
    assert [line.title for line in (await world.dossier.documents(claire)).lines] == ["Compte rendu v2"]
    versions = await world.dossier.versions(claire, newer)
    assert [(line.title, line.status) for line in versions] == [("Compte rendu v2", "current"), ("Compte rendu v1", "replaced")]
    await world.dossier.professional_delete(DOCTOR, patient, newer)
    assert (await world.dossier.documents(claire)).total == 0


async def test_a_document_invisible_to_the_patient_appears_when_its_author_lifts_the_flag(world: World) -> None:
    patient = await world.account("adult_1")
    hidden = await deposit(world, title="Résultat d'anatomopathologie", invisible_patient=True)
    claire = await side_of(world, "adult_1")
    assert (await world.dossier.documents(claire)).total == 0
    with pytest.raises(Refused):
        await world.dossier.open_document(claire, hidden)
    with pytest.raises(Refused, match="à la fois invisible au patient et masqué"):
        await deposit(world, title="Impossible", invisible_patient=True, masked=True)
    await world.dossier.reveal(DOCTOR, patient, hidden)
    assert [line.title for line in (await world.dossier.documents(claire)).lines] == ["Résultat d'anatomopathologie"]


async def test_a_professional_finds_a_patient_by_ins_with_its_key_checked(world: World) -> None:
    assert (await world.dossier.patient_by_ins("2 85 03 75 123 456 88")).last_name == "Martin"
    with pytest.raises(Refused, match="clé"):
        await world.dossier.patient_by_ins("285037512345689")
    with pytest.raises(Refused, match="Aucun patient"):
        await world.dossier.patient_by_ins("277017512345660")


async def test_the_medical_profile_is_kept_sealed_and_edited_by_the_patient(world: World) -> None:
    client, csrf = await world.logged_in()
    async with aclosing(client):
        added = await client.post(
            "/dossier/profil/ajouter", data={"csrf": csrf, "rubrique": "allergy", "texte": "Pénicilline", "precision": "Urticaire"}
        )
        assert added.status_code == 303
        await client.post(
            "/dossier/profil/ajouter",
            data={"csrf": csrf, "rubrique": "measure", "mesure": "weight", "valeur": "62,5", "date": "2026-11-30"},
        )
        page = await client.get("/dossier/profil")
        assert "Pénicilline" in page.text and "Urticaire" in page.text and "Poids : 62.5 kg" in page.text
        entry = re.search(r'action="/dossier/profil/(\d+)/supprimer"', page.text).group(1)  # type: ignore[union-attr]
        await client.post(f"/dossier/profil/{entry}/supprimer", data={"csrf": csrf})
        assert "Pénicilline" not in (await client.get("/dossier/profil")).text
    patient = await world.account("adult_1")
    await world.dossier.declare_consent(NURSE, patient)
    profile = await world.dossier.professional_medical_profile(NURSE, patient)
    assert [entry.text for entry in profile["measure"]] == ["Poids : 62.5 kg"]


async def test_bodies_and_titles_are_sealed_at_rest_and_never_logged(world: World, caplog: pytest.LogCaptureFixture, backend: str) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    marker = b"CONFIDENTIEL-7f3a9c"
    claire = world.patient("adult_1")
    body = PDF[:-6] + b"(" + marker + b")\n%%EOF\n"
    archive = package([Doc(data=body, title="Titre CONFIDENTIEL-7f3a9c")], claire["ins"])
    await world.send(xdm_mail(world.gateway.account("doctor")[0], claire["address"], archive))
    archive2 = package([Doc(data=body, title="Même contenu", unique_id="9.9.9")], claire["ins"])
    await world.send(xdm_mail(world.gateway.account("doctor")[0], claire["address"], archive2))
    from sqlalchemy import text

    async with world.gateway.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM dossier_documents"))).scalar_one() == 2
        assert (await conn.execute(text("SELECT count(*) FROM dossier_blobs"))).scalar_one() == 1  # one content, stored once
        for table in ("dossier_blobs", "dossier_documents", "access_history"):
            for row in (await conn.execute(text(f"SELECT * FROM {table}"))).all():
                assert all(marker not in (value if isinstance(value, bytes) else str(value).encode()) for value in row), table
    assert marker.decode() not in caplog.text
    claire_side = await side_of(world, "adult_1")
    opened = await world.dossier.open_document(claire_side, (await world.dossier.documents(claire_side)).lines[0].id)
    assert marker in opened[1]
