"""The operator's trace of actions per mailbox (issue 19.6): every message sent or refused
and every deletion says who, when, from where and with which answer, written with the
action itself; `caducee traces show` reads it; traces past retention are purged.

Driven by smtplib and imaplib against our listeners, and by the webmail over HTTP."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from mail import message
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_gateway_rules import doctor_writes
from test_imap_clients import connect, fill, tls
from test_webmail import Webmail, conversation_id, webmail  # noqa: F401 - the fixture

from caducee.traces.service import Trace, Traces, purge


def mail(sender: str, to: str, subject: str, message_id: str | None = None) -> bytes:
    msg = message(sender, to, subject)
    if message_id:
        msg.replace_header("Message-ID", message_id)
    return msg.as_bytes().replace(b"\n", b"\r\n")


async def traces_of(engine: AsyncEngine, address: str) -> list[Trace]:
    return await Traces(engine).read(address)


def submit(gateway, login: tuple[str, str], rcpts: list[str], raw: bytes) -> tuple[dict, str]:  # type: ignore[no-untyped-def, type-arg]
    """One SMTP session: (refused recipients, the reply to DATA or the refusal text)."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
        client.starttls(context=tls(gateway))
        client.login(*login)
        try:
            return client.sendmail(login[0], rcpts, raw), ""
        except smtplib.SMTPDataError as refused:
            return {}, f"{refused.smtp_code} {refused.smtp_error.decode()}"
        except smtplib.SMTPRecipientsRefused as refused:
            return {rcpt: answer for rcpt, answer in refused.recipients.items()}, ""


async def test_sends_and_refusals_are_traced_with_their_answer(gateway, engine: AsyncEngine) -> None:  # type: ignore[no-untyped-def]
    doctor, nurse = gateway.account("doctor"), gateway.account("nurse")
    raw = mail(doctor[0], nurse[0], "Compte rendu", "<trace-1@demo.mssante.fr>")
    unknown = "personne.inconnue@demo.mssante.fr"
    refused, answer = await asyncio.to_thread(submit, gateway, doctor, [nurse[0], unknown], raw)
    assert list(refused) == [unknown], answer
    forged = mail("quelquun.dautre@demo.mssante.fr", nurse[0], "Usurpation")
    _, answer = await asyncio.to_thread(submit, gateway, doctor, [nurse[0]], forged)
    assert answer.startswith("5")

    traces = await traces_of(engine, doctor[0])
    assert [(t.action, t.channel) for t in traces] == [("refuse", "submission"), ("send", "submission"), ("refuse", "submission")]
    rcpt_refused, sent, data_refused = traces
    assert rcpt_refused.detail == f"to {unknown}" and rcpt_refused.answer.startswith("550")
    assert sent.message_id == "<trace-1@demo.mssante.fr>" and sent.answer.startswith("250 2.0.0 OK: queued as ")
    assert sent.detail == f"to {nurse[0]}" and sent.actor == doctor[0] and sent.client == "127.0.0.1"
    assert data_refused.answer.startswith(answer[:9]) and "no-spoofing" not in data_refused.answer
    # Nothing else: the nurse received, she did not act.
    assert await traces_of(engine, nurse[0]) == []


async def test_deletions_over_imap_are_traced_in_their_transaction(gateway, imap, engine: AsyncEngine) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")[0]

    def session() -> None:
        with connect(gateway) as client:
            client.create("Ancien")
            fill(client, "INBOX", ["un", "deux", "trois"])
            fill(client, "Ancien", ["vieux"])
            client.select("INBOX")
            client.store("1:2", "+FLAGS", "\\Deleted")
            assert client.expunge()[0] == "OK"
            assert client.uid("MOVE", "3", "Archive")[0] == "OK"
            client.select("Archive")
            client.store("1", "+FLAGS", "\\Deleted")
            assert client.close()[0] == "OK"  # expunges silently
            assert client.delete("Ancien")[0] == "OK"
            client.select("INBOX")
            assert client.expunge()[0] == "OK"  # nothing to expunge: nothing traced

    await asyncio.to_thread(session)
    traces = [(t.channel, t.action, t.items, t.detail, t.actor) for t in await traces_of(engine, doctor)]
    assert traces == [
        ("imap", "expunge", 2, "EXPUNGE in INBOX", doctor),
        ("imap", "move", 1, "from INBOX to Archive", doctor),
        ("imap", "expunge", 1, "CLOSE of Archive", doctor),
        ("imap", "delete-folder", 1, "folder Ancien", doctor),
    ]


async def test_the_webmail_traces_who_moved_a_conversation_to_trash(webmail: Webmail, engine: AsyncEngine) -> None:  # noqa: F811
    claire = webmail.patient("adult_1")
    await doctor_writes(webmail.gateway, claire["address"], "Rendez-vous")
    client, csrf = await webmail.logged_in("adult_1")
    try:
        key = await conversation_id(client)
        assert (await client.post(f"/conversations/{key}/supprimer", data={"csrf": csrf})).status_code == 303
    finally:
        await client.aclose()
    (moved,) = [t for t in await traces_of(engine, claire["address"]) if t.action == "move"]
    assert moved.channel == "webmail" and moved.actor == claire["address"].lower()
    assert moved.detail == f"conversation {key} from INBOX to Trash" and moved.items == 1


async def test_traces_past_retention_are_purged_and_the_command_reads_the_rest(gateway, engine: AsyncEngine, settings) -> None:  # type: ignore[no-untyped-def]
    doctor, nurse = gateway.account("doctor"), gateway.account("nurse")
    for n in range(3):
        raw = mail(doctor[0], nurse[0], f"Note {n}", f"<keep-{n}@demo.mssante.fr>")
        await asyncio.to_thread(submit, gateway, doctor, [nurse[0]], raw)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE mailbox_traces SET at = :old WHERE message_id = '<keep-0@demo.mssante.fr>'"),
            {"old": datetime.now(UTC) - timedelta(days=200)},
        )
    assert await purge(engine, timedelta(days=183)) == 1
    shown = subprocess.run(
        [sys.executable, "-m", "caducee", "traces", "show", doctor[0].upper(), "--data-dir", str(settings.data_dir)],
        env={"CADUCEE_DATABASE_URL": settings.database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 and all("\tsubmission\tsend\t1\t" in line for line in lines)
    assert "<keep-1@demo.mssante.fr>" in lines[0] and "<keep-2@demo.mssante.fr>" in lines[1]
    assert "2 trace(s)" in shown.stderr
