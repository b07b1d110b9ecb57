"""No message can poison a conversation (issue 18, points 1 and 2).

A professional sends, into one conversation with a patient, each hostile message of the
table below over real SMTP. Each one gets a permanent refusal (5.x.x: retrying cannot help,
so never 4.x.x) or "250"; then the patient opens the whole conversation through the pages
and the JSON API, reads every legitimate message, downloads the attachments, replies, and
the read receipts that were asked for are sent. The same on both databases.
"""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import ssl
from contextlib import aclosing

import pytest
from test_webmail import Webmail, conversation_id, webmail  # noqa: F401 (the fixture)


def _nested(levels: int) -> bytes:
    head = b"".join(b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (level, level) for level in range(levels))
    return head + b"Content-Type: text/plain\r\n\r\nau fond\r\n"


def _parts(count: int) -> bytes:
    return (
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n'
        + b"".join(b"--m\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(count))
        + b"--m--\r\n"
    )


def _attachment(filename: bytes, data: bytes, declared: bytes = b"application/pdf") -> bytes:
    return (
        b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nVoici.\r\n'
        b"--a\r\nContent-Type: " + declared + b"\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="' + filename + b'"\r\n\r\n' + base64.b64encode(data) + b"\r\n--a--\r\n"
    )


# name, extra header lines, the rest (MIME headers and body, or just a body), what it must get
POISON: list[tuple[str, bytes, bytes, str]] = [
    ("nested-25", b"", _nested(25), "554 5.6.0"),
    ("nested-15", b"", _nested(15), "250"),
    ("parts-2500", b"", _parts(2500), "554 5.6.0"),
    ("parts-1500", b"", _parts(1500), "250"),
    ("header-fields-700", b"X-Filler: y\r\n" * 700, b"\r\nbody\r\n", "554 5.6.0"),
    (
        "header-block-300k",
        b"X-Long: " + b"y" * 900 + b"\r\n" + b" " + (b"z" * 900 + b"\r\n ") * 340 + b"end\r\n",
        b"\r\nbody\r\n",
        "554 5.6.0",
    ),
    ("encoded-crlf-subject", b"Subject: =?utf-8?q?R=C3=A9sultats=0D=0ABcc:_victim@demo.mssante.fr?=\r\n", b"\r\nNormal.\r\n", "250"),
    ("encoded-nel-subject", b"Subject: =?utf-8?b?ZmluwoVYwp9Z?=\r\n", b"\r\nNormal.\r\n", "250"),  # U+0085 NEL, U+009F
    ("encoded-nul-subject", b"Subject: =?utf-8?b?" + base64.b64encode(b"nul\x00here\x07bell") + b"?=\r\n", b"\r\nx\r\n", "250"),
    ("raw-nul-message-id", b"", b"\r\nbody\r\n", "554 5.6.0"),  # Message-ID replaced below
    ("raw-nul-references", b"References: <a\x00b@x>\r\n", b"\r\nbody\r\n", "554 5.6.0"),
    ("raw-control-subject", b"Subject: bell\x07\x1b[2J\r\n", b"\r\nbody\r\n", "554 5.6.0"),
    ("malformed-encoded-word", b"Subject: =?utf-8?x?abc?= =?unknown-charset?q?abc?= =?utf-8?b?!!!?=\r\n", b"\r\nx\r\n", "250"),
    (
        "broken-base64-text",
        b"",
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64@@@\r\n",
        "250",
    ),
    (
        "broken-quoted-printable",
        b"",
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=C3\r\n",
        "250",
    ),
    ("unknown-charset", b"", b"Content-Type: text/plain; charset=x-nowhere\r\n\r\nbonjour\r\n", "250"),
    ("unknown-transfer-encoding", b"", b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-rot13\r\n\r\nobawbhe\r\n", "250"),
    ("garbage-date", b"Date: Mon, 99 Foo 99999 99:99:99 +9999\r\n", b"\r\nx\r\n", "250"),
    ("traversal-filename", b"", _attachment(b"../../../etc/passwd\\..\\boot.ini", b"%PDF-1.4\n%%EOF\n"), "250"),
    ("html-disguised-as-pdf", b"", _attachment(b"ordonnance.pdf", b"<html><script>alert(1)</script></html>"), "250"),
    ("empty-multipart", b"", b'Content-Type: multipart/mixed; boundary="e"\r\n\r\n--e--\r\n', "554 5.6.0"),
    ("multipart-without-boundary", b"", b"Content-Type: multipart/mixed\r\n\r\nx\r\n", "554 5.6.0"),
    ("header-line-without-colon", b"this is not a header\r\n", b"\r\nx\r\n", "554 5.6.0"),
    (
        "receipt-asked-with-encoded-crlf",
        b"Subject: =?utf-8?q?Lu=0D=0ABcc:_x@y?=\r\nDisposition-Notification-To: =?utf-8?q?Dr=0D=0A?= <sophie.bernard@demo.mssante.fr>\r\n",
        b"\r\nMerci de confirmer.\r\n",
        "250",
    ),
    ("fin-with-encoded-crlf", b"Subject: =?utf-8?q?[FIN]_Suivi=0D=0ABcc:_x@y?=\r\n", b"\r\nJe clos avec du contenu.\r\n", "250"),
]


def _raw(sender: str, rcpt: str, thread: str, name: str, extra: bytes, rest: bytes) -> bytes:
    message_id = b"<poison-%s@demo.mssante.fr>" % name.encode()
    if name == "raw-nul-message-id":
        message_id = b"<poison\x00nul@demo.mssante.fr>"
    head = b"From: Dr Sophie Bernard <%s>\r\nTo: %s\r\nDate: Tue, 01 Dec 2026 10:00:00 +0100\r\n" % (sender.encode(), rcpt.encode())
    head += b"Message-ID: " + message_id + b"\r\nIn-Reply-To: " + thread.encode() + b"\r\nMIME-Version: 1.0\r\n"
    if b"Subject:" not in extra:
        head += b"Subject: cas " + name.encode() + b"\r\n"
    if rest.startswith(b"\r\n"):
        return head + extra + rest
    return head + extra + rest if not extra else head + extra + rest


def _send_raw(running: Webmail, raw: bytes, rcpt: str) -> str:
    address, password = running.gateway.account("doctor")
    with smtplib.SMTP("127.0.0.1", running.gateway.ports["submission"], timeout=60) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(running.gateway.ca.files.cert)))
        client.login(address, password)
        try:
            client.sendmail(address, [rcpt], raw)
        except smtplib.SMTPDataError as exc:
            return f"{exc.smtp_code} {exc.smtp_error.decode()}"
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return f"{code} {text.decode()}"
        return "250"


