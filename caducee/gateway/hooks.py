"""What the accept pipeline tells other components once a message is on disk: who received it.

A `Delivered` describes one accepted message: the sender, how it came, and for each local
mailbox that received it the stored form it holds. It reaches two kinds of consumers:

- Durable ones, whose work must survive a crash after the 250 (the dossier's XDM intake,
  the agenda's invitations): they go through the post-delivery queue
  (`caducee.gateway.postdelivery`), a row written in the group commit for each recipient
  their predicate wants, worked by the `http` role's processes.
- In-memory ones, `AcceptPipeline.on_delivered` (`tell`, below): new-mail alerts. These are
  best effort by design (a lost "a message is waiting" email is no lost message): called
  after the commit in the process that accepted the message, never retried, lost if that
  process dies first.

Consumers are plain callables wired by `server.py`; the gateway imports none of them. An
in-memory consumer must return at once (schedule its work) and never raise into the SMTP
session: a failing consumer is logged and the others still run, the message is delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from caducee.mime.structure import Part
from caducee.policies import Channel, PartyKind

log = logging.getLogger(__name__)

OPAQUE_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})  # encrypted: any content inside


@dataclass(frozen=True)
class DeliveredTo:
    """One local mailbox that received the message, and the stored message it holds."""

    address: str
    mailbox_id: int
    mailbox_type: str  # PER, CAB, ORG, APP, PAT
    message_id: int  # the stored form in this mailbox (read it through caducee.mailbox.mailstore)


@dataclass(frozen=True)
class Delivered:
    sender: str
    sender_kind: PartyKind
    channel: Channel
    message_id_header: str
    has_attachment: bool
    recipients: tuple[DeliveredTo, ...]
    # The leaf content types of the message as received (None: not known). Encrypted mail is
    # opaque ("application/pkcs7-mime"): what it holds once opened is not known here.
    content_types: frozenset[str] | None = None

    def may_contain(self, *content_types: str) -> bool:
        """Whether any stored form may hold an entity of one of these types: consumers that
        want only those skip every other message without reading it."""
        if self.content_types is None or self.content_types & OPAQUE_TYPES:
            return True
        return bool(self.content_types & set(content_types))

    # The MIME tree of the message as received, already parsed by the pipeline, when what the
    # recipients hold is that message (possibly inside our signature), for the post-delivery
    # predicates to look at without a parse (None for what arrived encrypted from another
    # operator, whose stored form is the opened one, and for what the queue hands a runner:
    # runners read the stored form).
    tree: Part | None = None

    @property
    def patients(self) -> list[DeliveredTo]:
        return [rcpt for rcpt in self.recipients if rcpt.mailbox_type == "PAT"]


DeliveryConsumer = Callable[[Delivered], None]


def tell(consumers: list[DeliveryConsumer], delivered: Delivered) -> None:
    """Hand `delivered` to every consumer; one that raises does not stop the others."""
    for consumer in consumers:
        try:
            consumer(delivered)
        except Exception:  # a consumer's bug must not turn a delivered message into an SMTP error
            log.exception("post-delivery consumer %r failed", consumer)
