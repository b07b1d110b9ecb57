"""One IMAP connection: states, the command table, and what each command does.

The grammar module turns bytes into a `Command`; the mail store does the reading and
writing; this module decides what is allowed when and what to answer. A command in the
wrong state is `BAD`, a refused one `NO` with a response code (RFC 5530) and a text the
user may see (in French, with the English after a slash for the logs), never a crash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from caducee.core import logcontext, metrics
from caducee.core.throttle import Locked
from caducee.identity.mailtoken import TokenLoginFailed
from caducee.identity.sasl import MECHANISMS as TOKEN_MECHANISMS
from caducee.imap import search as searching
from caducee.imap.grammar import (
    MAX_SMALL_LITERAL,
    Command,
    FetchItem,
    LineTooLong,
    LiteralTooLarge,
    ParseError,
    RawCommand,
    astring,
    format_datetime,
    parse_command,
    read_command,
)
from caducee.imap.selected import SelectedView
from caducee.mailbox.mailstore import FolderInfo, StoreError, normalise_flags, uid_ranges
from caducee.mime import structure
from caducee.traces.service import DELETE_FOLDER, EXPUNGE, MOVE, Trace

if TYPE_CHECKING:
    from caducee.imap.server import ImapServer

log = logging.getLogger(__name__)

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not authenticated", "authenticated", "selected", "logout"
ANY = frozenset({NOT_AUTHENTICATED, AUTHENTICATED, SELECTED})
AUTH = frozenset({AUTHENTICATED, SELECTED})
SEL = frozenset({SELECTED})
PRE = frozenset({NOT_AUTHENTICATED})
DELIMITER = "/"
FLUSH_AT = 256 * 1024
SASL_LINE_LIMIT = 12288 + 2  # as SMTP's AUTH line (RFC 4954): room for a Pro Santé Connect token
# Commands during which EXPUNGE may not be announced (RFC 3501 7.4.1); UID forms may.
NO_EXPUNGE_DURING = {"FETCH", "STORE", "SEARCH"}


_SEEN_OR_NOT = bytes(1 if bits & 1 else 0 for bits in range(256))  # flag bits -> 1 if \\Seen (mailstore.FLAG_BITS)


class Bye(Exception):
    """End the connection after sending this untagged BYE text."""


@dataclass(frozen=True)
class Handler:
    states: frozenset[str]
    run: Callable[[Session, Command], Awaitable[bytes]]


MAX_UNAUTHENTICATED_LITERALS = 16 * 1024  # all the literals of one command before login (LOGIN, AUTHENTICATE)
MAX_COMMAND_LITERALS = 1024 * 1024  # all the literals of one command after login, APPEND's message aside


async def _command_begins(reader: asyncio.StreamReader) -> bool:
    """Wait until the next command's first byte is there (left unread); False at end of stream."""
    if reader._buffer:  # type: ignore[attr-defined]
        return True
    first = await reader.read(1)
    if not first:
        return False
    reader._buffer[:0] = first  # type: ignore[attr-defined]
    return True


