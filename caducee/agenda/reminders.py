"""Reminders: a database-backed job queue, one row per email to send, claimed with a lease.

Rows are written when an appointment is added or changed (its reminder) and by the daily
job (prevention items falling due). Any number of processes on any number of nodes run a
`ReminderWorker`: each claims due rows in one atomic statement (FOR UPDATE SKIP LOCKED on
PostgreSQL, SQLite's single writer otherwise) that pushes their lease forward, sends, and
marks them sent with its own claim token. A row is never held by two workers; a worker
that dies leaves its rows to be claimed again when the lease runs out. A crash after the
notifier took the email and before "sent" is written sends it again when the lease runs
out (an email relay gives no transaction to join), under the same Message-ID, derived
from the reminder's id: the outbox keeps one copy, a relay's receivers deduplicate on it.

Whether a reminder still goes out is decided when it is sent, from fresh facts: the
profile must be activated, reminders not turned off, the appointment still there at the
same time and not declined or cancelled, a prevention item still not done, and a minor's
secret appointment never reminded to anyone. The email says when, never what a
professional wrote: only what the patient typed themselves.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlsplit

from sqlalchemy import DateTime as SADateTime
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.agenda import store
from caducee.agenda.due import History, State, evaluate
from caducee.agenda.models import Reminder
from caducee.agenda.schedule import Table
from caducee.agenda.store import AppointmentRow, Prefs
from caducee.agenda.times import at_local, french_clock, french_day, local, zone
from caducee.annuaire import patients
from caducee.notify.notifier import Notifier

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)
MAX_ATTEMPTS = 5
RETRY = timedelta(minutes=5)


def appointment_send_at(appointment: AppointmentRow, prefs: Prefs, now: datetime) -> datetime | None:
    """When to remind of an appointment: `lead_days` before, at `hour`, in the patient's
    zone; never after it started (then an hour before, or at once if that is past too);
    None when it is over, not live, or the patient turned reminders off."""
    if not prefs.reminders or not appointment.live or appointment.starts_at <= now:
        return None
    where = zone(prefs.timezone)
    day = local(appointment.starts_at, where).date() - timedelta(days=prefs.lead_days)
    moment = at_local(day, time(prefs.hour), where)
    if moment >= appointment.starts_at:
        moment = appointment.starts_at - timedelta(hours=1)
    return max(moment, now)


def occurrence_of(appointment: AppointmentRow) -> str:
    return appointment.starts_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


async def schedule_appointment(conn: AsyncConnection, appointment: AppointmentRow, prefs: Prefs, now: datetime) -> None:
    """The reminder of one appointment as it now is: unsent reminders of other times are
    cancelled, the one for its time (re)scheduled; one already sent is left alone."""
    now = now.astimezone(UTC)
    ref = str(appointment.id)
    occurrence = occurrence_of(appointment)
    rows = (
        await conn.execute(
            select(Reminder.id, Reminder.occurrence, Reminder.state).where(
                Reminder.patient_id == appointment.patient_id, Reminder.kind == "appointment", Reminder.ref == ref
            )
        )
    ).all()
    send_at = appointment_send_at(appointment, prefs, now)
    stale = [row.id for row in rows if row.state == "scheduled" and (row.occurrence != occurrence or send_at is None)]
    if stale:
        await conn.execute(update(Reminder).where(Reminder.id.in_(stale)).values(state="cancelled", last_error="changed"))
    if send_at is None:
        return
    same = next((row for row in rows if row.occurrence == occurrence), None)
    if same is None:
        await conn.execute(
            insert(Reminder).values(
                patient_id=appointment.patient_id,
                kind="appointment",
                ref=ref,
                occurrence=occurrence,
                send_at=send_at,
                state="scheduled",
                attempts=0,
                last_error="",
                created_at=now,
            )
        )
    elif same.state in ("scheduled", "cancelled"):
        await conn.execute(update(Reminder).where(Reminder.id == same.id).values(state="scheduled", send_at=send_at, lease_until=None))


async def cancel(conn: AsyncConnection, patient_id: int, appointment_ids: list[int]) -> None:
    await conn.execute(
        update(Reminder)
        .where(
            Reminder.patient_id == patient_id,
            Reminder.kind == "appointment",
            Reminder.ref.in_([str(i) for i in appointment_ids]),
            Reminder.state == "scheduled",
        )
        .values(state="cancelled", last_error="removed")
    )


def prevention_row(patient_id: int, key: str, due: date, prefs: Prefs, day: date, now: datetime) -> dict[str, object]:
    """The queue row for an item falling due on `due`, sent on `day` at the patient's hour."""
    return {
        "patient_id": patient_id,
        "kind": "prevention",
        "ref": key,
        "occurrence": due.isoformat(),
        "send_at": max(at_local(day, time(prefs.hour), zone(prefs.timezone)), now),
        "state": "scheduled",
        "attempts": 0,
        "last_error": "",
        "created_at": now,
    }


