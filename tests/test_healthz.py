"""/healthz says unhealthy when the store cannot commit (issue 19.4): a full disk once left
reads working, so a `SELECT 1` said "ok" while every message got 451.

The database is made to refuse writes the way a full disk does (a trigger raising
"database or disk is full" on the tables written), on both backends; then it is given
back, and the node reports healthy again by itself.
"""

from __future__ import annotations

import asyncio
import smtplib

import httpx
from conftest import RunningHTTP
from mail import message
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_gateway_submission import tls

from caducee import server

TABLES = ("limit_windows", "messages")


async def refuse_writes(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(
                text(
                    "CREATE FUNCTION disk_full() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'database or disk is full'; END $$ LANGUAGE plpgsql"
                )
            )
            for table in TABLES:
                await conn.execute(text(f"CREATE TRIGGER full_{table} BEFORE INSERT OR UPDATE ON {table} EXECUTE FUNCTION disk_full()"))
            return
        for table in TABLES:
            for event in ("INSERT", "UPDATE"):
                await conn.execute(
                    text(
                        f"CREATE TRIGGER full_{table}_{event.lower()} BEFORE {event} ON {table} "
                        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
                    )
                )


async def accept_writes(engine: AsyncEngine) -> None:
    """Drop the triggers (those left by a test that failed half-way too)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            for table in TABLES:
                await conn.execute(text(f"DROP TRIGGER IF EXISTS full_{table} ON {table}"))
            await conn.execute(text("DROP FUNCTION IF EXISTS disk_full()"))
            return
        for table in TABLES:
            for event in ("insert", "update"):
                await conn.execute(text(f"DROP TRIGGER IF EXISTS full_{table}_{event}"))


def send(gateway, subject: str) -> int:  # type: ignore[no-untyped-def]
    doctor, nurse = gateway.account("doctor"), gateway.account("nurse")
    raw = message(doctor[0], nurse[0], subject).as_bytes().replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=60) as client:
        client.starttls(context=tls(gateway))
        client.login(*doctor)
        try:
            client.sendmail(doctor[0], [nurse[0]], raw)
        except smtplib.SMTPDataError as refused:
            return refused.smtp_code
        return 250


async def test_healthz_follows_whether_the_store_can_commit(gateway, engine: AsyncEngine, settings) -> None:  # type: ignore[no-untyped-def]
    http = RunningHTTP(server.build_app(engine, settings, gateway.pipeline))
    await http.start()
    try:
        async with httpx.AsyncClient(base_url=http.base_url, timeout=30) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            await refuse_writes(engine)
            assert await asyncio.to_thread(send, gateway, "pendant la panne") == 451  # temporary: the client keeps it
            down = await client.get("/healthz")
            assert down.status_code == 503 and "disk is full" in down.json()["database"]

            await accept_writes(engine)
            # The probe writes again, but the messages' commit failed a moment ago: still shown.
            assert (await client.get("/healthz")).status_code == 503
            assert await asyncio.to_thread(send, gateway, "après la panne") == 250
            assert (await client.get("/healthz")).json() == {"status": "ok"}

            # A failure of the messages' commit alone (the probe's table still writable) shows
            # for a while, then no longer: a drained node with no traffic must come back.
            gateway.pipeline.committer.last_failure = gateway.pipeline.committer.last_success + 1
            assert (await client.get("/healthz")).status_code == 503
            gateway.pipeline.committer.last_failure -= server.COMMIT_FAILURE_SHOWN + 5
            gateway.pipeline.committer.last_success -= server.COMMIT_FAILURE_SHOWN + 10
            assert (await client.get("/healthz")).json() == {"status": "ok"}
    finally:
        await accept_writes(engine)
        await http.stop()
    assert [raw for raw in await gateway.inbox(gateway.account("nurse")[0]) if b"pendant la panne" in raw] == []
