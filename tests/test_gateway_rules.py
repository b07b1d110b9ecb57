"""The rules of patient messaging through the whole gateway: a doctor writes over SMTP,
patients answer through the pipeline as the webmail will, and we look at what each
mailbox holds afterwards."""

from __future__ import annotations

import asyncio
import email
import smtplib
import ssl
from email.policy import SMTP as SMTP_POLICY

import pytest
from mail import message
from sqlalchemy import update

from caducee.annuaire.models import Patient
from caducee.gateway.pipeline import Channel, Envelope


def smtp_send(gateway, msg, rcpts: list[str]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    address, password = gateway.account("doctor")
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(gateway.ca.files.cert)))
        client.login(address, password)
        try:
            client.sendmail(address, rcpts, msg.as_bytes(policy=SMTP_POLICY))
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return code, text.decode()
        return 250, ""


async def doctor_writes(gateway, patient: str, subject: str = "Résultats", body: str = "Vos résultats sont normaux.", headers=None):  # type: ignore[no-untyped-def]
    msg = message(gateway.account("doctor")[0], patient, subject, body, headers=headers)
    code, text = await asyncio.to_thread(smtp_send, gateway, msg, [patient])
    return msg, code, text


async def patient_writes(gateway, patient_key: str, to: str, *, reply_to=None, subject="Re: Résultats", attachment=None):  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"][patient_key]["address"]
    headers = {"In-Reply-To": reply_to["Message-ID"], "References": reply_to["Message-ID"]} if reply_to is not None else None
    msg = message(patient, to, subject, "Merci docteur.", headers=headers, attachment=attachment)
    return await gateway.pipeline.accept(
        Envelope(mail_from=patient, rcpt_tos=[to], data=msg.as_bytes(policy=SMTP_POLICY), channel=Channel.WEBMAIL, authenticated=patient)
    )


