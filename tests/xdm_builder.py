"""Building IHE_XDM.ZIP packages for tests, the way practice software does (ebRIM
SubmitObjectsRequest in IHE_XDM/<subset>/METADATA.XML beside the documents), and the mails
that carry them."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from xml.sax.saxutils import quoteattr

PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
DOCTOR_NATIONAL_ID = "810000000009"  # the demo doctor, Sophie Bernard
INS_OID = "1.2.250.1.213.1.4.10"


@dataclass
class Doc:
    name: str = "DOC0001.PDF"
    data: bytes = PDF
    mime: str = "application/pdf"
    type_code: str = "11488-4"
    type_label: str = "CR de consultation"
    title: str = "Compte rendu de consultation du 20 novembre"
    confidentiality: list[str] = field(default_factory=list)
    care: str = "20261120"
    unique_id: str = ""
    hash: str | None = None  # default: the SHA-1 of data, as XDS has it
    size: str | None = None
    patient_ins: str | None = None  # default: the package's


def metadata(docs: list[Doc], ins: str, author: str = DOCTOR_NATIONAL_ID) -> bytes:
    entries = []
    for number, doc in enumerate(docs, 1):
        patient = f"{doc.patient_ins or ins}^^^&amp;{INS_OID}&amp;ISO^NH"
        unique = doc.unique_id or f"1.2.250.1.999.1.{abs(hash((doc.name, doc.title))) % 10**9}.{number}"
        confidentiality = "".join(
            f'<rim:Classification classificationScheme="urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f" classifiedObject="Doc{number}" '
            f'nodeRepresentation="{code}" id="c{number}{code}"><rim:Name><rim:LocalizedString value="{code}"/></rim:Name></rim:Classification>'
            for code in (doc.confidentiality or ["N"])
        )
        entries.append(
            f"""<rim:ExtrinsicObject id="Doc{number}" mimeType={quoteattr(doc.mime)} objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">
  <rim:Slot name="creationTime"><rim:ValueList><rim:Value>{doc.care}101500</rim:Value></rim:ValueList></rim:Slot>
  <rim:Slot name="serviceStartTime"><rim:ValueList><rim:Value>{doc.care}</rim:Value></rim:ValueList></rim:Slot>
  <rim:Slot name="hash"><rim:ValueList><rim:Value>{doc.hash if doc.hash is not None else hashlib.sha1(doc.data).hexdigest()}</rim:Value></rim:ValueList></rim:Slot>
  <rim:Slot name="size"><rim:ValueList><rim:Value>{doc.size if doc.size is not None else len(doc.data)}</rim:Value></rim:ValueList></rim:Slot>
  <rim:Slot name="URI"><rim:ValueList><rim:Value>{doc.name}</rim:Value></rim:ValueList></rim:Slot>
  <rim:Name><rim:LocalizedString value={quoteattr(doc.title)}/></rim:Name>
  <rim:Classification classificationScheme="urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a2d2f" classifiedObject="Doc{number}" nodeRepresentation="" id="a{number}">
    <rim:Slot name="authorPerson"><rim:ValueList><rim:Value>{author}^BERNARD^Sophie^^^Dr^^^&amp;1.2.250.1.71.4.2.1&amp;ISO^D^^^IDNPS</rim:Value></rim:ValueList></rim:Slot>
    <rim:Slot name="authorInstitution"><rim:ValueList><rim:Value>Cabinet médical des Lilas^^^^^&amp;1.2.250.1.71.4.2.2&amp;ISO^IDNST^^^373282932000074</rim:Value></rim:ValueList></rim:Slot>
  </rim:Classification>
  <rim:Classification classificationScheme="urn:uuid:f0306f51-975f-434e-a61c-c59651d33983" classifiedObject="Doc{number}" nodeRepresentation="{doc.type_code}" id="t{number}">
    <rim:Slot name="codingScheme"><rim:ValueList><rim:Value>2.16.840.1.113883.6.1</rim:Value></rim:ValueList></rim:Slot>
    <rim:Name><rim:LocalizedString value={quoteattr(doc.type_label)}/></rim:Name>
  </rim:Classification>
  {confidentiality}
  <rim:ExternalIdentifier identificationScheme="urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427" value="{patient}" id="p{number}" registryObject="Doc{number}"/>
  <rim:ExternalIdentifier identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab" value="{unique}" id="u{number}" registryObject="Doc{number}"/>
</rim:ExtrinsicObject>"""
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0" xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">'
        f"<rim:RegistryObjectList>{''.join(entries)}</rim:RegistryObjectList></lcm:SubmitObjectsRequest>"
    ).encode()


def package(
    docs: list[Doc],
    ins: str,
    *,
    subset: str = "SUBSET01",
    author: str = DOCTOR_NATIONAL_ID,
    metadata_xml: bytes | None = None,
    extra: dict[str, bytes] | None = None,
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("INDEX.HTM", "<html><body>Documents</body></html>")
        archive.writestr(f"IHE_XDM/{subset}/METADATA.XML", metadata_xml if metadata_xml is not None else metadata(docs, ins, author))
        for doc in docs:
            archive.writestr(f"IHE_XDM/{subset}/{doc.name}", doc.data)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def xdm_mail(sender: str, to: str, archive: bytes, subject: str = "Compte rendu de consultation", codes: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    if codes:
        msg["X-MSS-CODECDA"] = codes
    msg.set_content("Bonjour,\nvous trouverez ci-joint le compte rendu de votre consultation.\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="compte-rendu.pdf")
    msg.add_attachment(archive, maintype="application", subtype="zip", filename="IHE_XDM.ZIP")
    return msg
