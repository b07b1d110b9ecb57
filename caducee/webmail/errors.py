"""Error answers: French, with the same security headers as every page, never echoing input.

- 404, 405 and other HTTP errors: a French page (or `{"detail": ...}` under /api/) instead of
  Starlette's English "Not Found".
- Validation errors (422): which field and what kind of problem, never the value sent.
  FastAPI's default answer repeats each invalid `input` (and for a missing field the whole
  body), which put a submitted password into the response and whatever logs it.
- A failure nobody foresaw (500): a plain French page; the details go to the log only. This
  answer is sent by Starlette's outermost error middleware, outside our header middleware,
  so it sets the headers itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from caducee.webmail.web import TEMPLATES, anonymous_csrf, safe_headers

FRENCH = {
    400: "La demande n'est pas valide.",
    401: "Vous n'êtes pas connecté, ou votre session a pris fin.",
    403: "Accès refusé.",
    404: "Cette page n'existe pas.",
    405: "Cette action n'est pas possible sur cette page.",
    413: "Le fichier envoyé est trop lourd.",
    415: "Ce type de contenu n'est pas accepté.",
    422: "La demande n'est pas valide.",
    429: "Trop d'essais : réessayez plus tard.",
}
UNREADABLE_FORM = (
    "Le formulaire envoyé n'a pas pu être lu : il est incomplet, ou contient trop de champs ou de fichiers. Rechargez la page et réessayez."
)
UNAVAILABLE = "Service momentanément indisponible : réessayez dans un instant."
FIELD_NAMES = {"identifier": "identifiant", "password": "mot de passe", "code": "code", "text": "texte", "file": "fichier"}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _page(request: Request, status: int, template: str, **values: Any) -> Response:
    response = TEMPLATES.TemplateResponse(request, template, {"csrf": anonymous_csrf(request), **values}, status_code=status)
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else ""
    if _unreadable_form(exc):
        detail = UNREADABLE_FORM
    elif not detail or detail == _starlette_phrase(exc.status_code):
        detail = FRENCH.get(exc.status_code, "La demande n'a pas abouti.")
    headers = dict(exc.headers or {})
    if _is_api(request):
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)
    if exc.status_code == 404:
        return _page(request, 404, "not_found.html")
    return _page(request, exc.status_code, "error.html", title=FRENCH.get(exc.status_code, "Erreur"), message=detail)


def _unreadable_form(exc: StarletteHTTPException) -> bool:
    """A form the framework could not read: Starlette's parser said why in English ("Too
    many files. Maximum number of files is 1000.", "Missing boundary in multipart."), and
    FastAPI's "There was an error parsing the body"; the person reads French."""
    if exc.status_code != 400:
        return False
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, MultiPartException) or exc.detail == "There was an error parsing the body"


def _starlette_phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _problem(error: dict[str, Any]) -> dict[str, Any]:
    """An error as we show it: where and what kind, without `input` or `ctx` (which hold the value)."""
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    return {"loc": location, "type": str(error.get("type", ""))}


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [_problem(error) for error in exc.errors()]
    if problems and all(problem["loc"][:1] == ["path"] for problem in problems):
        # A path whose id is not a number or no row's (`core.ids.RowId`) names nothing.
        return await http_error(request, StarletteHTTPException(404))
    fields = sorted({FIELD_NAMES.get(p["loc"][-1], p["loc"][-1]) for p in problems if p["loc"]})
    sentence = "La demande n'est pas valide" + (f" (champ{'s' if len(fields) > 1 else ''} : {', '.join(fields)})." if fields else ".")
    if _is_api(request):
        return JSONResponse({"detail": sentence, "errors": problems}, status_code=422)
    return _page(request, 400, "error.html", title="Demande non valide", message=sentence)


async def unexpected(request: Request, exc: Exception) -> Response:
    """A failure nobody foresaw (the database dropped its connections, say): the person sees
    a plain page in French and can try again; Starlette logs the exception after this."""
    headers = safe_headers()
    if _is_api(request):
        return JSONResponse({"detail": UNAVAILABLE}, status_code=500, headers=headers)
    response = TEMPLATES.TemplateResponse(request, "unavailable.html", {}, status_code=500)
    response.headers.update(headers)
    return response


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