async def test_patient_replies_inside_a_conversation_the_doctor_opened(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    first, code, _ = await doctor_writes(gateway, patient)
    assert code == 250
    result = await patient_writes(gateway, "adult_1", doctor, reply_to=first)
    assert result.accepted == [doctor], result.reply
    assert b"Merci docteur" in (await gateway.inbox(doctor))[0]


async def test_patient_cannot_start_a_conversation(gateway) -> None:  # type: ignore[no-untyped-def]
    result = await patient_writes(gateway, "adult_1", gateway.account("doctor")[0], subject="Question")
    assert not result.accepted and result.reply.startswith("550 5.7.1")
    assert "can only reply" in result.reply


async def test_forged_in_reply_to_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")[0]
    first, _, _ = await doctor_writes(gateway, gateway.credentials["patients"]["adult_1"]["address"])
    result = await patient_writes(gateway, "adult_2", doctor, reply_to=first)  # someone else's conversation
    assert not result.accepted and "did not receive" in result.reply
    assert await gateway.inbox(doctor) == []


async def test_empty_fin_closes_silently(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    first, _, _ = await doctor_writes(gateway, patient)
    fin = message(doctor, patient, "[FIN]", "", headers={"In-Reply-To": first["Message-ID"], "References": first["Message-ID"]})
    assert (await asyncio.to_thread(smtp_send, gateway, fin, [patient]))[0] == 250
    assert len(await gateway.inbox(patient)) == 1  # only the first message
    result = await patient_writes(gateway, "adult_1", doctor, reply_to=first)
    assert not result.accepted and "closed by Dr Sophie Bernard" in result.reply
    assert "close par Dr Sophie Bernard le" in result.refused[doctor].text_fr


async def test_fin_with_content_is_delivered_closes_and_tells_the_sender(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    fin, code, _ = await doctor_writes(gateway, patient, "[FIN] Vos résultats", "Tout est normal, bonne journée.")
    assert code == 250
    delivered = await gateway.inbox(patient)
    assert len(delivered) == 1 and b"Tout est normal" in delivered[0]  # content is never dropped
    notices = await gateway.inbox(doctor)
    assert len(notices) == 1 and b"Conversation close" in notices[0]
    result = await patient_writes(gateway, "adult_1", doctor, reply_to=fin)
    assert not result.accepted and "closed" in result.reply


async def test_x_mss_mes_fin_delivers_then_blocks_replies(gateway) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")[0]
    patient = gateway.credentials["patients"]["adult_2"]["address"]
    last, code, _ = await doctor_writes(gateway, patient, headers={"X-MSS-MES": "FIN"})
    assert code == 250 and len(await gateway.inbox(patient)) == 1
    result = await patient_writes(gateway, "adult_2", doctor, reply_to=last)
    assert not result.accepted and result.reply.startswith("550 5.7.1")


async def test_prescription_to_the_pharmacy(gateway) -> None:  # type: ignore[no-untyped-def]
    pharmacy = gateway.account("pharmacy")[0]
    pdf = b"%PDF-1.4\n% ordonnance\n"
    result = await patient_writes(
        gateway, "adult_1", pharmacy, subject="Mon ordonnance", attachment=("ordonnance.pdf", pdf, "application/pdf")
    )
    assert result.accepted == [pharmacy], result.reply
    assert b"ordonnance.pdf" in (await gateway.inbox(pharmacy))[0]
    without = await patient_writes(gateway, "adult_1", pharmacy, subject="Bonjour")
    assert not without.accepted and "attach your prescription" in without.reply


async def test_patient_never_writes_to_a_patient(gateway) -> None:  # type: ignore[no-untyped-def]
    other = gateway.credentials["patients"]["adult_2"]["address"]
    result = await patient_writes(gateway, "adult_1", other)
    assert not result.accepted and "patients cannot write to patients" in result.reply


async def test_opposed_and_closed_profiles_receive_nothing(gateway) -> None:  # type: ignore[no-untyped-def]
    patients = gateway.credentials["patients"]
    async with gateway.engine.begin() as conn:
        await conn.execute(update(Patient).where(Patient.ins == patients["adult_1"]["ins"]).values(status="opposed"))
        await conn.execute(update(Patient).where(Patient.ins == patients["adult_2"]["ins"]).values(status="created"))
    _, code, text = await doctor_writes(gateway, patients["adult_1"]["address"])
    assert code == 550 and "5.1.1" in text
    _, code, _ = await doctor_writes(gateway, patients["adult_2"]["address"])  # not yet activated: still receives
    assert code == 250 and len(await gateway.inbox(patients["adult_2"]["address"])) == 1


async def test_nobody_replies_to_a_campaign(gateway) -> None:  # type: ignore[no-untyped-def]
    cnam = gateway.credentials["cnam"]["address"]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    campaign = message(cnam, patient, "Dépistage", "Pensez au dépistage.")
    sent = await gateway.pipeline.accept(
        Envelope(mail_from=cnam, rcpt_tos=[patient], data=campaign.as_bytes(policy=SMTP_POLICY), channel=Channel.API, authenticated=cnam)
    )
    assert sent.accepted == [patient]
    result = await patient_writes(gateway, "adult_1", cnam, reply_to=campaign)
    assert not result.accepted and "cannot be answered" in result.reply


async def test_a_body_is_stored_once_whatever_the_number_of_recipients(gateway) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from caducee.mailbox.models import Folder, MailboxEntry
    from caducee.mailbox.models import Message as StoredMessage

    patients = gateway.credentials["patients"]
    rcpts = [patients["adult_1"]["address"], patients["adult_2"]["address"], gateway.account("nurse")[0]]
    msg = message(gateway.account("doctor")[0], ", ".join(rcpts), "Information", "Le cabinet sera fermé lundi.")
    assert (await asyncio.to_thread(smtp_send, gateway, msg, rcpts))[0] == 250
    async with gateway.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(StoredMessage))).scalar_one() == 1
        entries = (
            await conn.execute(
                select(MailboxEntry.uid, MailboxEntry.modseq, Folder.name, Folder.uidnext).join(Folder, Folder.id == MailboxEntry.folder_id)
            )
        ).all()
    assert len(entries) == 3
    assert all(row.name == "INBOX" and row.uid == 1 and row.uidnext == 2 for row in entries)
    for address in rcpts:
        assert b"sera ferm" in (await gateway.inbox(address))[0]


def send_as(gateway, key: str, msg, rcpts: list[str]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Submit `msg` over SMTP as the professional `key` of the demo world (doctor, nurse, pharmacy)."""
    address, password = gateway.account(key)
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(gateway.ca.files.cert)))
        client.login(address, password)
        try:
            client.sendmail(address, rcpts, msg.as_bytes(policy=SMTP_POLICY))
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return code, text.decode()
        return 250, ""


async def test_a_reused_message_id_steers_no_reply(gateway) -> None:  # type: ignore[no-untyped-def]
    """Another professional reusing the doctor's Message-ID is refused, and the patient's reply
    still reaches the doctor's conversation (issue 18, point 5)."""
    doctor, nurse = gateway.account("doctor")[0], gateway.account("nurse")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    first, code, _ = await doctor_writes(gateway, patient)
    assert code == 250
    hijack = message(nurse, patient, "Autre sujet", "Je reprends cet identifiant.")
    del hijack["Message-ID"]
    hijack["Message-ID"] = first["Message-ID"]
    code, text = await asyncio.to_thread(send_as, gateway, "nurse", hijack, [patient])
    assert code == 550 and "5.7.1" in text and "Message-ID" in text
    result = await patient_writes(gateway, "adult_1", doctor, reply_to=first)
    assert result.accepted == [doctor], result.reply


async def test_a_professional_cannot_reopen_a_closed_conversation_with_its_ids(gateway) -> None:  # type: ignore[no-untyped-def]
    """The doctor closes; the nurse answers the patient with In-Reply-To naming the doctor's
    messages (which the nurse never received): it starts a conversation of its own, so the
    patient's reply to the doctor's message is still refused as closed, and a reply to the
    nurse goes to the nurse only."""
    doctor, nurse = gateway.account("doctor")[0], gateway.account("nurse")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    first, _, _ = await doctor_writes(gateway, patient, "Suivi")
    fin = message(doctor, patient, "[FIN] Suivi", "Fin du suivi.", headers={"In-Reply-To": first["Message-ID"]})
    assert (await asyncio.to_thread(smtp_send, gateway, fin, [patient]))[0] == 250
    reopen = message(
        nurse, patient, "Re: Suivi", "Je rouvre.", headers={"In-Reply-To": fin["Message-ID"], "References": first["Message-ID"]}
    )
    assert (await asyncio.to_thread(send_as, gateway, "nurse", reopen, [patient]))[0] == 250
    to_doctor = await patient_writes(gateway, "adult_1", doctor, reply_to=first)
    assert not to_doctor.accepted and "closed by" in to_doctor.reply
    to_nurse = await patient_writes(gateway, "adult_1", nurse, reply_to=reopen)
    assert to_nurse.accepted == [nurse], to_nurse.reply
    to_doctor_through_nurse = await patient_writes(gateway, "adult_1", doctor, reply_to=reopen)
    assert not to_doctor_through_nurse.accepted and "not part of" in to_doctor_through_nurse.reply


IDENTITY_CASES = [
    # id, headers (From is the doctor's address unless given), expected code
    ("display-name-carries-another-address", {"From": '"pharmacie.canal@demo.mssante.fr" <{doctor}>'}, 550),
    ("display-name-with-name-and-address", {"From": '"Pharmacie du Canal <pharmacie.canal@demo.mssante.fr>" <{doctor}>'}, 550),
    ("encoded-display-name-address", {"From": "=?utf-8?q?karim.haddad=40demo.mssante.fr?= <{doctor}>"}, 550),
    ("sender-another-professional", {"Sender": "karim.haddad@demo.mssante.fr"}, 550),
    ("resent-from-another-professional", {"Resent-From": "karim.haddad@demo.mssante.fr"}, 550),
    ("resent-sender-another", {"Resent-Sender": "pharmacie.canal@demo.mssante.fr"}, 550),
    ("zero-width-space-in-the-address", {"From": '"Pharmacie du Canal <pharmacie.canal\u200b@demo.mssante.fr>" <{doctor}>'}, 550),
    ("full-width-at", {"From": '"pharmacie.canal\uff20demo.mssante.fr" <{doctor}>'}, 550),
    ("spaces-around-at", {"From": '"pharmacie.canal @ demo.mssante.fr" <{doctor}>'}, 550),
    ("address-in-a-comment", {"From": '"Dr" <{doctor}> (pharmacie.canal@demo.mssante.fr)'}, 550),
    ("right-to-left-mark-in-the-address", {"From": '"karim.haddad\u200f@demo.mssante.fr" <{doctor}>'}, 550),
    ("display-name-is-own-address", {"From": '"{doctor}" <{doctor}>'}, 250),
    ("sender-is-self", {"Sender": "{doctor}"}, 250),
    ("plain-name", {"From": "Dr Sophie Bernard <{doctor}>"}, 250),
]


@pytest.mark.parametrize(("headers", "expected"), [case[1:] for case in IDENTITY_CASES], ids=[case[0] for case in IDENTITY_CASES])
async def test_identity_headers_belong_to_the_account(gateway, headers: dict[str, str], expected: int) -> None:  # type: ignore[no-untyped-def]
    """What mail clients show as the sender (From's display name, Sender, Resent-From) must be
    the authenticated account's (issue 18, point 8)."""
    doctor = gateway.account("doctor")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    msg = message(doctor, patient, "Résultats", "Bonjour.")
    for name, value in headers.items():
        del msg[name]
        msg[name] = value.format(doctor=doctor)
    code, text = await asyncio.to_thread(smtp_send, gateway, msg, [patient])
    assert code == expected, text
    if expected == 550:
        assert "5.7.1" in text and "not owned" in text


@pytest.mark.parametrize("domain", ["demo.mssante.fr", "patient.mssante.fr"])
async def test_postmaster_of_each_local_domain_reaches_the_operator(gateway, domain: str) -> None:  # type: ignore[no-untyped-def]
    """RFC 5321 4.5.1: postmaster@ every domain we serve is accepted and lands with the operator."""
    doctor = gateway.account("doctor")[0]
    for local_part in ("postmaster", "PostMaster"):
        msg = message(doctor, f"{local_part}@{domain}", "Question", "Bonjour postmaster.")
        assert (await asyncio.to_thread(smtp_send, gateway, msg, [f"{local_part}@{domain}"]))[0] == 250
    assert len(await gateway.inbox(f"postmaster@{gateway.settings.operator_domain}")) == 2


async def test_the_patient_answers_the_pharmacy_about_the_prescription(gateway) -> None:  # type: ignore[no-untyped-def]
    """In the patient's prescription conversation, once the pharmacy has written, the patient may
    answer it, until it closes (issue 18, point 10)."""
    pharmacy = gateway.account("pharmacy")[0]
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    pdf = ("ordonnance.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")
    sent = await patient_writes(gateway, "adult_1", pharmacy, subject="Mon ordonnance", attachment=pdf)
    assert sent.accepted == [pharmacy], sent.reply
    prescription = email.message_from_bytes((await gateway.inbox(pharmacy))[0])
    too_early = await patient_writes(gateway, "adult_1", pharmacy, reply_to=prescription, subject="Re: Mon ordonnance")
    assert not too_early.accepted  # the pharmacy has not written yet: no conversation to answer
    question = message(
        pharmacy, patient, "Re: Mon ordonnance", "Le générique vous convient-il ?", headers={"In-Reply-To": prescription["Message-ID"]}
    )
    assert (await asyncio.to_thread(send_as, gateway, "pharmacy", question, [patient]))[0] == 250
    answer = await patient_writes(gateway, "adult_1", pharmacy, reply_to=question, subject="Re: Mon ordonnance")
    assert answer.accepted == [pharmacy], answer.reply
    fin = message(pharmacy, patient, "[FIN] Mon ordonnance", "Votre commande est prête.", headers={"In-Reply-To": question["Message-ID"]})
    assert (await asyncio.to_thread(send_as, gateway, "pharmacy", fin, [patient]))[0] == 250
    after = await patient_writes(gateway, "adult_1", pharmacy, reply_to=fin, subject="Re: Mon ordonnance")
    assert not after.accepted and "closed" in after.reply


async def test_a_message_id_another_sender_used_is_refused_and_nothing_is_stored(gateway) -> None:  # type: ignore[no-untyped-def]
    """The group commit checks the Message-ID in its transaction: the second sender's message
    gets the rule's refusal, as an early check would give, and nothing of it is written; the
    first sender may reuse its own (a resend)."""
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    first, code, _ = await doctor_writes(gateway, patient, subject="Premier")
    assert code == 250
    nurse = gateway.credentials["professionals"]["nurse"]["address"]
    again = message(nurse, patient, "Second", "Même identifiant.")
    again.replace_header("Message-ID", first["Message-ID"])
    result = await gateway.pipeline.accept(
        Envelope(mail_from=nurse, rcpt_tos=[patient], data=again.as_bytes(policy=SMTP_POLICY), channel=Channel.WEBMAIL, authenticated=nurse)
    )
    assert result.accepted == [] and result.message_id is None
    assert result.refused[patient].rule == "message-id-in-use" and result.reply.startswith("550 5.7.1")
    inbox = await gateway.inbox(patient)
    assert len(inbox) == 1 and b"Premier" in inbox[0]
    resent = message(gateway.account("doctor")[0], patient, "Renvoi")
    resent.replace_header("Message-ID", first["Message-ID"])
    code, _ = await asyncio.to_thread(smtp_send, gateway, resent, [patient])
    assert code == 250
