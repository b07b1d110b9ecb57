"""What the webmail does, without HTTP: list, read, reply, send a prescription.

The pages and the JSON API both call this; neither holds any rule of its own. Every send
goes through the gateway's accept pipeline, and before an action is offered the pipeline
is asked (`judge`) whether it would be accepted, so the page never offers what the
gateway would refuse, and says why.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db
from caducee.annuaire import patients
from caducee.annuaire import service as annuaire
from caducee.annuaire.patients import PatientAccount, Profile
from caducee.config import Settings
from caducee.core.singleflight import SingleFlight
from caducee.crypto.atrest import BodyCipher
from caducee.gateway.pipeline import AcceptPipeline, Channel, Envelope
from caducee.history.service import Access, AccessHistory
from caducee.mailbox import conversations as store
from caducee.mailbox.fanout import PREVENTION
from caducee.mailbox.mailstore import MailStore
from caducee.policies import Decision
from caducee.policies import Message as MessageFacts
from caducee.traces.service import MOVE, Trace
from caducee.webmail import compose, preferences, reading
from caducee.webmail.accounts import aware
from caducee.webmail.uploads import Upload

log = logging.getLogger(__name__)

PAGE_SIZE = 20
SEARCH_LIST = 500  # conversations whose subject and correspondent a search reads
SEARCH_TEXTS = 100  # of which the most recent have their texts searched too
VIEWS: dict[str, dict[str, tuple[str, ...]]] = {
    "messages": {"leave_out": ("Trash", "Archive")},
    "archives": {"only": ("Archive",)},
    "corbeille": {"only": ("Trash",)},
}
CACHE_ITEMS = 10_000  # conversation lists and correspondents kept per process
READABLE_ITEMS = 2_000  # opened messages kept per process
PEOPLE_SECONDS = 60.0  # how long a correspondent's name and profession are reused
READ_RECORD_SECONDS = 600.0  # a conversation read again within this is not recorded again
try:
    PARIS: tzinfo = ZoneInfo("Europe/Paris")
except ZoneInfoNotFoundError:  # a system without a time zone database: UTC rather than nothing
    PARIS = UTC
CNAM_NAME = "Assurance Maladie"
PREFERENCE_SECONDS = 10.0  # a preference changed in another worker process applies within this
RELATION_WORDS = {"self": "", "guardian": " (parent ou tuteur)", "carer": " (aidant)"}


def fold(text: str) -> str:
    """Lower case without accents: what a search compares."""
    import unicodedata

    return "".join(ch for ch in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(ch))


def actor_label(actor: PatientAccount, profile: Profile) -> str:
    return f"{actor.name}{RELATION_WORDS.get(profile.relation, '')}"


def written_by(actor: PatientAccount, profile: Profile) -> tuple[str, str] | None:
    """The Sender: of a message a guardian or a carer writes for a profile (None for one's own)."""
    if actor.id == profile.account.id:
        return None
    return (f"{actor.name}{RELATION_WORDS.get(profile.relation, '')}", actor.address)


@dataclass(frozen=True)
class Correspondent:
    name: str
    address: str
    detail: str  # profession and place, from the annuaire ("Médecin — Cabinet médical des Lilas")


@dataclass(frozen=True)
class ConversationLine:
    key: int
    subject: str
    correspondent: Correspondent
    last_at: datetime
    messages: int
    unread: int
    closed: bool
    is_campaign: bool


@dataclass(frozen=True)
class ReplyOption:
    allowed: bool
    reason: str = ""  # why not, in French
    to: list[Correspondent] = field(default_factory=list)


@dataclass(frozen=True)
class MessageView:
    id: int
    author: Correspondent
    mine: bool
    at: datetime
    subject: str
    text: str
    attachments: list[reading.Attachment]
    encrypted: bool
    html: str | None = None  # sanitised (reading.safe_html), shown as is
    written_by: str = ""  # who wrote it for the profile's owner (its Sender:), when not them


@dataclass(frozen=True)
class ConversationView:
    key: int
    subject: str
    messages: list[MessageView]
    closed: bool
    closed_by: str | None
    closed_at: datetime | None
    is_campaign: bool
    reply: ReplyOption
    archived: bool = False  # every message of it is in Archive


@dataclass(frozen=True)
class SendResult:
    sent: bool
    text: str  # what to tell the person
    conversation: int | None = None
    not_found: bool = False  # the conversation is not one this profile holds


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else text


def local_time(moment: datetime) -> datetime:
    """The moment as a clock in France shows it (stored times are UTC)."""
    return aware(moment).astimezone(PARIS)


def french_date(moment: datetime | None) -> str:
    if moment is None:
        return ""
    months = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre", "novembre", "décembre"]
    local = local_time(moment)
    return f"{local.day} {months[local.month - 1]} {local.year}"


def french_time(moment: datetime | None) -> str:
    return f"{local_time(moment):%H:%M}" if moment is not None else ""


class Webmail:
    def __init__(
        self, engine: AsyncEngine, settings: Settings, cipher: BodyCipher, pipeline: AcceptPipeline | None, history: AccessHistory
    ) -> None:
        self.engine = engine
        self.reads = db.autocommit_reads(engine)  # the pages' reads: one statement each, no BEGIN/ROLLBACK
        self.settings = settings
        self.cipher = cipher
        self.pipeline = pipeline
        self.history = history
        self.mailstore = MailStore(engine, cipher)
        # Per-process caches, each bounded. The conversation list is checked against the
        # mailbox's version on every use, so it is never stale; names from the annuaire may
        # be a minute old; an opened message never changes (bodies are immutable), but its
        # readable text stays in this process's memory, like the IMAP header cache.
        self._lists: dict[tuple[int, int, bool, str, str], tuple[tuple[int, str], list[ConversationLine], int]] = {}
        self._people: dict[str, tuple[float, Correspondent]] = {}
        self._readable: OrderedDict[int, reading.Readable] = OrderedDict()
        self._decisions: dict[tuple[str, int, bool, bool], tuple[float, Decision]] = {}
        self._judging: SingleFlight[tuple[str, int, bool, bool], Decision] = SingleFlight()
        self._describing: SingleFlight[frozenset[str], dict[str, Correspondent]] = SingleFlight()
        self._recorded: dict[tuple[int, int, int], float] = {}
        self._cnam = {address.lower() for address in settings.cnam_senders}
        self._hidden: dict[int, tuple[float, bool]] = {}

    # ---- who is who ------------------------------------------------------------------------

    async def _correspondents(self, addresses: set[str]) -> dict[str, Correspondent]:
        moment = time.monotonic()
        result = {}
        for address in addresses:
            cached = self._people.get(address)
            if cached is not None and moment - cached[0] < PEOPLE_SECONDS:
                result[address] = cached[1]
        missing = frozenset(addresses - result.keys())
        if missing:
            if len(self._people) > CACHE_ITEMS:
                self._people.clear()
            for address, person in (await self._describing.run(missing, lambda: self._describe(missing))).items():
                self._people[address] = (moment, person)
                result[address] = person
        return result

    async def _describe(self, addresses: frozenset[str]) -> dict[str, Correspondent]:
        async with self.reads.connect() as conn:
            entries = await patients.describe(conn, sorted(addresses))
        result = {}
        for address in addresses:
            entry = entries.get(address)
            if address in self._cnam:  # the CNAM's campaign senders, whatever their mailbox's name
                result[address] = Correspondent(CNAM_NAME, address, "Prévention")
                continue
            if entry is None:
                name = "Caducée (message automatique)" if address.startswith("postmaster@") else address
                result[address] = Correspondent(name, address, "")
                continue
            if entry.type == "PAT":
                result[address] = Correspondent(entry.display_name, address, "Patient")
                continue
            person = " ".join(part for part in (entry.civility, entry.first_name, entry.last_name) if part)
            name = person or entry.display_name or entry.structure_name or address
            place = entry.structure_name if entry.structure_name and entry.structure_name != name else ""
            detail = " — ".join(part for part in (entry.savoir_faire_label or entry.profession_label, place, entry.city) if part)
            result[address] = Correspondent(name, address, detail)
        return result

    # ---- preferences -------------------------------------------------------------------------

    async def hides_prevention(self, profile: Profile) -> bool:
        """Whether this profile hid the CNAM's prevention messages from its list (read every
        `PREFERENCE_SECONDS` at most: every list page asks)."""
        moment = time.monotonic()
        cached = self._hidden.get(profile.account.id)
        if cached is not None and moment - cached[0] < PREFERENCE_SECONDS:
            return cached[1]
        async with self.reads.connect() as conn:
            hidden = await preferences.hides_prevention(conn, profile.account.id)
        if len(self._hidden) > CACHE_ITEMS:
            self._hidden.clear()
        self._hidden[profile.account.id] = (moment, hidden)
        return hidden

    async def hide_prevention(self, profile: Profile, hidden: bool) -> None:
        async with self.engine.begin() as conn:
            await preferences.set_hide_prevention(conn, profile.account.id, hidden)
        self._hidden[profile.account.id] = (time.monotonic(), hidden)

    # ---- the conversation list ---------------------------------------------------------------

    async def inbox(
        self, profile: Profile, *, page: int = 1, unread_only: bool = False, view: str = "messages", prevention: str = "shown"
    ) -> tuple[list[ConversationLine], int]:
        """A page of the list: `view` is "messages" (all but Archive and Trash), "archives"
        or "corbeille"; `prevention` "shown" (everything), "hidden" (the patient hid the
        CNAM's prevention messages) or "only" (the "Prévention" label)."""
        me = profile.account.address
        folders = VIEWS.get(view, VIEWS["messages"])
        key = (profile.account.mailbox_id, page, unread_only, view, prevention)
        async with self.reads.connect() as conn:
            version = await store.list_version(conn, profile.account.mailbox_id, me)
            cached = self._lists.get(key)
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            rows, total = await store.list_conversations(
                conn,
                profile.account.mailbox_id,
                offset=(page - 1) * PAGE_SIZE,
                limit=PAGE_SIZE,
                unread_only=unread_only,
                keyword=PREVENTION if prevention == "only" else None,
                without_keyword=PREVENTION if prevention == "hidden" else None,
                **folders,
            )
        lines = await self._lines(rows, me)
        if len(self._lists) > CACHE_ITEMS:
            self._lists.clear()
        self._lists[key] = (version, lines, total)
        return lines, total

    async def _lines(self, rows: list[store.ConversationRow], me: str) -> list[ConversationLine]:
        wanted = {self._other_party(row, me) for row in rows}
        people = await self._correspondents(wanted)
        lines = []
        for row in rows:
            subject = ""
            if row.sealed_summary is not None:
                subject = reading.heading(self.cipher.open(row.sealed_summary)).subject
            lines.append(
                ConversationLine(
                    row.key,
                    subject or "(sans objet)",
                    people[self._other_party(row, me)],
                    row.last_at,
                    row.messages,
                    row.unread,
                    row.state == "closed",
                    row.is_campaign,
                )
            )
        return lines

    # ---- search, archive, trash, export ---------------------------------------------------------

    async def search(self, profile: Profile, words: str) -> list[ConversationLine]:
        """Conversations whose subject, correspondent or text holds every word (accents and
        case ignored): subjects and correspondents of the `SEARCH_LIST` most recent, texts of
        the `SEARCH_TEXTS` most recent (texts are opened, decrypted, and kept in the cache)."""
        wanted = [fold(word) for word in words.split() if word.strip()][:10]
        if not wanted:
            return []
        async with self.reads.connect() as conn:
            rows, _ = await store.list_conversations(conn, profile.account.mailbox_id, limit=SEARCH_LIST, leave_out=("Trash",))
        lines = await self._lines(rows, profile.account.address)
        found = []
        for number, line in enumerate(lines):
            haystack = fold(f"{line.subject} {line.correspondent.name} {line.correspondent.detail}")
            if not all(word in haystack for word in wanted) and number < SEARCH_TEXTS:
                async with self.reads.connect() as conn:
                    stored = await store.conversation_messages(conn, profile.account.mailbox_id, line.key)
                opened = await self._read_all(stored)
                haystack += " " + fold(" ".join(f"{readable.subject} {readable.text}" for _, readable in opened))
            if all(word in haystack for word in wanted):
                found.append(line)
        return found

    async def move(self, profile: Profile, key: int, target: str, *, actor: str = "") -> bool:
        """File a whole conversation into `target` ("Archive", "Trash"), or back ("INBOX":
        what others wrote to the INBOX, what the patient wrote to Sent), as a mail client
        would with MOVE. False when this profile holds no such conversation or may not.
        `actor`: the signed-in person's address (a guardian for a child), for the trace."""
        if profile.relation == "carer":  # a carer reads; the patient's folders stay as they are
            return False
        async with self.reads.connect() as conn:
            entries = await store.conversation_entries(conn, profile.account.mailbox_id, key)
        if not entries:
            return False
        folders = {folder.name: folder.id for folder in await self.mailstore.folders(profile.account.mailbox_id)}
        for name in {target, "INBOX", "Sent"}:
            if name not in folders:
                await self.mailstore.create(profile.account.mailbox_id, name)
        folders = {folder.name: folder.id for folder in await self.mailstore.folders(profile.account.mailbox_id)}
        groups: dict[tuple[int, int], list[int]] = {}
        for entry in entries:
            destination = target
            if target == "INBOX":
                if entry.folder not in {"Archive", "Trash"}:
                    continue
                destination = "Sent" if entry.sender == profile.account.address else "INBOX"
            elif entry.folder == target or (target == "Archive" and entry.folder == "Trash"):
                continue
            groups.setdefault((entry.folder_id, folders[destination]), []).append(entry.uid)
        names = {folder_id: name for name, folder_id in folders.items()}
        for (source, target_id), uids in groups.items():
            await self.mailstore.copy(source, uids, target_id)
            await self.mailstore.store_flags(source, uids, "+FLAGS", ["\\Deleted"])
            trace = Trace(
                mailbox=profile.account.address,
                channel="webmail",
                action=MOVE,
                actor=actor or profile.account.address,
                detail=f"conversation {key} from {names.get(source, '?')} to {names.get(target_id, target)}",
            )
            await self.mailstore.expunge(source, uids, trace=trace)
        return True

    async def export(self, profile: Profile, actor: PatientAccount) -> bytes:
        """Every message of the profile (Trash included) as a zip of .eml files, one folder
        per conversation, with a plain-text index: what a patient takes with them before
        closing their profile. Recorded in the access history."""
        import io
        import zipfile

        buffer = io.BytesIO()
        index_lines = [f"Messages de {profile.account.name} ({profile.account.address}), exportés le {french_date(datetime.now(UTC))}.", ""]
        async with self.reads.connect() as conn:
            rows, _ = await store.list_conversations(conn, profile.account.mailbox_id, limit=100_000, leave_out=())
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for number, row in enumerate(reversed(rows), start=1):
                async with self.reads.connect() as conn:
                    entries = await store.conversation_entries(conn, profile.account.mailbox_id, row.key)
                    bodies = await store.sealed_bodies(conn, sorted({entry.id for entry in entries}))
                seen: set[int] = set()
                for entry in entries:
                    if entry.id in seen:
                        continue
                    seen.add(entry.id)
                    raw = self.cipher.open(bodies[entry.id])
                    subject = reading.read(raw).subject or "(sans objet)"
                    name = f"conversation-{number:04d}/{french_date(entry.received_at).replace(' ', '-')}-{entry.id}.eml"
                    archive.writestr(name, raw)
                    index_lines.append(f"{name}\t{entry.sender}\t{subject}")
            archive.writestr("LISEZMOI.txt", "\n".join(index_lines) + "\n\nChaque fichier .eml s'ouvre avec un logiciel de messagerie.\n")
        await self.history.record(
            Access(profile.account.id, actor_label(actor, profile), "data-exported", f"{len(index_lines) - 2} messages")
        )
        return buffer.getvalue()

    @staticmethod
    def _other_party(row: store.ConversationRow, me: str) -> str:
        others = sorted(row.participants - {me})
        if row.last_sender != me and (not others or row.last_sender in others):
            return row.last_sender
        return others[0] if others else row.last_sender

    async def unread(self, profile: Profile) -> int:
        async with self.reads.connect() as conn:
            return await store.unread_count(conn, profile.account.mailbox_id)

    # ---- one conversation ----------------------------------------------------------------------

    async def conversation(self, profile: Profile, actor: PatientAccount, key: int) -> ConversationView | None:
        """The conversation as this profile sees it (None if it holds none of it); opening it
        marks it read, sends the receipts asked for, and is recorded in the access history."""
        me = profile.account.address
        async with self.reads.connect() as conn:
            stored, state = await store.conversation_with_state(conn, profile.account.mailbox_id, key)
        if not stored:
            return None
        opened = await self._read_all(stored)
        people = await self._correspondents({message.sender for message in stored} | {r.from_address for _, r in opened if r.from_address})
        views = []
        for message, readable in opened:
            author = people.get(message.sender) or Correspondent(readable.from_name or message.sender, message.sender, "")
            views.append(
                MessageView(
                    message.id,
                    author,
                    message.sender == me,
                    message.received_at,
                    readable.subject,
                    readable.text,
                    readable.attachments,
                    readable.encrypted,
                    readable.html,
                    readable.sender_name,
                )
            )
        closed = state is not None and state.closed
        is_campaign = state is not None and state.is_campaign
        subject = next((view.subject for view in views if view.subject), "(sans objet)")
        reply = await self._reply_option(profile, stored, state)
        conversation = ConversationView(
            key,
            subject,
            views,
            closed,
            state.closed_by if state else None,
            state.closed_at if state else None,
            is_campaign,
            reply,
            all(message.folder == "Archive" for message in stored),
        )
        await self._record_read(profile, actor, key, f"Conversation avec {reply.to[0].name if reply.to else views[0].author.name}")
        if profile.relation != "carer":  # a carer's reading leaves the patient's messages unread
            await self._mark_read(profile, stored, opened, is_campaign)
        return conversation

    async def _record_read(self, profile: Profile, actor: PatientAccount, key: int, detail: str) -> None:
        """One record per reader, conversation and `READ_RECORD_SECONDS`: the history says who
        read what and when; a page reloaded ten times in a minute is one reading, and ten
        lines would hide the ones that matter."""
        moment = time.monotonic()
        seen = (actor.id, profile.account.id, key)
        if moment - self._recorded.get(seen, -READ_RECORD_SECONDS) < READ_RECORD_SECONDS:
            return
        await self.history.record(Access(profile.account.id, actor_label(actor, profile), "message-read", detail))
        if len(self._recorded) > CACHE_ITEMS:
            self._recorded.clear()
        self._recorded[seen] = moment

    async def _read_all(self, messages: list[store.StoredMessage]) -> list[tuple[store.StoredMessage, reading.Readable]]:
        """Each message opened: from the cache, else its body read, decrypted and parsed once."""
        missing = [message.id for message in messages if message.id not in self._readable]
        if missing:
            async with self.reads.connect() as conn:
                bodies = await store.sealed_bodies(conn, missing)
            for message_id, sealed in bodies.items():
                self._readable[message_id] = reading.read(self.cipher.open(sealed))
        opened = []
        for message in messages:
            self._readable.move_to_end(message.id)
            opened.append((message, self._readable[message.id]))
        while len(self._readable) > READABLE_ITEMS:
            self._readable.popitem(last=False)
        return opened

    async def _raw(self, message: store.StoredMessage) -> bytes:
        async with self.reads.connect() as conn:
            bodies = await store.sealed_bodies(conn, [message.id])
        return self.cipher.open(bodies[message.id])

    def _answerable(self, stored: list[store.StoredMessage], me: str) -> store.StoredMessage | None:
        """The message a reply answers: the latest one someone else wrote."""
        for message in reversed(stored):
            if message.sender != me and not message.sender.startswith("postmaster@") and message.message_id_header:
                return message
        return None

    async def _reply_option(
        self, profile: Profile, stored: list[store.StoredMessage], state: store.ConversationStatus | None
    ) -> ReplyOption:
        """Whether a reply is offered, and why not: the gateway's own decision (the same rules
        on the same facts), its rule turned into a sentence for this page."""
        me = profile.account.address
        target = self._answerable(stored, me)
        if target is None:
            if all(message.sender == me for message in stored):
                return ReplyOption(
                    False,
                    "Vous avez envoyé ce message. Votre correspondant vous répondra dans cette conversation ; "
                    "vous pourrez alors lui écrire à nouveau ici.",
                )
            return ReplyOption(False, "Ce message est une information automatique : il n'attend pas de réponse.")
        to = (await self._correspondents({target.sender}))[target.sender]
        if self.pipeline is None:
            return ReplyOption(False, "L'envoi de messages est momentanément indisponible. Réessayez plus tard.", [to])
        decision = await self._would_accept(profile, target, closed=state is not None and state.closed)
        if not decision.accepted:
            return ReplyOption(False, self._refusal_sentence(decision, profile, state), [to])
        return ReplyOption(True, "", [to])

    @staticmethod
    def _refusal_sentence(decision: Decision, profile: Profile, state: store.ConversationStatus | None) -> str:
        """The refusing rule, said for a patient on this page (the rule's own text otherwise)."""
        if decision.rule == "no-reply-to-campaign":
            return "Ce message de l'Assurance Maladie est une information : on ne peut pas y répondre."
        if decision.rule == "conversation-closed" and state is not None:
            return (
                f"{state.closed_by or 'Le professionnel'} a clos cette conversation le {french_date(state.closed_at)}. "
                "Vous ne pouvez plus y répondre. Pour un nouveau besoin, contactez votre professionnel comme d'habitude."
            )
        if decision.rule == "read-only-delegate":
            return f"Vous consultez les messages de {profile.account.name} en tant qu'aidant : vous pouvez les lire mais pas y répondre."
        return _sentence(decision.text_fr)

    async def _would_accept(self, profile: Profile, target: store.StoredMessage, *, closed: bool) -> Decision:
        """The gateway's decision for a reply to `target`, reused for as long as the gateway
        itself trusts what it read from the annuaire (`directory_cache_seconds`). Whether the
        conversation is closed is read on every view and is part of the key: closing shows at once."""
        pipeline = self.pipeline
        assert pipeline is not None
        me = profile.account.address
        moment = time.monotonic()
        key = (me, target.id, closed, profile.may_reply)
        cached = self._decisions.get(key)
        if cached is not None and moment - cached[0] < self.settings.directory_cache_seconds:
            return cached[1]

        async def judge() -> Decision:
            verdict = await pipeline.judge(
                me,
                [target.sender],
                references=[target.message_id_header],
                message=MessageFacts(size=0, subject="Re:", has_content=True),
                channel=Channel.WEBMAIL,
                read_only_delegate=not profile.may_reply,
            )
            if len(self._decisions) > CACHE_ITEMS:
                self._decisions.clear()
            self._decisions[key] = (moment, verdict.decisions[target.sender])
            return verdict.decisions[target.sender]

        return await self._judging.run(key, judge)

    async def _mark_read(
        self,
        profile: Profile,
        stored: list[store.StoredMessage],
        opened: list[tuple[store.StoredMessage, reading.Readable]],
        is_campaign: bool,
    ) -> None:
        unseen = [message for message in stored if not message.seen]
        by_folder: dict[int, list[int]] = {}
        for message in unseen:
            by_folder.setdefault(message.folder_id, []).append(message.uid)
        for folder_id, uids in by_folder.items():
            await self.mailstore.store_flags(folder_id, uids, "+FLAGS", ["\\Seen"])
        if is_campaign or self.pipeline is None:
            return
        receipts = [
            (message, readable)
            for message, readable in opened
            if message in unseen and readable.mdn_to and "$MDNSent" not in message.flags.split()
        ]
        for message, readable in receipts:
            await self._send_receipt(profile, message, readable)

    async def _send_receipt(self, profile: Profile, message: store.StoredMessage, readable: reading.Readable) -> None:
        """RFC 8098: automatically, only to the sender who asked (a different address would
        need the patient's consent, section 2.1), and once ($MDNSent, RFC 3503).

        The flag is claimed before the receipt is sent: setting it takes the folder's lock
        and says whether it changed, so of two tabs (or two workers) opening the message at
        the same moment exactly one sends. A receipt the gateway then refuses is not retried
        (RFC 8098 receipts are best effort); the refusal is logged.
        """
        asked_by = reading.parseaddr_lower(readable.mdn_to or "")
        if asked_by != message.sender:
            return
        claimed, _ = await self.mailstore.store_flags(message.folder_id, [message.uid], "+FLAGS", ["$MDNSent"])
        if not claimed:
            return
        raw = compose.receipt(
            sender_name=profile.account.name,
            sender=profile.account.address,
            to=asked_by,
            original_message_id=message.message_id_header,
            original_subject=readable.subject,
            read_at=datetime.now(UTC),
            hostname=self.settings.hostname,
        )
        assert self.pipeline is not None
        result = await self.pipeline.accept(
            Envelope(profile.account.address, [asked_by], raw, Channel.WEBMAIL, authenticated=profile.account.address)
        )
        if not result.accepted:
            log.info("read receipt to %s refused: %s", asked_by, result.reply)

    async def attachment(
        self, profile: Profile, actor: PatientAccount, key: int, message_id: int, index: int
    ) -> tuple[reading.Attachment, bytes] | None:
        async with self.reads.connect() as conn:
            stored = await store.conversation_messages(conn, profile.account.mailbox_id, key)
        message = next((m for m in stored if m.id == message_id), None)
        if message is None:
            return None
        found = reading.attachment_data(await self._raw(message), index)
        if found is not None:
            await self.history.record(Access(profile.account.id, actor_label(actor, profile), "attachment-read", found[0].filename))
        return found

    # ---- sending -----------------------------------------------------------------------------

    async def reply(self, profile: Profile, actor: PatientAccount, key: int, text: str, upload: Upload | None) -> SendResult:
        written = compose.clean_text(text)
        if not written and upload is None:
            return SendResult(False, "Votre message est vide : écrivez votre réponse avant d'envoyer.")
        if len(written) > compose.MAX_TEXT:
            return SendResult(
                False,
                f"Votre message est trop long ({len(written)} caractères, {compose.MAX_TEXT} au plus). "
                "Raccourcissez-le ou joignez un document.",
            )
        async with self.reads.connect() as conn:
            stored = await store.conversation_messages(conn, profile.account.mailbox_id, key)
        if not stored:
            return SendResult(False, "Cette conversation n'existe pas.", not_found=True)
        if self.pipeline is None:
            return SendResult(False, "L'envoi de messages est momentanément indisponible. Réessayez plus tard.")
        target = self._answerable(stored, profile.account.address)
        if target is None:
            return SendResult(False, "Ce message est une information automatique : il n'attend pas de réponse.")
        original = (await self._read_all([target]))[0][1]
        to = (await self._correspondents({target.sender}))[target.sender]
        raw = compose.reply(
            sender_name=profile.account.name,
            sender=profile.account.address,
            to=[(to.name, to.address)],
            subject=original.subject,
            in_reply_to=target.message_id_header,
            references=original.references,
            text=text,
            upload=upload,
            hostname=self.settings.hostname,
            written_by=written_by(actor, profile),
        )
        return await self._send(profile, actor, [target.sender], raw, f"Votre réponse a été envoyée à {to.name}.", key)

    async def send_prescription(self, profile: Profile, actor: PatientAccount, pharmacy: str, note: str, upload: Upload) -> SendResult:
        if len(compose.clean_text(note)) > compose.MAX_TEXT:
            return SendResult(False, f"Votre mot pour la pharmacie est trop long ({compose.MAX_TEXT} caractères au plus).")
        if self.pipeline is None:
            return SendResult(False, "L'envoi de messages est momentanément indisponible. Réessayez plus tard.")
        entry = await self.pharmacy(pharmacy)
        if entry is None:
            return SendResult(False, "Cette pharmacie n'est pas dans l'annuaire. Cherchez-la à nouveau.")
        raw = compose.prescription(
            sender_name=profile.account.name,
            sender=profile.account.address,
            pharmacy_name=entry.structure_name or entry.display_name,
            pharmacy=entry.address,
            note=note,
            upload=upload,
            hostname=self.settings.hostname,
            written_by=written_by(actor, profile),
        )
        return await self._send(
            profile, actor, [entry.address], raw, f"Votre ordonnance a été envoyée à {entry.structure_name or entry.display_name}.", None
        )

    async def _send(self, profile: Profile, actor: PatientAccount, to: list[str], raw: bytes, success: str, key: int | None) -> SendResult:
        assert self.pipeline is not None
        result = await self.pipeline.accept(
            Envelope(
                profile.account.address,
                to,
                raw,
                Channel.WEBMAIL,
                authenticated=profile.account.address,
                keep_sent=True,
                read_only_delegate=not profile.may_reply,
                written_by=actor.address if actor.id != profile.account.id else None,
            )
        )
        if not result.accepted:
            decision = next(iter(result.refused.values()), None)
            why = _sentence(decision.text_fr) if decision is not None else "Le message n'a pas pu être envoyé."
            return SendResult(False, f"Votre message n'a pas été envoyé : {why[:1].lower() + why[1:]}")
        await self.history.record(Access(profile.account.id, actor_label(actor, profile), "message-sent", f"À {', '.join(to)}"))
        conversation = key
        if conversation is None and result.message_id is not None:
            conversation = await self._conversation_of(result.message_id)
        return SendResult(True, success, conversation)

    async def _conversation_of(self, message_id: int) -> int | None:
        async with self.reads.connect() as conn:
            return await store.conversation_of_message(conn, message_id)

    async def pharmacy(self, address: str) -> annuaire.MailboxEntry | None:
        """A published pharmacy (officine) mailbox of the annuaire, or None."""
        async with self.reads.connect() as conn:
            entry = await annuaire.get_mailbox(conn, address[:254])
        return entry if entry is not None and entry.is_officine else None

    async def pharmacies(self, name: str, place: str, page: int = 1) -> annuaire.SearchPage:
        async with self.reads.connect() as conn:
            return await annuaire.search(
                conn, name=name or None, place=place or None, officine=True, mailbox_type="ORG", page=page, per_page=10
            )
