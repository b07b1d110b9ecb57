"""Starting and stopping the mail side of a process: listeners, group commit, relay."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.config import Settings
from caducee.crypto.atrest import BodyCipher, load_master_key
from caducee.crypto.devpki import Issued, client_context, ensure_dev_pki, server_context
from caducee.gateway.auth import MailboxAuthenticator
from caducee.gateway.pipeline import AcceptPipeline
from caducee.gateway.relay import RelayWorker
from caducee.gateway.smtp import ListenerConfig, start_listener

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    server: Issued
    anchors: Path
    relay_client: Issued


def tls_files(settings: Settings) -> TlsFiles:
    """Certificates from the settings, or the development PKI in `<data dir>/pki`."""
    if settings.tls_cert:
        missing = [name for name in ("tls_key", "trust_anchors", "relay_client_cert", "relay_client_key") if not getattr(settings, name)]
        if missing:
            raise ValueError(f"tls_cert is set: set {', '.join(missing)} too")
        return TlsFiles(Issued(Path(settings.tls_cert), Path(settings.tls_key)), Path(settings.trust_anchors),
                        Issued(Path(settings.relay_client_cert), Path(settings.relay_client_key)))  # fmt: skip
    log.warning("no tls_cert configured: using the development PKI in %s", settings.data_dir / "pki")
    dev = ensure_dev_pki(settings.data_dir / "pki", settings.hostname)
    return TlsFiles(dev["server"], Path(settings.trust_anchors) if settings.trust_anchors else dev["ca"].cert, dev["operator"])


@dataclass
class GatewayRuntime:
    pipeline: AcceptPipeline
    relay: RelayWorker
    servers: list[asyncio.base_events.Server] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
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
    plain = server_context(files.server)
    mutual = server_context(files.server, client_ca=files.anchors)
    relay_context: ssl.SSLContext = client_context(files.anchors, files.relay_client)
    worker = RelayWorker(engine, settings, cipher, relay_context)
    pipeline = AcceptPipeline(engine, settings, cipher, on_queued=worker.wake)
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
        config.hostname = settings.hostname
        runtime.servers.append(await start_listener(config, pipeline, authenticator, reuse_port=reuse_port))
        log.info("SMTP %s on %s:%d%s", config.kind, config.host, config.port, " (implicit TLS)" if config.implicit_tls else "")
    if relay:
        runtime.tasks.append(asyncio.create_task(worker.run_forever(), name="relay"))
    return runtime
