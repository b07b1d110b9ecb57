"""Each rule, and the chain, tested by tables of cases: sender kind x recipient kind x
conversation state x message facts -> decision. No sockets, no database."""

from __future__ import annotations

from dataclasses import replace

import pytest

from caducee.policies import (
    CHAIN,
    Action,
    Channel,
    Conversation,
    ConversationState,
    Facts,
    Message,
    Party,
    PartyKind,
    SenderFacts,
    decide,
    decide_sender,
    kind_of,
)

DOCTOR = Party("dr.bernard@demo.mssante.fr", PartyKind.PROFESSIONAL)
NURSE = Party("k.haddad@demo.mssante.fr", PartyKind.PROFESSIONAL)
REMOTE_DOCTOR = Party("dr.x@autre-operateur.mssante.fr", PartyKind.PROFESSIONAL, is_local=False)
HOSPITAL = Party("urgences@ch.mssante.fr", PartyKind.ORGANISATION, is_local=False)
PHARMACY = Party("pharmacie.canal@demo.mssante.fr", PartyKind.ORGANISATION, is_officine=True)
PATIENT = Party("285037512345688@patient.mssante.fr", PartyKind.PATIENT, patient_status="activated")
OTHER_PATIENT = Party("178112a12345684@patient.mssante.fr", PartyKind.PATIENT, patient_status="activated")
NEW_PATIENT = replace(PATIENT, patient_status="created")
OPPOSED = replace(PATIENT, patient_status="opposed")
CLOSED_PROFILE = replace(PATIENT, patient_status="closed")
CNAM = Party("prevention.cnam@demo.mssante.fr", PartyKind.CNAM)
NOBODY = Party("nobody@demo.mssante.fr", PartyKind.UNKNOWN)
OUTSIDER = Party("someone@gmail.com", PartyKind.UNKNOWN, domain_trusted=False, is_local=False)

OPEN = Conversation(PartyKind.PROFESSIONAL, ConversationState.OPEN, frozenset({DOCTOR.address, PATIENT.address}))
CLOSED = replace(OPEN, state=ConversationState.CLOSED, closed_by="Dr Sophie Bernard", closed_at="2026-11-20")
CAMPAIGN = Conversation(PartyKind.CNAM, ConversationState.OPEN, frozenset({CNAM.address, PATIENT.address}), is_campaign=True)
PATIENT_OPENED = replace(OPEN, opener_kind=PartyKind.PATIENT)
PRESCRIPTION_SENT = Conversation(
    PartyKind.PATIENT, ConversationState.OPEN, frozenset({PATIENT.address, PHARMACY.address}), senders=frozenset({PATIENT.address})
)
PRESCRIPTION_ANSWERED = replace(PRESCRIPTION_SENT, senders=frozenset({PATIENT.address, PHARMACY.address}))
PRESCRIPTION_CLOSED = replace(PRESCRIPTION_ANSWERED, state=ConversationState.CLOSED, closed_by="Pharmacie du Canal")

TEXT = Message(size=2_000, subject="Résultats", has_content=True)
REPLY = replace(TEXT, references_known=True)
PRESCRIPTION = Message(size=300_000, subject="Mon ordonnance", has_attachment=True)
FIN_EMPTY = Message(size=500, subject="[FIN]", has_content=False)
FIN_WITH_CONTENT = Message(size=5_000, subject="[FIN] vos résultats", has_content=True)
MES_FIN = replace(TEXT, mss_mes_fin=True)
HUGE = Message(size=26 * 1024 * 1024)
FORGED = replace(TEXT, references_known=True, references_foreign=True)
RECEIPT = replace(REPLY, is_receipt=True)
REUSED_ID = replace(TEXT, message_id="<x@y>", message_id_taken=True)

