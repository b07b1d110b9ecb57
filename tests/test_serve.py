"""`caducee serve --workers 2`: both processes share the ports, SIGTERM stops them all; the demo
world it seeds starts with messages that the README's IMAP and webmail examples show."""

from __future__ import annotations

import imaplib
import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port
from sqlalchemy.ext.asyncio import AsyncEngine


def test_serve_with_two_workers(tmp_path: Path, database_url: str, engine: AsyncEngine) -> None:
    """`engine` gives the test a clean schema, so the demo world is seeded afresh."""
    smtp_port, http_port, imap_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "var"
    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(data_dir),
        "CADUCEE_DATABASE_URL": database_url,
        "CADUCEE_SUBMISSION_PORT": str(smtp_port),
        "CADUCEE_SUBMISSIONS_PORT": "0",
        "CADUCEE_MX_PORT": "0",
        "CADUCEE_IMAP_PORT": str(imap_port),
        "CADUCEE_IMAPS_PORT": "0",
        "CADUCEE_HTTP_PORT": str(http_port),
        "CADUCEE_TRUSTED_NETWORKS": "127.0.0.0/8",
        "CADUCEE_LOG_LEVEL": "WARNING",
        "CADUCEE_DEMO_PSC_PORT": str(free_port()),  # the demo's Pro Santé Connect stand-in, a third child
        "CADUCEE_WEBMAIL_COOKIE_SECURE": "false",  # httpx keeps Secure cookies for https only
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "caducee", "serve", "--demo", "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2).status_code == 200:
                    smtplib.SMTP("127.0.0.1", smtp_port, timeout=5).quit()
                    break
            except (OSError, httpx.HTTPError, smtplib.SMTPException):
                pass
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        workers = subprocess.run(
            ["pgrep", "-P", str(process.pid), "-f", "--", "--worker-process"], capture_output=True, text=True
        ).stdout.split()
        assert len(workers) == 2
        credentials = json.loads((data_dir / "demo-credentials.json").read_text())
        sender = credentials["professionals"]["doctor"]["address"]
        patient = credentials["patients"]["adult_1"]["address"]
        anchors = ssl.create_default_context(cafile=str(data_dir / "pki" / "anchors.pem"))
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:  # the certificate chains to our anchors
            client.starttls(context=anchors)
            assert client.ehlo()[0] == 250
        for n in range(10):  # connections land on either worker
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
                client.sendmail(sender, [patient], f"From: {sender}\r\nSubject: {n}\r\n\r\nhello\r\n".encode())
        readme_examples(credentials, anchors, imap_port, http_port, data_dir)
        # One scrape sees every worker (prometheus-client's multiprocess mode): the ten messages
        # whichever worker took them, and the relay queue read from the database.
        scraped = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10).text
        assert 'caducee_messages_total{listener="trusted",outcome="accepted",rule=""} 10.0' in scraped, scraped[:3000]
        assert "caducee_group_commit_seconds_bucket" in scraped and "caducee_http_request_seconds_bucket" in scraped
        # A worker that dies is replaced by its parent; the server goes on answering.
        os.kill(int(workers[0]), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "--", "--worker-process"], capture_output=True, text=True)
            current = now.stdout.split()
            if len(current) == 2 and workers[0] not in current:
                break
            assert time.monotonic() < deadline, current
            time.sleep(0.2)
        workers = current
        for n in range(4):
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
                client.sendmail(sender, [patient], f"From: {sender}\r\nSubject: after {n}\r\n\r\nhello\r\n".encode())
        nurse = credentials["professionals"]["nurse"]
        for _ in range(4):  # IMAP too, on either worker
            with imaplib.IMAP4("127.0.0.1", imap_port, timeout=30) as client:
                client.starttls(ssl_context=anchors)
                client.login(nurse["address"], nurse["password"])
                assert client.select("INBOX")[0] == "OK"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()


def readme_examples(credentials: dict, anchors: ssl.SSLContext, imap_port: int, http_port: int, data_dir: Path) -> None:  # type: ignore[type-arg]
    """The README's IMAP session as Dr Bernard shows Claire's reply; Claire's webmail shows the
    demo's three conversations: the doctor's results with their PDF, the CNAM's message, and
    the conversation the doctor closed."""
    import asyncio

    from webmail_client import login

    from caducee import demo

    doctor, claire = credentials["professionals"]["doctor"], credentials["patients"]["adult_1"]
    with imaplib.IMAP4("127.0.0.1", imap_port, timeout=30) as client:
        client.starttls(ssl_context=anchors)
        client.login(doctor["address"], doctor["password"])
        assert client.select("INBOX")[0] == "OK"
        status, data = client.uid("FETCH", "1:*", "(FLAGS ENVELOPE)")
    assert status == "OK" and data[0] is not None
    envelope = b" ".join(part if isinstance(part, bytes) else part[0] for part in data if part)
    assert b'"Re: ' + demo.CLOSED_SUBJECT.encode() + b'"' in envelope, envelope

    async def webmail() -> tuple[str, str, str]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
            await login(client, data_dir / "outbox", claire["ins"], claire["password"], claire["email"])
            listing = (await client.get("/")).text
            links = {
                subject: next(
                    "/conversations/" + chunk.split('"', 1)[0]
                    for chunk in listing.split('<a href="/conversations/')[1:]
                    if subject in chunk.split("</a>")[0]
                )
                for subject in (demo.RESULTS_SUBJECT, demo.CLOSED_SUBJECT)
            }
            results = (await client.get(links[demo.RESULTS_SUBJECT])).text
            closed = (await client.get(links[demo.CLOSED_SUBJECT])).text
            return listing, results, closed

    listing, results, closed = asyncio.run(webmail())
    for subject in (demo.RESULTS_SUBJECT, demo.CNAM_SUBJECT, demo.CLOSED_SUBJECT):
        assert subject in listing, subject
    assert demo.RESULTS_PDF in results and "0,95 g/L" in results
    assert "a clos cette conversation" in closed and "Envoyer ma réponse" not in closed
    assert "je passerai la chercher jeudi" in closed  # Claire's reply, between the doctor's two messages
