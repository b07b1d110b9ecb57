"""The rules of patient messaging (docs/architecture.md, rules 1-8), one small class each.

A rule's `check` returns None when it has no objection, or a `Decision`: a refusal, or an
acceptance carrying actions (closing a conversation). The chain in `chain.py` runs them in
order; the first refusal wins.
"""

from __future__ import annotations

from typing import ClassVar

from caducee.policies.facts import Action, Channel, ConversationState, Decision, Facts, PartyKind, SenderFacts, refuse

SENDERS_WHO_OPEN = {PartyKind.PROFESSIONAL, PartyKind.ORGANISATION}


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


def not_owned(address: str) -> Decision:
    """Rule 2's refusal, the same at MAIL FROM and for the From header."""
    return refuse(
        "no-spoofing",
        550,
        "5.7.1",
        f"l'adresse {address} n'appartient pas au compte authentifié",
        f"address {address} is not owned by the authenticated account",
    )


class Rule:
    name: ClassVar[str]
    description: ClassVar[str]

    def check(self, facts: Facts) -> Decision | None:
        raise NotImplementedError


class SenderRule:
    """A rule asked at MAIL FROM, before any recipient is known."""

    name: ClassVar[str]
    description: ClassVar[str]

    def check(self, facts: SenderFacts) -> Decision | None:
        raise NotImplementedError


class SenderOwned(SenderRule):
    name = "no-spoofing"
    description = "On submission (and from the webmail or the API), MAIL FROM belongs to the authenticated account (rule 2)."

    def check(self, facts: SenderFacts) -> Decision | None:
        if facts.channel.authenticated and facts.unowned_address is not None:
            return not_owned(facts.unowned_address)
        return None


class OperatorTrusted(SenderRule):
    name = "trust-space"
    description = (
        "Over MX, the sender's domain is another operator's domain on the whitelist, and the operator's client "
        "certificate is the one the whitelist names for that domain (rule 1)."
    )

    def check(self, facts: SenderFacts) -> Decision | None:
        if facts.channel is not Channel.MX:
            return None
        if not facts.sender.domain_trusted or facts.sender.is_local:
            return outside_trust_space(facts.sender.address)
        if facts.peer_dn is not None and facts.peer_dn not in facts.operator_dns:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "le certificat de l'opérateur ne correspond pas au domaine expéditeur",
                "the operator certificate does not match the sender domain",
            )
        return None


class NoRelay(Rule):
    name = "no-relay"
    description = "What another operator sends us must be for a mailbox we serve: we relay nothing for them."

    def check(self, facts: Facts) -> Decision | None:
        if facts.relaying and not facts.recipient.is_local:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "relais refusé : ce destinataire n'est pas chez nous",
                "relaying denied: recipient is not hosted here",
            )
        return None


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
        if facts.submission and facts.unowned_address is not None:
            return not_owned(facts.unowned_address)
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
    description = (
        "A patient's In-Reply-To/References must name a message the patient holds: a reply to a message "
        "they never received is refused (whether that message exists elsewhere is not said)."
    )

    def check(self, facts: Facts) -> Decision | None:
        if facts.message.references_foreign and facts.sender.kind is PartyKind.PATIENT:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "ce message répond à un message que vous n'avez pas reçu",
                "this message replies to a message you did not receive",
            )
        return None


class ReadOnlyDelegate(Rule):
    name = "read-only-delegate"
    description = "A carer granted reading a patient's messages cannot write in the patient's name."

    def check(self, facts: Facts) -> Decision | None:
        if facts.read_only_delegate:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "en tant qu'aidant, vous pouvez lire ces messages mais pas écrire au nom du patient",
                "a carer with reading access cannot write in the patient's name",
            )
        return None


class ConversationClosed(Rule):
    name = "conversation-closed"
    description = (
        "A patient cannot write in a conversation a professional closed (rule 6). A read receipt (MDN) may still "
        "follow the closing message: it tells the professional the patient read it and carries nothing written."
    )

    def check(self, facts: Facts) -> Decision | None:
        conversation = facts.conversation
        if facts.sender.kind is not PartyKind.PATIENT or conversation is None or facts.message.is_receipt:
            return None
        if conversation.state is not ConversationState.CLOSED:
            return None
        when = f" le {conversation.closed_at}" if conversation.closed_at else ""
        by = f" par {conversation.closed_by}" if conversation.closed_by else ""
        return refuse(
            self.name,
            550,
            "5.7.1",
            f"cette conversation a été close{by}{when}",
            f"this conversation was closed{' by ' + conversation.closed_by if conversation.closed_by else ''}",
        )


class UniqueMessageId(Rule):
    name = "message-id-in-use"
    description = "A Message-ID names one message of one sender: a Message-ID another sender already used is refused."

    def check(self, facts: Facts) -> Decision | None:
        if facts.message.message_id_taken:
            return refuse(
                self.name,
                550,
                "5.7.1",
                "cet identifiant de message (Message-ID) a déjà été utilisé par un autre expéditeur",
                "this Message-ID was already used by another sender",
            )
        return None


class PatientRepliesOnly(Rule):
    name = "patient-replies-only"
    description = (
        "A patient only replies in a conversation a professional opened, to someone taking part; "
        "the one exception is a prescription sent to a pharmacy, and in that conversation the patient "
        "may answer the pharmacy once it has written."
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
        if (
            conversation.opener_kind is PartyKind.PATIENT
            and facts.recipient.is_officine
            and facts.recipient.address in conversation.senders
        ):
            pass  # the patient's prescription, which the pharmacy answered: the patient may answer the pharmacy
        elif conversation.opener_kind not in SENDERS_WHO_OPEN:
            return refuse(
                self.name, 550, "5.7.1", "cette conversation n'accepte pas de réponse", "this conversation does not accept replies"
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
