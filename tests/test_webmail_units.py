"""The webmail's pure parts, as tables of cases: uploads, file names, reading hostile mail,
composing, codes."""

from __future__ import annotations

import pytest

from caducee.webmail import compose, reading
from caducee.webmail.codes import CodeHasher, mask_email, new_code
from caducee.webmail.uploads import UploadRefused, check_upload, safe_filename, sniff

PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PDF, ("application/pdf", "pdf")),
        (PNG, ("image/png", "png")),
        (JPEG, ("image/jpeg", "jpg")),
        (b"MZ\x90\x00", None),  # a Windows program
        (b"<html><script>", None),
        (b"GIF89a", None),
        (b" %PDF-1.4", None),  # the magic must come first
    ],
)
def test_sniff(data: bytes, expected: tuple[str, str] | None) -> None:
    assert sniff(data) == expected


@pytest.mark.parametrize(
    ("name", "extension", "expected"),
    [
        ("ordonnance.pdf", "pdf", "ordonnance.pdf"),
        ("../../etc/passwd", "pdf", "passwd.pdf"),
        ("..\\..\\windows\\system32\\x.pdf", "pdf", "x.pdf"),
        ("ordonnance.pdf.exe", "pdf", "ordonnance.pdf.pdf"),
        (".htaccess", "png", "htaccess.png"),
        ("photo d'ordonnance (1).JPG", "jpg", "photo d_ordonnance _1.jpg"),
        ("Ordonnance_Dr_Béranger.pdf", "pdf", "Ordonnance_Dr_Beranger.pdf"),
        ("a\x00b\r\nContent-Type: text/html.pdf", "pdf", "html.pdf"),  # "/" ends a path: only the last part is kept
        ("a\x00b\r\nContent-Type: x.pdf", "pdf", "a_b_Content-Type_ x.pdf"),
        ("", "pdf", "document.pdf"),
        (None, "jpg", "document.jpg"),
        ("////", "pdf", "document.pdf"),
        ("x" * 500 + ".pdf", "pdf", "x" * 80 + ".pdf"),
        ("x.html", "\uff48\uff54\uff4d\uff4c", "x.bin"),  # a full-width extension: no header could carry it
        ("x.pd\u00e9", "pd\u00e9", "x.pd"),
        ("x", "\u0661\u0662", "x.bin"),
    ],
)
def test_safe_filename(name: str | None, extension: str, expected: str) -> None:
    assert safe_filename(name, extension) == expected


@pytest.mark.parametrize(
    ("data", "size", "fragment"),
    [
        (b"", 100, "vide"),
        (PDF + b"0" * 200, 100, "trop lourd"),
        (b"MZ" + b"0" * 10, 100, "pas accepté"),
    ],
)
def test_check_upload_refusals(data: bytes, size: int, fragment: str) -> None:
    with pytest.raises(UploadRefused, match=fragment):
        check_upload("x.pdf", data, max_size=size)


def test_check_upload_keeps_the_type_found_in_the_content() -> None:
    upload = check_upload("scan.pdf", PNG, max_size=1000)
    assert (upload.filename, upload.content_type) == ("scan.png", "image/png")


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


