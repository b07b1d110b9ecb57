"""The webmail's pages: server-rendered, in French, usable without JavaScript.

Each page has one main action. A refused action re-shows its page with one sentence that
says what happened and what to do; nothing typed is lost (the text of a refused reply is
put back in the form).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import UploadFile

from caducee.annuaire.service import SearchError
from caducee.history.service import Access
from caducee.webmail.accounts import Refused
from caducee.webmail.service import PAGE_SIZE, actor_label
from caducee.webmail.uploads import UploadRefused, check_upload
from caducee.webmail.web import (
    CHALLENGE_COOKIE,
    CSRF_COOKIE,
    SESSION_COOKIE,
    Viewer,
    anonymous_csrf,
    context,
    csrf_ok,
    current_viewer,
    render,
    set_cookie,
)

router = APIRouter(include_in_schema=False)

NOTICES = {
    "envoye": "Votre message a été envoyé.",
    "ordonnance": "Votre ordonnance a été envoyée à la pharmacie. Elle vous répondra dans cette conversation.",
    "profil": "Vous consultez maintenant un autre profil.",
    "active": "Votre profil est activé. Connectez-vous avec votre mot de passe.",
    "oppose": "Votre opposition est enregistrée : aucun profil ne sera ouvert et vous ne recevrez aucun message.",
    "ferme": "Votre profil est fermé. Vous ne recevrez plus de messages.",
    "deconnecte": "Vous êtes déconnecté. À bientôt.",
    "expire": "Votre session a pris fin. Reconnectez-vous pour continuer.",
}


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def to_login(request: Request) -> RedirectResponse:
    response = redirect("/connexion?info=expire" if request.cookies.get(SESSION_COOKIE) else "/connexion")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("info", ""))


async def form_of(request: Request) -> Any:
    return await request.form(max_files=1, max_fields=20, max_part_size=1024 * 1024)


def page(request: Request, viewer: Viewer, template: str, status_code: int = 200, **values: Any) -> Response:
    return render(
        request,
        template,
        status_code,
        viewer=viewer,
        csrf=viewer.csrf,
        notice=notice(request),
        max_upload=context(request).webmail.settings.webmail_max_upload,
        **values,
    )


def bad_csrf(request: Request) -> Response:
    return render(request, "expired.html", 403, csrf=anonymous_csrf(request))


async def signed_in_form(request: Request) -> tuple[Viewer, Any] | Response:
    """The viewer and the posted form, or the answer to give instead: back to the login
    page when the session ended, "page expired" when the CSRF token is wrong."""
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    form = await form_of(request)
    if not csrf_ok(viewer.csrf, form.get("csrf")):
        return bad_csrf(request)
    return viewer, form


# ---- login ----------------------------------------------------------------------------------


@router.get("/connexion")
async def login_page(request: Request) -> Response:
    if await current_viewer(request) is not None:
        return redirect("/")
    return render(request, "login.html", csrf=anonymous_csrf(request), notice=notice(request), identifier="")


@router.post("/connexion")
async def login(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
        return bad_csrf(request)
    identifier = str(form.get("identifiant", ""))[:254]
    ctx = context(request)
    try:
        challenge = await ctx.accounts.start_login(
            identifier, str(form.get("mot_de_passe", ""))[:1024], request.client.host if request.client else "?"
        )
    except Refused as refused:
        return render(request, "login.html", 400, csrf=anonymous_csrf(request), error=refused.text, identifier=identifier)
    response = redirect("/connexion/code")
    set_cookie(response, ctx, CHALLENGE_COOKIE, challenge.token, path="/", max_age=ctx.accounts.settings.webmail_code_minutes * 60)
    return response


@router.get("/connexion/code")
async def code_page(request: Request) -> Response:
    sent_to = await context(request).accounts.challenge_destination(request.cookies.get(CHALLENGE_COOKIE, ""))
    if sent_to is None:
        return redirect("/connexion")
    return render(request, "code.html", csrf=anonymous_csrf(request), sent_to=sent_to)


@router.post("/connexion/code")
async def verify_code(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
        return bad_csrf(request)
    ctx = context(request)
    token = request.cookies.get(CHALLENGE_COOKIE, "")
    try:
        patient_id = await ctx.accounts.verify_code(token, str(form.get("code", ""))[:32])
    except Refused as refused:
        sent_to = await ctx.accounts.challenge_destination(token)
        return render(
            request, "code.html", 400, csrf=anonymous_csrf(request), error=refused.text, locked=refused.locked, sent_to=sent_to or ""
        )
    session_token, _ = await ctx.accounts.open_session(patient_id)
    await ctx.webmail.history.record(Access(patient_id, "Vous", "login"))
    response = redirect("/")
    response.delete_cookie(CHALLENGE_COOKIE, path="/")
    set_cookie(response, ctx, SESSION_COOKIE, session_token)
    return response


@router.post("/deconnexion")
async def logout(request: Request) -> Response:
    viewer = await current_viewer(request)
    form = await form_of(request)
    if viewer is not None:
        if not csrf_ok(viewer.csrf, form.get("csrf")):
            return bad_csrf(request)
        await context(request).accounts.close_session(viewer.session.id)
    response = redirect("/connexion?info=deconnecte")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ---- activation and opposition ------------------------------------------------------------------


@router.get("/activation")
async def activation_page(request: Request) -> Response:
    return render(request, "activation.html", csrf=anonymous_csrf(request), values={})


@router.post("/activation")
async def activation(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
        return bad_csrf(request)
    ins, code = str(form.get("ins", ""))[:32], str(form.get("code", ""))[:32]
    values = {"ins": ins, "email": str(form.get("email", ""))[:254]}
    accounts = context(request).accounts
    try:
        if form.get("action") == "opposer":
            account = await accounts.oppose(ins, code)
            await context(request).webmail.history.record(Access(account.id, account.name, "profile-opposed"))
            return redirect("/connexion?info=oppose")
        account = await accounts.activate(ins, code, values["email"], str(form.get("mot_de_passe", "")), str(form.get("confirmation", "")))
    except Refused as refused:
        return render(request, "activation.html", 400, csrf=anonymous_csrf(request), error=refused.text, values=values)
    await context(request).webmail.history.record(Access(account.id, account.name, "activated"))
    return redirect("/connexion?info=active")


# ---- messages ------------------------------------------------------------------------------------


@router.get("/")
async def inbox(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    try:
        number = max(1, min(int(request.query_params.get("page", "1")), 10_000))
    except ValueError:
        number = 1
    unread_only = request.query_params.get("filtre") == "non-lus"
    label = request.query_params.get("libelle") == "prevention"
    webmail = context(request).webmail
    hidden = await webmail.hides_prevention(viewer.profile)
    prevention = "only" if label else ("hidden" if hidden else "shown")
    lines, total = await webmail.inbox(viewer.profile, page=number, unread_only=unread_only, prevention=prevention)
    pages = max(1, -(-total // PAGE_SIZE))
    return page(
        request,
        viewer,
        "inbox.html",
        lines=lines,
        total=total,
        number=number,
        pages=pages,
        unread_only=unread_only,
        label=label,
        prevention_hidden=hidden,
    )


@router.post("/preferences/prevention")
async def prevention_preference(request: Request) -> Response:
    """Hide (or show again) the CNAM's prevention messages in the list; they stay under the label."""
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    hidden = form.get("masquer") == "oui"
    await context(request).webmail.hide_prevention(viewer.profile, hidden)
    return redirect("/?libelle=prevention" if form.get("retour") == "prevention" else "/")


