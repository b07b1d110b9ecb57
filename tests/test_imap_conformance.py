"""What Dovecot's imaptest found, each class of defect with a case of our own (raw sockets,
imaplib), on both databases: folder identity across DELETE and CREATE, UIDVALIDITY, \\Recent,
FLAGS for new keywords, atoms, ENVELOPE groups and routes, address searches, subscriptions,
MODSEQ of no-ops, and closing TLS connections after LOGOUT."""

from __future__ import annotations

import asyncio
import imaplib
import re
import socket
import ssl

from test_imap_clients import connect, tls
from test_imap_hostile import Raw

from caducee.mime.summary import summarize


def run(client: Raw, tag: str, command: str | bytes) -> list[bytes]:
    """Every line of one command's answer, the tagged one last."""
    data = command.encode() if isinstance(command, str) else command
    client.send(tag.encode() + b" " + data + b"\r\n")
    lines = []
    while True:
        try:
            line = client.line()
        except ConnectionError:  # after a BYE
            return lines
        lines.append(line)
        if line.startswith(tag.encode() + b" "):
            return lines


def append(client: Raw, tag: str, folder: str, raw: bytes, flags: str = "") -> bytes:
    head = b"%s APPEND %s %s{%d+}\r\n" % (tag.encode(), folder.encode(), (b"(%s) " % flags.encode()) if flags else b"", len(raw))
    client.send(head + raw + b"\r\n")
    return client.until(tag.encode() + b" ")


def code(lines: list[bytes], name: bytes) -> int:
    found = next(line for line in lines if b"[" + name + b" " in line)
    return int(re.search(name + rb" (\d+)", found).group(1))  # type: ignore[union-attr]


NOTE = b"From: a@b.fr\r\nSubject: note\r\n\r\nbody\r\n"


