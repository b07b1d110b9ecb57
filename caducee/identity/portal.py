"""The professional portal at /pro/ (French): sign in with Pro Santé Connect, see who is
signed in and their mailboxes, sign out here and at the provider.

Each refusal of a sign-in shows one page saying what happened and what to do; the reason
(never a token) goes to the log with the client's address.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from caducee.identity.professionals import Principal
from caducee.identity.sessions import SessionInfo
from caducee.identity.signin import SignInRefused, origin_of
from caducee.identity.tokens import TokenRefused
from caducee.identity.web import BINDING_COOKIE, SESSION_COOKIE, context, csrf_ok, render, set_cookie

log = logging.getLogger(__name__)
router = APIRouter(prefix="/pro", include_in_schema=False)

TYPES = {"PER": "Boîte personnelle", "ORG": "Boîte de votre structure", "CAB": "Boîte de votre cabinet"}
NOTICES = {"expire": "Votre session a pris fin. Reconnectez-vous pour continuer."}


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def signed_in(request: Request) -> tuple[SessionInfo, Principal] | None:
    """The portal session of this request and its professional (None: not signed in, or retired since)."""
    ctx = context(request)
    session = await ctx.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if session is None:
        return None
    try:
        principal = await ctx.directory.principal(session.national_id, session.acr)
    except TokenRefused as refused:  # retired since they signed in: the session ends
        log.warning("portal session of %s ended: %s", session.national_id, refused)
        await ctx.sessions.close(session.id)
        return None
    return session, principal


@router.get("/")
async def home(request: Request) -> Response:
    found = await signed_in(request)
    ctx = context(request)
    if found is None:
        response = render(
            request, "pro_home.html", notice=NOTICES.get(request.query_params.get("info", "")), configured=ctx.tokens is not None
        )
        if request.cookies.get(SESSION_COOKIE):
            response.delete_cookie(SESSION_COOKIE, path="/pro")
        return response
    session, principal = found
    settings = request.app.state.settings
    return render(
        request,
        "pro_account.html",
        area="espace",
        form_origin=origin_of(await ctx.signin.logout_url()),
        principal=principal,
        csrf=session.csrf_token,
        types=TYPES,
        hostname=settings.hostname,
        imap=_ports((settings.imaps_port, "TLS"), (settings.imap_port, "STARTTLS")),
        smtp=_ports((settings.submissions_port, "TLS"), (settings.submission_port, "STARTTLS")),
    )


def _ports(*offered: tuple[int, str]) -> str:
    """ "port 1993 (TLS) ou 1143 (STARTTLS)" for the listeners this server runs."""
    running = [f"{port} ({kind})" for port, kind in offered if port]
    return "port " + " ou ".join(running) if running else "non disponible sur ce serveur"


@router.get("/connexion")
async def start(request: Request) -> Response:
    ctx = context(request)
    try:
        url, browser = await ctx.signin.begin(_client(request))
    except SignInRefused as refused:
        log.warning("PSC sign-in from %s could not start: %s", _client(request), refused)
        return render(request, "pro_refused.html", 429 if refused.reason == "too-many" else 503, message=refused.message)
    response = redirect(url)
    set_cookie(response, ctx, BINDING_COOKIE, browser, path="/pro/connexion", max_age=600)
    return response


@router.get("/connexion/retour")
async def callback(request: Request) -> Response:
    ctx = context(request)
    query = request.query_params
    try:
        signed = await ctx.signin.finish(
            state=query.get("state", ""),
            code=query.get("code", ""),
            error=query.get("error", ""),
            issuer=query.get("iss", ""),
            browser=request.cookies.get(BINDING_COOKIE, ""),
        )
    except SignInRefused as refused:
        log.warning("PSC sign-in from %s refused: %s", _client(request), refused)
        status = 503 if refused.reason == "provider-unavailable" else 403
        response = render(request, "pro_refused.html", status, message=refused.message)
        response.delete_cookie(BINDING_COOKIE, path="/pro/connexion")
        return response
    principal = signed.principal
    token, _ = await ctx.sessions.open(principal.national_id, principal.acr, signed.provider_session)
    log.info("PSC sign-in from %s: %s (%s), acr %s", _client(request), principal.name, principal.national_id, principal.acr)
    response = redirect("/pro/")
    response.delete_cookie(BINDING_COOKIE, path="/pro/connexion")
    set_cookie(response, ctx, SESSION_COOKIE, token, path="/pro")
    return response


@router.post("/deconnexion")
async def logout(request: Request) -> Response:
    ctx = context(request)
    form = await request.form(max_files=0, max_fields=5, max_part_size=4096)
    session = await ctx.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if session is None:
        return redirect("/pro/?info=expire")
    if not csrf_ok(session.csrf_token, str(form.get("csrf", ""))):
        return render(request, "pro_refused.html", 403, message="Le formulaire a expiré. Rechargez la page et recommencez.")
    await ctx.sessions.close(session.id)
    log.info("portal logout of %s", session.national_id)
    response = redirect(await ctx.signin.logout_url() or "/pro/deconnecte")
    response.delete_cookie(SESSION_COOKIE, path="/pro")
    return response


@router.get("/deconnecte")
async def logged_out(request: Request) -> Response:
    return render(request, "pro_logged_out.html")