@router.get("/conversations/{key}")
async def conversation(request: Request, key: int) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    view = await context(request).webmail.conversation(viewer.profile, viewer.actor, key)
    if view is None:
        return page(request, viewer, "not_found.html", 404)
    return page(request, viewer, "conversation.html", view=view, text="")


@router.post("/conversations/{key}/reponse")
async def reply(request: Request, key: int) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    webmail = context(request).webmail
    text = str(form.get("texte", ""))
    error = None
    upload = None
    file = form.get("piece")
    if isinstance(file, UploadFile) and file.filename:
        try:
            upload = check_upload(file.filename, await file.read(), max_size=webmail.settings.webmail_max_upload)
        except UploadRefused as refused:
            error = str(refused)
    if error is None:
        result = await webmail.reply(viewer.profile, viewer.actor, key, text, upload)
        if result.sent:
            return redirect(f"/conversations/{key}?info=envoye#dernier")
        error = result.text
    view = await webmail.conversation(viewer.profile, viewer.actor, key)
    if view is None:
        return page(request, viewer, "not_found.html", 404)
    return page(request, viewer, "conversation.html", 400, view=view, text=text, error=error)


@router.get("/conversations/{key}/messages/{message_id}/pieces/{index}")
async def attachment(request: Request, key: int, message_id: int, index: int) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    found = await context(request).webmail.attachment(viewer.profile, viewer.actor, key, message_id, index)
    if found is None:
        return page(request, viewer, "not_found.html", 404)
    return attachment_response(*found)


