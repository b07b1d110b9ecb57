"""The dossier in the professionals' portal (/pro/dossier), in French, without JavaScript.

A professional signed in through Pro Santé Connect (the identity component's portal session)
finds a patient by INS (its key checked), checks the identity shown, then declares the
patient's consent or opens an emergency access with a reason; they then list and read what
the chain of rules lets them. While an emergency access is what they read under, every page
of that patient says so. A blocked professional gets a page saying so, and the attempt is in
the patient's history (the service records it).

The INS is posted, never put in a URL (browser histories, shared computers): the patient's
pages are reached by a reference that is the patient's id and an HMAC of it under the
portal session's own secret, useless in another session and impossible to enumerate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from caducee.annuaire.patients import PatientAccount
from caducee.dossier import kinds
from caducee.dossier.cda import narrative
from caducee.dossier.service import Dossier, Professional, Refused
from caducee.identity import web as identity_web
from caducee.identity.portal import signed_in
from caducee.identity.professionals import Principal
from caducee.identity.sessions import SessionInfo
from caducee.identity.signin import origin_of
from caducee.webmail.service import french_date, french_time

router = APIRouter(prefix="/pro/dossier", include_in_schema=False)
_ENVIRONMENT = Environment(
    loader=ChoiceLoader(
        [FileSystemLoader(Path(__file__).parent / "templates"), FileSystemLoader(Path(identity_web.__file__).parent / "templates")]
    ),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)
TEMPLATES = Jinja2Templates(env=_ENVIRONMENT)
_ENVIRONMENT.filters["date_fr"] = french_date
_ENVIRONMENT.filters["time_fr"] = french_time
_ENVIRONMENT.filters["day_fr"] = lambda day: f"{day:%d/%m/%Y}" if day else ""

NOTICES = {
    "accord": "Votre déclaration de l'accord du patient est enregistrée : elle figure dans l'historique de son dossier.",
    "urgence": "L'accès en urgence est ouvert et enregistré comme tel, avec son motif, dans l'historique du patient.",
}
FORM_LIMITS = {"max_files": 0, "max_fields": 8, "max_part_size": 4096}


class Page:
    """Who is signed in, and how to render a page of theirs with the portal's headers."""

    def __init__(self, request: Request, session: SessionInfo, principal: Principal) -> None:
        self.request = request
        self.session = session
        self.principal = principal

    @property
    def dossier(self) -> Dossier:
        dossier: Dossier = self.request.app.state.dossier
        return dossier

    async def professional(self) -> Professional:
        return await self.dossier.professional_of(self.principal.national_id, self.principal.name)

    def reference(self, patient: PatientAccount) -> str:
        return f"{patient.id}.{_mac(self.session.csrf_token, patient.id)}"

    async def render(self, template: str, status_code: int = 200, **values: Any) -> Response:
        logout = await identity_web.context(self.request).signin.logout_url()
        response = TEMPLATES.TemplateResponse(
            self.request,
            template,
            {
                "principal": self.principal,
                "csrf": self.session.csrf_token,
                "area": "dossier",
                "notice": NOTICES.get(self.request.query_params.get("info", "")),
                **values,
            },
            status_code=status_code,
        )
        identity_web.secure(response, origin_of(logout))
        return response