async def test_no_message_poisons_a_conversation(webmail: Webmail) -> None:  # noqa: F811
    from test_gateway_rules import doctor_writes

    patient = webmail.patient("adult_1")["address"]
    doctor = webmail.gateway.account("doctor")[0]
    first, code, _ = await doctor_writes(webmail.gateway, patient, "Résultats", "Vos résultats sont normaux.")
    assert code == 250
    outcomes = {}
    for name, extra, rest, expected in POISON:
        raw = _raw(doctor, patient, first["Message-ID"], name, extra, rest)
        reply = await asyncio.to_thread(_send_raw, webmail, raw, patient)
        outcomes[name] = reply
        assert reply.startswith(expected), (name, reply)
        assert not reply.startswith("4"), (name, reply)  # a permanent condition is never a temporary error
    accepted = sum(1 for _, _, _, expected in POISON if expected == "250")

    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        inbox = await client.get("/")
        assert inbox.status_code == 200
        key = await conversation_id(client)
        page = await client.get(f"/conversations/{key}")
        assert page.status_code == 200, page.text[:500]
        assert "Vos résultats sont normaux." in page.text and "Je clos avec du contenu." in page.text
        assert "\x00" not in page.text and "\x07" not in page.text and "\x1b" not in page.text
        api = await client.get(f"/api/v1/conversations/{key}")
        assert api.status_code == 200
        messages = api.json()["messages"]
        assert len(messages) == 1 + accepted
        for item in messages:
            assert not re.search(r"[\x00-\x08\x0a-\x1f]", item["subject"]), item["subject"]
        for item in messages:
            for attachment in item.get("attachments", []):
                download = await client.get(attachment["url"])
                assert download.status_code == 200
                disposition = download.headers.get("content-disposition", "")
                assert ".." not in disposition and "/" not in disposition.split("filename")[-1] and "\\" not in disposition
                if "disguised" in item["subject"] or attachment["filename"].startswith("ordonnance"):
                    assert download.headers["content-type"] != "application/pdf"
        # The conversation was closed by the [FIN] with content: the patient sees why, nothing breaks.
        assert "a clos cette conversation" in page.text
    # The receipt asked for with an encoded CR/LF in the headers went out to the doctor, once.
    receipts = [raw for raw in await webmail.gateway.inbox(doctor) if b"disposition-notification" in raw.lower()]
    assert len(receipts) == 1
    head = receipts[0].split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc:") for line in head.split(b"\r\n")) and b"\x00" not in head


