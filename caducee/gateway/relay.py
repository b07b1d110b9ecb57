"""The outbound relay: deliver queued recipients to other operators over mutual TLS.

Each queue row is one remote recipient with its own state (scheduled, delivered,
temp_failure, perm_failure, expired), attempt count, next attempt and expiry, as in
Stalwart's queue. Workers on any node claim due rows with one atomic statement (FOR
UPDATE SKIP LOCKED on PostgreSQL); the claim pushes the row's next attempt forward by a
lease, so rows of a worker that dies mid-delivery become due again by themselves.
The sender gets a DSN (RFC 3464) on permanent failure or expiry, and a warning when
delivery lags; each DSN is stored in the same transaction as the state it reports.

Delivered once, even when the database drops: an attempt's outcome (a peer's "250" above
all) is recorded by retrying its transaction until the database answers, for as long as
the lease still protects the row (`core.retry`); the update only applies to a row still at
the attempt count it was claimed with, so a transaction that committed but whose answer was
lost is not applied twice, nor is its DSN filed twice. Attempts run side by side: the worker
claims more rows while others are in flight, and no domain holds more than `per_domain`
attempts at once, so one slow peer never holds back rows due for the others.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiosmtplib
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import DateTime as SADateTime
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.annuaire.service import resolve_parties
from caducee.config import Settings
from caducee.core.retry import connection_lost, until_answered
from caducee.crypto.atrest import BodyCipher
from caducee.gateway.dsn import RecipientStatus, build_dsn
from caducee.gateway.models import QueuedRecipient
from caducee.mailbox.delivery import Delivery, Filing, Target, deliver, stored_form
from caducee.mailbox.store import sealed_body

log = logging.getLogger(__name__)

RETRY_FACTORS = (1, 5, 15, 30, 60, 120, 240)  # times relay_retry_base
LEASE = timedelta(minutes=10)
LEASE_MARGIN = 60.0  # seconds before a lease ends when a worker stops retrying to record an outcome
DUE_STATES = ("scheduled", "temp_failure")


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: int
    mail_from: str
    rcpt_to: str
    domain: str
    attempts: int
    expires_at: datetime
    created_at: datetime
    delay_warned: bool


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt said about one recipient."""

    code: int  # SMTP code; 0 when we never got an answer (connection failed)
    message: str
    remote_mta: str | None

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _enhanced(outcome: Outcome, default: str) -> str:
    parts = outcome.message.split()
    if parts and parts[0].count(".") == 2 and parts[0][0] in "245":
        return parts[0]
    return default


class RelayWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        cipher: BodyCipher,
        tls_context: ssl.SSLContext,
        *,
        batch: int = 50,
        timeout: float = 60.0,
        per_domain: int = 10,
        lease: timedelta = LEASE,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.cipher = cipher
        self.tls_context = tls_context
        self.batch = batch  # attempts in flight at most (one attempt: a message's recipients at one domain)
        self.timeout = timeout
        self.per_domain = per_domain
        self.lease = lease
        self._wake = asyncio.Event()
        self._running: dict[asyncio.Task[None], str] = {}  # attempt -> its domain

    def wake(self) -> None:
        """New rows were queued: look now rather than at the next poll."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Claim due rows whenever an attempt slot is free and start their attempts at once,
        without waiting for those already in flight."""
        try:
            while True:
                started = 0
                if len(self._running) < self.batch:
                    try:
                        started = self._start(await self._claim(self.batch - len(self._running), Counter(self._running.values())))
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # a database hiccup must not stop the relay
                        if not connection_lost(exc):
                            log.exception("relay: claiming due rows failed")
                        else:
                            log.warning("relay: claiming due rows failed, the database did not answer (%s)", type(exc).__name__)
                if started and len(self._running) < self.batch:
                    continue  # there may be more due rows: look again at once
                await self._idle()
        finally:
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _idle(self) -> None:
        """Until new rows are queued, an attempt ends, or the poll interval passes."""
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([wake, *self._running], timeout=self.settings.relay_poll_interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        self._wake.clear()

    def _start(self, claimed: list[Claimed]) -> int:
        """An attempt for each message and domain claimed, started at once."""
        deadline = time.monotonic() + self.lease.total_seconds() - LEASE_MARGIN
        for rows in _grouped(claimed):
            task = asyncio.create_task(self._attempt_logged(rows, deadline), name=f"relay {rows[0].domain}")
            self._running[task] = rows[0].domain
            task.add_done_callback(self._running.pop)
        return len(claimed)

    async def run_once(self) -> int:
        """Claim due rows, attempt them grouped by message and domain, wait for every attempt;
        the count handled."""
        claimed = await self._claim(self.batch)
        deadline = time.monotonic() + self.lease.total_seconds() - LEASE_MARGIN
        await asyncio.gather(*(self._attempt_logged(rows, deadline) for rows in _grouped(claimed)))
        return len(claimed)

    async def _claim(self, limit: int | None = None, in_flight: Counter[str] | None = None) -> list[Claimed]:
        """Lease up to `limit` due rows (default `batch`), oldest first. With `in_flight`
        (attempts running per domain), no domain gets more than `per_domain` less what it
        already has running: the cap is in the claim itself, so nothing claimed is handed back."""
        now = datetime.now(UTC)
        lock = " FOR UPDATE SKIP LOCKED" if self.engine.dialect.name == "postgresql" else ""
        due = "state IN ('scheduled', 'temp_failure') AND next_attempt_at <= :now"
        values: dict[str, object] = {"lease": now + self.lease, "now": now, "batch": self.batch if limit is None else limit}
        candidates = ""
        if in_flight is not None:
            # The window is in a subquery of its own: FOR UPDATE may not sit beside one.
            allowance = "CAST(:per_domain AS INTEGER)"
            values["per_domain"] = self.per_domain
            if in_flight:
                cases = []
                for number, (domain, running) in enumerate(sorted(in_flight.items())):
                    cases.append(f"WHEN :busy_{number} THEN CAST(:left_{number} AS INTEGER)")
                    values[f"busy_{number}"], values[f"left_{number}"] = domain, max(self.per_domain - running, 0)
                allowance = f"CASE domain {' '.join(cases)} ELSE CAST(:per_domain AS INTEGER) END"
            candidates = (
                " AND id IN (SELECT id FROM (SELECT id, domain, row_number() OVER (PARTITION BY domain ORDER BY next_attempt_at, id) AS n "
                f"FROM outbound_queue WHERE {due}) AS ranked WHERE n <= {allowance})"
            )
        statement = text(
            "UPDATE outbound_queue SET next_attempt_at = :lease WHERE id IN ("
            f"SELECT id FROM outbound_queue WHERE {due}{candidates} ORDER BY next_attempt_at LIMIT :batch{lock}) "
            "RETURNING id, message_id, mail_from, rcpt_to, domain, attempts, expires_at, created_at, delay_warned"
        ).bindparams(bindparam("lease", type_=SADateTime(timezone=True)), bindparam("now", type_=SADateTime(timezone=True)))
        claim = statement.columns(expires_at=SADateTime(timezone=True), created_at=SADateTime(timezone=True))
        async with self.engine.begin() as conn:
            rows = (await conn.execute(claim, values)).all()
        return [
            Claimed(
                r.id,
                r.message_id,
                r.mail_from,
                r.rcpt_to,
                r.domain,
                r.attempts,
                _aware(r.expires_at),
                _aware(r.created_at),
                bool(r.delay_warned),
            )
            for r in rows
        ]

    async def _route(self, domain: str) -> tuple[str, int]:
        route = self.settings.relay_routes.get(domain)
        if route:
            host, _, port = route.rpartition(":")
            return host, int(port)
        return await _mx_lookup(domain), 25

    async def _attempt_logged(self, rows: list[Claimed], deadline: float) -> None:
        try:
            await self._attempt(rows, deadline)
        except asyncio.CancelledError:
            raise
        except Exception:  # the rows are retried when their lease ends
            log.exception("relay: attempt for %d recipient(s) at %s failed", len(rows), rows[0].domain)

    async def _attempt(self, rows: list[Claimed], deadline: float) -> None:
        first = rows[0]

        async def read() -> bytes:
            async with self.engine.connect() as conn:
                return await sealed_body(conn, first.message_id)

        sealed = await until_answered(read, deadline=deadline, what="relay: reading a queued message")
        raw = self.cipher.open(sealed)
        outcomes = await self._send(first.domain, first.mail_from, [row.rcpt_to for row in rows], raw)
        await until_answered(lambda: self._record(rows, outcomes, raw), deadline=deadline, what="relay: recording a delivery outcome")

    async def _send(self, domain: str, mail_from: str, rcpts: list[str], raw: bytes) -> dict[str, Outcome]:
        try:
            host, port = await self._route(domain)
        except Exception as exc:  # DNS failure: try again later
            return {rcpt: Outcome(0, f"4.4.3 no route to {domain}: {exc}", None) for rcpt in rcpts}
        try:
            async with aiosmtplib.SMTP(
                hostname=host,
                port=port,
                start_tls=True,
                tls_context=self.tls_context,
                timeout=self.timeout,
                local_hostname=self.settings.hostname,
            ) as client:
                errors, reply = await client.sendmail(mail_from, rcpts, raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return {r.recipient.lower(): Outcome(r.code, r.message, host) for r in exc.recipients}
        except aiosmtplib.SMTPResponseException as exc:
            return {rcpt: Outcome(exc.code, exc.message, host) for rcpt in rcpts}
        except (TimeoutError, OSError, ssl.SSLError, aiosmtplib.SMTPException) as exc:
            return {rcpt: Outcome(0, f"4.4.1 {type(exc).__name__}: {exc}", host) for rcpt in rcpts}
        outcomes = {rcpt: Outcome(250, reply, host) for rcpt in rcpts}
        for rcpt, response in errors.items():
            outcomes[rcpt.lower()] = Outcome(response.code, response.message, host)
        return outcomes

    def _next_delay(self, attempts: int) -> timedelta:
        factor = RETRY_FACTORS[min(attempts, len(RETRY_FACTORS)) - 1]
        return timedelta(seconds=self.settings.relay_retry_base * factor)

    async def _record(self, rows: list[Claimed], outcomes: dict[str, Outcome], raw: bytes) -> None:
        now = datetime.now(UTC)
        failed: list[RecipientStatus] = []
        delayed: list[RecipientStatus] = []
        changes: list[tuple[int, dict[str, object]]] = []
        warn_after = timedelta(hours=self.settings.relay_delay_warning_hours)
        for row in rows:
            outcome = outcomes.get(row.rcpt_to.lower(), Outcome(0, "4.4.1 no answer for this recipient", None))
            attempts = row.attempts + 1
            values: dict[str, object] = {
                "attempts": attempts,
                "updated_at": now,
                "last_error": "" if outcome.delivered else outcome.message[:2000],
            }
            if outcome.delivered:
                values["state"] = "delivered"
            elif outcome.permanent:
                values["state"] = "perm_failure"
                failed.append(
                    RecipientStatus(
                        row.rcpt_to, "failed", _enhanced(outcome, "5.0.0"), f"{outcome.code} {outcome.message}", outcome.remote_mta, now
                    )
                )
            elif now >= row.expires_at:
                values["state"] = "expired"
                failed.append(
                    RecipientStatus(
                        row.rcpt_to,
                        "failed",
                        "4.4.7",
                        f"délai de remise dépassé / delivery time expired; dernière erreur : {outcome.message}",
                        outcome.remote_mta,
                        now,
                    )
                )
            else:
                values["state"] = "temp_failure"
                values["next_attempt_at"] = min(now + self._next_delay(attempts), row.expires_at)
                if not row.delay_warned and now - row.created_at >= warn_after:
                    values["delay_warned"] = True
                    delayed.append(
                        RecipientStatus(
                            row.rcpt_to, "delayed", _enhanced(outcome, "4.0.0"), outcome.message, outcome.remote_mta, now, row.expires_at
                        )
                    )
            changes.append((row.id, values))
        sender = rows[0].mail_from
        attempts_before = {row.id: row.attempts for row in rows}
        async with self.engine.begin() as conn:
            applied: set[str] = set()
            for row, (row_id, values) in zip(rows, changes, strict=True):
                # Only a row still at its claimed attempt count: a retry of a transaction that did
                # commit (its answer lost with the connection) changes nothing and files no DSN.
                result = await conn.execute(
                    update(QueuedRecipient)
                    .where(QueuedRecipient.id == row_id, QueuedRecipient.attempts == attempts_before[row_id])
                    .values(**values)
                )
                if result.rowcount:
                    applied.add(row.rcpt_to)
            for reported in (failed, delayed):
                statuses = [status for status in reported if status.address in applied]
                if statuses:
                    await self._notify(conn, sender, raw, statuses, rows[0].created_at)

    async def _notify(
        self, conn: AsyncConnection, sender: str, original: bytes, statuses: list[RecipientStatus], arrival: datetime
    ) -> None:
        parties = await resolve_parties(conn, [sender], local_domains=self.settings.local_domains)
        mailbox_id = parties[sender.lower()].mailbox_id
        if mailbox_id is None:
            log.warning("DSN for %s not delivered: not a local mailbox", sender)
            return
        dsn = build_dsn(
            reporting_mta=self.settings.hostname,
            postmaster=f"postmaster@{self.settings.operator_domain}",
            to=sender,
            original=original,
            recipients=statuses,
            arrival=arrival,
        )
        filing = Filing(stored_form(self.cipher, dsn), [Target(mailbox_id)])
        await conn.run_sync(deliver, [Delivery([filing], sender=f"postmaster@{self.settings.operator_domain}", message_id_header="")])


def _grouped(claimed: list[Claimed]) -> list[list[Claimed]]:
    """One attempt per message and domain: its recipients there share one SMTP transaction."""
    groups: dict[tuple[int, str], list[Claimed]] = defaultdict(list)
    for row in claimed:
        groups[(row.message_id, row.domain)].append(row)
    return list(groups.values())


async def _mx_lookup(domain: str) -> str:
    """The best MX host of `domain` (production routing; tests use static routes)."""
    import dns.asyncresolver

    answers = await dns.asyncresolver.resolve(domain, "MX")
    best = min(answers, key=lambda record: record.preference)
    return str(best.exchange).rstrip(".")


@dataclass(frozen=True)
class QueueState:
    state: str
    count: int
    oldest_seconds: float


async def queue_stats(conn: AsyncConnection) -> list[QueueState]:
    """Rows of the outbound queue by state, and the age of the oldest of each (for /metrics)."""
    rows = (
        await conn.execute(
            select(QueuedRecipient.state, func.count(), func.min(QueuedRecipient.created_at)).group_by(QueuedRecipient.state)
        )
    ).all()
    now = datetime.now(UTC)
    stats = []
    for state, count, oldest in rows:
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite keeps no zone: stored times are UTC
        stats.append(QueueState(state, int(count), (now - oldest).total_seconds() if oldest is not None else 0.0))
    return stats


class QueueCollector:
    """Queue depth and age by state, read from the database at scrape time (so every node and
    worker reports the same, shared queue)."""

    def __init__(self, stats: list[QueueState]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("caducee_relay_queue_depth", "Rows of the outbound queue by state.", labels=["state"])
        age = GaugeMetricFamily("caducee_relay_queue_oldest_seconds", "Age of the oldest row of each state.", labels=["state"])
        for item in self.stats:
            depth.add_metric([item.state], item.count)
            age.add_metric([item.state], item.oldest_seconds)
        yield depth
        yield age


async def queued_messages(conn: AsyncConnection, message_ids: list[int]) -> set[int]:
    """Which of these stored messages the outbound queue still names (any state: its rows keep
    the message for the DSN and the queue's history)."""
    rows = await conn.execute(select(QueuedRecipient.message_id).where(QueuedRecipient.message_id.in_(message_ids)).distinct())
    return {int(row[0]) for row in rows}
