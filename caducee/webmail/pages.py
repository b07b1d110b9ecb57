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
from caducee.webmail import ids
from caducee.webmail.accounts import Refused
from caducee.webmail.service import PAGE_SIZE, VIEWS
from caducee.webmail.uploads import UploadRefused, check_upload
from caducee.webmail.web import (
    CHALLENGE_COOKIE,
    CSRF_COOKIE,
    SESSION_COOKIE,
    Viewer,
    anonymous_csrf,
    client_address,
    context,
    csrf_ok,
    current_viewer,
    render,
    set_cookie,
)

router = APIRouter(include_in_schema=False)

NOTICES = {
    "envoye": "Votre message a été envoyé.",
    "archive": "La conversation est rangée dans vos archives.",
    "desarchive": "La conversation est revenue dans vos messages.",
    "supprime": "La conversation est dans la corbeille. Vous pouvez l'en sortir depuis « Corbeille ».",
    "restaure": "La conversation est revenue dans vos messages.",
    "mdp": "Votre mot de passe a été changé.",
    "mdp-oublie": "Votre nouveau mot de passe est enregistré. Connectez-vous avec lui.",
    "email": "Votre nouvelle adresse e-mail est enregistrée : vos prochains codes y seront envoyés.",
    "alertes": "Votre choix pour les e-mails de nouveau message est enregistré.",
    "brouillon": "Votre session a pris fin, mais votre texte a été gardé. Reconnectez-vous pour le retrouver et l'envoyer.",
    "texte-garde": "Votre texte a été gardé pendant que vous étiez déconnecté. Vérifiez-le, puis envoyez-le.",
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


WARNINGS = {"expire", "brouillon"}  # said as a warning, not as a success


def notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("info", ""))


def notice_kind(request: Request) -> str:
    return "warning" if request.query_params.get("info", "") in WARNINGS else "notice"


async def form_of(request: Request) -> Any:
    return await request.form(max_files=1, max_fields=20, max_part_size=1024 * 1024)


def page(request: Request, viewer: Viewer, template: str, status_code: int = 200, **values: Any) -> Response:
    return render(
        request,
        template,
        status_code,
        viewer=viewer,
        csrf=viewer.csrf,
        notice=values.pop("notice", notice(request)),
        notice_kind=values.pop("notice_kind", notice_kind(request)),
        idle_seconds=context(request).idle_minutes * 60,
        max_upload=context(request).webmail.settings.webmail_max_upload,
        **values,
    )


