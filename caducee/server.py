"""One process wiring every listener: HTTP (webmail, APIs), SMTP, IMAP and the relay.

`build_app` makes the FastAPI application on a given engine (tests start it on a real
socket); `serve` opens the database, applies migrations, seeds the demo world when asked,
and runs the listeners until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caducee import db
from caducee import webmail as webmail_package
from caducee.annuaire.api import router as annuaire_router
from caducee.config import Settings
from caducee.gateway.pipeline import AcceptPipeline
from caducee.history.service import AccessHistory
from caducee.mailbox.autoconfig import router as autoconfig_router
from caducee.webmail.accounts import Accounts
from caducee.webmail.api import router as webmail_api
from caducee.webmail.codes import CodeHasher
from caducee.webmail.notifier import notifier_from_settings
from caducee.webmail.pages import router as webmail_pages
from caducee.webmail.service import Webmail
from caducee.webmail.web import TEMPLATES, BodyLimit, WebmailContext, WebmailHeaders

log = logging.getLogger("caducee")


class Metrics:
    """Counters exposed at /metrics in Prometheus' text format."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, int], int] = {}

    def render(self) -> str:
        lines = [
            "# HELP caducee_uptime_seconds Seconds since the process started.",
            "# TYPE caducee_uptime_seconds gauge",
            f"caducee_uptime_seconds {time.time() - self.started:.0f}",
            "# HELP caducee_http_requests_total HTTP requests by method and status.",
            "# TYPE caducee_http_requests_total counter",
        ]
        for (method, status), count in sorted(self.requests.items()):
            lines.append(f'caducee_http_requests_total{{method="{method}",status="{status}"}} {count}')
        return "\n".join(lines) + "\n"


class CountRequests:
    """Counts answers by method and status (plain ASGI: Starlette's BaseHTTPMiddleware costs
    a task group per request, more than some of our pages)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                key = (scope["method"], message["status"])
                self.metrics.requests[key] = self.metrics.requests.get(key, 0) + 1
            await send(message)

        await self.app(scope, receive, counting)


def build_app(engine: AsyncEngine, settings: Settings, pipeline: AcceptPipeline | None = None) -> FastAPI:
    """The HTTP application on `engine`; the caller owns the engine's lifetime.

    `pipeline` is the gateway's accept pipeline, through which the webmail sends; without
    it the webmail reads but does not send (and says so).
    """
    webmail = webmail_context(engine, settings, pipeline)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await webmail.webmail.history.close()

    app = FastAPI(
        title="Caducée",
        description="Messagerie sécurisée de santé : annuaire, messagerie patient, services attachés.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.webmail = webmail
    app.add_middleware(WebmailHeaders)
    app.add_middleware(BodyLimit, limit=settings.webmail_max_upload + 1024 * 1024)
    metrics = Metrics()
    app.state.metrics = metrics

    app.add_middleware(CountRequests, metrics=metrics)

    @app.exception_handler(Exception)
    async def unavailable(request: Request, exc: Exception) -> Response:
        """A failure nobody foresaw (the database dropped its connections, say): the person
        sees a plain page in French and can try again; the details go to the log (the
        exception is raised on after this answer), never to the page."""
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "Service momentanément indisponible : réessayez dans un instant."}, status_code=500)
        return TEMPLATES.TemplateResponse(request, "unavailable.html", {}, status_code=500)

    @app.get("/healthz", tags=["operations"], summary="Liveness and database reachability")
    async def healthz() -> JSONResponse:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # the probe reports, it does not crash
            return JSONResponse({"status": "error", "database": str(exc)[:200]}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"], summary="Prometheus metrics")
    async def metrics_page() -> str:
        return metrics.render()

    app.include_router(annuaire_router)
    app.include_router(autoconfig_router)
    app.include_router(webmail_pages)
    app.include_router(webmail_api)
    app.mount("/static", StaticFiles(directory=str(Path(webmail_package.__file__).parent / "static")), name="static")
    return app


def webmail_context(engine: AsyncEngine, settings: Settings, pipeline: AcceptPipeline | None) -> WebmailContext:
    from caducee.crypto.atrest import BodyCipher, load_master_key

    key = load_master_key(settings.data_dir)
    accounts = Accounts(engine, settings, notifier_from_settings(settings), CodeHasher(key))
    webmail = Webmail(engine, settings, BodyCipher(key), pipeline, AccessHistory(engine))
    return WebmailContext(accounts, webmail, settings.webmail_cookie_secure, settings.webmail_idle_minutes)


async def prepare_database(settings: Settings, *, demo: bool) -> AsyncEngine:
    """Migrate the database to head, seed the demo world if asked; return the engine."""
    url = settings.effective_database_url
    await asyncio.to_thread(db.upgrade, url)
    engine = db.create_engine(url, pool_size=settings.database_pool_size)
    if demo:
        from caducee import demo as demo_world

        credentials = await demo_world.seed(engine, settings)
        where = demo_world.credentials_path(settings)
        if credentials is not None:
            log.info("demo world seeded; credentials in %s", where)
        else:
            log.info("database not empty: demo seed skipped (credentials stay in %s)", where)
    return engine


def settle_garbage_collector() -> None:
    """Move everything built at start-up (modules, the app, SQLAlchemy's and Jinja's caches)
    out of the collector's reach, and collect the young generations less often.

    A full collection walks every object in the process: with the start-up heap in it, one
    took a few hundred milliseconds, every few seconds under load, and showed as the p99 of
    every page (bench/webmail.py). Objects made after this are collected as usual.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _reusable_socket(host: str, port: int) -> socket.socket:
    """A listening socket several worker processes can share (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, *, demo: bool = False, migrate: bool = True, reuse_port: bool = False) -> None:
    """Run every listener until SIGINT/SIGTERM: HTTP, SMTP (MX, submission) and the relay."""
    import signal

    import uvicorn

    from caducee.gateway.runtime import start_gateway

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        engine = await prepare_database(settings, demo=demo)
    else:
        engine = db.create_engine(settings.effective_database_url, pool_size=settings.database_pool_size)
    gateway = await start_gateway(settings, engine, reuse_port=reuse_port)
    app = build_app(engine, settings, gateway.pipeline)
    config = uvicorn.Config(app, log_level=settings.log_level.lower(), access_log=False)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    sockets = [_reusable_socket(settings.http_host, settings.http_port)]
    settle_garbage_collector()
    log.info("HTTP on http://%s:%d/", settings.http_host, settings.http_port)
    try:
        await server.serve(sockets=sockets)
    finally:
        await gateway.stop()
        await engine.dispose()


def serve_workers(settings: Settings, argv: list[str], workers: int, *, demo: bool) -> int:
    """Migrate and seed once, then run `workers` processes sharing every port."""
    import signal
    import subprocess
    import sys

    asyncio.run(_prepare_only(settings, demo=demo))
    children = [subprocess.Popen([sys.executable, "-m", "caducee", *argv, "--worker-process"]) for _ in range(workers)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


async def _prepare_only(settings: Settings, *, demo: bool) -> None:
    from caducee.crypto.atrest import load_master_key
    from caducee.gateway.runtime import tls_files

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tls_files(settings)  # the development PKI and the master key, before the workers race for them
    load_master_key(settings.data_dir)
    engine = await prepare_database(settings, demo=demo)
    await engine.dispose()
