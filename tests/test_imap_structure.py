"""The MIME structure FETCH answers from: well-formed mail, and mail that is not."""

from __future__ import annotations

import pytest

from caducee.mime import structure
from caducee.mime.summary import Summary, summarize

MULTIPART = (
    b'From: =?utf-8?q?Dr_J=C3=A9r=C3=B4me?= <jerome@demo.mssante.fr>\r\nTo: a@b.fr, "X Y" <x@y.fr>\r\n'
    b"Subject: Hello\r\nDate: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <1@x>\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n--b1\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n--b1\r\nContent-Type: application/pdf;\r\n"
    b" name*0*=utf-8''ordonnance%20du; name*1=\" 23.pdf\"\r\nContent-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=a.pdf\r\n\r\nQUJD\r\n--b1--\r\nepilogue\r\n"
)


def test_envelope_and_bodystructure() -> None:
    summary = summarize(MULTIPART)
    assert summary.imap_envelope == (
        b'("Mon, 23 Nov 2026 10:00:00 +0100" "Hello" (("=?utf-8?q?Dr_J=C3=A9r=C3=B4me?=" NIL "jerome" '
        b'"demo.mssante.fr")) (("=?utf-8?q?Dr_J=C3=A9r=C3=B4me?=" NIL "jerome" "demo.mssante.fr")) '
        b'(("=?utf-8?q?Dr_J=C3=A9r=C3=B4me?=" NIL "jerome" "demo.mssante.fr")) ((NIL NIL "a" "b.fr")'
        b'("X Y" NIL "x" "y.fr")) NIL NIL NIL "<1@x>")'
    )
    assert summary.imap_bodystructure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 12 2 NIL NIL NIL NIL) '
        b'("APPLICATION" "PDF" ("NAME" "ordonnance du 23.pdf") NIL NIL "BASE64" 4 NIL '
        b'("ATTACHMENT" ("FILENAME" "a.pdf")) NIL NIL) "MIXED" ("BOUNDARY" "b1") NIL NIL NIL)'
    )
    assert summary.header_text("from") == "dr jérôme <jerome@demo.mssante.fr>".encode()
    assert summary.sent_date == "2026-11-23"
    assert Summary.unpack(summary.pack()) == summary


def test_the_neutral_summary_needs_no_imap_syntax() -> None:
    """What the webmail reads: decoded subject and sender, the attachments, from plain values."""
    view = summarize(MULTIPART).view()
    assert (view.subject, view.from_name, view.from_address) == ("Hello", "Dr Jérôme", "jerome@demo.mssante.fr")
    assert [(a.filename, a.content_type, a.size) for a in view.attachments] == [("a.pdf", "application/pdf", 4)]
    assert [address.address for address in view.envelope.to or ()] == ["a@b.fr", "x@y.fr"]
    assert view.structure.children[0].params == (("CHARSET", "utf-8"),)


def test_a_summary_stored_before_the_neutral_form_still_reads() -> None:
    """Summaries written by earlier versions (five fields, IMAP forms only) keep working."""
    import struct

    new = summarize(MULTIPART)
    fields = [new.imap_envelope, new.imap_body, new.imap_bodystructure, new.packed_headers, new.sent_date.encode()]
    old = struct.pack("!5I", *map(len, fields)) + b"".join(fields)
    legacy = Summary.unpack(old)
    assert legacy.imap_envelope == new.imap_envelope and legacy.neutral == b""
    view = legacy.view()
    assert (view.subject, view.from_name, view.from_address) == ("Hello", "Dr Jérôme", "jerome@demo.mssante.fr")
    assert [(a.filename, a.content_type) for a in view.attachments] == [("a.pdf", "application/pdf")]


@pytest.mark.parametrize(
    ("path", "kind", "expected"),
    [
        ((1,), "", b"hello\r\nworld"),
        ((2,), "", b"QUJD"),
        (
            (2,),
            "MIME",
            b"Content-Type: application/pdf;\r\n name*0*=utf-8''ordonnance%20du; name*1=\" 23.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\n",
        ),
        ((), "HEADER.FIELDS", b"Subject: Hello\r\n\r\n"),
        ((3,), "", None),
        ((1, 1), "", None),
    ],
)
def test_sections(path: tuple[int, ...], kind: str, expected: bytes | None) -> None:
    root = structure.parse(MULTIPART)
    assert structure.section(root, path, kind, ("SUBJECT",)) == expected


def test_binary_decodes_the_transfer_encoding() -> None:
    root = structure.parse(MULTIPART)
    part = structure.find_part(root, (2,))
    assert part is not None and structure.decoded(part, part.body_bytes) == b"ABC"


