"""What a document is, from its bytes: the formats the dossier keeps, and the CDA R2 check.

The type a depositor declares (an XDM `mimeType`, a browser's, a file name) is a claim; the
content decides. PDF, JPEG and PNG are recognised by their first bytes; a CDA R2 document
is XML we did not write, parsed with defusedxml (no DTD, no entity, no external reference)
and refused if it carries anything a viewer could run: HTML or script elements, event
attributes, `javascript:` links, an XSL stylesheet. A "PDF" that is HTML is not a PDF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeTree
from defusedxml import DefusedXmlException

HL7 = "urn:hl7-org:v3"
INS_OID = "1.2.250.1.213.1.4.10"
MAGIC = (  # (first bytes, type, extension)
    (b"%PDF-", "application/pdf", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
)
CDA_TYPES = {"text/xml", "application/xml", "application/hl7-cda+xml"}
EXTENSIONS = {"application/pdf": "pdf", "image/png": "png", "image/jpeg": "jpg", "text/xml": "xml"}
LABELS = {"application/pdf": "PDF", "image/png": "Image PNG", "image/jpeg": "Image JPEG", "text/xml": "CDA R2 (XML)"}
_ACTIVE_TAGS = {"script", "iframe", "object", "embed", "applet", "form", "meta", "link", "style", "svg", "base"}
_ACTIVE_VALUE = re.compile(r"^\s*(?:javascript|vbscript|data|file)\s*:", re.I)
_STYLESHEET = re.compile(rb"<\?xml-stylesheet", re.I)


class NotAccepted(ValueError):
    """The content is not a document the dossier keeps; the message says why, in French."""


@dataclass(frozen=True)
class CdaFacts:
    code: str  # the document's LOINC code (ClinicalDocument/code/@code)
    title: str
    patient_ins: str | None  # recordTarget/patientRole/id with the INS root, when present


def sniff(data: bytes) -> str | None:
    """The type by content of a binary document, or None."""
    for magic, content_type, _ in MAGIC:
        if data.startswith(magic):
            return content_type
    return None


def check_content(data: bytes, declared: str, *, expected_ins: str | None = None) -> tuple[str, CdaFacts | None]:
    """The format to keep `data` under, checked against what was `declared` (raises NotAccepted)."""
    declared = (declared or "").split(";")[0].strip().lower()
    if declared in CDA_TYPES or (not declared and data.lstrip()[:5] in (b"<?xml", b"<Clin")):
        return "text/xml", check_cda(data, expected_ins=expected_ins)
    found = sniff(data)
    if found is None:
        looks = "du HTML" if re.search(rb"<\s*(?:!doctype|html|script|body)", data[:2048], re.I) else "un format non accepté"
        raise NotAccepted(f"le document annoncé comme {declared or 'document'} est en réalité {looks}")
    if declared and declared not in {found, "application/octet-stream"}:
        raise NotAccepted(f"le document annoncé comme {declared} est en réalité {LABELS[found]}")
    return found, None


def check_cda(data: bytes, *, expected_ins: str | None = None) -> CdaFacts:
    """A CDA R2 document we may keep and show, or NotAccepted."""
    if _STYLESHEET.search(data[:4096]):
        raise NotAccepted("le document CDA demande une feuille de style XSL : refusé (elle pourrait exécuter du code)")
    try:
        root = SafeTree.fromstring(data, forbid_dtd=True)
    except DefusedXmlException:
        raise NotAccepted("le document CDA déclare une DTD ou des entités : refusé") from None
    except ParseError:
        raise NotAccepted("le document CDA n'est pas du XML bien formé") from None
    if root.tag != f"{{{HL7}}}ClinicalDocument":
        raise NotAccepted("le document XML n'est pas un document CDA R2 (ClinicalDocument)")
    for element in root.iter():
        namespace, _, name = element.tag.rpartition("}") if element.tag.startswith("{") else ("", "", element.tag)
        if namespace.lstrip("{") not in {HL7, ""} or name.lower() in _ACTIVE_TAGS:
            raise NotAccepted(f"le document CDA contient un élément actif ({name[:30]}) : refusé")
        for attribute, value in element.attrib.items():
            local = attribute.rpartition("}")[2].lower()
            if local.startswith("on") or _ACTIVE_VALUE.match(value):
                raise NotAccepted("le document CDA contient du script (attribut ou lien actif) : refusé")
    code = root.find(f"{{{HL7}}}code")
    title = root.find(f"{{{HL7}}}title")
    ins = None
    for identifier in root.iterfind(f"{{{HL7}}}recordTarget/{{{HL7}}}patientRole/{{{HL7}}}id"):
        if identifier.get("root") == INS_OID:
            ins = (identifier.get("extension") or "").strip().upper()
    if expected_ins is not None and ins is not None and ins != expected_ins:
        raise NotAccepted("le document CDA concerne un autre patient (son INS n'est pas celui du destinataire)")
    return CdaFacts((code.get("code") or "") if code is not None else "", _text(title), ins)


def _text(element: Element | None) -> str:
    return " ".join("".join(element.itertext()).split())[:200] if element is not None else ""