# ---- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: int
    patient_id: int
    kind: str
    ref: str
    occurrence: str
    attempts: int


@dataclass(frozen=True)
class Email:
    to: tuple[str, ...]
    subject: str
    text: str


def _claim_statement(dialect: str):  # type: ignore[no-untyped-def]
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    statement = text(
        "UPDATE agenda_reminders SET lease_until = :lease, claimed_by = :me, attempts = attempts + 1 WHERE id IN ("
        "SELECT id FROM agenda_reminders WHERE state = 'scheduled' AND send_at <= :now "
        f"AND (lease_until IS NULL OR lease_until <= :now) ORDER BY send_at LIMIT :batch{lock}) "
        "RETURNING id, patient_id, kind, ref, occurrence, attempts"
    )
    return statement.bindparams(bindparam("lease", type_=SADateTime(timezone=True)), bindparam("now", type_=SADateTime(timezone=True)))


class ReminderWorker:
    """Claims due reminders, decides each from fresh facts, sends it through the notifier."""

    def __init__(self, engine: AsyncEngine, notifier: Notifier, table: Table, *, webmail_url: str, batch: int = 100) -> None:
        self.engine = engine
        self.notifier = notifier
        self.table = table
        self.webmail_url = webmail_url
        self.webmail_host = urlsplit(webmail_url).hostname
        self.batch = batch
        self.me = secrets.token_hex(8)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self, poll_seconds: float) -> None:
        while True:
            try:
                handled = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away for a moment must not stop reminders for good
                log.exception("reminder pass failed")
                handled = 0
            if handled == 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=poll_seconds)
                except TimeoutError:
                    pass
                self._wake.clear()

    async def claim(self, now: datetime | None = None) -> list[Claimed]:
        now = (now or datetime.now(UTC)).astimezone(UTC)  # SQLite keeps wall-clock text: bind UTC only
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                _claim_statement(self.engine.dialect.name), {"lease": now + LEASE, "now": now, "me": self.me, "batch": self.batch}
            )
            return [Claimed(r.id, r.patient_id, r.kind, r.ref, r.occurrence, r.attempts) for r in rows]

    async def run_once(self, now: datetime | None = None) -> int:
        """One pass: claim, decide, send, record. The number of rows handled."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        claimed = await self.claim(now)
        if not claimed:
            return 0
        async with self.engine.connect() as conn:
            emails = await self._compose(conn, claimed, now)
        for row in claimed:
            email = emails.get(row.id)
            if isinstance(email, str):
                await self._finish(row, "cancelled", email)
                continue
            assert email is not None
            try:
                for to in email.to:
                    await self.notifier.send(to, email.subject, email.text, message_id=self._message_id(row))
            except Exception as exc:  # the relay is down: try again later, up to MAX_ATTEMPTS
                log.warning("reminder %d not sent: %s", row.id, exc)
                await self._retry(row, now, str(exc))
                continue
            await self._finish(row, "sent", "")
        return len(claimed)

    def _message_id(self, row: Claimed) -> str:
        """One Message-ID per reminder row, the same on every attempt (see the module's doc)."""
        host = self.webmail_host or "caducee.invalid"
        return f"<rappel-{row.id}@{host}>"

    async def _finish(self, row: Claimed, state: str, why: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(Reminder)
                .where(Reminder.id == row.id, Reminder.claimed_by == self.me)
                .values(state=state, sent_at=datetime.now(UTC) if state == "sent" else None, lease_until=None, last_error=why[:500])
            )

    async def _retry(self, row: Claimed, now: datetime, why: str) -> None:
        values: dict[str, object] = {"lease_until": None, "last_error": why[:500], "send_at": now + RETRY * row.attempts}
        if row.attempts >= MAX_ATTEMPTS:
            values["state"] = "failed"
        async with self.engine.begin() as conn:
            await conn.execute(update(Reminder).where(Reminder.id == row.id, Reminder.claimed_by == self.me).values(**values))

    async def _compose(self, conn: AsyncConnection, claimed: list[Claimed], now: datetime) -> dict[int, Email | str]:
        """For each claimed row: the email to send, or why not (a string)."""
        ids = sorted({row.patient_id for row in claimed})
        contacts = await patients.reminder_contacts(conn, ids, now.date())
        chosen = await store.prefs_of(conn, ids)
        appointments = await store.by_ids(conn, [int(row.ref) for row in claimed if row.kind == "appointment" and row.ref.isdigit()])
        result: dict[int, Email | str] = {}
        for row in claimed:
            contact = contacts.get(row.patient_id)
            prefs = chosen[row.patient_id]
            if contact is None or contact.status != "activated":
                result[row.id] = "profile not activated (closed, opposed or never opened)"
            elif not prefs.reminders:
                result[row.id] = "reminders turned off"
            elif not contact.emails:
                result[row.id] = "no email to send to"
            elif row.kind == "appointment":
                result[row.id] = self._appointment_email(
                    row, appointments.get(int(row.ref)) if row.ref.isdigit() else None, contact, prefs, now
                )
            else:
                result[row.id] = await self._prevention_email(conn, row, contact, now)
        return result

    def _appointment_email(
        self, row: Claimed, appointment: AppointmentRow | None, contact: patients.ReminderContact, prefs: Prefs, now: datetime
    ) -> Email | str:
        if appointment is None or appointment.patient_id != row.patient_id:
            return "appointment deleted"
        if not appointment.live:
            return f"appointment {appointment.status}"
        if occurrence_of(appointment) != row.occurrence:
            return "appointment moved"
        if appointment.starts_at <= now:
            return "appointment already started"
        minor = _age(contact.birth_date, now.date()) < 18
        if appointment.secret and minor:
            return "a minor's secret appointment"
        when = local(appointment.starts_at, zone(prefs.timezone))
        whose = f" de {contact.name}" if minor else ""
        moment = french_day(when.date()) + ("" if appointment.all_day else f" à {french_clock(when)}")
        typed = ""
        if not appointment.from_invitation:  # only what the patient typed, never what a professional wrote
            typed = "".join(
                f"\n{label} : {value}" for label, value in (("Rendez-vous", appointment.title), ("Lieu", appointment.place)) if value
            )
        text = (
            f"Bonjour,\n\nCeci est un rappel : rendez-vous{whose} le {moment}.{typed}\n\n"
            f"Pour le voir dans l'agenda santé : {self.webmail_url.rstrip('/')}/agenda\n\n" + FOOTER
        )
        return Email(contact.emails, f"Rappel : rendez-vous{whose} le {moment}", text)

    async def _prevention_email(self, conn: AsyncConnection, row: Claimed, contact: patients.ReminderContact, now: datetime) -> Email | str:
        rule = self.table.rule(row.ref)
        if rule is None:
            return "item no longer in the prevention table"
        demographics = await patients.demographics_of(conn, row.patient_id)
        if demographics is None:
            return "patient unknown"
        history = History.of(await store.marks(conn, row.patient_id))
        due = next(
            (item for item in evaluate(self.table, demographics.birth_date, demographics.sex, history, now.date()) if item.key == row.ref),
            None,
        )
        if due is None or due.state in (State.DONE, State.NOT_APPLICABLE):
            return "done or not applicable since"
        minor = _age(contact.birth_date, now.date()) < 18
        whose = f" pour {contact.name}" if minor else ""
        text = (
            f"Bonjour,\n\nUn examen ou une vaccination recommandé{whose} arrive à échéance.\n"
            "Pour savoir lequel, et le noter comme fait quand ce sera le cas, connectez-vous à l'agenda santé : "
            f"{self.webmail_url.rstrip('/')}/agenda\n\n" + FOOTER
        )
        return Email(contact.emails, f"Rappel de prévention{whose}", text)


FOOTER = (
    "Pour votre vie privée, ce courriel ne dit rien de plus : le détail est dans votre espace.\n"
    "Vous pouvez choisir quand recevoir ces rappels, ou ne plus en recevoir, dans Mon agenda > Rappels et abonnement.\n"
    "Caducée ne vous demandera jamais votre mot de passe ni votre code par courriel.\n"
)


def _age(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
