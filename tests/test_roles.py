"""`caducee serve --role`: a node runs only the roles it is given (smtp, imap, http, relay,
jobs; all by default), every node answers /healthz, and two nodes with different roles on
one database and one master key serve the same mailboxes."""

from __future__ import annotations

import base64
import imaplib
import os
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
from nodes import deployment_env, start_node
from sqlalchemy.ext.asyncio import AsyncEngine


def test_nodes_run_only_their_roles(tmp_path: Path, database_url: str, engine: AsyncEngine) -> None:
    """`engine` gives the test a clean schema, so the demo world is seeded afresh."""
    key = {"CADUCEE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    mail = start_node(tmp_path / "a", database_url, args=("--demo", "--role", "smtp,relay"), env=key, wait_for=("http", "submission"))
    try:
        (tmp_path / "b" / "var").mkdir(parents=True)
        # The second node uses the first one's certificates, as nodes sharing a certificate volume do.
        for name in ("pki",):
            subprocess.run(["cp", "-a", str(mail.data_dir / name), str(tmp_path / "b" / "var" / name)], check=True)
        shared = {**deployment_env(tmp_path / "b" / "var"), **key}  # the files, named as a PostgreSQL node must be given them
        web = start_node(tmp_path / "b", database_url, args=("--role", "http,imap"), env=shared, wait_for=("http", "imap"))
        try:
            assert not mail.listening("imap") and not mail.listening("imaps")
            assert not web.listening("submission") and not web.listening("mx")
            for node in (mail, web):
                assert httpx.get(node.base_url + "/healthz", timeout=10).json() == {"status": "ok"}
                assert httpx.get(node.base_url + "/metrics", timeout=10).status_code == 200
            assert httpx.get(mail.base_url + "/connexion", timeout=10).status_code == 404  # no webmail without the http role
            assert httpx.get(web.base_url + "/connexion", timeout=10).status_code == 200

            credentials = mail.credentials()
            nurse = credentials["professionals"]["nurse"]
            sender = credentials["professionals"]["doctor"]["address"]
            with smtplib.SMTP("127.0.0.1", mail.ports["submission"], timeout=30) as client:  # trusted network: no AUTH
                client.sendmail(sender, [nurse["address"]], f"From: {sender}\r\nSubject: roles\r\n\r\nbonjour\r\n".encode())
            anchors = ssl.create_default_context(cafile=str(mail.data_dir / "pki" / "anchors.pem"))
            with imaplib.IMAP4("127.0.0.1", web.ports["imap"], timeout=30) as client:
                client.starttls(ssl_context=anchors)
                client.login(nurse["address"], nurse["password"])
                status, data = client.select("INBOX")
                assert status == "OK" and int(data[0]) == 1
                # The body, sealed at rest by node A, opened by node B under the shared master key
                # (encrypted to the nurse's own certificate: S/MIME, as every message is).
                status, fetched = client.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT CONTENT-TYPE)])")
                assert status == "OK" and b"Subject: roles" in fetched[0][1] and b"pkcs7-mime" in fetched[0][1]  # type: ignore[index]
        finally:
            assert web.stop() == 0, web.output()
    finally:
        assert mail.stop() == 0, mail.output()


def test_an_unknown_role_is_refused_with_the_choices(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "caducee", "serve", "--role", "smtp,webmail", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown role 'webmail'" in result.stderr and "smtp,imap,http,relay,jobs" in result.stderr