def _mac(secret: str, patient_id: int) -> str:
    digest = hmac.new(secret.encode(), f"dossier-patient:{patient_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def _page(request: Request) -> Page | Response:
    """The signed-in professional, or the portal's sign-in page answered 401 (a session that
    ended is said so): no redirect, so a link to a patient never lands anywhere else."""
    found = await signed_in(request)
    if found is None:
        expired = bool(request.cookies.get(identity_web.SESSION_COOKIE))
        ctx = identity_web.context(request)
        response = identity_web.render(
            request,
            "pro_home.html",
            401,
            notice="Votre session a pris fin. Reconnectez-vous pour continuer." if expired else None,
            configured=ctx.tokens is not None,
        )
        if expired:
            response.delete_cookie(identity_web.SESSION_COOKIE, path="/pro")
        return response
    return Page(request, *found)


def _row_id(value: int) -> bool:
    """Whether a document id may name a row (a 64-bit key): others are "not found", not a database error."""
    return 0 < value < 2**63


async def _posted(request: Request) -> tuple[Page, Any] | Response:
    page = await _page(request)
    if isinstance(page, Response):
        return page
    form = await request.form(**FORM_LIMITS)
    if not identity_web.csrf_ok(page.session.csrf_token, str(form.get("csrf", ""))):
        return identity_web.render(request, "pro_refused.html", 403, message="Le formulaire a expiré. Rechargez la page et recommencez.")
    return page, form


async def _patient(page: Page, reference: str) -> PatientAccount | None:
    """The patient of a reference made in this session; None for any other string."""
    number, _, mac = reference.partition(".")
    if not number.isdigit() or len(number) > 18 or not hmac.compare_digest(mac, _mac(page.session.csrf_token, int(number))):
        return None
    return await page.dossier.patient(int(number))


async def _not_found(page: Page) -> Response:
    return await page.render("pro_dossier_not_found.html", 404)


# ---- finding a patient ------------------------------------------------------------------------------


@router.get("")
async def search(request: Request) -> Response:
    page = await _page(request)
    if isinstance(page, Response):
        return page
    return await page.render("pro_dossier_search.html", ins="")


@router.post("")
async def find(request: Request) -> Response:
    checked = await _posted(request)
    if isinstance(checked, Response):
        return checked
    page, form = checked
    ins = str(form.get("ins", ""))[:40]
    try:
        patient = await page.dossier.patient_by_ins(ins)
    except Refused as refused:
        return await page.render("pro_dossier_search.html", 400 if refused.rule == "bad-ins" else 404, ins=ins, error=refused.text)
    return redirect(f"/pro/dossier/{page.reference(patient)}")


# ---- a patient's dossier ---------------------------------------------------------------------------------


@router.get("/{reference}")
async def patient_page(request: Request, reference: str) -> Response:
    page = await _page(request)
    if isinstance(page, Response):
        return page
    patient = await _patient(page, reference)
    if patient is None:
        return await _not_found(page)
    return await _dossier(page, patient, reference)


async def _dossier(page: Page, patient: PatientAccount, reference: str, status_code: int = 200, **values: Any) -> Response:
    pro = await page.professional()
    requester = await page.dossier.access(pro, patient)
    closed = patient.status in {"opposed", "closed"}
    common = {"patient": patient, "reference": reference, "minutes": page.dossier.settings.dossier_emergency_minutes}
    if not (requester.authorised or requester.emergency or requester.blocked or closed):
        return await page.render("pro_dossier_patient.html", status_code, listing=None, **common, **values)
    type_code = page.request.query_params.get("type", "")[:16]
    try:
        listing, decision = await page.dossier.professional_documents(pro, patient, type_code=type_code, page=_number(page.request))
    except Refused as refused:  # blocked, closed, emergency refused since: said plainly, recorded by the service
        return await page.render("pro_dossier_refused.html", 403, message=refused.text, **common)
    until = await page.dossier.emergency_until(pro, patient) if decision.right == "emergency" else None
    return await page.render(
        "pro_dossier_patient.html", status_code, listing=listing, type_code=type_code, right=decision.right, until=until, **common, **values
    )


def _number(request: Request) -> int:
    value = request.query_params.get("page", "1")
    return max(1, min(int(value), 100_000)) if value.isdigit() else 1


@router.post("/{reference}/accord")
async def consent(request: Request, reference: str) -> Response:
    checked = await _posted(request)
    if isinstance(checked, Response):
        return checked
    page, form = checked
    patient = await _patient(page, reference)
    if patient is None:
        return await _not_found(page)
    if form.get("atteste") != "oui":
        return await _dossier(page, patient, reference, 400, consent_error="Cochez la case pour attester l'accord du patient.")
    try:
        await page.dossier.declare_consent(await page.professional(), patient)
    except Refused as refused:
        return await page.render("pro_dossier_refused.html", 403, message=refused.text, patient=patient, reference=reference)
    return redirect(f"/pro/dossier/{reference}?info=accord")


@router.post("/{reference}/urgence")
async def emergency(request: Request, reference: str) -> Response:
    checked = await _posted(request)
    if isinstance(checked, Response):
        return checked
    page, form = checked
    patient = await _patient(page, reference)
    if patient is None:
        return await _not_found(page)
    reason = str(form.get("motif", ""))[:300]
    try:
        await page.dossier.open_emergency(await page.professional(), patient, reason)
    except Refused as refused:
        if refused.rule == "reason-required":
            return await _dossier(page, patient, reference, 400, emergency_error=refused.text, reason=reason)
        return await page.render("pro_dossier_refused.html", 403, message=refused.text, patient=patient, reference=reference)
    return redirect(f"/pro/dossier/{reference}?info=urgence")


# ---- a document ----------------------------------------------------------------------------------------------


@router.get("/{reference}/documents/{document_id}")
async def document_page(request: Request, reference: str, document_id: int) -> Response:
    page = await _page(request)
    if isinstance(page, Response):
        return page
    patient = await _patient(page, reference)
    if patient is None or not _row_id(document_id):
        return await _not_found(page)
    pro = await page.professional()
    try:
        line, data, decision = await page.dossier.professional_document(pro, patient, document_id)
    except Refused as refused:
        if refused.conceal:
            return await _not_found(page)
        return await page.render("pro_dossier_refused.html", 403, message=refused.text, patient=patient, reference=reference)
    until = await page.dossier.emergency_until(pro, patient) if decision.right == "emergency" else None
    text = narrative(data) if line.format == "text/xml" else None
    return await page.render(
        "pro_dossier_document.html",
        patient=patient,
        reference=reference,
        line=line,
        text=text,
        right=decision.right,
        until=until,
        type_label=kinds.type_label(line.type_code),
    )


@router.get("/{reference}/documents/{document_id}/fichier")
async def document_file(request: Request, reference: str, document_id: int) -> Response:
    """The document itself, downloaded (or shown by the browser for PDF and images), sandboxed."""
    page = await _page(request)
    if isinstance(page, Response):
        return page
    patient = await _patient(page, reference)
    if patient is None or not _row_id(document_id):
        return await _not_found(page)
    try:
        line, data, _ = await page.dossier.professional_document(await page.professional(), patient, document_id)
    except Refused as refused:
        if refused.conceal:
            return await _not_found(page)
        return await page.render("pro_dossier_refused.html", 403, message=refused.text, patient=patient, reference=reference)
    inline = request.query_params.get("voir") == "1" and line.format in {"application/pdf", "image/png", "image/jpeg"}
    media_type = line.format if line.format != "text/xml" else "application/octet-stream"
    return Response(
        data,
        media_type=media_type,
        headers={
            "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename=\"{line.filename}\"; filename*=UTF-8''{quote(line.filename)}",
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; object-src 'self'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )
