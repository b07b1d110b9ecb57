"""The webmail's JSON API under /api/v1: what the pages use, for other clients too.

Same authentication as the pages (the session cookie, obtained by the two login steps);
every request that changes something carries the session's CSRF token in `X-CSRF-Token`.
Errors are `{"detail": "<French sentence>"}` with a status that says what kind.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from caducee.annuaire.service import SearchError
from caducee.history.service import Access
from caducee.webmail import ids
from caducee.webmail.accounts import Refused
from caducee.webmail.pages import attachment_response
from caducee.webmail.service import PAGE_SIZE, ConversationView, SendResult
from caducee.webmail.uploads import Upload, UploadRefused, check_upload
from caducee.webmail.web import CHALLENGE_COOKIE, SESSION_COOKIE, Viewer, client_address, context, csrf_ok, current_viewer, set_cookie

router = APIRouter(prefix="/api/v1", tags=["webmail"])


class LoginRequest(BaseModel):
    identifier: str = Field(max_length=254, description="INS (15 characters, spaces allowed) or the registered email")
    password: str = Field(max_length=1024)


class CodeRequest(BaseModel):
    code: str = Field(max_length=32, description="The 6-digit code received")


class ProfileRequest(BaseModel):
    patient_id: int


# ---- what the API answers (the OpenAPI document shows each) -------------------------------------


class LoginStarted(BaseModel):
    code_sent_to: str = Field(description="The registered email, masked")
    valid_minutes: int


class SessionOpened(BaseModel):
    csrf_token: str = Field(description="Send it back in X-CSRF-Token with every change")


class ProfileOut(BaseModel):
    patient_id: int
    name: str
    address: str
    relation: str = Field(description="self, guardian (a minor's profile) or carer (a delegation)")
    may_reply: bool


class MeOut(BaseModel):
    name: str
    csrf_token: str
    acting: ProfileOut
    profiles: list[ProfileOut]
    unread: int
    idle_minutes: int = Field(description="The session ends after this long without a request (extend it with POST /session/extend)")


class CorrespondentOut(BaseModel):
    name: str
    address: str
    detail: str


class ConversationItem(BaseModel):
    id: int
    subject: str
    correspondent: CorrespondentOut
    last_at: str
    messages: int
    unread: int
    closed: bool
    is_campaign: bool


class ConversationPage(BaseModel):
    total: int
    page: int
    per_page: int
    items: list[ConversationItem]


class AttachmentOut(BaseModel):
    index: int
    filename: str
    content_type: str
    size: int
    url: str


class MessageOut(BaseModel):
    id: int
    author: CorrespondentOut
    mine: bool
    written_by: str = Field(description="Who wrote it for the profile's owner (a guardian, a carer), empty otherwise")
    at: str
    subject: str
    text: str = Field(description="The text; for an HTML-only message, its faithful text rendering (links kept)")
    html: str | None = Field(description="For an HTML-only message, its sanitised HTML (a safe subset)")
    encrypted: bool
    attachments: list[AttachmentOut]


class ReplyOut(BaseModel):
    allowed: bool
    reason: str
    to: list[CorrespondentOut]


class ConversationOut(BaseModel):
    id: int
    subject: str
    closed: bool
    closed_by: str | None
    closed_at: str | None
    is_campaign: bool
    reply: ReplyOut
    messages: list[MessageOut]


class SentOut(BaseModel):
    sent: bool
    detail: str
    conversation: int | None


class PharmacyOut(BaseModel):
    name: str
    address: str
    address_line: str
    postcode: str
    city: str


class PharmacyPage(BaseModel):
    total: int
    page: int
    items: list[PharmacyOut]


class HistoryEntryOut(BaseModel):
    at: str
    actor: str
    action: str
    label: str
    detail: str


class Problem(BaseModel):
    detail: str = Field(description="What happened, in a French sentence")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Not signed in, or the session ended"},
    403: {"model": Problem, "description": "X-CSRF-Token missing or wrong"},
    404: {"model": Problem, "description": "Nothing of this profile has that id"},
}
DOWNLOAD: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}, "description": "The document's bytes"}}


async def viewer_of(request: Request, *, changes: bool = False) -> Viewer:
    viewer = await current_viewer(request)
    if viewer is None:
        raise HTTPException(401, "Vous n'êtes pas connecté, ou votre session a pris fin.")
    if changes and not csrf_ok(viewer.csrf, request.headers.get("x-csrf-token")):
        raise HTTPException(403, "Jeton CSRF absent ou incorrect (en-tête X-CSRF-Token).")
    return viewer


def _json_only(request: Request) -> None:
    """A cross-site form cannot send application/json without the browser asking first."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "Envoyez du JSON (Content-Type: application/json).")


# ---- session ------------------------------------------------------------------------------------


@router.post("/session/login", summary="Step 1: identifier and password; a code is sent", response_model=LoginStarted, responses=ERRORS)
async def api_login(request: Request, body: LoginRequest) -> JSONResponse:
    _json_only(request)
    ctx = context(request)
    try:
        challenge = await ctx.accounts.start_login(body.identifier, body.password, client_address(request))
    except Refused as refused:
        raise HTTPException(429 if refused.locked else 401, refused.text) from None
    response = JSONResponse({"code_sent_to": challenge.sent_to, "valid_minutes": ctx.accounts.settings.webmail_code_minutes})
    set_cookie(response, ctx, CHALLENGE_COOKIE, challenge.token, max_age=ctx.accounts.settings.webmail_code_minutes * 60)
    return response


@router.post("/session/code", summary="Step 2: the code; opens the session", response_model=SessionOpened, responses=ERRORS)
async def api_code(request: Request, body: CodeRequest) -> JSONResponse:
    _json_only(request)
    ctx = context(request)
    try:
        patient_id = await ctx.accounts.verify_code(request.cookies.get(CHALLENGE_COOKIE, ""), body.code)
    except Refused as refused:
        raise HTTPException(423 if refused.locked else 401, refused.text) from None
    token, info = await ctx.accounts.open_session(patient_id)
    await ctx.webmail.history.record(Access(patient_id, "Vous", "login"))
    response = JSONResponse({"csrf_token": info.csrf_token})
    response.delete_cookie(CHALLENGE_COOKIE, path="/")
    set_cookie(response, ctx, SESSION_COOKIE, token)
    return response


@router.delete("/session", summary="Log out", status_code=204, response_class=Response, responses=ERRORS)
async def api_logout(request: Request) -> Response:
    viewer = await viewer_of(request, changes=True)
    await context(request).accounts.close_session(viewer.session.id)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ---- who -----------------------------------------------------------------------------------------


def _profile(profile: Any) -> dict[str, Any]:
    return {
        "patient_id": profile.account.id,
        "name": profile.account.name,
        "address": profile.account.address,
        "relation": profile.relation,
        "may_reply": profile.may_reply,
    }


@router.get("/me", summary="Who is signed in, the profiles they may act on, the CSRF token", response_model=MeOut, responses=ERRORS)
async def api_me(request: Request) -> dict[str, Any]:
    viewer = await viewer_of(request)
    return {
        "name": viewer.actor.name,
        "csrf_token": viewer.csrf,
        "acting": _profile(viewer.profile),
        "profiles": [_profile(p) for p in viewer.profiles],
        "unread": await context(request).webmail.unread(viewer.profile),
        "idle_minutes": context(request).idle_minutes,
    }


@router.put("/me/profile", summary="Act on another profile (a minor's, a delegation)", response_model=ProfileOut, responses=ERRORS)
async def api_switch(request: Request, body: ProfileRequest) -> dict[str, Any]:
    viewer = await viewer_of(request, changes=True)
    wanted = next((p for p in viewer.profiles if p.account.id == body.patient_id), None)
    if wanted is None:
        raise HTTPException(404, "Vous n'avez pas accès à ce profil.")
    await context(request).accounts.switch_profile(viewer.session, wanted.account.id)
    return _profile(wanted)


# ---- messages --------------------------------------------------------------------------------------


def _correspondent(person: Any) -> dict[str, str]:
    return {"name": person.name, "address": person.address, "detail": person.detail}


@router.get(
    "/conversations", summary="The conversation list, most recent first (or a search)", response_model=ConversationPage, responses=ERRORS
)
async def api_conversations(
    request: Request,
    page: int = Query(1, ge=1, le=10_000),
    unread: bool = False,
    folder: str = Query("messages", pattern="^(messages|archives|corbeille)$", description="messages, archives or corbeille (Trash)"),
    q: str = Query("", max_length=200, description="Words to find in subjects, correspondents and texts"),
) -> dict[str, Any]:
    viewer = await viewer_of(request)
    webmail = context(request).webmail
    if q.strip():
        lines = await webmail.search(viewer.profile, q)
        total = len(lines)
    else:
        lines, total = await webmail.inbox(viewer.profile, page=page, unread_only=unread, view=folder)
    return {
        "total": total,
        "page": page,
        "per_page": PAGE_SIZE,
        "items": [
            {
                "id": line.key,
                "subject": line.subject,
                "correspondent": _correspondent(line.correspondent),
                "last_at": line.last_at.isoformat(),
                "messages": line.messages,
                "unread": line.unread,
                "closed": line.closed,
                "is_campaign": line.is_campaign,
            }
            for line in lines
        ],
    }


def _conversation(view: ConversationView) -> dict[str, Any]:
    return {
        "id": view.key,
        "subject": view.subject,
        "closed": view.closed,
        "closed_by": view.closed_by,
        "closed_at": view.closed_at.isoformat() if view.closed_at else None,
        "is_campaign": view.is_campaign,
        "reply": {"allowed": view.reply.allowed, "reason": view.reply.reason, "to": [_correspondent(p) for p in view.reply.to]},
        "messages": [
            {
                "id": m.id,
                "author": _correspondent(m.author),
                "mine": m.mine,
                "written_by": m.written_by,
                "at": m.at.isoformat(),
                "subject": m.subject,
                "text": m.text,
                "html": m.html,
                "encrypted": m.encrypted,
                "attachments": [
                    {
                        "index": a.index,
                        "filename": a.filename,
                        "content_type": a.content_type,
                        "size": a.size,
                        "url": f"/api/v1/conversations/{view.key}/messages/{m.id}/attachments/{a.index}",
                    }
                    for a in m.attachments
                ],
            }
            for m in view.messages
        ],
    }


def _key(text: str) -> int:
    key = ids.conversation_key(text)
    if key is None:
        raise HTTPException(404, "Cette conversation n'existe pas.")
    return key


@router.get(
    "/conversations/{key}",
    summary="One conversation (opening it marks it read and returns receipts)",
    response_model=ConversationOut,
    responses=ERRORS,
)
async def api_conversation(request: Request, key: str) -> dict[str, Any]:
    viewer = await viewer_of(request)
    view = await context(request).webmail.conversation(viewer.profile, viewer.actor, _key(key))
    if view is None:
        raise HTTPException(404, "Cette conversation n'existe pas.")
    return _conversation(view)


@router.get(
    "/conversations/{key}/messages/{message_id}/attachments/{index}",
    summary="Download an attachment",
    response_class=Response,
    responses={**ERRORS, **DOWNLOAD},
)
async def api_attachment(request: Request, key: str, message_id: str, index: str) -> Response:
    viewer = await viewer_of(request)
    conversation, message, position = ids.conversation_key(key), ids.row_id(message_id), ids.index(index)
    if conversation is None or message is None or position is None:
        raise HTTPException(404, "Ce document n'existe pas.")
    found = await context(request).webmail.attachment(viewer.profile, viewer.actor, conversation, message, position)
    if found is None:
        raise HTTPException(404, "Ce document n'existe pas.")
    return attachment_response(*found)


async def _checked(file: UploadFile, max_size: int) -> Upload:
    try:
        return check_upload(file.filename, await file.read(), max_size=max_size)
    except UploadRefused as refused:
        raise HTTPException(422, str(refused)) from None


def _sent(result: SendResult) -> dict[str, Any]:
    if result.not_found:
        raise HTTPException(404, result.text)
    if not result.sent:
        raise HTTPException(422, result.text)
    return {"sent": True, "detail": result.text, "conversation": result.conversation}


