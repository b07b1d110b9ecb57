"""The post-delivery queue: what other components must still do with a delivered message,
kept in the database, so that a process dying after the 250 loses none of it.

Two consumers of a delivery must not lose it: the dossier's XDM intake (a professional's
IHE_XDM.ZIP mailed to a patient is filed into the dossier) and the agenda's invitations (an
iCalendar invitation becomes an appointment). Each gives a pure, cheap predicate
(`dossier.intake.wants_package`, `agenda.invitations.wants_invitation`: which local
recipients of a `Delivered` it wants), registered by `server.py` on every node, mail-only
ones included. The pipeline asks them on the accept path, before the group commit, and each
recipient a consumer wants becomes one `post_delivery_queue` row written in the commit's
own transaction (`rows_in`): the row exists exactly when the message does. Ordinary mail is
wanted by nobody and writes no row.

Who works the rows: the processes that run the consumers, the `http` role's (they have the
dossier and the agenda; `server.build_app` registers the runners).

- Fast path: a process that accepted a message and runs the consumer writes its rows
  already claimed by itself (with a lease) and runs them as soon as the commit returns, so
  the filing follows the 250 as closely as it did when it was only in memory, and costs no
  claim query.
- Poll: every `post_delivery_poll_seconds`, each such process claims the due rows (pending
  ones, which a mail-only node wrote, retries, and claimed ones whose lease ran out because
  their process died) in one atomic statement (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite
  has a single writer), so no row is run by two processes at once.

A runner works from the stored message (it reads and opens it as the readers do), never from
what the pipeline held in memory, and it is idempotent: a row run again after a crash between
the filing and its `done` files nothing twice (the dossier's `dossier_intakes` row per message
and patient; the agenda's appointments by UID and sequence). A runner that raises is retried
with backoff, up to MAX_ATTEMPTS, then the row is `failed`, with an ERROR line and
`caducee_post_delivery_total{outcome="failed"}`.

New-mail alerts are not queued here: they are best effort by design and stay in memory
(`gateway.hooks`, `AcceptPipeline.on_delivered`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.config import Settings
from caducee.core import metrics
from caducee.gateway.hooks import Delivered, DeliveredTo
from caducee.gateway.models import PostDeliveryItem
from caducee.policies import Channel, PartyKind

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # then the row is failed (an ERROR line, a metric)
RETRY_BASE_SECONDS = 30.0  # the first retry's delay, doubled at each further one (30 s ... 32 min)
RETRY_MAX_SECONDS = 3600.0
CONCURRENT = 16  # rows run at once per process: bounded memory (a package is read whole)
BATCH = 32  # rows claimed per poll
DONE_KEPT = timedelta(days=1)  # then `purge` deletes done rows
FAILED_KEPT = timedelta(days=30)  # failed rows stay longer, for the operator to look at

Wants = Callable[[Delivered], Sequence[DeliveredTo]]  # the recipients a consumer must be run for (none: no row)
Runner = Callable[[Delivered], Awaitable[None]]  # runs the consumer for the one recipient of a `Delivered`; raises to retry

_TABLE = PostDeliveryItem.__table__
_COLUMNS = PostDeliveryItem


@dataclass(frozen=True)
class Wanted:
    """One row a message writes in its commit. `recipient.message_id` is, until the commit, the
    index of the recipient's stored form in the plan (its id exists only in the transaction)."""

    consumer: str
    recipient: DeliveredTo
    sender: str
    sender_kind: str
    channel: str
    message_id_header: str
    claimed_by: str  # the process that runs it right after the commit; "": pending, for the poll
    lease_seconds: float


@dataclass(frozen=True)
class Claimed:
    """A row some process holds: what its consumer is run on."""

    consumer: str
    message_id: int
    mailbox_id: int
    address: str
    mailbox_type: str
    sender: str
    sender_kind: str
    channel: str
    message_id_header: str
    attempts: int

    def delivered(self) -> Delivered:
        """What the runner is given: who sent it to whom, and where it is stored. No message in
        memory (`tree` None, content types unknown): the runner reads the stored form."""
        to = DeliveredTo(self.address, self.mailbox_id, self.mailbox_type, self.message_id)
        return Delivered(self.sender, PartyKind(self.sender_kind), Channel(self.channel), self.message_id_header, True, (to,))


def rows_in(conn: Connection, wanted: Iterable[tuple[Wanted, list[int]]]) -> None:
    """Write the rows of the messages of one group commit, in its transaction: each `Wanted`
    with the ids of its message's stored forms, in order."""
    now = datetime.now(UTC)
    rows = [
        {
            "message_id": ids[row.recipient.message_id],
            "mailbox_id": row.recipient.mailbox_id,
            "address": row.recipient.address,
            "mailbox_type": row.recipient.mailbox_type,
            "sender": row.sender,
            "sender_kind": row.sender_kind,
            "channel": row.channel,
            "message_id_header": row.message_id_header[:998],
            "consumer": row.consumer,
            "state": "claimed" if row.claimed_by else "pending",
            "attempts": 1 if row.claimed_by else 0,
            # A claimed row is due again when its lease runs out (its process died before `done`).
            "next_attempt_at": now + timedelta(seconds=row.lease_seconds) if row.claimed_by else now,
            "lease_until": now + timedelta(seconds=row.lease_seconds) if row.claimed_by else None,
            "claimed_by": row.claimed_by,
            "last_error": "",
            "created_at": now,
        }
        for row, ids in wanted
    ]
    if rows:
        conn.execute(insert(_TABLE), rows)


