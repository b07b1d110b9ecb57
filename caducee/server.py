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
import errno
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caducee import __version__, db
from caducee import webmail as webmail_package
from caducee.agenda import background as agenda_background
from caducee.agenda.invitations import Intake, wants_invitation
from caducee.agenda.pages import router as agenda_pages
from caducee.agenda.service import Agenda
from caducee.agenda.web import STATIC as AGENDA_STATIC
from caducee.annuaire.api import router as annuaire_router
from caducee.annuaire.service import ensure_postmaster
from caducee.campaigns.api import router as campaigns_router
from caducee.campaigns.deliveries import Deliveries
from caducee.campaigns.runner import Runner
from caducee.campaigns.service import Campaigns
from caducee.config import ENV_PREFIX, ROLES, Settings
from caducee.core import logcontext, metrics, pseudonyms
from caducee.core.cpu import CpuPool, shared_pool
from caducee.core.throttle import LoginThrottle
from caducee.crypto.atrest import BodyCipher, load_master_key
from caducee.crypto.material import material_from_settings
from caducee.crypto.pki import Pair, development_space, key_passphrase
from caducee.crypto.tls import client_context, server_context
from caducee.crypto.tls import reload as reload_contexts
from caducee.dossier.api import router as dossier_api
from caducee.dossier.intake import XdmIntake, wants_package
from caducee.dossier.pages import router as dossier_pages
from caducee.dossier.pro_pages import router as dossier_pro_pages
from caducee.dossier.service import Dossier
from caducee.gateway.pipeline import AcceptPipeline, Channel, Envelope
from caducee.gateway.protection import SmimeStage, WithoutCertificate
from caducee.gateway.relay import QueueCollector, RelayWorker, queue_stats
from caducee.gateway.smtp import ListenerConfig, close_sessions, start_listener
from caducee.history.chain import history_key
from caducee.history.service import AccessHistory
from caducee.identity import api as identity_api
from caducee.identity import portal as identity_portal
from caducee.identity.mailauth import MailboxAuthenticator
from caducee.identity.runtime import Identity, build_identity
from caducee.imap.server import ImapServer, start_imap
from caducee.jobs.runner import Job, JobRunner
from caducee.limits.service import DatabaseFailures, Windows
from caducee.mailbox.autoconfig import router as autoconfig_router
from caducee.notify.alerts import NewMailAlerts
from caducee.notify.notifier import notifier_from_settings
from caducee.webmail import errors
from caducee.webmail.accounts import Accounts
from caducee.webmail.api import router as webmail_api
from caducee.webmail.codes import CodeHasher
from caducee.webmail.drafts import Drafts
from caducee.webmail.pages import router as webmail_pages
from caducee.webmail.selfservice import SelfService, muted_addresses
from caducee.webmail.service import Webmail
from caducee.webmail.web import BodyLimit, NoNulText, WebmailContext, WebmailHeaders, proxy_networks

log = logging.getLogger("caducee")


def request_area(path: str) -> str:
    """A bounded label for a request's path: the latency of the webmail's pages apart from the APIs'."""
    if path.startswith("/api/"):
        return "api"
    if path in {"/healthz", "/metrics"}:
        return "operations"
    for prefix in ("/static", "/agenda/static", "/pro/static", "/docs"):
        if path.startswith(prefix):
            return "static"
    for prefix in ("/pro", "/agenda", "/dossier"):
        if path.startswith(prefix):
            return prefix[1:]
    return "webmail"


