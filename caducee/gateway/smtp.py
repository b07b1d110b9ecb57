"""The SMTP listeners: submission (STARTTLS 5587, implicit TLS 5465) and MX (mutual TLS 2525).

The handler hooks are thin: each calls the accept pipeline and turns its decision into a
reply. What aiosmtpd does well (the protocol, SIZE, 8BITMIME, the smuggling-safe DATA
reader) stays aiosmtpd's.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import logging
import re
import socket
import ssl
import unicodedata
from dataclasses import dataclass, field
from typing import Any, cast

import aiosmtpd.smtp as aiosmtpd_smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from caducee.core import logcontext
from caducee.core.connections import ClientConnections
from caducee.core.throttle import Locked
from caducee.gateway.pipeline import AcceptPipeline, Channel, Envelope
from caducee.identity.mailauth import MailboxAuthenticator
from caducee.identity.mailtoken import TokenLoginFailed, TokenMailAuthenticator

log = logging.getLogger(__name__)

_HAS_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}( |$)")
_DEFAULT_ENHANCED = {"2": "2.0.0", "3": "", "4": "4.0.0", "5": "5.5.0"}
_SPECIFIC = {"500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "530": "5.7.0", "552": "5.3.4", "554": "5.7.0"}


@dataclass
class ListenerConfig:
    kind: str  # "submission" or "mx"
    host: str
    port: int
    tls_context: ssl.SSLContext
    implicit_tls: bool = False
    trusted_networks: list[str] = field(default_factory=list)
    max_message_size: int = 25 * 1024 * 1024
    max_connections_per_client: int = 50
    hostname: str = "localhost"
    timeout: float = 300.0  # the next command (aiosmtpd's timer, reset by each command, not by bytes)
    data_timeout: float = 600.0  # the whole DATA content
    sessions: set[GatewaySMTP] = field(default_factory=set)  # open connections, told 421 at shutdown (close_sessions)


async def close_sessions(configs: list[ListenerConfig], *, grace: float = 10.0) -> None:
    """Shutting down: each open SMTP session gets `421 4.3.2` and is closed. A session whose
    message is being accepted (its group commit in flight) is given up to `grace` seconds to
    get its answer first: what was acknowledged is committed, what was not the client keeps."""
    sessions = [session for config in configs for session in config.sessions]
    deadline = asyncio.get_running_loop().time() + grace
    while any(session.accepting for session in sessions) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    for session in sessions:
        transport = getattr(session, "transport", None)
        if transport is None or transport.is_closing():
            continue
        try:
            transport.write(b"421 4.3.2 Service shutting down, try again later / arret du service, reessayez plus tard\r\n")
            transport.close()
        except Exception:  # a connection already broken: nothing to tell
            pass


def peer_dn(transport: Any) -> str | None:
    """The client certificate's subject as an RFC 4514 string (CN=...,O=...,C=FR)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class _AuthMembers:
    """Stands in for the `inspect` module inside aiosmtpd.

    aiosmtpd builds its table of AUTH mechanisms on every connection with
    `inspect.getmembers(self)`, which evaluates every attribute of the protocol object
    (0.4 ms, a tenth of a message's cost). It only keeps names starting with `auth_`;
    giving it just those, computed once per class, is the same table for less.
    """

    _names: dict[type, list[str]] = {}

    def getmembers(self, obj: Any) -> list[tuple[str, Any]]:
        names = self._names.get(type(obj))
        if names is None:
            names = self._names[type(obj)] = sorted(name for name in dir(type(obj)) if name.startswith("auth_"))
        return [(name, getattr(obj, name)) for name in names]

    def __getattr__(self, name: str) -> Any:
        import inspect

        return getattr(inspect, name)


aiosmtpd_smtp.inspect = _AuthMembers()  # type: ignore[assignment]  # the shim stands in for the module

END_OF_DATA = b"\r\n.\r\n"
_SCAN_WINDOW = 256 * 1024


# RFC 4954 section 4: an AUTH line (and each response to a challenge) may be 12,288 octets,
# room for a Pro Santé Connect token; other commands keep aiosmtpd's 512.
AUTH_LINE_LIMIT = 12288


