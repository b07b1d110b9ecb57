"""The outbound relay between two Caducée operators over mutual TLS, and against peers that
answer 4xx or 5xx, drop the connection, or are down: per-recipient state, retries, DSNs."""

from __future__ import annotations

import asyncio
import email
import smtplib
import ssl
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP as AioSMTP
from conftest import free_port
from mail import message
from sqlalchemy import select, update

from caducee import db
from caducee.annuaire import service
from caducee.annuaire.models import MailboxType
from caducee.config import Settings
from caducee.crypto.atrest import BodyCipher, load_master_key
from caducee.crypto.tls import client_context, server_context
from caducee.gateway.models import QueuedRecipient
from caducee.gateway.pipeline import AcceptPipeline
from caducee.gateway.relay import RelayWorker
from caducee.gateway.smtp import ListenerConfig, start_listener
from caducee.identity.mailauth import MailboxAuthenticator

REMOTE = "dr.durand@autre-operateur.mssante.fr"


def submit(gateway, rcpts: list[str]) -> None:  # type: ignore[no-untyped-def]
    address, password = gateway.account("doctor")
    msg = message(address, ", ".join(rcpts), "Compte rendu", "Voici le compte rendu de consultation.")
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(gateway.ca.files.cert)))
        client.login(address, password)
        client.sendmail(address, rcpts, msg.as_bytes(policy=SMTP_POLICY))


def worker_for(gateway, routes: dict[str, str], **settings) -> RelayWorker:  # type: ignore[no-untyped-def]
    operator = gateway.ca.issue("operator-a", "mail.demo.mssante.fr", "Caducee", client=True)
    config = gateway.settings.replace(relay_routes=routes, **{"relay_retry_base": 60.0, **settings})
    return RelayWorker(gateway.engine, config, gateway.cipher, client_context(gateway.ca.files.cert, operator), timeout=10)


async def queue_rows(gateway) -> list:  # type: ignore[no-untyped-def]
    async with gateway.engine.connect() as conn:
        return list((await conn.execute(select(QueuedRecipient).order_by(QueuedRecipient.id))).all())


class OtherOperator:
    """A second Caducée, on SQLite, serving autre-operateur.mssante.fr; it trusts the same CA
    and lists demo.mssante.fr with the DN of the first operator's client certificate."""

    async def start(self, gateway, directory: Path, smime=None) -> OtherOperator:  # type: ignore[no-untyped-def]
        """`smime`: an S/MIME stage builder `(engine) -> SmimeStage` for this operator's pipeline."""
        url = f"sqlite:///{directory / 'b.sqlite3'}"
        await asyncio.to_thread(db.upgrade, url)
        self.engine = db.create_engine(url)
        self.settings = Settings(
            data_dir=directory / "var-b",
            database_url=url,
            local_domains=["autre-operateur.mssante.fr"],
            operator_domain="autre-operateur.mssante.fr",
            hostname="mx.autre-operateur.mssante.fr",
        )
        async with self.engine.begin() as conn:
            await service.add_trust_domain(conn, "autre-operateur.mssante.fr", is_local=True)
            await service.add_trust_domain(conn, "demo.mssante.fr", operator_dns=["CN=mail.demo.mssante.fr,O=Caducee,C=FR"])
            await service.add_mailbox(conn, address=REMOTE, type=MailboxType.PER, display_name="Dr Durand")
        self.cipher = BodyCipher(load_master_key(self.settings.data_dir, environ_value=""))
        self.pipeline = AcceptPipeline(self.engine, self.settings, self.cipher, smime=smime(self.engine) if smime else None)
        server = gateway.ca.issue(
            "server-b", "mx.autre-operateur.mssante.fr", "Autre Operateur", server=True, dns=["localhost"], ips=["127.0.0.1"]
        )
        self.port = free_port()
        config = ListenerConfig("mx", "127.0.0.1", self.port, server_context(server, client_ca=gateway.ca.files.cert))
        self.server = await start_listener(config, self.pipeline, MailboxAuthenticator(self.engine, self.settings.local_domains))
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        await self.pipeline.close()
        await self.engine.dispose()


