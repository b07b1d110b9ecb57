"""The rules of patient messaging (DESIGN.md, rules 1-8), one small class each.

A rule's `check` returns None when it has no objection, or a `Decision`: a refusal, or an
acceptance carrying actions (closing a conversation). The chain in `chain.py` runs them in
order; the first refusal wins.
"""

from __future__ import annotations

from typing import ClassVar

from caducee.policies.facts import Action, ConversationState, Decision, Facts, PartyKind

SENDERS_WHO_OPEN = {PartyKind.PROFESSIONAL, PartyKind.ORGANISATION}


def refuse(rule: str, code: int, enhanced: str, text_fr: str, text_en: str) -> Decision:
    return Decision(accepted=False, rule=rule, code=code, enhanced=enhanced, text_fr=text_fr, text_en=text_en)


def outside_trust_space(address: str) -> Decision:
    """The refusal for an address whose domain is not in the trust space (rule 1)."""
    domain = address.rpartition("@")[2]
    return refuse(
        "trust-space",
        550,
        "5.7.1",
        f"le domaine {domain} n'appartient pas à l'espace de confiance MSSanté",
        f"domain {domain} is not in the MSSante trust space",
    )


class Rule:
    name: ClassVar[str]
    description: ClassVar[str]

    def check(self, facts: Facts) -> Decision | None:
        raise NotImplementedError


class TrustSpace(Rule):
    name = "trust-space"
    description = "Mail is exchanged only with domains of the trust space (our own and the whitelist)."

    def check(self, facts: Facts) -> Decision | None:
        for party in (facts.sender, facts.recipient):
            if not party.domain_trusted:
                return outside_trust_space(party.address)
        return None


class NoSpoofing(Rule):
    name = "no-spoofing"
    description = "On submission, MAIL FROM and From belong to the authenticated account."

    def check(self, facts: Facts) -> Decision | None:
        if facts.submission and not facts.sender_owned:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "l'adresse d'expéditeur n'appartient pas au compte authentifié",
                "sender address not owned by the authenticated account",
            )
        return None


class SizeLimit(Rule):
    name = "size-limit"
    description = "A message is at most the configured size (25 MB by default)."

    def check(self, facts: Facts) -> Decision | None:
        if facts.message.size > facts.max_size:
            limit = facts.max_size // (1024 * 1024)
            return refuse(
                self.name,
                552,
                "5.3.4",
                f"le message dépasse la taille maximale de {limit} Mo",
                f"message exceeds the maximum size of {limit} MB",
            )
        return None


class KnownRecipient(Rule):
    name = "known-recipient"
    description = "A local recipient must exist in the annuaire."

    def check(self, facts: Facts) -> Decision | None:
        if facts.recipient.is_local and facts.recipient.kind is PartyKind.UNKNOWN:
            return refuse(
                self.name,
                550,
                "5.1.1",
                f"la boîte {facts.recipient.address} n'existe pas",
                f"mailbox {facts.recipient.address} does not exist",
            )
        return None


class PatientProfileOpen(Rule):
    name = "patient-profile-open"
    description = "A patient whose profile was opposed or closed receives nothing."

    def check(self, facts: Facts) -> Decision | None:
        if facts.recipient.kind is PartyKind.PATIENT and facts.recipient.patient_status in {"opposed", "closed"}:
            return refuse(
                self.name,
                550,
                "5.1.1",
                "ce patient ne peut pas recevoir de messages (profil fermé)",
                "this patient cannot receive messages (profile closed)",
            )
        return None


class NoPatientToPatient(Rule):
    name = "no-patient-to-patient"
    description = "Patients never write to patients."

    def check(self, facts: Facts) -> Decision | None:
        if facts.sender.kind is PartyKind.PATIENT and facts.recipient.kind is PartyKind.PATIENT:
            return refuse(self.name, 550, "5.7.1", "un patient ne peut pas écrire à un autre patient", "patients cannot write to patients")
        return None


class NoReplyToCampaign(Rule):
    name = "no-reply-to-campaign"
    description = "Nobody replies to a CNAM campaign message."

    def check(self, facts: Facts) -> Decision | None:
        conversation = facts.conversation
        if conversation is not None and conversation.is_campaign and facts.sender.kind is not PartyKind.CNAM:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "on ne peut pas répondre à un message de l'Assurance Maladie",
                "messages from the national health insurer cannot be answered",
            )
        return None


class NoForgedThreading(Rule):
    name = "no-forged-threading"
    description = "In-Reply-To/References naming someone else's conversation are refused."

    def check(self, facts: Facts) -> Decision | None:
        if facts.message.references_foreign and facts.sender.kind is PartyKind.PATIENT:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "ce message répond à une conversation à laquelle vous ne participez pas",
                "this message replies to a conversation you are not part of",
            )
        return None


class PatientRepliesOnly(Rule):
    name = "patient-replies-only"
    description = (
        "A patient only replies in an open conversation a professional opened, to someone taking part; "
        "the one exception is a prescription sent to a pharmacy. A read receipt (MDN) may still follow a "
        "closing message: it tells the professional the patient read it and carries nothing written."
    )

    def check(self, facts: Facts) -> Decision | None:
        if facts.sender.kind is not PartyKind.PATIENT:
            return None
        conversation = facts.conversation
        if conversation is None:
            if facts.recipient.is_officine and facts.message.has_attachment:
                return None  # the prescription exception
            if facts.recipient.is_officine:
                return refuse(
                    self.name,
                    550,
                    "5.7.1",
                    "pour écrire à une pharmacie, joignez votre ordonnance",
                    "to write to a pharmacy, attach your prescription",
                )
            return refuse(
                self.name,
                550,
                "5.7.1",
                "un patient ne peut que répondre à un message d'un professionnel de santé",
                "a patient can only reply to a message from a health professional",
            )
        if conversation.opener_kind not in SENDERS_WHO_OPEN:
            return refuse(
                self.name, 550, "5.7.1", "cette conversation n'accepte pas de réponse", "this conversation does not accept replies"
            )
        if conversation.state is ConversationState.CLOSED and not facts.message.is_receipt:
            when = f" le {conversation.closed_at}" if conversation.closed_at else ""
            by = f" par {conversation.closed_by}" if conversation.closed_by else ""
            return refuse(
                self.name,
                550,
                "5.7.1",
                f"cette conversation a été close{by}{when}",
                f"this conversation was closed{' by ' + conversation.closed_by if conversation.closed_by else ''}",
            )
        if facts.recipient.address not in conversation.participants:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "ce destinataire ne participe pas à la conversation",
                "this recipient is not part of the conversation",
            )
        return None


class ProfessionalCloses(Rule):
    name = "professional-closes"
    description = (
        "X-MSS-MES: FIN is delivered and closes; an empty [FIN] closes silently; a [FIN] with content "
        "is delivered, closes, and the sender is told (content is never dropped)."
    )

    def check(self, facts: Facts) -> Decision | None:
        if facts.sender.kind not in SENDERS_WHO_OPEN:
            return None
        if facts.subject_is_fin:
            if facts.message.has_content:
                actions = frozenset({Action.CLOSE_CONVERSATION, Action.TELL_SENDER_CLOSED})
            else:
                actions = frozenset({Action.CLOSE_CONVERSATION, Action.DO_NOT_DELIVER})
            return Decision(accepted=True, rule=self.name, actions=actions)
        if facts.message.mss_mes_fin:
            return Decision(accepted=True, rule=self.name, actions=frozenset({Action.CLOSE_CONVERSATION}))
        return None