class GatewaySMTP(SMTP):
    """aiosmtpd's server with what we add: enhanced status codes on every reply, a DATA
    reader that works in large chunks, and trusted networks exempt from STARTTLS and AUTH."""

    line_length_limit = AUTH_LINE_LIMIT + 2

    def __init__(
        self,
        handler: GatewayHandler,
        *,
        trusted_networks: list[str],
        connections: ClientConnections,
        data_timeout: float,
        registry: set[GatewaySMTP] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._data_timeout = data_timeout
        # Per connection (aiosmtpd's table is shared by the class and grows at each EHLO).
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit, {"AUTH": AUTH_LINE_LIMIT})
        self._trusted = [ipaddress.ip_network(network) for network in trusted_networks]
        self._connections = connections
        self._counted: str | None = None
        self.accepting = False  # a message of this session is in the accept pipeline
        self._registry = registry

    def _timeout_cb(self) -> None:
        """The next command did not come in time: say so (RFC 5321 4.5.3.2 lets the server
        close; a 421 tells the client why) before aiosmtpd closes the connection."""
        transport = self.transport
        write = getattr(transport, "write", None)  # uvloop's transports are not asyncio's classes
        if transport is not None and write is not None and not transport.is_closing():
            write(b"421 4.4.2 Idle for too long, closing / inactivite trop longue, connexion fermee\r\n")
        super()._timeout_cb()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and getattr(self, "transport", None) is None
        if first:
            logcontext.begin("smtp")  # before aiosmtpd starts the connection's task, which inherits it
            peer = transport.get_extra_info("peername")
            client = peer[0] if peer else "unknown"
            if not self._connections.enter(client):
                cast(asyncio.WriteTransport, transport).write(
                    b"421 4.7.0 Too many connections from your address, try again later / trop de connexions depuis votre adresse\r\n"
                )
                transport.close()
                return
            self._counted = client
            if self._registry is not None:
                self._registry.add(self)
        super().connection_made(transport)
        if first and transport.get_extra_info("ssl_object") is not None:
            # Implicit TLS (port 5465): aiosmtpd only counts TLS it negotiated by STARTTLS.
            self._auth_require_tls = False
        session = self.session
        if first and self._trusted and session is not None and session.peer:
            try:
                address = ipaddress.ip_address(session.peer[0])
            except ValueError:
                return
            if any(address in network for network in self._trusted):
                session.trusted = True  # type: ignore[attr-defined]  # read back by `_channel`
                self.require_starttls = False
                self._auth_required = False

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted is None:
            return  # turned away in connection_made: aiosmtpd never set this connection up
        self._connections.leave(self._counted)
        self._counted = None
        if self._registry is not None:
            self._registry.discard(self)
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA, read in large chunks up to the one terminator RFC 5321 allows.

        aiosmtpd reads the content line by line (a third of its time per message). Here the
        reader looks for CRLF "." CRLF in windows of 256 KB; the terminator is only ever
        that exact sequence, so "\\n.\\r\\n" smuggling stays inside the content, where the
        inspection refuses the bare LF. Size is enforced while reading, without keeping
        what is over the limit.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # The content has its own deadline: the next-command timer (shorter) must not cut a
        # message still arriving within it, silently, as it did at 300 s.
        self._reset_timeout(self._data_timeout + 30)
        try:
            # An overall deadline: a client trickling one byte a second never trips the idle
            # timer of a stream that keeps moving, yet holds a session and its buffers.
            content = await asyncio.wait_for(self._read_content(), self._data_timeout)
            self._reset_timeout()
        except TimeoutError:
            await self.push("421 4.4.2 DATA took too long, closing / reception trop lente, connexion fermee")
            if self.transport is not None:
                self.transport.close()
            return
        if content is None:
            self._set_post_data_state()
            await self.push("552 5.3.4 Error: too much mail data / message trop volumineux")
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_content(self) -> bytes | None:
        """The unstuffed content, or None when it exceeded the size limit (all of it drained)."""
        reader = self._reader
        # The CRLF that ended the DATA line belongs to the first terminator search, so that
        # an empty message ("." straight away) is found like any other end.
        reader._buffer[:0] = b"\r\n"  # type: ignore[attr-defined]
        saved_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = _SCAN_WINDOW  # type: ignore[attr-defined]
        limit = self.data_size_limit
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                try:
                    chunk = await reader.readuntil(END_OF_DATA)
                    last = True
                except asyncio.LimitOverrunError as overrun:
                    chunk = await reader.readexactly(overrun.consumed)
                    last = False
                size += len(chunk)
                if limit is None or size <= limit + 7:
                    chunks.append(chunk)
                elif chunks:
                    chunks.clear()  # over the limit: keep reading to the end, keep nothing
                if last:
                    break
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]
        if limit is not None and size > limit + 7:
            return None
        data = b"".join(chunks)
        return data.replace(b"\r\n..", b"\r\n.")[2:-3]

    async def push(self, status: Any) -> None:
        """Add an enhanced status code (RFC 2034) to aiosmtpd's own one-line replies.

        Greetings, EHLO lines and the last line of any multi-line reply are left as they are.
        """
        if isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        code = status[:3]
        continuation = len(status) > 3 and status[3] == "-"
        if (
            code.isdigit()
            and not continuation
            and not getattr(self, "_multiline", False)
            and code not in {"220", "221", "235", "334", "354"}
            and not _HAS_ENHANCED.match(status)
        ):
            enhanced = _SPECIFIC.get(code, _DEFAULT_ENHANCED.get(code[0], ""))
            if enhanced:
                status = f"{code} {enhanced} {status[4:]}"
        self._multiline = continuation
        if not status.isascii():  # replies are ASCII without SMTPUTF8: "écrire" goes out as "ecrire"
            status = unicodedata.normalize("NFKD", status).encode("ascii", "ignore").decode("ascii")
        await super().push(status)