R = "refused"
CASES = [
    # id, sender, recipient, conversation, message, submission/owned, expected (R code enhanced rule | actions)
    ("ps-to-patient", DOCTOR, PATIENT, None, TEXT, True, ()),
    ("ps-to-ps", DOCTOR, NURSE, None, TEXT, True, ()),
    ("ps-to-remote-org", DOCTOR, HOSPITAL, None, TEXT, True, ()),
    ("ps-to-new-profile", DOCTOR, NEW_PATIENT, None, TEXT, True, ()),
    ("remote-ps-to-patient", REMOTE_DOCTOR, PATIENT, None, TEXT, False, ()),
    ("org-to-patient", HOSPITAL, PATIENT, None, TEXT, False, ()),
    ("cnam-to-patient", CNAM, PATIENT, None, TEXT, True, ()),
    ("patient-reply-open", PATIENT, DOCTOR, OPEN, REPLY, True, ()),
    ("patient-reply-closed", PATIENT, DOCTOR, CLOSED, REPLY, True, (R, 550, "5.7.1", "conversation-closed")),
    ("patient-receipt-closed", PATIENT, DOCTOR, CLOSED, RECEIPT, True, ()),
    ("patient-receipt-to-outsider", PATIENT, NURSE, CLOSED, RECEIPT, True, (R, 550, "5.7.1", "patient-replies-only")),
    ("patient-receipt-campaign", PATIENT, CNAM, CAMPAIGN, RECEIPT, True, (R, 550, "5.7.1", "no-reply-to-campaign")),
    ("patient-starts", PATIENT, DOCTOR, None, TEXT, True, (R, 550, "5.7.1", "patient-replies-only")),
    ("patient-prescription", PATIENT, PHARMACY, None, PRESCRIPTION, True, ()),
    ("patient-pharmacy-no-doc", PATIENT, PHARMACY, None, TEXT, True, (R, 550, "5.7.1", "patient-replies-only")),
    ("patient-prescription-to-ps", PATIENT, DOCTOR, None, PRESCRIPTION, True, (R, 550, "5.7.1", "patient-replies-only")),
    ("patient-to-outsider-in-conv", PATIENT, NURSE, OPEN, REPLY, True, (R, 550, "5.7.1", "patient-replies-only")),
    ("patient-in-patient-opened", PATIENT, DOCTOR, PATIENT_OPENED, REPLY, True, (R, 550, "5.7.1", "patient-replies-only")),
    ("patient-to-patient", PATIENT, OTHER_PATIENT, None, TEXT, True, (R, 550, "5.7.1", "no-patient-to-patient")),
    ("patient-to-patient-in-conv", PATIENT, OTHER_PATIENT, OPEN, REPLY, True, (R, 550, "5.7.1", "no-patient-to-patient")),
    ("reply-to-campaign", PATIENT, CNAM, CAMPAIGN, REPLY, True, (R, 550, "5.7.1", "no-reply-to-campaign")),
    ("ps-into-campaign", DOCTOR, CNAM, CAMPAIGN, REPLY, True, (R, 550, "5.7.1", "no-reply-to-campaign")),
    ("forged-threading", PATIENT, DOCTOR, None, FORGED, True, (R, 550, "5.7.1", "no-forged-threading")),
    ("reused-message-id", NURSE, PATIENT, None, REUSED_ID, True, (R, 550, "5.7.1", "message-id-in-use")),
    (
        "reused-message-id-in-conv",
        DOCTOR,
        PATIENT,
        OPEN,
        replace(REUSED_ID, references_known=True),
        True,
        (R, 550, "5.7.1", "message-id-in-use"),
    ),
    ("patient-prescription-before-answer", PATIENT, PHARMACY, PRESCRIPTION_SENT, REPLY, True, (R, 550, "5.7.1", "patient-replies-only")),
    ("patient-answers-pharmacy", PATIENT, PHARMACY, PRESCRIPTION_ANSWERED, REPLY, True, ()),
    ("patient-answers-closed-pharmacy", PATIENT, PHARMACY, PRESCRIPTION_CLOSED, REPLY, True, (R, 550, "5.7.1", "conversation-closed")),
    ("patient-prescription-conv-to-other", PATIENT, DOCTOR, PRESCRIPTION_ANSWERED, REPLY, True, (R, 550, "5.7.1", "patient-replies-only")),
    ("pharmacy-writes-in-prescription", PHARMACY, PATIENT, PRESCRIPTION_SENT, REPLY, True, ()),
    ("opposed-profile", DOCTOR, OPPOSED, None, TEXT, True, (R, 550, "5.1.1", "patient-profile-open")),
    ("closed-profile", REMOTE_DOCTOR, CLOSED_PROFILE, None, TEXT, False, (R, 550, "5.1.1", "patient-profile-open")),
    ("unknown-local", DOCTOR, NOBODY, None, TEXT, True, (R, 550, "5.1.1", "known-recipient")),
    ("outside-trust-space-rcpt", DOCTOR, OUTSIDER, None, TEXT, True, (R, 550, "5.7.1", "trust-space")),
    ("outside-trust-space-sender", OUTSIDER, DOCTOR, None, TEXT, False, (R, 550, "5.7.1", "trust-space")),
    ("too-big", DOCTOR, PATIENT, None, HUGE, True, (R, 552, "5.3.4", "size-limit")),
    ("fin-empty", DOCTOR, PATIENT, OPEN, FIN_EMPTY, True, {Action.CLOSE_CONVERSATION, Action.DO_NOT_DELIVER}),
    ("fin-with-content", DOCTOR, PATIENT, OPEN, FIN_WITH_CONTENT, True, {Action.CLOSE_CONVERSATION, Action.TELL_SENDER_CLOSED}),
    ("x-mss-mes-fin", DOCTOR, PATIENT, OPEN, MES_FIN, True, {Action.CLOSE_CONVERSATION}),
    ("fin-from-patient-is-text", PATIENT, DOCTOR, OPEN, replace(FIN_WITH_CONTENT, references_known=True), True, ()),
]


