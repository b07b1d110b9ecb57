"""Who may do what with a patient's dossier: one pure chain of small named rules.

Facts in (who asks, what for, the document's flags, the patient's settings), a decision out
(allowed or not, under which right, why not in French, and whether to answer as if the
document did not exist). No I/O: the service gathers the facts, asks `decide`, and records
what it did; `tests/test_dossier_rules.py` is the table of every combination.

The model (Mon espace santé's dossier médical):
- the patient, a minor's legal representatives (guardians) and the carers the patient
  granted the dossier see every document except those the author keeps from them for now
  (invisible to the patient) and, for guardians and carers, a minor's secret documents
  (invisible to legal representatives);
- a professional who declared the patient's consent ("authorised"), or who opened an
  emergency access (bris de glace) the patient did not refuse, reads what is not masked
  to professionals; the author of a document always reads it; masked documents are never
  shown to another professional, even in an emergency;
- a professional the patient blocked can neither read nor add;
- only the author of a document replaces it with a new version or deletes it;
- masking and the dossier's settings are the patient's (and their guardians' or managing
  carers'), never a professional's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar


class Role(str, enum.Enum):
    PATIENT = "patient"
    GUARDIAN = "guardian"  # legal representative of a minor
    CARER = "carer"  # someone the patient granted access (delegation scope "dossier" or "dossier:manage")
    PROFESSIONAL = "professional"


PATIENT_SIDE = frozenset({Role.PATIENT, Role.GUARDIAN, Role.CARER})


class Act(str, enum.Enum):
    OPEN = "open"  # see the dossier: its list of documents, the medical profile
    READ = "read"  # open one document
    DEPOSIT = "deposit"
    REPLACE = "replace"  # a new version of a document
    DELETE = "delete"
    MASK = "mask"  # mask a document to professionals, or show it again
    MANAGE = "manage"  # block a professional, refuse emergency access, edit the medical profile
    EMERGENCY = "emergency"  # open an emergency access (bris de glace)


class Status(str, enum.Enum):
    CURRENT = "current"
    REPLACED = "replaced"  # kept, shown on request beside its newer version
    DELETED = "deleted"  # by its author: shown to nobody


@dataclass(frozen=True)
class Requester:
    role: Role
    identity: str  # "ps:<national id>" for a professional, "patient:<account id>" for a person
    blocked: bool = False  # a professional the patient blocked
    authorised: bool = False  # a professional who declared the patient's consent
    emergency: bool = False  # a professional in an emergency access of this dossier
    manages: bool = False  # a carer granted "dossier:manage" (guardians and the patient always manage)
    granted: bool = True  # a carer whose delegation includes the dossier


@dataclass(frozen=True)
class Document:
    author: str  # identity of who deposited it
    masked: bool = False  # MASQUE_PS: only the author and the patient side see it
    invisible_patient: bool = False  # INVISIBLE_PATIENT: the author announces it in person first
    invisible_guardians: bool = False  # INVISIBLE_REPRESENTANTS_LEGAUX: a minor's secret consultation
    status: Status = Status.CURRENT


@dataclass(frozen=True)
class Settings:
    emergency_refused: bool = False  # the patient forbade emergency access
    closed: bool = False  # the patient's profile was opposed or closed: no dossier


@dataclass(frozen=True)
class Facts:
    requester: Requester
    act: Act
    settings: Settings = Settings()
    document: Document | None = None  # the document concerned (READ, REPLACE, DELETE, MASK), or the new one (DEPOSIT)

    @property
    def is_author(self) -> bool:
        return self.document is not None and self.document.author == self.requester.identity

    @property
    def professional(self) -> bool:
        return self.requester.role is Role.PROFESSIONAL


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    right: str = ""  # the right an allowed access is recorded under: patient, guardian, carer, author, authorised, emergency
    reason: str = ""  # why not, in French, for the person asking
    conceal: bool = False  # answer as if the document did not exist (no existence leak)


def refuse(rule: str, reason: str, *, conceal: bool = False) -> Decision:
    return Decision(False, rule, "refused", reason, conceal)


NOT_FOUND = "Ce document n'existe pas ou ne vous est pas accessible."


class Rule:
    name: ClassVar[str]
    description: ClassVar[str]

    def check(self, facts: Facts) -> Decision | None:
        raise NotImplementedError


class DossierClosed(Rule):
    name = "dossier-closed"
    description = "A patient who opposed or closed their profile has no dossier a professional can reach or feed."

    def check(self, facts: Facts) -> Decision | None:
        if facts.professional and facts.settings.closed:
            return refuse(self.name, "Ce patient a fermé son profil Mon espace santé : son dossier n'est pas accessible.")
        return None


class BlockedProfessional(Rule):
    name = "blocked-professional"
    description = "A professional the patient blocked can neither read nor add anything, even their own documents."

    def check(self, facts: Facts) -> Decision | None:
        if facts.professional and facts.requester.blocked:
            return refuse(self.name, "Le patient vous a bloqué : vous ne pouvez ni consulter ni alimenter son dossier.")
        return None


class CarerGranted(Rule):
    name = "carer-granted"
    description = "A carer reaches the dossier only if the patient granted it, and changes it only if granted to manage it."

    def check(self, facts: Facts) -> Decision | None:
        requester = facts.requester
        if requester.role is not Role.CARER:
            return None
        if not requester.granted:
            return refuse(self.name, "Ce patient ne vous a pas donné accès à son dossier médical.", conceal=True)
        if not requester.manages and facts.act in {Act.DEPOSIT, Act.REPLACE, Act.DELETE, Act.MASK, Act.MANAGE}:
            return refuse(self.name, "En tant qu'aidant, vous pouvez consulter ce dossier mais pas le modifier.")
        return None


class ProfessionalActs(Rule):
    name = "professional-acts"
    description = "Emergency access is for professionals; masking and the dossier's settings are for the patient side."

    def check(self, facts: Facts) -> Decision | None:
        if facts.act is Act.EMERGENCY and not facts.professional:
            return refuse(self.name, "L'accès en urgence est réservé aux professionnels de santé.")
        if facts.professional and facts.act in {Act.MASK, Act.MANAGE}:
            return refuse(self.name, "Seul le patient (ou son représentant) peut masquer ses documents ou régler son dossier.")
        return None


class DeletedDocument(Rule):
    name = "deleted-document"
    description = "A document its author deleted is shown to nobody."

    def check(self, facts: Facts) -> Decision | None:
        if facts.document is not None and facts.act is not Act.DEPOSIT and facts.document.status is Status.DELETED:
            return refuse(self.name, NOT_FOUND, conceal=True)
        return None


class InvisibleToPatient(Rule):
    name = "invisible-to-patient"
    description = "A document the author keeps from the patient for now is not shown to the patient side (nor that it exists)."

    def check(self, facts: Facts) -> Decision | None:
        document = facts.document
        if document is None or facts.act is Act.DEPOSIT or facts.requester.role not in PATIENT_SIDE:
            return None
        if document.invisible_patient:
            return refuse(self.name, NOT_FOUND, conceal=True)
        return None


class InvisibleToRepresentatives(Rule):
    name = "invisible-to-representatives"
    description = "A minor's secret document is not shown to their legal representatives, nor to carers (nor that it exists)."

    def check(self, facts: Facts) -> Decision | None:
        document = facts.document
        if document is None or facts.act is Act.DEPOSIT or facts.requester.role not in {Role.GUARDIAN, Role.CARER}:
            return None
        if document.invisible_guardians:
            return refuse(self.name, NOT_FOUND, conceal=True)
        return None


class MaskedToProfessionals(Rule):
    name = "masked-to-professionals"
    description = "A masked document is shown to its author and the patient side only: never to another professional, even in an emergency."

    def check(self, facts: Facts) -> Decision | None:
        document = facts.document
        if document is None or facts.act is Act.DEPOSIT or not facts.professional or facts.is_author:
            return None
        if document.masked:
            return refuse(self.name, NOT_FOUND, conceal=True)
        return None


class OnlyTheAuthor(Rule):
    name = "only-the-author"
    description = "Only the author of a document replaces it with a new version or deletes it."

    def check(self, facts: Facts) -> Decision | None:
        if facts.act in {Act.REPLACE, Act.DELETE} and not facts.is_author:
            return refuse(self.name, "Seul l'auteur d'un document peut le remplacer ou le supprimer.")
        return None


class ConsentOrEmergency(Rule):
    name = "consent-or-emergency"
    description = (
        "A professional reads the dossier after declaring the patient's consent, or in an emergency access; "
        "the author of a document reads that document in any case."
    )

    def check(self, facts: Facts) -> Decision | None:
        requester = facts.requester
        if not facts.professional or facts.act not in {Act.OPEN, Act.READ} or requester.authorised:
            return None
        if facts.act is Act.READ and facts.is_author:
            return None
        if not requester.emergency:
            return refuse(self.name, "Pour consulter ce dossier, déclarez l'accord du patient, ou ouvrez un accès en urgence.")
        return None


class EmergencyRefused(Rule):
    name = "emergency-refused"
    description = "A patient may forbid emergency access: then no emergency access is opened nor used."

    def check(self, facts: Facts) -> Decision | None:
        requester = facts.requester
        if not facts.professional or not facts.settings.emergency_refused:
            return None
        uses_emergency = facts.act in {Act.OPEN, Act.READ} and requester.emergency and not requester.authorised and not facts.is_author
        if facts.act is Act.EMERGENCY or uses_emergency:
            return refuse(self.name, "Le patient a refusé l'accès en urgence à son dossier.")
        return None


class ConsistentFlags(Rule):
    name = "consistent-flags"
    description = (
        "A document cannot be both invisible to the patient and masked to professionals; "
        "only a professional keeps a document from the patient or from legal representatives."
    )

    def check(self, facts: Facts) -> Decision | None:
        document = facts.document
        if document is None or facts.act not in {Act.DEPOSIT, Act.REPLACE}:
            return None
        if document.masked and document.invisible_patient:
            return refuse(self.name, "Un document ne peut pas être à la fois invisible au patient et masqué aux professionnels.")
        if not facts.professional and (document.invisible_patient or document.invisible_guardians):
            return refuse(self.name, "Seul un professionnel peut rendre un document invisible au patient ou à ses représentants.")
        return None


class Grant(Rule):
    name = "grant"
    description = "Whatever no rule refused is allowed, under the right it was asked with."

    def check(self, facts: Facts) -> Decision | None:
        requester = facts.requester
        if not facts.professional:
            return Decision(True, self.name, requester.role.value)
        if facts.act is Act.EMERGENCY:
            return Decision(True, self.name, "emergency")
        if facts.act is Act.DEPOSIT or facts.is_author:
            return Decision(True, self.name, "author")
        return Decision(True, self.name, "authorised" if requester.authorised else "emergency")


CHAIN: tuple[Rule, ...] = (
    DossierClosed(),
    BlockedProfessional(),
    CarerGranted(),
    ProfessionalActs(),
    DeletedDocument(),
    InvisibleToPatient(),
    InvisibleToRepresentatives(),
    MaskedToProfessionals(),
    OnlyTheAuthor(),
    ConsentOrEmergency(),
    EmergencyRefused(),
    ConsistentFlags(),
    Grant(),
)


def decide(facts: Facts, chain: tuple[Rule, ...] = CHAIN) -> Decision:
    """The first rule with an answer decides (the last one grants)."""
    for rule in chain:
        decision = rule.check(facts)
        if decision is not None:
            return decision
    raise AssertionError("the chain ends with Grant")
