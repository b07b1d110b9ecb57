"""The relay under faults: every PostgreSQL connection killed again and again during a relay
load (each Message-ID reaches the peer once, every row ends delivered), and one slow peer
beside a fast one (the fast one's rows do not wait for it)."""

from __future__ import annotations

import asyncio
import email
import time
from email.utils import formatdate

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from test_gateway_relay import ScriptedPeer, worker_for

from caducee import db
from caducee.gateway.models import QueuedRecipient
from caducee.gateway.pipeline import Channel, Envelope

FAST = "autre-operateur.mssante.fr"
SLOW = "lent.mssante.fr"


class LoggingPeer(ScriptedPeer):
    """A peer that logs the Message-ID of everything it accepts; it may hold its answer to
    DATA until released (a slow operator)."""

    def __init__(self, *, hold: asyncio.Event | None = None) -> None:
        super().__init__()
        self.hold = hold
        self.message_ids: list[str] = []
        self.waiting = 0

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.hold is not None:
            self.waiting += 1
            await self.hold.wait()
        self.message_ids.append(email.message_from_bytes(envelope.original_content)["Message-ID"])
        return "250 OK"


async def queue(gateway, count: int, domain: str, tag: str) -> None:  # type: ignore[no-untyped-def]
    """`count` messages from the doctor, each to one recipient at `domain`, through the accept pipeline."""
    sender, _ = gateway.account("doctor")
    if domain == SLOW:
        from caducee.annuaire import service

        async with gateway.engine.begin() as conn:
            await service.add_trust_domain(conn, SLOW)
    for number in range(count):
        rcpt = f"dr.{number}@{domain}"
        data = (
            f"From: {sender}\r\nTo: {rcpt}\r\nSubject: relais {number}\r\nDate: {formatdate()}\r\n"
            f"Message-ID: <{tag}-{number}@demo.mssante.fr>\r\n\r\nCompte rendu.\r\n"
        ).encode()
        result = await gateway.pipeline.accept(Envelope(sender, [rcpt], data, Channel.SUBMISSION, authenticated=sender))
        assert result.accepted, result.reply


async def states(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        rows = await conn.execute(select(QueuedRecipient.state, func.count()).group_by(QueuedRecipient.state))
        return {state: count for state, count in rows.all()}


async def test_each_message_once_while_every_connection_is_killed(gateway, backend: str, database_url: str) -> None:  # type: ignore[no-untyped-def]
    if backend != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's: SQLite has no connection to kill")
    total = 300
    await queue(gateway, total, FAST, "coupure")
    peer = LoggingPeer()
    port = await peer.start(gateway)
    worker = worker_for(gateway, {FAST: f"127.0.0.1:{port}"}, relay_poll_interval=0.1)
    url = make_url(db.normalise_url(database_url))
    killer = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username, database=url.database)
    kills = terminated = 0
    relay = asyncio.create_task(worker.run_forever())
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 240
        delivered = 0
        while delivered < total:
            if time.monotonic() > deadline:
                leased = await killer.fetch(
                    "SELECT state, next_attempt_at > now() AS leased, attempts, count(*) FROM outbound_queue GROUP BY 1, 2, 3"
                )
                raise AssertionError(f"{delivered} of {total} delivered before the deadline; peer got {len(peer.message_ids)}; {leased}")
            # Every connection of the test's database but this one, the relay's and the gateway's alike.
            terminated += await killer.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()) AS killed"
            )
            kills += 1
            await asyncio.sleep(0.1)
            delivered = await killer.fetchval("SELECT count(*) FROM outbound_queue WHERE state = 'delivered'")
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await killer.close()
        await peer.stop()
    print(f"\nrelay under kills: {total} messages in {time.monotonic() - started:.1f} s, {kills} rounds, {terminated} connections killed")
    assert terminated > 20, f"only {terminated} connections killed in {kills} rounds: the fault did not happen"
    assert len(peer.message_ids) == total, f"{len(peer.message_ids) - len(set(peer.message_ids))} sent twice"
    assert sorted(peer.message_ids) == sorted(f"<coupure-{n}@demo.mssante.fr>" for n in range(total))
    assert await states(gateway.engine) == {"delivered": total}


async def test_a_slow_peer_does_not_hold_back_the_others(gateway) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()
    slow, fast = LoggingPeer(hold=release), LoggingPeer()
    slow_port, fast_port = await slow.start(gateway), await fast.start(gateway)
    await queue(gateway, 1, SLOW, "lent")
    await queue(gateway, 99, FAST, "rapide")
    worker = worker_for(gateway, {SLOW: f"127.0.0.1:{slow_port}", FAST: f"127.0.0.1:{fast_port}"}, relay_poll_interval=0.1)
    worker.batch = 10  # fewer attempt slots than due rows: claiming must go on while the slow one waits
    relay = asyncio.create_task(worker.run_forever())
    try:
        deadline = time.monotonic() + 90
        while (await states(gateway.engine)).get("delivered") != 99:
            assert time.monotonic() < deadline, f"{len(fast.message_ids)} of 99 delivered behind the slow peer"
            await asyncio.sleep(0.1)
        assert slow.waiting == 1 and slow.message_ids == []  # still held: the 99 did not wait for it
        assert sorted(fast.message_ids) == sorted(f"<rapide-{n}@demo.mssante.fr>" for n in range(99))
        release.set()
        while not slow.message_ids:
            assert time.monotonic() < deadline, "the slow peer's message was never delivered"
            await asyncio.sleep(0.1)
    finally:
        release.set()
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await slow.stop()
        await fast.stop()
    while (await states(gateway.engine)).get("delivered") != 100:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_a_domain_holds_at_most_per_domain_attempts(gateway) -> None:  # type: ignore[no-untyped-def]
    """Twenty messages to a slow domain fill `per_domain` slots, not all of them: a second domain still gets through."""
    release = asyncio.Event()
    slow, fast = LoggingPeer(hold=release), LoggingPeer()
    slow_port, fast_port = await slow.start(gateway), await fast.start(gateway)
    await queue(gateway, 20, SLOW, "lent")
    await queue(gateway, 5, FAST, "rapide")
    worker = worker_for(gateway, {SLOW: f"127.0.0.1:{slow_port}", FAST: f"127.0.0.1:{fast_port}"}, relay_poll_interval=0.1)
    worker.batch, worker.per_domain = 20, 4
    relay = asyncio.create_task(worker.run_forever())
    try:
        deadline = time.monotonic() + 60
        while len(fast.message_ids) < 5:
            assert time.monotonic() < deadline, "the second domain waited behind the first"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert slow.waiting <= 4
    finally:
        release.set()
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await slow.stop()
        await fast.stop()