class CountRequests:
    """Counts answers by method and status and times them by area, in prometheus-client's
    metrics (plain ASGI: Starlette's BaseHTTPMiddleware costs a task group per request, more
    than some of our pages)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        logcontext.begin("http")

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics.http_requests.labels(scope["method"], str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            metrics.http_seconds.labels(request_area(scope.get("path", ""))).observe(time.perf_counter() - started)


def build_app(engine: AsyncEngine, settings: Settings, pipeline: AcceptPipeline | None = None, identity: Identity | None = None) -> FastAPI:
    """The HTTP application on `engine`; the caller owns the engine's lifetime.

    `pipeline` is the gateway's accept pipeline, through which the webmail sends; without
    it the webmail reads but does not send (and says so); the agenda reads the invitations it
    delivers (a post-delivery consumer) and answers them through it. `identity` is the process's
    Pro Santé Connect side, shared with the mail listeners; without it the app builds its own.
    """
    webmail = webmail_context(engine, settings, pipeline)
    own_identity = identity is None
    identity = identity or build_identity(engine, settings)
    dossier, intake = dossier_context(engine, settings, webmail.webmail.history, pipeline)
    invitations = None
    if pipeline is not None:
        invitations = Intake(engine, BodyCipher(load_master_key(settings.data_dir)))
        # This process files packages and invitations: those it accepts right after their commit,
        # and, by its poll, those any node accepted (a mail-only node) or left behind (a crash).
        want_post_delivery(pipeline)
        assert intake is not None
        pipeline.post_delivery.work("dossier", intake.file)
        pipeline.post_delivery.work("agenda", invitations.file)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if pipeline is not None:
            pipeline.post_delivery.start()
        try:
            yield
        finally:
            if pipeline is not None:
                await pipeline.post_delivery.stop()
            await dossier.stop()
            await webmail.webmail.history.close()
            if own_identity:
                await identity.close()

    app = FastAPI(
        title="Caducée",
        description="Messagerie sécurisée de santé : annuaire, messagerie patient, services attachés.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served below from the package's own copy of Swagger UI: /docs works offline
        redoc_url=None,
    )
    offline_docs(app)
    app.state.engine = engine
    app.state.settings = settings
    app.state.webmail = webmail
    app.state.campaigns = Campaigns(engine, settings, pipeline)
    # Last added runs first: the headers wrap the body limit, so its 413 carries them too;
    # the body limit wraps the NUL check, which then reads only bounded bodies.
    app.add_middleware(NoNulText)
    app.add_middleware(
        BodyLimit,
        limit=settings.webmail_max_upload + 1024 * 1024,
        upload_limit=settings.webmail_max_upload,
        wider=(("/api/v1/dossier/", settings.dossier_max_document + 256 * 1024),),
    )
    app.state.identity = identity.context
    app.state.dossier = dossier
    app.state.dossier_intake = intake
    app.state.agenda = Agenda(engine, settings, pipeline)
    app.state.agenda_intake = invitations
    app.add_middleware(WebmailHeaders)
    app.add_middleware(CountRequests)
    errors.install(app)
    operations_routes(app, engine, pipeline)

    app.include_router(annuaire_router)
    app.include_router(campaigns_router)
    app.include_router(autoconfig_router)
    app.include_router(webmail_pages)
    app.include_router(webmail_api)
    app.include_router(identity_portal.router)
    app.include_router(identity_api.router)
    app.include_router(dossier_pages)
    app.include_router(dossier_api)
    app.include_router(dossier_pro_pages)
    app.include_router(agenda_pages)
    app.mount("/agenda/static", StaticFiles(directory=str(AGENDA_STATIC)), name="agenda-static")
    app.mount("/static", StaticFiles(directory=str(Path(webmail_package.__file__).parent / "static")), name="static")
    app.mount("/pro/static", StaticFiles(directory=str(Path(identity_portal.__file__).parent / "static")), name="pro-static")
    return app


def operations_routes(app: FastAPI, engine: AsyncEngine, pipeline: AcceptPipeline | None) -> None:
    """/healthz and /metrics: on every node, whatever its roles (a load balancer or a
    container engine probes each node the same way)."""
    probe = Windows(engine, "healthz")
    probe_key = f"{socket.gethostname()}:{os.getpid()}"

    @app.get("/healthz", tags=["operations"], summary="Liveness: the store commits", response_model=Health)
    async def healthz() -> JSONResponse:
        """Unhealthy (503) when a write cannot commit: a full disk left reads working (a
        `SELECT 1` said "ok") while every message got 451. The probe is a one-row write of
        its own, and the gateway's last group commit must not have failed lately.

        "Lately" (`COMMIT_FAILURE_SHOWN` seconds): once the probe writes again, a failure of
        the messages' commit is shown only for a while, else a node whose disk came back
        would stay unhealthy until a message commits, which a load balancer that drained it
        never sends: it would never come back."""
        try:
            await probe.claim([probe_key], 0)
        except Exception as exc:  # the probe reports, it does not crash
            return JSONResponse({"status": "error", "database": str(exc)[:200]}, status_code=503)
        committer = pipeline.committer if pipeline is not None else None
        if committer is not None and committer.failing and time.monotonic() - committer.last_failure < COMMIT_FAILURE_SHOWN:
            return JSONResponse({"status": "error", "database": "the last group commit of messages failed"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"], summary="Prometheus metrics (every worker of this server)")
    async def metrics_page() -> Response:
        try:
            async with engine.connect() as conn:
                queue = await queue_stats(conn)
        except Exception:  # the scrape still shows the processes' metrics
            log.exception("queue statistics not read for /metrics")
            queue = []
        return Response(metrics.render([QueueCollector(queue)]), media_type=CONTENT_TYPE_LATEST)


def build_operations_app(engine: AsyncEngine, pipeline: AcceptPipeline | None = None) -> FastAPI:
    """The HTTP app of a node without the `http` role: /healthz and /metrics only, no
    webmail, no API (so nothing there needs the master key); `pipeline`, an SMTP node's, for
    /healthz's check of its group commits."""
    app = FastAPI(title="Caducée (operations)", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CountRequests)
    operations_routes(app, engine, pipeline)
    return app


