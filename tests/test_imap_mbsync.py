"""A full two-way synchronisation with mbsync (Debian's isync), a client nobody here wrote.

mbsync relies on UIDs, UIDVALIDITY, APPENDUID, flags and expunges being exactly right:
a server that gets any of them wrong shows up as duplicated, lost or resurrected mail.
"""

from __future__ import annotations

import asyncio
import mailbox
import shutil
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from test_imap_clients import connect, fill, note

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync missing: make installs isync")


def configuration(gateway, home: Path) -> Path:  # type: ignore[no-untyped-def]
    address, password = gateway.account("doctor")
    (home / "mail").mkdir(parents=True, exist_ok=True)
    path = home / "mbsyncrc"
    path.write_text(f"""
IMAPAccount caducee
Host localhost
Port {gateway.ports["imap"]}
User {address}
Pass {password}
SSLType STARTTLS
CertificateFile {gateway.ca.files.cert}
AuthMechs PLAIN

IMAPStore remote
Account caducee

MaildirStore local
Path {home}/mail/
Inbox {home}/mail/INBOX
SubFolders Verbatim

Channel everything
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
""")
    return path


async def mbsync(config: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        "mbsync", "-c", str(config), "-a", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode()
    return output.decode()


def local_inbox(home: Path) -> dict[str, str]:
    """Subject -> maildir flags of the local INBOX."""
    box = mailbox.Maildir(home / "mail" / "INBOX", create=False)
    return {str(make_header(decode_header(str(msg["Subject"])))): msg.get_flags() for msg in box}


async def test_two_way_sync_with_flags_and_deletions(gateway, imap, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = configuration(gateway, tmp_path)

    def server_side_first() -> None:
        with connect(gateway) as client:
            fill(client, "INBOX", ["Biologie", "Radiologie", "Courrier"])
            client.select("INBOX")
            client.store("1", "+FLAGS", "(\\Flagged)")
            client.create("Patients")
            fill(client, "Patients", ["Dossier Dupont"])

    await asyncio.to_thread(server_side_first)
    await mbsync(config)
    assert local_inbox(tmp_path) == {"Biologie": "F", "Radiologie": "", "Courrier": ""}
    assert (tmp_path / "mail" / "Patients").is_dir()

    # Changes on both sides: locally, read one, delete one, write a new one; remotely, a new
    # message arrives and another is answered.
    box = mailbox.Maildir(tmp_path / "mail" / "INBOX", create=False)
    for key, msg in list(box.items()):
        if msg["Subject"] in ("Radiologie", "Courrier"):
            msg = mailbox.MaildirMessage(msg)
            msg.set_subdir("cur")
            msg.add_flag("S" if msg["Subject"] == "Radiologie" else "T")
            box[key] = msg
    box.add(mailbox.MaildirMessage(note("Écrit hors ligne")))
    box.close()

    def server_side_second() -> None:
        with connect(gateway) as client:
            fill(client, "INBOX", ["Arrivé pendant ce temps"])
            client.select("INBOX")
            client.store("1", "+FLAGS", "(\\Answered)")

    await asyncio.to_thread(server_side_second)
    await mbsync(config)

    def server_view() -> dict[str, str]:
        with connect(gateway) as client:
            client.select("INBOX")
            found = {}
            for item in client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]:
                if isinstance(item, tuple):
                    subject = item[1].decode().split(":", 1)[1].strip()
                    flags = item[0].decode().split("FLAGS (")[1].split(")")[0]
                    found[str(make_header(decode_header(subject)))] = flags
            return found

    remote = await asyncio.to_thread(server_view)
    assert set(remote) == {"Biologie", "Radiologie", "Écrit hors ligne", "Arrivé pendant ce temps"}
    assert set(remote["Biologie"].split()) == {"\\Flagged", "\\Answered"}
    assert remote["Radiologie"] == "\\Seen"
    local = local_inbox(tmp_path)
    assert set(local) == set(remote)
    assert local["Biologie"] == "FR"

    # A third run finds nothing to do: no duplicates, nothing resurrected.
    await mbsync(config)
    assert await asyncio.to_thread(server_view) == remote
    assert local_inbox(tmp_path) == local
