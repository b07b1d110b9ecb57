"""What every webmail request needs: the context, the signed-in person, CSRF, safe headers.

Cookies: `caducee_session` (the session token; HttpOnly, SameSite=Lax, Secure unless
configured off), `caducee_challenge` (between the two login steps, path /connexion and
the API) and `caducee_csrf` (the double-submit token of forms shown before login).
Forms after login carry the session's own CSRF token; the JSON API takes it in the
`X-CSRF-Token` header.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caducee.annuaire.patients import PatientAccount, Profile
from caducee.webmail.accounts import Accounts, SessionInfo
from caducee.webmail.codes import new_token
from caducee.webmail.drafts import Drafts
from caducee.webmail.selfservice import SelfService
from caducee.webmail.service import Webmail, french_date, french_time

SESSION_COOKIE = "caducee_session"
CHALLENGE_COOKIE = "caducee_challenge"
CSRF_COOKIE = "caducee_csrf"
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.auto_reload = False  # templates ship with the package: no stat() of each file on every page
TEMPLATES.env.filters["date_fr"] = french_date
TEMPLATES.env.filters["time_fr"] = french_time


@dataclass
class WebmailContext:
    accounts: Accounts
    webmail: Webmail
    cookie_secure: bool
    idle_minutes: int
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    selfservice: SelfService | None = None
    drafts: Drafts | None = None
    # Called with (patient id, mailbox id) of every profile a request shows, before it reads
    # them: the wiring connects the campaigns' filing on read (`campaigns.deliveries`).
    before_read: Callable[[list[tuple[int, int]]], Awaitable[object]] | None = None


def proxy_networks(networks: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(network, strict=False) for network in networks]


def _trusted(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request: Request) -> str:
    """The address the per-address lock-out counts: the socket's peer, unless that peer is
    one of the configured `trusted_proxies`. Then the X-Forwarded-For chain is read from the
    right (each proxy appends the address it received from) and the first address that is
    not itself a trusted proxy is the client: entries further left were written by the
    client and prove nothing. Forwarded and X-Real-IP are never read."""
    peer = request.scope.get("client")
    address = str(peer[0]) if peer else "?"
    networks = context(request).trusted_proxies
    if not networks or not _trusted(address, networks):
        return address
    hops = [hop.strip() for header in request.headers.getlist("x-forwarded-for") for hop in header.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # a malformed chain: count the proxy itself rather than believe it
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else address


def context(request: Request) -> WebmailContext:
    return request.app.state.webmail


@dataclass(frozen=True)
class Viewer:
    """The signed-in person and the profile they are looking at."""

    session: SessionInfo
    actor: PatientAccount
    profiles: list[Profile]
    profile: Profile

    @property
    def csrf(self) -> str:
        return self.session.csrf_token


async def current_viewer(request: Request) -> Viewer | None:
    """The viewer of this request, or None (no cookie, expired, or the profile was closed)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    ctx = context(request)
    session = await ctx.accounts.session(token)
    if session is None:
        return None
    profiles = await ctx.accounts.profiles(session.patient_id)
    if not profiles or profiles[0].account.status != "activated":
        return None
    acting = next((p for p in profiles if p.account.id == session.acting_patient_id), profiles[0])
    if ctx.before_read is not None:
        await ctx.before_read([(p.account.id, p.account.mailbox_id) for p in profiles])
    return Viewer(session, profiles[0].account, profiles, acting)


def set_cookie(response: Response, ctx: WebmailContext, name: str, value: str, *, path: str = "/", max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, secure=ctx.cookie_secure, httponly=True, samesite="lax")


def anonymous_csrf(request: Request) -> str:
    """The double-submit token for forms shown before login (a new one if none yet)."""
    return request.cookies.get(CSRF_COOKIE) or request.state.__dict__.setdefault("new_csrf", new_token())


def remember_anonymous_csrf(request: Request, response: Response) -> None:
    fresh = request.state.__dict__.get("new_csrf")
    if fresh:
        set_cookie(response, context(request), CSRF_COOKIE, fresh)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
    response = TEMPLATES.TemplateResponse(request, template, values, status_code=status_code)
    remember_anonymous_csrf(request, response)
    return response


# ---- middleware -------------------------------------------------------------------------------

SAFE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),  # health data never sits in a shared or disk cache
]
UNPROTECTED = ("/docs", "/redoc", "/openapi.json", "/metrics", "/healthz", "/.well-known", "/mail/config")


def safe_headers() -> dict[str, str]:
    """The same headers as text, for answers built outside the middleware (the 500 page is
    sent by Starlette's outermost error handler, which no middleware of ours wraps)."""
    return {name.decode(): value.decode() for name, value in SAFE_HEADERS}


