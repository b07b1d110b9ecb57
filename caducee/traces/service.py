"""Recording, reading and purging the trace of actions per mailbox.

Two ways to record, so that a trace line exists exactly when its action happened:

- `record_in(conn, traces)`, inside the transaction of the action itself (the gateway's
  group commit of accepted messages, an IMAP expunge): both are committed or neither;
- `Traces.record(traces)`, for what has no transaction of its own (a refused message, a
  refused recipient): a group commit of its own, so that a burst of refusals shares fsyncs.

Traces hold addresses (a patient's address carries their INS): they stay in the database,
read by the operator, never copied into a log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.core.groupcommit import GroupCommitter
from caducee.traces.models import MailboxTrace

SEND, REFUSE, EXPUNGE, DELETE_FOLDER, MOVE = "send", "refuse", "expunge", "delete-folder", "move"
_LIMITS = {"mailbox": 320, "actor": 320, "client": 64, "channel": 16, "action": 32, "answer": 300, "message_id": 255, "detail": 2000}


@dataclass(frozen=True)
class Trace:
    """One action on one mailbox and its answer (see `models.MailboxTrace` for each field)."""

    mailbox: str
    channel: str
    action: str
    answer: str = ""
    actor: str = ""
    client: str = ""
    items: int = 1
    message_id: str = ""
    detail: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def counted(self, items: int) -> Trace:
        """The same action, concerning `items` messages (known once it was done)."""
        return Trace(**{**self.__dict__, "items": items})

    def row(self) -> dict[str, object]:
        """The table row: text cut to its column (a hostile Message-ID of 10 KB still traces)."""
        values: dict[str, object] = dict(self.__dict__)
        for name, limit in _LIMITS.items():
            text = str(values[name] or "")
            values[name] = text if len(text) <= limit else text[: limit - 1] + "…"
        values["mailbox"] = str(values["mailbox"]).lower()
        return values


def record_in(conn: Connection, traces: Iterable[Trace]) -> None:
    """Write `traces` inside the caller's (synchronous) transaction."""
    rows = [trace.row() for trace in traces]
    if rows:
        conn.execute(insert(MailboxTrace), rows)


def recipients(addresses: Sequence[str]) -> str:
    """The `detail` of a message's trace: to whom it went."""
    return "to " + ", ".join(addresses)


class Traces:
    """Recording traces that have no transaction of their own, and reading them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._committer = GroupCommitter(self._write)

    async def _write(self, batch: list[Trace]) -> list[None]:
        async with self.engine.begin() as conn:
            await conn.run_sync(record_in, batch)
        return [None] * len(batch)

    async def record(self, trace: Trace) -> None:
        """Write one trace; returns once it is committed (shared with those written meanwhile)."""
        await self._committer.submit(trace)

    async def close(self) -> None:
        await self._committer.stop()

    async def read(self, mailbox: str, *, since: datetime | None = None, limit: int = 1000) -> list[Trace]:
        """The traces of one mailbox, oldest first, from `since` (the last six months by default)."""
        since = since or datetime.now(UTC) - timedelta(days=183)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(MailboxTrace.__table__)
                    .where(MailboxTrace.mailbox == mailbox.lower(), MailboxTrace.at >= since)
                    .order_by(MailboxTrace.at, MailboxTrace.id)
                    .limit(limit)
                )
            ).all()
            return [
                Trace(
                    row.mailbox,
                    row.channel,
                    row.action,
                    row.answer,
                    row.actor,
                    row.client,
                    row.items,
                    row.message_id,
                    row.detail,
                    row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC),
                )
                for row in rows
            ]


async def purge(engine: AsyncEngine, retention: timedelta) -> int:
    """Delete traces older than `retention` (six months by default: what the operator must
    keep, and no longer), by chunks so that a first purge of a large table holds no long lock."""
    cutoff = datetime.now(UTC) - retention
    deleted = 0
    while True:
        async with engine.begin() as conn:
            chunk = select(MailboxTrace.id).where(MailboxTrace.at < cutoff).limit(10_000).scalar_subquery()
            done = await conn.execute(delete(MailboxTrace).where(MailboxTrace.id.in_(chunk)))
        count = int(done.rowcount or 0)
        deleted += count
        if count < 10_000:
            return deleted
