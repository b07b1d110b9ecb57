"""The dossier's access chain, by tables: who asks x which act x the document's flags x the
patient's settings -> allowed under which right, or refused by which rule (concealed: as if
the document did not exist). No sockets, no database.

Reading a row: "author" / "authorised" / "emergency" / "patient" / "guardian" / "carer" is
the right an allowed act is recorded under; "-rule" a refusal that says why; "~rule" a
refusal that answers "not found".
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from caducee.dossier.rules import CHAIN, Act, Document, Facts, Requester, Role, Settings, Status, decide

AUTHOR_ID = "ps:810000000009"
OTHER_ID = "ps:810000000017"

WHO = {
    "patient": Requester(Role.PATIENT, "patient:1"),
    "guardian": Requester(Role.GUARDIAN, "patient:2"),
    "carer": Requester(Role.CARER, "patient:3"),
    "carer-manager": Requester(Role.CARER, "patient:3", manages=True),
    "carer-not-granted": Requester(Role.CARER, "patient:3", granted=False),
    "author": Requester(Role.PROFESSIONAL, AUTHOR_ID),
    "pro": Requester(Role.PROFESSIONAL, OTHER_ID, authorised=True),
    "pro-no-consent": Requester(Role.PROFESSIONAL, OTHER_ID),
    "emergency": Requester(Role.PROFESSIONAL, OTHER_ID, emergency=True),
    "blocked": Requester(Role.PROFESSIONAL, OTHER_ID, authorised=True, blocked=True),
    "blocked-author": Requester(Role.PROFESSIONAL, AUTHOR_ID, blocked=True),
}

PLAIN = Document(AUTHOR_ID)
DOCUMENTS = {
    "plain": PLAIN,
    "masked": replace(PLAIN, masked=True),
    "invisible-patient": replace(PLAIN, invisible_patient=True),
    "invisible-guardians": replace(PLAIN, invisible_guardians=True),
    "replaced": replace(PLAIN, status=Status.REPLACED),
    "deleted": replace(PLAIN, status=Status.DELETED),
}
SETTINGS = {"emergency-allowed": Settings(), "emergency-refused": Settings(emergency_refused=True)}

COLUMNS = tuple(DOCUMENTS)
D = "~deleted-document"
IP, IR, MK = "~invisible-to-patient", "~invisible-to-representatives", "~masked-to-professionals"
CG, BL, CE, ER = "~carer-granted", "-blocked-professional", "-consent-or-emergency", "-emergency-refused"

# READ, emergency access permitted by the patient:
#                    plain         masked        invisible-patient  invisible-guardians replaced      deleted
READ = {
    "patient": ("patient", "patient", IP, "patient", "patient", D),
    "guardian": ("guardian", "guardian", IP, IR, "guardian", D),
    "carer": ("carer", "carer", IP, IR, "carer", D),
    "carer-manager": ("carer", "carer", IP, IR, "carer", D),
    "carer-not-granted": (CG, CG, CG, CG, CG, CG),
    "author": ("author", "author", "author", "author", "author", D),
    "pro": ("authorised", MK, "authorised", "authorised", "authorised", D),
    "pro-no-consent": (CE, MK, CE, CE, CE, D),
    "emergency": ("emergency", MK, "emergency", "emergency", "emergency", D),
    "blocked": (BL, BL, BL, BL, BL, BL),
    "blocked-author": (BL, BL, BL, BL, BL, BL),
}
# READ when the patient refused emergency access: only the emergency reader changes.
READ_EMERGENCY_REFUSED = {**READ, "emergency": (ER, MK, ER, ER, ER, D)}

# The other acts, on the plain document of AUTHOR_ID (DEPOSIT: a new document by whoever asks).
#                   OPEN          DEPOSIT        REPLACE / DELETE        MASK / MANAGE            EMERGENCY
OA, PA = "-only-the-author", "-professional-acts"
RO = "-carer-granted"  # a carer who may read but not change
ACTS = {
    "patient": ("patient", "patient", OA, "patient", PA),
    "guardian": ("guardian", "guardian", OA, "guardian", PA),
    "carer": ("carer", RO, RO, RO, PA),
    "carer-manager": ("carer", "carer", OA, "carer", PA),
    "carer-not-granted": (CG, CG, CG, CG, CG),
    "author": (CE, "author", "author", PA, "emergency"),
    "pro": ("authorised", "author", OA, PA, "emergency"),
    "pro-no-consent": (CE, "author", OA, PA, "emergency"),
    "emergency": ("emergency", "author", OA, PA, "emergency"),
    "blocked": (BL, BL, BL, BL, BL),
    "blocked-author": (BL, BL, BL, BL, BL),
}
ACT_COLUMNS = ((Act.OPEN,), (Act.DEPOSIT,), (Act.REPLACE, Act.DELETE), (Act.MASK, Act.MANAGE), (Act.EMERGENCY,))
ACTS_EMERGENCY_REFUSED = {
    **ACTS,
    "author": (CE, "author", "author", PA, ER),
    "pro": ("authorised", "author", OA, PA, ER),
    "pro-no-consent": (CE, "author", OA, PA, ER),
    "emergency": (ER, "author", OA, PA, ER),
}


def outcome(facts: Facts) -> str:
    decision = decide(facts)
    if decision.allowed:
        assert decision.rule == "grant" and decision.reason == ""
        return decision.right
    assert decision.reason, decision  # every refusal says why, in French
    return ("~" if decision.conceal else "-") + decision.rule


def read_cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for setting, table in (("emergency-allowed", READ), ("emergency-refused", READ_EMERGENCY_REFUSED)):
        for who, row in table.items():
            cases += [(who, column, setting, expected) for column, expected in zip(COLUMNS, row, strict=True)]
    return cases


@pytest.mark.parametrize(("who", "document", "setting", "expected"), read_cases(), ids=lambda v: str(v))
def test_reading_a_document(who: str, document: str, setting: str, expected: str) -> None:
    facts = Facts(WHO[who], Act.READ, SETTINGS[setting], DOCUMENTS[document])
    assert outcome(facts) == expected


def act_cases() -> list[tuple[str, Act, str, str]]:
    cases = []
    for setting, table in (("emergency-allowed", ACTS), ("emergency-refused", ACTS_EMERGENCY_REFUSED)):
        for who, row in table.items():
            for acts, expected in zip(ACT_COLUMNS, row, strict=True):
                cases += [(who, act, setting, expected) for act in acts]
    return cases


@pytest.mark.parametrize(("who", "act", "setting", "expected"), act_cases(), ids=lambda v: getattr(v, "value", str(v)))
def test_every_other_act(who: str, act: Act, setting: str, expected: str) -> None:
    requester = WHO[who]
    if act is Act.DEPOSIT:
        document: Document | None = Document(requester.identity)
    elif act in {Act.OPEN, Act.MANAGE, Act.EMERGENCY}:
        document = None
    else:
        document = PLAIN
    assert outcome(Facts(requester, act, SETTINGS[setting], document)) == expected


def test_the_tables_cover_every_combination() -> None:
    read = {(who, document, setting) for who, document, setting, _ in read_cases()}
    assert read == set(itertools.product(WHO, DOCUMENTS, SETTINGS))
    acts = {(who, act, setting) for who, act, setting, _ in act_cases()}
    assert acts == set(itertools.product(WHO, [act for act in Act if act is not Act.READ], SETTINGS))


@pytest.mark.parametrize("who", [who for who, requester in WHO.items() if requester.role is Role.PROFESSIONAL])
@pytest.mark.parametrize("act", list(Act))
def test_a_closed_profile_has_no_dossier_for_professionals(who: str, act: Act) -> None:
    requester = WHO[who]
    document = Document(requester.identity) if act is Act.DEPOSIT else PLAIN
    assert outcome(Facts(requester, act, Settings(closed=True), document)) == "-dossier-closed"


@pytest.mark.parametrize(
    ("who", "flags", "expected"),
    [
        ("author", {"masked": True, "invisible_patient": True}, "-consistent-flags"),
        ("author", {"invisible_patient": True}, "author"),
        ("author", {"invisible_guardians": True}, "author"),
        ("author", {"masked": True}, "author"),
        ("patient", {"masked": True}, "patient"),
        ("patient", {"invisible_patient": True}, "-consistent-flags"),
        ("guardian", {"invisible_guardians": True}, "-consistent-flags"),
    ],
)
def test_flags_a_new_document_may_carry(who: str, flags: dict[str, bool], expected: str) -> None:
    requester = WHO[who]
    assert outcome(Facts(requester, Act.DEPOSIT, Settings(), Document(requester.identity, **flags))) == expected
    if requester.role is Role.PROFESSIONAL:  # a new version carries flags the same way
        assert outcome(Facts(requester, Act.REPLACE, Settings(), Document(requester.identity, **flags))) == expected


def test_every_rule_has_a_name_and_a_description() -> None:
    names = [rule.name for rule in CHAIN]
    assert len(set(names)) == len(names) and names[-1] == "grant"
    assert all(rule.description for rule in CHAIN)
