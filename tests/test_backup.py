"""`caducee backup` of a live server under an SMTP load, `caducee restore` into an empty
database and data directory, and every message readable there: opened under the restored
master key, and fetched over IMAP from a server started on what was restored."""

from __future__ import annotations

import asyncio
import email
import imaplib
import smtplib
import ssl
import subprocess
import sys
import threading
import time
import uuid
from email.utils import formatdate
from pathlib import Path

import pytest
from conftest import PG_URL, _admin
from nodes import deployment_env, start_node
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db
from caducee.crypto.atrest import BodyCipher, load_master_key
from caducee.mailbox.models import Message

SESSIONS = 3


def caducee(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caducee", *args], env=env, capture_output=True, text=True, timeout=600)


class Load:
    """SMTP sessions submitting to the nurse until stopped; what got 250, and when."""

    def __init__(self, port: int, sender: str, rcpt: str) -> None:
        self.port, self.sender, self.rcpt = port, sender, rcpt
        self.acknowledged: list[tuple[float, str]] = []
        self.stopping = threading.Event()
        self.numbers = iter(range(100_000))
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.session) for _ in range(SESSIONS)]

    def session(self) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:  # a trusted network: no AUTH
            while not self.stopping.is_set():
                with self.lock:
                    number = next(self.numbers)
                tag = f"<sauvegarde-{number}@demo.mssante.fr>"
                data = (
                    f"From: {self.sender}\r\nTo: {self.rcpt}\r\nSubject: sauvegarde {number}\r\nDate: {formatdate()}\r\n"
                    f"Message-ID: {tag}\r\n\r\nLigne de test numero {number}.\r\n"
                ).encode()
                client.sendmail(self.sender, [self.rcpt], data)
                self.acknowledged.append((time.monotonic(), tag))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)


@pytest.fixture
def empty_database(backend: str, tmp_path: Path) -> object:
    """A database with nothing in it, for the restore (PostgreSQL: created for the test)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored' / 'restored.sqlite3'}"
        return
    name = f"caducee_restore_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(PG_URL, f'CREATE DATABASE "{name}"'))
    yield make_url(db.normalise_url(PG_URL)).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_backup_under_load_restores_every_message(tmp_path: Path, database_url: str, engine: AsyncEngine, empty_database: str) -> None:
    live = start_node(tmp_path / "live", database_url, args=("--demo", "--role", "smtp,http"), wait_for=("http", "submission"))
    credentials = live.credentials()
    nurse = credentials["professionals"]["nurse"]
    backup_dir = tmp_path / "backup"
    try:
        with Load(live.ports["submission"], credentials["professionals"]["doctor"]["address"], nurse["address"]) as load:
            while len(load.acknowledged) < 50:
                assert all(thread.is_alive() for thread in load.threads), live.output()
                time.sleep(0.1)
            started = time.monotonic()
            made = caducee("backup", str(backup_dir), env=live.env)
            finished = time.monotonic()
            during = sum(1 for at, _ in load.acknowledged if started <= at <= finished)
            assert made.returncode == 0, made.stderr
    finally:
        assert live.stop() == 0, live.output()
    before = {tag for at, tag in load.acknowledged if at < started}
    assert during > 0, "no message was accepted while the backup ran: it was not taken under load"

    # An empty database, a new data directory: the restore brings the database, the key and the certificates.
    target = tmp_path / "restored"
    env = {**live.env, "CADUCEE_DATA_DIR": str(target / "var"), "CADUCEE_DATABASE_URL": empty_database}
    restored = caducee("restore", str(backup_dir), env=env)
    assert restored.returncode == 0, restored.stderr
    assert "every table has its rows" in restored.stdout
    assert caducee("restore", str(backup_dir), env=env).returncode == 1  # not into a database that is not empty

    cipher = BodyCipher(load_master_key(target / "var", environ_value=""))

    async def stored() -> dict[str, bytes]:
        restored_engine = db.create_engine(empty_database)
        try:
            async with restored_engine.connect() as conn:
                rows = (await conn.execute(select(Message.message_id_header, Message.body))).all()
            return {header: cipher.open(body) for header, body in rows}  # every body opens under the restored key
        finally:
            await restored_engine.dispose()

    bodies = asyncio.run(stored())
    missing = sorted(before - set(bodies))
    assert not missing, f"{len(missing)} messages acknowledged before the backup began are not in it, e.g. {missing[:3]}"
    load_messages = [header for header in bodies if header.startswith("<sauvegarde-")]
    assert len(load_messages) >= len(before)

    # A server on what was restored serves every one of them over IMAP, with the restored certificates.
    node = start_node(target, empty_database, args=("--role", "imap,http"), env=deployment_env(target / "var"), wait_for=("http", "imap"))
    try:
        anchors = ssl.create_default_context(cafile=str(target / "var" / "pki" / "anchors.pem"))
        with imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=60) as client:
            client.starttls(ssl_context=anchors)
            client.login(nurse["address"], nurse["password"])
            status, data = client.select("INBOX", readonly=True)
            assert status == "OK"
            status, fetched = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            assert status == "OK"
            served = {
                email.message_from_bytes(part[1])["Message-ID"]
                for part in fetched
                if isinstance(part, tuple)  # type: ignore[union-attr]
            }
        assert set(load_messages) <= served
    finally:
        assert node.stop() == 0, node.output()
