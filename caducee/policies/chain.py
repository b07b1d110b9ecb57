"""The chains: the rules in the order they are asked. The first refusal wins.

Three moments of one message, each a readable table: MAIL FROM (`SENDER_CHAIN`: who
sends, and what vouches for them), RCPT TO (`RCPT_CHAIN`: what needs nothing from the
message), and the whole message (`CHAIN`), which the webmail also asks before it offers
an action.
"""

from __future__ import annotations

from caducee.policies.facts import Action, Decision, Facts, SenderFacts
from caducee.policies.rules import (
    ConversationClosed,
    KnownRecipient,
    NoForgedThreading,
    NoPatientToPatient,
    NoRelay,
    NoReplyToCampaign,
    NoSpoofing,
    OperatorTrusted,
    PatientProfileOpen,
    PatientRepliesOnly,
    ProfessionalCloses,
    ReadOnlyDelegate,
    Rule,
    SenderOwned,
    SenderRule,
    SizeLimit,
    TrustSpace,
    UniqueMessageId,
)

SENDER_CHAIN: tuple[SenderRule, ...] = (
    SenderOwned(),  # rule 2
    OperatorTrusted(),  # rule 1, over MX
)

CHAIN: tuple[Rule, ...] = (
    TrustSpace(),  # rule 1
    NoRelay(),  # rule 1: over MX only for our own mailboxes
    NoSpoofing(),  # rule 2
    ReadOnlyDelegate(),  # rule 2: a carer reads, does not write
    SizeLimit(),  # rule 8
    KnownRecipient(),
    PatientProfileOpen(),  # rule 7
    NoPatientToPatient(),  # rule 5
    NoReplyToCampaign(),  # rule 5
    UniqueMessageId(),  # rule 4: threading relies on it
    NoForgedThreading(),  # rule 4
    ConversationClosed(),  # rule 6
    PatientRepliesOnly(),  # rules 3 and 4
    ProfessionalCloses(),  # rule 6
)

# The rules that need nothing from the message itself: asked at RCPT time, so that a
# refusal known then is given then (one clear reply per recipient).
RCPT_CHAIN: tuple[Rule, ...] = tuple(
    rule for rule in CHAIN if isinstance(rule, (TrustSpace, NoRelay, KnownRecipient, PatientProfileOpen, NoPatientToPatient))
)

ACCEPT = Decision(accepted=True, rule="accept")


def decide(facts: Facts, chain: tuple[Rule, ...] = CHAIN) -> Decision:
    """The decision for one recipient of one message."""
    actions: set[Action] = set()
    for rule in chain:
        decision = rule.check(facts)
        if decision is None:
            continue
        if not decision.accepted:
            return decision
        actions |= decision.actions
    return Decision(accepted=True, rule="accept", actions=frozenset(actions)) if actions else ACCEPT


def decide_sender(facts: SenderFacts, chain: tuple[SenderRule, ...] = SENDER_CHAIN) -> Decision:
    """The decision at MAIL FROM: a refusal, or acceptance."""
    for rule in chain:
        decision = rule.check(facts)
        if decision is not None and not decision.accepted:
            return decision
    return ACCEPT