def attachment_response(attachment: Any, data: bytes) -> Response:
    """Always a download, never rendered in our origin; the type is the one checked by content."""
    return Response(
        data,
        media_type=attachment.content_type,
        headers={
            "Content-Disposition": f"attachment; filename=\"{attachment.filename}\"; filename*=UTF-8''{quote(attachment.filename)}",
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )


# ---- prescription ------------------------------------------------------------------------------


@router.get("/ordonnance")
async def prescription_search(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    name, place = request.query_params.get("nom", "")[:100], request.query_params.get("lieu", "")[:100]
    results, error = None, None
    if "nom" in request.query_params or "lieu" in request.query_params:
        try:
            results = await context(request).webmail.pharmacies(name, place)
        except SearchError:
            error = "Indiquez le nom de la pharmacie, sa ville ou son code postal."
    return page(request, viewer, "prescription_search.html", name=name, place=place, results=results, error=error)


@router.get("/ordonnance/envoi")
async def prescription_form(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    pharmacy = await context(request).webmail.pharmacy(request.query_params.get("pharmacie", ""))
    if pharmacy is None:
        return redirect("/ordonnance")
    return page(request, viewer, "prescription_send.html", pharmacy=pharmacy, note="")


@router.post("/ordonnance/envoi")
async def prescription_send(request: Request) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    pharmacy = await context(request).webmail.pharmacy(str(form.get("pharmacie", "")))
    if pharmacy is None:
        return redirect("/ordonnance")
    webmail = context(request).webmail
    note = str(form.get("message", ""))
    file = form.get("ordonnance")
    try:
        if not isinstance(file, UploadFile) or not file.filename:
            raise UploadRefused("Choisissez le fichier de votre ordonnance (un PDF ou une photo).")
        upload = check_upload(file.filename, await file.read(), max_size=webmail.settings.webmail_max_upload)
    except UploadRefused as refused:
        return page(request, viewer, "prescription_send.html", 400, pharmacy=pharmacy, note=note, error=str(refused))
    result = await webmail.send_prescription(viewer.profile, viewer.actor, pharmacy.address, note, upload)
    if not result.sent:
        return page(request, viewer, "prescription_send.html", 400, pharmacy=pharmacy, note=note, error=result.text)
    return redirect(f"/conversations/{result.conversation}?info=ordonnance" if result.conversation else "/?info=envoye")


# ---- profiles and account ------------------------------------------------------------------------


@router.get("/profils")
async def profiles_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    unread = {p.account.id: await context(request).webmail.unread(p) for p in viewer.profiles}
    return page(request, viewer, "profiles.html", unread=unread)


@router.post("/profils")
async def switch_profile(request: Request) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    wanted = next((p for p in viewer.profiles if str(p.account.id) == str(form.get("profil", ""))), None)
    if wanted is None:
        return redirect("/profils")
    await context(request).accounts.switch_profile(viewer.session, wanted.account.id)
    return redirect("/?info=profil")


@router.get("/compte")
async def account_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    return page(request, viewer, "account.html")


@router.post("/compte/fermer")
async def close_profile(request: Request) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    if form.get("confirmer") != "oui":
        return page(request, viewer, "account.html", 400, error="Cochez la case pour confirmer que vous voulez fermer votre profil.")
    try:
        await context(request).accounts.close_profile(viewer.actor.id, str(form.get("mot_de_passe", ""))[:1024])
    except Refused as refused:
        return page(request, viewer, "account.html", 400, error=refused.text)
    await context(request).webmail.history.record(Access(viewer.actor.id, viewer.actor.name, "profile-closed"))
    response = redirect("/connexion?info=ferme")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/historique")
async def history_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    if viewer.profile.relation == "carer":  # a carer sees the messages granted, not the patient's history
        return page(request, viewer, "not_found.html", 404)
    entries = await context(request).webmail.history.read(viewer.profile.account.id, for_guardian=viewer.profile.relation == "guardian")
    return page(request, viewer, "history.html", entries=entries, label=actor_label(viewer.actor, viewer.profile))
