"""The chain applied to a set of recipients at once: what a campaign to millions needs.

A campaign has one sender and one message; only the recipient varies, and what the rules
read of a recipient takes few values (its kind, its profile status, whether it is ours,
whether its domain is trusted, whether it is a pharmacy). So the chain is not run per
recipient: each rule's own `check` is asked once for every combination of those values,
and what comes out is, per rule, the combinations it refuses (first refusal wins, as in
`decide`). The caller turns each into one query over its set of recipients: one query per
rule, whatever the number of recipients, and the decision is still the rules' own code,
never a second copy of it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from caducee.policies.chain import CHAIN, decide
from caducee.policies.facts import Decision, Facts, Party, PartyKind
from caducee.policies.rules import Rule

STATUSES: tuple[str | None, ...] = (None, "created", "activated", "opposed", "closed")
KINDS: tuple[PartyKind, ...] = tuple(PartyKind)

# What a rule may read of a recipient, and every value each can take.
RECIPIENT_FIELDS: dict[str, tuple[object, ...]] = {
    "kind": KINDS,
    "patient_status": STATUSES,
    "is_local": (True, False),
    "domain_trusted": (True, False),
    "is_officine": (False, True),
}


@dataclass(frozen=True)
class Refusal:
    """One rule's share of a set: the recipient values it is the first to refuse."""

    rule: str
    decision: Decision
    values: frozenset[tuple[object, ...]]  # tuples in the order of `SetDecision.fields`


@dataclass(frozen=True)
class SetDecision:
    """The chain's answer for every recipient of one message, as sets of recipient values."""

    fields: tuple[str, ...]
    accepted: frozenset[tuple[object, ...]]
    refusals: tuple[Refusal, ...]  # in chain order, only rules that refuse something

    def reason_of(self, values: tuple[object, ...]) -> str | None:
        """The refusing rule's name for one recipient's values (None: accepted)."""
        for refusal in self.refusals:
            if values in refusal.values:
                return refusal.rule
        return None


def decide_set(template: Facts, known: dict[str, object] | None = None, chain: tuple[Rule, ...] = CHAIN) -> SetDecision:
    """The chain for `template` (sender, message, conversation) and every possible recipient.

    `known` pins recipient fields that are the same for the whole set (a campaign's
    recipients are all ours: `is_local=True, domain_trusted=True, is_officine=False`); the
    remaining fields are the columns the caller's queries compare.
    """
    known = known or {}
    fields = tuple(name for name in RECIPIENT_FIELDS if name not in known)
    accepted: set[tuple[object, ...]] = set()
    refused: dict[str, tuple[Decision, set[tuple[object, ...]]]] = {}
    for values in itertools.product(*(RECIPIENT_FIELDS[name] for name in fields)):
        attributes = dict(known) | dict(zip(fields, values, strict=True))
        recipient = replace(Party(address="", kind=PartyKind.UNKNOWN), **attributes)  # type: ignore[arg-type]
        decision = decide(replace(template, recipient=recipient), chain)
        if decision.accepted:
            accepted.add(values)
        else:
            refused.setdefault(decision.rule, (decision, set()))[1].add(values)
    order = [rule.name for rule in chain]
    refusals = tuple(
        Refusal(name, decision, frozenset(values))
        for name, (decision, values) in sorted(refused.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    )
    return SetDecision(fields, frozenset(accepted), refusals)