async def test_two_operators_exchange_mail_over_mutual_tls(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = await OtherOperator().start(gateway, tmp_path)
    try:
        patient = gateway.credentials["patients"]["adult_1"]["address"]
        await asyncio.to_thread(submit, gateway, [REMOTE, patient])
        assert len(await gateway.inbox(patient)) == 1  # the local copy is delivered at once
        rows = await queue_rows(gateway)
        assert [(row.rcpt_to, row.state) for row in rows] == [(REMOTE, "scheduled")]
        worker = worker_for(gateway, {"autre-operateur.mssante.fr": f"127.0.0.1:{other.port}"})
        assert await worker.run_once() == 1
        rows = await queue_rows(gateway)
        assert (rows[0].state, rows[0].attempts) == ("delivered", 1)
        async with other.engine.connect() as conn:
            from caducee.mailbox.models import Message

            bodies = [other.cipher.open(b) for b in (await conn.execute(select(Message.body))).scalars()]
        assert len(bodies) == 1 and b"compte rendu de consultation" in bodies[0]
        assert await worker.run_once() == 0  # nothing left to do
    finally:
        await other.stop()


class ScriptedPeer:
    """An SMTP peer (aiosmtpd, STARTTLS) that answers as told."""

    def __init__(self, *, rcpt_reply: str = "250 OK", data_reply: str = "250 OK", drop_on_data: bool = False) -> None:
        self.rcpt_reply, self.data_reply, self.drop_on_data = rcpt_reply, data_reply, drop_on_data
        self.per_recipient: dict[str, str] = {}
        self.received: list[bytes] = []

    async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        reply = self.per_recipient.get(address, self.rcpt_reply)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.drop_on_data:
            server.transport.abort()
            return "421 gone"
        self.received.append(envelope.original_content)
        return self.data_reply

    async def start(self, gateway) -> int:  # type: ignore[no-untyped-def]
        issued = gateway.ca.issue("peer-server", "localhost", "Peer", server=True, dns=["localhost"], ips=["127.0.0.1"])
        context = server_context(issued)
        port = free_port()
        self.server = await asyncio.get_running_loop().create_server(
            lambda: AioSMTP(self, tls_context=context, require_starttls=True, hostname="peer", decode_data=False), "127.0.0.1", port
        )
        return port

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def dsn_for(gateway) -> email.message.Message:  # type: ignore[name-defined, no-untyped-def]
    notices = await gateway.inbox(gateway.account("doctor")[0])
    assert len(notices) == 1, notices
    return email.message_from_bytes(notices[0])


def status_block(dsn) -> str:  # type: ignore[no-untyped-def]
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    return "\n".join(str(block) for block in part.get_payload())


async def test_permanent_failure_sends_a_dsn(gateway) -> None:  # type: ignore[no-untyped-def]
    peer = ScriptedPeer(rcpt_reply="550 5.1.1 no such user")
    port = await peer.start(gateway)
    try:
        await asyncio.to_thread(submit, gateway, [REMOTE])
        await worker_for(gateway, {"autre-operateur.mssante.fr": f"127.0.0.1:{port}"}).run_once()
    finally:
        await peer.stop()
    row = (await queue_rows(gateway))[0]
    assert (row.state, row.attempts) == ("perm_failure", 1) and "no such user" in row.last_error
    dsn = await dsn_for(gateway)
    assert dsn.get_content_type() == "multipart/report" and dsn.get_param("report-type") == "delivery-status"
    block = status_block(dsn)
    assert f"Final-Recipient: rfc822; {REMOTE}" in block and "Action: failed" in block and "Status: 5.1.1" in block


@pytest.mark.parametrize("failure", ["4xx", "drop", "down"])
async def test_temporary_failures_are_retried_later(gateway, failure: str) -> None:  # type: ignore[no-untyped-def]
    peer = None
    if failure == "down":
        port = free_port()  # nothing listens there
    else:
        peer = ScriptedPeer(rcpt_reply="451 4.3.0 try later") if failure == "4xx" else ScriptedPeer(drop_on_data=True)
        port = await peer.start(gateway)
    try:
        await asyncio.to_thread(submit, gateway, [REMOTE])
        worker = worker_for(gateway, {"autre-operateur.mssante.fr": f"127.0.0.1:{port}"})
        before = datetime.now(UTC)
        assert await worker.run_once() == 1
        row = (await queue_rows(gateway))[0]
        assert (row.state, row.attempts) == ("temp_failure", 1)
        next_attempt = row.next_attempt_at if row.next_attempt_at.tzinfo else row.next_attempt_at.replace(tzinfo=UTC)
        assert next_attempt >= before + timedelta(seconds=59)
        assert await worker.run_once() == 0  # not due yet
        assert await gateway.inbox(gateway.account("doctor")[0]) == []  # no DSN for a temporary failure
    finally:
        if peer is not None:
            await peer.stop()


async def test_retry_succeeds_then_expiry_and_delay_warning(gateway) -> None:  # type: ignore[no-untyped-def]
    peer = ScriptedPeer(rcpt_reply="451 4.3.0 try later")
    port = await peer.start(gateway)
    try:
        await asyncio.to_thread(submit, gateway, [REMOTE, "dr.x@autre-operateur.mssante.fr"])
        worker = worker_for(gateway, {"autre-operateur.mssante.fr": f"127.0.0.1:{port}"})
        await worker.run_once()
        # Make both due again, one of them old enough for a delay warning, then let the peer accept.
        old = datetime.now(UTC) - timedelta(hours=5)
        async with gateway.engine.begin() as conn:
            await conn.execute(update(QueuedRecipient).values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1), created_at=old))
        await worker.run_once()
        rows = await queue_rows(gateway)
        assert [(row.state, row.attempts, row.delay_warned) for row in rows] == [("temp_failure", 2, True)] * 2
        warning = await dsn_for(gateway)
        assert "Action: delayed" in status_block(warning) and "Delivery delayed" in str(make_header(decode_header(warning["Subject"])))

        # Now the peer takes REMOTE; the other recipient keeps failing and its time is up.
        peer.per_recipient = {REMOTE: "250 OK"}
        now = datetime.now(UTC)
        async with gateway.engine.begin() as conn:
            await conn.execute(update(QueuedRecipient).values(next_attempt_at=now - timedelta(seconds=1)))
            await conn.execute(
                update(QueuedRecipient).where(QueuedRecipient.rcpt_to != REMOTE).values(expires_at=now - timedelta(seconds=1))
            )
        await worker.run_once()
    finally:
        await peer.stop()
    states = {row.rcpt_to: (row.state, row.attempts) for row in await queue_rows(gateway)}
    assert states == {REMOTE: ("delivered", 3), "dr.x@autre-operateur.mssante.fr": ("expired", 3)}
    assert len(peer.received) == 1
    notices = [email.message_from_bytes(raw) for raw in await gateway.inbox(gateway.account("doctor")[0])]
    assert len(notices) == 2  # the delay warning, then the expiry
    expired = status_block(notices[1])
    assert "Action: failed" in expired and "Status: 4.4.7" in expired and "dr.x@autre-operateur.mssante.fr" in expired
    assert REMOTE not in expired


