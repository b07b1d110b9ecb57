"""The facts a messaging decision is made on, and the decision itself.

Everything here is plain frozen data: the gateway gathers facts (annuaire, conversation
store, parsed message), `policies.decide` returns a `Decision`. No I/O, so each rule is
tested with tables of cases.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PartyKind(str, enum.Enum):
    PROFESSIONAL = "professional"  # a PS, personal (PER) or practice (CAB) mailbox
    ORGANISATION = "organisation"  # an ORG or APP mailbox of a health structure
    PATIENT = "patient"
    CNAM = "cnam"  # the national health insurer's campaign sender
    UNKNOWN = "unknown"  # not in the annuaire


class Channel(str, enum.Enum):
    """How a message reached the gateway."""

    SUBMISSION = "submission"  # an authenticated user over SMTP
    MX = "mx"  # another operator over mutual TLS
    TRUSTED = "trusted"  # a configured trusted network (practice software on a LAN, benchmarks)
    WEBMAIL = "webmail"  # a patient through the webmail
    API = "api"  # the campaign API

    @property
    def authenticated(self) -> bool:
        """The sender is an account that signed in: what it may send as is checked (rule 2)."""
        return self in (Channel.SUBMISSION, Channel.WEBMAIL, Channel.API)


class ConversationState(str, enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Action(str, enum.Enum):
    """What the gateway must do besides delivering (or instead of it)."""

    CLOSE_CONVERSATION = "close_conversation"
    DO_NOT_DELIVER = "do_not_deliver"  # accepted but nothing to deliver (empty [FIN])
    TELL_SENDER_CLOSED = "tell_sender_closed"  # [FIN] with content: delivered, closed, sender told


@dataclass(frozen=True)
class Party:
    address: str
    kind: PartyKind
    domain_trusted: bool = True  # local domain or on the trust-space whitelist
    is_local: bool = True  # a mailbox we serve
    patient_status: str | None = None  # created / activated / opposed / closed, for patients
    is_officine: bool = False  # an organisation mailbox of a community pharmacy


@dataclass(frozen=True)
class Conversation:
    """The conversation a message threads into, as the store knows it."""

    opener_kind: PartyKind
    state: ConversationState
    participants: frozenset[str]
    closed_by: str | None = None
    closed_at: str | None = None  # ISO date, for the refusal text
    is_campaign: bool = False
    senders: frozenset[str] = frozenset()  # who has written in it


@dataclass(frozen=True)
class Message:
    size: int
    subject: str = ""
    has_content: bool = True  # a non-blank body or any attachment
    has_attachment: bool = False
    mss_mes_fin: bool = False  # header X-MSS-MES: FIN
    references_known: bool = False  # In-Reply-To/References name a message we hold
    references_foreign: bool = False  # In-Reply-To/References given, but naming nothing the sender holds
    is_receipt: bool = False  # a disposition notification (MDN, RFC 8098): says "read", carries nothing written
    message_id: str = ""
    message_id_taken: bool = False  # another sender already used this Message-ID


@dataclass(frozen=True)
class SenderFacts:
    """What is known at MAIL FROM: who sends, on which channel, and what vouches for them."""

    sender: Party
    channel: Channel
    unowned_address: str | None = None  # an address the authenticated account sent as but does not own (rule 2)
    operator_dns: frozenset[str] = frozenset()  # MX: the operator certificate DNs the whitelist gives the sender's domain
    peer_dn: str | None = None  # MX: the subject DN of the client certificate


@dataclass(frozen=True)
class Facts:
    sender: Party
    recipient: Party
    message: Message
    conversation: Conversation | None = None
    submission: bool = False  # arrived on submission (or webmail/API) from an authenticated user
    unowned_address: str | None = None  # MAIL FROM or From not owned by the authenticated account (rule 2)
    max_size: int = 25 * 1024 * 1024
    relaying: bool = False  # arrived over MX: the recipient must be ours
    read_only_delegate: bool = False  # written by a carer whose delegation is reading only

    @property
    def sender_owned(self) -> bool:
        return self.unowned_address is None

    @property
    def subject_is_fin(self) -> bool:
        return self.message.subject.strip().upper().startswith("[FIN]")


def refuse(rule: str, code: int, enhanced: str, text_fr: str, text_en: str) -> Decision:
    """The one way a refusal is made, whoever decides it (a rule, inspection, S/MIME checks)."""
    return Decision(accepted=False, rule=rule, code=code, enhanced=enhanced, text_fr=text_fr, text_en=text_en)


@dataclass(frozen=True)
class Decision:
    """Accept or refuse one recipient; a refusal carries SMTP codes and texts for people."""

    accepted: bool
    rule: str
    code: int = 250
    enhanced: str = "2.0.0"
    text_fr: str = ""
    text_en: str = ""
    actions: frozenset[Action] = field(default_factory=frozenset)

    @property
    def smtp_reply(self) -> str:
        """The SMTP reply line: code, enhanced status code, English then French."""
        if self.accepted:
            return f"{self.code} {self.enhanced} OK"
        return f"{self.code} {self.enhanced} {self.text_en} / {self.text_fr}"
