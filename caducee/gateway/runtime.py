"""Starting and stopping the mail side of a process: SMTP and IMAP listeners, group commit, relay."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.config import Settings
from caducee.cpu import CpuPool, shared_pool
from caducee.crypto.atrest import BodyCipher, load_master_key
from caducee.crypto.material import material_from_settings
from caducee.crypto.pki import Pair, development_space
from caducee.crypto.tls import client_context, server_context
from caducee.gateway.auth import MailboxAuthenticator
from caducee.gateway.pipeline import AcceptPipeline
from caducee.gateway.protection import SmimeStage, WithoutCertificate
from caducee.gateway.relay import RelayWorker
from caducee.gateway.smtp import ListenerConfig, start_listener
from caducee.mailbox.imap.server import ImapServer, start_imap
from caducee.webmail.alerts import NewMailAlerts
from caducee.webmail.notifier import notifier_from_settings

log = logging.getLogger(__name__)


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
    pipeline.on_delivered = NewMailAlerts(engine, settings, notifier_from_settings(settings)).delivered
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
        runtime.servers.append(await start_listener(config, pipeline, authenticator, reuse_port=reuse_port))
        log.info("SMTP %s on %s:%d%s", config.kind, config.host, config.port, " (implicit TLS)" if config.implicit_tls else "")
    if settings.imap_port or settings.imaps_port:
        runtime.imap = await start_imap(settings, engine, cipher, plain, authenticator=authenticator, reuse_port=reuse_port)
    if relay:
        runtime.tasks.append(asyncio.create_task(worker.run_forever(), name="relay"))
    return runtime