def nested(depth: int) -> bytes:
    out = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for level in range(depth):
        boundary = b"L%d" % level
        out = (
            b"Content-Type: multipart/mixed; boundary="
            + boundary
            + b"\r\n\r\n--"
            + boundary
            + b"\r\n"
            + out
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    return b"Subject: deep\r\n" + out


HOSTILE = [
    ("no header/body separator", b"Subject: x\r\nFrom: a@b.fr"),
    ("empty message", b""),
    ("multipart without boundary", b"Content-Type: multipart/mixed\r\n\r\nbody\r\n"),
    ("boundary never closed", b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\npart one"),
    ("boundary never used", b"Content-Type: multipart/mixed; boundary=z\r\n\r\nno parts at all\r\n"),
    ("8-bit header bytes", b"Subject: \xe9t\xe9 \xff\r\nFrom: \xc3\xa9 <a@b.fr>\r\n\r\nx"),
    ("broken content type", b"Content-Type: ;;;===\r\n\r\nx"),
    ("broken RFC 2231", b"Content-Type: text/plain; name*0*=zz''%ZZ; name*1=x\r\n\r\nx"),
    ("message/rfc822 in base64", b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogeA==\r\n"),
    ("very deep nesting", nested(200)),
    ("very many parts", b"Content-Type: multipart/mixed; boundary=q\r\n\r\n" + b"--q\r\n\r\nx\r\n" * 50_000 + b"--q--\r\n"),
]


@pytest.mark.parametrize(("what", "raw"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_mime_still_has_a_structure(what: str, raw: bytes) -> None:
    """Every message gets an ENVELOPE and a BODYSTRUCTURE, within the depth and part limits."""
    summary = summarize(raw)
    assert summary.imap_envelope.startswith(b"(") and summary.imap_bodystructure.startswith(b"(")
    assert summary.imap_bodystructure.count(b"(") < 10 * structure.MAX_PARTS
    root = structure.parse(raw)
    assert structure.section(root, (), "", ()) == raw


def test_a_wrapped_message_reuses_the_tree_already_parsed() -> None:
    """The signed form carries the message verbatim: its summary is the fresh parse's, and the
    wrapped entity's header blocks are the very objects inspection built (not read again)."""
    from caducee.gateway.inspect import inspect_message
    from caducee.gateway.pipeline import summary_of

    inspected = inspect_message(MULTIPART, max_size=1 << 20, hostname="h", add_missing_headers=True)
    wrapped = (
        b"From: x@y\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary="zz"\r\n\r\n'
        b"--zz\r\nContent-Type: message/rfc822\r\n\r\n" + inspected.raw + b"\r\n--zz\r\n"
        b"Content-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--zz--\r\n"
    )
    assert summary_of(wrapped, inspected) == summarize(wrapped)
    offset = wrapped.index(inspected.raw)
    tree = structure.parse(wrapped, reuse=(offset, inspected.tree))
    inner = tree.children[0].message
    assert inner is not None and inner.headers is inspected.tree.headers
    assert inner.children[1].headers is inspected.tree.children[1].headers
    assert structure.section(tree, (1, 2), "", ()) == b"QUJD"


# ENVELOPE address lists as Dovecot 2.3 renders them (each case checked against it).
ADDRESS_CASES = [
    ("user", b'((NIL NIL "user" "MISSING_DOMAIN"))'),
    ('"Quoted, Name" <a@b.c>', b'(("Quoted, Name" NIL "a" "b.c"))'),
    ("Dr. Who <a@b>", b'(("Dr. Who" NIL "a" "b"))'),
    ("undisclosed-recipients:;", b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'),
    ("Name <@r1,@r2:u@d>", b'(("Name" "@r1,@r2" "u" "d"))'),
    ("u@[1.2.3.4]", b'((NIL NIL "u" "[1.2.3.4]"))'),
    ("user@ domain . com", b'((NIL NIL "user" "domain.com"))'),
    ("a@b (c) (d)", b'(("d" NIL "a" "b"))'),
    ("Nom (commentaire) <a@b>", b'(("Nom" NIL "a" "b"))'),
    ("<a@b> (after)", b'((NIL NIL "a" "b"))'),
    ("g: a@b, c@d", b'((NIL NIL "g" NIL)(NIL NIL "a" "b")(NIL NIL "c" "d")(NIL NIL NIL NIL))'),
    ("Real Name <a@b>, Other <c@d>", b'(("Real Name" NIL "a" "b")("Other" NIL "c" "d"))'),
    ("a@b c@d", b'((NIL NIL "a" "b"))'),
    ("@d", b'((NIL NIL "MISSING_MAILBOX" "d"))'),
]


@pytest.mark.parametrize(("value", "expected"), ADDRESS_CASES)
def test_envelope_addresses_as_dovecot_gives_them(value: str, expected: bytes) -> None:
    envelope = summarize(f"To: {value}\r\nSubject: s\r\n\r\nbody\r\n".encode()).imap_envelope
    assert envelope == b'(NIL "s" NIL NIL NIL ' + expected + b" NIL NIL NIL NIL)"