@pytest.mark.parametrize("name", ["nested-15", "encoded-crlf-subject", "encoded-nel-subject", "malformed-encoded-word", "garbage-date"])
async def test_a_reply_to_a_hostile_message_goes_out(webmail: Webmail, name: str) -> None:  # noqa: F811
    """Replies reuse the hostile message's decoded subject and references: they still go out."""
    patient = webmail.patient("adult_1")["address"]
    doctor = webmail.gateway.account("doctor")[0]
    case = next(case for case in POISON if case[0] == name)
    raw = _raw(doctor, patient, "<nothing@demo.mssante.fr>", name, case[1], case[2]).replace(
        b"In-Reply-To: <nothing@demo.mssante.fr>\r\n", b""
    )
    assert (await asyncio.to_thread(_send_raw, webmail, raw, patient)) == "250"
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        answer = await client.post(f"/conversations/{key}/reponse", data={"csrf": csrf, "texte": "Bien reçu, merci."})
        assert answer.status_code == 303, answer.text[:1000]
    replies = [raw for raw in await webmail.gateway.inbox(doctor) if b"Bien re" in raw or b"Bien%20re" in raw or b"merci" in raw]
    assert replies


def test_a_header_folded_over_millions_of_lines_is_read_in_one_pass() -> None:
    """A continuation line appended to the value built so far copies it: 400,000 one-space
    lines took 17 s, eight million would take hours. Read in one pass (this test would not
    finish otherwise), past the header limit only the first 256 KB are read, and the
    message is still a tree readers can use."""
    from caducee.mime import structure

    folded = b"From: a@demo.mssante.fr\r\nSubject: x\r\nX-Long: y\r\n" + b" y\r\n" * 2_000_000 + b"\r\nbody\r\n"
    root = structure.parse(folded)
    assert root.problems == [f"header block over {structure.MAX_HEADER_BYTES // 1024} KB"]
    assert root.headers.get("subject") == "x" and len(root.headers.get("x-long") or "") < structure.MAX_HEADER_BYTES
    within = b"Subject: x\r\nX-Long: y\r\n" + b" y\r\n" * 60_000 + b"\r\nbody\r\n"  # 240 KB: accepted, read whole
    parsed = structure.parse(within)
    assert parsed.problems == [] and len(parsed.headers.get("x-long") or "") == 120_001


async def test_an_outlook_length_message_id_threads_the_reply_and_a_nel_fin_closes(webmail: Webmail) -> None:  # noqa: F811
    """Identifiers are written verbatim whatever their length (the `email` package encoded
    lines over 78 characters as RFC 2047 words, so a reply to an Outlook Message-ID named
    nothing and was refused), and a [FIN] whose subject decodes to a NEL closes with its
    notice (it was a 451, retried for days)."""
    patient = webmail.patient("adult_1")["address"]
    doctor = webmail.gateway.account("doctor")[0]
    outlook = "<PAXPR08MB6912E1D0F3A7A4B41C3F1E5BA1C52ABCD@PAXPR08MB6912.eurprd08.prod.outlook.com>"
    raw = _raw(doctor, patient, "<nothing@demo.mssante.fr>", "outlook", b"Subject: Bilan\r\n", b"\r\nVoici le bilan.\r\n")
    raw = raw.replace(b"<poison-outlook@demo.mssante.fr>", outlook.encode()).replace(b"In-Reply-To: <nothing@demo.mssante.fr>\r\n", b"")
    assert (await asyncio.to_thread(_send_raw, webmail, raw, patient)) == "250"
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        answer = await client.post(f"/conversations/{key}/reponse", data={"csrf": csrf, "texte": "Bien reçu, merci."})
        assert answer.status_code == 303, answer.text[:1000]
    [reply] = [raw for raw in await webmail.gateway.inbox(doctor) if outlook.encode() in raw]
    assert b"In-Reply-To: " + outlook.encode() in reply
    fin = _raw(doctor, patient, outlook, "nel-fin", b"Subject: [FIN] =?utf-8?b?ZmluwoVY?=\r\n", b"\r\nFin du suivi.\r\n")
    assert (await asyncio.to_thread(_send_raw, webmail, fin, patient)) == "250"
