"""Who a party is, for the rules: the kind of an address from what the annuaire says of it."""

from __future__ import annotations

from caducee.policies.facts import PartyKind

MAILBOX_KINDS = {
    "PAT": PartyKind.PATIENT,
    "PER": PartyKind.PROFESSIONAL,
    "CAB": PartyKind.PROFESSIONAL,
    "ORG": PartyKind.ORGANISATION,
    "APP": PartyKind.ORGANISATION,
}


def kind_of(mailbox_type: str | None, *, is_cnam: bool, is_local: bool, domain_trusted: bool) -> PartyKind:
    """The CNAM's campaign senders first (configured addresses), then the annuaire's BAL type;
    an address of another operator we do not list is a member of the trust space, so a
    professional; anything else is unknown."""
    if is_cnam:
        return PartyKind.CNAM
    if mailbox_type in MAILBOX_KINDS:
        return MAILBOX_KINDS[mailbox_type]
    if not is_local and domain_trusted:
        return PartyKind.PROFESSIONAL
    return PartyKind.UNKNOWN
