"""Reading an IHE_XDM.ZIP (IHE ITI XDM, as MSSanté practice software sends it): pure, bounded.

The archive holds `IHE_XDM/<subset>/METADATA.XML`, an ebRIM SubmitObjectsRequest, beside
the documents it describes. Everything in it is hostile until checked:
- the zip: declared sizes (each entry, the total, the compression ratio, the number of
  entries) are checked before anything is inflated, and the actual sizes while inflating
  (a declared size can lie); names with an absolute path, a drive, `..`, a backslash or a
  control character, links and encrypted entries refuse the whole archive;
- METADATA.XML: parsed with defusedxml, no DTD (so no entity expansion, no external entity);
- each document: its `size` and `hash` (SHA-1, as XDS has it, or SHA-256) must match, its
  `patientId` must be the recipient's INS (key checked), its content must be what its
  `mimeType` says (`formats.check_content`).
One refusal refuses the package: a sender gets one answer saying why, not half a dossier.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeTree
from defusedxml import DefusedXmlException

from caducee.annuaire.identifiers import InvalidIdentifier, validate_ins, validate_rpps
from caducee.dossier.formats import INS_OID, NotAccepted, check_content

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SCHEME_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
SCHEME_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
SCHEME_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
SCHEME_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a2d2f"
ID_PATIENT = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
ID_UNIQUE = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
RPPS_OID = "1.2.250.1.71.4.2.1"
_SUBSET = re.compile(r"^IHE_XDM/([A-Za-z0-9_]{1,32})/METADATA\.XML$", re.I)
_URI = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class XdmRefused(ValueError):
    """The package is refused; `text` says why in French, for the sender."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Limits:
    archive: int = 30 * 1024 * 1024  # the attachment itself
    entry: int = 20 * 1024 * 1024  # one file, inflated
    total: int = 60 * 1024 * 1024  # every file, inflated
    entries: int = 200
    ratio: int = 100  # inflated / compressed, per entry
    metadata: int = 2 * 1024 * 1024


@dataclass(frozen=True)
class XdmDocument:
    entry_uuid: str
    unique_id: str
    title: str
    type_code: str
    type_label: str
    class_code: str
    format: str  # checked by content
    filename: str
    care_date: date | None
    created_at: datetime | None
    author_national_id: str | None
    author_name: str
    author_structure: str
    masked: bool
    invisible_patient: bool
    invisible_guardians: bool
    data: bytes = field(repr=False)
    sha256: str = ""


def read_package(archive: bytes, recipient_ins: str, limits: Limits = Limits()) -> list[XdmDocument]:
    """The documents of one IHE_XDM.ZIP for the patient whose INS is `recipient_ins`."""
    if len(archive) > limits.archive:
        raise XdmRefused(f"l'archive IHE_XDM.ZIP dépasse {limits.archive // 1_048_576} Mo")
    try:
        zipped = zipfile.ZipFile(io.BytesIO(archive))
        infos = zipped.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise XdmRefused("la pièce jointe IHE_XDM.ZIP n'est pas une archive ZIP lisible") from None
    _check_entries(infos, limits)
    by_name = {info.filename.upper(): info for info in infos}
    subsets = [(match.group(1), info) for info in infos if (match := _SUBSET.match(info.filename))]
    if not subsets:
        raise XdmRefused("l'archive ne contient pas de IHE_XDM/<sous-dossier>/METADATA.XML")
    budget = [limits.total]
    documents: list[XdmDocument] = []
    for subset, info in subsets:
        metadata = _read(zipped, info, min(limits.metadata, limits.entry), budget)
        for entry in _entries(metadata):
            documents.append(_document(zipped, by_name, subset, entry, recipient_ins, limits, budget))
    if not documents:
        raise XdmRefused("METADATA.XML ne décrit aucun document")
    return documents