class Health(BaseModel):
    status: str = Field(description="ok, or error when the database cannot be reached")
    database: str | None = Field(default=None, description="The database's error, when there is one")


def offline_docs(app: FastAPI) -> None:
    """/docs from files shipped in a package (fastapi-offline's copy of Swagger UI), not a
    CDN: an operator's machine without Internet access still shows the API."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Caducée — API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )


def webmail_context(engine: AsyncEngine, settings: Settings, pipeline: AcceptPipeline | None) -> WebmailContext:
    key = load_master_key(settings.data_dir)
    pseudonyms.configure(key)
    accounts = Accounts(engine, settings, notifier_from_settings(settings), CodeHasher(key), failures=DatabaseFailures(engine))
    cipher = BodyCipher(key)
    webmail = Webmail(engine, settings, cipher, pipeline, AccessHistory(engine, history_key(key)))
    return WebmailContext(
        accounts,
        webmail,
        settings.webmail_cookie_secure,
        settings.webmail_idle_minutes,
        proxy_networks(settings.trusted_proxies),
        SelfService(engine, accounts),
        Drafts(engine, cipher),
        # Campaigns are filed into an inbox when the webmail opens it (fan-out on read).
        Deliveries(engine).materialise,
    )


def dossier_context(
    engine: AsyncEngine, settings: Settings, history: AccessHistory, pipeline: AcceptPipeline | None
) -> tuple[Dossier, XdmIntake | None]:
    """The dossier (pages and, later, the professionals' API) and, when there is a pipeline,
    its intake of IHE_XDM.ZIP (`build_app` makes it a post-delivery runner)."""
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
    return dossier, intake


def want_post_delivery(pipeline: AcceptPipeline) -> None:
    """The durable post-delivery consumers' predicates, on every node (a mail-only node too
    writes the rows that the `http` nodes work): the dossier's packages, the agenda's invitations."""
    pipeline.post_delivery.want("dossier", wants_package)
    pipeline.post_delivery.want("agenda", wants_invitation)


COMMIT_FAILURE_SHOWN = 30.0  # seconds /healthz reports a failed group commit while its own probe writes


class StartupRefused(RuntimeError):
    """A setting a node of a real deployment must have is missing; the message names it."""


def purge_jobs(engine: AsyncEngine, settings: Settings | None = None) -> list[Job]:
    """The periodic purges, each a function of the component that owns the rows."""
    from datetime import timedelta

    from caducee.campaigns.service import campaign_messages
    from caducee.gateway.postdelivery import purge as purge_post_delivery
    from caducee.gateway.relay import queued_messages
    from caducee.identity.sessions import purge_expired as purge_identity
    from caducee.limits.service import purge as purge_limits
    from caducee.mailbox.store import purge_orphan_messages, purge_tombstones
    from caducee.traces.service import purge as purge_traces
    from caducee.webmail.accounts import purge_expired as purge_webmail

    async def keep(conn: Any, ids: list[int]) -> set[int]:
        return await queued_messages(conn, ids) | await campaign_messages(conn, ids)

    def counted(what: str, work: Callable[[], Any]) -> Callable[[], Any]:
        async def run() -> str:
            return f"{await work()} {what}"

        return run

    hour = 3600.0
    retention = (settings or Settings()).trace_retention_days
    return [
        Job("purge-imap-tombstones", hour, counted("tombstones deleted", lambda: purge_tombstones(engine, timedelta(days=1)))),
        Job("purge-orphan-bodies", hour, counted("bodies deleted", lambda: purge_orphan_messages(engine, timedelta(days=1), keep))),
        Job("purge-webmail-expired", hour / 4, counted("sessions, challenges and codes deleted", lambda: purge_webmail(engine))),
        Job("purge-identity-expired", hour / 4, counted("portal sessions and sign-ins deleted", lambda: purge_identity(engine))),
        Job("purge-limits", hour, counted("counters deleted", lambda: purge_limits(engine))),
        Job("purge-traces", hour, counted("traces past retention deleted", lambda: purge_traces(engine, timedelta(days=retention)))),
        Job("purge-post-delivery", hour, counted("post-delivery rows deleted", lambda: purge_post_delivery(engine))),
    ]


def check_deployment(settings: Settings, *, demo: bool) -> None:
    """Refuse to start a PostgreSQL node that would make up its own secrets.

    Several nodes share one PostgreSQL. A master key created in each data directory would
    seal bodies under a different key on each node (each reading only its own), and a test
    trust space made by each node would give each its own CA. So, on PostgreSQL, the master
    key must be given (`CADUCEE_MASTER_KEY`, the same on every node) and so must the
    certificate files; the generated ones stay a convenience of SQLite and `--demo`.
    """
    if demo or db.is_sqlite(settings.effective_database_url):
        return
    problems = []
    if not os.environ.get("CADUCEE_MASTER_KEY"):
        problems.append(
            "set CADUCEE_MASTER_KEY (base64 of 32 bytes, the same on every node; `caducee keys generate` makes one): "
            "a key file made by each data directory would seal bodies under a different key on each node"
        )
    if not settings.tls_cert:
        problems.append("set tls_cert, tls_key, trust_anchors, relay_client_cert and relay_client_key (CADUCEE_TLS_CERT...)")
    if settings.smime == "enforce" and not settings.smime_cert:
        problems.append('set smime_cert, smime_key and smime_keys_dir (CADUCEE_SMIME_CERT...), or smime = "off"')
    if problems:
        raise StartupRefused(
            "on PostgreSQL a node needs its secrets given, not generated (the test trust space is for SQLite and --demo only): "
            + "; ".join(problems)
        )


async def prepare_database(settings: Settings, *, demo: bool) -> AsyncEngine:
    """Check the schema is current (migrate it only for `--demo` on SQLite, a single
    process), seed the demo world if asked; return the engine."""
    url = settings.effective_database_url
    if demo and db.is_sqlite(url):
        await asyncio.to_thread(db.upgrade, url)
    else:
        await asyncio.to_thread(db.check_schema_current, url)
    engine = db.create_engine(url, pool_size=settings.database_pool_size)
    if demo:
        from caducee import demo as demo_world

        credentials = await demo_world.seed(engine, settings)
        where = demo_world.credentials_path(settings)
        if credentials is not None:
            await seed_demo_messages(engine, settings, credentials)
            log.info("demo world seeded; credentials in %s", where)
        else:
            log.info("database not empty: demo seed skipped (credentials stay in %s)", where)
    async with engine.begin() as conn:  # after the demo seed, which only seeds an empty annuaire
        await ensure_postmaster(conn, settings.operator_domain)
    return engine


async def seed_demo_messages(engine: AsyncEngine, settings: Settings, credentials: dict[str, Any]) -> None:
    """The demo world's first messages, through an accept pipeline of their own (S/MIME as
    configured, one CPU worker, closed after): every `serve --demo` path seeds the same way,
    before any listener's pipeline exists. No post-delivery consumer runs: no "a message waits"
    email for mail the demo wrote itself."""
    from caducee import demo as demo_world
    from caducee.core.cpu import CpuPool
    from caducee.mailbox.mailstore import MailStore

    pool = CpuPool(1)
    pipeline = AcceptPipeline(
        engine, settings, BodyCipher(load_master_key(settings.data_dir)), smime=smime_stage(settings, engine, pool), cpu=pool
    )
    store = MailStore(engine, pipeline.cipher)
    try:
        subjects = await demo_world.send_messages(pipeline, settings, credentials, store)
        log.info("demo messages delivered: %s", "; ".join(subjects))
    finally:
        await store.close()
        await pipeline.close()
        pool.close()


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
        # A configured key may be encrypted with the passphrase derived from the master key, as
        # `smime_key` is (the test trust space's files then serve as configured files); OpenSSL
        # ignores the passphrase for a key in clear.
        return TlsFiles(
            Pair(Path(settings.tls_cert), Path(settings.tls_key)),
            Path(settings.trust_anchors),
            Pair(Path(settings.relay_client_cert), Path(settings.relay_client_key)),
            key_passphrase(load_master_key(settings.data_dir)),
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
    listeners: list[ListenerConfig] = field(default_factory=list)
    reload_tls: Callable[[], None] = lambda: None  # SIGHUP: the certificate files again (CRLs are re-read when they change)

    async def stop(self) -> None:
        """SIGTERM: stop accepting, let messages being accepted get their answer, tell the
        other SMTP sessions 421 and IMAP sessions BYE, finish the group commits in flight."""
        for server in self.servers:
            server.close()
        await close_sessions(self.listeners)
        if self.imap is not None:
            await self.imap.stop()
        for server in self.servers:
            await server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pipeline.close()


async def start_gateway(
    settings: Settings,
    engine: AsyncEngine,
    *,
    reuse_port: bool = False,
    relay: bool = True,
    smtp: bool = True,
    imap: bool = True,
    sockets: dict[str, socket.socket] | None = None,
    identity: Identity | None = None,
) -> GatewayRuntime:
    """SMTP, IMAP and the relay, on `sockets` (from `bind_listeners`) when given, else binding
    their own. With `identity` (Pro Santé Connect configured), submission and IMAP also take
    tokens (OAUTHBEARER, XOAUTH2), under the passwords' lock-out. The pipeline is built
    whatever the flags: the webmail and the campaigns send through it."""
    sockets = sockets or {}
    files = tls_files(settings)
    cipher = BodyCipher(load_master_key(settings.data_dir))
    plain = server_context(files.server, password=files.password)
    mutual = server_context(files.server, client_ca=files.anchors, password=files.password)
    relay_context: ssl.SSLContext = client_context(files.anchors, files.relay_client, password=files.password)
    worker = RelayWorker(engine, settings, cipher, relay_context)
    pool = shared_pool(settings.cpu_workers)
    await pool.warm()
    pipeline = AcceptPipeline(engine, settings, cipher, on_queued=worker.wake, smime=smime_stage(settings, engine, pool), cpu=pool)
    want_post_delivery(pipeline)
    # New-mail alerts stay in memory, in the accepting process: best effort by design.
    pipeline.on_delivered.append(
        NewMailAlerts(
            engine,
            settings,
            notifier_from_settings(settings),
            muted=lambda addresses: muted_addresses(engine, addresses),
            claim=Windows(engine, "new-mail-alert").claim,
        ).delivered
    )
    # Lock-out counters in the database: every process and node counts the same failures.
    authenticator = MailboxAuthenticator(engine, settings.local_domains, LoginThrottle(store=DatabaseFailures(engine), namespace="mail"))
    smtp_tokens = identity.mail(authenticator.throttle, "SMTP") if identity is not None else None
    imap_tokens = identity.mail(authenticator.throttle, "IMAP") if identity is not None else None
    runtime = GatewayRuntime(pipeline, worker)
    runtime.reload_tls = lambda: reload_contexts(
        [(plain, files.server, None), (mutual, files.server, files.anchors), (relay_context, files.relay_client, files.anchors)],
        password=files.password,
    )
    listeners = [
        ("mx", ListenerConfig("mx", settings.smtp_host, settings.mx_port, mutual)),
        (
            "submission",
            ListenerConfig("submission", settings.smtp_host, settings.submission_port, plain, trusted_networks=settings.trusted_networks),
        ),
        ("submissions", ListenerConfig("submission", settings.smtp_host, settings.submissions_port, plain, implicit_tls=True)),
    ]
    for name, config in listeners:
        if config.port == 0 or not smtp:
            continue
        config.max_message_size = settings.max_message_size
        config.max_connections_per_client = settings.smtp_max_connections_per_client
        config.hostname = settings.hostname
        config.timeout = settings.smtp_timeout
        config.data_timeout = settings.smtp_data_timeout
        tokens = smtp_tokens if config.kind == "submission" else None
        runtime.listeners.append(config)
        runtime.servers.append(
            await start_listener(config, pipeline, authenticator, reuse_port=reuse_port, sock=sockets.get(name), tokens=tokens)
        )
        log.info("SMTP %s on %s:%d%s", config.kind, config.host, config.port, " (implicit TLS)" if config.implicit_tls else "")
    if imap and (settings.imap_port or settings.imaps_port):
        runtime.imap = await start_imap(
            settings, engine, cipher, plain, authenticator=authenticator, tokens=imap_tokens, reuse_port=reuse_port, sockets=sockets
        )
    if relay:
        runtime.tasks.append(asyncio.create_task(worker.run_forever(), name="relay"))
    return runtime


def http_config(app: ASGIApp, settings: Settings, **extra: object) -> Any:
    """uvicorn's settings for our app. `proxy_headers` off: uvicorn would otherwise believe
    X-Forwarded-For from 127.0.0.1 (its default `forwarded_allow_ips`), so any local client
    could choose the address the lock-out counts; the app reads forwarded headers itself,
    from `trusted_proxies` only (`webmail.web.client_address`)."""
    import uvicorn

    options: dict[str, Any] = {
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "log_config": None,  # our handlers (core.logcontext), not uvicorn's own: one form for every line
    }
    options.update(extra)
    return uvicorn.Config(app, **options)


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


LISTENERS = (  # name, host setting, port setting, the role that opens it (http: every node, for /healthz)
    ("http", "http_host", "http_port", "http"),
    ("mx", "smtp_host", "mx_port", "smtp"),
    ("submission", "smtp_host", "submission_port", "smtp"),
    ("submissions", "smtp_host", "submissions_port", "smtp"),
    ("imap", "smtp_host", "imap_port", "imap"),
    ("imaps", "smtp_host", "imaps_port", "imap"),
)
INHERITED = "CADUCEE_INHERITED_SOCKETS"  # name=fd,... : the sockets a worker got from its `caducee serve`


def start_psc_standin(settings: Settings) -> tuple[subprocess.Popen[bytes] | None, Settings]:
    """`serve --demo`: the local Pro Santé Connect stand-in as a child process on the loopback
    address (it knows the demo professionals), and the settings pointed at it over HTTP.

    It listens on `demo_psc_port`, or on a free port when that one is taken (the log says
    where), and stops with this process, even one killed with SIGKILL.
    """
    if not settings.demo_psc_port:
        return None, settings
    from caducee import demo as demo_world

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path, secret = demo_world.psc_standin_config(settings)
    for port in (settings.demo_psc_port, 0):
        launched = _launch_standin(path, port)
        if launched is not None:
            break
        log.warning("demo: port %d is taken, the Pro Santé Connect stand-in takes a free one", port)
    else:
        raise RuntimeError("the Pro Santé Connect stand-in did not start")
    process, issuer = launched
    log.warning("demo: Pro Santé Connect is the local stand-in at %s (test identities only)", issuer)
    return process, settings.replace(
        psc_discovery_url=issuer + "/.well-known/openid-configuration",
        psc_client_id=demo_world.PSC_CLIENT_ID,
        psc_client_secret=secret,
        psc_redirect_uri=f"http://127.0.0.1:{settings.http_port}/pro/connexion/retour",
        psc_audiences=[demo_world.PSC_CLIENT_ID],
    )


def _launch_standin(config: Path, port: int) -> tuple[subprocess.Popen[bytes], str] | None:
    """The stand-in process and its issuer URL, once it has bound its port; None when the port is taken."""
    import select

    command = [sys.executable, "-m", "caducee.identity.standin", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen([*command, "--parent", str(os.getpid())], stdout=subprocess.PIPE)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline().decode("utf-8", "replace").strip() if ready else ""
    process.stdout.close()
    if "http://" not in line:
        stop_child(process)
        if process.returncode == 3:
            return None
        raise RuntimeError("the Pro Santé Connect stand-in did not start")
    return process, line[line.index("http://") :]


def stop_child(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class PortInUse(OSError):
    """A port another program (or another `caducee serve`) already listens on."""


def bind_listeners(settings: Settings) -> dict[str, socket.socket]:
    """Every configured listening socket, bound once, by the process that owns them.

    No SO_REUSEPORT: with it, a second, unrelated `caducee serve` started on the same ports
    silently shared them with the first (each answered some of the connections, from two
    databases). The workers of one `caducee serve --workers N` share these very sockets,
    inherited from their parent, and nothing else can bind the ports while they are open.
    Only the listeners of this node's roles are bound; the HTTP port always is (/healthz).
    """
    bound: dict[str, socket.socket] = {}
    try:
        for name, host_setting, port_setting, role in LISTENERS:
            host, port = str(getattr(settings, host_setting)), int(getattr(settings, port_setting))
            if port == 0 or (role != "http" and role not in settings.roles):
                continue
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restarts while old connections linger in TIME_WAIT
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(
                        exc.errno,
                        f"address already in use: {host}:{port} ({port_setting}, {ENV_PREFIX}{port_setting.upper()}); "
                        "another server listens there: stop it, or choose another port",
                    ) from None
                raise
            sock.listen(4096)
            sock.setblocking(False)
            sock.set_inheritable(True)
            bound[name] = sock
    except BaseException:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def inherited_sockets() -> dict[str, socket.socket] | None:
    """The sockets a worker process was handed by its `caducee serve` (None when not a worker)."""
    import os

    described = os.environ.get(INHERITED)
    if not described:
        return None
    sockets = {}
    for item in described.split(","):
        name, _, fd = item.partition("=")
        sockets[name] = socket.socket(fileno=int(fd))
        sockets[name].setblocking(False)
    return sockets


async def serve(settings: Settings, *, demo: bool = False, migrate: bool = True, sockets: dict[str, socket.socket] | None = None) -> None:
    """Run this node's roles until SIGINT/SIGTERM: HTTP, SMTP (MX, submission), IMAP, the relay, the jobs
    (all by default; `settings.roles`)."""
    import signal

    import uvicorn

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sockets = sockets if sockets is not None else bind_listeners(settings)  # before anything slow: a busy port fails at once
    if migrate:  # a worker process (migrate=False) was checked by the `caducee serve` that started it
        check_deployment(settings, demo=demo)
    standin = None
    if demo:
        standin, settings = await asyncio.to_thread(start_psc_standin, settings)
    if migrate:
        engine = await prepare_database(settings, demo=demo)
    else:
        engine = db.create_engine(settings.effective_database_url, pool_size=settings.database_pool_size)
    roles = set(settings.roles)
    identity = build_identity(engine, settings)
    gateway = await start_gateway(
        settings, engine, sockets=sockets, identity=identity, smtp="smtp" in roles, imap="imap" in roles, relay="relay" in roles
    )
    app = build_app(engine, settings, gateway.pipeline, identity) if "http" in roles else build_operations_app(engine, gateway.pipeline)
    server = uvicorn.Server(http_config(app, settings))
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # older uvicorn; newer ones read should_exit
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))

    def reload() -> None:
        try:
            gateway.reload_tls()
            log.info("SIGHUP: certificates loaded again (CRLs are re-read when they change)")
        except Exception:
            log.exception("SIGHUP: the certificate files did not load; the previous ones stay in use")

    loop.add_signal_handler(signal.SIGHUP, reload)
    jobs: list[asyncio.Task[None]] = []
    if "jobs" in roles:
        # Due campaigns and reminders are claimed, so the processes and nodes with this role share the work
        # (a campaign's start is one transaction: nodes never send one twice).
        campaigns = Campaigns(engine, settings, gateway.pipeline)
        reminders = agenda_background.reminder_worker(engine, settings, notifier_from_settings(settings))
        jobs = [
            asyncio.create_task(Runner(campaigns).run_forever(settings.campaign_poll_seconds), name="campaigns"),
            asyncio.create_task(reminders.run_forever(settings.agenda_reminder_poll_seconds), name="agenda-reminders"),
            asyncio.create_task(agenda_background.daily_forever(engine, settings), name="agenda-daily"),
            # The purges: each runs once per period on whichever process of whichever node claims it.
            asyncio.create_task(JobRunner(engine, purge_jobs(engine, settings)).run_forever(settings.jobs_poll_seconds), name="purges"),
        ]
    settle_garbage_collector()
    log.info("roles %s; HTTP on http://%s:%d/", ",".join(r for r in ROLES if r in roles), settings.http_host, settings.http_port)
    try:
        await server.serve(sockets=[sockets["http"]] if "http" in sockets else [])
    finally:
        for task in jobs:
            task.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await gateway.stop()
        await identity.close()
        await engine.dispose()
        stop_child(standin)


def serve_workers(settings: Settings, argv: list[str], workers: int, *, demo: bool) -> int:
    """Bind every port, migrate and seed once, then run `workers` processes on those sockets."""
    import os
    import signal

    sockets = bind_listeners(settings)
    check_deployment(settings, demo=demo)
    asyncio.run(_prepare_only(settings, demo=demo))
    standin = None
    env = dict(os.environ)
    if demo:  # the workers are started without --demo: they get the stand-in's settings from the environment
        standin, settings = start_psc_standin(settings)
        for name in ("psc_discovery_url", "psc_client_id", "psc_client_secret", "psc_redirect_uri", "psc_audiences"):
            value = getattr(settings, name)
            env["CADUCEE_" + name.upper()] = ",".join(value) if isinstance(value, list) else str(value)
    if settings.cpu_workers == 0:  # one CPU-pool process per core for the node, shared out, not per core per worker
        env["CADUCEE_CPU_WORKERS"] = str(max(1, (os.cpu_count() or 2) // workers))
    env[INHERITED] = ",".join(f"{name}={sock.fileno()}" for name, sock in sockets.items())
    fds = [sock.fileno() for sock in sockets.values()]

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "caducee", *argv, "--worker-process"], env=env, pass_fds=fds)

    children = [start_worker() for _ in range(workers)]
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker re-reads its certificates and CRLs
    codes = supervise(children, start_worker, stopping)
    for sock in sockets.values():
        sock.close()
    stop_child(standin)
    return max(codes, default=0)


def supervise(
    children: list[subprocess.Popen[bytes]], start: Callable[[], subprocess.Popen[bytes]], stopping: list[int], *, pause: float = 1.0
) -> list[int]:
    """Wait for the workers; one that dies while the server is not stopping is started again
    (a crash, the kernel's OOM killer: the others keep serving meanwhile). Returns the exit
    codes once every worker has stopped after SIGTERM/SIGINT.

    A worker dying again and again is restarted at most once per `pause`, so a worker that
    cannot start does not spin the parent."""
    last_start = 0.0
    while True:
        for n, child in enumerate(children):
            code = child.poll()
            if code is None or stopping:
                continue
            metrics.process_exited(child.pid)
            log.error("worker %d exited with %s: starting another", child.pid, code)
            time.sleep(max(0.0, pause - (time.monotonic() - last_start)))
            last_start = time.monotonic()
            children[n] = start()
        if stopping:
            codes = [child.wait() for child in children]
            for child in children:
                metrics.process_exited(child.pid)
            return codes
        time.sleep(0.2)


async def _prepare_only(settings: Settings, *, demo: bool) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tls_files(settings)  # the development PKI and the master key, before the workers race for them
    load_master_key(settings.data_dir)
    engine = await prepare_database(settings, demo=demo)
    await engine.dispose()
