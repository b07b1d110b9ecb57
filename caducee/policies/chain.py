"""The chain: the rules in the order they are asked. The first refusal wins."""

from __future__ import annotations

from caducee.policies.facts import Action, Decision, Facts
from caducee.policies.rules import (
    KnownRecipient,
    NoForgedThreading,
    NoPatientToPatient,
    NoReplyToCampaign,
    NoSpoofing,
    PatientProfileOpen,
    PatientRepliesOnly,
    ProfessionalCloses,
    Rule,
    SizeLimit,
    TrustSpace,
)

CHAIN: tuple[Rule, ...] = (
    TrustSpace(),  # rule 1
    NoSpoofing(),  # rule 2
    SizeLimit(),  # rule 8
    KnownRecipient(),
    PatientProfileOpen(),  # rule 7
    NoPatientToPatient(),  # rule 5
    NoReplyToCampaign(),  # rule 5
    NoForgedThreading(),  # rule 4
    PatientRepliesOnly(),  # rules 3 and 4
    ProfessionalCloses(),  # rule 6
)

# The rules that need nothing from the message itself: asked at RCPT time, so that a
# refusal known then is given then (one clear reply per recipient).
RCPT_CHAIN: tuple[Rule, ...] = tuple(
    rule for rule in CHAIN if isinstance(rule, (TrustSpace, KnownRecipient, PatientProfileOpen, NoPatientToPatient))
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