def _check_entries(infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    """Every entry, from what the archive declares, before anything is inflated."""
    if len(infos) > limits.entries:
        raise XdmRefused(f"l'archive contient plus de {limits.entries} fichiers")
    declared = 0
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if (
            "\\" in name
            or name.startswith("/")
            or re.match(r"^[A-Za-z]:", name)
            or ".." in parts
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
        ):
            raise XdmRefused("l'archive contient un chemin dangereux (absolu ou avec « .. ») : refusée")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise XdmRefused("l'archive contient un lien symbolique : refusée")
        if info.flag_bits & 0x1:
            raise XdmRefused("l'archive contient un fichier chiffré : refusée")
        if info.file_size > limits.entry:
            raise XdmRefused(f"un fichier de l'archive dépasse {limits.entry // 1_048_576} Mo une fois décompressé")
        if info.compress_size and info.file_size / info.compress_size > limits.ratio:
            raise XdmRefused("l'archive est anormalement compressée (bombe de décompression) : refusée")
        declared += info.file_size
    if declared > limits.total:
        raise XdmRefused(f"l'archive dépasse {limits.total // 1_048_576} Mo une fois décompressée")


def _read(zipped: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, budget: list[int]) -> bytes:
    """One entry, inflated at most to `limit` and to what is left of the total: the actual
    size is what counts, whatever the archive declared."""
    allowed = min(limit, budget[0], info.file_size)
    try:
        with zipped.open(info) as stream:
            data = stream.read(allowed + 1)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError, NotImplementedError):
        raise XdmRefused(f"le fichier {info.filename[:80]} de l'archive est illisible ou corrompu") from None
    if len(data) > allowed:
        raise XdmRefused(f"le fichier {info.filename[:80]} est plus gros que ce que l'archive déclare : refusée")
    budget[0] -= len(data)
    return data


def _entries(metadata: bytes) -> list[Element]:
    try:
        root = SafeTree.fromstring(metadata, forbid_dtd=True)
    except DefusedXmlException:
        raise XdmRefused("METADATA.XML déclare une DTD ou des entités (XXE, « billion laughs ») : refusé") from None
    except ParseError:
        raise XdmRefused("METADATA.XML n'est pas du XML bien formé") from None
    return [element for element in root.iter(f"{{{RIM}}}ExtrinsicObject") if element.get("objectType", DOCUMENT_ENTRY) == DOCUMENT_ENTRY]


def _slot(element: Element, name: str) -> list[str]:
    for slot in element.iterfind(f"{{{RIM}}}Slot"):
        if slot.get("name") == name:
            return [(value.text or "").strip() for value in slot.iterfind(f"{{{RIM}}}ValueList/{{{RIM}}}Value")]
    return []


def _name(element: Element) -> str:
    found = element.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString")
    return (found.get("value") or "").strip() if found is not None else ""


def _classifications(entry: Element, scheme: str) -> list[Element]:
    return [c for c in entry.iterfind(f"{{{RIM}}}Classification") if c.get("classificationScheme") == scheme]


def _identifier(entry: Element, scheme: str) -> str:
    for identifier in entry.iterfind(f"{{{RIM}}}ExternalIdentifier"):
        if identifier.get("identificationScheme") == scheme:
            return (identifier.get("value") or "").strip()
    return ""


