"""The daily job: for one day, find every patient's prevention items falling due and queue
their reminders.

The patients are walked in chunks of ids, each chunk a row claimed with a lease, so that
several processes or nodes share a day's work, a restart resumes where it stopped, and a
day already done costs one query. Within a chunk, the candidates of the day
(`due.candidates`: birth dates for which something falls due, a campaign's age, mark
dates that make a recurring item due) are filters of the annuaire's query, so that only
patients who may have something due leave the database; each is then decided exactly.
Reminder rows are inserted "if absent": running a day twice sends nothing twice.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Date, bindparam, delete, select, text, update
from sqlalchemy import DateTime as SADateTime
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.agenda import store
from caducee.agenda.due import Candidates, History, candidates, falling_due
from caducee.agenda.models import DailyChunk, Reminder
from caducee.agenda.reminders import prevention_row
from caducee.agenda.schedule import Table
from caducee.agenda.store import LEADS
from caducee.annuaire import patients

log = logging.getLogger(__name__)

CHUNK = 50_000  # patient ids per claimed chunk
BATCH = 5_000  # patients read at once
LEASE = timedelta(minutes=15)


@dataclass
class DayReport:
    day: date
    chunks: int = 0
    patients: int = 0
    queued: int = 0


def _insert_ignore(conn: AsyncConnection, table):  # type: ignore[no-untyped-def]
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table).on_conflict_do_nothing()


def _claim_statement(dialect: str):  # type: ignore[no-untyped-def]
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    statement = text(
        "UPDATE agenda_daily_chunks SET lease_until = :lease, claimed_by = :me WHERE day = :day AND first_id = ("
        "SELECT first_id FROM agenda_daily_chunks WHERE day = :day AND state = 'todo' "
        f"AND (lease_until IS NULL OR lease_until <= :now) ORDER BY first_id LIMIT 1{lock}) "
        "RETURNING first_id, last_id"
    )
    return statement.bindparams(
        bindparam("lease", type_=SADateTime(timezone=True)),
        bindparam("now", type_=SADateTime(timezone=True)),
        bindparam("day", type_=Date()),
    )


class DailyJob:
    def __init__(self, engine: AsyncEngine, table: Table, *, chunk: int = CHUNK, batch: int = BATCH) -> None:
        self.engine = engine
        self.table = table
        self.chunk = chunk
        self.batch = batch
        self.me = secrets.token_hex(8)
        self._candidates: dict[date, Candidates] = {}

    async def plan(self, day: date) -> None:
        """The day's chunks, over the patient ids as they are now (idempotent)."""
        async with self.engine.begin() as conn:
            planned = (await conn.execute(select(DailyChunk.first_id).where(DailyChunk.day == day).limit(1))).first()
            if planned is not None:
                return
            highest = await patients.highest_patient_id(conn)
            rows = [
                {"day": day, "first_id": first, "last_id": first + self.chunk, "state": "todo", "found": 0}
                for first in range(0, highest + 1, self.chunk)
            ]
            await conn.execute(_insert_ignore(conn, DailyChunk.__table__), rows)

    async def run(self, day: date, *, now: datetime | None = None) -> DayReport:
        """Do (or finish) the day: claim chunks until none is left to claim."""
        await self.plan(day)
        report = DayReport(day)
        while True:
            moment = (now or datetime.now(UTC)).astimezone(UTC)
            async with self.engine.begin() as conn:
                claimed = (
                    await conn.execute(
                        _claim_statement(self.engine.dialect.name), {"lease": moment + LEASE, "now": moment, "me": self.me, "day": day}
                    )
                ).first()
            if claimed is None:
                return report
            seen, queued = await self.chunk_once(day, claimed.first_id, claimed.last_id, now=moment)
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(DailyChunk)
                    .where(DailyChunk.day == day, DailyChunk.first_id == claimed.first_id, DailyChunk.claimed_by == self.me)
                    .values(state="done", found=queued, finished_at=datetime.now(UTC), lease_until=None)
                )
            report.chunks += 1
            report.patients += seen
            report.queued += queued

    def _for(self, day: date) -> Candidates:
        found = self._candidates.get(day)
        if found is None:
            if len(self._candidates) > 64:
                self._candidates.clear()
            found = self._candidates[day] = candidates(self.table, day)
        return found

    async def chunk_once(self, day: date, first_id: int, last_id: int, *, now: datetime) -> tuple[int, int]:
        """Examine the patients of one id range; (patients examined, reminders queued).

        Whatever lead time a patient chose, what falls due for them is among the candidates
        of the days `day + lead`: the union of those (birth dates, campaign age, mark dates)
        goes to the database as filters, so that only the patients who may have something
        due leave it; each is then decided exactly with their own lead and history.
        """
        now = now.astimezone(UTC)
        per_lead = {lead: self._for(day + timedelta(days=lead)) for lead in LEADS}
        born_on = frozenset().union(*(found.born_on for found in per_lead.values()))
        limits = [found.born_by for found in per_lead.values() if found.born_by is not None]
        born_by = max(limits) if limits else None
        mark_days = frozenset().union(*(days for found in per_lead.values() for days in found.marked_on.values()))
        async with self.engine.connect() as conn:
            hot = await store.marks_on(conn, first_id, last_id, mark_days)
        marked = {patient for patient, key, done_on in hot if any(done_on in found.marked_on.get(key, ()) for found in per_lead.values())}
        seen = queued = 0
        cursor = first_id
        while cursor < last_id:
            async with self.engine.connect() as conn:
                people = await patients.activated_demographics(
                    conn, cursor, last_id, limit=self.batch, born_on=born_on, born_by=born_by, ids=[i for i in marked if i >= cursor]
                )
                if not people:
                    break
                ids = [person.id for person in people]
                chosen = await store.prefs_of(conn, ids)
                histories = await store.marks_of(conn, ids)
            rows = []
            for person in people:
                prefs = chosen[person.id]
                if not prefs.reminders:
                    continue
                target = day + timedelta(days=prefs.lead_days)
                mine = histories.get(person.id, ())
                if not self._for(target).worth_evaluating(person.birth_date, mine):
                    continue
                history = History.of(mine) if mine else History.empty()
                for item in falling_due(self.table, person.birth_date, person.sex, history, target):
                    rows.append(prevention_row(person.id, item.key, target, prefs, day, now))
            if rows:
                async with self.engine.begin() as conn:
                    result = await conn.execute(_insert_ignore(conn, Reminder.__table__).returning(Reminder.id), rows)
                    queued += len(result.all())
            seen += len(people)
            cursor = people[-1].id + 1
        return seen, queued


async def purge(engine: AsyncEngine, before: date) -> None:
    """Forget the chunks of days long done."""
    async with engine.begin() as conn:
        await conn.execute(delete(DailyChunk).where(DailyChunk.day < before))