class WebmailHeaders:
    """Adds the safe headers to every page and API answer, error pages included (413 from
    `BodyLimit`, which runs inside this one); not to /docs, whose viewer needs its inline
    start-up script."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNPROTECTED):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [(k, v) for k, v in SAFE_HEADERS if k not in present]
            await send(message)

        await self.app(scope, receive, with_headers)


TOO_LARGE = (
    '<!doctype html><html lang="fr"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
    '<title>Fichier trop lourd — Caducée</title><link rel="stylesheet" href="/static/webmail.css"></head><body>'
    '<main id="contenu"><h1>Fichier trop lourd</h1><p>Le fichier envoyé dépasse la limite de {limit} Mo. Rien n\'a été envoyé.</p>'
    "<p>Revenez en arrière et choisissez un fichier plus léger (par exemple une photo moins grande, ou un PDF).</p>"
    '<p><a href="/">Revenir à mes messages</a></p></main></body></html>'
)


class BodyLimit:
    """Refuses a request body larger than `limit` (413), before it is parsed or spooled,
    whether or not it declared its length.

    A body sent in chunks is counted as it arrives; once over the limit, the application is
    stopped (its next read raises) and whatever it answers instead (a framework that turns
    the failed read into "400 cannot parse the body", say) is replaced by the same 413 as a
    declared length gets: the answer depends on the size, not on how it was sent.
    """

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int | None = None, wider: tuple[tuple[str, int], ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit if upload_limit is not None else limit
        self.wider = wider  # (path prefix, its limit): the dossier API takes documents larger than an upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next((wide for prefix, wide in self.wider if scope["path"].startswith(prefix)), self.limit)
        shown = self.upload_limit if limit == self.limit else limit
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._drain(receive, 0, limit)
            await self._refuse(send, shown)
            return
        received = 0
        finished = False
        over = False
        started = False

        async def counting() -> Message:
            nonlocal received, finished, over
            if over:
                raise _TooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
                if received > limit:
                    over = True
                    raise _TooLarge()
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the application's own answer to a body we cut short is replaced below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting, tracking)
        except _TooLarge:
            pass
        if over and not started:
            if not finished:
                await self._drain(receive, received, limit)
            await self._refuse(send, shown)

    async def _drain(self, receive: Receive, already: int, limit: int) -> None:
        """Read and drop the rest of the body (up to a bound), so that the client, still
        sending, reads our answer instead of a reset connection. Nothing is kept."""
        seen = already
        while seen <= 4 * limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send: Send, shown: int) -> None:
        body = TOO_LARGE.format(limit=shown // 1_048_576).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


NUL_REFUSED = (
    '<!doctype html><html lang="fr"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
    '<title>Caractère non autorisé — Caducée</title><link rel="stylesheet" href="/static/webmail.css"></head><body>'
    '<main id="contenu"><h1>Caractère non autorisé</h1><p>Ce que vous avez envoyé contient un caractère invisible '
    "qui n'est pas accepté. Rien n'a été enregistré.</p><p>Revenez en arrière, effacez le champ et saisissez-le à nouveau.</p>"
    '<p><a href="/">Revenir à mes messages</a></p></main></body></html>'
)
_NUL_FORMS = (b"%00", b"\x00")
_NUL_JSON = (b"\\u0000", b"\x00")
_TEXT_BODIES = {b"application/x-www-form-urlencoded": _NUL_FORMS, b"application/json": _NUL_JSON}


class NoNulText:
    """Refuses (400) a query string, form or JSON body carrying a NUL character.

    No text column can hold one on PostgreSQL (SQLite stores it), so without this the same
    search or login answered 200 on one database and 500 on the other. Files (multipart)
    may hold any byte and are not looked at; the other bodies are small (BodyLimit runs
    outside this one) and are read whole, checked, then handed on as they came.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if any(marker in scope.get("query_string", b"").lower() for marker in _NUL_FORMS):
            await self._refuse(scope, send)
            return
        kind = dict(scope.get("headers", [])).get(b"content-type", b"").split(b";")[0].strip().lower()
        markers = _TEXT_BODIES.get(kind)
        if markers is None:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request").lower()
        if any(marker in body for marker in markers):
            await self._refuse(scope, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send) -> None:
        api = str(scope.get("path", "")).startswith("/api/")
        body = b'{"detail":"La demande contient un caract\\u00e8re nul, refus\\u00e9."}' if api else NUL_REFUSED.encode()
        kind = b"application/json" if api else b"text/html; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