def _hl7_time(value: str) -> datetime | None:
    digits = re.sub(r"\D", "", value or "")[:14]
    if len(digits) < 8:
        return None
    try:
        return datetime.strptime(digits.ljust(14, "0"), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def patient_ins(cx: str) -> str:
    """The INS of an HL7 CX `<INS>^^^&1.2.250.1.213.1.4.10&ISO^NH` (key checked)."""
    parts = cx.split("^")
    authority = parts[3] if len(parts) > 3 else ""
    if INS_OID not in authority.split("&"):
        raise XdmRefused(f"le patientId {cx[:60]!r} n'est pas un INS (autorité {INS_OID} attendue)")
    try:
        return validate_ins(parts[0])
    except InvalidIdentifier as wrong:
        raise XdmRefused(f"le patientId n'est pas un INS valide ({wrong})") from None


def _author(entry: Element) -> tuple[str | None, str, str]:
    """(national id, name, structure) of the first author with an RPPS-based national id."""
    for classification in _classifications(entry, SCHEME_AUTHOR):
        person = next(iter(_slot(classification, "authorPerson")), "")
        institution = next(iter(_slot(classification, "authorInstitution")), "")
        fields = person.split("^")
        structure = institution.split("^")[0].strip()
        name = " ".join(
            part
            for part in (fields[5] if len(fields) > 5 else "", fields[2] if len(fields) > 2 else "", fields[1] if len(fields) > 1 else "")
            if part
        )
        if len(fields) > 8 and RPPS_OID in fields[8].split("&"):
            national = fields[0].strip()
            try:
                national = "8" + validate_rpps(national[1:] if len(national) == 12 and national.startswith("8") else national)
            except InvalidIdentifier as wrong:
                raise XdmRefused(f"l'identifiant de l'auteur n'est pas un RPPS valide ({wrong})") from None
            return national, name, structure
        if name or structure:
            return None, name, structure
    return None, "", ""


def _document(
    zipped: zipfile.ZipFile,
    by_name: dict[str, zipfile.ZipInfo],
    subset: str,
    entry: Element,
    recipient_ins: str,
    limits: Limits,
    budget: list[int],
) -> XdmDocument:
    entry_uuid = entry.get("id", "")[:64]
    cx = _identifier(entry, ID_PATIENT)
    if not cx:
        raise XdmRefused("un document n'a pas de patientId")
    if patient_ins(cx) != recipient_ins:
        raise XdmRefused("le patientId des documents n'est pas l'INS du patient destinataire : documents refusés")
    uri = next(iter(_slot(entry, "URI")), "")
    if not _URI.match(uri):
        raise XdmRefused(f"le document {entry_uuid} n'a pas de nom de fichier (URI) acceptable")
    info = by_name.get(f"IHE_XDM/{subset}/{uri}".upper())
    if info is None:
        raise XdmRefused(f"le fichier {uri} décrit dans METADATA.XML est absent de l'archive")
    data = _read(zipped, info, limits.entry, budget)
    declared_size = next(iter(_slot(entry, "size")), "")
    declared_hash = next(iter(_slot(entry, "hash")), "").lower()
    if not declared_size or not declared_hash:
        raise XdmRefused(f"le document {uri} n'a pas de taille (size) ou d'empreinte (hash) dans METADATA.XML")
    if not declared_size.isdigit() or int(declared_size) != len(data):
        raise XdmRefused(f"la taille du document {uri} ne correspond pas à celle de METADATA.XML")
    sha256 = hashlib.sha256(data).hexdigest()
    actual_hash = hashlib.sha1(data).hexdigest() if len(declared_hash) == 40 else sha256
    if declared_hash != actual_hash:
        raise XdmRefused(f"l'empreinte (hash) du document {uri} ne correspond pas à son contenu : document altéré")
    try:
        kept_as, cda = check_content(data, entry.get("mimeType", ""), expected_ins=recipient_ins)
    except NotAccepted as refused:
        raise XdmRefused(f"{uri} : {refused}") from None
    type_codes = _classifications(entry, SCHEME_TYPE)
    type_code = (type_codes[0].get("nodeRepresentation") or "") if type_codes else ""
    type_label = _name(type_codes[0]) if type_codes else ""
    if not type_code and cda is not None:
        type_code = cda.code
    class_codes = _classifications(entry, SCHEME_CLASS)
    confidentiality = {(c.get("nodeRepresentation") or "").upper() for c in _classifications(entry, SCHEME_CONFIDENTIALITY)}
    national_id, author_name, structure = _author(entry)
    created = _hl7_time(next(iter(_slot(entry, "creationTime")), ""))
    care = _hl7_time(next(iter(_slot(entry, "serviceStartTime")), ""))
    return XdmDocument(
        entry_uuid=entry_uuid,
        unique_id=_identifier(entry, ID_UNIQUE)[:128],
        title=(_name(entry) or (cda.title if cda else "") or type_label or uri)[:200],
        type_code=type_code[:16],
        type_label=type_label[:128],
        class_code=((class_codes[0].get("nodeRepresentation") or "") if class_codes else "")[:16],
        format=kept_as,
        filename=uri,
        care_date=care.date() if care else None,
        created_at=created,
        author_national_id=national_id,
        author_name=author_name[:256],
        author_structure=structure[:256],
        masked="MASQUE_PS" in confidentiality,
        invisible_patient="INVISIBLE_PATIENT" in confidentiality,
        invisible_guardians="INVISIBLE_REPRESENTANTS_LEGAUX" in confidentiality,
        data=data,
        sha256=sha256,
    )
