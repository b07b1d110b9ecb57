"""The one place where components are wired together: HTTP (webmail, APIs), SMTP, IMAP,
the relay, notifications.

Components never import each other to be started: this module builds each one from the
settings and hands it what it needs (the webmail gets the gateway's accept pipeline, the
pipeline gets the notifier's new-mail alerts, IMAP gets the login throttle SMTP uses).
`build_app` makes the FastAPI application on a given engine (tests start it on a real
socket); `serve` opens the database, applies migrations, seeds the demo world when asked,
and runs the listeners until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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
from caducee.annuaire.service import ensure_postmaster
from caducee.campaigns.api import router as campaigns_router
from caducee.campaigns.runner import Runner
from caducee.campaigns.service import Campaigns
from caducee.config import Settings
from caducee.core.cpu import CpuPool, shared_pool
from caducee.crypto.atrest import BodyCipher, load_master_key
from caducee.crypto.material import material_from_settings
from caducee.crypto.pki import Pair, development_space
from caducee.crypto.tls import client_context, server_context
from caducee.dossier.intake import XdmIntake
from caducee.dossier.pages import router as dossier_pages
from caducee.dossier.service import Dossier
from caducee.gateway.pipeline import AcceptPipeline, Channel, Envelope
from caducee.gateway.protection import SmimeStage, WithoutCertificate
from caducee.gateway.relay import RelayWorker
from caducee.gateway.smtp import ListenerConfig, start_listener
from caducee.history.chain import history_key
from caducee.history.service import AccessHistory
from caducee.identity.mailauth import MailboxAuthenticator
from caducee.imap.server import ImapServer, start_imap
from caducee.mailbox.autoconfig import router as autoconfig_router
from caducee.notify.alerts import NewMailAlerts
from caducee.notify.notifier import notifier_from_settings
from caducee.webmail.accounts import Accounts
from caducee.webmail.api import router as webmail_api
from caducee.webmail.codes import CodeHasher
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
    dossier, intake = dossier_context(engine, settings, webmail.webmail.history, pipeline)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if intake is not None:
                await intake.close()
            await dossier.stop()
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
    app.state.campaigns = Campaigns(engine, settings, pipeline)
    app.state.dossier = dossier
    app.state.dossier_intake = intake
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
    app.include_router(campaigns_router)
    app.include_router(autoconfig_router)
    app.include_router(webmail_pages)
    app.include_router(webmail_api)
    app.include_router(dossier_pages)
    app.mount("/static", StaticFiles(directory=str(Path(webmail_package.__file__).parent / "static")), name="static")
    return app


def webmail_context(engine: AsyncEngine, settings: Settings, pipeline: AcceptPipeline | None) -> WebmailContext:
    key = load_master_key(settings.data_dir)
    accounts = Accounts(engine, settings, notifier_from_settings(settings), CodeHasher(key))
    webmail = Webmail(engine, settings, BodyCipher(key), pipeline, AccessHistory(engine, history_key(key)))
    return WebmailContext(accounts, webmail, settings.webmail_cookie_secure, settings.webmail_idle_minutes)


def dossier_context(
    engine: AsyncEngine, settings: Settings, history: AccessHistory, pipeline: AcceptPipeline | None
) -> tuple[Dossier, XdmIntake | None]:
    """The dossier (pages and, later, the professionals' API) and, when there is a pipeline,
    its intake of IHE_XDM.ZIP as one of the pipeline's post-delivery consumers."""
    cipher = BodyCipher(load_master_key(settings.data_dir))
    dossier = Dossier(engine, settings, cipher, history, notifier_from_settings(settings))
    if pipeline is None:
        return dossier, None
    postmaster = f"postmaster@{settings.operator_domain}"

    async def relay_notice(to: str, raw: bytes) -> None:
        """A refusal notice to another operator's sender goes out like any of our messages."""
        result = await pipeline.accept(Envelope(postmaster, [to], raw, Channel.API, authenticated=postmaster))
        if not result.accepted:
            log.warning("dossier refusal notice to %s not sent: %s", to, result.reply)

    intake = XdmIntake(engine, settings, cipher, dossier, relay_notice)
    pipeline.on_delivered.append(intake.delivered)
    return dossier, intake


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
    async with engine.begin() as conn:  # after the demo seed, which only seeds an empty annuaire
        await ensure_postmaster(conn, settings.operator_domain)
    return engine


# ---- the mail side of a process: SMTP and IMAP listeners, group commit, relay ----------------


@dataclass(frozen=True)
class TlsFiles:
    server: Pair
    anchors: Path
    relay_client: Pair
    password: bytes | None = None


def tls_files(settings: Settings) -> TlsFiles:
    """Certificates from the settings, or the test trust space in `<data dir>/pki` (created if absent)."""
    if settings.tls_cert:
        missing = [name for name in ("tls_key", "trust_anchors", "relay_client_cert", "relay_client_key") if not getattr(settings, name)]
        if missing:
            raise ValueError(f"tls_cert is set: set {', '.join(missing)} too")
        return TlsFiles(
            Pair(Path(settings.tls_cert), Path(settings.tls_key)),
            Path(settings.trust_anchors),
            Pair(Path(settings.relay_client_cert), Path(settings.relay_client_key)),
        )
    log.warning("no tls_cert configured: using the test trust space in %s", settings.data_dir / "pki")
    space, passphrase = development_space(settings)
    anchors = Path(settings.trust_anchors) if settings.trust_anchors else space.anchors
    return TlsFiles(space.server, anchors, space.operator, passphrase)


def smime_stage(settings: Settings, engine: AsyncEngine, pool: CpuPool) -> SmimeStage | None:
    """The S/MIME stage, or None when `smime = "off"`."""
    if settings.smime == "off":
        log.warning("S/MIME is off: messages are neither signed, encrypted nor verified")
        return None
    return SmimeStage(
        engine,
        material_from_settings(settings),
        pool,
        without_certificate=WithoutCertificate(settings.smime_without_certificate),
        cache_seconds=settings.directory_cache_seconds,
    )


@dataclass
class GatewayRuntime:
    pipeline: AcceptPipeline
    relay: RelayWorker
    servers: list[asyncio.base_events.Server] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    imap: ImapServer | None = None

    async def stop(self) -> None:
        if self.imap is not None:
            await self.imap.stop()
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pipeline.close()


async def start_gateway(settings: Settings, engine: AsyncEngine, *, reuse_port: bool = False, relay: bool = True) -> GatewayRuntime:
    files = tls_files(settings)
    cipher = BodyCipher(load_master_key(settings.data_dir))
    plain = server_context(files.server, password=files.password)
    mutual = server_context(files.server, client_ca=files.anchors, password=files.password)
    relay_context: ssl.SSLContext = client_context(files.anchors, files.relay_client, password=files.password)
    worker = RelayWorker(engine, settings, cipher, relay_context)
    pool = shared_pool(settings.cpu_workers)
    await pool.warm()
    pipeline = AcceptPipeline(engine, settings, cipher, on_queued=worker.wake, smime=smime_stage(settings, engine, pool), cpu=pool)
    pipeline.on_delivered.append(NewMailAlerts(engine, settings, notifier_from_settings(settings)).delivered)
    authenticator = MailboxAuthenticator(engine, settings.local_domains)
    runtime = GatewayRuntime(pipeline, worker)
    listeners = [
        ListenerConfig("mx", settings.smtp_host, settings.mx_port, mutual),
        ListenerConfig("submission", settings.smtp_host, settings.submission_port, plain, trusted_networks=settings.trusted_networks),
        ListenerConfig("submission", settings.smtp_host, settings.submissions_port, plain, implicit_tls=True),
    ]
    for config in listeners:
        if config.port == 0:
            continue
        config.max_message_size = settings.max_message_size
        config.max_connections_per_client = settings.smtp_max_connections_per_client
        config.hostname = settings.hostname
        config.timeout = settings.smtp_timeout
        config.data_timeout = settings.smtp_data_timeout
        runtime.servers.append(await start_listener(config, pipeline, authenticator, reuse_port=reuse_port))
        log.info("SMTP %s on %s:%d%s", config.kind, config.host, config.port, " (implicit TLS)" if config.implicit_tls else "")
    if settings.imap_port or settings.imaps_port:
        runtime.imap = await start_imap(settings, engine, cipher, plain, authenticator=authenticator, reuse_port=reuse_port)
    if relay:
        runtime.tasks.append(asyncio.create_task(worker.run_forever(), name="relay"))
    return runtime


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
    # Every process fans campaigns out: batches are claimed, so processes and nodes share the work.
    campaigns = asyncio.create_task(Runner(engine, app.state.campaigns).run_forever(settings.campaign_poll_seconds), name="campaigns")
    settle_garbage_collector()
    log.info("HTTP on http://%s:%d/", settings.http_host, settings.http_port)
    try:
        await server.serve(sockets=sockets)
    finally:
        campaigns.cancel()
        await asyncio.gather(campaigns, return_exceptions=True)
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
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tls_files(settings)  # the development PKI and the master key, before the workers race for them
    load_master_key(settings.data_dir)
    engine = await prepare_database(settings, demo=demo)
    await engine.dispose()