async def not_found(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return render(request, "not_found.html", 404, csrf=anonymous_csrf(request))
    return page(request, viewer, "not_found.html", 404)


def bad_csrf(request: Request) -> Response:
    return render(request, "expired.html", 403, csrf=anonymous_csrf(request))


async def signed_in_form(request: Request, *, draft: tuple[str, str] | None = None) -> tuple[Viewer, Any] | Response:
    """The viewer and the posted form, or the answer to give instead: back to the login
    page when the session ended, "page expired" when the CSRF token is wrong.

    `draft` names the form's text field and the page it is on: when the session ended
    while the person was writing, that text is kept for them (drafts.py)."""
    viewer = await current_viewer(request)
    if viewer is None:
        if draft is not None and await keep_draft(request, *draft):
            response = redirect("/connexion?info=brouillon")
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response
        return to_login(request)
    form = await form_of(request)
    if not csrf_ok(viewer.csrf, form.get("csrf")):
        return bad_csrf(request)
    return viewer, form


async def keep_draft(request: Request, field: str, path: str) -> bool:
    """Keep the text of a form posted after its session ended, for that session's owner."""
    ctx = context(request)
    owner = await ctx.accounts.expired_owner(request.cookies.get(SESSION_COOKIE, ""))
    if owner is None or ctx.drafts is None:
        return False
    form = await form_of(request)
    text = str(form.get(field, "")).strip()
    if not text or not csrf_ok(owner.csrf_token, form.get("csrf")):
        return False
    await ctx.drafts.keep(owner.patient_id, owner.acting_patient_id, path, str(form.get(field, "")))
    return True


# ---- login ----------------------------------------------------------------------------------


@router.get("/connexion")
async def login_page(request: Request) -> Response:
    if await current_viewer(request) is not None:
        return redirect("/")
    return render(
        request, "login.html", csrf=anonymous_csrf(request), notice=notice(request), notice_kind=notice_kind(request), identifier=""
    )


@router.post("/connexion")
async def login(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
        return bad_csrf(request)
    identifier = str(form.get("identifiant", ""))[:254]
    ctx = context(request)
    problem = identifier_problem(identifier, str(form.get("mot_de_passe", "")))
    if problem is not None:
        return render(request, "login.html", 400, csrf=anonymous_csrf(request), error=problem[1], field=problem[0], identifier=identifier)
    try:
        challenge = await ctx.accounts.start_login(identifier, str(form.get("mot_de_passe", ""))[:1024], client_address(request))
    except Refused as refused:
        return render(
            request, "login.html", 429 if refused.locked else 400, csrf=anonymous_csrf(request), error=refused.text, identifier=identifier
        )
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
    waiting = await ctx.drafts.waiting(patient_id) if ctx.drafts is not None else None
    profiles = await ctx.accounts.profiles(patient_id)
    session_token, _ = await ctx.accounts.open_session(patient_id)
    await ctx.webmail.history.record(Access(patient_id, profiles[0].account.name if profiles else "", "login"))
    response = redirect(f"{waiting}{'&' if '?' in waiting else '?'}brouillon=1" if waiting else "/")
    response.delete_cookie(CHALLENGE_COOKIE, path="/")
    set_cookie(response, ctx, SESSION_COOKIE, session_token)
    return response


def identifier_problem(identifier: str, password: str) -> tuple[str, str] | None:
    """What is wrong with the typed values before anything is checked (nothing here says
    whether an account exists: an INS's key is arithmetic on the number itself)."""
    from caducee.annuaire.identifiers import InvalidIdentifier, validate_ins
    from caducee.annuaire.patients import canonical_identifier

    kind, _, canonical = canonical_identifier(identifier).partition(":")
    if not canonical:
        return "identifiant", "Indiquez votre numéro INS ou votre adresse e-mail."
    if kind == "ins":
        try:
            validate_ins(canonical)
        except InvalidIdentifier:
            if len(canonical) != 15:
                return "identifiant", (
                    f"Un numéro INS a 15 caractères ; vous en avez saisi {len(canonical)}. Vérifiez-le sur votre carte Vitale."
                )
            return "identifiant", "Ce numéro INS n'est pas valide : un chiffre est sans doute faux. Vérifiez-le sur votre carte Vitale."
    if not password:
        return "mot_de_passe", "Indiquez votre mot de passe."
    return None


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
            account = await accounts.oppose(ins, code, client_address(request))
            await context(request).webmail.history.record(Access(account.id, account.name, "profile-opposed"))
            return redirect("/connexion?info=oppose")
        account = await accounts.activate(
            ins,
            code,
            values["email"],
            str(form.get("mot_de_passe", ""))[:1024],
            str(form.get("confirmation", ""))[:1024],
            client_address(request),
        )
    except Refused as refused:
        status = 429 if refused.locked else 400
        return render(request, "activation.html", status, csrf=anonymous_csrf(request), error=refused.text, values=values)
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
    view = request.query_params.get("dossier", "messages")
    view = view if view in VIEWS else "messages"
    words = request.query_params.get("recherche", "")[:200].strip()
    webmail = context(request).webmail
    hidden = await webmail.hides_prevention(viewer.profile)
    prevention = "only" if label else ("hidden" if hidden else "shown")
    if words:
        lines = await webmail.search(viewer.profile, words)
        total = len(lines)
    else:
        lines, total = await webmail.inbox(viewer.profile, page=number, unread_only=unread_only, view=view, prevention=prevention)
    pages = max(1, -(-total // PAGE_SIZE)) if not words else 1
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
        view=view,
        words=words,
        active="messages",
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


MOVES = {
    "archiver": ("Archive", "archive"),
    "desarchiver": ("INBOX", "desarchive"),
    "supprimer": ("Trash", "supprime"),
    "restaurer": ("INBOX", "restaure"),
}


async def move_conversation(request: Request, key_text: str) -> Response:
    """Archive, un-archive, delete (to Trash) or restore a whole conversation."""
    key = ids.conversation_key(key_text)
    action = request.url.path.rstrip("/").rpartition("/")[2]
    if key is None or action not in MOVES:
        return await not_found(request)
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, _ = checked
    target, done = MOVES[action]
    if not await context(request).webmail.move(viewer.profile, key, target, actor=viewer.actor.address):
        return page(request, viewer, "not_found.html", 404)
    back = {"archive": f"/conversations/{key}", "desarchive": f"/conversations/{key}", "supprime": "/", "restaure": "/?dossier=corbeille"}
    return redirect(f"{back[done]}?info={done}")


for _action in MOVES:
    router.add_api_route(f"/conversations/{{key_text}}/{_action}", move_conversation, methods=["POST"], include_in_schema=False)


@router.get("/conversations/{key_text}/imprimer")
async def print_conversation(request: Request, key_text: str) -> Response:
    """The conversation alone on the page, for the browser's print (or save as PDF)."""
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    key = ids.conversation_key(key_text)
    view = await context(request).webmail.conversation(viewer.profile, viewer.actor, key) if key is not None else None
    if view is None:
        return page(request, viewer, "not_found.html", 404)
    return page(request, viewer, "print.html", view=view)


@router.get("/conversations/{key_text}")
async def conversation(request: Request, key_text: str) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    key = ids.conversation_key(key_text)
    if key is None:
        return page(request, viewer, "not_found.html", 404)
    view = await context(request).webmail.conversation(viewer.profile, viewer.actor, key)
    if view is None:
        return page(request, viewer, "not_found.html", 404)
    text, extra = "", dict[str, Any]()
    if request.query_params.get("brouillon"):
        kept = await take_draft(request, viewer, f"/conversations/{key}")
        if kept is not None:
            text, extra = kept, {"notice": NOTICES["texte-garde"], "notice_kind": "warning"}
    return page(request, viewer, "conversation.html", view=view, text=text, **extra)


async def take_draft(request: Request, viewer: Viewer, path: str) -> str | None:
    """The kept draft of this page for this person (once), if they are on the profile they wrote from."""
    drafts = context(request).drafts
    if drafts is None or await drafts.waiting(viewer.actor.id) != path:
        return None
    kept = await drafts.take(viewer.actor.id)
    if kept is None:
        return None
    if kept.acting_patient_id != viewer.profile.account.id:
        wanted = next((p for p in viewer.profiles if p.account.id == kept.acting_patient_id), None)
        if wanted is None:
            return None
        await context(request).accounts.switch_profile(viewer.session, wanted.account.id)
    return kept.text


@router.post("/conversations/{key_text}/reponse")
async def reply(request: Request, key_text: str) -> Response:
    key = ids.conversation_key(key_text)
    if key is None:
        return await not_found(request)
    checked = await signed_in_form(request, draft=("texte", f"/conversations/{key}"))
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
            return redirect(f"/conversations/{key}?info=envoye#confirmation")
        error = result.text
    view = await webmail.conversation(viewer.profile, viewer.actor, key)
    if view is None:
        return page(request, viewer, "not_found.html", 404)
    return page(request, viewer, "conversation.html", 400, view=view, text=text, error=error)


@router.get("/conversations/{key_text}/messages/{message_text}/pieces/{index_text}")
async def attachment(request: Request, key_text: str, message_text: str, index_text: str) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    key, message_id, index = ids.conversation_key(key_text), ids.row_id(message_text), ids.index(index_text)
    if key is None or message_id is None or index is None:
        return page(request, viewer, "not_found.html", 404)
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
    kept = await take_draft(request, viewer, "/ordonnance") if request.query_params.get("brouillon") else None
    return page(request, viewer, "prescription_search.html", name=name, place=place, results=results, error=error, kept=kept)


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
    checked = await signed_in_form(request, draft=("message", "/ordonnance"))
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


async def account_values(request: Request, viewer: Viewer) -> dict[str, Any]:
    service = context(request).selfservice
    assert service is not None
    return {
        "alerts": await service.alerts_enabled(viewer.actor.id),
        "pending_email": await service.pending_email(viewer.actor.id),
        "own": viewer.profile.relation == "self",
        "active": "compte",
    }


async def account_page_with(request: Request, viewer: Viewer, status: int = 200, **values: Any) -> Response:
    return page(request, viewer, "account.html", status, **{**await account_values(request, viewer), **values})


@router.get("/compte")
async def account_page(request: Request) -> Response:
    """The signed-in person's own account, whichever profile they are looking at (the page
    says so): their password, email, alerts, their data, closing their profile."""
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    return await account_page_with(request, viewer)


@router.post("/compte/mot-de-passe")
async def change_password(request: Request) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    service = context(request).selfservice
    assert service is not None
    try:
        await service.change_password(
            viewer.actor.id,
            viewer.session.id,
            str(form.get("actuel", ""))[:1024],
            str(form.get("nouveau", ""))[:1024],
            str(form.get("confirmation", ""))[:1024],
            client_address(request),
        )
    except Refused as refused:
        return await account_page_with(request, viewer, 429 if refused.locked else 400, error=refused.text, field="actuel", section="mdp")
    await context(request).webmail.history.record(Access(viewer.actor.id, viewer.actor.name, "password-changed"))
    return redirect("/compte?info=mdp")


@router.post("/compte/email")
async def change_email(request: Request) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    service = context(request).selfservice
    assert service is not None
    email = str(form.get("email", ""))[:254]
    try:
        await service.start_email_change(viewer.actor.id, email, str(form.get("mot_de_passe", ""))[:1024], client_address(request))
    except Refused as refused:
        return await account_page_with(
            request, viewer, 429 if refused.locked else 400, error=refused.text, field="email", section="email", typed_email=email
        )
    return redirect("/compte/email/code")


@router.get("/compte/email/code")
async def email_code_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    service = context(request).selfservice
    assert service is not None
    pending = await service.pending_email(viewer.actor.id)
    if pending is None:
        return redirect("/compte")
    return page(request, viewer, "email_code.html", pending=pending, active="compte")


@router.post("/compte/email/code")
async def email_code(request: Request) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    service = context(request).selfservice
    assert service is not None
    pending = await service.pending_email(viewer.actor.id) or ""
    try:
        await service.confirm_email_change(viewer.actor.id, str(form.get("code", ""))[:32])
    except Refused as refused:
        return page(request, viewer, "email_code.html", 400, pending=pending, error=refused.text, field="code", locked=refused.locked)
    await context(request).webmail.history.record(Access(viewer.actor.id, viewer.actor.name, "email-changed"))
    return redirect("/compte?info=email")


@router.post("/compte/notifications")
async def change_alerts(request: Request) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    service = context(request).selfservice
    assert service is not None
    await service.set_alerts(viewer.actor.id, form.get("alertes") == "oui")
    return redirect("/compte?info=alertes")


@router.get("/compte/export")
async def export(request: Request) -> Response:
    """The person's own messages as a zip (for a guardian on a child's profile: the child's)."""
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    if viewer.profile.relation == "carer":
        return page(request, viewer, "not_found.html", 404)
    data = await context(request).webmail.export(viewer.profile, viewer.actor)
    name = f"messages-{viewer.profile.account.name.replace(' ', '-').lower()}.zip"
    return Response(
        data,
        media_type="application/zip",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )


@router.post("/compte/fermer")
async def close_profile(request: Request) -> Response:
    checked = await signed_in_form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    if viewer.profile.relation != "self":  # the page offers it only on one's own profile
        return redirect("/compte")
    if form.get("confirmer") != "oui":
        return await account_page_with(
            request,
            viewer,
            400,
            error="Cochez la case pour confirmer que vous voulez fermer votre profil.",
            field="confirmer",
            section="fermer",
        )
    try:
        await context(request).accounts.close_profile(viewer.actor.id, str(form.get("mot_de_passe", ""))[:1024])
    except Refused as refused:
        return await account_page_with(request, viewer, 400, error=refused.text, field="mot_de_passe", section="fermer")
    await context(request).webmail.history.record(Access(viewer.actor.id, viewer.actor.name, "profile-closed"))
    response = redirect("/connexion?info=ferme")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/historique")
async def history_page(request: Request) -> Response:
    """Who accessed whose data: the profile being looked at (one's own, a child's), or one's
    own (`?de=moi`, and always for a carer, who does not see the patient's history)."""
    viewer = await current_viewer(request)
    if viewer is None:
        return to_login(request)
    own = request.query_params.get("de") == "moi" or viewer.profile.relation == "carer"
    whose = viewer.actor if own else viewer.profile.account
    guardian = not own and viewer.profile.relation == "guardian"  # a minor's secret items stay out of a guardian's view
    entries = await context(request).webmail.history.read(whose.id, for_guardian=guardian)
    return page(request, viewer, "history.html", entries=entries, whose=whose, own=whose.id == viewer.actor.id, active="compte")


# ---- forgotten password --------------------------------------------------------------------------

RESET_COOKIE = "caducee_reset"


@router.get("/mot-de-passe-oublie")
async def forgotten_page(request: Request) -> Response:
    return render(request, "forgotten.html", csrf=anonymous_csrf(request), identifier="")


@router.post("/mot-de-passe-oublie")
async def forgotten(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
        return bad_csrf(request)
    identifier = str(form.get("identifiant", ""))[:254]
    problem = identifier_problem(identifier, "-")
    if problem is not None:
        return render(
            request, "forgotten.html", 400, csrf=anonymous_csrf(request), error=problem[1], field="identifiant", identifier=identifier
        )
    ctx = context(request)
    assert ctx.selfservice is not None
    try:
        token = await ctx.selfservice.request_reset(identifier, client_address(request))
    except Refused as refused:
        return render(
            request, "forgotten.html", 429, csrf=anonymous_csrf(request), error=refused.text, field="identifiant", identifier=identifier
        )
    response = redirect("/mot-de-passe-oublie/code")
    set_cookie(response, ctx, RESET_COOKIE, token, max_age=ctx.accounts.settings.webmail_code_minutes * 60)
    return response


@router.get("/mot-de-passe-oublie/code")
async def reset_page(request: Request) -> Response:
    if not request.cookies.get(RESET_COOKIE):
        return redirect("/mot-de-passe-oublie")
    return render(request, "reset.html", csrf=anonymous_csrf(request), minutes=context(request).accounts.settings.webmail_code_minutes)


@router.post("/mot-de-passe-oublie/code")
async def reset(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
        return bad_csrf(request)
    ctx = context(request)
    assert ctx.selfservice is not None
    try:
        patient_id = await ctx.selfservice.finish_reset(
            request.cookies.get(RESET_COOKIE, ""),
            str(form.get("code", ""))[:32],
            str(form.get("mot_de_passe", ""))[:1024],
            str(form.get("confirmation", ""))[:1024],
        )
    except Refused as refused:
        minutes = ctx.accounts.settings.webmail_code_minutes
        return render(request, "reset.html", 400, csrf=anonymous_csrf(request), error=refused.text, field="code", minutes=minutes)
    await ctx.webmail.history.record(Access(patient_id, "", "password-reset"))
    response = redirect("/connexion?info=mdp-oublie")
    response.delete_cookie(RESET_COOKIE, path="/")
    return response


# ---- help, legal notices, accessibility -----------------------------------------------------------

INFO_PAGES = {"/aide": "help.html", "/mentions-legales": "legal.html", "/accessibilite": "accessibility.html"}


async def info_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    template = INFO_PAGES[request.url.path]
    if viewer is None:
        return render(request, template, csrf=anonymous_csrf(request), active=template)
    return page(request, viewer, template, active=template)


for _path in INFO_PAGES:
    router.add_api_route(_path, info_page, methods=["GET"], include_in_schema=False)