class Session:
    def __init__(self, server: ImapServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tls: bool, client: str) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.tls = tls
        self.client = client
        self.state = NOT_AUTHENTICATED
        self.address: str | None = None
        self.mailbox_id: int | None = None
        self.view: SelectedView | None = None
        self.condstore = False
        self.wake = asyncio.Event()

    # ---- the connection loop -----------------------------------------------------------

    async def run(self) -> None:
        logcontext.begin("imap")
        metrics.imap_sessions.inc()
        try:
            await self._run()
        finally:
            metrics.imap_sessions.dec()

    async def _run(self) -> None:
        await self.send(b"* OK [CAPABILITY " + self.capabilities() + b"] Caducee IMAP pret / ready\r\n")
        settings = self.server.settings
        # Before login, one deadline for the whole of it (commands trickled byte by byte
        # included): an anonymous connection holds a slot for `imap_login_timeout`, no more.
        login_by = asyncio.get_running_loop().time() + settings.imap_login_timeout
        try:
            while self.state != LOGOUT:
                idle: float = settings.imap_timeout
                whole: float = settings.imap_command_timeout
                if self.state == NOT_AUTHENTICATED:
                    left = max(0.0, login_by - asyncio.get_running_loop().time())
                    idle, whole = left, min(whole, left)
                try:
                    # Idle up to `idle` for a command to begin; once it has, the whole of it
                    # (line and literals) within `whole`, however slowly it trickles.
                    if not await asyncio.wait_for(_command_begins(self.reader), idle):
                        return
                    raw = await asyncio.wait_for(read_command(self.reader, self._continue, self._literal_limit), whole)
                except TimeoutError:
                    raise Bye("deconnexion apres inactivite / autologout, idle for too long") from None
                except LiteralTooLarge as error:  # refused before it was read: the stream is still in step
                    await self.send((error.tag or "*").encode() + b" NO [TOOBIG] " + error.text.encode() + b"\r\n")
                    continue
                if raw is None:
                    return
                await self.handle(raw)
        except Bye as bye:
            await self.send(b"* BYE " + str(bye).encode() + b"\r\n")
        except LineTooLong:
            await self.send(b"* BYE ligne trop longue / line too long\r\n")
        except ParseError as error:  # the stream is out of step (closed inside a literal): nothing to answer
            log.debug("IMAP %s: %s", self.client, error.text)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return

    async def _continue(self) -> None:
        await self.send(b"+ OK\r\n")

    def _literal_limit(self, command: RawCommand, size: int) -> int:
        """The largest literal allowed next: each literal has its limit, and all the literals
        of one command share a budget, so that many small literals bound memory too."""
        used = sum(len(literal) for literal in command.literals)
        if self.state == NOT_AUTHENTICATED:
            return min(8 * 1024, MAX_UNAUTHENTICATED_LITERALS - used)
        if b" APPEND " in command.segments[0].upper():
            return min(self.server.settings.max_message_size, self.server.settings.max_message_size + MAX_SMALL_LITERAL - used)
        return min(MAX_SMALL_LITERAL, MAX_COMMAND_LITERALS - used)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def handle(self, raw: RawCommand) -> None:
        try:
            command = parse_command(raw)
        except ParseError as error:
            await self.send((error.tag or "*").encode() + b" BAD " + error.text.encode("utf-8", "replace") + b"\r\n")
            return
        handler = COMMANDS.get(command.name)
        if handler is None:
            await self.send(command.tag.encode() + b" BAD unknown command\r\n")
            return
        if self.state not in handler.states:
            await self.send(
                command.tag.encode() + b" BAD %s is not allowed in the %s state\r\n" % (command.name.encode(), self.state.encode())
            )
            return
        try:
            result = await handler.run(self, command)
        except _Handled:
            return
        except ParseError as error:
            result = b"BAD " + error.text.encode("utf-8", "replace")
        except StoreError as error:
            result = b"NO " + (b"[%s] " % error.code.encode() if error.code else b"") + error.text.encode("utf-8")
        await self.send(await self.updates(command.name) + command.tag.encode() + b" " + result + b"\r\n")

    async def updates(self, command_name: str = "NOOP") -> bytes:
        """Untagged responses for what changed elsewhere in the selected folder (and RECENT
        when this session's count moved: new messages it claimed, recent ones expunged)."""
        view = self.view
        if view is None or self.state != SELECTED:
            return b""
        state, changes = await self.server.store.changes(view.folder_id, view.modseq)
        if state is None or state.uidvalidity != view.uidvalidity:  # deleted (and maybe created again): not ours any more
            self._leave()
            raise Bye("le dossier ouvert a ete supprime / the selected folder was deleted")
        view.modseq = max(view.modseq, state.highestmodseq)  # read in the same statement: nothing below it is unseen
        # A keyword another session defined: every session's FLAGS list stays the folder's.
        flags = view.flags_lines() if view.learn_keywords(state.keywords) else b""
        if not changes and not view.pending_expunges:
            return flags + view.recent_line()
        allow = command_name not in NO_EXPUNGE_DURING
        lines, new = view.apply(changes, allow_expunge=allow, condstore=self.condstore)
        if new:
            await self._claim_recent(new[-1] + 1, state.first_recent_uid)
        return flags + b"".join(lines) + view.recent_line()

    async def _claim_recent(self, upto: int, first_recent_uid: int) -> None:
        """The messages below `upto` that no session has seen as \\Recent become recent here
        (read-write), or are shown recent without being claimed (EXAMINE: RFC 3501 6.3.2)."""
        view = self.view
        assert view is not None
        if first_recent_uid >= upto:
            return
        if view.read_only:
            view.add_recent(first_recent_uid, upto)
        else:
            view.add_recent(await self.server.store.claim_recent(view.folder_id, upto, first_recent_uid), upto)

    def capabilities(self) -> bytes:
        names = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE"]
        if self.state == NOT_AUTHENTICATED:
            if not self.tls:
                names += ["STARTTLS", "LOGINDISABLED"]
            else:
                names += ["AUTH=PLAIN"] + (["AUTH=OAUTHBEARER", "AUTH=XOAUTH2"] if self.server.tokens is not None else [])
        else:
            names += [
                "IDLE",
                "UIDPLUS",
                "MOVE",
                "NAMESPACE",
                "UNSELECT",
                "SPECIAL-USE",
                "CONDSTORE",
                f"APPENDLIMIT={self.server.settings.max_message_size}",
            ]
        return " ".join(names).encode()

    # ---- any state -----------------------------------------------------------------------

    async def capability(self, command: Command) -> bytes:
        await self.send(b"* CAPABILITY " + self.capabilities() + b"\r\n")
        return b"OK CAPABILITY completed"

    async def noop(self, command: Command) -> bytes:
        return b"OK NOOP completed"

    async def logout(self, command: Command) -> bytes:
        await self.send(b"* BYE a bientot / logging out\r\n")
        self.state = LOGOUT
        return b"OK LOGOUT completed"

    async def id_(self, command: Command) -> bytes:
        await self.send(b'* ID ("name" "Caducee" "vendor" "Caducee")\r\n')
        return b"OK ID completed"

    # ---- not authenticated ---------------------------------------------------------------

    async def starttls(self, command: Command) -> bytes:
        if self.tls:
            return b"BAD TLS is already active"
        if self.reader._buffer:  # type: ignore[attr-defined]  # bytes sent before the handshake: an injection attempt
            raise Bye("donnees envoyees avant TLS / data sent before the TLS handshake")
        await self.send(command.tag.encode() + b" OK begin TLS negotiation now\r\n")
        await self.writer.start_tls(self.server.tls_context)
        self.tls = True
        raise _Handled()

    async def login(self, command: Command) -> bytes:
        return await self._authenticate(command.args.user, command.args.password)

    async def _sasl_line(self, challenge: bytes = b"") -> bytes:
        """The client's answer to a continuation `+ <challenge>`, bounded like an AUTH line."""
        await self.send(b"+ " + challenge + b"\r\n")
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), self.server.settings.imap_login_timeout)
        except (asyncio.LimitOverrunError, ValueError):
            raise Bye("reponse d'authentification trop longue / authentication response too long") from None
        except TimeoutError:
            raise Bye("deconnexion apres inactivite / autologout, idle for too long") from None
        if len(line) > SASL_LINE_LIMIT:
            raise Bye("reponse d'authentification trop longue / authentication response too long")
        return line[:-2]

    async def authenticate(self, command: Command) -> bytes:
        mechanism = command.args.mechanism
        tokens = mechanism in TOKEN_MECHANISMS and self.server.tokens is not None
        if mechanism != "PLAIN" and not tokens:
            return b"NO [CANNOT] mecanisme non propose / mechanism not offered"
        if not self.tls:
            return b"NO [PRIVACYREQUIRED] STARTTLS d'abord / use STARTTLS first"
        initial = command.args.initial
        if initial is None or initial == b"=":
            initial = await self._sasl_line()
            if initial == b"*":
                return b"BAD authentication cancelled"
        if tokens:
            return await self._authenticate_token(str(mechanism), initial)
        try:
            decoded = base64.b64decode(initial, validate=True)
            _authzid, user, password = decoded.split(b"\0")
        except (binascii.Error, ValueError):
            return b"BAD malformed PLAIN response"
        return await self._authenticate(user, password)

    async def _authenticate_token(self, mechanism: str, initial: bytes) -> bytes:
        """OAUTHBEARER / XOAUTH2: the token is checked by identity; a failure is answered with
        RFC 7628's JSON error as a last challenge, the client's dummy answer read, then NO."""
        assert self.server.tokens is not None
        try:
            message = base64.b64decode(initial, validate=True)
        except (binascii.Error, ValueError):
            return b"BAD malformed base64"
        try:
            address = await self.server.tokens.verify(mechanism, message, self.client)
        except Locked as locked:
            return b"NO [UNAVAILABLE] trop d'essais, reessayez dans %d s / locked, retry in %d s" % (locked.seconds, locked.seconds)
        except TokenLoginFailed as failed:
            answer = await self._sasl_line(base64.b64encode(failed.challenge))
            if answer == b"*":
                return b"BAD authentication cancelled"
            if failed.temporary:
                return b"NO [UNAVAILABLE] Pro Sante Connect injoignable, reessayez / identity provider unavailable, retry later"
            return b"NO [AUTHENTICATIONFAILED] jeton refuse / invalid token"
        mailbox_id = await self.server.store.mailbox_id(address)
        if mailbox_id is None:
            return b"NO [AUTHENTICATIONFAILED] jeton refuse / invalid token"
        self.address, self.mailbox_id, self.state = address, mailbox_id, AUTHENTICATED
        await self.server.store.folders(mailbox_id)
        return b"OK [CAPABILITY " + self.capabilities() + b"] connecte / logged in"

    async def _authenticate(self, user: bytes, password: bytes) -> bytes:
        if not self.tls:
            return b"NO [PRIVACYREQUIRED] STARTTLS d'abord / use STARTTLS first"
        try:
            login = user.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            return b"NO [AUTHENTICATIONFAILED] identifiants invalides / invalid credentials"
        try:
            address = await self.server.authenticator.verify(login, secret, self.client, "IMAP")
        except Locked as locked:
            return b"NO [UNAVAILABLE] trop d'essais, reessayez dans %d s / locked, retry in %d s" % (locked.seconds, locked.seconds)
        mailbox_id = await self.server.store.mailbox_id(address) if address else None
        if address is None or mailbox_id is None:
            return b"NO [AUTHENTICATIONFAILED] identifiants invalides / invalid credentials"
        self.address, self.mailbox_id, self.state = address, mailbox_id, AUTHENTICATED
        await self.server.store.folders(mailbox_id)  # creates the standard folders on first login
        return b"OK [CAPABILITY " + self.capabilities() + b"] connecte / logged in"

    # ---- authenticated -------------------------------------------------------------------

    async def enable(self, command: Command) -> bytes:
        enabled = [name for name in command.args.capabilities if name == "CONDSTORE"]
        if enabled:
            self.condstore = True
        await self.send(b"* ENABLED" + b"".join(b" " + name.encode() for name in enabled) + b"\r\n")
        return b"OK ENABLE completed"

    async def namespace(self, command: Command) -> bytes:
        await self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return b"OK NAMESPACE completed"

    async def _folder(self, name: str) -> FolderInfo:
        assert self.mailbox_id is not None
        folder = await self.server.store.folder(self.mailbox_id, name)
        if folder is None:
            raise StoreError("dossier inconnu / no such folder", "NONEXISTENT")
        return folder

    async def select(self, command: Command) -> bytes:
        self._leave()
        folder = await self._folder(command.args.mailbox)
        read_only = command.name == "EXAMINE"
        if command.args.condstore:
            self.condstore = True
        snapshot = self.server.snapshots.get(folder.id, folder.uidvalidity, folder.highestmodseq)
        if snapshot is None:
            snapshot = await self.server.store.snapshot(folder.id)
            self.server.snapshots.put(snapshot)
        current, uids, bits, with_keywords, keywords = snapshot
        view = self.view = SelectedView(
            current.id, current.name, current.uidvalidity, read_only, uids, current.highestmodseq, bits, with_keywords, shared=True
        )
        view.announce(keywords)
        view.announce(folder.keywords.split())  # every keyword ever set here, in use now or not
        if uids:  # first_recent_uid from the folder read now: claiming recent messages does not move HIGHESTMODSEQ
            await self._claim_recent(uids[-1] + 1, folder.first_recent_uid)
        view.recent_told = view.recent_count()
        lines = [
            b"* %d EXISTS\r\n" % len(uids),
            b"* %d RECENT\r\n" % view.recent_told,
            view.flags_lines(),
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % current.uidvalidity,
            b"* OK [UIDNEXT %d] predicted next UID\r\n" % current.uidnext,
            b"* OK [HIGHESTMODSEQ %d] highest\r\n" % current.highestmodseq,
        ]
        unseen = bits.translate(_SEEN_OR_NOT).find(0)  # the first message without \\Seen, from the flag bits
        if unseen >= 0:
            lines.append(b"* OK [UNSEEN %d] first unseen\r\n" % (unseen + 1))
        await self.send(b"".join(lines))
        self.state = SELECTED
        return b"OK [READ-ONLY] EXAMINE completed" if read_only else b"OK [READ-WRITE] SELECT completed"

    def _leave(self) -> None:
        self.view = None
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    async def create(self, command: Command) -> bytes:
        assert self.mailbox_id is not None
        name = command.args.mailbox.rstrip(DELIMITER)
        if not name or DELIMITER * 2 in name or name.startswith(DELIMITER):
            return b"NO [CANNOT] nom de dossier invalide / bad folder name"
        parts = name.split(DELIMITER)
        for depth in range(1, len(parts) + 1):  # parents are created too (RFC 3501 6.3.3)
            prefix = DELIMITER.join(parts[:depth])
            if prefix == "INBOX" or await self.server.store.folder(self.mailbox_id, prefix) is not None:
                if depth == len(parts):
                    return b"NO [ALREADYEXISTS] ce dossier existe deja / folder exists"
                continue
            await self.server.store.create(self.mailbox_id, prefix)
        return b"OK CREATE completed"

    async def delete(self, command: Command) -> bytes:
        assert self.mailbox_id is not None
        name = command.args.mailbox
        if self.view is not None and self.view.name == name:
            self._leave()
        await self.server.store.delete(self.mailbox_id, name, trace=self._trace(DELETE_FOLDER, f"folder {name}"))
        return b"OK DELETE completed"

    async def rename(self, command: Command) -> bytes:
        assert self.mailbox_id is not None
        await self.server.store.rename(self.mailbox_id, command.args.mailbox, command.args.new)
        return b"OK RENAME completed"

    async def subscribe(self, command: Command) -> bytes:
        assert self.mailbox_id is not None
        await self.server.store.subscribe(self.mailbox_id, command.args.mailbox, command.name == "SUBSCRIBE")
        return b"OK %s completed" % command.name.encode()

    async def list_(self, command: Command) -> bytes:
        assert self.mailbox_id is not None
        reference, pattern = command.args.reference, command.args.pattern
        name = command.name.encode()
        if pattern == "":
            await self.send(b'* %s (\\Noselect) "/" ""\r\n' % name)
            return b"OK %s completed" % name
        wanted = _pattern(reference + pattern)
        selection, returns = command.args.selection, command.args.returns
        if command.name == "LSUB":
            lines = self._lsub(wanted, await self.server.store.subscriptions(self.mailbox_id))
            await self.send(b"".join(lines))
            return b"OK LSUB completed"
        folders = await self.server.store.folders(self.mailbox_id)
        want_subscribed = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns
        subscribed = await self.server.store.subscriptions(self.mailbox_id) if want_subscribed else set()
        names = {folder.name for folder in folders}
        lines = []
        for folder in folders:
            if not _matches(wanted, folder.name):
                continue
            if ("SUBSCRIBED" in selection and folder.name not in subscribed) or ("SPECIAL-USE" in selection and not folder.special_use):
                continue
            attributes = ["\\HasChildren" if any(n.startswith(folder.name + DELIMITER) for n in names) else "\\HasNoChildren"]
            if folder.special_use:
                attributes.append(folder.special_use)
            if folder.name in subscribed:
                attributes.append("\\Subscribed")
            lines.append(b'* LIST (%s) "/" %s\r\n' % (" ".join(attributes).encode(), astring(folder.name)))
        if "SUBSCRIBED" in selection:  # subscribed names with no folder (RFC 5258 3.1)
            for missing in sorted(subscribed - names):
                if _matches(wanted, missing):
                    lines.append(b'* LIST (\\NonExistent \\Subscribed) "/" %s\r\n' % astring(missing))
        await self.send(b"".join(lines))
        return b"OK LIST completed"

    @staticmethod
    def _lsub(wanted: list[str], subscribed: set[str]) -> list[bytes]:
        """LSUB (RFC 3501 6.3.9): the subscribed names matching, and, when "%" stops at a
        level above a subscribed name, that level with \\Noselect if it is not subscribed
        itself ("foo/bar" subscribed, "foo" not: `LSUB "" %` answers foo, \\Noselect)."""
        found: dict[str, str] = {}
        for name in sorted(subscribed):
            if _matches(wanted, name):
                found[name] = ""
                continue
            parts = name.split(DELIMITER)
            for depth in range(1, len(parts)):
                parent = DELIMITER.join(parts[:depth])
                if parent not in subscribed and _matches(wanted, parent):
                    found.setdefault(parent, "\\Noselect")
        return [b'* LSUB (%s) "/" %s\r\n' % (found[name].encode(), astring(name)) for name in sorted(found)]

    async def status(self, command: Command) -> bytes:
        folder = await self._folder(command.args.mailbox)
        folder, messages, unseen, recent, size = await self.server.store.status(folder.id)
        values = {
            "MESSAGES": messages,
            "RECENT": recent,
            "UIDNEXT": folder.uidnext,
            "UIDVALIDITY": folder.uidvalidity,
            "UNSEEN": unseen,
            "HIGHESTMODSEQ": folder.highestmodseq,
            "SIZE": size,
        }
        items = " ".join(f"{item} {values[item]}" for item in command.args.status_items)
        await self.send(b"* STATUS %s (%s)\r\n" % (astring(folder.name), items.encode()))
        return b"OK STATUS completed"

    async def append(self, command: Command) -> bytes:
        assert self.mailbox_id is not None
        folder = await self.server.store.folder(self.mailbox_id, command.args.mailbox)
        if folder is None:
            return b"NO [TRYCREATE] dossier inconnu / no such folder"
        raw = _crlf(command.args.message)
        if len(raw) > self.server.settings.max_message_size:
            return b"NO [TOOBIG] message trop gros / message too large"
        if not raw.strip():
            return b"NO [CANNOT] message vide / empty message"
        validity, uid = await self.server.store.append(
            folder.id,
            raw,
            normalise_flags(command.args.flags),
            command.args.date,
            self.address or "",
        )
        self.server.watch.touched(folder.id)
        return b"OK [APPENDUID %d %d] APPEND completed" % (validity, uid)

    async def idle(self, command: Command) -> bytes:
        await self.send(b"+ idling\r\n")
        view = self.view
        if view is not None:
            self.server.watch.watch(view.folder_id, self.wake, view.uidvalidity, view.modseq)
        reading = asyncio.ensure_future(self.reader.readuntil(b"\r\n"))
        metrics.imap_idle.inc()
        try:
            while True:
                self.wake.clear()
                if view is not None:
                    pending = await self.updates("IDLE")
                    if pending:
                        await self.send(pending)
                waking = asyncio.ensure_future(self.wake.wait())
                done, _ = await asyncio.wait(
                    {reading, waking}, timeout=self.server.settings.imap_timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    waking.cancel()
                    raise Bye("deconnexion apres inactivite / autologout, idle for too long")
                if reading in done:
                    waking.cancel()
                    line = reading.result()
                    if line.strip().upper() != b"DONE":
                        return b"BAD expected DONE"
                    return b"OK IDLE terminated"
        finally:
            metrics.imap_idle.dec()
            if not reading.done():
                reading.cancel()
            if view is not None:
                self.server.watch.unwatch(view.folder_id, self.wake)

    # ---- selected ------------------------------------------------------------------------

    async def check(self, command: Command) -> bytes:
        return b"OK CHECK completed"

    async def close(self, command: Command) -> bytes:
        assert self.view is not None
        if not self.view.read_only:
            # silently (RFC 3501 6.4.2)
            await self.server.store.expunge(self.view.folder_id, trace=self._trace(EXPUNGE, f"CLOSE of {self.view.name}"))
            self.server.watch.touched(self.view.folder_id)
        self._leave()
        return b"OK CLOSE completed"

    async def unselect(self, command: Command) -> bytes:
        self._leave()
        return b"OK UNSELECT completed"

    async def expunge(self, command: Command) -> bytes:
        view = self._writable()
        uids = view.resolve(command.sequence(), uid=True) if command.name == "UID EXPUNGE" else None
        gone = await self.server.store.expunge(view.folder_id, uids, trace=self._trace(EXPUNGE, f"{command.name} in {view.name}"))
        view.pending_expunges.update(uid for uid in gone if view.sequence_of(uid) is not None)
        await self.send(b"".join(view.flush_expunges()))
        self.server.watch.touched(view.folder_id)
        return b"OK EXPUNGE completed"

    def _trace(self, action: str, detail: str) -> Trace:
        """The operator's trace of a deletion in this session's mailbox (written with it)."""
        return Trace(mailbox=self.address or "", channel="imap", action=action, actor=self.address or "", client=self.client, detail=detail)

    def _writable(self) -> SelectedView:
        assert self.view is not None
        if self.view.read_only:
            raise StoreError("dossier ouvert en lecture seule / folder is read-only", "READ-ONLY")
        return self.view

    async def store(self, command: Command) -> bytes:
        view = self._writable()
        args = command.args
        uids = view.resolve(command.sequence(), uid=command.name.startswith("UID"))
        unchanged_since = args.unchanged_since
        if unchanged_since is not None:
            self.condstore = True
        changed, failed = await self.server.store.store_flags(
            view.folder_id,
            uids,
            args.action,
            args.flags,
            unchanged_since,
        )
        lines = []
        new_keywords = False
        for change in changed:
            view.own_modseqs.add(change.modseq)
            view.set_flags(change.uid, change.flags)
            new_keywords |= view.learn_flags(change.flags)
            sequence = view.sequence_of(change.uid)
            if sequence is None:
                continue
            if not args.silent or unchanged_since is not None:
                items = [b"UID %d" % change.uid] if command.name.startswith("UID") else []
                if not args.silent:
                    items.append(b"FLAGS (%s)" % view.flags_text(change.uid, change.flags))
                if self.condstore:
                    items.append(b"MODSEQ (%d)" % change.modseq)
                lines.append(b"* %d FETCH (%s)\r\n" % (sequence, b" ".join(items)))
        if new_keywords:  # a keyword used for the first time: FLAGS before the FETCH that shows it
            lines.insert(0, view.flags_lines())
        await self.send(b"".join(lines))
        if changed:
            self.server.watch.touched(view.folder_id)
        if failed:
            numbers = failed if command.name.startswith("UID") else [view.sequence_of(uid) or 0 for uid in failed]
            return b"OK [MODIFIED %s] conditional STORE failed for some" % _set_text(numbers).encode()
        return b"OK STORE completed"

    async def copy(self, command: Command) -> bytes:
        assert self.view is not None and self.mailbox_id is not None
        target = await self.server.store.folder(self.mailbox_id, command.args.mailbox)
        if target is None:
            return b"NO [TRYCREATE] dossier inconnu / no such folder"
        uids = self.view.resolve(command.sequence(), uid=command.name.startswith("UID"))
        moving = command.name.endswith("MOVE")
        if moving:
            self._writable()
        validity, source, created = await self.server.store.copy(self.view.folder_id, uids, target.id)
        self.server.watch.touched(target.id)
        code = b"COPYUID %d %s %s" % (validity, _set_text(source).encode(), _set_text(created).encode()) if source else b""
        if not moving:
            return b"OK [%s] COPY completed" % code if code else b"OK COPY completed"
        await self.send(b"* OK [%s] moved\r\n" % code if code else b"")
        await self._remove(source, target.name)
        return b"OK MOVE completed"

    async def _remove(self, uids: list[int], target: str) -> None:
        """The second half of MOVE: expunge exactly these entries, whatever their flags."""
        view = self._writable()
        if not uids:
            return
        await self.server.store.store_flags(view.folder_id, uids, "+FLAGS", ["\\Deleted"])
        gone = await self.server.store.expunge(view.folder_id, uids, trace=self._trace(MOVE, f"from {view.name} to {target}"))
        view.pending_expunges.update(uid for uid in gone if view.sequence_of(uid) is not None)
        await self.send(b"".join(view.flush_expunges()))
        self.server.watch.touched(view.folder_id)

    async def search(self, command: Command) -> bytes:
        assert self.view is not None
        view = self.view
        key = command.search()
        need = searching.needs(key)
        if need.modseq:
            self.condstore = True
        found: list[tuple[int, int]] = []  # (number to answer, modseq)
        largest_uid = view.uids[-1] if view.uids else 0
        use_uid = command.name.startswith("UID")
        if searching.in_memory(key, headers=True):
            # Flags, UIDs, numbers (the view has them) and searched headers (the cache has them, or gets them now).
            headers = None
            if searching.uses_headers(key):
                headers = self.server.header_cache.folder(view.folder_id, view.uidvalidity)
                missing = [uid for uid in view.uids if uid not in headers]
                if missing:
                    fetched: dict[int, bytes] = {}
                    async for rows in self.server.store.fetch(view.folder_id, missing, summary=True, body=False):
                        fetched.update((row.uid, row.summary.packed_headers) for row in rows if row.summary is not None)
                    self.server.header_cache.add(view.folder_id, view.uidvalidity, fetched)
            test = searching.compile_memory(key, len(view.uids), view.uids[-1] if view.uids else 0, headers, view.is_recent)
            keywords, flags = view.keywords, view.flags
            if searching.flags_only(key):
                chosen = view.flags.translate(searching.flag_table(test))
                numbers = list(itertools.compress(view.uids if use_uid else range(1, len(view.uids) + 1), chosen))
            else:
                numbers = [
                    uid if use_uid else index + 1
                    for index, uid in enumerate(view.uids)
                    if test(index + 1, uid, flags[index], keywords.get(uid, ""))
                ]
            await self.send(b"* SEARCH" + b"".join(b" %d" % number for number in numbers) + b"\r\n")
            return b"OK SEARCH completed"
        async for rows in self.server.store.fetch(view.folder_id, list(view.uids), summary=need.summary, body=need.body):
            for row in rows:
                sequence = view.sequence_of(row.uid)
                if sequence is None:
                    continue
                candidate = searching.Candidate(row, sequence, len(view.uids), largest_uid, view.is_recent(row.uid))
                if searching.matches(key, candidate):
                    found.append((row.uid if use_uid else sequence, row.modseq))
        line = b"* SEARCH" + b"".join(b" %d" % number for number, _ in found)
        if need.modseq and found:
            line += b" (MODSEQ %d)" % max(modseq for _, modseq in found)
        await self.send(line + b"\r\n")
        return b"OK SEARCH completed"

    async def fetch(self, command: Command) -> bytes:
        assert self.view is not None
        view = self.view
        use_uid = command.name.startswith("UID")
        items: list[FetchItem] = list(command.args.fetch_items)
        names = {item.name for item in items}
        changed_since = command.args.changed_since
        if changed_since is not None or "MODSEQ" in names:
            self.condstore = True
        if use_uid and "UID" not in names:
            items.insert(0, FetchItem("UID", label="UID"))
        if self.condstore and changed_since is not None and "MODSEQ" not in names:
            items.append(FetchItem("MODSEQ", label="MODSEQ"))
        uids = view.resolve(command.sequence(), uid=use_uid)
        need_summary = bool(names & {"ENVELOPE", "BODY", "BODYSTRUCTURE"})
        need_body = any(item.name in ("BODY[]", "BINARY[]", "RFC822", "RFC822.HEADER", "RFC822.TEXT") for item in items)
        marks_seen = not view.read_only and any(
            (item.name in ("BODY[]", "BINARY[]") and not item.peek) or item.name in ("RFC822", "RFC822.TEXT") for item in items
        )
        seen_now: set[int] = set()
        if marks_seen and uids:
            changed, _ = await self.server.store.store_flags(view.folder_id, uids, "+FLAGS", ["\\Seen"])
            for change in changed:
                view.own_modseqs.add(change.modseq)
                view.set_flags(change.uid, change.flags)
                seen_now.add(change.uid)
            if changed:
                self.server.watch.touched(view.folder_id)
        buffer: list[bytes] = []
        size = 0
        shows_flags = "FLAGS" in names or bool(seen_now)
        async for rows in self.server.store.fetch(view.folder_id, uids, summary=need_summary, body=need_body, changed_since=changed_since):
            for row in rows:
                sequence = view.sequence_of(row.uid)
                if sequence is None:
                    continue
                if shows_flags and view.learn_flags(row.flags):  # changed elsewhere since the last update
                    buffer.append(view.flags_lines())
                pieces = _fetch_items(items, row, view, add_flags=row.uid in seen_now and "FLAGS" not in names)
                response = b"* %d FETCH (" % sequence + b" ".join(pieces) + b")\r\n"
                buffer.append(response)
                size += len(response)
                if size >= FLUSH_AT:
                    await self.send(b"".join(buffer))
                    buffer, size = [], 0
        if buffer:
            await self.send(b"".join(buffer))
        return b"OK FETCH completed"


class _Handled(Exception):
    """The command already sent its tagged response (STARTTLS)."""


def _fetch_items(items: list[FetchItem], row, view: SelectedView, *, add_flags: bool) -> list[bytes]:  # type: ignore[no-untyped-def]
    pieces = []
    root = None
    for item in items:
        name = item.name
        if name == "UID":
            pieces.append(b"UID %d" % row.uid)
        elif name == "FLAGS":
            pieces.append(b"FLAGS (%s)" % view.flags_text(row.uid, row.flags))
        elif name == "INTERNALDATE":
            pieces.append(b'INTERNALDATE "%s"' % format_datetime(row.received_at).encode())
        elif name == "RFC822.SIZE":
            pieces.append(b"RFC822.SIZE %d" % row.size)
        elif name == "MODSEQ":
            pieces.append(b"MODSEQ (%d)" % row.modseq)
        elif name == "ENVELOPE":
            pieces.append(b"ENVELOPE " + row.summary.imap_envelope)
        elif name == "BODYSTRUCTURE":
            pieces.append(b"BODYSTRUCTURE " + row.summary.imap_bodystructure)
        elif name == "BODY":
            pieces.append(b"BODY " + row.summary.imap_body)
        elif name == "RFC822":
            pieces.append(b"RFC822 " + _literal(row.body))
        else:
            if root is None and (item.part or item.kind or name in ("RFC822.HEADER", "RFC822.TEXT")):
                root = structure.parse(row.body)
            if name == "RFC822.HEADER":
                pieces.append(b"RFC822.HEADER " + _literal(root.header_bytes))  # type: ignore[union-attr]
            elif name == "RFC822.TEXT":
                pieces.append(b"RFC822.TEXT " + _literal(root.body_bytes))  # type: ignore[union-attr]
            else:
                data = row.body if root is None else structure.section(root, item.part, item.kind, item.fields)
                if name == "BINARY[]" and data is not None and root is not None:
                    part = structure.find_part(root, item.part)
                    data = structure.decoded(part, data) if part is not None else None
                if data is not None and item.partial is not None:
                    start, length = item.partial
                    data = data[start : start + length]
                pieces.append(item.label.encode() + b" " + (_literal(data) if data is not None else b"NIL"))
    if add_flags:  # \Seen was just set by this FETCH: the client is told (RFC 3501 6.4.5)
        pieces.append(b"FLAGS (%s)" % view.flags_text(row.uid, row.flags))
    return pieces


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _crlf(raw: bytes) -> bytes:
    """Line ends as CRLF (some clients append with bare LF)."""
    if b"\n" not in raw.replace(b"\r\n", b""):
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _set_text(numbers: list[int]) -> str:
    return ",".join(f"{low}:{high}" if low != high else str(low) for low, high in uid_ranges(sorted(numbers)))


def _pattern(text: str) -> list[str]:
    """A LIST pattern as tokens: literal text, '*' (anything) and '%' (anything but the delimiter)."""
    tokens, literal = [], ""
    for char in text:
        if char in "*%":
            if literal:
                tokens.append(literal)
                literal = ""
            tokens.append(char)
        else:
            literal += char
    if literal:
        tokens.append(literal)
    return tokens


def _matches(tokens: list[str], name: str) -> bool:
    if tokens and tokens[0].upper() == "INBOX" and name == "INBOX":
        tokens = ["INBOX", *tokens[1:]]

    def match(ti: int, ni: int) -> bool:
        if ti == len(tokens):
            return ni == len(name)
        token = tokens[ti]
        if token == "*":
            return any(match(ti + 1, k) for k in range(ni, len(name) + 1))
        if token == "%":
            k = ni
            while True:
                if match(ti + 1, k):
                    return True
                if k >= len(name) or name[k] == DELIMITER:
                    return False
                k += 1
        return name.startswith(token, ni) and match(ti + 1, ni + len(token))

    return match(0, 0)


COMMANDS: dict[str, Handler] = {
    "CAPABILITY": Handler(ANY, Session.capability),
    "NOOP": Handler(ANY, Session.noop),
    "LOGOUT": Handler(ANY, Session.logout),
    "ID": Handler(ANY, Session.id_),
    "STARTTLS": Handler(PRE, Session.starttls),
    "LOGIN": Handler(PRE, Session.login),
    "AUTHENTICATE": Handler(PRE, Session.authenticate),
    "ENABLE": Handler(AUTH, Session.enable),
    "NAMESPACE": Handler(AUTH, Session.namespace),
    "SELECT": Handler(AUTH, Session.select),
    "EXAMINE": Handler(AUTH, Session.select),
    "CREATE": Handler(AUTH, Session.create),
    "DELETE": Handler(AUTH, Session.delete),
    "RENAME": Handler(AUTH, Session.rename),
    "SUBSCRIBE": Handler(AUTH, Session.subscribe),
    "UNSUBSCRIBE": Handler(AUTH, Session.subscribe),
    "LIST": Handler(AUTH, Session.list_),
    "LSUB": Handler(AUTH, Session.list_),
    "STATUS": Handler(AUTH, Session.status),
    "APPEND": Handler(AUTH, Session.append),
    "IDLE": Handler(AUTH, Session.idle),
    "CHECK": Handler(SEL, Session.check),
    "CLOSE": Handler(SEL, Session.close),
    "UNSELECT": Handler(SEL, Session.unselect),
    "EXPUNGE": Handler(SEL, Session.expunge),
    "UID EXPUNGE": Handler(SEL, Session.expunge),
    "SEARCH": Handler(SEL, Session.search),
    "UID SEARCH": Handler(SEL, Session.search),
    "FETCH": Handler(SEL, Session.fetch),
    "UID FETCH": Handler(SEL, Session.fetch),
    "STORE": Handler(SEL, Session.store),
    "UID STORE": Handler(SEL, Session.store),
    "COPY": Handler(SEL, Session.copy),
    "UID COPY": Handler(SEL, Session.copy),
    "MOVE": Handler(SEL, Session.copy),
    "UID MOVE": Handler(SEL, Session.copy),
}
