"""The IMAP server driven by clients nobody here wrote: imaplib and aioimaplib.

Blocking imaplib sessions run in threads (the server runs on the test's event loop).
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import ssl
from email.message import EmailMessage

import aioimaplib
from mail import message
from test_gateway_submission import send_smtplib


def tls(gateway) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return ssl.create_default_context(cafile=str(gateway.ca.files.cert))


def connect(gateway, who: str = "doctor") -> imaplib.IMAP4:  # type: ignore[no-untyped-def]
    client = imaplib.IMAP4("127.0.0.1", gateway.ports["imap"], timeout=30)
    client.starttls(ssl_context=tls(gateway))
    client.login(*gateway.account(who))
    return client


def note(subject: str, body: str = "Bonjour,\nvoici le compte rendu.\n", sender: str = "dr.martin@demo.mssante.fr") -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, "moi@demo.mssante.fr", subject
    mail["Date"] = "Mon, 23 Nov 2026 10:00:00 +0100"
    mail["Message-ID"] = f"<{abs(hash(subject))}@demo.mssante.fr>"
    mail.set_content(body)
    return mail.as_bytes().replace(b"\n", b"\r\n")


def fill(client: imaplib.IMAP4, folder: str, subjects: list[str]) -> list[int]:
    uids = []
    for subject in subjects:
        typ, data = client.append(folder, "", imaplib.Time2Internaldate(1795000000), note(subject))
        assert typ == "OK", data
        uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))  # type: ignore[union-attr]
    return uids


async def test_a_message_sent_over_smtp_is_read_over_imap(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    nurse, doctor = gateway.account("nurse"), gateway.account("doctor")
    await asyncio.to_thread(send_smtplib, gateway, nurse, message(nurse[0], doctor[0]))
    stored = (await gateway.inbox(doctor[0]))[0]

    def read() -> tuple:
        with connect(gateway) as client:
            assert client.select("INBOX") == ("OK", [b"1"])
            listing = client.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)")[1]
            peeked = client.fetch("1", "(BODY.PEEK[])")[1]
            flags_after_peek = client.fetch("1", "(FLAGS)")[1]
            body = client.fetch("1", "(BODY[])")[1]
            flags_after_read = client.fetch("1", "(FLAGS)")[1]
            return listing, peeked, flags_after_peek, body, flags_after_read

    listing, peeked, after_peek, body, after_read = await asyncio.to_thread(read)
    # New to this session: recent here.
    assert b"UID 1 FLAGS (\\Recent) INTERNALDATE" in listing[0] and b"RFC822.SIZE %d" % len(stored) in listing[0]
    assert b'"karim.haddad" "demo.mssante.fr"' in listing[0] and b'BODYSTRUCTURE ("TEXT" "PLAIN"' in listing[0]
    assert peeked[0][1] == stored and body[0][1] == stored  # the exact stored bytes
    assert after_peek == [b"1 (FLAGS (\\Recent))"]
    assert after_read == [b"1 (FLAGS (\\Seen \\Recent))"]


async def test_append_to_sent_and_everything_persists(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def first_session() -> tuple[list[int], bytes]:
        with connect(gateway) as client:
            raw = note("Ordonnance envoyée")
            typ, data = client.append("Sent", "(\\Seen $Label1)", imaplib.Time2Internaldate(1795000000), raw)
            assert typ == "OK" and b"APPENDUID" in data[0]
            uids = [int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))]  # type: ignore[union-attr]
            uids += fill(client, "Sent", ["deux", "trois"])
            client.select("Sent")
            assert client.uid("STORE", f"{uids[1]}", "+FLAGS", "(\\Flagged)")[0] == "OK"
            assert client.uid("STORE", f"{uids[2]}", "+FLAGS.SILENT", "(\\Deleted)") == ("OK", [None])
            assert client.expunge()[1] == [b"3"]
            return uids, raw

    uids, raw = await asyncio.to_thread(first_session)

    def second_session() -> tuple:
        with connect(gateway) as client:
            assert client.select("Sent") == ("OK", [b"2"])
            flags = client.uid("FETCH", "1:*", "(FLAGS INTERNALDATE)")[1]
            body = client.uid("FETCH", str(uids[0]), "(BODY.PEEK[])")[1]
            client.append("Drafts", "", '"23-Nov-2026 10:00:00 +0100"', note("brouillon"))
            client.select("Drafts")
            flags.append(client.fetch("1", "(INTERNALDATE)")[1][0])
            return flags, body

    flags, body = await asyncio.to_thread(second_session)
    assert b"FLAGS ($Label1 \\Seen)" in flags[0] and b'INTERNALDATE "' in flags[0]
    assert b"FLAGS (\\Flagged)" in flags[1]
    assert flags[2] == b'1 (INTERNALDATE "23-Nov-2026 09:00:00 +0000")'  # the same instant, whatever the backend keeps
    assert body[0][1] == raw


async def test_search_fetch_sections_copy_and_move(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def session() -> dict[str, object]:
        out: dict[str, object] = {}
        with connect(gateway) as client:
            client.create("Patients/Dupont")
            fill(client, "INBOX", ["Résultats de biologie", "Compte rendu opératoire", "Rendez-vous"])
            client.select("INBOX")
            client.store("2", "+FLAGS", "(\\Flagged)")
            out["flagged"] = client.search(None, "FLAGGED")[1]
            out["unflagged_subject"] = client.search(None, "UNFLAGGED", "SUBJECT", '"rendez"')[1]
            out["or"] = client.uid("SEARCH", "OR", "SUBJECT", "biologie", "FLAGGED")[1]
            out["body"] = client.search(None, "BODY", '"compte rendu"')[1]
            out["not_uid"] = client.search(None, "NOT", "UID", "1:2")[1]
            out["larger"] = client.search(None, "LARGER", "100000")[1]
            out["fields"] = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")[1]
            out["partial"] = client.fetch("1", "(BODY.PEEK[]<0.10>)")[1]
            out["text"] = client.fetch("1", "(BODY.PEEK[1])")[1]
            out["copy"] = client.copy("1:2", "Patients/Dupont")
            out["move"] = client.uid("MOVE", "3", "Archive")
            out["left"] = client.uid("SEARCH", "ALL")[1]
            client.select("Patients/Dupont")
            out["copied"] = client.fetch("1:*", "(FLAGS)")[1]
            out["list"] = client.list()[1]
            out["status"] = client.status("Archive", "(MESSAGES UIDNEXT UNSEEN)")[1]
        return out

    out = await asyncio.to_thread(session)
    assert out["flagged"] == [b"2"]
    assert out["unflagged_subject"] == [b"3"]
    assert out["or"] == [b"1 2"]
    assert out["body"] == [b"1 2 3"]  # every note's body says "compte rendu"
    assert out["not_uid"] == [b"3"]
    assert out["larger"] == [b""]
    assert (
        out["fields"][0][1] == b"Subject: =?utf-8?q?R=C3=A9sultats_de_biologie?=\r\nFrom: dr.martin@demo.mssante.fr\r\n\r\n"
        or out["fields"][0][1].startswith(b"Subject:")
        or out["fields"][0][1].startswith(b"From:")
    )
    assert out["partial"][0][0].endswith(b"BODY[]<0> {10}") and len(out["partial"][0][1]) == 10
    assert out["text"][0][1] == b"Bonjour,\r\nvoici le compte rendu.\r\n"
    assert out["copy"][0] == "OK" and b"COPYUID" in out["copy"][1][0]
    assert out["move"][0] == "OK"
    assert out["left"] == [b"1 2"]
    assert out["copied"] == [b"1 (FLAGS (\\Recent))", b"2 (FLAGS (\\Flagged \\Recent))"]
    names = b"\n".join(out["list"])  # type: ignore[arg-type]
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in names and b'(\\HasChildren) "/" Patients' in names
    assert b'"/" Patients/Dupont' in names
    assert out["status"] == [b"Archive (MESSAGES 1 UIDNEXT 2 UNSEEN 1)"]


async def test_folders_create_rename_delete_and_subscriptions(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def session() -> dict[str, object]:
        with connect(gateway) as client:
            out = {
                "create": client.create("Dossiers"),
                "again": client.create("Dossiers"),
                "rename": client.rename("Dossiers", "Classement"),
                "unsubscribe": client.unsubscribe("Classement"),
                "lsub": client.lsub()[1],
                "delete_inbox": client.delete("INBOX"),
                "delete": client.delete("Classement"),
                "select_gone": client.select("Classement"),
            }
        return out

    out = await asyncio.to_thread(session)
    assert out["create"][0] == "OK" and out["again"][0] == "NO" and b"ALREADYEXISTS" in out["again"][1][0]
    assert out["rename"][0] == "OK"
    assert not any(b"Classement" in line for line in out["lsub"])  # type: ignore[union-attr]
    assert out["delete_inbox"][0] == "NO"
    assert out["delete"][0] == "OK"
    assert out["select_gone"][0] == "NO" and b"NONEXISTENT" in out["select_gone"][1][0]


async def test_condstore(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def session() -> dict[str, object]:
        with connect(gateway) as client:
            fill(client, "INBOX", ["a", "b"])
            assert client.enable("CONDSTORE")[0] == "OK"
            client.select("INBOX")
            highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(client.untagged_responses["OK"])).group(1))  # type: ignore[union-attr]
            client.store("1", "+FLAGS", "(\\Seen)")
            changed = client.fetch("1:*", f"(FLAGS) (CHANGEDSINCE {highest})")[1]
            conditional = client._simple_command("STORE", "1:2", f"(UNCHANGEDSINCE {highest})", "+FLAGS", "(\\Answered)")  # type: ignore[attr-defined]
            return {"highest": highest, "changed": changed, "conditional": conditional}

    out = await asyncio.to_thread(session)
    assert len(out["changed"]) == 1 and b"MODSEQ (" in out["changed"][0]  # only message 1 changed
    assert out["conditional"][0] == "OK" and b"MODIFIED 1" in out["conditional"][1][0]


async def test_authenticate_plain_and_refusals(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    doctor = gateway.account("doctor")

    def session() -> dict[str, object]:
        out: dict[str, object] = {}
        with imaplib.IMAP4("127.0.0.1", gateway.ports["imap"], timeout=30) as plain:
            out["before_tls"] = plain.capabilities
            try:
                plain.login(*doctor)
            except imaplib.IMAP4.error as error:
                out["plain_login"] = str(error)
        with imaplib.IMAP4("127.0.0.1", gateway.ports["imap"], timeout=30) as client:
            client.starttls(ssl_context=tls(gateway))
            out["after_tls"] = client.capabilities
            try:
                client.login(doctor[0], "wrong")
            except imaplib.IMAP4.error as error:
                out["wrong"] = str(error)
            out["plain"] = client.authenticate("PLAIN", lambda _: f"\0{doctor[0]}\0{doctor[1]}".encode())
            out["selected_before"] = client.state
        return out

    out = await asyncio.to_thread(session)
    assert "LOGINDISABLED" in out["before_tls"] and "STARTTLS" in out["before_tls"]  # type: ignore[operator]
    assert "PRIVACYREQUIRED" in out["plain_login"]  # type: ignore[operator]
    assert "AUTH=PLAIN" in out["after_tls"] and "STARTTLS" not in out["after_tls"]  # type: ignore[operator]
    assert "AUTHENTICATIONFAILED" in out["wrong"]  # type: ignore[operator]
    assert out["plain"][0] == "OK"  # type: ignore[index]


async def test_lock_out_is_shared_with_smtp(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    import smtplib

    doctor = gateway.account("doctor")

    def fail_over_smtp() -> None:
        for _ in range(5):
            with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
                client.starttls(context=tls(gateway))
                try:
                    client.login(doctor[0], "wrong")
                except smtplib.SMTPAuthenticationError:
                    pass

    def imap_login() -> str:
        with imaplib.IMAP4("127.0.0.1", gateway.ports["imap"], timeout=30) as client:
            client.starttls(ssl_context=tls(gateway))
            try:
                client.login(*doctor)
            except imaplib.IMAP4.error as error:
                return str(error)
            return "logged in"

    await asyncio.to_thread(fail_over_smtp)
    assert "UNAVAILABLE" in await asyncio.to_thread(imap_login)  # even with the right password


async def test_other_sessions_learn_of_changes_in_idle(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """aioimaplib idles on INBOX over implicit TLS while imaplib appends, flags and expunges."""
    doctor = gateway.account("doctor")
    watcher = aioimaplib.IMAP4_SSL("127.0.0.1", gateway.ports["imaps"], ssl_context=tls(gateway), timeout=30)
    await watcher.wait_hello_from_server()
    assert (await watcher.login(*doctor)).result == "OK"
    assert (await watcher.select("INBOX")).result == "OK"

    async def pushed(until: bytes) -> list[bytes]:
        seen: list[bytes] = []
        while not any(until in line for line in seen):
            for line in await asyncio.wait_for(watcher.wait_server_push(), 10):
                seen.append(line if isinstance(line, bytes) else str(line).encode())
        return seen

    idle = await watcher.idle_start(timeout=60)
    appended = await asyncio.to_thread(lambda: fill(connect(gateway), "INBOX", ["nouveau"]))
    assert any(b"1 EXISTS" in line for line in await pushed(b"EXISTS"))

    def flag_and_expunge() -> None:
        with connect(gateway) as client:
            client.select("INBOX")
            client.uid("STORE", str(appended[0]), "+FLAGS", "(\\Deleted)")

    await asyncio.to_thread(flag_and_expunge)
    assert any(b"FETCH" in line and b"\\Deleted" in line for line in await pushed(b"FETCH"))

    def expunge() -> None:
        with connect(gateway) as client:
            client.select("INBOX")
            client.expunge()

    await asyncio.to_thread(expunge)
    assert any(b"1 EXPUNGE" in line for line in await pushed(b"EXPUNGE"))

    # A message the gateway delivers (another writer: found by the poll of HIGHESTMODSEQ)
    nurse = gateway.account("nurse")
    await asyncio.to_thread(send_smtplib, gateway, nurse, message(nurse[0], doctor[0]))
    assert any(b"EXISTS" in line for line in await pushed(b"EXISTS"))
    watcher.idle_done()
    assert (await asyncio.wait_for(idle, 10)).result == "OK"
    await watcher.logout()


async def test_a_large_body_is_streamed_whole(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    big = note("Imagerie", body="ligne de compte rendu d'imagerie\n" * 200_000)  # about 6.6 MB

    def session() -> bytes:
        with connect(gateway) as client:
            fill_raw = client.append("INBOX", "", imaplib.Time2Internaldate(1795000000), big)
            assert fill_raw[0] == "OK"
            client.select("INBOX")
            return client.fetch("1", "(BODY.PEEK[])")[1][0][1]

    assert await asyncio.to_thread(session) == big


async def test_rfc3501_fetch_examples(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """RFC 3501 6.4.5's FETCH forms on a multipart message with an attached message."""
    raw = (
        b"From: Fred Foobar <foobar@Blurdybloop.example>\r\nSubject: afternoon meeting\r\nTo: mooch@owatagu.example\r\n"
        b"Message-Id: <B27397-0100000@Blurdybloop.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="xyz"\r\n\r\n--xyz\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n'
        b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n--xyz\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\n\r\ninner text\r\n--xyz--\r\n"
    )

    def session() -> list:
        with connect(gateway) as client:
            client.append("INBOX", "", imaplib.Time2Internaldate(1795000000), raw)
            client.select("INBOX")
            return [
                client.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")[1],
                client.fetch("1", "(BODY[1])")[1],
                client.fetch("1", "(BODY[2.HEADER])")[1],
                client.fetch("1", "(BODY[2.1])")[1],
                client.fetch("1", "(BODY[1.MIME])")[1],
                client.fetch("1", "(BODY)")[1],
                client.fetch("1", "FAST")[1],
                client.fetch("1", "(BODY[9])")[1],
            ]

    subject, first, inner_header, inner_text, mime, body, fast, missing = await asyncio.to_thread(session)
    assert subject[0][1] == b"Subject: afternoon meeting\r\n\r\n"
    assert first[0][1] == b"Hello Joe, do you think we can meet at 3:30 tomorrow?"
    assert inner_header[0][1] == b"Subject: inner\r\n\r\n"
    assert inner_text[0][1] == b"inner text"
    assert mime[0][1] == b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    assert body[0].startswith(b'1 (BODY (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 53 1) ("MESSAGE" "RFC822"')
    assert b"\\Seen" in fast[0] and b"RFC822.SIZE %d" % len(raw) in fast[0]
    assert missing == [b"1 (BODY[9] NIL)"]


async def test_openssl_s_client_starttls(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """`openssl s_client -starttls imap`, as the README shows it."""
    address, password = gateway.account("doctor")
    process = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-quiet",
        "-crlf",
        "-starttls",
        "imap",
        "-connect",
        f"127.0.0.1:{gateway.ports['imap']}",
        "-CAfile",
        str(gateway.ca.files.cert),
        "-verify_return_error",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    script = f'a LOGIN "{address}" "{password}"\nb SELECT INBOX\nc LOGOUT\n'.encode()
    output, _ = await asyncio.wait_for(process.communicate(script), 60)
    assert b"a OK [CAPABILITY" in output and b"b OK [READ-WRITE]" in output and b"c OK LOGOUT" in output
