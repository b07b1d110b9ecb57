"""The one accept pipeline: every message, from SMTP, the webmail or the campaign API.

parse -> sender identity -> annuaire -> policies.decide per recipient -> threading ->
S/MIME (sign and encrypt what we send, verify and decrypt what we receive) ->
one durable transaction (body sealed once, an entry per local mailbox, a queue row per
remote recipient, the conversation change) -> only then the reply. The SMTP hooks are
thin wrappers around `check_sender`, `check_recipient` and `accept`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire.service import PartyInfo, resolve_parties
from caducee.config import Settings
from caducee.cpu import CpuPool
from caducee.crypto.atrest import BodyCipher
from caducee.crypto.smime import SmimeError
from caducee.gateway.batch import BatchWriter, Copy, DeliveryPlan, NewConversation, Notice
from caducee.gateway.committer import GroupCommitter
from caducee.gateway.inspect import InspectedMessage, MessageRejected, inspect_message
from caducee.gateway.protection import Form, Protection, SmimeStage
from caducee.mailbox import store
from caducee.mailbox.imap.structure import summarize
from caducee.policies import (
    RCPT_CHAIN,
    Action,
    Conversation,
    ConversationState,
    Decision,
    Facts,
    Message,
    Party,
    PartyKind,
    decide,
)
from caducee.policies.rules import outside_trust_space

log = logging.getLogger(__name__)

OFF_LOOP_SIZE = 256 * 1024  # parse larger messages in another process: the event loop serves other sessions


class Channel(str, enum.Enum):
    SUBMISSION = "submission"  # an authenticated user over SMTP
    MX = "mx"  # another operator over mutual TLS
    TRUSTED = "trusted"  # a configured trusted network (practice software on a LAN, benchmarks)
    WEBMAIL = "webmail"  # a patient through the webmail
    API = "api"  # the campaign API


AUTHENTICATED_CHANNELS = {Channel.SUBMISSION, Channel.WEBMAIL, Channel.API}


@dataclass
class Envelope:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    channel: Channel
    authenticated: str | None = None  # the mailbox address the session authenticated as
    peer_dn: str | None = None  # MX: the subject DN of the client certificate
    keep_sent: bool = False  # file a copy in the sender's Sent folder (the webmail; mail clients APPEND their own)


@dataclass
class Verdict:
    """The decision for each recipient of one message, and the facts it was made on."""

    parties: dict[str, PartyInfo]
    sender: Party
    conversation: store.ConversationView | None  # the conversation the message threads into (None: a new one)
    conversation_facts: Conversation | None
    decisions: dict[str, Decision]
    actions: frozenset[Action]

    @property
    def accepted(self) -> list[str]:
        return [rcpt for rcpt, decision in self.decisions.items() if decision.accepted]

    @property
    def refused(self) -> dict[str, Decision]:
        return {rcpt: decision for rcpt, decision in self.decisions.items() if not decision.accepted}


@dataclass
class AcceptResult:
    accepted: list[str]
    refused: dict[str, Decision]
    message_id: int | None
    reply: str
    actions: frozenset[Action] = field(default_factory=frozenset)


def refusal(code: int, enhanced: str, text_fr: str, text_en: str, rule: str) -> Decision:
    return Decision(accepted=False, rule=rule, code=code, enhanced=enhanced, text_fr=text_fr, text_en=text_en)


def _nobody(refused: dict[str, Decision]) -> AcceptResult:
    """Every recipient refused: the reply is the first refusal."""
    return AcceptResult([], refused, None, next(iter(refused.values())).smtp_reply)


class AcceptPipeline:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        cipher: BodyCipher,
        committer: GroupCommitter | None = None,
        on_queued: Callable[[], None] | None = None,
        smime: SmimeStage | None = None,
        cpu: CpuPool | None = None,
    ) -> None:
        self.engine = engine
        self.cpu = cpu or (smime.pool if smime is not None else None)  # large messages are parsed there
        self.smime = smime  # None: S/MIME off (settings.smime = "off", and tests of other stages)
        self.on_queued = on_queued
        # Called, after the commit, with the patients a message was delivered to (not for CNAM
        # campaigns): the webmail tells them by email that something is waiting. It must not block.
        self.on_delivered: Callable[[list[str]], None] | None = None
        self.settings = settings
        self.cipher = cipher
        self.writer = BatchWriter(engine)
        self.committer = committer or GroupCommitter(self.writer)
        self._parties_cache: dict[str, tuple[float, PartyInfo]] = {}
        self._cnam = {address.lower() for address in settings.cnam_senders}
        self.queue_lifetime = timedelta(days=5)

    # ---- facts ------------------------------------------------------------------------

    async def _parties(self, addresses: list[str]) -> dict[str, PartyInfo]:
        """Who each address is, from a short-lived cache in front of the annuaire.

        Every RCPT and every message needs these facts; the directory changes seldom, so
        a few seconds of staleness (`directory_cache_seconds`) saves most queries.
        """
        now = time.monotonic()
        ttl = self.settings.directory_cache_seconds
        found: dict[str, PartyInfo] = {}
        missing: list[str] = []
        for address in {address.lower() for address in addresses}:
            cached = self._parties_cache.get(address)
            if cached is not None and now - cached[0] < ttl:
                found[address] = cached[1]
            else:
                missing.append(address)
        if missing:
            async with self.engine.connect() as conn:
                fresh = await resolve_parties(conn, missing, local_domains=self.settings.local_domains)
            if len(self._parties_cache) > 100_000:
                self._parties_cache.clear()
            for address, info in fresh.items():
                self._parties_cache[address] = (now, info)
            found.update(fresh)
        return found

    def _kind(self, info: PartyInfo) -> PartyKind:
        if info.address in self._cnam:
            return PartyKind.CNAM
        kinds = {
            "PAT": PartyKind.PATIENT,
            "PER": PartyKind.PROFESSIONAL,
            "CAB": PartyKind.PROFESSIONAL,
            "ORG": PartyKind.ORGANISATION,
            "APP": PartyKind.ORGANISATION,
        }
        if info.mailbox_type in kinds:
            return kinds[info.mailbox_type]
        if not info.is_local and info.domain_trusted:
            return PartyKind.PROFESSIONAL  # a member of the trust space we do not list
        return PartyKind.UNKNOWN

    def _party(self, info: PartyInfo) -> Party:
        return Party(
            address=info.address,
            kind=self._kind(info),
            domain_trusted=info.domain_trusted,
            is_local=info.is_local,
            patient_status=info.patient_status,
            is_officine=info.is_officine,
        )

    # ---- SMTP stages ------------------------------------------------------------------

    async def check_sender(self, mail_from: str, channel: Channel, *, authenticated: str | None, peer_dn: str | None) -> Decision | None:
        """MAIL FROM: rule 2 on submission, the trust space and the operator DN on MX."""
        sender = mail_from.lower()
        if channel in AUTHENTICATED_CHANNELS and sender != (authenticated or "").lower():
            return refusal(
                550,
                "5.7.1",
                f"vous n'êtes pas autorisé à envoyer en tant que {mail_from}",
                f"not authorised to send as {mail_from}",
                "no-spoofing",
            )
        if channel is Channel.MX:
            info = (await self._parties([sender]))[sender]
            if not info.domain_trusted or info.is_local:
                return outside_trust_space(sender)
            if peer_dn is not None and peer_dn not in info.operator_dns:
                return refusal(
                    550,
                    "5.7.1",
                    "le certificat de l'opérateur ne correspond pas au domaine expéditeur",
                    "the operator certificate does not match the sender domain",
                    "trust-space",
                )
        return None

    async def check_recipient(self, mail_from: str, rcpt: str, channel: Channel) -> Decision:
        """RCPT TO: the rules that need nothing from the message itself."""
        sender, recipient = mail_from.lower(), rcpt.lower()
        parties = await self._parties([sender, recipient])
        if channel is Channel.MX and not parties[recipient].is_local:
            return refusal(
                550,
                "5.7.1",
                "relais refusé : ce destinataire n'est pas chez nous",
                "relaying denied: recipient is not hosted here",
                "no-relay",
            )
        facts = Facts(
            sender=self._party(parties[sender]),
            recipient=self._party(parties[recipient]),
            message=Message(size=0),
            submission=channel in AUTHENTICATED_CHANNELS,
            max_size=self.settings.max_message_size,
        )
        return decide(facts, RCPT_CHAIN)

    # ---- the decisions ----------------------------------------------------------------

    async def judge(self, sender: str, recipients: list[str], *, references: list[str], message: Message, channel: Channel) -> Verdict:
        """Apply the rules to each recipient, as `accept` will; nothing is written.

        The webmail asks this before it offers an action, so that what it shows and what the
        gateway then does can never disagree.
        """
        sender = sender.lower()
        recipients = list(dict.fromkeys(rcpt.lower() for rcpt in recipients))
        parties = await self._parties([sender, *recipients])
        sender_party = self._party(parties[sender])
        conversation = None
        if references:  # most mail starts a conversation: no query for it
            async with self.engine.connect() as conn:
                conversation = await store.find_conversation(conn, references)
        foreign = conversation is not None and sender not in conversation.participants
        conversation_facts = None
        if conversation is not None and not foreign:
            conversation_facts = Conversation(
                opener_kind=PartyKind(conversation.opener_kind),
                state=ConversationState(conversation.state),
                participants=conversation.participants,
                closed_by=conversation.closed_by,
                closed_at=conversation.closed_at.date().isoformat() if conversation.closed_at else None,
                is_campaign=conversation.is_campaign,
            )
        facts = dataclass_replace(message, references_known=conversation is not None, references_foreign=foreign)
        decisions: dict[str, Decision] = {}
        actions: set[Action] = set()
        for rcpt in recipients:
            decision = decide(
                Facts(
                    sender=sender_party,
                    recipient=self._party(parties[rcpt]),
                    message=facts,
                    conversation=conversation_facts,
                    submission=channel in AUTHENTICATED_CHANNELS,
                    max_size=self.settings.max_message_size,
                )
            )
            decisions[rcpt] = decision
            if decision.accepted:
                actions |= decision.actions
        return Verdict(parties, sender_party, conversation if not foreign else None, conversation_facts, decisions, frozenset(actions))

    # ---- the whole message ------------------------------------------------------------

    async def accept(self, envelope: Envelope) -> AcceptResult:
        try:
            inspected = await self._inspect(envelope)
        except MessageRejected as rejected:
            return AcceptResult([], {rcpt: rejected.decision for rcpt in envelope.rcpt_tos}, None, rejected.decision.smtp_reply)
        sender = envelope.mail_from.lower()
        if envelope.channel in AUTHENTICATED_CHANNELS and any(address != sender for address in inspected.from_addresses):
            decision = refusal(
                550,
                "5.7.1",
                "l'en-tête From n'appartient pas au compte authentifié",
                "the From header is not owned by the authenticated account",
                "no-spoofing",
            )
            return AcceptResult([], {rcpt: decision for rcpt in envelope.rcpt_tos}, None, decision.smtp_reply)

        recipients = list(dict.fromkeys(rcpt.lower() for rcpt in envelope.rcpt_tos))
        message_facts = Message(
            size=inspected.size,
            subject=inspected.subject,
            has_content=inspected.has_content,
            has_attachment=inspected.has_attachment,
            mss_mes_fin=inspected.mss_mes_fin,
            is_receipt=inspected.is_receipt,
        )
        verdict = await self.judge(sender, recipients, references=inspected.references, message=message_facts, channel=envelope.channel)
        parties, sender_party, conversation, conversation_facts = (
            verdict.parties,
            verdict.sender,
            verdict.conversation,
            verdict.conversation_facts,
        )
        accepted, refused, actions = verdict.accepted, verdict.refused, set(verdict.actions)
        if not accepted:
            return _nobody(refused)

        protection = Protection({Form.AS_RECEIVED: inspected.raw}, {rcpt: Form.AS_RECEIVED for rcpt in accepted})
        if self.smime is not None:
            try:
                if envelope.channel is Channel.MX:
                    signer_address = inspected.from_addresses[0] if inspected.from_addresses else sender
                    protection = await self.smime.open(inspected.raw, signer_address, accepted, parties)
                else:
                    protection = await self.smime.protect(inspected.raw, sender, accepted, parties)
            except SmimeError as failed:
                return AcceptResult([], {rcpt: failed.decision for rcpt in envelope.rcpt_tos}, None, failed.decision.smtp_reply)
            refused.update(protection.refused)
            accepted = [rcpt for rcpt in accepted if rcpt in protection.form_of]
            if not accepted:
                return _nobody(refused)

        plan = DeliveryPlan(
            copies=self._copies(
                protection,
                accepted,
                parties,
                deliver=Action.DO_NOT_DELIVER not in actions,
                sent_box=parties[sender].mailbox_id if envelope.keep_sent else None,
            ),
            sender=sender,
            message_id_header=inspected.message_id,
            close_by=parties[sender].display_name if Action.CLOSE_CONVERSATION in actions else None,
            notices=self._notices(envelope, parties[sender], inspected, refused, actions),
            queue_lifetime=self.queue_lifetime,
        )
        if conversation_facts is not None:
            plan.conversation_id = conversation.id  # type: ignore[union-attr]
            if sender_party.kind in {PartyKind.PROFESSIONAL, PartyKind.ORGANISATION}:
                plan.add_participants = frozenset(set(accepted) - conversation_facts.participants)
        else:
            plan.new_conversation = NewConversation(
                sender, sender_party.kind.value, frozenset({sender, *accepted}), is_campaign=sender_party.kind is PartyKind.CNAM
            )
        message_id = await self.committer.submit(plan)
        if any(copy.remote for copy in plan.copies) and self.on_queued is not None:
            self.on_queued()
        if self.on_delivered is not None and Action.DO_NOT_DELIVER not in actions and sender_party.kind is not PartyKind.CNAM:
            patients = [rcpt for rcpt in accepted if parties[rcpt].mailbox_type == "PAT" and parties[rcpt].mailbox_id is not None]
            if patients:
                self.on_delivered(patients)
        return AcceptResult(accepted, refused, message_id, f"250 2.0.0 OK: queued as {message_id}", frozenset(actions))

    def _copies(
        self, protection: Protection, accepted: list[str], parties: dict[str, PartyInfo], *, deliver: bool, sent_box: int | None = None
    ) -> list[Copy]:
        """One stored copy per form someone receives (a message nobody receives is still kept once).

        The sender's Sent copy is the readable form: the sender reads it on our pages.
        """
        sent_form = Form.READABLE if Form.READABLE in protection.forms else next(iter(protection.forms))
        copies = []
        for form, body in protection.forms.items():
            receivers = [r for r in accepted if deliver and protection.form_of.get(r) is form]
            boxes = [parties[r].mailbox_id for r in receivers if parties[r].mailbox_id is not None]
            remote = [r for r in receivers if not parties[r].is_local]
            sent = [sent_box] if sent_box is not None and form is sent_form else []
            if boxes or remote or sent:
                summary = self.cipher.seal(summarize(body).pack()) if boxes or sent else None  # what IMAP lists, computed once
                copies.append(Copy(self.cipher.seal(body), len(body), boxes, remote, summary, sent))  # type: ignore[arg-type]
        if not copies:
            body = next(iter(protection.forms.values()))
            copies.append(Copy(self.cipher.seal(body), len(body)))
        return copies

    async def _inspect(self, envelope: Envelope) -> InspectedMessage:
        arguments = dict(
            max_size=self.settings.max_message_size,
            hostname=self.settings.hostname,
            add_missing_headers=envelope.channel in AUTHENTICATED_CHANNELS | {Channel.TRUSTED},
        )
        if len(envelope.data) > OFF_LOOP_SIZE:
            if self.cpu is not None:
                return await self.cpu.run(functools.partial(inspect_message, envelope.data, **arguments))
            return await asyncio.to_thread(inspect_message, envelope.data, **arguments)
        return inspect_message(envelope.data, **arguments)

    # ---- notices to the sender ---------------------------------------------------------

    def _notices(
        self, envelope: Envelope, sender: PartyInfo, inspected: InspectedMessage, refused: dict[str, Decision], actions: set[Action]
    ) -> list[Notice]:
        """Messages for a local sender: recipients refused after DATA, a conversation closed."""
        if sender.mailbox_id is None or envelope.channel is Channel.WEBMAIL:  # the webmail says it on the page
            return []
        notices = []
        if refused:
            lines = "\n".join(
                f"  - {rcpt} : {decision.text_fr} ({decision.code} {decision.enhanced})" for rcpt, decision in refused.items()
            )
            notices.append(
                self._notice(
                    sender.address,
                    f"Non remis : {inspected.subject}",
                    f"Votre message « {inspected.subject} » n'a pas été remis à :\n{lines}\n\nLes autres destinataires l'ont bien reçu.",
                    inspected.message_id,
                )
            )
        if Action.TELL_SENDER_CLOSED in actions:
            notices.append(
                self._notice(
                    sender.address,
                    f"Conversation close : {inspected.subject}",
                    f"Votre message « {inspected.subject} » a bien été remis au patient, avec son contenu.\n"
                    "Comme son objet commence par [FIN], la conversation est maintenant close : "
                    "le patient ne peut plus y répondre.",
                    inspected.message_id,
                )
            )
        postmaster = f"postmaster@{self.settings.operator_domain}"
        return [
            Notice(sender.mailbox_id, self.cipher.seal(raw), len(raw), postmaster, self.cipher.seal(summarize(raw).pack()))
            for raw in notices
        ]

    def _notice(self, to: str, subject: str, body: str, in_reply_to: str) -> bytes:
        message = EmailMessage()
        message["From"] = f"Caducée <postmaster@{self.settings.operator_domain}>"
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self.settings.hostname)
        message["In-Reply-To"] = in_reply_to
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(body)
        return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    async def close(self) -> None:
        """Stop the group commit and release the writer (after the listeners closed)."""
        await self.committer.stop()
        self.writer.close()