async def test_a_folder_deleted_and_created_again_is_a_new_folder(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """No cache outlives the folder it was read from (SQLite gives the deleted id again), and
    UIDVALIDITY only grows across deletions (RFC 3501 2.3.1.1)."""

    def script() -> tuple[list[tuple[int, int, int]], list[bytes]]:
        a, watcher = Raw(gateway), Raw(gateway)
        cycles = []
        for n in range(6):
            assert run(a, "c", "CREATE Projet")[-1].startswith(b"c OK")
            for i in range(n % 3):
                assert append(a, f"p{i}", "Projet", NOTE).startswith(b"p%d OK" % i)
            selected = run(a, "s", "SELECT Projet")
            status = run(a, "t", "STATUS Projet (MESSAGES UIDVALIDITY)")
            exists = int(next(line for line in selected if line.endswith(b" EXISTS")).split()[1])
            assert b"(MESSAGES %d UIDVALIDITY %d)" % (exists, code(selected, b"UIDVALIDITY")) in status[0]
            cycles.append((n % 3, exists, code(selected, b"UIDVALIDITY")))
            if n == 4:  # another session has the folder open when it goes
                assert run(watcher, "w", "SELECT Projet")[-1].startswith(b"w OK")
            run(a, "u", "UNSELECT")
            assert run(a, "d", "DELETE Projet")[-1].startswith(b"d OK")
        return cycles, run(watcher, "n", "NOOP")

    cycles, after_delete = await asyncio.to_thread(script)
    assert [(stored, exists) for stored, exists, _ in cycles] == [(0, 0), (1, 1), (2, 2), (0, 0), (1, 1), (2, 2)]
    validities = [validity for _, _, validity in cycles]
    assert validities == sorted(validities) and len(set(validities)) == len(validities)
    assert after_delete and after_delete[0].startswith(b"* BYE")  # its folder is gone: told so, not shown another folder


async def test_recent_belongs_to_the_first_session_that_sees_a_message(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> dict[str, list[bytes]]:
        a, b, c = Raw(gateway), Raw(gateway), Raw(gateway)
        out: dict[str, list[bytes]] = {}
        append(a, "a1", "INBOX", NOTE)
        append(a, "a2", "INBOX", NOTE, "\\Seen")
        out["examine"] = run(a, "e", "EXAMINE INBOX")  # read-only: shown recent, not claimed
        out["status"] = run(b, "s", "STATUS INBOX (RECENT)")
        out["select"] = run(a, "x", "SELECT INBOX")
        out["flags"] = run(a, "f", "FETCH 1:2 (FLAGS)")
        out["search"] = run(a, "r", "SEARCH RECENT") + run(a, "n", "SEARCH NEW") + run(a, "o", "SEARCH OLD")
        out["other"] = run(b, "y", "SELECT INBOX")
        out["status_after"] = run(b, "z", "STATUS INBOX (RECENT)")
        append(c, "c3", "INBOX", NOTE)  # a new message: recent for the first session that learns of it
        out["a_noop"] = run(a, "p", "NOOP")
        out["b_noop"] = run(b, "q", "NOOP")
        out["b_flags"] = run(b, "g", "FETCH 3 (FLAGS)")
        return out

    out = await asyncio.to_thread(script)
    assert b"* 2 RECENT" in out["examine"]
    assert out["status"][0] == b"* STATUS INBOX (RECENT 2)"  # EXAMINE left them recent
    assert b"* 2 RECENT" in out["select"]
    assert out["flags"][:2] == [b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Seen \\Recent))"]
    assert [line for line in out["search"] if line.startswith(b"* SEARCH")] == [b"* SEARCH 1 2", b"* SEARCH 1", b"* SEARCH"]
    assert b"* 0 RECENT" in out["other"]
    assert out["status_after"][0] == b"* STATUS INBOX (RECENT 0)"
    assert b"* 3 EXISTS" in out["a_noop"] and b"* 3 RECENT" in out["a_noop"]
    assert b"* 3 EXISTS" in out["b_noop"] and not any(b"RECENT" in line for line in out["b_noop"])
    assert out["b_flags"][0] == b"* 3 FETCH (FLAGS ())"


async def test_a_new_keyword_is_announced_in_flags_before_it_is_used(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> tuple[list[bytes], list[bytes]]:
        a, b = Raw(gateway), Raw(gateway)
        append(a, "a1", "INBOX", NOTE)
        run(a, "s", "SELECT INBOX")
        run(b, "t", "SELECT INBOX")
        own = run(b, "u", "STORE 1 +FLAGS ($Urgent)")
        return own, run(a, "n", "NOOP")

    own, seen_elsewhere = await asyncio.to_thread(script)
    for lines in (own, seen_elsewhere):
        flags = next(i for i, line in enumerate(lines) if line.startswith(b"* FLAGS ("))
        fetch = next(i for i, line in enumerate(lines) if b"FETCH" in line)
        assert b"$Urgent" in lines[flags] and flags < fetch and b"$Urgent" in lines[fetch]
        assert any(line.startswith(b"* OK [PERMANENTFLAGS (") and b"$Urgent" in line for line in lines)


async def test_brackets_are_atom_characters_and_names_with_them_are_quoted(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
        a = Raw(gateway)
        return (
            run(a, "c", "CREATE Dossier[2026"),
            run(a, "l", 'LIST "" Dossier[*'),
            run(a, "s", "SELECT Dossier[2026"),
            run(a, "x", "SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}"),
        )

    created, listed, selected, unknown = await asyncio.to_thread(script)
    assert created[-1].startswith(b"c OK")
    assert listed[0] == b'* LIST (\\HasNoChildren) "/" "Dossier[2026"'
    assert selected[-1].startswith(b"s OK")
    assert unknown[-1].startswith(b"x NO [NONEXISTENT]")  # understood, and not there


GROUPS = (
    b"From: user@domain (Real Name)\r\n"
    b"To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n"
    b"Cc: group:;, group2: (foo) ;\r\n"
    b"Bcc: <@route1,@route2:user@domain>\r\n"
    b"Subject: groups\r\n\r\nbody\r\n"
)


async def test_envelope_keeps_groups_and_source_routes(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> list[bytes]:
        a = Raw(gateway)
        append(a, "a", "INBOX", GROUPS)
        run(a, "s", "SELECT INBOX")
        return run(a, "f", "FETCH 1 (ENVELOPE)")

    envelope = (await asyncio.to_thread(script))[0]
    assert envelope == summarize(GROUPS).imap_envelope.join([b"* 1 FETCH (ENVELOPE ", b")"])
    assert b'(("Real Name" NIL "user" "domain"))' in envelope
    assert (
        b'((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)'
        b'(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")(NIL NIL NIL NIL))' in envelope
    )
    assert b'((NIL NIL "group" NIL)(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL NIL NIL))' in envelope
    assert b'((NIL "@route1,@route2" "user" "domain"))' in envelope


async def test_address_searches_see_through_comments_and_groups(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    messages = [
        b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: x@y.fr\r\n\r\n1\r\n",
        b"From: user-from@domain.org (RealFrom)\r\nTo: team: member@domain.org;\r\n\r\n2\r\n",
        b"From: other@domain.org\r\nTo: x@y.fr\r\n\r\n3\r\n",
    ]

    def script() -> list[bytes]:
        a = Raw(gateway)
        for i, raw in enumerate(messages):
            append(a, f"a{i}", "INBOX", raw)
        run(a, "s", "SELECT INBOX")
        return [
            run(a, tag, f"SEARCH {key}")[0]
            for tag, key in (("f", "FROM user-from@domain.org"), ("r", "FROM realfrom"), ("g", "TO team"), ("m", "TO member@domain"))
        ]

    assert await asyncio.to_thread(script) == [b"* SEARCH 1 2", b"* SEARCH 2", b"* SEARCH 2", b"* SEARCH 2"]


async def test_subscriptions_are_names_kept_across_delete(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> dict[str, list[bytes]]:
        a, b = Raw(gateway), Raw(gateway)
        out: dict[str, list[bytes]] = {}
        run(a, "c1", "CREATE Patients/Dupont/2026")
        out["after_create"] = run(b, "l1", 'LSUB "" Patients*')
        run(a, "s1", "SUBSCRIBE Patients/Dupont/2026")
        out["percent"] = run(b, "l2", 'LSUB "" Patients/%')
        out["star"] = run(b, "l3", 'LSUB "" Patients/*')
        run(a, "d1", "DELETE Patients/Dupont/2026")
        out["after_delete"] = run(b, "l4", 'LSUB "" Patients/*')
        out["list_after_delete"] = run(b, "l5", 'LIST "" Patients/*')
        out["standard"] = run(b, "l6", 'LSUB "" *')
        run(a, "u1", "UNSUBSCRIBE Patients/Dupont/2026")
        out["after_unsubscribe"] = run(b, "l7", 'LSUB "" Patients/*')
        return out

    out = await asyncio.to_thread(script)
    assert out["after_create"] == [b"l1 OK LSUB completed"]  # CREATE does not subscribe (parents neither)
    assert out["percent"][:-1] == [b'* LSUB (\\Noselect) "/" Patients/Dupont']  # RFC 3501 6.3.9
    assert out["star"][:-1] == [b'* LSUB () "/" Patients/Dupont/2026']
    assert out["after_delete"][:-1] == [b'* LSUB () "/" Patients/Dupont/2026']  # RFC 3501 6.3.6: kept
    assert not any(b"2026" in line for line in out["list_after_delete"])
    assert b'* LSUB () "/" INBOX' in out["standard"] and b'* LSUB () "/" Sent' in out["standard"]
    assert out["after_unsubscribe"] == [b"l7 OK LSUB completed"]


async def test_no_op_close_expunge_and_store_leave_highestmodseq_alone(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    def script() -> list[int]:
        a = Raw(gateway)
        append(a, "a", "INBOX", NOTE, "\\Seen")
        seen = []
        for tag, command in (("e", "EXPUNGE"), ("c", "CLOSE"), ("t", "STORE 1 +FLAGS (\\Seen)"), ("u", "UID EXPUNGE 1")):
            selected = run(a, "s" + tag, "SELECT INBOX")
            seen.append(code(selected, b"HIGHESTMODSEQ"))
            assert run(a, tag, command)[-1].startswith(tag.encode() + b" OK")
            if command != "CLOSE":
                run(a, "x" + tag, "UNSELECT")
        status = run(a, "z", "STATUS INBOX (HIGHESTMODSEQ)")
        return [*seen, int(re.search(rb"HIGHESTMODSEQ (\d+)", status[0]).group(1))]  # type: ignore[union-attr]

    modseqs = await asyncio.to_thread(script)
    assert len(set(modseqs)) == 1, modseqs


async def test_a_tls_connection_is_closed_at_once_after_logout(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """The server sends its close_notify and closes TCP without waiting for the client's
    (imaptest never answers it; a server that waited held each connection 30 s)."""

    def script() -> tuple[bytes, bool]:
        context = tls(gateway)
        sock = socket.create_connection(("127.0.0.1", gateway.ports["imaps"]), timeout=10)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls_object = context.wrap_bio(incoming, outgoing, server_hostname="localhost")

        def pump() -> None:
            if outgoing.pending:
                sock.sendall(outgoing.read())

        def receive_until(marker: bytes) -> bytes:
            data = b""
            while marker not in data:
                try:
                    data += tls_object.read(65536)
                except ssl.SSLWantReadError:
                    pump()
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed early") from None
                    incoming.write(chunk)
            return data

        while True:
            try:
                tls_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
                incoming.write(sock.recv(65536))
        pump()
        receive_until(b"\r\n")  # the greeting
        tls_object.write(b"z LOGOUT\r\n")
        pump()
        answer = receive_until(b"z OK")
        try:  # read raw TCP until the server closes it; our own close_notify is never sent
            while sock.recv(65536):
                pass
            closed = True
        except TimeoutError:
            closed = False
        sock.close()
        return answer, closed

    answer, closed = await asyncio.to_thread(script)
    assert b"* BYE" in answer and closed


async def test_imaplib_sees_the_same_recent_and_uidvalidity(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """A client nobody here wrote reads the same answers (RECENT on SELECT, UIDVALIDITY growing)."""

    def session() -> tuple[list[bytes | None], list[int]]:
        with connect(gateway) as client:
            validities = []
            for _ in range(3):
                client.create("Tmp")
                client.append("Tmp", "", imaplib.Time2Internaldate(1795000000), NOTE)
                client.select("Tmp")
                validities.append(int(client.response("UIDVALIDITY")[1][0]))
                recent = client.response("RECENT")[1]
                client.close()
                client.delete("Tmp")
            return recent, validities

    recent, validities = await asyncio.to_thread(session)
    assert recent == [b"1"]
    assert validities == sorted(validities) and len(set(validities)) == 3


async def test_every_session_lists_the_same_keywords(gateway, imap) -> None:  # type: ignore[no-untyped-def]
    """FLAGS lists every keyword ever set in the folder, as Dovecot does: a keyword set and
    removed again before another session looked is still in its list (imaptest's checkpoints
    compare the lists of all sessions)."""

    def script() -> tuple[list[bytes], list[bytes]]:
        a, b, c = Raw(gateway), Raw(gateway), Raw(gateway)
        append(a, "a1", "INBOX", NOTE)
        run(b, "s", "SELECT INBOX")
        run(a, "t", "SELECT INBOX")
        run(a, "u", "STORE 1 +FLAGS.SILENT ($Temp)")
        run(a, "v", "STORE 1 -FLAGS.SILENT ($Temp)")
        return run(b, "n", "NOOP"), run(c, "x", "SELECT INBOX")

    before, after = await asyncio.to_thread(script)
    assert any(line.startswith(b"* FLAGS (") and b"$Temp" in line for line in before)
    assert any(line.startswith(b"* FLAGS (") and b"$Temp" in line for line in after)