@pytest.mark.parametrize(
    ("raw", "text", "attachments"),
    [
        (crlf("From: a@b.fr\nSubject: t\n\nBonjour\n"), "Bonjour", []),
        (
            crlf("From: a@b.fr\nContent-Type: text/html\n\n<p>Un</p><script>alert(1)</script><p>Deux &amp; trois</p>"),
            "Un\n\nDeux & trois",
            [],
        ),
        (
            crlf(
                "From: a@b.fr\nContent-Type: multipart/mixed; boundary=X\n\n--X\nContent-Type: text/plain\n\nCorps\n--X\n"
                'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="../../x.exe"\n\nMZ\n--X--\n'
            ),
            "Corps",
            [("x.exe", "application/octet-stream")],
        ),
        (
            crlf(
                "From: a@b.fr\nContent-Type: multipart/mixed; boundary=X\n\n--X\nContent-Type: text/plain\n\nCorps\n--X\n"
                "Content-Type: text/html; name=page.html\nContent-Disposition: attachment; filename=page.html\n\n<script>\n--X--\n"
            ),
            "Corps",
            [("page.html", "application/octet-stream")],
        ),  # never served as HTML
        (
            crlf(
                "From: a@b.fr\nContent-Type: multipart/mixed; boundary=X\n\n--X\nContent-Type: application/pdf\n"
                "Content-Disposition: attachment; filename=cr.pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n--X--\n"
            ),
            "",
            [("cr.pdf", "application/pdf")],
        ),
        (
            crlf(
                "From: a@b.fr\nContent-Type: multipart/mixed; boundary=X\n\n--X\nContent-Type: image/png\n"
                "Content-Disposition: attachment; filename=faux.png\n\nnot really a png\n--X--\n"
            ),
            "",
            [("faux.png", "application/octet-stream")],
        ),  # declared PNG, is not: downloaded as bytes, never shown
        (
            crlf(
                "From: a@b.fr\nContent-Type: multipart/mixed; boundary=X\n\n--X\nContent-Type: application/x-unknown\n"
                "Content-Disposition: attachment; filename*=utf-8''x.%EF%BD%88%EF%BD%94%EF%BD%8D%EF%BD%8C\n\ndata\n--X--\n"
            ),
            "",
            [("x.bin", "application/octet-stream")],
        ),  # a full-width declared extension gave a 500 on download (Latin-1 header)
        (crlf("From: a@b.fr\nContent-Type: multipart/mixed; boundary=X\n\n--X\nContent-Type: text/plain\n\nunclosed"), "unclosed", []),
        (crlf("From: a@b.fr\nContent-Type: text/plain; charset=unknown-8\n\ncaf\xe9"), "caf\xe9", []),
    ],
)
def test_reading_hostile_and_ordinary_mail(raw: bytes, text: str, attachments: list[tuple[str, str]]) -> None:
    readable = reading.read(raw)
    assert readable.text == text
    assert [(a.filename, a.content_type) for a in readable.attachments] == attachments


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("=?utf-8?q?R=C3=A9sultats?=", "Résultats"),
        ("=?utf-8?b?YWJj?= =?utf-8?b?Z@@@?=", "=?utf-8?b?YWJj?= =?utf-8?b?Z@@@?="),  # broken base64: shown as it came
        ("=?x-unknown?q?abc?=", "=?x-unknown?q?abc?="),
        (b"Compte rendu", "Compte rendu"),
        (None, ""),
    ],
)
def test_header_words_never_break_a_page(value: str | bytes | None, shown: str) -> None:
    assert reading.decode_words(value) == shown


def test_an_encrypted_message_is_said_unreadable() -> None:
    raw = crlf("From: a@b.fr\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\n\nMIIB\n")
    assert reading.read(raw).encrypted


def test_a_reply_threads_and_stays_ascii_in_its_headers() -> None:
    raw = compose.reply(
        sender_name="Léa Martin",
        sender="p@patient.mssante.fr",
        to=[("Dr Béranger", "d@demo.mssante.fr")],
        subject="Re: Résultats",
        in_reply_to="<b@x>",
        references=["<a@x>"],
        text="Merci\r\n\x00\x07à bientôt",
        upload=None,
        hostname="h",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.isascii() and b"In-Reply-To: <b@x>" in head and b"References: <a@x> <b@x>" in head
    assert b"Subject: Re: =?utf-8?q?R=C3=A9sultats?=" in head  # not "Re: Re:"
    assert reading.read(raw).text == "Merci\n\nà bientôt".replace("\n\n", "\n")


def test_codes() -> None:
    hasher = CodeHasher(b"k" * 32)
    code = new_code()
    assert len(code) == 6 and code.isdigit()
    stored = hasher.hash("login", 7, code)
    assert hasher.matches(stored, "login", 7, code)
    assert not hasher.matches(stored, "login", 8, code)  # bound to its owner
    assert not hasher.matches(stored, "activation", 7, code)  # and to its purpose
    assert mask_email("claire.martin@example.org") == "c••••••••••••@example.org"
