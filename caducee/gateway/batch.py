"""What one accepted message must write, and writing many of them in one transaction.

The accept pipeline turns a message into a `DeliveryPlan` (plain data): the mailbox
store's part (`caducee.mailbox.delivery.Delivery`: the stored forms, the entries, the
conversation change, the notices) and the gateway's own (one queue row per remote
recipient, one post-delivery row per local recipient a durable consumer wants). The group
commit writes a whole batch of plans in one transaction: the mailbox's set-based delivery
first, then the queue rows pointing to the stored forms.
The cost of a commit hardly grows with the number of messages in it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db
from caducee.gateway.models import QueuedRecipient
from caducee.gateway.postdelivery import Wanted, rows_in
from caducee.mailbox import store
from caducee.mailbox.delivery import Delivery, deliver
from caducee.traces.service import Trace, record_in


@dataclass
class DeliveryPlan:
    delivery: Delivery
    remote: list[list[str]]  # per stored form: the remote recipients it is relayed to
    queue_lifetime: timedelta  # the relay's expiry (`relay_expiry_hours`): then the sender gets a DSN
    # The rules' "Message-ID used by another sender" fact, left to the commit: one query for the
    # whole batch, in the writing transaction, instead of one per message on the event loop.
    # A plan whose Message-ID turns out taken is not written (its result is None).
    check_message_id: bool = False
    # The operator's trace of the send, written in the same transaction: a trace line
    # exists exactly when the message was stored (its Message-ID, the reply given).
    trace: Trace | None = None
    # The post-delivery rows (the dossier's package, the agenda's invitation...), written in the
    # same transaction: a consumer that must file this message is told so exactly when it is
    # stored. Empty for ordinary mail (no consumer wants it): nothing more is written.
    post_delivery: list[Wanted] = field(default_factory=list)


def write_batch(conn: Connection, plans: list[DeliveryPlan]) -> list[list[int] | None]:
    """Write every plan in the caller's transaction; for each plan, the ids of its stored forms in
    order, or None for a plan whose Message-ID another sender already used (`check_message_id`)."""
    now = datetime.now(UTC)
    checked = [(plan.delivery.message_id_header, plan.delivery.sender) for plan in plans if plan.check_message_id]
    taken = store.message_ids_used_by_others(conn, [pair for pair in checked if pair[0]])
    writing = [plan for plan in plans if not (plan.check_message_id and (plan.delivery.message_id_header, plan.delivery.sender) in taken)]
    stored_of = dict(zip(map(id, writing), deliver(conn, [plan.delivery for plan in writing]), strict=True))
    results = [stored_of.get(id(plan)) for plan in plans]
    plans = writing
    stored = [stored_of[id(plan)] for plan in plans]
    queued = [
        {
            "message_id": message_id,
            "mail_from": plan.delivery.sender,
            "rcpt_to": rcpt,
            "domain": rcpt.rpartition("@")[2],
            "state": "scheduled",
            "attempts": 0,
            "next_attempt_at": now,
            "expires_at": now + plan.queue_lifetime,
            "last_error": "",
            "delay_warned": False,
            "created_at": now,
            "updated_at": now,
        }
        for plan, ids in zip(plans, stored, strict=True)
        for message_id, remote in zip(ids, plan.remote, strict=False)
        for rcpt in remote
    ]
    if queued:
        conn.execute(insert(QueuedRecipient.__table__), queued)
    rows_in(conn, ((row, ids) for plan, ids in zip(plans, stored, strict=True) for row in plan.post_delivery))
    record_in(
        conn,
        (
            Trace(**{**plan.trace.__dict__, "answer": f"250 2.0.0 OK: queued as {ids[0]}"})
            for plan, ids in zip(plans, stored, strict=True)
            if plan.trace is not None and ids
        ),
    )
    return results


class BatchWriter:
    """Runs `write_batch` in one transaction, the fastest way each backend allows.

    SQLite: one dedicated thread with its own connection runs the whole batch, statements
    and commit, without going back to the event loop between statements (through
    aiosqlite every statement is a round trip between the loop and its thread, and under
    load each one waits behind every other session). SQLite has one writer anyway.
    PostgreSQL: asyncpg is native asyncio; the batch runs through `run_sync`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sync = db.sync_engine_for(engine) if db.is_sqlite(engine) else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer") if self._sync else None

    async def __call__(self, plans: list[DeliveryPlan]) -> list[list[int] | None]:
        if self._sync is not None:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._write_sqlite, plans)
        async with self.engine.begin() as conn:
            return await conn.run_sync(write_batch, plans)

    def _write_sqlite(self, plans: list[DeliveryPlan]) -> list[list[int] | None]:
        assert self._sync is not None
        with self._sync.begin() as conn:
            return write_batch(conn, plans)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync is not None:
            self._sync.dispose()
