"""The one accept pipeline: every message, from SMTP, the webmail or the campaign API.

parse -> sender identity -> annuaire -> policies.decide per recipient -> threading ->
S/MIME (sign and encrypt what we send, verify and decrypt what we receive) ->
one durable transaction (body sealed once, an entry per local mailbox, a queue row per
remote recipient, the conversation change, a post-delivery row per recipient a durable
consumer wants) -> only then the reply. The SMTP hooks are
thin wrappers around `check_sender`, `check_recipient` and `accept`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire.service import PartyInfo, resolve_parties
from caducee.config import Settings
from caducee.core import metrics, pseudonyms
from caducee.core.cpu import CpuPool
from caducee.core.groupcommit import GroupCommitter
from caducee.core.singleflight import SingleFlight
from caducee.crypto.atrest import BodyCipher
from caducee.crypto.smime import SmimeError
from caducee.gateway.batch import BatchWriter, DeliveryPlan
from caducee.gateway.hooks import Delivered, DeliveredTo, DeliveryConsumer, tell
from caducee.gateway.inspect import InspectedMessage, MessageRejected, inspect_message
from caducee.gateway.postdelivery import PostDelivery
from caducee.gateway.protection import Form, Protection, SmimeStage, smime_refusal
from caducee.mailbox import store
from caducee.mailbox.delivery import Delivery, Filing, NewConversation, Notice, Target, relay_only_form, stored_form
from caducee.mailbox.fanout import PREVENTION
from caducee.mime.headers import MAIL_POLICY
from caducee.mime.structure import parse
from caducee.mime.summary import Summary, summarize
from caducee.policies import (
    RCPT_CHAIN,
    Action,
    Channel,
    Conversation,
    ConversationState,
    Decision,
    Facts,
    Message,
    Party,
    PartyKind,
    SenderFacts,
    decide,
    decide_sender,
    kind_of,
)
from caducee.traces.service import REFUSE, SEND, Trace, Traces, recipients

__all__ = ["AcceptPipeline", "AcceptResult", "Channel", "Envelope", "Verdict"]


log = logging.getLogger(__name__)

OFF_LOOP_SIZE = 256 * 1024  # parse larger messages in another process: the event loop serves other sessions


AUTHENTICATED_CHANNELS = {channel for channel in Channel if channel.authenticated}


@dataclass
class Envelope:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    channel: Channel
    authenticated: str | None = None  # the mailbox address the session authenticated as
    peer_dn: str | None = None  # MX: the subject DN of the client certificate
    keep_sent: bool = False  # file a copy in the sender's Sent folder (the webmail; mail clients APPEND their own)
    read_only_delegate: bool = False  # the webmail: written by a carer whose delegation is reading only
    # The webmail: the signed-in guardian or carer writing for this profile; their address may
    # stand in Sender: (RFC 5322 3.6.2), and only there, beside the profile's own From.
    written_by: str | None = None
    client: str | None = None  # the client's IP address (SMTP), for the operator's trace


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


_SIGNED_INNER = b"Content-Type: message/rfc822\r\n\r\n"  # how `crypto.smime.sign` wraps the message it signs


def summary_of(body: bytes, inspected: InspectedMessage) -> Summary:
    """The summary of one stored form, from the tree inspection already built: the message as
    received is that tree; the signed form carries it verbatim inside its signature wrapper,
    so only the wrapper's few headers are read. Anything else (an enveloped or decrypted
    form: other bytes) is parsed on its own."""
    tree = inspected.tree
    if tree is not None:
        if body is inspected.raw:
            return summarize(body, tree)
        offset = body.find(_SIGNED_INNER)
        if offset >= 0:
            offset += len(_SIGNED_INNER)
            if body[offset : offset + len(inspected.raw)] == inspected.raw:
                return summarize(body, parse(body, reuse=(offset, tree)))
    return summarize(body)


def trace_of(envelope: Envelope, message_id: str, accepted: list[str], refused: dict[str, Decision] | None = None) -> Trace:
    """The operator's trace of one send, by the sender's mailbox: who signed in (a guardian
    writing for a child, the peer operator's certificate on the MX), from where, to whom."""
    detail = recipients(accepted)
    if refused:
        detail += "; refused " + ", ".join(f"{rcpt} ({decision.code} {decision.rule})" for rcpt, decision in refused.items())
    return Trace(
        mailbox=envelope.mail_from,
        channel=envelope.channel.value,
        action=SEND,
        actor=envelope.written_by or envelope.authenticated or envelope.peer_dn or "",
        client=envelope.client or "",
        message_id=message_id,
        detail=detail,
    )


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
        # In-memory post-delivery consumers (caducee.gateway.hooks), called after the commit with
        # what was delivered to whom, best effort: new-mail alerts. `server.py` appends them.
        self.on_delivered: list[DeliveryConsumer] = []
        # The durable ones (the dossier's packages, the agenda's invitations): a row written in
        # the commit for each recipient they want (caducee.gateway.postdelivery).
        self.post_delivery = PostDelivery(engine, settings)
        # The operator's trace of sends: accepted ones are traced in their own commit,
        # refusals through this.
        self.traces = Traces(engine)
        self.settings = settings
        self.cipher = cipher
        self.writer = BatchWriter(engine)
        self.committer = committer or GroupCommitter(self.writer)
        self._parties_cache: dict[str, tuple[float, PartyInfo]] = {}
        self._party_flights: SingleFlight[frozenset[str], dict[str, PartyInfo]] = SingleFlight()
        self._cnam = {address.lower() for address in settings.cnam_senders}

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
            # Single flight: when an entry expires under load, every session in flight misses it
            # at once; they share one query instead of each running its own.
            found.update(await self._party_flights.run(frozenset(missing), lambda: self._resolve(missing, now)))
        return await self._postmasters(found)

    async def _resolve(self, missing: list[str], now: float) -> dict[str, PartyInfo]:
        async with self.engine.connect() as conn:
            fresh = await resolve_parties(conn, missing, local_domains=self.settings.local_domains)
        if len(self._parties_cache) > 100_000:
            self._parties_cache.clear()
        for address, info in fresh.items():
            self._parties_cache[address] = (now, info)
        return fresh

    async def _postmasters(self, found: dict[str, PartyInfo]) -> dict[str, PartyInfo]:
        """postmaster@ each local domain is the operator's postmaster mailbox (RFC 5321 4.5.1)."""
        operator = f"postmaster@{self.settings.operator_domain.lower()}"
        aliases = [
            address
            for address, info in found.items()
            if info.is_local and info.mailbox_id is None and address.partition("@")[0] == "postmaster" and address != operator
        ]
        if aliases:
            target = (await self._parties([operator]))[operator]
            for address in aliases:
                found[address] = dataclass_replace(target, address=address)
        return found

    def _party(self, info: PartyInfo) -> Party:
        return Party(
            address=info.address,
            kind=kind_of(info.mailbox_type, is_cnam=info.address in self._cnam, is_local=info.is_local, domain_trusted=info.domain_trusted),
            domain_trusted=info.domain_trusted,
            is_local=info.is_local,
            patient_status=info.patient_status,
            is_officine=info.is_officine,
        )

    # ---- SMTP stages ------------------------------------------------------------------

    async def check_sender(self, mail_from: str, channel: Channel, *, authenticated: str | None, peer_dn: str | None) -> Decision | None:
        """MAIL FROM: the sender chain (rule 2 on authenticated channels, the trust space and
        the operator certificate on MX), from facts gathered here."""
        sender = mail_from.lower()
        info = (await self._parties([sender]))[sender]
        facts = SenderFacts(
            sender=self._party(info),
            channel=channel,
            unowned_address=mail_from if channel.authenticated and sender != (authenticated or "").lower() else None,
            operator_dns=frozenset(info.operator_dns),
            peer_dn=peer_dn,
        )
        decision = decide_sender(facts)
        return None if decision.accepted else decision

    async def check_recipient(self, mail_from: str, rcpt: str, channel: Channel) -> Decision:
        """RCPT TO: the rules that need nothing from the message itself."""
        sender, recipient = mail_from.lower(), rcpt.lower()
        parties = await self._parties([sender, recipient])
        facts = Facts(
            sender=self._party(parties[sender]),
            recipient=self._party(parties[recipient]),
            message=Message(size=0),
            submission=channel.authenticated,
            max_size=self.settings.max_message_size,
            relaying=channel is Channel.MX,
        )
        return decide(facts, RCPT_CHAIN)

    # ---- the decisions ----------------------------------------------------------------

    async def judge(
        self,
        sender: str,
        recipients: list[str],
        *,
        references: list[str],
        message: Message,
        channel: Channel,
        unowned_address: str | None = None,
        read_only_delegate: bool = False,
        message_id_taken: bool | None = None,
    ) -> Verdict:
        """Apply the rules to each recipient, as `accept` will; nothing is written.

        The webmail asks this before it offers an action, so that what it shows and what the
        gateway then does can never disagree. `message_id_taken`: that fact when the caller
        knows it (None: asked of the store here).
        """
        sender = sender.lower()
        recipients = list(dict.fromkeys(rcpt.lower() for rcpt in recipients))
        parties = await self._parties([sender, *recipients])
        sender_party = self._party(parties[sender])
        conversation = None
        if references:  # most mail starts a conversation: no query for it
            async with self.engine.connect() as conn:
                conversation = await store.find_conversation(conn, references, sender=sender, holder=parties[sender].mailbox_id)
        # References that name nothing this sender holds: a reply to what they never received.
        foreign = bool(references) and conversation is None
        conversation_facts = None
        if conversation is not None:
            conversation_facts = Conversation(
                opener_kind=PartyKind(conversation.opener_kind),
                state=ConversationState(conversation.state),
                participants=conversation.participants,
                closed_by=conversation.closed_by,
                closed_at=conversation.closed_at.date().isoformat() if conversation.closed_at else None,
                is_campaign=conversation.is_campaign,
                senders=conversation.senders,
            )
        if message_id_taken is None:
            message_id_taken = False
            if message.message_id:
                async with self.engine.connect() as conn:
                    message_id_taken = await store.message_id_used_by_other(conn, message.message_id, sender)
        facts = dataclass_replace(
            message, references_known=conversation is not None, references_foreign=foreign, message_id_taken=message_id_taken
        )
        decisions: dict[str, Decision] = {}
        actions: set[Action] = set()
        for rcpt in recipients:
            decision = decide(
                Facts(
                    sender=sender_party,
                    recipient=self._party(parties[rcpt]),
                    message=facts,
                    conversation=conversation_facts,
                    submission=channel.authenticated,
                    unowned_address=unowned_address,
                    max_size=self.settings.max_message_size,
                    relaying=channel is Channel.MX,
                    read_only_delegate=read_only_delegate,
                )
            )
            decisions[rcpt] = decision
            if decision.accepted:
                actions |= decision.actions
        return Verdict(parties, sender_party, conversation, conversation_facts, decisions, frozenset(actions))

    # ---- the whole message ------------------------------------------------------------

    async def trace_refused_recipient(
        self, mail_from: str, rcpt: str, channel: Channel, authenticated: str | None, client: str | None, decision: Decision
    ) -> None:
        """Trace a recipient refused at RCPT TO (a message whose every recipient is refused
        never reaches DATA, and its sender's trace must still say what they were answered)."""
        envelope = Envelope(mail_from, [rcpt], b"", channel, authenticated=authenticated, client=client)
        trace = trace_of(envelope, "", [rcpt])
        try:
            await self.traces.record(Trace(**{**trace.__dict__, "action": REFUSE, "answer": decision.smtp_reply}))
        except Exception:  # the refusal stands; the database's trouble shows in /healthz and the next commit
            log.exception("tracing a refused recipient failed")

    async def accept(self, envelope: Envelope) -> AcceptResult:
        """Judge and deliver one message; one log line says what happened (patients' addresses
        pseudonymised)."""
        result = await self._accept(envelope)
        shown = lambda address: pseudonyms.address(address, self.settings.patient_domain)  # noqa: E731
        first_refusal = next(iter(result.refused.values()), None)
        metrics.messages.labels(
            envelope.channel.value,
            "accepted" if result.accepted else "refused",
            "" if result.accepted else (first_refusal.rule if first_refusal is not None else "temporary"),
        ).inc()
        if result.accepted:
            log.info(
                "accepted %s from %s to %s via %s%s",
                result.message_id,
                shown(envelope.mail_from),
                ", ".join(shown(a) for a in result.accepted),
                envelope.channel.value,
                f"; refused {', '.join(shown(a) for a in result.refused)}" if result.refused else "",
            )
        else:
            first = next(iter(result.refused.values()), None)
            log.info(
                "refused from %s to %s via %s: %s",
                shown(envelope.mail_from),
                ", ".join(shown(a) for a in envelope.rcpt_tos),
                envelope.channel.value,
                f"{first.code} {first.enhanced} ({first.rule})" if first is not None else result.reply,
            )
            if first is not None:  # a temporary failure is no answer to trace
                try:
                    await self.traces.record(
                        Trace(**{**trace_of(envelope, "", envelope.rcpt_tos).__dict__, "action": REFUSE, "answer": result.reply})
                    )
                except Exception:  # the refusal stands whatever the trace's fate
                    log.exception("tracing a refused message failed")
        return result

    async def _accept(self, envelope: Envelope, message_id_taken: bool | None = None) -> AcceptResult:
        """`message_id_taken` None: judged as unused, and checked by the group commit in the
        writing transaction (one query per batch); if another sender did use it, the message
        is judged again knowing it, which gives exactly the answer an early check gives."""
        try:
            inspected = await self._inspect(envelope)
        except MessageRejected as rejected:
            return AcceptResult([], {rcpt: rejected.decision for rcpt in envelope.rcpt_tos}, None, rejected.decision.smtp_reply)
        sender = envelope.mail_from.lower()
        unowned = None
        if envelope.channel.authenticated:  # rule 2 for every identity header too: the rules decide, from this fact
            vouched = (envelope.written_by or "").lower() if envelope.channel is Channel.WEBMAIL else ""
            unowned = next((address for address in inspected.identity_addresses if address not in {sender, vouched}), None)

        recipients = list(dict.fromkeys(rcpt.lower() for rcpt in envelope.rcpt_tos))
        message_facts = Message(
            size=inspected.size,
            subject=inspected.subject,
            has_content=inspected.has_content,
            has_attachment=inspected.has_attachment,
            mss_mes_fin=inspected.mss_mes_fin,
            is_receipt=inspected.is_receipt,
            message_id=inspected.message_id,
        )
        verdict = await self.judge(
            sender,
            recipients,
            references=inspected.references,
            message=message_facts,
            channel=envelope.channel,
            unowned_address=unowned,
            read_only_delegate=envelope.read_only_delegate,
            message_id_taken=bool(message_id_taken),
        )
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
                decision = smime_refusal(failed)
                return AcceptResult([], dict.fromkeys(envelope.rcpt_tos, decision), None, decision.smtp_reply)
            refused.update(protection.refused)
            accepted = [rcpt for rcpt in accepted if rcpt in protection.form_of]
            if not accepted:
                return _nobody(refused)

        filings, remote = self._filings(
            inspected,
            protection,
            accepted,
            parties,
            deliver=Action.DO_NOT_DELIVER not in actions,
            sent_box=parties[sender].mailbox_id if envelope.keep_sent else None,
            sender_is_cnam=sender_party.kind is PartyKind.CNAM,
        )
        delivery = Delivery(
            filings,
            sender=sender,
            message_id_header=inspected.message_id,
            close_by=parties[sender].display_name if Action.CLOSE_CONVERSATION in actions else None,
            notices=self._notices(envelope, parties[sender], inspected, refused, actions),
        )
        if conversation_facts is not None:
            delivery.conversation_id = conversation.id  # type: ignore[union-attr]
            if sender_party.kind in {PartyKind.PROFESSIONAL, PartyKind.ORGANISATION}:
                delivery.add_participants = frozenset(set(accepted) - conversation_facts.participants)
        else:
            delivery.new_conversation = NewConversation(
                sender, sender_party.kind.value, frozenset({sender, *accepted}), is_campaign=sender_party.kind is PartyKind.CNAM
            )
        lifetime = timedelta(hours=self.settings.relay_expiry_hours)  # how long the relay keeps trying (then a DSN)
        trace = trace_of(envelope, inspected.message_id, accepted, refused)
        # Who receives it, known before the commit (each recipient's stored form by its index in
        # `filings` until the commit gives the ids): the durable consumers' predicates decide here
        # which post-delivery rows the commit writes with the message (ordinary mail: none).
        delivered = None
        wanted = []
        if (self.on_delivered or self.post_delivery.listening) and Action.DO_NOT_DELIVER not in actions:
            received = self._received(filings, range(len(filings)), accepted, parties)
            if received:
                same = envelope.channel is not Channel.MX or self.smime is None  # inbound S/MIME: the stored form is the opened one
                delivered = Delivered(
                    sender,
                    sender_party.kind,
                    envelope.channel,
                    inspected.message_id,
                    inspected.has_attachment,
                    received,
                    inspected.content_types,
                    tree=inspected.tree if same else None,
                )
                wanted = self.post_delivery.wanted(delivered)
        stored_ids = await self.committer.submit(
            DeliveryPlan(delivery, remote, lifetime, check_message_id=message_id_taken is None, trace=trace, post_delivery=wanted)
        )
        if stored_ids is None:  # another sender used this Message-ID: nothing was written; decide knowing it
            return await self._accept(envelope, message_id_taken=True)
        message_id = stored_ids[0]
        if any(remote) and self.on_queued is not None:
            self.on_queued()
        if delivered is not None:
            if wanted:
                self.post_delivery.committed(wanted, stored_ids)  # the fast path: the rows this process claimed
            if self.on_delivered:
                stored = tuple(dataclass_replace(to, message_id=stored_ids[to.message_id]) for to in delivered.recipients)
                tell(self.on_delivered, dataclass_replace(delivered, recipients=stored))
        return AcceptResult(accepted, refused, message_id, f"250 2.0.0 OK: queued as {message_id}", frozenset(actions))

    async def store_once(self, envelope: Envelope) -> tuple[int, Decision | None]:
        """Store a message for a set-based fan-out (a CNAM campaign): (stored message id, None),
        or (0, the refusal).

        The same stages as `accept` without a recipient: inspection, the sender chain, the
        message-wide rules (asked for a patient of ours, as every campaign recipient is; what
        depends on each recipient is decided over the whole set by `policies.sets`), the
        signature made once (the sender's held key, the CNAM mailbox's certificate), one body
        and one conversation stored. No entry is made here: `mailbox.fanout` files it.
        """
        try:
            inspected = await self._inspect(envelope)
        except MessageRejected as rejected:
            return 0, rejected.decision
        sender = envelope.mail_from.lower()
        refused = await self.check_sender(sender, envelope.channel, authenticated=envelope.authenticated, peer_dn=None)
        if refused is not None:
            return 0, refused
        unowned = next((address for address in inspected.from_addresses if address != sender), None)
        parties = await self._parties([sender])
        facts = Facts(
            sender=self._party(parties[sender]),
            recipient=Party(address="", kind=PartyKind.PATIENT, patient_status="activated"),
            message=Message(size=inspected.size, subject=inspected.subject, has_content=inspected.has_content),
            submission=envelope.channel.authenticated,
            unowned_address=unowned,
            max_size=self.settings.max_message_size,
        )
        decision = decide(facts)
        if not decision.accepted:
            return 0, decision
        raw = inspected.raw
        if self.smime is not None:
            try:
                raw = await self.smime.sign(raw, sender)
            except SmimeError as failed:
                return 0, smime_refusal(failed)
        delivery = Delivery(
            [Filing(stored_form(self.cipher, raw))],
            sender=sender,
            message_id_header=inspected.message_id,
            new_conversation=NewConversation(sender, facts.sender.kind.value, frozenset({sender}), is_campaign=True),
        )
        stored = await self.committer.submit(DeliveryPlan(delivery, [[]], timedelta(hours=self.settings.relay_expiry_hours)))
        return stored[0], None

    @staticmethod
    def _received(
        filings: list[Filing], stored_ids: Sequence[int], accepted: list[str], parties: dict[str, PartyInfo]
    ) -> tuple[DeliveredTo, ...]:
        """Each accepted local mailbox and the stored form filed into its INBOX (the sender's
        Sent copy is not a delivery): its id, or its index in `filings` before the commit."""
        stored_in = {
            target.mailbox_id: stored_id
            for filing, stored_id in zip(filings, stored_ids, strict=False)
            for target in filing.targets
            if target.folder == "INBOX"
        }
        out = []
        for rcpt in accepted:
            info = parties[rcpt]
            if info.mailbox_id is not None and info.mailbox_id in stored_in:
                out.append(DeliveredTo(rcpt, info.mailbox_id, info.mailbox_type or "", stored_in[info.mailbox_id]))
        return tuple(out)

    def _filings(
        self,
        inspected: InspectedMessage,
        protection: Protection,
        accepted: list[str],
        parties: dict[str, PartyInfo],
        *,
        deliver: bool,
        sent_box: int | None = None,
        sender_is_cnam: bool = False,
    ) -> tuple[list[Filing], list[list[str]]]:
        """One stored form per form someone receives (a message nobody receives is still kept
        once), and for each the remote recipients it is relayed to.

        The sender's Sent copy is the readable form: the sender reads it on our pages.
        """
        sent_form = Form.READABLE if Form.READABLE in protection.forms else next(iter(protection.forms))
        filings: list[Filing] = []
        remotes: list[list[str]] = []
        for form, body in protection.forms.items():
            receivers = [r for r in accepted if deliver and protection.form_of.get(r) is form]
            targets = [
                Target(parties[r].mailbox_id, flags=PREVENTION if parties[r].mailbox_type == "PAT" and sender_is_cnam else "")  # type: ignore[arg-type]
                for r in receivers
                if parties[r].mailbox_id is not None
            ]
            if sent_box is not None and form is sent_form:
                targets.append(Target(sent_box, "Sent", "\\Seen"))
            remote = [r for r in receivers if not parties[r].is_local]
            if targets or remote:
                stored = stored_form(self.cipher, body, summary_of(body, inspected)) if targets else relay_only_form(self.cipher, body)
                filings.append(Filing(stored, targets))
                remotes.append(remote)
        if not filings:
            filings.append(Filing(relay_only_form(self.cipher, next(iter(protection.forms.values())))))
            remotes.append([])
        return filings, remotes

    async def _inspect(self, envelope: Envelope) -> InspectedMessage:
        inspect = functools.partial(
            inspect_message,
            envelope.data,
            max_size=self.settings.max_message_size,
            hostname=self.settings.hostname,
            add_missing_headers=envelope.channel in AUTHENTICATED_CHANNELS | {Channel.TRUSTED},
        )
        if len(envelope.data) > OFF_LOOP_SIZE:
            if self.cpu is not None:
                return await self.cpu.run(inspect)
            return await asyncio.to_thread(inspect)
        return inspect()

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
        return [Notice(sender.mailbox_id, stored_form(self.cipher, raw), postmaster) for raw in notices]

    def _notice(self, to: str, subject: str, body: str, in_reply_to: str) -> bytes:
        message = EmailMessage(policy=MAIL_POLICY)
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
        """Stop the group commit and release the writer (after the listeners closed); wait for
        the post-delivery rows this process is running (those it has not finished run again
        elsewhere when their lease runs out)."""
        await self.post_delivery.stop()
        await self.committer.stop()
        await self.traces.close()
        self.writer.close()
