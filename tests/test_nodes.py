"""Three nodes on one PostgreSQL (issue 19.1): separate `caducee serve` processes, separate data
directories, one database, the same master key and certificate files, as a deployment runs them.

- five wrong passwords spread over the three nodes lock the account on all of them;
- a message submitted on node A wakes an IMAP IDLE on node B and shows in the webmail on node C;
- relay rows are delivered once whichever node works them (a peer logs each Message-ID);
- a node SIGKILLed mid-load loses nothing it acknowledged, and the others go on.

PostgreSQL only: nodes sharing a database is what PostgreSQL is for (SQLite is one machine's file).
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import os
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiosmtpd.smtp import SMTP as AioSMTP
from conftest import _truncate_all, free_port
from sqlalchemy import text
from webmail_client import latest_code, login

from caducee import db
from caducee.config import Settings
from caducee.crypto.devpki import DevCA
from caducee.crypto.tls import server_context

PEER_DOMAIN = "autre-operateur.mssante.fr"


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    http: int
    smtp: int
    imap: int

    @property
    def log(self) -> str:
        return (self.data_dir.parent / f"{self.name}.log").read_text(errors="replace")


class Peer:
    """Another operator's MX (aiosmtpd, STARTTLS) that logs the Message-ID of what it accepts."""

    def __init__(self) -> None:
        self.message_ids: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        for line in envelope.original_content.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                self.message_ids.append(line.split(b":", 1)[1].strip().decode())
                break
        return "250 OK"


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:  # type: ignore[type-arg]
    """The seeded database, the certificate files, the shared key: everything but the nodes."""
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("CADUCEE_MASTER_KEY", key)
    ca = DevCA(tmp_path / "ca")
    server = ca.issue("server", "localhost", "Caducee", server=True, dns=["localhost"], ips=["127.0.0.1"])
    relay_client = ca.issue("operator", "mail.demo.mssante.fr", "Caducee", client=True)
    peer_cert = ca.issue("peer", "localhost", "Autre Operateur", server=True, dns=["localhost"], ips=["127.0.0.1"])

    async def seed() -> dict:  # type: ignore[type-arg]
        from caducee import demo

        engine = db.create_engine(pg_url)
        try:
            await _truncate_all(engine)
            credentials = await demo.seed(engine, Settings(data_dir=tmp_path / "seed", database_url=pg_url), certificates=False)
            assert credentials is not None
            return credentials
        finally:
            await engine.dispose()

    credentials = asyncio.run(seed())
    yield {"key": key, "ca": ca, "server": server, "relay_client": relay_client, "peer": peer_cert, "credentials": credentials}


