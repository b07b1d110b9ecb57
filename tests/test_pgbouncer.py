"""PgBouncer (Debian's, session pooling) in front of PostgreSQL: a Caducée node migrates,
seeds and serves through it, and every message that got 250 is stored."""

from __future__ import annotations

import smtplib
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path

import pytest
from nodes import start_node
from pgcluster import PgBouncer, missing_tools
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db
from caducee.mailbox.models import Message

MESSAGES = 200


async def test_a_node_behind_pgbouncer(tmp_path: Path, backend: str, database_url: str, engine: AsyncEngine) -> None:
    if backend != "postgresql":
        pytest.skip("PgBouncer pools PostgreSQL connections")
    if missing_tools("pgbouncer", "psql"):
        pytest.fail("pgbouncer is not installed: `make peers` (scripts/system-packages.sh)")
    url = make_url(db.normalise_url(database_url))
    bouncer = PgBouncer(tmp_path / "pgbouncer", url.host or "127.0.0.1", url.port or 5432).start()
    try:
        through = f"postgresql://{url.username or 'postgres'}@127.0.0.1:{bouncer.listen}/{url.database}"
        node = start_node(tmp_path / "node", through, args=("--demo", "--role", "smtp,http"), wait_for=("http", "submission"))
        try:
            credentials = node.credentials()
            sender = credentials["professionals"]["doctor"]["address"]
            nurse = credentials["professionals"]["nurse"]["address"]

            def send(numbers: range) -> list[str]:
                acknowledged = []
                with smtplib.SMTP("127.0.0.1", node.ports["submission"], timeout=60) as client:
                    for number in numbers:
                        tag = f"<bouncer-{number}@demo.mssante.fr>"
                        data = f"From: {sender}\r\nTo: {nurse}\r\nSubject: pool\r\nDate: {formatdate()}\r\nMessage-ID: {tag}\r\n\r\nok\r\n"
                        client.sendmail(sender, [nurse], data.encode())
                        acknowledged.append(tag)
                return acknowledged

            with ThreadPoolExecutor(4) as pool:
                acknowledged = [tag for part in pool.map(send, [range(n, MESSAGES, 4) for n in range(4)]) for tag in part]
            clients = bouncer.show("CLIENTS")
            stats = bouncer.show("STATS")
        finally:
            assert node.stop() == 0, node.output()
    finally:
        bouncer.stop()
    assert url.database in clients, "the node's connections did not go through PgBouncer"
    assert any(line.split("|")[0] == url.database and int(line.split("|")[2]) > MESSAGES for line in stats.splitlines())
    async with engine.connect() as conn:
        stored = set((await conn.execute(select(Message.message_id_header).where(Message.message_id_header.like("<bouncer-%")))).scalars())
        assert (await conn.execute(select(func.count()).select_from(Message))).scalar_one() >= MESSAGES
    assert len(acknowledged) == MESSAGES and set(acknowledged) <= stored
