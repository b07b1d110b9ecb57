"""The agenda's pages inside the webmail: the webmail's session, CSRF, base template and
styles, with the agenda's own templates looked up first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from caducee.agenda.service import Agenda
from caducee.webmail import web as webmail_web
from caducee.webmail.web import Viewer, remember_anonymous_csrf

_HERE = Path(__file__).parent
_WEBMAIL_LOADER = webmail_web.TEMPLATES.env.loader
assert _WEBMAIL_LOADER is not None
ENVIRONMENT = Environment(
    loader=ChoiceLoader([FileSystemLoader(str(_HERE / "templates")), _WEBMAIL_LOADER]),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)
ENVIRONMENT.filters.update(webmail_web.TEMPLATES.env.filters)
TEMPLATES = Jinja2Templates(env=ENVIRONMENT)
STATIC = _HERE / "static"


def agenda(request: Request) -> Agenda:
    return request.app.state.agenda


def page(request: Request, viewer: Viewer, template: str, status_code: int = 200, **values: Any) -> Response:
    """A signed-in agenda page, with what the webmail's base template expects."""
    values.setdefault("notice", None)
    response = TEMPLATES.TemplateResponse(request, template, {"viewer": viewer, "csrf": viewer.csrf, **values}, status_code=status_code)
    remember_anonymous_csrf(request, response)
    return response