@router.post(
    "/conversations/{key}/replies",
    summary="Reply in a conversation (when the rules allow)",
    status_code=201,
    response_model=SentOut,
    responses={**ERRORS, 422: {"model": Problem, "description": "Refused by the rules, or a bad file"}},
)
async def api_reply(
    request: Request, key: str, text: str = Form("", max_length=40_000), file: UploadFile | None = File(None)
) -> dict[str, Any]:
    conversation = _key(key)
    viewer = await viewer_of(request, changes=True)
    webmail = context(request).webmail
    upload = await _checked(file, webmail.settings.webmail_max_upload) if file is not None and file.filename else None
    return _sent(await webmail.reply(viewer.profile, viewer.actor, conversation, text, upload))


@router.get(
    "/pharmacies",
    summary="Pharmacies (officines) of the annuaire, by name and city or postcode",
    response_model=PharmacyPage,
    responses=ERRORS,
)
async def api_pharmacies(
    request: Request, name: str = Query("", max_length=100), place: str = Query("", max_length=100), page: int = Query(1, ge=1, le=1000)
) -> dict[str, Any]:
    await viewer_of(request)
    try:
        found = await context(request).webmail.pharmacies(name, place, page)
    except SearchError:
        raise HTTPException(422, "Indiquez le nom de la pharmacie, sa ville ou son code postal.") from None
    return {
        "total": found.total,
        "page": found.page,
        "items": [
            {
                "name": item.structure_name or item.display_name,
                "address": item.address,
                "address_line": item.address_line,
                "postcode": item.postcode,
                "city": item.city,
            }
            for item in found.items
        ],
    }


@router.post(
    "/prescriptions",
    summary="Send a prescription to a pharmacy (starts a conversation)",
    status_code=201,
    response_model=SentOut,
    responses={**ERRORS, 422: {"model": Problem, "description": "Refused by the rules, or a bad file"}},
)
async def api_prescription(
    request: Request, pharmacy: str = Form(..., max_length=254), note: str = Form("", max_length=40_000), file: UploadFile = File(...)
) -> dict[str, Any]:
    viewer = await viewer_of(request, changes=True)
    webmail = context(request).webmail
    upload = await _checked(file, webmail.settings.webmail_max_upload)
    return _sent(await webmail.send_prescription(viewer.profile, viewer.actor, pharmacy, note, upload))


@router.get("/history", summary="Who accessed this profile's data, newest first", response_model=list[HistoryEntryOut], responses=ERRORS)
async def api_history(request: Request) -> list[dict[str, str]]:
    viewer = await viewer_of(request)
    whose = viewer.actor if viewer.profile.relation == "carer" else viewer.profile.account  # a carer reads their own
    entries = await context(request).webmail.history.read(whose.id)
    return [{"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "label": e.label, "detail": e.detail} for e in entries]


@router.post(
    "/session/extend", summary="Stay signed in: the idle time starts again", status_code=204, response_class=Response, responses=ERRORS
)
async def api_extend(request: Request) -> Response:
    viewer = await viewer_of(request, changes=True)
    await context(request).accounts.extend(viewer.session.id)
    return Response(status_code=204)


@router.post(
    "/conversations/{key}/archive", summary="File a conversation in Archive", status_code=204, response_class=Response, responses=ERRORS
)
async def api_archive(request: Request, key: str) -> Response:
    conversation = _key(key)
    viewer = await viewer_of(request, changes=True)
    if not await context(request).webmail.move(viewer.profile, conversation, "Archive", actor=viewer.actor.address):
        raise HTTPException(404, "Cette conversation n'existe pas.")
    return Response(status_code=204)


@router.delete("/conversations/{key}", summary="Move a conversation to Trash", status_code=204, response_class=Response, responses=ERRORS)
async def api_delete(request: Request, key: str) -> Response:
    conversation = _key(key)
    viewer = await viewer_of(request, changes=True)
    if not await context(request).webmail.move(viewer.profile, conversation, "Trash", actor=viewer.actor.address):
        raise HTTPException(404, "Cette conversation n'existe pas.")
    return Response(status_code=204)
