"""The dossier end to end: documents by mail (IHE_XDM.ZIP over SMTP), the patient's pages over
HTTP, professionals through the service (the identity of Pro Santé Connect passed in), the
access history, first-access emails, storage sealed at rest."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
from conftest import RunningGateway, RunningHTTP
from dossier_client import DOCTOR, EMERGENCY_DOCTOR, NURSE, World
from webmail_client import form_token
from xdm_builder import PDF, Doc, package, xdm_mail

from caducee.dossier.service import NewDocument, Refused

CDA = (
    '<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"><code code="11502-2"/>'
    "<title>Bilan sanguin</title><recordTarget><patientRole><id root=\"1.2.250.1.213.1.4.10\" extension=\"285037512345688\"/>"
    "</patientRole></recordTarget><component><structuredBody><component><section><title>Résultats</title>"
    "<text>Hémoglobine 13,5 g/dL, normale.</text></section></component></structuredBody></component></ClinicalDocument>"
).encode()


@pytest.fixture
async def world(engine, settings, tmp_path: Path) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    from caducee.server import build_app

    settings = dataclasses.replace(settings, webmail_cookie_secure=False, directory_cache_seconds=0.5)
    gateway = await RunningGateway(engine, settings, tmp_path).start()
    http = RunningHTTP(build_app(engine, settings, gateway.pipeline))
    await http.start()
    try:
        yield World(gateway, http, settings.data_dir / "outbox")
    finally:
        await http.stop()
        await gateway.stop()


def notices(raw_messages: list[bytes]) -> list[str]:
    out = []
    for raw in raw_messages:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        if str(message["Subject"]).startswith("Documents non versés"):
            out.append(message.get_content())
    return out


async def test_a_mail_with_ihe_xdm_files_its_documents_and_is_delivered(world: World) -> None:
    claire = world.patient("adult_1")
    archive = package([Doc(), Doc(name="DOC0002.XML", data=CDA, mime="text/xml", type_code="11502-2", title="Bilan sanguin")], claire["ins"])
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
        assert download.headers["content-disposition"].startswith("attachment;") and "sandbox" in download.headers["content-security-policy"]
        cda = await client.get(f"/dossier/documents/{cda_id}/fichier?voir=1")
        assert cda.headers["content-type"] == "application/octet-stream" and cda.headers["content-disposition"].startswith("attachment;")
        history = await client.get("/historique")
        assert "Ajout d&#39;un document" in history.text and "Cabinet médical des Lilas" in history.text and "Auteur du document" in history.text


async def test_a_pdf_attached_as_such_is_not_filed(world: World) -> None:
    from mail import message

    claire = world.patient("adult_1")
    msg = message(world.gateway.account("doctor")[0], claire["address"], "Ordonnance", attachment=("ordonnance.pdf", PDF, "application/pdf"))
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