def start_node(name: str, tmp_path: Path, pg_url: str, cluster: dict, peer_port: int) -> Node:  # type: ignore[type-arg]
    http, smtp, imap = free_port(), free_port(), free_port()
    data_dir = tmp_path / name
    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(data_dir),
        "CADUCEE_DATABASE_URL": pg_url,
        "CADUCEE_MASTER_KEY": cluster["key"],
        "CADUCEE_TLS_CERT": str(cluster["server"].cert),
        "CADUCEE_TLS_KEY": str(cluster["server"].key),
        "CADUCEE_TRUST_ANCHORS": str(cluster["ca"].files.cert),
        "CADUCEE_RELAY_CLIENT_CERT": str(cluster["relay_client"].cert),
        "CADUCEE_RELAY_CLIENT_KEY": str(cluster["relay_client"].key),
        "CADUCEE_RELAY_ROUTES": f"{PEER_DOMAIN}=127.0.0.1:{peer_port}",
        "CADUCEE_RELAY_POLL_INTERVAL": "0.2",
        "CADUCEE_SMIME": "off",
        "CADUCEE_HTTP_PORT": str(http),
        "CADUCEE_SUBMISSION_PORT": str(smtp),
        "CADUCEE_IMAP_PORT": str(imap),
        "CADUCEE_SUBMISSIONS_PORT": "0",
        "CADUCEE_MX_PORT": "0",
        "CADUCEE_IMAPS_PORT": "0",
        "CADUCEE_IMAP_POLL_SECONDS": "0.2",
        "CADUCEE_CPU_WORKERS": "1",
        "CADUCEE_WEBMAIL_COOKIE_SECURE": "false",
        "CADUCEE_LOG_LEVEL": "INFO",
    }
    log = (tmp_path / f"{name}.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "caducee", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    return Node(name, process, data_dir, http, smtp, imap)


def wait_ready(node: Node, deadline: float) -> None:
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{node.http}/healthz", timeout=2).status_code == 200:
                smtplib.SMTP("127.0.0.1", node.smtp, timeout=5).quit()
                return
        except (OSError, httpx.HTTPError, smtplib.SMTPException):
            pass
        assert node.process.poll() is None, node.log[-3000:]
        assert time.monotonic() < deadline, f"{node.name} did not start: {node.log[-3000:]}"
        time.sleep(0.2)


@pytest.fixture
async def nodes(cluster: dict, tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[list[Node], Peer]]:  # type: ignore[type-arg]
    peer = Peer()
    context = server_context(cluster["peer"])
    peer_port = free_port()
    peer_server = await asyncio.get_running_loop().create_server(
        lambda: AioSMTP(peer, tls_context=context, require_starttls=True, hostname="peer", decode_data=False), "127.0.0.1", peer_port
    )
    started = [start_node(name, tmp_path, pg_url, cluster, peer_port) for name in ("a", "b", "c")]
    try:
        deadline = time.monotonic() + 120
        for node in started:
            await asyncio.to_thread(wait_ready, node, deadline)
        yield started, peer
    finally:
        for node in started:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in started:
            try:
                node.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        peer_server.close()
        await peer_server.wait_closed()
        for node in started:  # shown by pytest when the test failed
            print(f"---- node {node.name} ----\n" + "\n".join(line for line in node.log.splitlines() if "alembic" not in line)[-6000:])


def tls(cluster: dict) -> ssl.SSLContext:  # type: ignore[type-arg]
    return ssl.create_default_context(cafile=str(cluster["ca"].files.cert))


def smtp_login(node: Node, context: ssl.SSLContext, address: str, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", node.smtp, timeout=30) as client:
        client.starttls(context=context)
        client.ehlo()
        client.user, client.password = address, password
        try:  # one mechanism: login() would try PLAIN then LOGIN, two failures per attempt
            client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as refused:
            return refused.smtp_code, refused.smtp_error
        return 235, b""


def send(node: Node, context: ssl.SSLContext, account: dict, rcpts: list[str], subject: str, message_id: str) -> None:  # type: ignore[type-arg]
    raw = (
        f"From: {account['address']}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\n"
        f"Bonjour, {subject}.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", node.smtp, timeout=60) as client:
        client.starttls(context=context)
        client.login(account["address"], account["password"])
        client.sendmail(account["address"], rcpts, raw.encode())


@pytest.mark.slow
async def test_three_nodes_share_one_database(nodes: tuple[list[Node], Peer], cluster: dict, pg_url: str) -> None:  # type: ignore[type-arg]
    (a, b, c), peer = nodes
    context = tls(cluster)
    people = cluster["credentials"]
    pharmacy, doctor, nurse = (people["professionals"][k] for k in ("pharmacy", "doctor", "nurse"))
    claire = people["patients"]["adult_1"]

    # 1. Five wrong passwords over three nodes lock the account on every node (and IMAP too).
    for node in (a, b, a, c, b):
        code, _ = await asyncio.to_thread(smtp_login, node, context, pharmacy["address"], "not the password")
        assert code == 535
    for node in (a, b, c):
        code, reply = await asyncio.to_thread(smtp_login, node, context, pharmacy["address"], pharmacy["password"])
        assert code == 454 and b"Too many failed logins" in reply, (node.name, code, reply)

    def imap_locked() -> bytes:
        with imaplib.IMAP4("127.0.0.1", c.imap, timeout=30) as client:
            client.starttls(ssl_context=context)
            try:
                client.login(pharmacy["address"], pharmacy["password"])
            except imaplib.IMAP4.error as refused:
                return str(refused).encode()
            return b"logged in"

    assert b"UNAVAILABLE" in await asyncio.to_thread(imap_locked)

    # 2. Submitted on A: wakes an IDLE on B, shows in the webmail on C.
    def idle_until_exists(started: asyncio.Event, loop: asyncio.AbstractEventLoop) -> list[bytes]:
        """IDLE on B (imaplib has no IDLE command: the protocol by hand), until EXISTS or 15 s."""
        with imaplib.IMAP4("127.0.0.1", b.imap, timeout=30) as client:
            client.starttls(ssl_context=context)
            client.login(nurse["address"], nurse["password"])
            client.select("INBOX")
            client.send(b"i1 IDLE\r\n")
            assert client.readline().startswith(b"+")
            loop.call_soon_threadsafe(started.set)
            client.sock.settimeout(15)
            seen = []
            while not any(b"EXISTS" in line for line in seen):
                line = client.readline()
                assert line, f"IDLE ended without EXISTS: {seen}"
                seen.append(line)
            client.send(b"DONE\r\n")
            while not (line := client.readline()).startswith(b"i1 "):
                pass
            assert b"OK" in line
            return seen

    idling = asyncio.Event()
    watcher = asyncio.create_task(asyncio.to_thread(idle_until_exists, idling, asyncio.get_running_loop()))
    await asyncio.wait_for(idling.wait(), 30)
    await asyncio.to_thread(
        send, a, context, doctor, [nurse["address"], claire["address"]], "Resultats du bilan", "bilan-1@demo.mssante.fr"
    )
    assert any(b"EXISTS" in line for line in await watcher)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{c.http}", timeout=30) as browser:
        await login(browser, c.data_dir / "outbox", claire["ins"], claire["password"], claire["email"])
        assert "Resultats du bilan" in (await browser.get("/")).text

    # 3. Relay rows worked by whichever node: each Message-ID reaches the peer once.
    sent = [f"relay-{n}@demo.mssante.fr" for n in range(12)]
    for n, message_id in enumerate(sent):
        await asyncio.to_thread(send, (a, b, c)[n % 3], context, doctor, [f"contact{n}@{PEER_DOMAIN}"], f"Relais {n}", message_id)
    deadline = time.monotonic() + 60
    while len(set(peer.message_ids) & {f"<{m}>" for m in sent}) < len(sent):
        assert time.monotonic() < deadline, peer.message_ids
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)  # time for a second delivery, if any node were to make one
    counts = Counter(peer.message_ids)
    assert all(counts[f"<{m}>"] == 1 for m in sent), counts

    # 4. A node SIGKILLed mid-load: what it acknowledged is stored, the others go on.
    acknowledged: list[str] = []

    def load(node: Node, prefix: str, count: int) -> None:
        for n in range(count):
            message_id = f"{prefix}-{n}@demo.mssante.fr"
            try:
                send(node, context, doctor, [nurse["address"]], f"Charge {prefix} {n}", message_id)
            except (OSError, smtplib.SMTPException):
                return  # the node is gone: what it did not acknowledge may be lost
            acknowledged.append(message_id)

    on_a = asyncio.create_task(asyncio.to_thread(load, a, "load-a", 40))
    on_b = asyncio.create_task(asyncio.to_thread(load, b, "load-b", 15))
    while sum(m.startswith("load-a") for m in acknowledged) < 5:
        await asyncio.sleep(0.05)
    a.process.send_signal(signal.SIGKILL)
    await on_a
    await on_b
    await asyncio.to_thread(load, c, "load-c", 5)
    assert sum(m.startswith("load-b") for m in acknowledged) == 15 and sum(m.startswith("load-c") for m in acknowledged) == 5
    engine = db.create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            stored = {row[0] for row in await conn.execute(text("SELECT message_id_header FROM messages"))}
    finally:
        await engine.dispose()
    missing = [m for m in acknowledged if f"<{m}>" not in stored and m not in stored]
    assert not missing, missing

    # 5. The logs of the whole run: what happened, never a secret or a patient's identifier.
    logs = "\n".join(node.log for node in (a, b, c))
    assert re.search(r"accepted \d+ from sophie\.bernard@demo\.mssante\.fr to [^\n]*pat:[0-9a-f]{12}@patient\.mssante\.fr", logs)
    assert "SMTP login refused (wrong credentials): pharmacie.canal@demo.mssante.fr" in logs
    codes = [latest_code(c.data_dir / "outbox", claire["email"])]
    secrets = [
        *(entry["password"] for entry in people["professionals"].values()),
        *(entry["password"] for entry in people["patients"].values() if "password" in entry),
        *(entry["ins"] for entry in people["patients"].values()),
        people["cnam"]["api_token"],
        cluster["key"],
        "Bonjour, Resultats du bilan",
        "not the password",
        *codes,
    ]
    leaked = [secret for secret in secrets if secret and secret in logs]
    assert not leaked, leaked