async def test_concurrent_workers_claim_disjoint_rows(gateway) -> None:  # type: ignore[no-untyped-def]
    """Several nodes share one queue: a row is claimed by one worker only."""
    rcpts = [f"dr.{n}@autre-operateur.mssante.fr" for n in range(30)]
    await asyncio.to_thread(submit, gateway, rcpts)
    workers = [worker_for(gateway, {}) for _ in range(3)]
    for worker in workers:
        worker.batch = 7
    claims = await asyncio.gather(*(worker._claim() for worker in workers for _ in range(2)))
    claimed = [row.id for rows in claims for row in rows]
    assert len(claimed) == len(set(claimed)) == 30
    assert await workers[0]._claim() == []  # all leased: nothing due until the lease ends


async def test_relay_expiry_hours_is_the_queue_lifetime(gateway) -> None:  # type: ignore[no-untyped-def]
    """A short `relay_expiry_hours`: the row expires after that time and the sender gets the DSN."""
    gateway.pipeline.settings = gateway.settings.replace(relay_expiry_hours=0.0005)  # 1.8 seconds
    port = free_port()  # nothing listens there: every attempt fails temporarily
    before = datetime.now(UTC)
    await asyncio.to_thread(submit, gateway, [REMOTE])
    row = (await queue_rows(gateway))[0]
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    assert before + timedelta(seconds=1.5) <= expires <= datetime.now(UTC) + timedelta(seconds=2)
    worker = worker_for(gateway, {"autre-operateur.mssante.fr": f"127.0.0.1:{port}"}, relay_retry_base=0.1)
    assert await worker.run_once() == 1
    assert (await queue_rows(gateway))[0].state == "temp_failure"
    while datetime.now(UTC) < expires:
        await asyncio.sleep(0.2)
    async with gateway.engine.begin() as conn:
        await conn.execute(update(QueuedRecipient).values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert await worker.run_once() == 1
    assert (await queue_rows(gateway))[0].state == "expired"
    block = status_block(await dsn_for(gateway))
    assert "Action: failed" in block and "Status: 4.4.7" in block and REMOTE in block