@pytest.mark.parametrize(
    ("sender", "recipient", "conversation", "message", "submission", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_chain(sender, recipient, conversation, message, submission, expected) -> None:  # type: ignore[no-untyped-def]
    decision = decide(Facts(sender=sender, recipient=recipient, conversation=conversation, message=message, submission=submission))
    if isinstance(expected, tuple) and expected and expected[0] == R:
        _, code, enhanced, rule = expected
        assert not decision.accepted
        assert (decision.code, decision.enhanced, decision.rule) == (code, enhanced, rule)
        assert decision.text_fr and decision.text_en
        assert decision.smtp_reply.startswith(f"{code} {enhanced} ")
    else:
        assert decision.accepted, decision.smtp_reply
        assert decision.actions == frozenset(expected)


def test_spoofing_is_refused_on_submission_only() -> None:
    facts = Facts(sender=DOCTOR, recipient=PATIENT, message=TEXT, submission=True, unowned_address=NURSE.address)
    decision = decide(facts)
    assert (decision.accepted, decision.rule, decision.enhanced) == (False, "no-spoofing", "5.7.1")
    assert decide(replace(facts, submission=False)).accepted


def test_closed_conversation_says_by_whom_and_when() -> None:
    decision = decide(Facts(sender=PATIENT, recipient=DOCTOR, conversation=CLOSED, message=REPLY, submission=True))
    assert "close par Dr Sophie Bernard le 2026-11-20" in decision.text_fr


def test_size_limit_is_configurable() -> None:
    facts = Facts(sender=DOCTOR, recipient=PATIENT, message=Message(size=2 * 1024 * 1024), max_size=1024 * 1024)
    assert "1 Mo" in decide(facts).text_fr


def test_every_rule_has_a_name_and_a_description() -> None:
    names = [rule.name for rule in CHAIN]
    assert len(names) == len(set(names))
    assert all(rule.description for rule in CHAIN)


PEER_DN = "CN=mx.autre-operateur.mssante.fr,O=Autre Operateur"
SENDER_CASES = [
    # id, facts, expected rule ("accept" when accepted)
    ("submission-own-address", SenderFacts(DOCTOR, Channel.SUBMISSION), "accept"),
    ("submission-someone-else", SenderFacts(DOCTOR, Channel.SUBMISSION, unowned_address=NURSE.address), "no-spoofing"),
    ("webmail-someone-else", SenderFacts(PATIENT, Channel.WEBMAIL, unowned_address=OTHER_PATIENT.address), "no-spoofing"),
    ("trusted-network-any-address", SenderFacts(NURSE, Channel.TRUSTED, unowned_address=NURSE.address), "accept"),
    (
        "mx-whitelisted-right-certificate",
        SenderFacts(REMOTE_DOCTOR, Channel.MX, operator_dns=frozenset({PEER_DN}), peer_dn=PEER_DN),
        "accept",
    ),
    (
        "mx-whitelisted-other-certificate",
        SenderFacts(REMOTE_DOCTOR, Channel.MX, operator_dns=frozenset({"CN=x"}), peer_dn=PEER_DN),
        "trust-space",
    ),
    ("mx-claims-our-domain", SenderFacts(DOCTOR, Channel.MX, peer_dn=PEER_DN), "trust-space"),
    ("mx-outside-trust-space", SenderFacts(OUTSIDER, Channel.MX, peer_dn=PEER_DN), "trust-space"),
]


@pytest.mark.parametrize(("facts", "expected"), [case[1:] for case in SENDER_CASES], ids=[case[0] for case in SENDER_CASES])
def test_sender_chain(facts: SenderFacts, expected: str) -> None:
    """MAIL FROM: rule 2 on authenticated channels, the whitelist and the operator's certificate on MX."""
    decision = decide_sender(facts)
    assert decision.rule == expected
    if not decision.accepted:
        assert (decision.code, decision.enhanced) == (550, "5.7.1") and decision.text_fr and decision.text_en


def test_rule_2_says_the_same_at_mail_from_and_for_the_from_header() -> None:
    at_mail_from = decide_sender(SenderFacts(DOCTOR, Channel.SUBMISSION, unowned_address=NURSE.address))
    in_the_header = decide(Facts(sender=DOCTOR, recipient=PATIENT, message=TEXT, submission=True, unowned_address=NURSE.address))
    assert at_mail_from == in_the_header and NURSE.address in at_mail_from.text_fr


def test_over_mx_only_our_mailboxes_are_recipients() -> None:
    relayed = decide(Facts(sender=REMOTE_DOCTOR, recipient=HOSPITAL, message=TEXT, relaying=True))
    assert (relayed.accepted, relayed.rule) == (False, "no-relay")
    assert decide(Facts(sender=REMOTE_DOCTOR, recipient=PATIENT, message=TEXT, relaying=True)).accepted


def test_a_read_only_carer_cannot_write_for_the_patient() -> None:
    facts = Facts(sender=PATIENT, recipient=DOCTOR, conversation=OPEN, message=REPLY, submission=True, read_only_delegate=True)
    assert decide(facts).rule == "read-only-delegate"
    assert decide(replace(facts, read_only_delegate=False)).accepted


@pytest.mark.parametrize(
    ("mailbox_type", "cnam", "local", "trusted", "kind"),
    [
        ("PAT", False, True, True, PartyKind.PATIENT),
        ("PER", False, True, True, PartyKind.PROFESSIONAL),
        ("CAB", False, True, True, PartyKind.PROFESSIONAL),
        ("ORG", False, True, True, PartyKind.ORGANISATION),
        ("APP", True, True, True, PartyKind.CNAM),
        ("APP", False, True, True, PartyKind.ORGANISATION),
        (None, False, False, True, PartyKind.PROFESSIONAL),  # another operator's address we do not list
        (None, False, True, True, PartyKind.UNKNOWN),
        (None, False, False, False, PartyKind.UNKNOWN),
    ],
)
def test_who_is_who(mailbox_type: str | None, cnam: bool, local: bool, trusted: bool, kind: PartyKind) -> None:
    assert kind_of(mailbox_type, is_cnam=cnam, is_local=local, domain_trusted=trusted) is kind
