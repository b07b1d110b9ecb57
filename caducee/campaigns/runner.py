"""Fanning campaigns out, batch by batch, from any number of processes at once.

A batch is a range of patient ids. One transaction claims it, files the message into the
INBOX of every patient of the range the chain accepts (`mailbox.fanout`), and marks it
done: a process killed in the middle loses only its uncommitted batch, which the next run
claims again, so every targeted patient gets the message exactly once. On PostgreSQL the
claim is `FOR UPDATE SKIP LOCKED`, so two nodes on one database take different batches
without waiting for each other; the campaign row is held `FOR SHARE` meanwhile, which a
recall (`FOR UPDATE`) waits for. On SQLite the database's single writer serialises the
batches: the claim is the transaction's first write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire import targets
from caducee.campaigns import targeting
from caducee.campaigns.models import Campaign, CampaignBatch
from caducee.campaigns.service import Campaigns
from caducee.mailbox import fanout
from caducee.mailbox.fanout import PREVENTION

log = logging.getLogger(__name__)

_CLAIM_PG = text(
    "SELECT b.campaign_id, b.lo, b.hi FROM campaign_batches b JOIN campaigns c ON c.id = b.campaign_id "
    "WHERE c.state = 'running' AND b.state = 'pending' ORDER BY b.campaign_id, b.lo LIMIT 1 FOR UPDATE OF b SKIP LOCKED"
)
_CLAIM_SQLITE = text(
    "UPDATE campaign_batches SET node = :node WHERE rowid = (SELECT b.rowid FROM campaign_batches b "
    "JOIN campaigns c ON c.id = b.campaign_id WHERE c.state = 'running' AND b.state = 'pending' ORDER BY b.campaign_id, b.lo LIMIT 1) "
    "RETURNING campaign_id, lo, hi"
)
_FINISH = text(
    "UPDATE campaigns SET state = 'done', finished_at = :now WHERE state = 'running' AND "
    "NOT EXISTS (SELECT 1 FROM campaign_batches b WHERE b.campaign_id = campaigns.id AND b.state = 'pending')"
)


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


class Runner:
    def __init__(self, engine: AsyncEngine, service: Campaigns) -> None:
        self.engine = engine
        self.service = service
        self.node = node_name()
        self._decisions: dict[str, object] = {}

    def _decision(self, sender: str):  # type: ignore[no-untyped-def]
        if sender not in self._decisions:
            self._decisions[sender] = targeting.set_decision(sender)
        return self._decisions[sender]

    async def step(self) -> int | None:
        """Fan out one batch: its number of entries, or None when there was nothing to do."""
        async with self.engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            claimed = (await conn.execute(_CLAIM_PG if postgres else _CLAIM_SQLITE, {"node": self.node})).first()
            if claimed is None:
                return None
            campaign_id, lo, hi = int(claimed[0]), int(claimed[1]), int(claimed[2])
            query = select(Campaign).where(Campaign.id == campaign_id)
            row = (await conn.execute(query.with_for_update(read=True) if postgres else query)).one()
            if row.state != "running":  # paused, cancelled or recalled since the claim: leave it
                await conn.rollback()
                return 0
            decision = self._decision(row.sender)
            facts = targeting.recipients(targeting.criteria_from_json(row.criteria), campaign_id=campaign_id, uses_file=bool(row.uses_file))
            batch = targeting.accepted(targets.in_range(facts, lo, hi), decision).subquery()
            filed = await fanout.fan_out(conn, int(row.message_id), select(batch.c.mailbox_id), flags=PREVENTION)
            await conn.execute(
                update(CampaignBatch)
                .where(CampaignBatch.campaign_id == campaign_id, CampaignBatch.lo == lo)
                .values(state="done", delivered=filed, node=self.node, done_at=datetime.now(UTC))
            )
            await conn.execute(_FINISH, {"now": datetime.now(UTC)})
        return filed

    async def work(self, *, on_batch: Callable[[int], None] | None = None) -> int:
        """Start what is due, then fan out until no batch is left; the entries made."""
        for campaign_id in await self.service.due():
            try:
                await self.service.prepare(campaign_id)
            except Exception:  # one campaign that cannot start must not stop the others
                log.exception("campaign %s could not start", campaign_id)
        total = 0
        while True:
            filed = await self.step()
            if filed is None:
                break
            total += filed
            if on_batch is not None:
                on_batch(filed)
        async with self.engine.begin() as conn:
            await conn.execute(_FINISH, {"now": datetime.now(UTC)})
        return total

    async def run_forever(self, poll_seconds: float) -> None:
        """The server's loop: due campaigns started, batches fanned out, then a pause."""
        while True:
            try:
                await self.work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("campaign runner: will try again")
            await asyncio.sleep(poll_seconds)
