"""A CDA R2 document as text for the patient's page: its title and each section's title and
words, never its markup (the document was checked when filed; this reads it again with
defusedxml and keeps only text, which the template escapes)."""

from __future__ import annotations

from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeTree
from defusedxml import DefusedXmlException

from caducee.dossier.formats import HL7


def narrative(data: bytes) -> list[tuple[str, str]]:
    """[(heading, text)] of a CDA document: its title, then each section; [] if unreadable.
    A non-XML body (a PDF inside the CDA, "N1") is said to be attached, not decoded here."""
    try:
        root = SafeTree.fromstring(data, forbid_dtd=True)
    except (DefusedXmlException, ParseError):
        return []
    out: list[tuple[str, str]] = []
    title = root.find(f"{{{HL7}}}title")
    if title is not None:
        out.append(("", " ".join("".join(title.itertext()).split())))
    for section in root.iter(f"{{{HL7}}}section"):
        heading = section.find(f"{{{HL7}}}title")
        text = section.find(f"{{{HL7}}}text")
        words = (
            "\n".join(" ".join(line.split()) for line in "".join(text.itertext()).splitlines() if line.strip()) if text is not None else ""
        )
        out.append((" ".join("".join(heading.itertext()).split()) if heading is not None else "", words[:20_000]))
    if root.find(f".//{{{HL7}}}nonXMLBody") is not None:
        out.append(("", "Ce document contient un fichier joint (PDF) : téléchargez le document pour le lire."))
    return out
