"""The job runner (issue 19.7): a job runs once per period whichever process claims it, and
the purges delete what no longer serves (old IMAP tombstones, bodies no entry references,
expired sessions, worked post-delivery rows) and nothing else."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.core.clock import utcnow
from caducee.gateway.models import PostDeliveryItem
from caducee.gateway.pipeline import Channel, Envelope
from caducee.jobs.runner import Job, JobRunner
from caducee.mailbox.models import MailboxEntry, Message
from caducee.server import purge_jobs


async def test_a_job_runs_once_whichever_process_claims_it(engine: AsyncEngine) -> None:
    runs: list[str] = []

    async def work() -> str:
        runs.append("ran")
        await asyncio.sleep(0.05)
        return "done"

    runners = [JobRunner(engine, [Job("count", 3600, work)]) for _ in range(3)]
    for n, runner in enumerate(runners):
        runner.holder = f"node-{n}"  # three processes
    ran = await asyncio.gather(*(runner.run_once() for runner in runners))
    assert len(runs) == 1 and sorted(len(names) for names in ran) == [0, 0, 1]
    assert await runners[0].run_once() == []  # not due again before its period
    async with engine.begin() as conn:  # the period has passed
        await conn.execute(text("UPDATE jobs_schedule SET next_run_at = 0"))
    assert await runners[2].run_once() == ["count"] and len(runs) == 2


async def test_purges_delete_what_no_longer_serves(gateway, engine: AsyncEngine) -> None:  # type: ignore[no-untyped-def]
    sender, _ = gateway.account("doctor")
    nurse, _ = gateway.account("nurse")
    for n in range(3):
        raw = f"From: {sender}\r\nTo: {nurse}\r\nSubject: purge {n}\r\nMessage-ID: <purge{n}@demo.mssante.fr>\r\n\r\nbody\r\n".encode()
        assert (await gateway.pipeline.accept(Envelope(sender, [nurse], raw, Channel.SUBMISSION, sender))).accepted
    remote = b"From: " + sender.encode() + b"\r\nTo: x@autre-operateur.mssante.fr\r\nSubject: away\r\n\r\nbody\r\n"
    assert (await gateway.pipeline.accept(Envelope(sender, ["x@autre-operateur.mssante.fr"], remote, Channel.SUBMISSION, sender))).accepted
    async with engine.begin() as conn:
        ids = sorted((await conn.execute(select(Message.id).where(Message.message_id_header.like("%purge%")))).scalars())
        old = utcnow() - timedelta(days=2)
        await conn.execute(update(Message).values(received_at=old))
        # purge0: expunged two days ago everywhere; purge1: expunged just now; purge2: live.
        await conn.execute(update(MailboxEntry).where(MailboxEntry.message_id == ids[0]).values(expunged_modseq=1, expunged_at=old))
        await conn.execute(update(MailboxEntry).where(MailboxEntry.message_id == ids[1]).values(expunged_modseq=1, expunged_at=utcnow()))
        await conn.execute(text("UPDATE webmail_sessions SET expires_at = :old"), {"old": old})
        # Post-delivery rows: done two days ago (goes), done now, failed two days ago, pending (stay).
        for n, (state, created) in enumerate([("done", old), ("done", utcnow()), ("failed", old), ("pending", old)]):
            await conn.execute(
                insert(PostDeliveryItem.__table__).values(
                    message_id=ids[2], mailbox_id=n, address=nurse, mailbox_type="PER", sender=sender, sender_kind="professional",
                    channel="submission", message_id_header="", consumer="dossier", state=state, attempts=1,
                    next_attempt_at=created, claimed_by="", last_error="", created_at=created,
                )
            )  # fmt: skip
    runner = JobRunner(engine, purge_jobs(engine))
    assert len(await runner.run_once()) == 7
    async with engine.connect() as conn:
        left = set((await conn.execute(select(Message.id))).scalars())
        tombstones = (
            await conn.execute(select(func.count()).select_from(MailboxEntry).where(MailboxEntry.expunged_modseq.is_not(None)))
        ).scalar()
        results = dict((await conn.execute(text("SELECT name, last_result FROM jobs_schedule"))).all())
    assert ids[0] not in left and ids[1] in left and ids[2] in left  # the tombstone went, then its body
    assert tombstones == 1  # the recent one stays
    assert len(left) == 3  # the relayed message has no entry but its queue row keeps it
    assert results["purge-imap-tombstones"].startswith("1 ") and results["purge-orphan-bodies"].startswith("1 ")
    assert results["purge-post-delivery"] == "1 post-delivery rows deleted"
    async with engine.connect() as conn:
        kept = sorted((await conn.execute(select(PostDeliveryItem.mailbox_id))).scalars())
    assert kept == [1, 2, 3]
