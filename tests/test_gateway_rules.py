"""The rules of patient messaging through the whole gateway: a doctor writes over SMTP,
patients answer through the pipeline as the webmail will, and we look at what each
mailbox holds afterwards."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.policy import SMTP as SMTP_POLICY

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
    assert not result.accepted and "not part of" in result.reply
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
