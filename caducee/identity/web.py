"""What the portal's pages and the bearer-protected APIs share: the identity context the
server builds, cookies, CSRF, the pages' security headers."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from caducee.identity.access import AccessTokens
from caducee.identity.professionals import Directory
from caducee.identity.sessions import ProSessions
from caducee.identity.signin import ProSignIn

SESSION_COOKIE = "caducee_pro_session"  # path /pro: never sent to the patients' webmail
BINDING_COOKIE = "caducee_pro_connexion"  # path /pro/connexion: ties a callback to the browser that started it
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.auto_reload = False

_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
    "form-action 'self'{extra}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


@dataclass
class IdentityContext:
    signin: ProSignIn
    sessions: ProSessions
    directory: Directory
    tokens: AccessTokens | None  # None when Pro Santé Connect is not configured
    cookie_secure: bool


def context(request: Request) -> IdentityContext:
    return request.app.state.identity


def set_cookie(response: Response, ctx: IdentityContext, name: str, value: str, *, path: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, secure=ctx.cookie_secure, httponly=True, samesite="lax")


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def render(request: Request, template: str, status_code: int = 200, *, form_origin: str = "", **values: Any) -> Response:
    """A portal page. Its CSP lets the logout form be redirected to the provider's origin
    (browsers apply form-action to a form's redirects too), and nowhere else."""
    response = TEMPLATES.TemplateResponse(request, template, values, status_code=status_code)
    secure(response, form_origin)
    return response


def secure(response: Response, form_origin: str = "") -> None:
    """The portal's security headers on a page rendered elsewhere (the dossier's pages for professionals)."""
    response.headers["content-security-policy"] = _CSP.format(extra=f" {form_origin}" if form_origin else "")
    response.headers["referrer-policy"] = "no-referrer"
    response.headers["cache-control"] = "no-store"