def _due(names: list[str], now: datetime):  # type: ignore[no-untyped-def]
    return and_(_COLUMNS.state.in_(("pending", "claimed")), _COLUMNS.next_attempt_at <= now, _COLUMNS.consumer.in_(names))


class PostDelivery:
    """The consumers' predicates (every node) and runners (the `http` role's processes), the
    fast path after each commit and the poll loop."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.me = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wants: dict[str, Wants] = {}
        self._runners: dict[str, Runner] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(CONCURRENT)
        self._poll: asyncio.Task[None] | None = None
        self._stopped = False  # after `stop`: what is accepted still writes its rows, pending, for the others

    # ---- wiring (server.py) -----------------------------------------------------------

    def want(self, consumer: str, wants: Wants) -> None:
        """Write a row for `consumer` for each recipient `wants` names (on every node)."""
        self._wants[consumer] = wants

    def work(self, consumer: str, runner: Runner) -> None:
        """This process runs `consumer`'s rows (the fast path for what it accepts, the poll for the rest)."""
        self._runners[consumer] = runner

    @property
    def listening(self) -> bool:
        return bool(self._wants)

    # ---- the accept path --------------------------------------------------------------

    def wanted(self, delivered: Delivered) -> list[Wanted]:
        """The rows `delivered` must write, asked before the commit (its recipients' message ids
        are still the indexes of their stored forms). A predicate that fails writes the rows
        anyway, for every recipient: its consumer then decides on the stored message."""
        out: list[Wanted] = []
        for consumer, wants in self._wants.items():
            try:
                recipients: Sequence[DeliveredTo] = wants(delivered)
            except Exception:  # a predicate's bug must not lose a filing nor refuse the message
                log.exception("post-delivery predicate of %s failed: the row is written", consumer)
                recipients = delivered.recipients
            claimed_by = self.me if consumer in self._runners and not self._stopped else ""
            out += [
                Wanted(
                    consumer,
                    recipient,
                    delivered.sender,
                    delivered.sender_kind.value,
                    delivered.channel.value,
                    delivered.message_id_header,
                    claimed_by,
                    self.settings.post_delivery_lease_seconds,
                )
                for recipient in recipients
            ]
        return out

    def committed(self, wanted: list[Wanted], stored_ids: list[int]) -> None:
        """The fast path, once the commit returned: run the rows this process claimed in it.
        Returns at once (the work is a task)."""
        for row in wanted:
            if row.claimed_by != self.me or self._stopped:  # stopping: its lease runs out, another process runs it
                continue
            to = row.recipient
            claimed = Claimed(
                row.consumer,
                stored_ids[to.message_id],
                to.mailbox_id,
                to.address,
                to.mailbox_type,
                row.sender,
                row.sender_kind,
                row.channel,
                row.message_id_header,
                1,
            )
            task = asyncio.get_running_loop().create_task(self._fast(claimed), name=f"post-delivery {row.consumer}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fast(self, claimed: Claimed) -> None:
        if self.settings.post_delivery_hold_seconds > 0:  # tests only: the window a crash test kills the process in
            await asyncio.sleep(self.settings.post_delivery_hold_seconds)
        await self._run(claimed)

    # ---- the poll ---------------------------------------------------------------------

    async def claim(self, limit: int = BATCH) -> list[Claimed]:
        """Lease up to `limit` due rows of the consumers this process runs, oldest first."""
        names = list(self._runners)
        if not names:
            return []
        now = datetime.now(UTC)
        async with self.engine.connect() as conn:  # a read first: an idle queue takes no write lock
            if (await conn.execute(select(_COLUMNS.id).where(_due(names, now)).limit(1))).first() is None:
                return []
        lease = now + timedelta(seconds=self.settings.post_delivery_lease_seconds)
        candidates = (
            select(_COLUMNS.id)
            .where(_due(names, now))
            .order_by(_COLUMNS.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders none, its one writer makes the UPDATE atomic
        )
        statement = (
            update(_TABLE)
            .where(_COLUMNS.id.in_(candidates.scalar_subquery()), _due(names, now))
            .values(state="claimed", claimed_by=self.me, lease_until=lease, next_attempt_at=lease, attempts=_COLUMNS.attempts + 1)
            .returning(
                _COLUMNS.consumer,
                _COLUMNS.message_id,
                _COLUMNS.mailbox_id,
                _COLUMNS.address,
                _COLUMNS.mailbox_type,
                _COLUMNS.sender,
                _COLUMNS.sender_kind,
                _COLUMNS.channel,
                _COLUMNS.message_id_header,
                _COLUMNS.attempts,
            )
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(statement)).all()
        return [
            Claimed(
                r.consumer,
                r.message_id,
                r.mailbox_id,
                r.address,
                r.mailbox_type,
                r.sender,
                r.sender_kind,
                r.channel,
                r.message_id_header,
                r.attempts,
            )
            for r in rows
        ]

    async def run_once(self) -> int:
        """Claim due rows and run them; the number claimed."""
        claimed = await self.claim()
        await asyncio.gather(*(self._run(row) for row in claimed))
        return len(claimed)

    async def run_forever(self) -> None:
        while True:
            try:
                handled = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away for a moment: look again at the next poll
                log.exception("post-delivery pass failed")
                handled = 0
            if handled < BATCH:
                await asyncio.sleep(self.settings.post_delivery_poll_seconds)

    def start(self) -> None:
        """Start the poll loop (the processes that registered runners: the `http` role's)."""
        if self._poll is None and self._runners:
            self._poll = asyncio.get_running_loop().create_task(self.run_forever(), name="post-delivery")

    async def settle(self) -> None:
        """Wait for the fast path's rows being run (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        """Stop the poll and wait for the rows being run; rows accepted from now on are left
        pending, for the other processes (the app stops before the SMTP listeners do)."""
        self._stopped = True
        if self._poll is not None:
            self._poll.cancel()
            await asyncio.gather(self._poll, return_exceptions=True)
            self._poll = None
        await self.settle()

    # ---- one row ----------------------------------------------------------------------

    async def _run(self, row: Claimed) -> None:
        runner = self._runners.get(row.consumer)
        if runner is None:  # not ours (cannot happen: claims name our consumers); its lease will run out
            return
        if row.attempts > MAX_ATTEMPTS:  # its process died during every attempt (a poison message)
            await self._failed(row, "the process running it stopped at every attempt")
            return
        async with self._slots:
            try:
                await runner(row.delivered())
            except asyncio.CancelledError:
                raise  # shutdown: the lease runs out and another process runs it again
            except Exception as exc:
                if row.attempts >= MAX_ATTEMPTS:
                    await self._failed(row, f"{type(exc).__name__}: {exc}")
                else:
                    await self._retry(row, exc)
                return
        await self._finish(row, state="done")
        metrics.post_delivery.labels(row.consumer, "done").inc()

    async def _retry(self, row: Claimed, exc: Exception) -> None:
        delay = min(RETRY_BASE_SECONDS * 2 ** (row.attempts - 1), RETRY_MAX_SECONDS)
        log.warning(
            "post-delivery %s of stored message %d to mailbox %d failed (attempt %d of %d), tried again in %.0f s",
            row.consumer,
            row.message_id,
            row.mailbox_id,
            row.attempts,
            MAX_ATTEMPTS,
            delay,
            exc_info=exc,
        )
        metrics.post_delivery.labels(row.consumer, "retry").inc()
        await self._finish(
            row,
            state="pending",
            next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
            last_error=f"{type(exc).__name__}: {exc}",
        )

    async def _failed(self, row: Claimed, error: str) -> None:
        log.error(
            "post-delivery %s of stored message %d to mailbox %d failed %d times: given up (%s)",
            row.consumer,
            row.message_id,
            row.mailbox_id,
            min(row.attempts, MAX_ATTEMPTS),
            error[:300],
        )
        metrics.post_delivery.labels(row.consumer, "failed").inc()
        await self._finish(row, state="failed", last_error=error)

    async def _finish(self, row: Claimed, *, state: str, next_attempt_at: datetime | None = None, last_error: str | None = None) -> None:
        """Record a row's outcome, if this process still holds it (a lease that ran out let
        another take it: then that one's outcome stands). A database away now leaves the row
        claimed: it is run again when the lease runs out, which the runners' idempotence allows."""
        values: dict[str, object] = {"state": state, "lease_until": None, "claimed_by": ""}
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        if last_error is not None:
            values["last_error"] = last_error[:2000]
        statement = (
            update(_TABLE)
            .where(
                _COLUMNS.message_id == row.message_id,
                _COLUMNS.mailbox_id == row.mailbox_id,
                _COLUMNS.consumer == row.consumer,
                _COLUMNS.claimed_by == self.me,
                _COLUMNS.state == "claimed",
            )
            .values(**values)
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(statement)
        except Exception:
            log.exception("post-delivery %s of stored message %d: outcome %s not recorded", row.consumer, row.message_id, state)


async def purge(engine: AsyncEngine, now: datetime | None = None) -> int:
    """Delete done rows after DONE_KEPT and failed ones after FAILED_KEPT (a periodic job)."""
    now = now or datetime.now(UTC)
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(_TABLE).where(
                or_(
                    and_(_COLUMNS.state == "done", _COLUMNS.created_at < now - DONE_KEPT),
                    and_(_COLUMNS.state == "failed", _COLUMNS.created_at < now - FAILED_KEPT),
                )
            )
        )
    return int(result.rowcount or 0)
