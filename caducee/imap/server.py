"""The IMAP listeners: STARTTLS on `imap_port`, implicit TLS on `imaps_port`.

One `ImapServer` per process holds what every session shares: the mail store, the
authenticator (the same lock-out as SMTP when the caller passes the gateway's), the
folder watch that wakes sessions in IDLE, and the per-address connection ceiling.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.config import Settings
from caducee.core.connections import ClientConnections
from caducee.crypto.atrest import BodyCipher
from caducee.identity.mailauth import MailboxAuthenticator
from caducee.identity.mailtoken import TokenMailAuthenticator
from caducee.imap.headercache import HeaderCache
from caducee.imap.selected import SnapshotCache
from caducee.imap.session import LOGOUT, Session
from caducee.imap.watch import FolderWatch
from caducee.mailbox.mailstore import MailStore

log = logging.getLogger(__name__)

# IMAP is server-speaks-first: a client whose handshake overflowed a short accept queue waits
# for a greeting that never comes, so the queue is as long as the kernel allows (somaxconn).
BACKLOG = 4096


@dataclass
class ImapServer:
    settings: Settings
    store: MailStore
    authenticator: MailboxAuthenticator
    tls_context: ssl.SSLContext
    watch: FolderWatch
    connections: ClientConnections
    header_cache: HeaderCache = field(default_factory=HeaderCache)
    snapshots: SnapshotCache = field(default_factory=SnapshotCache)
    servers: list[asyncio.base_events.Server] = field(default_factory=list)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)
    tokens: TokenMailAuthenticator | None = None  # AUTHENTICATE OAUTHBEARER / XOAUTH2 when Pro Santé Connect is configured

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tls: bool) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        if not self.connections.enter(client):
            writer.write(b"* BYE trop de connexions depuis votre adresse / too many connections from your address\r\n")
            await _close(writer)
            return
        task = asyncio.current_task()
        if task is not None:
            self.sessions.add(task)
        session = Session(self, reader, writer, tls=tls, client=client)
        try:
            await session.run()
        except asyncio.CancelledError:  # shutting down: the client is told, then the connection closes
            try:
                writer.write(b"* BYE arret du serveur, reconnectez-vous / server shutting down\r\n")
            except Exception:
                pass
        except Exception:  # one broken session must never take the listener down
            log.exception("IMAP session from %s failed", client)
        finally:
            self.connections.leave(client)
            if task is not None:
                self.sessions.discard(task)
            await _close(writer, at_once=session.state == LOGOUT)

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.sessions):
            task.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()
        await self.watch.close()
        await self.store.close()


async def _close(writer: asyncio.StreamWriter, *, at_once: bool = False) -> None:
    """Close the connection; `at_once` after LOGOUT: our TLS close_notify goes out and the TCP
    connection is closed without waiting for the client's, as Dovecot does (waiting left the
    socket open for the loop's TLS shutdown timeout, 30 s, after each LOGOUT of a client that
    does not answer close_notify, such as imaptest). After an error (BYE) the client may
    still be sending: closing at once would reset the connection before it read the BYE."""
    try:
        writer.close()
        if at_once and writer.get_extra_info("ssl_object") is not None:
            await asyncio.sleep(0)  # the close_notify record is handed to the socket
            writer.transport.abort()
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
        pass


async def start_imap(
    settings: Settings,
    engine: AsyncEngine,
    cipher: BodyCipher,
    tls_context: ssl.SSLContext,
    *,
    authenticator: MailboxAuthenticator | None = None,
    tokens: TokenMailAuthenticator | None = None,
    host: str | None = None,
    imap_port: int | None = None,
    imaps_port: int | None = None,
    reuse_port: bool = False,
    sockets: dict[str, socket.socket] | None = None,
) -> ImapServer:
    """Open the IMAP listeners (a port of 0 in the settings disables that listener), on the
    sockets `sockets["imap"]` / `sockets["imaps"]` when the caller bound them already."""
    sockets = sockets or {}
    store = MailStore(engine, cipher, hold_connections=True)
    server = ImapServer(
        settings,
        store,
        authenticator or MailboxAuthenticator(engine, settings.local_domains),
        tls_context,
        FolderWatch(store.highest_modseqs, settings.imap_poll_seconds),
        ClientConnections(settings.imap_max_connections_per_client),
        tokens=tokens,
    )
    bind = host or settings.smtp_host
    plain_port = settings.imap_port if imap_port is None else imap_port
    tls_port = settings.imaps_port if imaps_port is None else imaps_port

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.serve_connection(reader, writer, tls=False)

    async def implicit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.serve_connection(reader, writer, tls=True)

    if "imap" in sockets:
        server.servers.append(await asyncio.start_server(plain, sock=sockets["imap"], limit=70 * 1024, backlog=BACKLOG))
    elif plain_port:
        server.servers.append(await asyncio.start_server(plain, bind, plain_port, reuse_port=reuse_port, limit=70 * 1024, backlog=BACKLOG))
        log.info("IMAP on %s:%d (STARTTLS)", bind, plain_port)
    if "imaps" in sockets:
        server.servers.append(
            await asyncio.start_server(
                implicit, sock=sockets["imaps"], ssl=tls_context, limit=70 * 1024, ssl_handshake_timeout=30, backlog=BACKLOG
            )
        )
    elif tls_port:
        server.servers.append(
            await asyncio.start_server(
                implicit, bind, tls_port, ssl=tls_context, reuse_port=reuse_port, limit=70 * 1024, ssl_handshake_timeout=30, backlog=BACKLOG
            )
        )
        log.info("IMAP on %s:%d (implicit TLS)", bind, tls_port)
    return server
