"""The dossier's pages in the patient webmail: "Mes documents", a document, adding one,
who may see the dossier (masking, blocking, emergency access), the medical profile.

Server-rendered in French, usable without JavaScript, on the webmail's session, CSRF token,
base template and styles (`caducee.webmail.web`). The person acts on the profile chosen in
the webmail (their own, a minor's as guardian, a patient's as carer); what they may do is
the chain's answer (`rules.py`), asked by the service. A document the person may not see is
"not found", exactly like one that does not exist.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import UploadFile

from caducee.annuaire.service import SearchError
from caducee.core.ids import RowId
from caducee.dossier import kinds
from caducee.dossier.cda import narrative
from caducee.dossier.service import Dossier, NewDocument, PatientSide, Refused
from caducee.webmail import web
from caducee.webmail.service import french_date, french_time
from caducee.webmail.web import Viewer, anonymous_csrf, csrf_ok, current_viewer, remember_anonymous_csrf

router = APIRouter(include_in_schema=False)
_ENVIRONMENT = Environment(
    loader=ChoiceLoader([FileSystemLoader(Path(__file__).parent / "templates"), FileSystemLoader(Path(web.__file__).parent / "templates")]),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)
TEMPLATES = Jinja2Templates(env=_ENVIRONMENT)
_ENVIRONMENT.filters["date_fr"] = french_date
_ENVIRONMENT.filters["time_fr"] = french_time
_ENVIRONMENT.filters["day_fr"] = lambda day: f"{day.day:02d}/{day.month:02d}/{day.year}" if day else ""  # strftime costs more

NOTICES = {
    "ajoute": "Votre document est ajouté à votre dossier.",
    "masque": "Le document est masqué aux professionnels (son auteur le voit toujours).",
    "visible": "Le document est de nouveau visible des professionnels que vous autorisez.",
    "tout-masque": "Tous vos documents sont masqués aux professionnels (leurs auteurs les voient toujours).",
    "tout-visible": "Vos documents sont de nouveau visibles des professionnels que vous autorisez.",
    "supprime": "Le document est supprimé.",
    "bloque": "Ce professionnel est bloqué : il ne peut plus ni consulter ni alimenter votre dossier.",
    "debloque": "Ce professionnel n'est plus bloqué.",
    "urgence-refusee": "L'accès en urgence à votre dossier est refusé.",
    "urgence-permise": "L'accès en urgence à votre dossier est de nouveau permis.",
    "profil": "Votre profil médical est enregistré.",
}


def dossier(request: Request) -> Dossier:
    return request.app.state.dossier


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def page(request: Request, viewer: Viewer, template: str, status_code: int = 200, **values: Any) -> Response:
    response = TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "viewer": viewer,
            "csrf": viewer.csrf,
            "notice": NOTICES.get(request.query_params.get("info", "")),
            "active": "dossier",
            "side": PatientSide(viewer.profile, viewer.actor),
            "max_upload": min(web.context(request).webmail.settings.webmail_max_upload, dossier(request).settings.dossier_max_document),
            **values,
        },
        status_code=status_code,
    )
    remember_anonymous_csrf(request, response)
    return response


def not_found(request: Request, viewer: Viewer) -> Response:
    return page(request, viewer, "not_found.html", 404)


async def signed_in(request: Request) -> Viewer | Response:
    viewer = await current_viewer(request)
    if viewer is None:
        response = redirect("/connexion?info=expire" if request.cookies.get(web.SESSION_COOKIE) else "/connexion")
        response.delete_cookie(web.SESSION_COOKIE, path="/")
        return response
    if not viewer.profile.dossier_access:  # a carer the patient did not grant the dossier
        return not_found(request, viewer)
    return viewer


async def posted(request: Request) -> tuple[Viewer, Any] | Response:
    checked = await signed_in(request)
    if isinstance(checked, Response):
        return checked
    form = await request.form(max_files=1, max_fields=20, max_part_size=web.context(request).webmail.settings.webmail_max_upload + 1024)
    token = form.get("csrf")
    if not csrf_ok(checked.csrf, token if isinstance(token, str) else None):
        return TEMPLATES.TemplateResponse(request, "expired.html", {"csrf": anonymous_csrf(request)}, status_code=403)
    return checked, form


def _number(value: str | None, default: int = 1) -> int:
    try:
        return max(1, min(int(value or default), 100_000))
    except ValueError:
        return default


# ---- Mes documents -------------------------------------------------------------------------------


@router.get("/dossier")
async def documents_page(request: Request) -> Response:
    viewer = await signed_in(request)
    if isinstance(viewer, Response):
        return viewer
    type_code = request.query_params.get("type", "")[:16]
    with_replaced = request.query_params.get("versions") == "toutes"
    side = PatientSide(viewer.profile, viewer.actor)
    listing = await dossier(request).documents(
        side, type_code=type_code, page=_number(request.query_params.get("page")), with_replaced=with_replaced
    )
    return page(request, viewer, "dossier_documents.html", listing=listing, type_code=type_code, with_replaced=with_replaced)


@router.get("/dossier/documents/{document_id}")
async def document_page(request: Request, document_id: RowId) -> Response:
    viewer = await signed_in(request)
    if isinstance(viewer, Response):
        return viewer
    side = PatientSide(viewer.profile, viewer.actor)
    try:
        line, data = await dossier(request).open_document(side, document_id)
    except Refused:
        return not_found(request, viewer)
    versions = await dossier(request).versions(side, document_id)
    text = narrative(data) if line.format == "text/xml" else None
    return page(
        request, viewer, "dossier_document.html", line=line, versions=versions, text=text, mine=line.author == side.requester.identity
    )


@router.get("/dossier/documents/{document_id}/fichier")
async def document_file(request: Request, document_id: RowId) -> Response:
    """The document itself: a download, or shown by the browser for PDF and images, never in
    our origin (sandboxed, no script), with the type found in its content."""
    viewer = await signed_in(request)
    if isinstance(viewer, Response):
        return viewer
    try:
        line, data = await dossier(request).open_document(PatientSide(viewer.profile, viewer.actor), document_id)
    except Refused:
        return not_found(request, viewer)
    inline = request.query_params.get("voir") == "1" and line.format in {"application/pdf", "image/png", "image/jpeg"}
    media_type = line.format if line.format != "text/xml" else "application/octet-stream"
    disposition = "inline" if inline else "attachment"
    return Response(
        data,
        media_type=media_type,
        headers={
            "Content-Disposition": f"{disposition}; filename=\"{line.filename}\"; filename*=UTF-8''{quote(line.filename)}",
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; object-src 'self'",
        },
    )


@router.post("/dossier/documents/{document_id}/masquer")
async def mask(request: Request, document_id: RowId) -> Response:
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    masked = form.get("masquer") == "oui"
    try:
        await dossier(request).set_masked(PatientSide(viewer.profile, viewer.actor), document_id, masked)
    except Refused as refused:
        if refused.conceal:
            return not_found(request, viewer)
        return await _document_error(request, viewer, document_id, refused.text)
    return redirect(f"/dossier/documents/{document_id}?info={'masque' if masked else 'visible'}")


@router.post("/dossier/documents/{document_id}/supprimer")
async def remove(request: Request, document_id: RowId) -> Response:
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    try:
        await dossier(request).delete(PatientSide(viewer.profile, viewer.actor), document_id)
    except Refused as refused:
        if refused.conceal:
            return not_found(request, viewer)
        return await _document_error(request, viewer, document_id, refused.text)
    return redirect("/dossier?info=supprime")


async def _document_error(request: Request, viewer: Viewer, document_id: int, error: str) -> Response:
    side = PatientSide(viewer.profile, viewer.actor)
    try:
        line, data = await dossier(request).open_document(side, document_id)
    except Refused:
        return not_found(request, viewer)
    text = narrative(data) if line.format == "text/xml" else None
    versions = await dossier(request).versions(side, document_id)
    return page(
        request,
        viewer,
        "dossier_document.html",
        400,
        line=line,
        versions=versions,
        text=text,
        error=error,
        mine=line.author == side.requester.identity,
    )


# ---- adding a document -------------------------------------------------------------------------------


@router.get("/dossier/ajouter")
async def upload_page(request: Request) -> Response:
    viewer = await signed_in(request)
    if isinstance(viewer, Response):
        return viewer
    return page(request, viewer, "dossier_upload.html", types=_patient_types(), values={})


def _patient_types() -> list[tuple[str, str]]:
    return [(code, kinds.type_label(code)) for code in kinds.PATIENT_TYPES]


@router.post("/dossier/ajouter")
async def upload(request: Request) -> Response:
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    values = {
        "titre": str(form.get("titre", ""))[:200],
        "type": str(form.get("type", "DOCPAT"))[:16],
        "date": str(form.get("date", ""))[:10],
        "masquer": form.get("masquer") == "oui",
    }
    file = form.get("fichier")
    try:
        if values["type"] not in kinds.PATIENT_TYPES:
            raise Refused("Choisissez le type du document dans la liste.")
        care = None
        if values["date"]:
            try:
                care = date.fromisoformat(values["date"])
            except ValueError:
                raise Refused("La date doit être de la forme JJ/MM/AAAA.") from None
        if not isinstance(file, UploadFile) or not file.filename:
            raise Refused("Choisissez le fichier à ajouter (un PDF ou une photo).")
        data = await file.read()
        limit = min(web.context(request).webmail.settings.webmail_max_upload, dossier(request).settings.dossier_max_document)
        if len(data) > limit:
            raise Refused(f"Le fichier est trop lourd : la limite est de {limit // 1_048_576} Mo.")
        await dossier(request).upload(
            PatientSide(viewer.profile, viewer.actor),
            NewDocument(
                data=data,
                title=values["titre"] or file.filename.rsplit(".", 1)[0],
                type_code=values["type"],
                declared_format=file.content_type or "",
                filename=file.filename,
                care_date=care,
                masked=bool(values["masquer"]),
            ),
        )
    except Refused as refused:
        return page(request, viewer, "dossier_upload.html", 400, types=_patient_types(), values=values, error=refused.text)
    return redirect("/dossier?info=ajoute")


# ---- who may see my dossier ----------------------------------------------------------------------------


@router.get("/dossier/acces")
async def access_page(request: Request) -> Response:
    viewer = await signed_in(request)
    if isinstance(viewer, Response):
        return viewer
    return await _access(request, viewer)


async def _access(request: Request, viewer: Viewer, status_code: int = 200, error: str | None = None) -> Response:
    side = PatientSide(viewer.profile, viewer.actor)
    name = request.query_params.get("nom", "")[:100]
    found, search_error = None, None
    if name:
        try:
            found = await dossier(request).find_professionals(side, name)
        except SearchError:
            search_error = "Indiquez au moins deux lettres du nom du professionnel."
        except Refused as refused:
            search_error = refused.text
    state = await dossier(request).state(side)
    blocked = {national_id for national_id, _, _ in state.blocked}
    return page(
        request,
        viewer,
        "dossier_access.html",
        status_code,
        state=state,
        name=name,
        found=found,
        search_error=search_error,
        blocked_ids=blocked,
        error=error,
    )


async def _manage(request: Request, action: Any) -> Response:
    """A form of the access page: do it, come back to the page with what was done (or why not)."""
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    try:
        success = await action(PatientSide(viewer.profile, viewer.actor), form)
    except Refused as refused:
        return await _access(request, viewer, 400, refused.text)
    return redirect(f"/dossier/acces?info={success}")


@router.post("/dossier/acces/urgence")
async def emergency(request: Request) -> Response:
    async def act(side: PatientSide, form: Any) -> str:
        refuse = form.get("refuser") == "oui"
        await dossier(request).set_emergency_refused(side, refuse)
        return "urgence-refusee" if refuse else "urgence-permise"

    return await _manage(request, act)


@router.post("/dossier/acces/masquage")
async def mask_all(request: Request) -> Response:
    async def act(side: PatientSide, form: Any) -> str:
        masked = form.get("masquer") == "oui"
        await dossier(request).set_all_masked(side, masked)
        return "tout-masque" if masked else "tout-visible"

    return await _manage(request, act)


@router.post("/dossier/acces/bloquer")
async def block(request: Request) -> Response:
    async def act(side: PatientSide, form: Any) -> str:
        await dossier(request).block(side, str(form.get("professionnel", ""))[:40])
        return "bloque"

    return await _manage(request, act)


@router.post("/dossier/acces/debloquer")
async def unblock(request: Request) -> Response:
    async def act(side: PatientSide, form: Any) -> str:
        await dossier(request).unblock(side, str(form.get("professionnel", ""))[:40])
        return "debloque"

    return await _manage(request, act)


# ---- the medical profile ----------------------------------------------------------------------------------


@router.get("/dossier/profil")
async def profile_page(request: Request) -> Response:
    viewer = await signed_in(request)
    if isinstance(viewer, Response):
        return viewer
    return await _profile(request, viewer)


async def _profile(
    request: Request, viewer: Viewer, status_code: int = 200, error: str | None = None, values: dict[str, str] | None = None
) -> Response:
    entries = await dossier(request).medical_profile(PatientSide(viewer.profile, viewer.actor))
    return page(
        request,
        viewer,
        "dossier_profile.html",
        status_code,
        entries=entries,
        sections=kinds.SECTIONS,
        measures=kinds.MEASURES,
        error=error,
        values=values or {},
    )


@router.post("/dossier/profil/ajouter")
async def add_profile_entry(request: Request) -> Response:
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    section = str(form.get("rubrique", ""))[:16]
    text = str(form.get("texte", ""))
    if section == "measure":
        kind = str(form.get("mesure", ""))
        label, unit = kinds.MEASURES.get(kind, ("", ""))
        value = str(form.get("valeur", "")).strip().replace(",", ".")[:20]
        text = f"{label} : {value} {unit}" if label and value else ""
    try:
        await dossier(request).add_profile_entry(
            PatientSide(viewer.profile, viewer.actor), section, text, str(form.get("precision", "")), str(form.get("date", ""))
        )
    except Refused as refused:
        return await _profile(request, viewer, 400, refused.text, {"section": section, "texte": text})
    return redirect(f"/dossier/profil?info=profil#{section}")


@router.post("/dossier/profil/{entry_id}/supprimer")
async def remove_profile_entry(request: Request, entry_id: RowId) -> Response:
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    viewer, _ = checked
    try:
        await dossier(request).remove_profile_entry(PatientSide(viewer.profile, viewer.actor), entry_id)
    except Refused as refused:
        if refused.conceal:
            return not_found(request, viewer)
        return await _profile(request, viewer, 400, refused.text)
    return redirect("/dossier/profil?info=profil")
