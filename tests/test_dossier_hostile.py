"""Hostile IHE_XDM.ZIP packages, each sent by a doctor's mail client over SMTP to a patient:
the message is delivered as any other, nothing is filed, and the sender is told why in a
notice. Each case of the issue's list is one test."""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import RunningGateway, RunningHTTP
from dossier_client import World
from test_dossier import notices, side_of
from xdm_builder import PDF, Doc, metadata, package, xdm_mail

from caducee.dossier.xdm import Limits

CLAIRE = "285037512345688"
PAUL = "178112A12345684"


@pytest.fixture
async def world(engine, settings, tmp_path: Path) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    from caducee.server import build_app

    settings = dataclasses.replace(settings, webmail_cookie_secure=False)
    gateway = await RunningGateway(engine, settings, tmp_path).start()
    http = RunningHTTP(build_app(engine, settings, gateway.pipeline))
    await http.start()
    http.server.config.app.state.dossier_intake.limits = Limits(archive=2_000_000, entry=300_000, total=500_000, entries=20, ratio=50)
    try:
        yield World(gateway, http, settings.data_dir / "outbox")
    finally:
        await http.stop()
        await gateway.stop()


def zipped(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


def with_metadata(xml: bytes, docs: dict[str, bytes] | None = None) -> bytes:
    return zipped({"IHE_XDM/SUBSET01/METADATA.XML": xml, **{f"IHE_XDM/SUBSET01/{k}": v for k, v in (docs or {}).items()}})


def lying_sizes() -> bytes:
    """An archive whose directory says a document inflates to 100 bytes; it inflates to 200,000."""
    doc = Doc(data=PDF + b"0" * 200_000, size="100")
    data = bytearray(package([doc], CLAIRE))
    position = 0
    while (position := data.find(b"PK\x01\x02", position)) >= 0:  # every central directory entry
        name_length = struct.unpack_from("<H", data, position + 28)[0]
        name = bytes(data[position + 46 : position + 46 + name_length])
        if name.endswith(b"DOC0001.PDF"):
            struct.pack_into("<I", data, position + 24, 100)
        position += 46
    return bytes(data)


XXE = (
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b'<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">&xxe;</lcm:SubmitObjectsRequest>'
)
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;"><!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">'
    b'<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">]><r>&lol5;</r>'
)
SCRIPTED_CDA = (
    b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"><code code="11488-4"/><title>CR</title>'
    b'<component><structuredBody><component><section><text><linkHtml href="javascript:alert(document.cookie)">voir</linkHtml>'
    b"</text></section></component></structuredBody></component></ClinicalDocument>"
)
SCRIPT_ELEMENT_CDA = (
    b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:h="http://www.w3.org/1999/xhtml"><code code="11488-4"/>'
    b"<title>CR</title><h:script>alert(1)</h:script></ClinicalDocument>"
)
HTML = b"<!DOCTYPE html><html><body><script>fetch('/api/v1/me')</script></body></html>"

CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "zip-bomb": (
        lambda: zipped({"IHE_XDM/SUBSET01/METADATA.XML": metadata([Doc()], CLAIRE), "IHE_XDM/SUBSET01/DOC0001.PDF": b"\0" * 250_000}),
        "bombe de décompression",
    ),
    "oversized-entry": (lambda: package([Doc(data=PDF + os.urandom(330_000))], CLAIRE), "une fois décompressé"),
    "oversized-total": (
        lambda: package([Doc(name=f"DOC{n}.PDF", data=PDF + os.urandom(200_000)) for n in range(3)], CLAIRE),
        "une fois décompressée",
    ),
    "oversized-archive": (lambda: package([Doc()], CLAIRE, extra={f"junk{n}.bin": os.urandom(280_000) for n in range(9)}), "dépasse"),
    "lying-sizes": (lying_sizes, "corrompu"),
    "path-traversal": (
        lambda: package([Doc()], CLAIRE, extra={"IHE_XDM/SUBSET01/../../../etc/cron.d/evil": b"* * * * * root sh"}),
        "chemin dangereux",
    ),
    "absolute-path": (lambda: package([Doc()], CLAIRE, extra={"/etc/passwd": b"root:x:0:0"}), "chemin dangereux"),
    "xxe": (lambda: with_metadata(XXE), "DTD"),
    "billion-laughs": (lambda: with_metadata(LAUGHS), "DTD"),
    "patient-not-recipient": (lambda: package([Doc()], PAUL), "n'est pas l'INS du patient destinataire"),
    "ins-wrong-key": (lambda: package([Doc(patient_ins=CLAIRE[:13] + "89")], CLAIRE), "wrong key"),
    "hash-mismatch": (lambda: package([Doc(hash="0" * 40)], CLAIRE), "ne correspond pas à son contenu"),
    "size-mismatch": (lambda: package([Doc(size="12")], CLAIRE), "taille du document"),
    "pdf-that-is-html": (lambda: package([Doc(data=HTML)], CLAIRE), "en réalité du HTML"),
    "cda-with-javascript-link": (lambda: package([Doc(name="DOC0001.XML", data=SCRIPTED_CDA, mime="text/xml")], CLAIRE), "script"),
    "cda-with-script-element": (
        lambda: package([Doc(name="DOC0001.XML", data=SCRIPT_ELEMENT_CDA, mime="text/xml")], CLAIRE),
        "élément actif",
    ),
    "missing-document": (lambda: with_metadata(metadata([Doc()], CLAIRE)), "absent de l'archive"),
    "not-a-zip": (lambda: b"PK\x03\x04 this is not really a zip file", "pas une archive ZIP"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_hostile_package_is_refused_and_the_sender_told(case: str, world: World) -> None:
    build, expected = CASES[case]
    doctor = world.gateway.account("doctor")[0]
    patient = world.patient("adult_1")["address"]
    await world.send(xdm_mail(doctor, patient, build(), subject=f"Cas {case}"))
    told = notices(await world.gateway.inbox(doctor))
    assert len(told) == 1 and expected in told[0], told
    assert any(f"Cas {case}".encode() in raw for raw in await world.gateway.inbox(patient))  # the message was delivered
    assert (await world.dossier.documents(await side_of(world, "adult_1"))).total == 0