TEMPORARY_FAILURE = "451 4.3.0 Temporary failure, please retry later / erreur temporaire, réessayez plus tard"


class GatewayHandler:
    def __init__(
        self, pipeline: AcceptPipeline, authenticator: MailboxAuthenticator, kind: str, tokens: TokenMailAuthenticator | None = None
    ) -> None:
        self.pipeline = pipeline
        self.authenticator = authenticator
        self.kind = kind
        self.tokens = tokens

    def _channel(self, session: Session) -> Channel:
        if getattr(session, "trusted", False):
            return Channel.TRUSTED
        return Channel.MX if self.kind == "mx" else Channel.SUBMISSION

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        lines = [line for line in responses if "SMTPUTF8" not in line and "HELP" not in line]
        lines.insert(-1, "250-ENHANCEDSTATUSCODES")
        last = lines[-1]
        if last.startswith("250-"):
            lines[-1] = "250 " + last[4:]
        return lines

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, options: list[str]) -> str:
        channel = self._channel(session)
        identity = session.auth_data if isinstance(session.auth_data, str) else None
        try:
            decision = await self.pipeline.check_sender(address, channel, authenticated=identity, peer_dn=peer_dn(server.transport))
        except Exception:  # the database is unreachable: a temporary failure, never a refusal
            log.exception("MAIL FROM check failed")
            return TEMPORARY_FAILURE
        if decision is not None:
            return decision.smtp_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= 1000:
            return "452 4.5.3 Too many recipients / trop de destinataires"
        try:
            decision = await self.pipeline.check_recipient(envelope.mail_from or "", address, self._channel(session))
        except Exception:
            log.exception("RCPT TO check failed")
            return TEMPORARY_FAILURE
        if not decision.accepted:
            identity = session.auth_data if isinstance(session.auth_data, str) else None
            client = session.peer[0] if session.peer else None
            await self.pipeline.trace_refused_recipient(
                envelope.mail_from or "", address, self._channel(session), identity, client, decision
            )
            return decision.smtp_reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        identity = session.auth_data if isinstance(session.auth_data, str) else None
        content = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        if isinstance(server, GatewaySMTP):
            server.accepting = True
        try:
            result = await self.pipeline.accept(
                Envelope(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=bytes(content or b""),
                    channel=self._channel(session),
                    authenticated=identity,
                    peer_dn=peer_dn(server.transport),
                    client=session.peer[0] if session.peer else None,
                )
            )
        except Exception:
            # Nothing was committed, so nothing is lost: the client keeps the message and retries.
            log.exception("accepting a message failed")
            return TEMPORARY_FAILURE
        finally:
            if isinstance(server, GatewaySMTP):
                server.accepting = False
        return result.reply

    # ---- AUTH: async, so that the password check (argon2) runs off the event loop -------

    async def _check(self, server: SMTP, login: bytes, password: bytes) -> AuthResult:
        peer = server.session.peer[0] if server.session and server.session.peer else "unknown"
        try:
            account = await self.authenticator.verify(login.decode("utf-8", "replace"), password.decode("utf-8", "replace"), peer, "SMTP")
        except Locked as locked:
            minutes = max(1, (locked.seconds + 59) // 60)
            return AuthResult(
                success=False,
                handled=False,
                message=f"454 4.7.0 Too many failed logins, try again in {minutes} min / trop d'échecs, réessayez dans {minutes} min",
            )
        if account is None:
            return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid / identifiants invalides")
        return AuthResult(success=True, auth_data=account)

    @staticmethod
    async def _initial_or_challenge(server: SMTP, args: list[str], prompt: str) -> bytes | None:
        """The decoded initial response, or the client's answer to `prompt`; None if unusable."""
        if len(args) == 1:
            response = await server.challenge_auth(prompt)
            return None if response is MISSING else bytes(response)
        try:
            return base64.b64decode(args[1], validate=True)
        except ValueError:
            await server.push("501 5.5.2 Can't decode base64")
            return None

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = await self._initial_or_challenge(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        login = await self._initial_or_challenge(server, args, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, bytes(password))

    # ---- AUTH with a Pro Santé Connect token (the work is in identity.mailtoken) -------

    async def _token(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        if self.tokens is None:  # not offered (see start_listener); a client naming it anyway
            return AuthResult(success=False, handled=False, message="504 5.5.4 Unrecognized authentication type")
        message = await self._initial_or_challenge(server, args, "")
        if message is None:
            return AuthResult(success=False, handled=True)
        peer = server.session.peer[0] if server.session and server.session.peer else "unknown"
        try:
            account = await self.tokens.verify(mechanism, message, peer)
        except Locked as locked:
            minutes = max(1, (locked.seconds + 59) // 60)
            return AuthResult(
                success=False,
                handled=False,
                message=f"454 4.7.0 Too many failed logins, try again in {minutes} min / trop d'échecs, réessayez dans {minutes} min",
            )
        except TokenLoginFailed as failed:
            # RFC 7628 3.2.3: the error as a last challenge, the client's dummy answer, then the failure.
            answer = await server.challenge_auth(failed.challenge)
            if answer is MISSING:
                return AuthResult(success=False, handled=True)
            if failed.temporary:
                return AuthResult(success=False, handled=False, message="454 4.7.0 Temporary authentication failure / réessayez plus tard")
            return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid / jeton refusé")
        return AuthResult(success=True, auth_data=account)

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._token(server, args, "OAUTHBEARER")

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._token(server, args, "XOAUTH2")


async def start_listener(
    config: ListenerConfig,
    pipeline: AcceptPipeline,
    authenticator: MailboxAuthenticator,
    *,
    reuse_port: bool = False,
    sock: socket.socket | None = None,
    tokens: TokenMailAuthenticator | None = None,
) -> asyncio.base_events.Server:
    """Open one listener (on `sock` when the caller bound it already); the caller closes
    the returned server. With `tokens`, submission also offers AUTH OAUTHBEARER and XOAUTH2
    (after TLS, like every mechanism)."""
    handler = GatewayHandler(pipeline, authenticator, config.kind, tokens)
    is_mx = config.kind == "mx"
    connections = ClientConnections(config.max_connections_per_client)

    def factory() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            trusted_networks=config.trusted_networks,
            connections=connections,
            registry=config.sessions,
            hostname=config.hostname,
            ident="Caducee ESMTP",
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=False,
            decode_data=False,
            tls_context=None if config.implicit_tls else config.tls_context,
            require_starttls=not config.implicit_tls,
            auth_required=not is_mx,
            auth_require_tls=True,
            auth_exclude_mechanism=[] if tokens is not None else ["OAUTHBEARER", "XOAUTH2"],
            timeout=config.timeout,
            data_timeout=config.data_timeout,
        )

    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(factory, sock=sock, ssl=config.tls_context if config.implicit_tls else None, backlog=4096)
    return await loop.create_server(
        factory,
        host=config.host,
        port=config.port,
        ssl=config.tls_context if config.implicit_tls else None,
        reuse_port=reuse_port,
        backlog=4096,  # SMTP speaks first: an overflowed accept queue leaves clients hanging
    )
