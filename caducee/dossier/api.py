"""The dossier's JSON API for professionals and their practice software, under /api/v1/dossier.

Every route takes a Pro Santé Connect access token (`Authorization: Bearer`, checked by the
identity component: `caducee.identity.api.professional`). A professional finds a patient by
INS (its key checked), declares the patient's consent or opens an emergency access (a reason
required), lists and reads what the chain of rules lets them, and deposits, replaces (a new
version) or deletes their own documents. Every act is the service's (`Dossier`), which asks the
chain and records it in the patient's access history, refusals included.

Errors are `{"detail": "<French sentence>", "rule": "<the rule or check that refused>"}`:
400 an INS that is not one, 403 what the rules refuse (blocked, no consent, not the author...),
404 an unknown patient or a document that does not exist or may not be seen (the same answer),
409 a uniqueId already in the dossier, 413 too large, 422 a content or a field refused.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from caducee.annuaire.patients import PatientAccount
from caducee.dossier import kinds
from caducee.dossier.service import PAGE_SIZE, DocumentLine, Dossier, NewDocument, Professional, Refused
from caducee.identity.api import Professional as Bearer

router = APIRouter(prefix="/api/v1/dossier", tags=["dossier"])

STATUS_OF_RULE = {
    "bad-ins": 400,
    "unknown-patient": 404,
    "not-found": 404,
    "duplicate": 409,
    "too-large": 413,
    "empty": 422,
    "content": 422,
    "reason-required": 422,
    "bad-field": 422,
}
FORM_FIELDS = 16
LOINC = re.compile(r"[0-9]{1,7}-[0-9]")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "model": None}
    for code, text in {
        400: "Not an INS (its key is checked)",
        401: "No valid Pro Santé Connect token",
        403: "Refused by the dossier's rules (the reason in `detail`); recorded in the patient's history",
        404: "No such patient, or no such document for you",
        422: "A field or a document's content refused",
    }.items()
}


class ErrorOut(BaseModel):
    detail: str
    rule: str


for _answer in ERRORS.values():
    _answer["model"] = ErrorOut


class AccessOut(BaseModel):
    blocked: bool = Field(description="The patient blocked you: you can neither read nor add")
    consent_declared: bool = Field(description="You declared the patient's consent: you read what is not masked")
    emergency_until: datetime | None = Field(description="Your emergency access (bris de glace) ends then; null: none open")


class PatientOut(BaseModel):
    ins: str
    first_names: str
    last_name: str
    birth_date: date
    access: AccessOut


class EmergencyIn(BaseModel):
    reason: str = Field(min_length=1, max_length=300, description="Why the emergency (10 characters at least), shown to the patient")


class DocumentOut(BaseModel):
    id: int
    title: str
    type_code: str
    type_label: str
    format: str
    filename: str
    care_date: date | None
    deposited_at: datetime
    author: str = Field(description='"ps:<national id>" of who deposited it')
    author_name: str
    author_structure: str
    status: str = Field(description="current or replaced")
    size: int
    masked: bool
    invisible_patient: bool
    invisible_guardians: bool
    source: str = Field(description="api, mail (IHE_XDM.ZIP) or webmail (the patient)")
    lineage: int = Field(description="The first version's id: every version of a document shares it")


class DocumentsOut(BaseModel):
    documents: list[DocumentOut]
    total: int
    page: int
    pages: int
    page_size: int
    right: str = Field(description="The right your reading is recorded under: authorised or emergency")


class FiledOut(BaseModel):
    id: int


def _dossier(request: Request) -> Dossier:
    dossier: Dossier = request.app.state.dossier
    return dossier


def _error(refused: Refused) -> JSONResponse:
    if refused.conceal:  # the same answer as a document that does not exist: the rule would tell
        return JSONResponse({"detail": refused.text, "rule": "not-found"}, status_code=404)
    return JSONResponse({"detail": refused.text, "rule": refused.rule or "refused"}, status_code=STATUS_OF_RULE.get(refused.rule, 403))


NOT_FOUND = Refused("Ce document n'existe pas ou ne vous est pas accessible.", rule="not-found", conceal=True)


async def _parties(
    request: Request, principal: Any, ins: str, document_id: int | None = None
) -> tuple[Dossier, Professional, PatientAccount]:
    """The dossier, the professional with their structure, the patient of `ins`; a document
    id no 64-bit key can be is "not found" here, before any query."""
    if document_id is not None and not 0 < document_id < 2**63:
        raise NOT_FOUND
    dossier = _dossier(request)
    pro = await dossier.professional_of(principal.national_id, principal.name)
    return dossier, pro, await dossier.patient_by_ins(ins)


def _document(line: DocumentLine) -> DocumentOut:
    return DocumentOut(
        id=line.id,
        title=line.title,
        type_code=line.type_code,
        type_label=line.type_label,
        format=line.format,
        filename=line.filename,
        care_date=line.care_date,
        deposited_at=line.deposited_at,
        author=line.author,
        author_name=line.author_name,
        author_structure=line.author_structure,
        status=line.status,
        size=line.size,
        masked=line.masked,
        invisible_patient=line.invisible_patient,
        invisible_guardians=line.invisible_guardians,
        source=line.source,
        lineage=line.lineage,
    )


@router.get("/patients/{ins}", summary="A patient by INS (key checked), and what you may do with their dossier", response_model=PatientOut)
async def patient(request: Request, ins: str, principal: Bearer) -> Any:
    try:
        dossier, pro, account = await _parties(request, principal, ins)
        requester = await dossier.access(pro, account)
        until = await dossier.emergency_until(pro, account) if requester.emergency else None
    except Refused as refused:
        return _error(refused)
    return PatientOut(
        ins=account.ins,
        first_names=account.first_names,
        last_name=account.last_name,
        birth_date=account.birth_date,
        access=AccessOut(blocked=requester.blocked, consent_declared=requester.authorised, emergency_until=until),
    )


@router.post(
    "/patients/{ins}/consent",
    summary="Declare that the patient agreed to your reading their dossier (recorded, shown to the patient)",
    status_code=204,
    response_class=Response,
    responses=ERRORS,
)
async def consent(request: Request, ins: str, principal: Bearer) -> Response:
    try:
        dossier, pro, account = await _parties(request, principal, ins)
        await dossier.declare_consent(pro, account)
    except Refused as refused:
        return _error(refused)
    return Response(status_code=204)


@router.post(
    "/patients/{ins}/emergency",
    summary="Open an emergency access (bris de glace): a reason is required; recorded as such",
    response_model=AccessOut,
    responses=ERRORS,
)
async def emergency(request: Request, ins: str, body: EmergencyIn, principal: Bearer) -> Any:
    try:
        dossier, pro, account = await _parties(request, principal, ins)
        until = await dossier.open_emergency(pro, account, body.reason)
        requester = await dossier.access(pro, account)
    except Refused as refused:
        return _error(refused)
    return AccessOut(blocked=requester.blocked, consent_declared=requester.authorised, emergency_until=until)


@router.get(
    "/patients/{ins}/documents",
    summary="The documents the rules let you see, newest care first (recorded as an access)",
    response_model=DocumentsOut,
    responses=ERRORS,
)
async def documents(request: Request, ins: str, principal: Bearer, type: str = "", page: int = 1) -> Any:  # noqa: A002 (the query's name)
    try:
        dossier, pro, account = await _parties(request, principal, ins)
        listing, decision = await dossier.professional_documents(pro, account, type_code=type[:16], page=max(1, min(page, 100_000)))
    except Refused as refused:
        return _error(refused)
    return DocumentsOut(
        documents=[_document(line) for line in listing.lines],
        total=listing.total,
        page=listing.page,
        pages=listing.pages,
        page_size=PAGE_SIZE,
        right=decision.right,
    )


@router.get(
    "/patients/{ins}/documents/{document_id}", summary="One document's metadata (recorded as a reading)", response_model=DocumentOut
)
async def document(request: Request, ins: str, document_id: int, principal: Bearer) -> Any:
    try:
        dossier, pro, account = await _parties(request, principal, ins, document_id)
        line, _, _ = await dossier.professional_document(pro, account, document_id)
    except Refused as refused:
        return _error(refused)
    return _document(line)


@router.get(
    "/patients/{ins}/documents/{document_id}/content",
    summary="The document itself, as deposited (its SHA-256 checked); recorded as a reading",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}, "description": "The document's bytes"}},
)
async def content(request: Request, ins: str, document_id: int, principal: Bearer) -> Response:
    try:
        dossier, pro, account = await _parties(request, principal, ins, document_id)
        line, data, _ = await dossier.professional_document(pro, account, document_id)
    except Refused as refused:
        return _error(refused)
    return Response(
        data,
        media_type=line.format,
        headers={
            "Content-Disposition": f"attachment; filename=\"{line.filename}\"; filename*=UTF-8''{quote(line.filename)}",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


async def _new_document(request: Request) -> NewDocument:
    """A document posted as multipart/form-data: `file`, and its metadata as fields."""
    limit = _dossier(request).settings.dossier_max_document
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + 64 * 1024:
        raise Refused(f"Le document dépasse {limit // 1_048_576} Mo.", rule="too-large")
    try:
        form = await request.form(max_files=1, max_fields=FORM_FIELDS, max_part_size=64 * 1024)
    except Exception:  # starlette's MultiPartException, or a body that is not a form
        raise Refused(
            "Envoyez le document en multipart/form-data : le champ « file » et ses métadonnées (1 fichier, 16 champs au plus).",
            rule="bad-field",
        ) from None
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise Refused("Le champ « file » (le document) manque.", rule="bad-field")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"Le document dépasse {limit // 1_048_576} Mo.", rule="too-large")
    fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    type_code = fields.get("type_code", "").strip()
    if type_code and type_code not in kinds.TYPES and not LOINC.fullmatch(type_code):
        raise Refused(f"Le type de document « {type_code[:16]} » n'est pas un code LOINC (par exemple 11488-4).", rule="bad-field")
    care = None
    if fields.get("care_date"):
        try:
            care = date.fromisoformat(fields["care_date"].strip())
        except ValueError:
            raise Refused("La date des soins (care_date) s'écrit AAAA-MM-JJ.", rule="bad-field") from None
    flags = {}
    for name in ("masked", "invisible_patient", "invisible_guardians"):
        value = fields.get(name, "false").strip().lower()
        if value not in {"true", "false", "1", "0", ""}:
            raise Refused(f"Le champ « {name} » vaut true ou false.", rule="bad-field")
        flags[name] = value in {"true", "1"}
    return NewDocument(
        data=data,
        title=fields.get("title", "")[:200],
        type_code=type_code,
        declared_format=file.content_type or "",
        filename=file.filename or "",
        care_date=care,
        unique_id=fields.get("unique_id", "").strip()[:128],
        class_code=fields.get("class_code", "").strip()[:16],
        masked=flags["masked"],
        invisible_patient=flags["invisible_patient"],
        invisible_guardians=flags["invisible_guardians"],
    )


@router.post(
    "/patients/{ins}/documents",
    summary="Deposit a document (multipart: `file`, title, type_code, care_date, unique_id, masked, invisible_patient, invisible_guardians)",
    status_code=201,
    response_model=FiledOut,
    responses=ERRORS,
)
async def deposit(request: Request, ins: str, principal: Bearer) -> Any:
    try:
        dossier, pro, account = await _parties(request, principal, ins)
        new = await _new_document(request)
        document_id = await dossier.deposit(pro, account, new)
    except Refused as refused:
        return _error(refused)
    return JSONResponse({"id": document_id}, status_code=201, headers={"Location": f"{request.url.path}/{document_id}"})


@router.put(
    "/patients/{ins}/documents/{document_id}",
    summary="A new version of your document (multipart, as a deposit); the old one is kept as replaced",
    status_code=201,
    response_model=FiledOut,
    responses=ERRORS,
)
async def new_version(request: Request, ins: str, document_id: int, principal: Bearer) -> Any:
    try:
        dossier, pro, account = await _parties(request, principal, ins, document_id)
        new = await _new_document(request)
        newer = await dossier.replace(pro, account, document_id, new)
    except Refused as refused:
        return _error(refused)
    location = request.url.path.rsplit("/", 1)[0] + f"/{newer}"
    return JSONResponse({"id": newer}, status_code=201, headers={"Location": location})


@router.delete(
    "/patients/{ins}/documents/{document_id}",
    summary="Delete your document (only its author may)",
    status_code=204,
    response_class=Response,
    responses=ERRORS,
)
async def delete(request: Request, ins: str, document_id: int, principal: Bearer) -> Response:
    try:
        dossier, pro, account = await _parties(request, principal, ins, document_id)
        await dossier.professional_delete(pro, account, document_id)
    except Refused as refused:
        return _error(refused)
    return Response(status_code=204)


@router.post(
    "/patients/{ins}/documents/{document_id}/reveal",
    summary="Lift 'invisible to the patient' on your document (you told the patient in person)",
    status_code=204,
    response_class=Response,
    responses=ERRORS,
)
async def reveal(request: Request, ins: str, document_id: int, principal: Bearer) -> Response:
    try:
        dossier, pro, account = await _parties(request, principal, ins, document_id)
        await dossier.reveal(pro, account, document_id)
    except Refused as refused:
        return _error(refused)
    return Response(status_code=204)
